import { assert, describe, it } from "@effect/vitest"
import * as grpc from "@grpc/grpc-js"
import { Context, Effect, Either, Layer, Option, Queue, Stream, SubscriptionRef, TestClock } from "effect"
import { Discovery } from "../layers/Discovery.js"
import { Health, type HealthView } from "../layers/Health.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { Snapshot } from "../layers/Snapshot.js"
import { Xds } from "../layers/Xds.js"
import type { MeshConfig } from "../schemas/Config.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import { TypeUrls } from "../src/xds/Protos.js"
import { healthService, ServingStatus } from "../src/xds/Wire.js"
import { AdsClient, envoyNode, grpcNode } from "./support/AdsClient.js"
import { eventually } from "./support/eventually.js"

const meshConfig = (
  services: ReadonlyArray<Record<string, unknown>>,
  extra: Record<string, unknown> = {}
): MeshConfig => {
  const decoded = decodeConfig({ mesh: { name: "test" }, services, ...extra }, "test")
  if (Either.isLeft(decoded)) throw new Error(decoded.left.message)
  return decoded.right
}

const echo = (ports: ReadonlyArray<number>) => ({
  name: "echo",
  protocol: "grpc",
  port: 50051,
  endpoints: ports.map((port) => ({ address: "127.0.0.1", port }))
})
const echoV2 = { name: "echo-v2", protocol: "grpc", port: 50051, endpoints: [{ address: "127.0.0.1", port: 7100 }] }
const initial = meshConfig([echo([7001, 7002]), echoV2])

const serverLayer = (config: MeshConfig, health: Layer.Layer<Health> = Health.layerNoop) => {
  const inputs = Layer.mergeAll(LiveConfig.layerMemory(config), health)
  const discovery = Discovery.layerEmbedded.pipe(Layer.provide(inputs))
  const snapshot = Snapshot.layer.pipe(Layer.provide(Layer.merge(inputs, discovery)))
  return Layer.mergeAll(
    Xds.layer({ host: "127.0.0.1", port: 0 }).pipe(Layer.provide(Layer.merge(snapshot, inputs))),
    snapshot,
    inputs
  )
}

const addressOf = Effect.map(Xds, (xds) => `127.0.0.1:${xds.address.port}`)
const apply = (config: MeshConfig) => Effect.flatMap(LiveConfig, (c) => c.apply(config, "test"))
const clientStatus = Effect.flatMap(Xds, (xds) => xds.status).pipe(Effect.map((s) => s.clients))

const ports = (cla: Record<string, any>): ReadonlyArray<number> =>
  (cla["endpoints"] ?? []).flatMap((l: any) =>
    l.lb_endpoints.map((e: any) => e.endpoint.address.socket_address.port_value)
  )

const sotwRequest = (type_url: string, names: ReadonlyArray<string>, ack?: { version: string; nonce: string }) => ({
  type_url,
  resource_names: names,
  ...(ack ? { version_info: ack.version, response_nonce: ack.nonce } : {})
})

