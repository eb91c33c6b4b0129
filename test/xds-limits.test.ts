/**
 * Hostile but well-formed xDS clients: whatever they send, the server's memory, logs, metrics and
 * `/status` stay bounded, over real gRPC streams.
 */
import { assert, describe, it } from "@effect/vitest"
import * as grpc from "@grpc/grpc-js"
import { Effect, Either, Layer, Logger, type Scope } from "effect"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { registry } from "../layers/Metrics.js"
import { Snapshot } from "../layers/Snapshot.js"
import { Xds } from "../layers/Xds.js"
import type { MeshConfig } from "../schemas/Config.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import { TypeUrls } from "../src/xds/TypeUrls.js"
import { XdsLimits } from "../src/xds/XdsStream.js"
import { AdsClient, envoyNode, grpcNode } from "./support/AdsClient.js"
import { eventually } from "./support/eventually.js"

const meshConfig = (services: ReadonlyArray<Record<string, unknown>>): MeshConfig => {
  const decoded = decodeConfig({ mesh: { name: "test" }, services }, "test")
  if (Either.isLeft(decoded)) throw new Error(decoded.left.message)
  return decoded.right
}
const echo = { name: "echo", protocol: "grpc", port: 50051, endpoints: [{ address: "127.0.0.1", port: 7001 }] }
const config = meshConfig([echo])

/** Every log line the server writes, formatted as logfmt (what a log collector would store). */
const logLines: Array<string> = []
const capture = Logger.replace(
  Logger.defaultLogger,
  Logger.make((options) => void logLines.push(Logger.logfmtLogger.log(options)))
)

const serverLayer = () => {
  const inputs = Layer.mergeAll(LiveConfig.layerMemory(config), Health.layerNoop)
  const discovery = Discovery.layerEmbedded.pipe(Layer.provide(inputs))
  const snapshot = Snapshot.layer.pipe(Layer.provide(Layer.merge(inputs, discovery)))
  return Xds.layer({ host: "127.0.0.1", port: 0 }).pipe(Layer.provide(Layer.merge(snapshot, inputs)))
}
const serve = <A, E>(test: Effect.Effect<A, E, Xds | Scope.Scope>) =>
  test.pipe(Effect.provide(serverLayer()), Effect.provide(capture))

const addressOf = Effect.map(Xds, (xds) => `127.0.0.1:${xds.address.port}`)
const clients = Effect.flatMap(Xds, (xds) => xds.status).pipe(Effect.map((s) => s.clients))
const metricsText = Effect.promise(() => registry.metrics())

