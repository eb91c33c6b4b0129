/**
 * Discovery and registration against Consul, with the real `consul` npm client.
 *
 * By default the target is the Consul HTTP API stand-in (test/support/ConsulStandIn.ts). With
 * CONSUL_HTTP_ADDR set (e.g. `http://127.0.0.1:8500`; CONSUL_HTTP_TOKEN is honoured), the same
 * behaviour tests run against that real agent, and the fault tests, which need the stand-in's
 * fault injection, are skipped. Describe titles say which target ran.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import Consul from "consul"
import { ConfigProvider, Context, Duration, Effect, Either, Exit, Layer, Option, Scope, SubscriptionRef } from "effect"
import * as NodeFs from "node:fs"
import * as Https from "node:https"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { ConsulClient } from "../layers/ConsulClient.js"
import { ConsulPolicies } from "../layers/ConsulPolicies.js"
import { ConsulRegistration } from "../layers/ConsulRegistration.js"
import { Discovery } from "../layers/Discovery.js"
import { Health, type HealthView } from "../layers/Health.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { registry } from "../layers/Metrics.js"
import { Snapshot } from "../layers/Snapshot.js"
import { Xds } from "../layers/Xds.js"
import type { MeshConfig } from "../schemas/Config.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import type { Service } from "../src/MeshState.js"
import { ConsulStandIn } from "./support/ConsulStandIn.js"
import { echoBackend, xdsClient } from "./support/EchoBackends.js"
import { eventually } from "./support/eventually.js"
import { makeTestTls } from "./support/healthTls.js"

const REAL_AGENT = process.env["CONSUL_HTTP_ADDR"]
const TARGET = REAL_AGENT
  ? `a real Consul agent at ${REAL_AGENT}`
  : "the Consul stand-in (set CONSUL_HTTP_ADDR to run against a real agent)"

/** Names unique to this run, so a real agent's other services and earlier runs do not interfere. */
const run = Math.random().toString(36).slice(2, 7)
const unique = (name: string) => `${name}-${run}`

const fast = { retry: { base: Duration.millis(20), cap: Duration.millis(200) }, minQueryInterval: Duration.millis(5) }

interface Target {
  readonly address: string
  readonly client: Consul
  /** The stand-in, when the target is the stand-in. */
  readonly standIn?: ConsulStandIn
}

const clientFor = (address: string) => {
  const url = new URL(address)
  const token = process.env["CONSUL_HTTP_TOKEN"]
  return new Consul({
    host: url.hostname,
    port: Number(url.port || (url.protocol === "https:" ? 443 : 80)),
    secure: url.protocol === "https:",
    ...(token ? { defaults: { token } } : {})
  })
}

/** A fresh stand-in and a client for it, both closed with the scope. */
const standInTarget = Effect.gen(function*() {
  const standIn = yield* ConsulStandIn.make
  const client = yield* Effect.acquireRelease(
    Effect.sync(() => clientFor(standIn.address)),
    (c) => Effect.sync(() => c.destroy())
  )
  return { address: standIn.address, client, standIn }
})

const target: Effect.Effect<Target, never, Scope.Scope> = REAL_AGENT
  ? Effect.acquireRelease(
    Effect.sync(() => ({ address: REAL_AGENT, client: clientFor(REAL_AGENT) })),
    (t) => Effect.sync(() => t.client.destroy())
  )
  : standInTarget

const configOf = (
  address: string,
  fields: Record<string, unknown> = {},
  consul: Record<string, unknown> = {}
): MeshConfig =>
  Either.getOrThrowWith(
    decodeConfig({
      mesh: { name: unique("mesh") },
      discovery: { consul: { address, watchWait: "2s", antiEntropyInterval: "300ms", ...consul } },
      ...fields
    }, "test"),
    (error) => new Error(error.message)
  )

/** The config, and the one Consul client built from it (as the composition root does). */
const configWithConsul = (config: MeshConfig) =>
  ConsulClient.layer.pipe(Layer.provideMerge(LiveConfig.layerMemory(config)))