describe("xDS server, State of the World", () => {
  it.scopedLive("serves a proxyless client's chain by name: listener → route → cluster → endpoints", () =>
    Effect.gen(function*() {
      const ads = yield* AdsClient.sotw(yield* addressOf)
      yield* ads.send({ node: grpcNode("client-1"), ...sotwRequest(TypeUrls.Listener, ["echo"]) })
      const lds = yield* ads.next(TypeUrls.Listener)
      assert.deepStrictEqual(lds.names, ["echo"])
      assert.strictEqual(lds.resources[0]!["api_listener"].api_listener.rds.route_config_name, "echo")
      assert.isNotEmpty(lds.version)
      yield* ads.send(sotwRequest(TypeUrls.Listener, ["echo"], lds))
      yield* ads.send(sotwRequest(TypeUrls.RouteConfiguration, ["echo"]))
      const rds = yield* ads.next(TypeUrls.RouteConfiguration)
      assert.strictEqual(rds.resources[0]!["virtual_hosts"][0].routes[0].route.cluster, "echo")
      yield* ads.send(sotwRequest(TypeUrls.Cluster, ["echo"]))
      const cds = yield* ads.next(TypeUrls.Cluster)
      assert.strictEqual(cds.resources[0]!["type"], "EDS")
      yield* ads.send(sotwRequest(TypeUrls.ClusterLoadAssignment, ["echo"]))
      const eds = yield* ads.next(TypeUrls.ClusterLoadAssignment)
      assert.deepStrictEqual(ports(eds.resources[0]!), [7001, 7002])
      assert.notStrictEqual(eds.nonce, lds.nonce)

      const [client] = yield* eventually(
        Effect.filterOrFail(
          clientStatus,
          (c) => c.length === 1 && c[0]!.types["Listener"]?.acknowledgedVersion === lds.version
        )
      )
      assert.strictEqual(client!.nodeId, "client-1")
      assert.strictEqual(client!.kind, "proxyless")
      assert.strictEqual(client!.protocol, "sotw")
    }).pipe(Effect.provide(serverLayer(initial))))

  it.scopedLive("never pushes again before the ACK, then sends the latest state once", () =>
    Effect.gen(function*() {
      const ads = yield* AdsClient.sotw(yield* addressOf)
      yield* ads.send({ node: grpcNode("c"), ...sotwRequest(TypeUrls.ClusterLoadAssignment, ["echo"]) })
      const first = yield* ads.next()
      assert.deepStrictEqual(ports(first.resources[0]!), [7001, 7002])
      // Not acknowledged: a burst of changes must not reach the client yet.
      const snapshots = yield* Snapshot
      const before = (yield* snapshots.current).snapshot.version
      yield* apply(meshConfig([echo([7001]), echoV2]))
      yield* apply(meshConfig([echo([7003]), echoV2]))
      yield* eventually(Effect.filterOrFail(snapshots.current, (p) => p.snapshot.version !== before))
      assert.isTrue(Option.isNone(yield* ads.poll("400 millis")))
      const [client] = yield* clientStatus
      assert.isTrue(client!.types["ClusterLoadAssignment"]!.waitingForAck)
      assert.strictEqual(client!.types["ClusterLoadAssignment"]!.pushes, 1)

      yield* ads.send(sotwRequest(TypeUrls.ClusterLoadAssignment, ["echo"], first))
      const second = yield* ads.next()
      assert.deepStrictEqual(ports(second.resources[0]!), [7003])
      assert.notStrictEqual(second.version, first.version)
    }).pipe(Effect.provide(serverLayer(initial))))

  it.scopedLive("records a NACK, keeps the client's last acknowledged version, and does not resend the rejected one", () =>
    Effect.gen(function*() {
      const withTimeout = (timeout: string) =>
        meshConfig([echo([7001]), echoV2], {
          policies: {
            traffic: [{ name: "t", service: "echo", routes: [{ destinations: [{ service: "echo" }], timeout }] }]
          }
        })
      const ads = yield* AdsClient.sotw(yield* addressOf)
      yield* ads.send({ node: grpcNode("c"), ...sotwRequest(TypeUrls.RouteConfiguration, ["echo"]) })
      const good = yield* ads.next()
      yield* ads.send(sotwRequest(TypeUrls.RouteConfiguration, ["echo"], good))
      yield* apply(withTimeout("2s"))
      const bad = yield* ads.next()
      assert.notStrictEqual(bad.version, good.version)
      yield* ads.send({
        ...sotwRequest(TypeUrls.RouteConfiguration, ["echo"], { version: good.version, nonce: bad.nonce }),
        error_detail: { code: 3, message: "route echo: unsupported thing" }
      })
      const client = yield* eventually(
        Effect.filterOrFail(clientStatus, (c) => c[0]?.types["RouteConfiguration"]?.lastNack !== null)
      )
      const rds = client[0]!.types["RouteConfiguration"]!
      assert.strictEqual(rds.lastNack!.message, "route echo: unsupported thing")
      assert.strictEqual(rds.lastNack!.version, bad.version)
      assert.strictEqual(rds.acknowledgedVersion, good.version)
      assert.strictEqual(rds.nacks, 1)
      assert.isTrue(Option.isNone(yield* ads.poll("400 millis")))
      // New content is pushed again.
      yield* apply(withTimeout("3s"))
      const next = yield* ads.next()
      assert.notStrictEqual(next.version, bad.version)
      assert.deepStrictEqual(next.resources[0]!["virtual_hosts"][0].routes[0].route.timeout, { seconds: "3", nanos: 0 })
    }).pipe(Effect.provide(serverLayer(initial))))

  it.scopedLive("answers every subscription change with all subscribed resources, and omits removed ones", () =>
    Effect.gen(function*() {
      const ads = yield* AdsClient.sotw(yield* addressOf)
      yield* ads.send({ node: grpcNode("c"), ...sotwRequest(TypeUrls.Cluster, ["echo"]) })
      const one = yield* ads.next()
      assert.deepStrictEqual(one.names, ["echo"])
      yield* ads.send(sotwRequest(TypeUrls.Cluster, ["echo", "echo-v2"], one))
      const two = yield* ads.next()
      assert.deepStrictEqual(two.names, ["echo", "echo-v2"])
      yield* ads.send(sotwRequest(TypeUrls.Cluster, ["echo-v2"], two))
      const three = yield* ads.next()
      assert.deepStrictEqual(three.names, ["echo-v2"])
      yield* ads.send(sotwRequest(TypeUrls.Cluster, ["echo", "echo-v2"], three))
      const four = yield* ads.next()
      yield* ads.send(sotwRequest(TypeUrls.Cluster, ["echo", "echo-v2"], four))
      // The service disappears: the next response leaves it out.
      yield* apply(meshConfig([echoV2]))
      const five = yield* ads.next()
      assert.deepStrictEqual(five.names, ["echo-v2"])
    }).pipe(Effect.provide(serverLayer(initial))))
})

