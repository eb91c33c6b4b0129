import * as grpc from "@grpc/grpc-js"
import { Data, Duration, Effect, RcMap, type Scope } from "effect"
import * as Http from "node:http"
import * as Https from "node:https"
import * as Net from "node:net"
import type { HealthCheck } from "../schemas/Config.js"
import { formatDuration } from "../schemas/Duration.js"
import { describeErrno } from "../src/Errno.js"
import {
  HEALTH_CHECK_PATH,
  type HealthCheckRequest,
  type HealthCheckResponse,
  healthPackageDefinition
} from "../src/health/GrpcHealthProto.js"

/**
 * The three probes (HTTP(S), TCP connect, grpc.health.v1 Check). Each is an interruptible effect
 * with the check's timeout built in, that owns the socket or call it opens: finishing, timing out
 * or being interrupted (endpoint removed, shutdown) destroys the socket or cancels the call, so
 * nothing outlives the probe.
 */

/** A probe that did not succeed, with a reason a person can act on. */
export class ProbeFailed
  extends Data.TaggedError("ProbeFailed")<{ readonly reason: string; readonly cause?: unknown }>
{}

export type HttpCheck = Extract<HealthCheck, { type: "http" }>
export type GrpcCheck = Extract<HealthCheck, { type: "grpc" }>

export interface ProbeTarget {
  readonly address: string
  readonly port: number
}

/**
 * An async probe with its deadline built in. A probe is a socket or a call plus one timer; racing
 * it against an Effect timeout forks fibers per probe, which at a thousand probes a second cost
 * more CPU than the probes themselves (bench/health.ts). `start` opens the resource, calls
 * `settle` once with the outcome, and returns how to close it; the resource is closed on success,
 * failure, timeout and interruption alike.
 */
const deadlined = (
  timeout: Duration.Duration,
  start: (settle: (outcome: Effect.Effect<void, ProbeFailed>) => void) => () => void
): Effect.Effect<void, ProbeFailed> =>
  Effect.async<void, ProbeFailed>((resume) => {
    let done = false
    let close = () => {}
    const finish = () => {
      done = true
      clearTimeout(timer)
      close()
    }
    const settle = (outcome: Effect.Effect<void, ProbeFailed>) => {
      if (done) return
      finish()
      resume(outcome)
    }
    const timer = setTimeout(
      () => settle(Effect.fail(new ProbeFailed({ reason: `timed out after ${formatDuration(timeout)}` }))),
      Duration.toMillis(timeout)
    )
    close = start(settle)
    if (done) close()
    return Effect.sync(finish)
  })

const hostName = (host: string): string => host.replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1")

/** An HTTP(S) request on a fresh connection (`Connection: close`): no idle sockets per endpoint. */
export const httpProbe = (
  target: ProbeTarget,
  check: HttpCheck,
  ca: string | undefined
): Effect.Effect<void, ProbeFailed> =>
  deadlined(check.timeout, (resume) => {
    const headers: Record<string, string> = { connection: "close", "user-agent": "mesh-controller-health/1" }
    if (check.host !== undefined) headers.host = check.host
    const serverName = check.host !== undefined ? hostName(check.host) : target.address
    const options: Https.RequestOptions = {
      host: target.address,
      port: target.port,
      method: check.method,
      path: check.path,
      headers,
      agent: false
    }
    const request = check.https
      ? Https.request({
        ...options,
        ...(ca !== undefined ? { ca } : {}),
        ...(Net.isIP(serverName) === 0 ? { servername: serverName } : {}),
        rejectUnauthorized: true
      })
      : Http.request(options)
    request.once("response", (response) => {
      const status = response.statusCode ?? 0
      // Read the body to its end so the server's close, not ours, ends the connection.
      response.resume()
      response.once("end", () =>
        resume(
          check.expectedStatuses.includes(status)
            ? Effect.void
            : Effect.fail(new ProbeFailed({ reason: `status ${status}` }))
        ))
      response.once("error", (error) =>
        resume(Effect.fail(new ProbeFailed({ reason: describeErrno(error), cause: error }))))
    })
    request.once("error", (error) =>
      resume(Effect.fail(new ProbeFailed({ reason: describeErrno(error), cause: error }))))
    request.end()
    return () => request.destroy()
  })

/** Succeeds once a TCP connection is established, then closes it. */
export const tcpProbe = (target: ProbeTarget, timeout: Duration.Duration): Effect.Effect<void, ProbeFailed> =>
  deadlined(timeout, (resume) => {
    const socket = Net.connect({ host: target.address, port: target.port })
    socket.once("connect", () => {
      socket.destroy()
      resume(Effect.void)
    })
    socket.once("error", (error) => {
      socket.destroy()
      resume(Effect.fail(new ProbeFailed({ reason: describeErrno(error), cause: error })))
    })
    return () => socket.destroy()
  })

const checkMethod = healthPackageDefinition["grpc.health.v1.Health"] as unknown as {
  readonly Check: {
    readonly requestSerialize: (value: HealthCheckRequest) => Buffer
    readonly responseDeserialize: (bytes: Buffer) => HealthCheckResponse
  }
}

/** One grpc.health.v1 Check call on a pooled channel; SERVING is the only success. */
export const grpcProbe = (client: grpc.Client, check: GrpcCheck): Effect.Effect<void, ProbeFailed> =>
  deadlined(check.timeout, (resume) => {
    const call = client.makeUnaryRequest<HealthCheckRequest, HealthCheckResponse>(
      HEALTH_CHECK_PATH,
      checkMethod.Check.requestSerialize,
      checkMethod.Check.responseDeserialize,
      { service: check.service },
      new grpc.Metadata(),
      {},
      (error, response) => {
        if (error) {
          const code = grpc.status[error.code] ?? String(error.code)
          resume(Effect.fail(new ProbeFailed({ reason: `${code}: ${error.details}`, cause: error })))
        } else if (response?.status === "SERVING") {
          resume(Effect.void)
        } else {
          resume(Effect.fail(new ProbeFailed({ reason: response?.status ?? "empty response" })))
        }
      }
    )
    return () => call.cancel()
  })

export interface GrpcPoolOptions {
  /**
   * grpc-js backs off reconnects up to 120 s by default, and a channel in backoff fails calls at
   * once: a recovered target would look down for minutes. Capping the backoff near the probe
   * interval keeps recovery detection within a probe or two.
   */
  readonly maxReconnectBackoff: Duration.Duration
}

const nextTurn = Effect.async<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})

/**
 * Channels to gRPC targets, one per `address:port`, closed when the last probe using it stops
 * (and with it, its connection).
 */
export const makeGrpcPool = (
  options: GrpcPoolOptions
): Effect.Effect<RcMap.RcMap<string, grpc.Client>, never, Scope.Scope> =>
  RcMap.make({
    lookup: (target: string) =>
      Effect.acquireRelease(
        Effect.sync(() =>
          new grpc.Client(target, grpc.credentials.createInsecure(), {
            "grpc.initial_reconnect_backoff_ms": Math.min(1000, Duration.toMillis(options.maxReconnectBackoff)),
            "grpc.max_reconnect_backoff_ms": Duration.toMillis(options.maxReconnectBackoff),
            "grpc.enable_retries": 0
          })
        ),
        // grpc-js leaks the connection of a channel closed while its name resolution is still
        // pending (the resolver's answer, one tick later, builds a subchannel nobody releases).
        // A channel whose endpoint comes and goes at once hits this; waiting a turn of the event
        // loop lets the resolution land so `close` releases it.
        (client) => Effect.zipRight(nextTurn, Effect.sync(() => client.close()))
      )
  })