const startDiscovery = (config: MeshConfig) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(Discovery.layer(fast).pipe(Layer.provide(configWithConsul(config))))
    return Context.get(context, Discovery)
  })

const promise = <A>(f: () => Promise<A>) => Effect.promise(f)

const registerInConsul = (client: Consul, name: string, port: number, extra: Record<string, unknown> = {}) =>
  promise(() => client.agent.service.register({ name, id: `${name}-${port}`, address: "127.0.0.1", port, ...extra }))

const deregisterInConsul = (client: Consul, id: string) => promise(() => client.agent.service.deregister(id))

const find = (services: ReadonlyArray<Service>, name: string) => services.find((s) => s.name === name)

/** Waits until Discovery lists `name` with exactly these ports (sorted). */
const waitForPorts = (discovery: Context.Tag.Service<Discovery>, name: string, ports: ReadonlyArray<number>) =>
  eventually(
    Effect.flatMap(discovery.services, (services) => {
      const got = find(services, name)?.endpoints.map((e) => e.port) ?? []
      return JSON.stringify(got) === JSON.stringify(ports)
        ? Effect.succeed(find(services, name))
        : Effect.fail(new Error(`${name}: ${JSON.stringify(got)}`))
    })
  )

const consulStatus = (discovery: Context.Tag.Service<Discovery>) =>
  Effect.map(
    discovery.status,
    (status) => (status as { consul: { connected: boolean; lastError: string | null; synced: boolean } }).consul
  )

const metric = (name: string) => promise(async () => (await registry.getSingleMetric(name)?.get())?.values[0]?.value)

describe(`Discovery watches Consul — ${TARGET}`, () => {
  it.scopedLive("a service registered in Consul reaches Discovery.changes, and leaves when deregistered", () =>
    Effect.gen(function*() {
      const { address, client } = yield* target
      const discovery = yield* startDiscovery(configOf(address))
      const name = unique("web")
      yield* registerInConsul(client, name, 7001, { meta: { protocol: "grpc" } })
      yield* registerInConsul(client, name, 7002, { meta: { protocol: "grpc" } })
      const web = yield* waitForPorts(discovery, name, [7001, 7002])
      assert.strictEqual(web?.source, "consul")
      assert.strictEqual(web?.protocol, "grpc")
      assert.deepStrictEqual(web?.endpoints.map((e) => e.source), ["consul", "consul"])

      yield* deregisterInConsul(client, `${name}-7001`)
      yield* waitForPorts(discovery, name, [7002])
      yield* deregisterInConsul(client, `${name}-7002`)
      yield* eventually(
        Effect.flatMap(discovery.services, (s) => (find(s, name) ? Effect.fail("still there") : Effect.void))
      )
      const status = yield* consulStatus(discovery)
      assert.isTrue(status.connected)
      assert.isTrue(status.synced)
    }))

  it.scopedLive("precedence: config > API > Consul for the same address:port; other endpoints merge", () =>
    Effect.gen(function*() {
      const { address, client } = yield* target
      const name = unique("api")
      const discovery = yield* startDiscovery(configOf(address, {
        services: [{ name, protocol: "grpc", port: 7100, endpoints: [{ address: "127.0.0.1", port: 7101, weight: 5 }] }]
      }))
      yield* discovery.register({ service: name, address: "127.0.0.1", port: 7102, weight: 3, labels: { from: "api" } })
      yield* registerInConsul(client, name, 7101, { meta: { protocol: "http" } })
      yield* registerInConsul(client, name, 7102)
      yield* registerInConsul(client, name, 7103)
      const service = yield* waitForPorts(discovery, name, [7101, 7102, 7103])
      assert.strictEqual(service?.source, "config")
      assert.strictEqual(service?.protocol, "grpc", "a Consul meta never overrides the file")
      assert.deepStrictEqual(service?.endpoints.map((e) => [e.port, e.source, e.weight]), [
        [7101, "config", 5],
        [7102, "api", 3],
        [7103, "consul", 1]
      ])
      for (const port of [7101, 7102, 7103]) yield* deregisterInConsul(client, `${name}-${port}`)
      yield* waitForPorts(discovery, name, [7101, 7102])
    }))
})

