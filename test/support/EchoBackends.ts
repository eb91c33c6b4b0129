/**
 * Real gRPC backends on 127.0.0.1 that answer `/mesh.test.Echo/Call` with their own name, and a
 * proxyless `@grpc/grpc-js-xds` client that dials `xds:///<service>` through a controller.
 */
import * as grpc from "@grpc/grpc-js"
import * as grpcXds from "@grpc/grpc-js-xds"
import { Effect, type Scope } from "effect"

const PATH = "/mesh.test.Echo/Call"
const identity = (b: Buffer) => b

/** `/mesh.test.Echo/Call`: raw bytes both ways; the backend answers with its name. */
export const echoService = {
  Call: {
    path: PATH,
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity
  }
} satisfies grpc.ServiceDefinition

/** A backend named `name`; returns its port. Counts the calls it served. */
export const echoBackend = (
  name: string
): Effect.Effect<{ readonly port: number; readonly calls: () => number }, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<{ server: grpc.Server; port: number; count: { n: number } }>((resume) => {
      const server = new grpc.Server()
      const count = { n: 0 }
      server.addService(echoService, {
        Call: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
          count.n++
          callback(null, Buffer.from(name))
        }
      })
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) => {
        if (error) resume(Effect.die(error))
        else resume(Effect.succeed({ server, port, count }))
      })
    }),
    ({ server }) => Effect.sync(() => server.forceShutdown())
  ).pipe(Effect.map(({ count, port }) => ({ port, calls: () => count.n })))

let registered = false

/** The bootstrap a proxyless client needs: the controller, insecure creds, a node with a locality. */
export const bootstrapFor = (controller: string, nodeId: string) => ({
  xds_servers: [{ server_uri: controller, channel_creds: [{ type: "insecure" }], server_features: ["xds_v3"] }],
  node: { id: nodeId, locality: {} }
})

/**
 * A channel to `xds:///<service>`. The bootstrap is passed per channel (grpc-js-xds's test-only
 * option) so every test can run its own controller; production clients use GRPC_XDS_BOOTSTRAP.
 */
export const xdsClient = (controller: string, service: string, nodeId = "e2e-client") =>
  Effect.acquireRelease(
    Effect.sync(() => {
      if (!registered) {
        grpcXds.register()
        registered = true
      }
      return new grpc.Client(`xds:///${service}`, grpc.credentials.createInsecure(), {
        "grpc.TEST_ONLY_DO_NOT_USE_IN_PROD.xds_bootstrap_config": JSON.stringify(bootstrapFor(controller, nodeId))
      })
    }),
    (client) => Effect.sync(() => client.close())
  ).pipe(Effect.map((client) => ({
    /** One call; the name of the backend that answered. */
    call: Effect.async<string, grpc.ServiceError>((resume) => {
      client.makeUnaryRequest(
        PATH,
        identity,
        identity,
        Buffer.alloc(0),
        new grpc.Metadata(),
        { deadline: Date.now() + 10_000 },
        (error, value) => resume(error ? Effect.fail(error) : Effect.succeed(value!.toString()))
      )
    })
  })))
