/**
 * End to end with the real proxyless client: `@grpc/grpc-js-xds` dials `xds:///<service>` through
 * the controller and reaches real gRPC backends on 127.0.0.1.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Either, Layer, Stream, SubscriptionRef } from "effect"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { type Published, Snapshot } from "../layers/Snapshot.js"
import { Xds } from "../layers/Xds.js"
import type { MeshConfig } from "../schemas/Config.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import { Types, TypeUrls } from "../src/xds/Protos.js"
import { edsCluster } from "../src/xds/Resources.js"
import { resource } from "../src/xds/XdsSnapshot.js"
import { echoBackend, xdsClient } from "./support/EchoBackends.js"
import { eventually } from "./support/eventually.js"

const meshConfig = (value: Record<string, unknown>): MeshConfig => {
  const decoded = decodeConfig({ mesh: { name: "e2e" }, ...value }, "test")
  if (Either.isLeft(decoded)) throw new Error(decoded.left.message)
  return decoded.right
}

const service = (name: string, ports: ReadonlyArray<number>) => ({
  name,
  protocol: "grpc",
  port: 50051,
  endpoints: ports.map((port) => ({ address: "127.0.0.1", port }))
})

/**
 * The controller: real LiveConfig (memory), Discovery, Health (noop), Snapshot and Xds. `corrupt`
 * decorates the snapshot the server sees, to publish a resource the client will reject.
 */
const controller = (config: MeshConfig, corrupt?: SubscriptionRef.SubscriptionRef<boolean>) => {
  const inputs = Layer.mergeAll(LiveConfig.layerMemory(config), Health.layerNoop)
  const snapshot = Snapshot.layer.pipe(
    Layer.provide(Layer.merge(inputs, Discovery.layerEmbedded.pipe(Layer.provide(inputs))))
  )
  const served = corrupt === undefined
    ? snapshot
    : Layer.effect(Snapshot, Effect.map(Snapshot, (real) => corrupting(real, corrupt))).pipe(Layer.provide(snapshot))
  return Layer.mergeAll(
    Xds.layer({ host: "127.0.0.1", port: 0 }).pipe(Layer.provide(Layer.merge(served, inputs))),
    inputs
  )
}

/** While `on`, the cluster `echo` is replaced by one with `LEAST_REQUEST`, which gRPC rejects. */
const corrupting = (
  real: Context.Tag.Service<Snapshot>,
  on: SubscriptionRef.SubscriptionRef<boolean>
): Context.Tag.Service<Snapshot> => {
  const tamper = ([published, bad]: readonly [Published, boolean]): Published => {
    if (!bad) return published
    const clusters = new Map(published.snapshot.resources.get(TypeUrls.Cluster))
    const services = {
      name: "echo",
      protocol: "grpc",
      port: 1,
      endpoints: [],
      failMode: "open",
      tags: [],
      metadata: {},
      source: "config"
    } as const
    clusters.set(
      "echo",
      resource("echo", Types.Cluster, "echo", { ...edsCluster("echo", services, false), lb_policy: "LEAST_REQUEST" })
    )
    const resources = new Map(published.snapshot.resources)
    resources.set(TypeUrls.Cluster, clusters)
    return {
      ...published,
      snapshot: { ...published.snapshot, resources, version: `${published.snapshot.version}-bad` }
    }
  }
  return {
    ...real,
    current: Effect.map(Effect.zip(real.current, SubscriptionRef.get(on)), tamper),
    changes: Stream.zipLatest(real.changes, on.changes).pipe(Stream.map(tamper))
  }
}

const withController = <A, E, R>(
  config: MeshConfig,
  body: (address: string) => Effect.Effect<A, E, R>,
  corrupt?: SubscriptionRef.SubscriptionRef<boolean>
) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(controller(config, corrupt))
    const xds = Context.get(context, Xds)
    return yield* body(`127.0.0.1:${xds.address.port}`).pipe(Effect.provide(context))
  })

const apply = (config: MeshConfig) => Effect.flatMap(LiveConfig, (c) => c.apply(config, "test"))

const tally = (names: ReadonlyArray<string>) => {
  const counts: Record<string, number> = {}
  for (const n of names) counts[n] = (counts[n] ?? 0) + 1
  return counts
}