describe(`one Consul client for the process — ${TARGET}`, () => {
  it.scopedLive("a reload that changes discovery.consul is reported as needing a restart; the watch keeps its agent", () =>
    Effect.gen(function*() {
      const { address, client } = yield* target
      const config = configOf(address)
      const context = yield* Layer.build(Discovery.layer(fast).pipe(Layer.provideMerge(configWithConsul(config))))
      const discovery = Context.get(context, Discovery)
      const consul = Context.get(context, ConsulClient)
      const live = Context.get(context, LiveConfig)
      const restart = Effect.map(
        discovery.status,
        (s) => (s as { consul: { restartRequired: boolean } }).consul.restartRequired
      )
      assert.isFalse(yield* restart)
      yield* live.apply(configOf("http://127.0.0.1:1", {}), "test reload")
      yield* eventually(Effect.filterOrFail(consul.status, (s) => s.restartRequired))
      assert.isTrue(yield* restart)
      assert.strictEqual((yield* consul.status).address, address, "the client keeps the agent it was built with")
      const name = unique("after-reload")
      yield* registerInConsul(client, name, 7401)
      yield* waitForPorts(discovery, name, [7401])
      yield* deregisterInConsul(client, `${name}-7401`)
      // Back to the settings in force: nothing to restart for.
      yield* live.apply(config, "test reload back")
      yield* eventually(Effect.filterOrFail(consul.status, (s) => !s.restartRequired))
    }))
})

describe(`Consul to a proxyless gRPC client — ${TARGET}`, () => {
  it.scopedLive("an endpoint registered in Consul reaches a @grpc/grpc-js-xds client through the xDS server", () =>
    Effect.gen(function*() {
      const { address, client } = yield* target
      const first = yield* echoBackend("first")
      const second = yield* echoBackend("second")
      const name = unique("echo")
      const config = configOf(address)
      const inputs = Layer.mergeAll(configWithConsul(config), Health.layerNoop)
      const discovery = Discovery.layer(fast).pipe(Layer.provide(inputs))
      const snapshot = Snapshot.layer.pipe(Layer.provide(Layer.merge(inputs, discovery)))
      const context = yield* Layer.build(
        Xds.layer({ host: "127.0.0.1", port: 0 }).pipe(Layer.provide(Layer.merge(snapshot, inputs)))
      )
      const controller = `127.0.0.1:${Context.get(context, Xds).address.port}`

      yield* registerInConsul(client, name, first.port, { meta: { protocol: "grpc" } })
      const grpc = yield* xdsClient(controller, name, `consul-e2e-${run}`)
      assert.strictEqual(yield* grpc.call, "first")

      yield* registerInConsul(client, name, second.port, { meta: { protocol: "grpc" } })
      yield* eventually(Effect.filterOrFail(grpc.call, (answer) => answer === "second"))

      yield* deregisterInConsul(client, `${name}-${first.port}`)
      yield* eventually(
        Effect.gen(function*() {
          const before = first.calls()
          const answers = yield* Effect.all(Array.from({ length: 10 }, () => grpc.call), { concurrency: 1 })
          return before === first.calls() && answers.every((a) => a === "second")
            ? Effect.void
            : Effect.fail("still reaching the deregistered endpoint")
        }).pipe(Effect.flatten)
      )
      yield* deregisterInConsul(client, `${name}-${second.port}`)
    }))
})