describe("xDS server, State of the World, merged types", () => {
  it.scopedLive("an endpoint change sends only the ClusterLoadAssignment that changed; a new subscription gets only what it adds", () =>
    Effect.gen(function*() {
      const ads = yield* AdsClient.sotw(yield* addressOf)
      yield* ads.send({ node: grpcNode("c"), ...sotwRequest(TypeUrls.ClusterLoadAssignment, ["echo", "echo-v2"]) })
      const both = yield* ads.next(TypeUrls.ClusterLoadAssignment)
      assert.deepStrictEqual(both.names, ["echo", "echo-v2"])
      yield* ads.send(sotwRequest(TypeUrls.ClusterLoadAssignment, ["echo", "echo-v2"], both))
      yield* apply(meshConfig([echo([7001, 7002, 7003]), echoV2]))
      const changed = yield* ads.next(TypeUrls.ClusterLoadAssignment)
      assert.deepStrictEqual(changed.names, ["echo"])
      assert.deepStrictEqual(ports(changed.resources[0]!), [7001, 7002, 7003])
      // Leaving echo-v2 (with the ACK) and asking for it again: the client forgot it, so it is sent again, alone.
      yield* ads.send(sotwRequest(TypeUrls.ClusterLoadAssignment, ["echo"], changed))
      const left = yield* ads.next(TypeUrls.ClusterLoadAssignment)
      assert.deepStrictEqual(left.names, [])
      yield* ads.send(sotwRequest(TypeUrls.ClusterLoadAssignment, ["echo", "echo-v2"], left))
      const again = yield* ads.next(TypeUrls.ClusterLoadAssignment)
      assert.deepStrictEqual(again.names, ["echo-v2"])
    }).pipe(Effect.provide(serverLayer(initial))))
})

