import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Fiber, Layer, Schema, Stream, SubscriptionRef, TestClock } from "effect"
import { Discovery } from "../layers/Discovery.js"
import { type EndpointStatus, Health, type HealthOptions } from "../layers/Health.js"
import { HealthCheck } from "../schemas/Config.js"
import type { Service } from "../src/MeshState.js"
import {
  closedPort,
  gatedHttpTarget,
  grpcTarget,
  httpTarget,
  silentTarget,
  tcpTarget
} from "./support/healthTargets.js"
import { makeTestTls } from "./support/healthTls.js"

const decodeCheck = Schema.decodeUnknownSync(HealthCheck)
const check = (fields: Record<string, unknown>): HealthCheck =>
  decodeCheck({ interval: "10s", timeout: "1s", healthyThreshold: 2, unhealthyThreshold: 3, ...fields })

const service = (
  name: string,
  ports: ReadonlyArray<number>,
  healthCheck: HealthCheck | undefined,
  failMode: "open" | "closed" = "open"
): Service => ({
  name,
  protocol: "http",
  port: ports[0] ?? 80,
  failMode,
  tags: [],
  metadata: {},
  source: "config",
  ...(healthCheck ? { healthCheck } : {}),
  endpoints: ports.map((port) => ({
    address: "127.0.0.1",
    port,
    weight: 1,
    labels: {},
    health: "unknown",
    source: "config"
  }))
})

/** Deterministic schedules for TestClock: first probe at once, no jitter. */
const testOptions: HealthOptions = { jitter: 0, spreadStart: false }

const start = (services: ReadonlyArray<Service>, options: HealthOptions = testOptions) =>
  Effect.gen(function*() {
    const registry = yield* SubscriptionRef.make(services)
    const context = yield* Layer.build(Health.layer(options).pipe(Layer.provide(Discovery.layerMemory(registry))))
    return { registry, health: Context.get(context, Health) }
  })

const realSleep = (ms: number) => Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, ms)))

/** Polls (in real time, up to 10 s) until `predicate` holds; the value that satisfied it. */
const waitFor = <A>(self: Effect.Effect<A>, predicate: (a: A) => boolean, what: string): Effect.Effect<A> =>
  Effect.gen(function*() {
    for (let i = 0; i < 1000; i++) {
      const value = yield* self
      if (predicate(value)) return value
      yield* realSleep(10)
    }
    return yield* Effect.dieMessage(`timed out waiting for ${what}`)
  })

const endpointOf = (
  health: Context.Tag.Service<Health>,
  name: string,
  port: number
): Effect.Effect<EndpointStatus | undefined> =>
  Effect.map(
    health.status,
    (status) => status.services.find((s) => s.name === name)?.endpoints.find((e) => e.endpoint === `127.0.0.1:${port}`)
  )

/** Waits for the probe due at the current TestClock time to have been recorded. */
const probed = (health: Context.Tag.Service<Health>, name: string, port: number) =>
  Effect.gen(function*() {
    const now = yield* TestClock.currentTimeMillis
    return yield* waitFor(endpointOf(health, name, port), (e) =>
      e?.history.at(-1)?.at === new Date(now).toISOString(), `a probe of ${name} at ${now}`)
  }).pipe(Effect.map((e) =>
    e!
  ))

/** Advances the TestClock by one interval and waits for that probe's result. */
const nextProbe = (health: Context.Tag.Service<Health>, name: string, port: number) =>
  Effect.zipRight(TestClock.adjust(Duration.seconds(10)), probed(health, name, port))

