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
 * A probe ready to start, at the level of callbacks: it opens its socket or call, calls `settle`
 * once with the outcome (`undefined`: success) after closing what it opened, and returns how to
 * close it early (interruption; `settle` is then never called). Health runs a thousand of these a
 * second: its probe loop waits for a slot, starts the probe and records the result in one async
 * step, so a probe costs no fibers and no effect steps of its own (bench/health.ts).
 */
export type ProbeStart = (settle: (failure: ProbeFailed | undefined) => void) => () => void

/**
 * A probe with its deadline built in: a socket or a call plus one timer (racing it against an
 * Effect timeout forks fibers per probe). `open` opens the resource, reports the outcome once, and
 * returns how to close it; the resource is closed on success, failure, timeout and interruption
 * alike, before `settle` is called.
 */
const deadlined = (
  timeout: Duration.Duration,
  open: (report: (failure: ProbeFailed | undefined) => void) => () => void
): ProbeStart =>
(settle) => {
  let done = false
  let close = () => {}
  const finish = () => {
    done = true
    clearTimeout(timer)
    close()
  }
  const report = (failure: ProbeFailed | undefined) => {
    if (done) return
    finish()
    settle(failure)
  }
  const timer = setTimeout(
    () => report(new ProbeFailed({ reason: `timed out after ${formatDuration(timeout)}` })),
    Duration.toMillis(timeout)
  )
  close = open(report)
  if (done) close()
  return () => {
    if (!done) finish()
  }
}

/** A probe as an interruptible effect: interrupting it closes its socket or call. */
export const runProbe = (start: ProbeStart): Effect.Effect<void, ProbeFailed> =>
  Effect.async<void, ProbeFailed>((resume) => {
    const close = start((failure) => resume(failure === undefined ? Effect.void : Effect.fail(failure)))
    return Effect.sync(close)
  })

/** A probe that fails at once, for a check that cannot run (say why in `reason`). */
export const failingProbe = (reason: string): ProbeStart => (settle) => {
  settle(new ProbeFailed({ reason }))
  return () => {}
}

const hostName = (host: string): string => host.replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1")

/** An HTTP(S) request on a fresh connection (`Connection: close`): no idle sockets per endpoint. */
export const httpProbeStart = (target: ProbeTarget, check: HttpCheck, ca: string | undefined): ProbeStart => {
  // Built once per probe loop: only the request itself is made per probe.
  const headers: Record<string, string> = { connection: "close", "user-agent": "mesh-controller-health/1" }
  if (check.host !== undefined) headers.host = check.host
  const serverName = check.host !== undefined ? hostName(check.host) : target.address
  const plain: Https.RequestOptions = {
    host: target.address,
    port: target.port,
    method: check.method,
    path: check.path,
    headers,
    agent: false
  }
  const options: Https.RequestOptions = check.https
    ? {
      ...plain,
      ...(ca !== undefined ? { ca } : {}),
      ...(Net.isIP(serverName) === 0 ? { servername: serverName } : {}),
      rejectUnauthorized: true
    }
    : plain
  const expected = check.expectedStatuses
  return deadlined(check.timeout, (report) => {
    const request = check.https ? Https.request(options) : Http.request(options)
    request.once("response", (response) => {
      const status = response.statusCode ?? 0
      // Read the body to its end so the server's close, not ours, ends the connection.
      response.resume()
      response.once(
        "end",
        () => report(expected.includes(status) ? undefined : new ProbeFailed({ reason: `status ${status}` }))
      )
      response.once("error", (error) => report(new ProbeFailed({ reason: describeErrno(error), cause: error })))
    })
    request.once("error", (error) => report(new ProbeFailed({ reason: describeErrno(error), cause: error })))
    request.end()
    return () => request.destroy()
  })
}

export const httpProbe = (
  target: ProbeTarget,
  check: HttpCheck,
  ca: string | undefined
): Effect.Effect<void, ProbeFailed> => runProbe(httpProbeStart(target, check, ca))

/** Succeeds once a TCP connection is established, then closes it. */
export const tcpProbeStart = (target: ProbeTarget, timeout: Duration.Duration): ProbeStart =>
  deadlined(timeout, (report) => {
    const socket = Net.connect({ host: target.address, port: target.port })
    socket.once("connect", () => {
      socket.destroy()
      report(undefined)
    })
    socket.once("error", (error) => {
      socket.destroy()
      report(new ProbeFailed({ reason: describeErrno(error), cause: error }))
    })
    return () => socket.destroy()
  })

export const tcpProbe = (target: ProbeTarget, timeout: Duration.Duration): Effect.Effect<void, ProbeFailed> =>
  runProbe(tcpProbeStart(target, timeout))

const checkMethod = healthPackageDefinition["grpc.health.v1.Health"] as unknown as {
  readonly Check: {
    readonly requestSerialize: (value: HealthCheckRequest) => Buffer
    readonly responseDeserialize: (bytes: Buffer) => HealthCheckResponse
  }
}

/** One grpc.health.v1 Check call on a pooled channel; SERVING is the only success. */
export const grpcProbeStart = (client: grpc.Client, check: GrpcCheck): ProbeStart =>
  deadlined(check.timeout, (report) => {
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
          report(new ProbeFailed({ reason: `${code}: ${error.details}`, cause: error }))
        } else if (response?.status === "SERVING") {
          report(undefined)
        } else {
          report(new ProbeFailed({ reason: response?.status ?? "empty response" }))
        }
      }
    )
    return () => call.cancel()
  })

export const grpcProbe = (client: grpc.Client, check: GrpcCheck): Effect.Effect<void, ProbeFailed> =>
  runProbe(grpcProbeStart(client, check))

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