describe(`ConsulRegistration — ${TARGET}`, () => {
  const agentServices = (client: Consul) =>
    promise(() => client.agent.service.list() as Promise<Record<string, { Service: string; Port: number }>>)
  const agentChecks = (client: Consul) =>
    promise(() => client.agent.check.list() as Promise<Record<string, { Status: string; ServiceID: string }>>)

  const startRegistration = (config: MeshConfig, view: SubscriptionRef.SubscriptionRef<HealthView>) =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
      const context = yield* Layer.buildWithScope(
        ConsulRegistration.layer(fast).pipe(
          Layer.provide(Layer.merge(configWithConsul(config), Health.layerMemory(view)))
        ),
        scope
      )
      return { registration: Context.get(context, ConsulRegistration), close: Scope.close(scope, Exit.void) }
    })

  it.scopedLive("registers services marked `register` with their check, and deregisters them on shutdown", () =>
    Effect.gen(function*() {
      const { address, client } = yield* target
      const name = unique("local")
      const config = configOf(address, {
        services: [{
          name,
          port: 7200,
          register: true,
          endpoints: [{ address: "127.0.0.1" }],
          healthCheck: { type: "tcp", interval: "5s", timeout: "1s" }
        }]
      })
      const view = yield* SubscriptionRef.make<HealthView>(new Map())
      const { close } = yield* startRegistration(config, view)
      const id = `mesh-${name}-127.0.0.1-7200`
      yield* eventually(
        Effect.flatMap(
          agentServices(client),
          (all) => (all[id]?.Port === 7200 ? Effect.void : Effect.fail("not registered"))
        )
      )
      const checks = yield* agentChecks(client)
      assert.isDefined(checks[`service:${id}`], "the agent runs the service's TCP check")
      yield* close
      const after = yield* agentServices(client)
      assert.isUndefined(after[id], "deregistered on shutdown")
    }))

  it.scopedLive("ttl mode: the controller's probe results reach Consul's TTL check", () =>
    Effect.gen(function*() {
      const { address, client } = yield* target
      const name = unique("ttl")
      const config = configOf(address, {
        services: [{ name, port: 7300, register: { check: "ttl" }, endpoints: [{ address: "127.0.0.1" }] }]
      })
      const view = yield* SubscriptionRef.make<HealthView>(new Map())
      yield* startRegistration(config, view)
      const checkId = `service:mesh-${name}-127.0.0.1-7300`
      const statusOf = (wanted: string) =>
        eventually(
          Effect.flatMap(
            agentChecks(client),
            (all) => (all[checkId]?.Status === wanted ? Effect.void : Effect.fail(all[checkId]?.Status))
          )
        )
      yield* statusOf("warning")
      yield* SubscriptionRef.set(view, new Map([[name, new Map([["127.0.0.1:7300", "healthy" as const]])]]))
      yield* statusOf("passing")
      yield* SubscriptionRef.set(view, new Map([[name, new Map([["127.0.0.1:7300", "unhealthy" as const]])]]))
      yield* statusOf("critical")
    }))
})

describe(`policies from a Consul KV key — ${TARGET}`, () => {
  it.scopedLive("a valid value is applied, a bad one rejected with its path (the last good kept), a deleted key falls back to the file", () =>
    Effect.gen(function*() {
      const { address, client } = yield* target
      const key = `mesh-controller/${unique("policies")}`
      const config = configOf(address, { services: [{ name: "echo", port: 1 }, { name: "echo-v2", port: 2 }] }, {
        policiesKey: key
      })
      const context = yield* Layer.build(ConsulPolicies.layer(fast).pipe(Layer.provide(configWithConsul(config))))
      const policies = Context.get(context, ConsulPolicies)
      const status = Effect.map(
        policies.status,
        (s) => s as { last: { _tag: string; errors?: ReadonlyArray<string> } | null; inForce: string }
      )
      yield* eventually(Effect.filterOrFail(status, (s) => s.last?._tag === "Absent"))
      assert.isTrue(Option.isNone(yield* policies.current))

      const canary =
        "traffic:\n  - name: canary\n    service: echo\n    routes:\n      - destinations: [{ service: echo, weight: 90 }, { service: echo-v2, weight: 10 }]\n"
      yield* promise(() => client.kv.set(key, canary))
      const applied = yield* eventually(Effect.filterOrFail(policies.current, Option.isSome))
      assert.deepStrictEqual(applied.value.traffic[0]!.routes[0]!.destinations.map((d) => d.weight), [90, 10])

      yield* promise(() =>
        client.kv.set(
          key,
          "traffic:\n  - name: bad\n    service: nowhere\n    routes: [{ destinations: [{ service: echo }] }]\n"
        )
      )
      const rejected = yield* eventually(Effect.filterOrFail(status, (s) => s.last?._tag === "Rejected"))
      assert.include(rejected.last!.errors!.join("\n"), "policies.traffic[0].service: unknown service \"nowhere\"")
      assert.strictEqual(
        (yield* policies.current).pipe(Option.map((p) => p.traffic[0]!.name), Option.getOrNull),
        "canary",
        "the last good value stays"
      )

      yield* promise(() => client.kv.del(key))
      yield* eventually(Effect.filterOrFail(policies.current, Option.isNone))
      assert.strictEqual((yield* status).inForce, "config file")
    }))
})

