/**
 * The demo's `greeter`: a proxyless xDS gRPC server (`XdsServer`, @grpc/grpc-js-xds) answering
 * `/demo.Greeter/SayHello` with its version, its address and the caller's identity as the TLS
 * handshake proved it. It runs as its own process, as an app on a mesh host would: the bootstrap
 * in $GRPC_XDS_BOOTSTRAP (the agent's) names the controller and the agent's certificate files, and
 * the controller's Listener for this address decides TLS (strict mTLS) and who may call (RBAC);
 * until that Listener arrives the server does not accept connections. Messages are UTF-8 bytes (no
 * .proto to ship: the demo's client and server agree).
 */
import * as grpc from "@grpc/grpc-js"
import * as grpcXds from "@grpc/grpc-js-xds"
import { Data, Effect, type Scope } from "effect"
import { createServer } from "node:net"
import { uriSans } from "../certs/Spiffe.js"
import { describeErrno } from "../Errno.js"

const identity = (bytes: Buffer) => bytes

export const SAY_HELLO = "/demo.Greeter/SayHello"

export const greeterService = {
  SayHello: {
    path: SAY_HELLO,
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity
  }
} satisfies grpc.ServiceDefinition

/** What a greeter answers: which version and instance served the call, and who it saw calling. */
export interface Greeting {
  readonly version: string
  readonly instance: string
  /** The caller's SPIFFE ID from its client certificate; "" over plaintext (mtls: permissive). */
  readonly peer: string
  readonly message: string
}

export class DemoPortBusy extends Data.TaggedError("DemoPortBusy")<{ readonly what: string; readonly cause: unknown }> {
  override get message() {
    // grpc-js wraps the errno in its own sentence; the reason is what a reader needs.
    const reason = /EADDRINUSE/.test(String((this.cause as Error | undefined)?.message))
      ? "address already in use"
      : describeErrno(this.cause)
    return `demo: cannot listen for ${this.what}: ${reason}` +
      " (another demo or `npm start` running? stop it, or change the port in the demo's config)"
  }
}

/**
 * A greeter instance on 127.0.0.1:`port`, serving until the scope closes. XdsServer takes its
 * Listener's name from the bound address, so the port is the configured one, never 0.
 */
export const greeter = (
  version: string,
  port: number
): Effect.Effect<void, DemoPortBusy, Scope.Scope> => {
  const instance = `127.0.0.1:${port}`
  return Effect.gen(function*() {
    yield* portFree(port, `greeter ${version} on ${instance}`)
    grpcXds.register()
    // A stopped instance drops its connections at once, as a crashed process would.
    const server = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const server = new grpcXds.XdsServer()
        server.addService(greeterService, {
          SayHello: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
            const who = call.request.toString("utf8") || "stranger"
            const peer = uriSans(call.getAuthContext().sslPeerCertificate?.subjectaltname)[0] ?? ""
            const greeting: Greeting = { version, instance, peer, message: `hello ${who}, from greeter ${version}` }
            callback(null, Buffer.from(JSON.stringify(greeting)))
          }
        })
        return server
      }),
      (server) => Effect.sync(() => server.forceShutdown())
    )
    // Until the controller's Listener arrives: outside the acquire, so a stop interrupts the wait.
    // The fallback credentials apply only where the controller sends no TLS context (mtls: permissive).
    yield* Effect.async<void, DemoPortBusy>((resume) => {
      server.bindAsync(
        instance,
        new grpcXds.XdsServerCredentials(grpc.ServerCredentials.createInsecure()),
        (error) => {
          if (error) resume(Effect.fail(new DemoPortBusy({ what: `greeter ${version} on ${instance}`, cause: error })))
          else resume(Effect.void)
        }
      )
    })
  })
}

/**
 * XdsServer opens its port only once the controller's Listener arrives, on every interface, and a
 * busy port then is an uncaught error event: ask first, the same way, so a clash is one clear line.
 */
const portFree = (port: number, what: string) =>
  Effect.async<void, DemoPortBusy>((resume) => {
    const probe = createServer()
    probe.once("error", (cause) => resume(Effect.fail(new DemoPortBusy({ what, cause }))))
    probe.listen(port, () => probe.close(() => resume(Effect.void)))
  })