describe("xDS input bounds", () => {
  it.scopedLive("a type the server does not serve is neither kept nor a metric label: it counts as `other`", () =>
    serve(Effect.gen(function*() {
      const ads = yield* AdsClient.sotw(yield* addressOf)
      yield* ads.send({ node: grpcNode("c"), type_url: TypeUrls.ClusterLoadAssignment, resource_names: ["echo"] })
      yield* ads.next(TypeUrls.ClusterLoadAssignment)
      for (let i = 0; i < 300; i++) {
        yield* ads.send({ type_url: `type.googleapis.com/junk.v1.Junk${i}`, resource_names: [`r${i}`] })
      }
      yield* eventually(
        Effect.filterOrFail(
          metricsText,
          (text) =>
            text.includes(`mesh_controller_xds_requests_total{protocol="sotw",type="other",outcome="UnknownType"} 300`)
        )
      )
      const text = yield* metricsText
      assert.notInclude(text, "Junk")
      const [client] = yield* clients
      assert.deepStrictEqual(Object.keys(client!.types), ["ClusterLoadAssignment"])
      assert.isFalse(logLines.some((line) => line.includes("Junk1")))
    })))

  it.scopedLive("node ids and NACK details are cut to 1 KiB in /status, logs and metrics", () =>
    serve(Effect.gen(function*() {
      logLines.length = 0
      const hugeId = `echo~${"n".repeat(100_000)}`
      const hugeError = `bad: ${"e".repeat(1_000_000)}`
      const ads = yield* AdsClient.sotw(yield* addressOf)
      yield* ads.send({ node: envoyNode(hugeId), type_url: TypeUrls.ClusterLoadAssignment, resource_names: ["echo"] })
      const eds = yield* ads.next(TypeUrls.ClusterLoadAssignment)
      yield* ads.send({
        type_url: TypeUrls.ClusterLoadAssignment,
        resource_names: ["echo"],
        response_nonce: eds.nonce,
        error_detail: { code: 3, message: hugeError }
      })
      const [client] = yield* eventually(
        Effect.filterOrFail(clients, (c) => c[0]?.types["ClusterLoadAssignment"]?.nacks === 1)
      )
      const nack = client!.types["ClusterLoadAssignment"]!.lastNack!
      assert.isAtMost(client!.nodeId!.length, XdsLimits.shown + 64)
      assert.isTrue(client!.nodeId!.startsWith("echo~nnn"))
      assert.isAtMost(nack.message.length, XdsLimits.shown + 64)
      assert.isTrue(nack.message.startsWith("bad: eee"))
      // Every line the NACK and the connection wrote, together, is a few KiB, not a megabyte.
      const logged = logLines.reduce((n, line) => n + line.length, 0)
      assert.isAbove(logLines.filter((line) => line.includes("NACK")).length, 0)
      assert.isBelow(logged, 16 * 1024)
      assert.isBelow((yield* metricsText).length, 200_000)
    })))

  it.scopedLive("a request naming too many resources ends the stream with RESOURCE_EXHAUSTED; others are served", () =>
    serve(Effect.gen(function*() {
      const address = yield* addressOf
      const greedy = yield* AdsClient.sotw(address)
      const names = Array.from({ length: XdsLimits.namesPerRequest + 1 }, (_, i) => `n${i}`)
      yield* greedy.send({ node: grpcNode("greedy"), type_url: TypeUrls.ClusterLoadAssignment, resource_names: names })
      const ended = yield* greedy.ended
      assert.strictEqual(ended.code, grpc.status.RESOURCE_EXHAUSTED)
      assert.include(ended.details, `at most ${XdsLimits.namesPerRequest}`)

      const fair = yield* AdsClient.sotw(address)
      yield* fair.send({ node: grpcNode("fair"), type_url: TypeUrls.ClusterLoadAssignment, resource_names: ["echo"] })
      assert.deepStrictEqual((yield* fair.next(TypeUrls.ClusterLoadAssignment)).names, ["echo"])
    })))

  it.scopedLive("Delta subscriptions that add up past the per-stream bound end the stream; a long name is invalid", () =>
    serve(Effect.gen(function*() {
      const address = yield* addressOf
      const greedy = yield* AdsClient.delta(address)
      const chunk = 40_000
      for (let round = 0; round < 3; round++) {
        const names = Array.from({ length: chunk }, (_, i) => `r${round * chunk + i}`)
        yield* greedy.send({
          ...(round === 0 ? { node: envoyNode("greedy~1") } : {}),
          type_url: TypeUrls.ClusterLoadAssignment,
          resource_names_subscribe: names
        })
      }
      const ended = yield* greedy.ended
      assert.strictEqual(ended.code, grpc.status.RESOURCE_EXHAUSTED)
      assert.include(ended.details, `at most ${XdsLimits.subscriptionsPerStream}`)

      const long = yield* AdsClient.delta(address)
      yield* long.send({
        node: envoyNode("long~1"),
        type_url: TypeUrls.ClusterLoadAssignment,
        resource_names_subscribe: ["x".repeat(XdsLimits.nameLength + 1)]
      })
      assert.strictEqual((yield* long.ended).code, grpc.status.INVALID_ARGUMENT)
    })))
})
