/**
 * End to end: the live Health layer's probes decide where a proxyless `@grpc/grpc-js-xds` client's
 * calls go, through the real Snapshot and Xds layers.
 */
import { assert, describe, it } from "@effect/vitest"
import * as grpc from "@grpc/grpc-js"
import { Context, Effect, Either, Layer, Schema } from "effect"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { grpcProbe } from "../layers/HealthProbes.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { Snapshot } from "../layers/Snapshot.js"
import { Xds } from "../layers/Xds.js"
import { GrpcCheck, type MeshConfig } from "../schemas/Config.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import { xdsClient } from "./support/EchoBackends.js"
import { eventually } from "./support/eventually.js"
import { grpcBackend } from "./support/healthTargets.js"

const meshConfig = (ports: ReadonlyArray<number>): MeshConfig => {
  const decoded = decodeConfig({
    mesh: { name: "e2e" },
    services: [{
      name: "echo",
      protocol: "grpc",
      port: 50051,
      endpoints: ports.map((port) => ({ address: "127.0.0.1", port })),
      healthCheck: { type: "grpc", interval: "100ms", timeout: "1s", healthyThreshold: 1, unhealthyThreshold: 1 }
    }]
  }, "test")
  if (Either.isLeft(decoded)) throw new Error(decoded.left.message)
  return decoded.right
}

const controller = (config: MeshConfig) => {
  const configLayer = LiveConfig.layerMemory(config)
  const discovery = Discovery.layerEmbedded.pipe(Layer.provide(configLayer))
  const health = Health.layer().pipe(Layer.provide(discovery))
  const inputs = Layer.mergeAll(configLayer, discovery, health)
  const snapshot = Snapshot.layer.pipe(Layer.provide(inputs))
  return Layer.mergeAll(
    Xds.layer({ host: "127.0.0.1", port: 0 }).pipe(Layer.provide(Layer.merge(snapshot, configLayer))),
    inputs
  )
}

/** Whether the controller's grpc.health.v1 says `echo` is SERVING. */
const echoCheck = Schema.decodeUnknownSync(GrpcCheck)({ type: "grpc", service: "echo" })
const controllerSays = (client: grpc.Client) => Effect.either(grpcProbe(client, echoCheck))

const onlyReaches = (call: Effect.Effect<string, unknown>, names: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const answers = yield* Effect.all(Array.from({ length: 20 }, () => call), { concurrency: 1 })
    return answers.every((n) => names.includes(n)) && names.every((n) => answers.includes(n))
      ? Effect.void
      : Effect.fail(`calls reached ${[...new Set(answers)].join(", ")}, expected ${names.join(", ")}`)
  }).pipe(Effect.flatten)

describe("health checks steer proxyless gRPC calls", () => {
  it.scopedLive("an unhealthy backend stops receiving calls and gets them back when it recovers", () =>
    Effect.gen(function*() {
      const a = yield* grpcBackend("a")
      const b = yield* grpcBackend("b")
      const context = yield* Layer.build(controller(meshConfig([a.port, b.port])))
      const address = `127.0.0.1:${Context.get(context, Xds).address.port}`
      const client = yield* xdsClient(address, "echo")
      const healthClient = yield* Effect.acquireRelease(
        Effect.sync(() => new grpc.Client(address, grpc.credentials.createInsecure())),
        (c) => Effect.sync(() => c.close())
      )

      yield* eventually(onlyReaches(client.call, ["a", "b"]))

      b.setStatus("", "NOT_SERVING")
      yield* eventually(onlyReaches(client.call, ["a"]))
      const before = b.echoCalls()
      yield* onlyReaches(client.call, ["a"])
      assert.strictEqual(b.echoCalls(), before)
      assert.isTrue(Either.isRight(yield* controllerSays(healthClient)))

      // Every endpoint unhealthy: the service is in panic and the controller reports it down.
      a.setStatus("", "NOT_SERVING")
      yield* eventually(
        Effect.flatMap(
          controllerSays(healthClient),
          (r) => (Either.isLeft(r) ? Effect.void : Effect.fail("still SERVING"))
        )
      )
      const status = yield* Context.get(context, Health).status
      assert.isTrue(status.services.find((s) => s.name === "echo")?.panic)

      a.setStatus("", "SERVING")
      yield* eventually(onlyReaches(client.call, ["a"]))
      b.setStatus("", "SERVING")
      yield* eventually(onlyReaches(client.call, ["a", "b"]))
      assert.isTrue(Either.isRight(yield* controllerSays(healthClient)))
    }))

  // grpc-js-xds drops endpoints sent as UNHEALTHY ("priority policy has empty priority list"), so
  // in fail-open panic the assignment sends them as UNKNOWN (src/xds/Resources.ts).
  it.scopedLive("all endpoints unhealthy with failMode open: proxyless calls keep flowing to all", () =>
    Effect.gen(function*() {
      const a = yield* grpcBackend("a")
      const b = yield* grpcBackend("b")
      const context = yield* Layer.build(controller(meshConfig([a.port, b.port])))
      const client = yield* xdsClient(`127.0.0.1:${Context.get(context, Xds).address.port}`, "echo")
      yield* eventually(onlyReaches(client.call, ["a", "b"]))
      a.setStatus("", "NOT_SERVING")
      b.setStatus("", "NOT_SERVING")
      yield* eventually(
        Effect.flatMap(Context.get(context, Health).status, (s) =>
          s.services.find((x) => x.name === "echo")?.panic
            ? Effect.void
            : Effect.fail("not in panic yet"))
      )
      yield* eventually(onlyReaches(client.call, ["a", "b"]))
    }))
})
