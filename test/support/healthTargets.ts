import * as grpc from "@grpc/grpc-js"
import { Effect, type Scope } from "effect"
import * as Http from "node:http"
import * as Https from "node:https"
import * as Net from "node:net"
import type { HealthCheckRequest, HealthCheckResponse, ServingStatus } from "../../src/health/GrpcHealthProto.js"
import { healthPackageDefinition } from "../../src/health/GrpcHealthProto.js"
import { echoService } from "./EchoBackends.js"

/**
 * Health-check targets on 127.0.0.1 (port 0) that a test can turn healthy or unhealthy. Each is
 * scoped: the server and every connection it accepted are closed when the scope closes.
 */

const listen = (server: Net.Server, port = 0): Effect.Effect<number> =>
  Effect.async<number>((resume) => {
    server.listen(port, "127.0.0.1", () => resume(Effect.succeed((server.address() as Net.AddressInfo).port)))
  })

const closeServer = (server: Net.Server, sockets: Set<Net.Socket>): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    for (const socket of sockets) socket.destroy()
    if (!server.listening) return resume(Effect.void)
    server.close(() => resume(Effect.void))
  })

const track = (server: Net.Server): Set<Net.Socket> => {
  const sockets = new Set<Net.Socket>()
  server.on("connection", (socket: Net.Socket) => {
    sockets.add(socket)
    socket.once("close", () => sockets.delete(socket))
  })
  return sockets
}

export interface HttpTarget {
  readonly port: number
  /** Healthy answers 200, unhealthy 503. */
  readonly setHealthy: (healthy: boolean) => void
  readonly requests: () => number
  readonly lastRequest: () => { readonly method: string; readonly path: string; readonly host: string } | undefined
  readonly openConnections: () => number
}

export const httpTarget = (
  tls?: { readonly certPem: string; readonly keyPem: string }
): Effect.Effect<HttpTarget, never, Scope.Scope> =>
  Effect.gen(function*() {
    let healthy = true
    let count = 0
    let last: { method: string; path: string; host: string } | undefined
    const handler = (request: Http.IncomingMessage, response: Http.ServerResponse) => {
      count++
      last = { method: request.method ?? "", path: request.url ?? "", host: request.headers.host ?? "" }
      response.writeHead(healthy ? 200 : 503, { "content-type": "text/plain" })
      response.end(healthy ? "ok\n" : "unhealthy\n")
    }
    const server = tls
      ? Https.createServer({ cert: tls.certPem, key: tls.keyPem }, handler)
      : Http.createServer(handler)
    const sockets = track(server)
    const port = yield* Effect.acquireRelease(listen(server), () => closeServer(server, sockets))
    return {
      port,
      setHealthy: (value) => {
        healthy = value
      },
      requests: () => count,
      lastRequest: () => last,
      openConnections: () => sockets.size
    }
  })

export interface GatedHttpTarget {
  readonly port: number
  /** Requests received and not yet answered. */
  readonly inFlight: () => number
  /** The most requests ever held at once. */
  readonly maxInFlight: () => number
  readonly requests: () => number
  /** Answers every request held now with 200. */
  readonly release: () => void
}

/** An HTTP target that holds every request until the test releases it: probes in flight are visible from its side. */
export const gatedHttpTarget: Effect.Effect<GatedHttpTarget, never, Scope.Scope> = Effect.gen(function*() {
  const held = new Set<Http.ServerResponse>()
  let max = 0
  let count = 0
  const server = Http.createServer((_request, response) => {
    count++
    held.add(response)
    max = Math.max(max, held.size)
    response.once("close", () => held.delete(response))
  })
  const sockets = track(server)
  const port = yield* Effect.acquireRelease(listen(server), () => closeServer(server, sockets))
  return {
    port,
    inFlight: () => held.size,
    maxInFlight: () => max,
    requests: () => count,
    release: () => {
      for (const response of [...held]) {
        held.delete(response)
        response.writeHead(200, { "content-type": "text/plain" })
        response.end("ok\n")
      }
    }
  }
})

export interface TcpTarget {
  readonly port: number
  /** Down: the port is closed (connections refused); up: listening again on the same port. */
  readonly setUp: (up: boolean) => Effect.Effect<void>
  readonly connections: () => number
}