describe("xDS server, Delta", () => {
  it.scopedLive("gives a sidecar its wildcard listeners and clusters, sends only changes, and removes what is gone", () =>
    Effect.gen(function*() {
      const address = yield* addressOf
      const ads = yield* AdsClient.delta(address)
      yield* ads.send({ node: envoyNode("echo~pod-1"), type_url: TypeUrls.Cluster })
      const cds = yield* ads.next()
      assert.deepStrictEqual([...cds.names].sort(), ["inbound|echo", "outbound|echo", "outbound|echo-v2"])
      assert.deepStrictEqual(cds.removed, [])
      yield* ads.send({ type_url: TypeUrls.Cluster, response_nonce: cds.nonce })
      yield* ads.send({ type_url: TypeUrls.Listener })
      const lds = yield* ads.next()
      assert.deepStrictEqual([...lds.names].sort(), ["inbound|echo", "outbound|http"])
      yield* ads.send({ type_url: TypeUrls.Listener, response_nonce: lds.nonce })
      yield* ads.send({ type_url: TypeUrls.ClusterLoadAssignment, resource_names_subscribe: ["echo", "echo-v2"] })
      const eds = yield* ads.next()
      assert.deepStrictEqual([...eds.names].sort(), ["echo", "echo-v2"])
      yield* ads.send({ type_url: TypeUrls.ClusterLoadAssignment, response_nonce: eds.nonce })

      // One endpoint changes: one assignment is sent, nothing else.
      yield* apply(meshConfig([echo([7001]), echoV2]))
      const change = yield* ads.next()
      assert.strictEqual(change.typeUrl, TypeUrls.ClusterLoadAssignment)
      assert.deepStrictEqual(change.names, ["echo"])
      assert.deepStrictEqual(ports(change.resources[0]!), [7001])
      yield* ads.send({ type_url: TypeUrls.ClusterLoadAssignment, response_nonce: change.nonce })

      // A service goes away: its cluster and assignment are removed.
      yield* apply(meshConfig([echo([7001])]))
      const removedCds = yield* ads.next(TypeUrls.Cluster)
      assert.deepStrictEqual(removedCds.removed, ["outbound|echo-v2"])
      assert.deepStrictEqual(removedCds.names, [])

      // Unsubscribing needs no answer; a reconnect with the versions it has gets nothing it has.
      const again = yield* AdsClient.delta(address)
      yield* again.send({
        node: envoyNode("echo~pod-1"),
        type_url: TypeUrls.ClusterLoadAssignment,
        resource_names_subscribe: ["echo"],
        initial_resource_versions: { echo: change.versions["echo"]! }
      })
      assert.isTrue(Option.isNone(yield* again.poll("400 millis")))
      yield* again.send({ type_url: TypeUrls.ClusterLoadAssignment, resource_names_unsubscribe: ["echo"] })
      yield* again.send({ type_url: TypeUrls.ClusterLoadAssignment, resource_names_subscribe: ["echo"] })
      const resent = yield* again.next()
      assert.deepStrictEqual(resent.names, ["echo"])
      const clients = yield* clientStatus
      assert.deepStrictEqual(clients.map((c) => [c.nodeId, c.kind, c.protocol]), [["echo~pod-1", "envoy", "delta"], [
        "echo~pod-1",
        "envoy",
        "delta"
      ]])
    }).pipe(Effect.provide(serverLayer(initial))))
})

describe("grpc.health.v1", () => {
  it.scopedLive("reports the controller and each service's availability", () =>
    Effect.gen(function*() {
      const address = yield* addressOf
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => new grpc.Client(address, grpc.credentials.createInsecure())),
        (c) => Effect.sync(() => c.close())
      )
      const check = (service: string) =>
        Effect.async<ServingStatus, grpc.ServiceError>((resume) => {
          client.makeUnaryRequest(
            healthService.Check.path,
            healthService.Check.requestSerialize,
            healthService.Check.responseDeserialize,
            { service },
            (error, value) => resume(error ? Effect.fail(error) : Effect.succeed(value!))
          )
        })
      assert.strictEqual(yield* check(""), ServingStatus.SERVING)
      assert.strictEqual(yield* check("echo"), ServingStatus.SERVING)
      const unknown = yield* Effect.flip(check("nope"))
      assert.strictEqual(unknown.code, grpc.status.NOT_FOUND)
      const closedEmpty = meshConfig([{ ...echo([]), failMode: "closed" }, echoV2])
      yield* apply(closedEmpty)
      yield* eventually(Effect.filterOrFail(check("echo"), (s) => s === ServingStatus.NOT_SERVING))
    }).pipe(Effect.provide(serverLayer(initial))))
})

