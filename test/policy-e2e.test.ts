/**
 * Traffic policy end to end with the real proxyless client: `@grpc/grpc-js-xds` dials
 * `xds:///echo` through the controller (LiveConfig → Snapshot → Xds) and reaches real gRPC backends
 * whose behaviour the test chooses (fail once, hang).
 */
import { assert, describe, it } from "@effect/vitest"
import * as grpc from "@grpc/grpc-js"
import { Context, Effect, Either, Layer, type Scope } from "effect"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { Snapshot } from "../layers/Snapshot.js"
import { Xds } from "../layers/Xds.js"
import type { MeshConfig } from "../schemas/Config.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import { bootstrapFor, xdsClient } from "./support/EchoBackends.js"

const PATH = "/mesh.test.Echo/Call"
const identity = (b: Buffer) => b

type Behaviour = (attempt: number, reply: grpc.sendUnaryData<Buffer>) => void

/** A backend on 127.0.0.1 that serves `/mesh.test.Echo/Call` as `behaviour` says; counts attempts. */
const backend = (
  behaviour: Behaviour
): Effect.Effect<{ readonly port: number; readonly attempts: () => number }, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<{ server: grpc.Server; port: number; count: { n: number } }>((resume) => {
      const server = new grpc.Server()
      const count = { n: 0 }
      server.addService({
        Call: {
          path: PATH,
          requestStream: false,
          responseStream: false,
          requestSerialize: identity,
          requestDeserialize: identity,
          responseSerialize: identity,
          responseDeserialize: identity
        }
      }, {
        Call: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, reply: grpc.sendUnaryData<Buffer>) =>
          behaviour(++count.n, reply)
      })
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) => {
        if (error) resume(Effect.die(error))
        else resume(Effect.succeed({ server, port, count }))
      })
    }),
    ({ server }) => Effect.sync(() => server.forceShutdown())
  ).pipe(Effect.map(({ count, port }) => ({ port, attempts: () => count.n })))

const ok: Behaviour = (_, reply) => reply(null, Buffer.from("ok"))

const meshConfig = (
  port: number,
  route: Record<string, unknown>,
  extra: { readonly v2?: number; readonly routes?: ReadonlyArray<unknown> } = {}
): MeshConfig => {
  const decoded = decodeConfig({
    mesh: { name: "e2e" },
    services: [
      { name: "echo", protocol: "grpc", port: 50051, endpoints: [{ address: "127.0.0.1", port }] },
      ...(extra.v2 === undefined
        ? []
        : [{ name: "echo-v2", protocol: "grpc", port: 50051, endpoints: [{ address: "127.0.0.1", port: extra.v2 }] }])
    ],
    policies: {
      traffic: [{
        name: "echo-policy",
        service: "echo",
        routes: [...(extra.routes ?? []), { destinations: [{ service: "echo" }], ...route }]
      }]
    }
  }, "test")
  if (Either.isLeft(decoded)) throw new Error(decoded.left.message)
  return decoded.right
}

/** The controller (memory LiveConfig, embedded Discovery, no health checks, Snapshot, Xds); its address. */
const controller = (config: MeshConfig) =>
  Effect.gen(function*() {
    const inputs = Layer.mergeAll(LiveConfig.layerMemory(config), Health.layerNoop)
    const snapshot = Snapshot.layer.pipe(
      Layer.provide(Layer.merge(inputs, Discovery.layerEmbedded.pipe(Layer.provide(inputs))))
    )
    const context = yield* Layer.build(
      Xds.layer({ host: "127.0.0.1", port: 0 }).pipe(Layer.provide(Layer.merge(snapshot, inputs)))
    )
    return `127.0.0.1:${Context.get(context, Xds).address.port}`
  })

const codeOf = (call: Effect.Effect<string, grpc.ServiceError>) =>
  Effect.match(call, { onFailure: (error) => error.code as number, onSuccess: () => grpc.status.OK as number })