describe.skipIf(REAL_AGENT !== undefined)("Consul faults — the Consul stand-in only (fault injection)", () => {
  it.scopedLive("Consul unreachable at start: config services are served, status and metric say so, sync on return", () =>
    Effect.gen(function*() {
      const { client, standIn } = yield* standInTarget
      yield* promise(() => standIn.refuseConnections())
      const discovery = yield* startDiscovery(configOf(standIn.address, {
        services: [{ name: "cfg", port: 7400, endpoints: [{ address: "127.0.0.1" }] }]
      }))
      yield* waitForPorts(discovery, "cfg", [7400])
      const down = yield* eventually(
        Effect.flatMap(
          consulStatus(discovery),
          (s) => (s.lastError !== null ? Effect.succeed(s) : Effect.fail("no error yet"))
        )
      )
      assert.isFalse(down.connected)
      expect(down.lastError).toMatch(/ECONNREFUSED/)
      assert.strictEqual(yield* metric("mesh_controller_consul_up"), 0)

      yield* promise(() => standIn.acceptConnections())
      yield* registerInConsul(client, "late", 7401)
      yield* waitForPorts(discovery, "late", [7401])
      yield* waitForPorts(discovery, "cfg", [7400])
      assert.isTrue((yield* consulStatus(discovery)).connected)
      assert.strictEqual(yield* metric("mesh_controller_consul_up"), 1)
    }))

  it.scopedLive("an outage mid-run (500s, then refused connections) keeps the last known endpoints", () =>
    Effect.gen(function*() {
      const { client, standIn } = yield* standInTarget
      const discovery = yield* startDiscovery(configOf(standIn.address))
      yield* registerInConsul(client, "keep", 7500)
      yield* waitForPorts(discovery, "keep", [7500])

      standIn.failWith(500)
      standIn.restart() // drops the open blocking queries, so the watches ask again and meet the 500s
      yield* eventually(
        Effect.flatMap(consulStatus(discovery), (s) => (s.lastError?.includes("500") ? Effect.void : Effect.fail(s)))
      )
      yield* waitForPorts(discovery, "keep", [7500])
      yield* promise(() => standIn.refuseConnections())
      yield* eventually(
        Effect.flatMap(
          consulStatus(discovery),
          (s) => (s.lastError?.includes("ECONNREFUSED") ? Effect.void : Effect.fail(s))
        )
      )
      yield* waitForPorts(discovery, "keep", [7500])

      standIn.failWith(undefined)
      yield* promise(() => standIn.acceptConnections())
      // The restarted stand-in forgot "keep": once Consul answers again, that answer is the truth.
      yield* registerInConsul(client, "keep", 7501)
      yield* waitForPorts(discovery, "keep", [7501])
    }))

  it.scopedLive("a restart that forgets all registrations: anti-entropy registers them again", () =>
    Effect.gen(function*() {
      const standIn = yield* ConsulStandIn.make
      const config = configOf(standIn.address, {
        services: [{ name: "mine", port: 7600, register: true, endpoints: [{ address: "127.0.0.1" }] }]
      })
      const view = yield* SubscriptionRef.make<HealthView>(new Map())
      const context = yield* Layer.build(
        Layer.merge(Discovery.layer(fast), ConsulRegistration.layer(fast)).pipe(
          Layer.provide(Layer.merge(configWithConsul(config), Health.layerMemory(view)))
        )
      )
      const discovery = Context.get(context, Discovery)
      const registration = Context.get(context, ConsulRegistration)
      const id = "mesh-mine-127.0.0.1-7600"
      const registered = eventually(
        Effect.suspend(() =>
          standIn.registeredServices().some((s) => s.ID === id) ? Effect.void : Effect.fail("not registered")
        )
      )
      yield* registered
      // Consul's view of it arrives through the watch, merged with the config entry.
      yield* eventually(Effect.flatMap(discovery.status, (status) => {
        const entry = (status as { services: ReadonlyArray<{ name: string; endpointsBySource: { consul: number } }> })
          .services
          .find((s) => s.name === "mine")
        return entry?.endpointsBySource.consul === 0 ? Effect.void : Effect.fail(entry)
      }))

      standIn.restart()
      assert.isFalse(standIn.registeredServices().some((s) => s.ID === id))
      yield* registered
      // The agent has it back as soon as it answers the PUT; the controller books it as restored
      // once that answer has come back to it, so wait for the booking rather than race it.
      const status = yield* eventually(Effect.flatMap(registration.status, (raw) => {
        const s = raw as { registrations: ReadonlyArray<{ restored: number; registered: boolean }> }
        return s.registrations[0]!.restored >= 1 ? Effect.succeed(s) : Effect.fail(s)
      }))
      assert.isTrue(status.registrations[0]!.registered)
      expect(status.registrations[0]!.restored).toBeGreaterThanOrEqual(1)
      yield* waitForPorts(discovery, "mine", [7600])
    }))

  it.scopedLive("a registration the agent refuses is reported and retried next round; the others go through", () =>
    Effect.gen(function*() {
      const { standIn } = yield* standInTarget
      standIn.refusedIds.add("mesh-denied-127.0.0.1-7900")
      const config = configOf(standIn.address, {
        services: [
          { name: "denied", port: 7900, register: true, endpoints: [{ address: "127.0.0.1" }] },
          { name: "allowed", port: 7901, register: true, endpoints: [{ address: "127.0.0.1" }] }
        ]
      })
      const view = yield* SubscriptionRef.make<HealthView>(new Map())
      const context = yield* Layer.build(
        ConsulRegistration.layer(fast).pipe(
          Layer.provide(Layer.merge(configWithConsul(config), Health.layerMemory(view)))
        )
      )
      const registration = Context.get(context, ConsulRegistration)
      type Status = {
        lastError: string | null
        registrations: ReadonlyArray<{ service: string; registered: boolean; lastError: string | null }>
      }
      const status = yield* eventually(
        Effect.filterOrFail(Effect.map(registration.status, (s) => s as Status), (s: Status) => s.lastError !== null)
      )
      const byName = (name: string) => status.registrations.find((r) => r.service === name)!
      assert.isTrue(byName("allowed").registered)
      assert.isFalse(byName("denied").registered)
      expect(byName("denied").lastError).toMatch(/403/)
      assert.isTrue(standIn.registeredServices().some((s) => s.Service === "allowed"))

      standIn.refusedIds.clear()
      yield* eventually(
        Effect.suspend(() =>
          standIn.registeredServices().some((s) => s.Service === "denied") ? Effect.void : Effect.fail("not yet")
        )
      )
    }))

  it.scopedLive("the index going backwards resets the watch; slow answers still arrive", () =>
    Effect.gen(function*() {
      const { client, standIn } = yield* standInTarget
      const discovery = yield* startDiscovery(configOf(standIn.address))
      yield* registerInConsul(client, "rewind", 7700)
      yield* waitForPorts(discovery, "rewind", [7700])
      standIn.rewindIndex(3n)
      yield* registerInConsul(client, "rewind", 7701)
      yield* waitForPorts(discovery, "rewind", [7700, 7701])

      standIn.slowDown(300)
      yield* registerInConsul(client, "rewind", 7702)
      yield* waitForPorts(discovery, "rewind", [7700, 7701, 7702])
      standIn.slowDown(0)
    }))

  it.scopedLive("a snapshot restore (the index goes backwards) under the documented 5m wait: restored data at once, no spin", () =>
    Effect.gen(function*() {
      const { client, standIn } = yield* standInTarget
      // 5m is both Consul's default `wait` and the config's default `watchWait`.
      const discovery = yield* startDiscovery(configOf(standIn.address, {}, { watchWait: "5m" }))
      const kept = unique("kept")
      const added = unique("added")
      yield* registerInConsul(client, kept, 7801)
      yield* registerInConsul(client, kept, 7802)
      yield* waitForPorts(discovery, kept, [7801, 7802])
      const saved = standIn.snapshot()

      yield* deregisterInConsul(client, `${kept}-7801`)
      yield* registerInConsul(client, added, 7901)
      yield* waitForPorts(discovery, kept, [7802])
      yield* waitForPorts(discovery, added, [7901])
      // Every watch (catalog, two services) parked in a blocking query, as in steady state.
      yield* eventually(
        Effect.suspend(() => standIn.blockedQueries() === 3 ? Effect.void : Effect.fail(standIn.blockedQueries()))
      )

      standIn.restore(saved)
      // Each parked query answers with the lower index; the watch starts again from 0 and gets the
      // restored state without waiting out its 5 minutes.
      yield* waitForPorts(discovery, kept, [7801, 7802])
      yield* eventually(
        Effect.flatMap(discovery.services, (all) => (find(all, added) ? Effect.fail("still listed") : Effect.void))
      )

      // And then it rests: the catalog and `kept` watches back in blocking queries, and no query
      // issued while nothing changes (a watch stuck on the old, higher index would either spin
      // or never see the restored data).
      yield* eventually(
        Effect.suspend(() => standIn.blockedQueries() === 2 ? Effect.void : Effect.fail(standIn.blockedQueries()))
      )
      const before = standIn.requests.length
      yield* Effect.sleep(Duration.seconds(1))
      assert.strictEqual(standIn.requests.length, before, "no query while nothing changes")
      assert.strictEqual(standIn.blockedQueries(), 2)

      // Writes after the restore arrive as usual.
      yield* registerInConsul(client, kept, 7803)
      yield* waitForPorts(discovery, kept, [7801, 7802, 7803])
    }))

  it.scopedLive("TLS to Consul with the configured CA and server name; the ACL token is sent and never shown", () =>
    Effect.gen(function*() {
      const tls = yield* makeTestTls("consul.mesh.local")
      const standIn = yield* ConsulStandIn.makeTls(tls)
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "consul-tls-"))),
        (d) => Effect.sync(() => NodeFs.rmSync(d, { recursive: true, force: true }))
      )
      const caFile = NodePath.join(dir, "ca.pem")
      NodeFs.writeFileSync(caFile, tls.caPem)
      const withToken = Layer.setConfigProvider(
        ConfigProvider.fromMap(new Map([["CONSUL_HTTP_TOKEN", "s3cret-token"]]))
      )
      const start = (tlsOptions: Record<string, unknown>) =>
        Layer.build(
          Discovery.layer(fast).pipe(
            Layer.provide(configWithConsul(configOf(standIn.address, {}, { tls: tlsOptions }))),
            Layer.provide(withToken)
          )
        ).pipe(Effect.map((context) => Context.get(context, Discovery)))

      const untrusted = yield* start({})
      const refused = yield* eventually(Effect.filterOrFail(consulStatus(untrusted), (s) => s.lastError !== null))
      expect(refused.lastError).toMatch(/certificate/i)

      const trusted = yield* start({ caFile, serverName: "consul.mesh.local" })
      const client = yield* Effect.acquireRelease(
        Effect.sync(() =>
          new Consul({
            host: "127.0.0.1",
            port: standIn.port,
            secure: true,
            agent: new Https.Agent({ ca: tls.caPem, servername: "consul.mesh.local" })
          })
        ),
        (c) => Effect.sync(() => c.destroy())
      )
      yield* registerInConsul(client, "secure", 7800)
      yield* waitForPorts(trusted, "secure", [7800])
      assert.isTrue(standIn.tokens.has("s3cret-token"))
      assert.notInclude(JSON.stringify(yield* trusted.status), "s3cret")
    }))
})