describe("health in the snapshot", () => {
  const view = (entries: Record<string, "healthy" | "unhealthy">): HealthView =>
    new Map([["echo", new Map(Object.entries(entries))]])

  it.scopedLive("an unhealthy endpoint leaves the assignment; grpc.health.v1 Watch follows availability", () =>
    Effect.gen(function*() {
      const health = yield* SubscriptionRef.make<HealthView>(new Map())
      const context = yield* Layer.build(serverLayer(initial, Health.layerMemory(health)))
      const address = `127.0.0.1:${Context.get(context, Xds).address.port}`
      const ads = yield* AdsClient.sotw(address)
      yield* ads.send({ node: grpcNode("c"), ...sotwRequest(TypeUrls.ClusterLoadAssignment, ["echo"]) })
      const first = yield* ads.next()
      assert.deepStrictEqual(ports(first.resources[0]!), [7001, 7002])
      yield* ads.send(sotwRequest(TypeUrls.ClusterLoadAssignment, ["echo"], first))

      const client = yield* Effect.acquireRelease(
        Effect.sync(() => new grpc.Client(address, grpc.credentials.createInsecure())),
        (c) => Effect.sync(() => c.close())
      )
      const statuses = yield* Queue.unbounded<ServingStatus>()
      const watch = client.makeServerStreamRequest(
        healthService.Watch.path,
        healthService.Watch.requestSerialize,
        healthService.Watch.responseDeserialize,
        { service: "echo" }
      )
      watch.on("data", (status: ServingStatus) => Queue.unsafeOffer(statuses, status))
      watch.on("error", () => {})
      yield* Effect.addFinalizer(() => Effect.sync(() => watch.cancel()))
      assert.strictEqual(yield* Queue.take(statuses), ServingStatus.SERVING)

      yield* SubscriptionRef.set(health, view({ "127.0.0.1:7001": "unhealthy", "127.0.0.1:7002": "healthy" }))
      const second = yield* ads.next()
      assert.deepStrictEqual(ports(second.resources[0]!), [7002])
      yield* ads.send(sotwRequest(TypeUrls.ClusterLoadAssignment, ["echo"], second))

      // Every endpoint unhealthy: fail open keeps both in the assignment, but echo is not serving.
      yield* SubscriptionRef.set(health, view({ "127.0.0.1:7001": "unhealthy", "127.0.0.1:7002": "unhealthy" }))
      const third = yield* ads.next()
      assert.deepStrictEqual(ports(third.resources[0]!), [7001, 7002])
      assert.strictEqual(yield* Queue.take(statuses), ServingStatus.NOT_SERVING)
    }))
})

describe("Snapshot debounce", () => {
  const snapshotLayer = (config: MeshConfig) => {
    const inputs = Layer.mergeAll(LiveConfig.layerMemory(config), Health.layerNoop)
    return Layer.merge(
      Snapshot.layer.pipe(Layer.provide(Layer.merge(inputs, Discovery.layerEmbedded.pipe(Layer.provide(inputs))))),
      inputs
    )
  }
  const withEndpoint = (port: number) => meshConfig([echo([port]), echoV2])

  it.scoped("coalesces a burst into one rebuild after the quiet window", () =>
    Effect.gen(function*() {
      const snapshots = yield* Snapshot
      const published = yield* snapshots.changes.pipe(Stream.take(2), Stream.runCollect, Effect.fork)
      yield* TestClock.adjust("10 millis")
      const before = (yield* snapshots.status).builds
      for (let i = 0; i < 5; i++) {
        yield* apply(withEndpoint(8000 + i))
        yield* TestClock.adjust("20 millis")
      }
      yield* TestClock.adjust("150 millis")
      const all = [...(yield* published.await.pipe(Effect.flatten))]
      const cla = all[1]!.snapshot.resources.get(TypeUrls.ClusterLoadAssignment)!.get("echo")!
      assert.notStrictEqual(
        cla.version,
        all[0]!.snapshot.resources.get(TypeUrls.ClusterLoadAssignment)!.get("echo")!.version
      )
      // The initial subscriptions' tick plus one for the whole burst.
      assert.isAtMost((yield* snapshots.status).builds - before, 2)
    }).pipe(Effect.provide(snapshotLayer(initial))))

  it.scoped("does not delay a rebuild beyond debounce.max while changes keep coming", () =>
    Effect.gen(function*() {
      const snapshots = yield* Snapshot
      yield* TestClock.adjust("200 millis")
      const start = (yield* snapshots.current).snapshot.version
      // A change every 50 ms (inside the 100 ms quiet window) for 1.5 s.
      for (let i = 0; i < 30; i++) {
        yield* apply(withEndpoint(9000 + i))
        yield* TestClock.adjust("50 millis")
      }
      assert.notStrictEqual((yield* snapshots.current).snapshot.version, start)
    }).pipe(
      Effect.provide(
        snapshotLayer(meshConfig([echo([7001]), echoV2], { controller: { debounce: { quiet: "100ms", max: "1s" } } }))
      )
    ))
})