describe("traffic policy through a proxyless gRPC client", () => {
  it.scopedLive("retries recover a call against a backend that fails once", () =>
    Effect.gen(function*() {
      const flaky = yield* backend((attempt, reply) =>
        attempt === 1
          ? reply({ code: grpc.status.UNAVAILABLE, details: "first attempt fails" })
          : reply(null, Buffer.from("ok"))
      )
      const address = yield* controller(
        meshConfig(flaky.port, { retries: { attempts: 3, on: ["unavailable"], backoff: { baseInterval: "10ms" } } })
      )
      const client = yield* xdsClient(address, "echo")
      assert.strictEqual(yield* client.call, "ok")
      assert.strictEqual(flaky.attempts(), 2)
    }))

  it.scopedLive("an injected abort returns the configured status at about the configured percentage", () =>
    Effect.gen(function*() {
      const target = yield* backend(ok)
      const address = yield* controller(
        meshConfig(target.port, { fault: { abort: { grpcStatus: grpc.status.RESOURCE_EXHAUSTED, percent: 50 } } })
      )
      const client = yield* xdsClient(address, "echo")
      const codes = yield* Effect.all(Array.from({ length: 200 }, () => codeOf(client.call)), { concurrency: 8 })
      const aborted = codes.filter((c) => c === grpc.status.RESOURCE_EXHAUSTED).length
      assert.strictEqual(
        aborted + codes.filter((c) => c === grpc.status.OK).length,
        200,
        `unexpected codes: ${codes.join(",")}`
      )
      // Binomial(200, 0.5): the standard deviation is 3.5%; 0.3..0.7 is more than five either side.
      assert.isAbove(aborted / 200, 0.3)
      assert.isBelow(aborted / 200, 0.7)
      // Aborted calls never reach the backend.
      assert.strictEqual(target.attempts(), 200 - aborted)
    }))

  it.scopedLive("routes match on gRPC method and headers", () =>
    Effect.gen(function*() {
      const v1 = yield* backend((_, reply) => reply(null, Buffer.from("v1")))
      const v2 = yield* backend((_, reply) => reply(null, Buffer.from("v2")))
      const canary = {
        match: { grpc: { service: "mesh.test.Echo", method: "Call" }, headers: [{ name: "x-canary", exact: "1" }] },
        destinations: [{ service: "echo-v2" }]
      }
      const address = yield* controller(meshConfig(v1.port, {}, { v2: v2.port, routes: [canary] }))
      yield* xdsClient(address, "echo") // registers the xds: resolver
      const client = yield* Effect.acquireRelease(
        Effect.sync(() =>
          new grpc.Client("xds:///echo", grpc.credentials.createInsecure(), {
            "grpc.TEST_ONLY_DO_NOT_USE_IN_PROD.xds_bootstrap_config": JSON.stringify(bootstrapFor(address, "e2e-match"))
          })
        ),
        (c) => Effect.sync(() => c.close())
      )
      const call = (headers: Record<string, string>) =>
        Effect.async<string, grpc.ServiceError>((resume) => {
          const metadata = new grpc.Metadata()
          for (const [k, v] of Object.entries(headers)) metadata.set(k, v)
          client.makeUnaryRequest(PATH, identity, identity, Buffer.alloc(0), metadata, {
            deadline: Date.now() + 10_000
          }, (error, value) => resume(error ? Effect.fail(error) : Effect.succeed(value!.toString())))
        })
      assert.strictEqual(yield* call({ "x-canary": "1" }), "v2")
      assert.strictEqual(yield* call({ "x-canary": "0" }), "v1")
      assert.strictEqual(yield* call({}), "v1")
    }))

  it.scopedLive("a route timeout cuts a slow backend", () =>
    Effect.gen(function*() {
      const pending: Array<grpc.sendUnaryData<Buffer>> = []
      // Never answers on its own; the test's scope closes the server.
      const slow = yield* backend((_, reply) => void pending.push(reply))
      const address = yield* controller(meshConfig(slow.port, { timeout: "200ms" }))
      const client = yield* xdsClient(address, "echo")
      // The client's own deadline is 10 s: DEADLINE_EXCEEDED here comes from the route's timeout.
      assert.strictEqual(yield* codeOf(client.call), grpc.status.DEADLINE_EXCEEDED)
      assert.strictEqual(slow.attempts(), 1)
    }))
})
