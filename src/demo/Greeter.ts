/**
 * The demo's `greeter`: a real grpc-js server answering `/demo.Greeter/SayHello` with the version
 * and address that served the call, and grpc.health.v1 so the controller's gRPC health check
 * probes it. Messages are UTF-8 bytes (no .proto to ship: the demo's client and server agree).
 */
import * as grpc from "@grpc/grpc-js"
import { Data, Effect, type Scope } from "effect"
import { describeErrno } from "../Errno.js"
import { type HealthCheckRequest, healthService, ServingStatus } from "../xds/Wire.js"

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

/** What a greeter answers: which version and which instance served the call. */
export interface Greeting {
  readonly version: string
  readonly instance: string
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

/** A greeter instance on 127.0.0.1:`port`, serving until the scope closes. */
export const greeter = (
  version: string,
  port: number
): Effect.Effect<void, DemoPortBusy, Scope.Scope> => {
  const instance = `127.0.0.1:${port}`
  return Effect.acquireRelease(
    Effect.async<grpc.Server, DemoPortBusy>((resume) => {
      const server = new grpc.Server()
      server.addService(greeterService, {
        SayHello: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
          const who = call.request.toString("utf8") || "stranger"
          const greeting: Greeting = { version, instance, message: `hello ${who}, from greeter ${version}` }
          callback(null, Buffer.from(JSON.stringify(greeting)))
        }
      })
      server.addService(healthService, {
        Check: (
          _call: grpc.ServerUnaryCall<HealthCheckRequest, ServingStatus>,
          callback: grpc.sendUnaryData<ServingStatus>
        ) => callback(null, ServingStatus.SERVING),
        Watch: (call: grpc.ServerWritableStream<HealthCheckRequest, ServingStatus>) => {
          call.write(ServingStatus.SERVING)
        }
      })
      server.bindAsync(instance, grpc.ServerCredentials.createInsecure(), (error) => {
        if (error) {
          server.forceShutdown()
          resume(Effect.fail(new DemoPortBusy({ what: `greeter ${version} on ${instance}`, cause: error })))
        } else resume(Effect.succeed(server))
      })
    }),
    // A stopped instance drops its connections at once, as a crashed process would.
    (server) => Effect.sync(() => server.forceShutdown())
  ).pipe(Effect.asVoid)
}