export const tcpTarget: Effect.Effect<TcpTarget, never, Scope.Scope> = Effect.gen(function*() {
  let count = 0
  const server = Net.createServer((socket) => {
    count++
    socket.end()
  })
  const sockets = track(server)
  const port = yield* Effect.acquireRelease(listen(server), () => closeServer(server, sockets))
  return {
    port,
    setUp: (
      up
    ) => (up ? (server.listening ? Effect.void : Effect.asVoid(listen(server, port))) : closeServer(server, sockets)),
    connections: () => count
  }
})

export interface SilentTarget {
  readonly port: number
  /** Connections accepted and still open (the server never writes or closes them). */
  readonly openConnections: () => number
  readonly maxOpenConnections: () => number
}

/** Accepts connections and never answers: probes against it can only time out. */
export const silentTarget: Effect.Effect<SilentTarget, never, Scope.Scope> = Effect.gen(function*() {
  let max = 0
  // Reads and discards what it is sent (so a client's close is seen), writes nothing.
  const server = Net.createServer((socket) => socket.resume())
  const sockets = track(server)
  server.on("connection", () => {
    max = Math.max(max, sockets.size)
  })
  const port = yield* Effect.acquireRelease(listen(server), () => closeServer(server, sockets))
  return { port, openConnections: () => sockets.size, maxOpenConnections: () => max }
})

/** A port nothing listens on (connections are refused): bound once to get it, then closed. */
export const closedPort: Effect.Effect<number> = Effect.gen(function*() {
  const server = Net.createServer()
  const port = yield* listen(server)
  yield* closeServer(server, new Set())
  return port
})

export interface GrpcTarget {
  readonly port: number
  /** Calls to `/mesh.test.Echo/Call` served (each answered with the target's name). */
  readonly echoCalls: () => number
  /** The status Check reports for `service` ("" is the server as a whole). */
  readonly setStatus: (service: string, status: ServingStatus) => void
  readonly checks: () => number
}

const healthService = (grpc.loadPackageDefinition(healthPackageDefinition) as unknown as {
  grpc: { health: { v1: { Health: { service: grpc.ServiceDefinition } } } }
}).grpc.health.v1.Health.service

/**
 * A gRPC server implementing grpc.health.v1.Health/Check (unknown services get NOT_FOUND, as the
 * spec says) and, so it can be a mesh backend, `/mesh.test.Echo/Call` answering with `name`.
 */
export const grpcTarget: Effect.Effect<GrpcTarget, never, Scope.Scope> = Effect.suspend(() =>
  grpcBackend("grpc-target")
)

export const grpcBackend = (name: string): Effect.Effect<GrpcTarget, never, Scope.Scope> =>
  Effect.gen(function*() {
    const statuses = new Map<string, ServingStatus>([["", "SERVING"]])
    let count = 0
    let echoes = 0
    const server = new grpc.Server()
    server.addService(echoService, {
      Call: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
        echoes++
        callback(null, Buffer.from(name))
      }
    })
    server.addService(healthService, {
      Check: (
        call: grpc.ServerUnaryCall<HealthCheckRequest, HealthCheckResponse>,
        callback: grpc.sendUnaryData<HealthCheckResponse>
      ) => {
        count++
        const status = statuses.get(call.request.service)
        if (status === undefined) {
          callback({ code: grpc.status.NOT_FOUND, details: `unknown service ${call.request.service}` })
        } else callback(null, { status })
      },
      Watch: (call: grpc.ServerWritableStream<HealthCheckRequest, HealthCheckResponse>) => {
        call.emit("error", { code: grpc.status.UNIMPLEMENTED, details: "Watch is not implemented by this target" })
      }
    })
    const port = yield* Effect.acquireRelease(
      Effect.async<number>((resume) => {
        server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) =>
          resume(error ? Effect.die(error) : Effect.succeed(port)))
      }),
      () =>
        Effect.sync(() =>
          server.forceShutdown()
        )
    )
    return {
      port,
      echoCalls: () => echoes,
      setStatus: (service, status) => {
        statuses.set(service, status)
      },
      checks: () => count
    }
  })
