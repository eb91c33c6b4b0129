import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer, Schema, Stream, SubscriptionRef } from "effect"
import { Discovery } from "../layers/Discovery.js"
import { Health, type HealthView } from "../layers/Health.js"
import { HealthCheck } from "../schemas/Config.js"
import type { Service } from "../src/MeshState.js"
import { grpcTarget, httpTarget, silentTarget, tcpTarget } from "./support/healthTargets.js"

// Its own file (so its own worker): the handle counts below must not see other tests' sockets.

const check = (fields: Record<string, unknown>): HealthCheck =>
  Schema.decodeUnknownSync(HealthCheck)({ interval: "20ms", timeout: "1s", ...fields })

const service = (name: string, port: number, healthCheck: HealthCheck): Service => ({
  name,
  protocol: "http",
  port,
  failMode: "open",
  tags: [],
  metadata: {},
  source: "config",
  healthCheck,
  endpoints: [{ address: "127.0.0.1", port, weight: 1, labels: {}, health: "unknown", source: "config" }]
})

const CYCLES = 1000
const tcpSockets = () => process.getActiveResourcesInfo().filter((r) => r === "TCPSocketWrap").length
const tick = Effect.promise(() => new Promise<void>((resolve) => setImmediate(resolve)))

/** Polls on every turn of the event loop, up to `seconds` of real time. */
const waitFor = <A>(
  self: Effect.Effect<A>,
  predicate: (a: A) => boolean,
  what: string,
  seconds = 10
): Effect.Effect<A> =>
  Effect.gen(function*() {
    const deadline = Date.now() + seconds * 1000
    while (Date.now() < deadline) {
      const value = yield* self
      if (predicate(value)) return value
      yield* tick
    }
    return yield* Effect.dieMessage(`timed out waiting for ${what}`)
  })

describe("Health: nothing outlives its endpoint", () => {
  it.scopedLive("1,000 add/remove cycles leave no fiber, socket or gRPC channel behind", () =>
    Effect.gen(function*() {
      const http = yield* httpTarget()
      const tcp = yield* tcpTarget
      const grpc = yield* grpcTarget
      const silent = yield* silentTarget
      const services = [
        service("h", http.port, check({ type: "http" })),
        service("t", tcp.port, check({ type: "tcp" })),
        service("g", grpc.port, check({ type: "grpc" })),
        service("s", silent.port, check({ type: "http" }))
      ]
      const registry = yield* SubscriptionRef.make<ReadonlyArray<Service>>([])
      const context = yield* Layer.build(
        Health.layer({ jitter: 0, spreadStart: false }).pipe(Layer.provide(Discovery.layerMemory(registry)))
      )
      const health = Context.get(context, Health)
      const baseline = tcpSockets()
      const untilView = (predicate: (view: HealthView) => boolean) =>
        health.changes.pipe(Stream.filter(predicate), Stream.take(1), Stream.runDrain)

      for (let i = 0; i < CYCLES; i++) {
        // Every tenth cycle probes all four targets (a gRPC channel takes milliseconds to set up);
        // the others one each, in turn, to keep the thousand cycles quick.
        const these = i % 10 === 0 ? services : [services[[0, 1, 3][i % 3]!]!]
        yield* SubscriptionRef.set(registry, these)
        // The view lists an endpoint once its probe fiber is running, and drops it once it is stopped.
        yield* untilView((view) => view.size === these.length)
        // Every tenth cycle, let probes get under way (sockets open, the gRPC channel connecting).
        if (i % 10 === 0) {
          yield* waitFor(Effect.sync(() => silent.openConnections()), (n) => n > 0, `cycle ${i}: a probe to connect`)
        }
        yield* SubscriptionRef.set(registry, [])
        yield* untilView((view) => view.size === 0)
      }

      const status = yield* health.status
      assert.deepStrictEqual(
        {
          probes: status.probes,
          inFlight: status.probesInFlight,
          channels: status.grpcChannels,
          services: status.services.length
        },
        { probes: 0, inFlight: 0, channels: 0, services: 0 }
      )
      assert.strictEqual((yield* health.view).size, 0)
      yield* waitFor(Effect.sync(tcpSockets), (n) => n <= baseline, "every probe socket to close")
      assert.strictEqual(silent.openConnections(), 0)
      assert.strictEqual(http.openConnections(), 0)
      assert.isAbove(http.requests() + tcp.connections() + grpc.checks(), 0)
    }), 120_000) // a thousand real cycles: seconds on an idle machine, more on a busy one
})
