/**
 * The demo's `web` front: an HTTP server whose `GET /hello` calls `greeter` as a proxyless gRPC
 * client (`xds:///greeter`, @grpc/grpc-js-xds). It runs as its own process, as an app on a mesh
 * host would, and finds the controller through $GRPC_XDS_BOOTSTRAP (the bootstrap its agent
 * wrote): which greeter version answers is the controller's traffic policy at work, and whether it
 * may call at all is the greeter's RBAC from the controller, not this code's. The demo's `intruder`
 * is this same program with another identity.
 */
import * as grpc from "@grpc/grpc-js"
import * as grpcXds from "@grpc/grpc-js-xds"
import { Effect, type Scope } from "effect"
import { createServer } from "node:http"
import { DemoPortBusy, SAY_HELLO } from "./Greeter.js"

const identity = (bytes: Buffer) => bytes

/** Serves `GET /hello` and `GET /healthz` on 127.0.0.1:`port` until the scope closes. */
export const web = (port: number, target: string): Effect.Effect<void, DemoPortBusy, Scope.Scope> =>
  Effect.gen(function*() {
    grpcXds.register()
    const client = yield* Effect.acquireRelease(
      // The controller's Cluster decides TLS (strict mTLS: this process's identity from the agent's
      // files); the fallback applies only where it sends none (mtls: permissive).
      Effect.sync(() =>
        new grpc.Client(`xds:///${target}`, new grpcXds.XdsChannelCredentials(grpc.credentials.createInsecure()))
      ),
      (client) => Effect.sync(() => client.close())
    )
    const server = createServer((request, response) => {
      const path = (request.url ?? "/").split("?")[0]
      if (request.method === "GET" && path === "/healthz") {
        response.writeHead(200, { "content-type": "text/plain" }).end("ok\n")
        return
      }
      if (request.method !== "GET" || path !== "/hello") {
        response.writeHead(404, { "content-type": "text/plain" }).end("GET /hello or /healthz\n")
        return
      }
      client.makeUnaryRequest(
        SAY_HELLO,
        identity,
        identity,
        Buffer.from("web"),
        new grpc.Metadata(),
        { deadline: Date.now() + 5_000 },
        (error, value) => {
          if (error || value === undefined) {
            response.writeHead(502, { "content-type": "application/json" })
              .end(JSON.stringify({ error: error?.details ?? "no answer", code: error?.code }))
          } else {
            response.writeHead(200, { "content-type": "application/json" }).end(value)
          }
        }
      )
    })
    yield* Effect.acquireRelease(
      Effect.async<void, DemoPortBusy>((resume) => {
        server.once("error", (cause) => resume(Effect.fail(new DemoPortBusy({ what: `web on port ${port}`, cause }))))
        server.listen(port, "127.0.0.1", () => resume(Effect.void))
      }),
      () =>
        Effect.async<void>((resume) => {
          server.close(() => resume(Effect.void))
          server.closeAllConnections()
        })
    )
    yield* Effect.logInfo(`demo web: listening on http://127.0.0.1:${port}, calling xds:///${target}`)
  })