describe("Health (live probes against real servers)", () => {
  it.scoped("http: unknown until healthyThreshold, unhealthy after unhealthyThreshold, with history and Host", () =>
    Effect.gen(function*() {
      const target = yield* httpTarget()
      const { health } = yield* start([
        service("web", [target.port], check({ type: "http", path: "/ready", host: "web.mesh.local" }))
      ])

      let e = yield* probed(health, "web", target.port)
      assert.strictEqual(e.health, "unknown")
      assert.deepStrictEqual(target.lastRequest(), { method: "GET", path: "/ready", host: "web.mesh.local" })
      e = yield* nextProbe(health, "web", target.port)
      assert.strictEqual(e.health, "healthy")
      // The view is published by the layer's publisher fiber, a moment after the state changes.
      yield* waitFor(
        health.view,
        (view) => view.get("web")?.get(`127.0.0.1:${target.port}`) === "healthy",
        "the view to say healthy"
      )

      target.setHealthy(false)
      // Awaited, not asserted: the two probes after it are.
      yield* nextProbe(health, "web", target.port)
      e = yield* nextProbe(health, "web", target.port)
      assert.strictEqual(e.health, "healthy")
      e = yield* nextProbe(health, "web", target.port)
      assert.strictEqual(e.health, "unhealthy")
      assert.strictEqual(e.since, new Date(40_000).toISOString())
      assert.deepStrictEqual(e.history.map((r) => [r.ok, r.error ?? null]), [
        [true, null],
        [true, null],
        [false, "status 503"],
        [false, "status 503"],
        [false, "status 503"]
      ])

      target.setHealthy(true)
      yield* nextProbe(health, "web", target.port)
      e = yield* nextProbe(health, "web", target.port)
      assert.strictEqual(e.health, "healthy")
    }))

  it.scoped("history is bounded to historySize", () =>
    Effect.gen(function*() {
      const target = yield* httpTarget()
      const { health } = yield* start([service("web", [target.port], check({ type: "http" }))], {
        ...testOptions,
        historySize: 3
      })
      yield* probed(health, "web", target.port)
      for (let i = 0; i < 5; i++) yield* nextProbe(health, "web", target.port)
      const e = yield* endpointOf(health, "web", target.port)
      assert.deepStrictEqual(
        e?.history.map((r) => r.at),
        [30_000, 40_000, 50_000].map((t) => new Date(t).toISOString())
      )
    }))

  it.scoped("tcp: a refused port turns unhealthy, listening again turns healthy", () =>
    Effect.gen(function*() {
      const target = yield* tcpTarget
      const refused = yield* closedPort
      const { health } = yield* start([
        service("db", [target.port], check({ type: "tcp", unhealthyThreshold: 2 })),
        service("gone", [refused], check({ type: "tcp", unhealthyThreshold: 2 }))
      ])
      yield* probed(health, "db", target.port)
      assert.strictEqual((yield* nextProbe(health, "db", target.port)).health, "healthy")
      const gone = yield* probed(health, "gone", refused)
      assert.strictEqual(gone.health, "unhealthy")
      assert.strictEqual(gone.history.at(-1)?.error, "connection refused")

      yield* target.setUp(false)
      yield* nextProbe(health, "db", target.port)
      const down = yield* nextProbe(health, "db", target.port)
      assert.strictEqual(down.health, "unhealthy")
      assert.strictEqual(down.history.at(-1)?.error, "connection refused")
      yield* target.setUp(true)
      yield* nextProbe(health, "db", target.port)
      assert.strictEqual((yield* nextProbe(health, "db", target.port)).health, "healthy")
    }))

  it.scoped("timeout: a server that accepts and never answers; the probe's socket is closed", () =>
    Effect.gen(function*() {
      const target = yield* silentTarget
      // The deadline is a real timer inside the probe (see HealthProbes.ts), not the TestClock.
      const { health } = yield* start([
        service("slow", [target.port], check({ type: "http", timeout: "200ms", unhealthyThreshold: 1 }))
      ])
      yield* waitFor(Effect.sync(target.openConnections), (n) => n === 1, "the probe to connect")
      const e = yield* waitFor(endpointOf(health, "slow", target.port), (e) => e?.health === "unhealthy", "the timeout")
      assert.strictEqual(e!.history.at(-1)?.error, "timed out after 200ms")
      yield* waitFor(Effect.sync(target.openConnections), (n) => n === 0, "the probe socket to close")
    }))

  it.scoped("grpc: SERVING, NOT_SERVING, unknown service name; the channel closes with its endpoint", () =>
    Effect.gen(function*() {
      const target = yield* grpcTarget
      const { registry, health } = yield* start([
        service("echo", [target.port], check({ type: "grpc", healthyThreshold: 1, unhealthyThreshold: 1 })),
        service(
          "named",
          [target.port],
          check({ type: "grpc", service: "named", healthyThreshold: 1, unhealthyThreshold: 1 })
        )
      ])
      assert.strictEqual((yield* probed(health, "echo", target.port)).health, "healthy")
      const named = yield* probed(health, "named", target.port)
      assert.strictEqual(named.health, "unhealthy")
      assert.match(named.history.at(-1)?.error ?? "", /^NOT_FOUND/)
      // Two services probing the same target share one channel.
      assert.strictEqual((yield* health.status).grpcChannels, 1)

      target.setStatus("", "NOT_SERVING")
      target.setStatus("named", "SERVING")
      const e = yield* nextProbe(health, "echo", target.port)
      assert.strictEqual(e.health, "unhealthy")
      assert.strictEqual(e.history.at(-1)?.error, "NOT_SERVING")
      assert.strictEqual((yield* probed(health, "named", target.port)).health, "healthy")

      yield* SubscriptionRef.set(registry, [])
      const status = yield* waitFor(health.status, (s) => s.probes === 0, "probes to stop")
      assert.strictEqual(status.grpcChannels, 0)
      assert.deepStrictEqual(status.services, [])
    }))

  it.scoped("https: trusts the mesh CA when asked, and says why when it has none", () =>
    Effect.gen(function*() {
      const tls = yield* makeTestTls("web.mesh.local")
      const target = yield* httpTarget(tls)
      const trusted = check({
        type: "http",
        https: true,
        trustMeshCa: true,
        host: "web.mesh.local",
        healthyThreshold: 1,
        unhealthyThreshold: 1
      })
      const system = check({ type: "http", https: true, healthyThreshold: 1, unhealthyThreshold: 1 })
      const withCa = yield* start([service("web", [target.port], trusted), service("sys", [target.port], system)], {
        ...testOptions,
        meshCa: Effect.succeed(tls.caPem)
      })
      assert.strictEqual((yield* probed(withCa.health, "web", target.port)).health, "healthy")
      const sys = yield* probed(withCa.health, "sys", target.port)
      assert.strictEqual(sys.health, "unhealthy")
      assert.match(sys.history.at(-1)?.error ?? "", /certificate/)

      const noCa = yield* start([service("web", [target.port], trusted)])
      const e = yield* probed(noCa.health, "web", target.port)
      assert.strictEqual(e.health, "unhealthy")
      assert.match(e.history.at(-1)?.error ?? "", /trustMeshCa is set but no mesh CA/)
    }))

  it.scoped("fail open and closed: panic in status, availability false, view published on changes", () =>
    Effect.gen(function*() {
      const a = yield* closedPort
      const b = yield* closedPort
      const ok = yield* tcpTarget
      const tcp = check({ type: "tcp", unhealthyThreshold: 1 })
      const { health } = yield* start([
        service("open", [a, b], tcp, "open"),
        service("closed", [a], tcp, "closed"),
        service("fine", [ok.port, a], tcp),
        service("unchecked", [a], undefined)
      ])
      const changes = yield* health.changes.pipe(Stream.take(3), Stream.runCollect, Effect.fork)
      const status = yield* waitFor(
        health.status,
        (s) => s.services.filter((x) => x.panic).length === 2,
        "both services to panic"
      )
      const byName = new Map(status.services.map((s) => [s.name, s]))
      assert.deepStrictEqual(
        ["open", "closed", "fine"].map((
          n
        ) => [n, byName.get(n)?.panic, byName.get(n)?.available, byName.get(n)?.failMode]),
        [["open", true, false, "open"], ["closed", true, false, "closed"], ["fine", false, true, "open"]]
      )
      assert.deepStrictEqual(
        [...(yield* health.availability)].sort(),
        [["closed", false], ["fine", true], ["open", false], ["unchecked", true]]
      )
      const seen = yield* Fiber.join(changes)
      assert.isTrue([...seen].every((v) => v.get("unchecked") === undefined))
    }))

  it.scoped("a bound of 2 probes in flight still probes all ten endpoints", () =>
    Effect.gen(function*() {
      // The target holds every request until released, so what is in flight is seen from its side.
      const target = yield* gatedHttpTarget
      // Ten endpoints on one port: same address, so give each a distinct service.
      const services = Array.from({ length: 10 }, (_, i) =>
        service(`s${i}`, [target.port], check({ type: "http", timeout: "5s" })))
      const { health } = yield* start(services, { ...testOptions, maxConcurrentProbes: 2 })
      // Five rounds: two probes reach the target and no third, until those two are answered.
      for (let round = 1; round <= 5; round++) {
        yield* waitFor(
          Effect.sync(() =>
            target.requests()
          ),
          (n) => n === round * 2,
          `round ${round}: two probes arrive`
        )
        assert.strictEqual(target.inFlight(), 2)
        assert.strictEqual((yield* health.status).probesInFlight, 2)
        target.release()
      }
      const statuses = yield* waitFor(
        health.status,
        (s) => s.services.every((x) => x.endpoints[0]?.history.length === 1),
        "every endpoint probed once"
      )
      assert.isTrue(statuses.services.every((s) => s.endpoints[0]?.history[0]?.ok === true))
      assert.strictEqual(target.maxInFlight(), 2, "never more than the bound at the target")
      assert.strictEqual(target.requests(), 10)
      assert.strictEqual(statuses.probes, 10)
    }))

  it.scoped("a slot is held for the whole probe: two silent HTTP probes at a time", () =>
    Effect.gen(function*() {
      const target = yield* silentTarget
      const services = Array.from({ length: 6 }, (_, i) =>
        service(`s${i}`, [target.port], check({ type: "http", timeout: "5s" })))
      const { health } = yield* start(services, { ...testOptions, maxConcurrentProbes: 2 })
      yield* waitFor(Effect.sync(target.openConnections), (n) =>
        n === 2, "two probes connected")
      yield* realSleep(100)
      assert.strictEqual(target.maxOpenConnections(), 2)
      assert.strictEqual((yield* health.status).probesInFlight, 2)
    }))

  it.scoped("a probe that gets no slot before its next one is due is skipped and counted, not queued", () =>
    Effect.gen(function*() {
      const target = yield* silentTarget
      // One slot, two endpoints on a port that never answers: one probe holds the slot until its
      // (real) 1 s timeout, the other waits. Its next probe falls due (TestClock) while it waits.
      const services = [0, 1].map((i) => service(`s${i}`, [target.port], check({ type: "http", timeout: "1s" })))
      const { health } = yield* start(services, { ...testOptions, maxConcurrentProbes: 1 })
      yield* waitFor(
        health.status,
        (s) => s.probesInFlight === 1 && s.probesWaiting === 1,
        "one probe in flight, one waiting"
      )
      yield* TestClock.adjust(Duration.seconds(10))
      const status = yield* waitFor(health.status, (s) => s.probesMissed === 1, "the waiting probe to be skipped")
      assert.deepStrictEqual(status.services.map((s) => s.endpoints[0]?.missedProbes).sort(), [0, 1])
      assert.isAtMost(status.probesInFlight ?? 0, 1)
    }))

  it.scoped("a changed check restarts the endpoint's probe with the new settings", () =>
    Effect.gen(function*() {
      const target = yield* httpTarget()
      const { registry, health } = yield* start([
        service("web", [target.port], check({ type: "http", healthyThreshold: 1 }))
      ])
      assert.strictEqual((yield* probed(health, "web", target.port)).health, "healthy")
      yield* SubscriptionRef.set(registry, [
        service("web", [target.port], check({ type: "http", path: "/other", healthyThreshold: 2 }))
      ])
      const e = yield* waitFor(
        endpointOf(health, "web", target.port),
        (e) => e?.history.length === 1 && target.lastRequest()?.path === "/other",
        "the new check's first probe"
      )
      assert.strictEqual(e!.health, "unknown")
      assert.strictEqual((yield* health.status).probes, 1)
    }))
})