describe("proxyless gRPC through the controller", () => {
  it.scopedLive("a call to xds:///echo reaches echo's endpoints", () =>
    Effect.gen(function*() {
      const a = yield* echoBackend("echo-a")
      const b = yield* echoBackend("echo-b")
      yield* withController(meshConfig({ services: [service("echo", [a.port, b.port])] }), (address) =>
        Effect.gen(function*() {
          const client = yield* xdsClient(address, "echo")
          const answers = yield* Effect.all(
            Array.from({ length: 20 }, () =>
              client.call),
            { concurrency: 1 }
          )
          assert.deepStrictEqual(Object.keys(tally(answers)).sort(), ["echo-a", "echo-b"])
          const status = yield* Effect.flatMap(Xds, (x) => x.status)
          const proxyless = status.clients.find((c) => c.kind === "proxyless")
          assert.isDefined(proxyless)
          assert.strictEqual(proxyless!.nodeId, "e2e-client")
          assert.isNotNull(proxyless!.types["ClusterLoadAssignment"]!.acknowledgedVersion)
        }))
    }))

  it.scopedLive("splits calls 80/20 between two services by the traffic policy", () =>
    Effect.gen(function*() {
      const v1 = yield* echoBackend("v1")
      const v2 = yield* echoBackend("v2")
      const config = meshConfig({
        services: [service("echo", [v1.port]), service("echo-v2", [v2.port])],
        policies: {
          traffic: [{
            name: "canary",
            service: "echo",
            routes: [{
              destinations: [{ service: "echo", weight: 80 }, { service: "echo-v2", weight: 20 }],
              timeout: "5s",
              retries: { attempts: 3, perTryTimeout: "1s", on: ["unavailable", "reset", "connect-failure"] }
            }]
          }]
        }
      })
      yield* withController(config, (address) =>
        Effect.gen(function*() {
          const client = yield* xdsClient(address, "echo")
          const answers = yield* Effect.all(Array.from({ length: 400 }, () => client.call), { concurrency: 8 })
          const share = (tally(answers)["v2"] ?? 0) / answers.length
          // Binomial(400, 0.2): the standard deviation is 2%; 0.12..0.28 is four of them either side.
          assert.isAbove(share, 0.12)
          assert.isBelow(share, 0.28)
          // The client took the route configuration (timeout, retries) without a NACK.
          const status = yield* Effect.flatMap(Xds, (x) => x.status)
          const rds = status.clients.find((c) => c.kind === "proxyless")!.types["RouteConfiguration"]!
          assert.strictEqual(rds.nacks, 0)
          assert.isNotNull(rds.acknowledgedVersion)
        }))
    }))

  it.scopedLive("an endpoint removed by a config reload stops receiving calls", () =>
    Effect.gen(function*() {
      const a = yield* echoBackend("keep")
      const b = yield* echoBackend("drop")
      yield* withController(meshConfig({ services: [service("echo", [a.port, b.port])] }), (address) =>
        Effect.gen(function*() {
          const client = yield* xdsClient(address, "echo")
          yield* eventually(Effect.filterOrFail(client.call, (name) =>
            name === "drop"))
          yield* apply(meshConfig({ services: [service("echo", [a.port])] }))
          // Once the update has landed, nothing more reaches the removed endpoint.
          yield* eventually(
            Effect.gen(function*() {
              const before = b.calls()
              const answers = yield* Effect.all(Array.from({ length: 20 }, () => client.call), { concurrency: 1 })
              return before === b.calls() && answers.every((n) => n === "keep")
                ? Effect.void
                : Effect.fail("still reaching the removed endpoint")
            }).pipe(Effect.flatten)
          )
        }))
    }))

  it.scopedLive("a resource the client rejects is recorded as a NACK; the client keeps its last good config", () =>
    Effect.gen(function*() {
      const a = yield* echoBackend("good")
      const corrupt = yield* SubscriptionRef.make(false)
      yield* withController(meshConfig({ services: [service("echo", [a.port])] }), (address) =>
        Effect.gen(function*() {
          const client = yield* xdsClient(address, "echo")
          assert.strictEqual(yield* client.call, "good")
          yield* SubscriptionRef.set(corrupt, true)
          const nacked = yield* eventually(
            Effect.flatMap(Xds, (x) => x.status).pipe(
              Effect.map((s) => s.clients.find((c) => c.kind === "proxyless")?.types["Cluster"]),
              Effect.filterOrFail((cds) => cds !== undefined && cds.lastNack !== null)
            )
          )
          assert.include(nacked!.lastNack!.message.toLowerCase(), "lb")
          assert.notStrictEqual(nacked!.acknowledgedVersion, nacked!.lastNack!.version)
          assert.strictEqual(nacked!.nacks, 1)
          const answers = yield* Effect.all(Array.from({ length: 10 }, () => client.call), { concurrency: 1 })
          assert.deepStrictEqual(tally(answers), { good: 10 })
        }), corrupt)
    }))
})
