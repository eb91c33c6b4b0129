import * as grpc from "@grpc/grpc-js"
import {
  Clock,
  Context,
  Duration,
  Effect,
  Either,
  FiberMap,
  Layer,
  Option,
  Queue,
  Runtime,
  Schema,
  Stream
} from "effect"
import { callPeer, type CallWithAuthContext } from "../src/certs/Tls.js"
import { describeErrno } from "../src/Errno.js"
import { typeLabel, TypeUrls } from "../src/xds/TypeUrls.js"
import type { DeltaRequest, HealthCheckRequest, SotwRequest } from "../src/xds/Wire.js"
import { adsService, healthService, sdsService, ServingStatus } from "../src/xds/Wire.js"
import type { XdsSnapshot } from "../src/xds/XdsSnapshot.js"
import {
  clip,
  describeStream,
  kindOf,
  newDenials,
  newStream,
  noSecretAccess,
  onDeltaRequest,
  onSotwRequest,
  type Protocol,
  push,
  type SecretAccess,
  type StreamState,
  type StreamStatus
} from "../src/xds/XdsStream.js"
import * as XdsMetrics from "./internal/XdsMetrics.js"
import { LiveConfig } from "./LiveConfig.js"
import { type Published, Snapshot } from "./Snapshot.js"

/** The xDS server could not listen on its address. */
export class XdsBindFailed extends Schema.TaggedError<XdsBindFailed>()("XdsBindFailed", {
  address: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `cannot serve xDS on ${this.address}: ${this.reason}`
  }
}

export interface XdsOptions {
  /** Overrides `controller.xds` (tests pass port 0). */
  readonly host?: string
  readonly port?: number
  /** Plaintext when absent. The Certificates layer supplies mTLS credentials here. */
  readonly credentials?: grpc.ServerCredentials
  /** How long shutdown waits for streams to close before it forces them (default 2 s). */
  readonly shutdownGrace?: Duration.DurationInput
}

/**
 * The gRPC server data planes talk to: ADS (State of the World and Delta), SDS, and
 * grpc.health.v1 reporting the controller ("") and each service's availability.
 *
 * A proxyless gRPC client (GRPC_XDS_BOOTSTRAP=<file>, then dial `xds:///<service>`):
 *   { "xds_servers": [{ "server_uri": "controller:15010", "channel_creds": [{ "type": "insecure" }],
 *                       "server_features": ["xds_v3"] }],
 *     "node": { "id": "<anything>", "locality": {} } }
 * An Envoy sidecar: node id `<service>~<instance>`, `dynamic_resources` with `ads_config`
 * (api_type GRPC or DELTA_GRPC, transport_api_version V3) to a static cluster pointing here
 * (HTTP/2), and `lds_config` / `cds_config` set to `{ ads: {}, resource_api_version: V3 }`.
 * It gets `inbound|<service>` on 0.0.0.0:15006 → 127.0.0.1:<service port>, and `outbound|http`
 * on 127.0.0.1:15001 (HTTP/gRPC by Host/:authority) plus `outbound|<tcp service>` listeners.
 *
 * SDS: every stream may read `ROOTCA` and `ROOTCA_BUNDLE` (trust bundle); a private key only goes
 * to a stream of that identity (`spiffe://<td>/service/<svc>`, or the alias `default`, which each
 * stream resolves to its own). The identity is the verified client certificate with
 * `controller.xds.tls: mtls`; over plaintext nobody has one, unless
 * `controller.xds.insecureNodeIdentity` trusts node ids (anyone on the network can claim one).
 * A refused secret is answered as not found, counted, logged, and listed in `status`.
 *
 * Client input is bounded (`XdsLimits`): a request naming more than 50,000 resources, a name longer
 * than 4,096 characters, or a stream subscribing to more than 100,000 names in all ends the stream
 * with RESOURCE_EXHAUSTED (INVALID_ARGUMENT for the long name) and a message naming the bound; the
 * request is not applied. A type the server does not serve is ignored and counted as `other`; node
 * ids, user agents and NACK details show in logs and `status` cut to 1,024 characters.
 */
export class Xds extends Context.Tag("mesh-controller/Xds")<
  Xds,
  {
    /** The bound address (the real port when 0 was asked for). */
    readonly address: { readonly host: string; readonly port: number }
    readonly status: Effect.Effect<XdsStatus>
  }
>() {
  static readonly layer = (options: XdsOptions = {}): Layer.Layer<Xds, XdsBindFailed, Snapshot | LiveConfig> =>
    Layer.scoped(Xds, make(options))
}

export interface XdsStatus {
  readonly address: string
  readonly snapshotVersion: string
  readonly clients: ReadonlyArray<StreamStatus>
}

const {
  xdsAckLatency: ackLatency,
  xdsNacks: nacksTotal,
  xdsPushes: pushesTotal,
  xdsPushLatency: pushLatency,
  xdsRequests: requestsTotal,
  xdsSecretsDenied: secretsDenied,
  xdsStreams: streamsGauge
} = XdsMetrics

type StreamEvent =
  | { readonly _tag: "Request"; readonly request: SotwRequest | DeltaRequest }
  /** Pushing a snapshot to this stream failed unexpectedly: the stream's fiber dies of it. */
  | { readonly _tag: "Defect"; readonly cause: unknown }
  | { readonly _tag: "Closed" }

type AdsCall<Req> = grpc.ServerDuplexStream<Req, Buffer>

export const make = (options: XdsOptions) =>
  Effect.gen(function*() {
    const snapshots = yield* Snapshot
    const { config } = yield* (yield* LiveConfig).get
    const listen = config.controller.xds
    const trustDomain = config.mesh.trustDomain
    const trustNodeIds = options.credentials === undefined && listen.insecureNodeIdentity

    /**
     * Whose private key a stream may read (see `SecretAccess`): the verified client certificate of
     * an mTLS server; over plaintext, nobody's, unless node ids are trusted by explicit opt-in.
     */
    const accessOf = (call: CallWithAuthContext): SecretAccess => {
      const peer = callPeer(call, trustDomain)
      if (Either.isRight(peer)) {
        return { source: "tls", spiffeId: peer.right.id.uri, trustDomain, reason: undefined, denied: new Set() }
      }
      if (options.credentials !== undefined) return noSecretAccess(peer.left.reason)
      if (trustNodeIds) {
        return {
          source: "node-id",
          spiffeId: undefined,
          trustDomain,
          reason: "the node id names no service (<service>~<instance>)",
          denied: new Set()
        }
      }
      return noSecretAccess(
        "plaintext xDS: private keys go only to mTLS clients (controller.xds.tls: mtls) unless controller.xds.insecureNodeIdentity is set"
      )
    }
    const host = options.host ?? listen.host
    const requestedPort = options.port ?? listen.port
    const runtime = yield* Effect.runtime<never>()
    const runFork = Runtime.runFork(runtime)
    const streams = new Map<number, StreamState>()
    const fibers = yield* FiberMap.make<number>()
    const calls = new Set<{ end: () => void }>()
    let nextId = 0

    // One subscription to the snapshot pushes to every stream in one pass, as a bare server writes
    // one response to each: a Stream pipeline per stream, or waking each stream's fiber through its
    // queue, costs more than the push itself once there are hundreds of streams. The pass is
    // synchronous, so it never runs in the middle of a stream's handling of a request (see
    // `serveAds`), and it is one span under the rebuild's, so a change can be followed from the
    // rebuild to the streams it reached.
    let latest: Published = yield* snapshots.current
    const listeners = new Set<(published: Published, at: number) => void>()
    yield* snapshots.changes.pipe(
      Stream.runForEach((published) =>
        Clock.currentTimeMillis.pipe(
          Effect.map((at) => {
            latest = published
            for (const listener of listeners) listener(published, at)
          }),
          Effect.withSpan("xds.push", {
            attributes: { streams: listeners.size, version: published.snapshot.version },
            captureStackTrace: false,
            ...(published.span !== undefined ? { parent: published.span } : {})
          })
        )
      ),
      Effect.forkScoped
    )

    /** `id` keys the stream's fiber and its /status entry alike. */
    const serveAds = <Req extends SotwRequest | DeltaRequest>(id: number, protocol: Protocol, call: AdsCall<Req>) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const stream = newStream(id, protocol, call.getPeer(), now, accessOf(call))
        const events = yield* Queue.unbounded<StreamEvent>()
        call.on("data", (request: Req) => Queue.unsafeOffer(events, { _tag: "Request", request }))
        const closed = () => Queue.unsafeOffer(events, { _tag: "Closed" })
        call.on("end", closed)
        call.on("error", closed)
        call.on("cancelled", closed)
        let current: Published = latest
        streams.set(id, stream)
        const entry = { end: () => call.end() }
        calls.add(entry)
        let kind = "unknown"

        const send = (url: string, snapshot: XdsSnapshot, since: number | undefined, at: number) => {
          const response = push(stream, url, snapshot, at)
          if (response === undefined) return
          call.write(response.bytes)
          pushesTotal.inc({ protocol, type: typeLabel(url) })
          if (since !== undefined) pushLatency.observe({ type: typeLabel(url) }, Math.max(0, at - since) / 1000)
        }

        /**
         * A published snapshot reaching this stream, from the fan-out above. It runs synchronously,
         * so never inside a `push` of this fiber's; landing between a request's state change and
         * that request's `send`, it sends what that send would have (the send, reading `current`,
         * then finds the type waiting for its ACK).
         */
        let open = true
        const listener = (published: Published, at: number) => {
          if (!open || published.snapshot.version === current.snapshot.version) return
          current = published
          try {
            for (const url of pushOrder(stream)) send(url, published.snapshot, published.publishedAt, at)
          } catch (cause) {
            // One stream's failure is its own: its fiber dies of it, the other streams are served.
            open = false
            Queue.unsafeOffer(events, { _tag: "Defect", cause })
          }
        }
        listeners.add(listener)
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            listeners.delete(listener)
            streams.delete(id)
            calls.delete(entry)
            streamsGauge.dec({ protocol, kind })
            if (!call.writableEnded) call.end()
          })
        )
        streamsGauge.inc({ protocol, kind })

        // Once per stream: a client asking for many unknown types must not write a line for each.
        let unknownLogged = false
        while (true) {
          const event = yield* Queue.take(events)
          const at = yield* Clock.currentTimeMillis
          if (event._tag === "Closed") {
            open = false
            return
          }
          if (event._tag === "Defect") return yield* Effect.die(event.cause)
          const request = event.request
          const hadNode = stream.node !== undefined
          const outcome = protocol === "sotw"
            ? onSotwRequest(stream, request as SotwRequest, at)
            : onDeltaRequest(stream, request as DeltaRequest, at)
          if (!hadNode && stream.node !== undefined) {
            streamsGauge.dec({ protocol, kind })
            kind = kindOf(stream.node)
            streamsGauge.inc({ protocol, kind })
            yield* Effect.logInfo("client connected").pipe(
              Effect.annotateLogs({ node: stream.node.id, kind, protocol, peer: stream.peer })
            )
          }
          const type = typeLabel(request.type_url)
          requestsTotal.inc({ protocol, type, outcome: outcome._tag })
          if (outcome._tag === "Rejected") {
            yield* Effect.logWarning("rejected a request over a bound; ending the stream").pipe(
              Effect.annotateLogs({ node: stream.node?.id ?? "", type, reason: outcome.reason, peer: stream.peer })
            )
            open = false
            call.emit("error", { code: grpc.status[outcome.code], details: outcome.reason })
            return
          }
          if (outcome._tag === "UnknownType") {
            if (!unknownLogged) {
              unknownLogged = true
              yield* Effect.logDebug("client asked for a type this server does not serve; ignored").pipe(
                Effect.annotateLogs({ node: stream.node?.id ?? "", typeUrl: clip(request.type_url), peer: stream.peer })
              )
            }
            continue
          }
          // Only secrets can be refused (and SotW names are decoded only when read).
          const denied = request.type_url !== TypeUrls.Secret ? [] : newDenials(
            stream,
            request.type_url,
            protocol === "sotw"
              ? (request as SotwRequest).resource_names
              : (request as DeltaRequest).resource_names_subscribe
          )
          if (denied.length > 0) {
            secretsDenied.inc({ identity_source: stream.access.source }, denied.length)
            yield* Effect.logWarning("refused secrets the client may not read (answered as not found)").pipe(
              Effect.annotateLogs({
                node: stream.node?.id ?? "",
                identity: stream.access.spiffeId ?? `none (${stream.access.reason ?? "unknown"})`,
                secrets: clip(denied.join(", ")),
                peer: stream.peer
              })
            )
          }
          if (outcome._tag === "Nack") {
            nacksTotal.inc({ type })
            yield* Effect.logWarning("client rejected a response (NACK)").pipe(
              Effect.annotateLogs({
                node: stream.node?.id ?? "",
                type,
                version: outcome.nack.version,
                error: outcome.nack.message
              })
            )
          } else if (outcome._tag === "Ack") {
            ackLatency.observe({ type }, outcome.latency / 1000)
          }
          send(request.type_url, current.snapshot, undefined, at)
        }
      }).pipe(Effect.scoped)

    const serveHealth = {
      Check: (
        call: grpc.ServerUnaryCall<HealthCheckRequest, ServingStatus>,
        callback: grpc.sendUnaryData<ServingStatus>
      ) => {
        runFork(Effect.map(snapshots.current, (published) => {
          const status = servingStatus(call.request.service, published.snapshot)
          if (status === ServingStatus.SERVICE_UNKNOWN) {
            callback({ code: grpc.status.NOT_FOUND, details: `unknown service "${call.request.service}"` })
          } else callback(null, status)
        }))
      },
      Watch: (call: grpc.ServerWritableStream<HealthCheckRequest, ServingStatus>) => {
        const id = ++nextId
        const entry = { end: () => call.end() }
        const watch = snapshots.changes.pipe(
          Stream.map((published) => servingStatus(call.request.service, published.snapshot)),
          Stream.changes,
          Stream.runForEach((status) => Effect.sync(() => call.write(status))),
          Effect.ensuring(Effect.sync(() => {
            calls.delete(entry)
            if (!call.writableEnded) call.end()
          }))
        )
        calls.add(entry)
        call.on("cancelled", () => runFork(FiberMap.remove(fibers, id)))
        runFork(FiberMap.run(fibers, id, watch))
      }
    }

    const runStream = (protocol: Protocol) => <Req extends SotwRequest | DeltaRequest>(call: AdsCall<Req>) => {
      const id = ++nextId
      runFork(FiberMap.run(fibers, id, serveAds(id, protocol, call)))
    }

    const server = yield* Effect.acquireRelease(
      Effect.async<{ server: grpc.Server; port: number }, XdsBindFailed>((resume) => {
        const server = new grpc.Server({
          // Envoy keeps one ADS stream for its lifetime; these keep idle proxies' streams alive
          // through NATs without letting a busy client ping us to death.
          "grpc.keepalive_permit_without_calls": 1,
          "grpc.http2.min_ping_interval_without_data_ms": 10_000,
          "grpc.max_receive_message_length": 16 * 1024 * 1024
        })
        const ads = {
          StreamAggregatedResources: runStream("sotw"),
          DeltaAggregatedResources: runStream("delta")
        }
        server.addService(adsService, ads)
        server.addService(sdsService, { StreamSecrets: runStream("sotw"), DeltaSecrets: runStream("delta") })
        server.addService(healthService, serveHealth)
        const address = `${host.includes(":") ? `[${host}]` : host}:${requestedPort}`
        server.bindAsync(address, options.credentials ?? grpc.ServerCredentials.createInsecure(), (error, port) => {
          if (error) {
            server.forceShutdown()
            resume(Effect.fail(new XdsBindFailed({ address, reason: describeErrno(error) })))
          } else resume(Effect.succeed({ server, port }))
        })
      }),
      ({ server }) =>
        Effect.gen(function*() {
          // Streams never end by themselves: end them, then give the server a bounded grace.
          for (const call of calls) call.end()
          yield* FiberMap.clear(fibers)
          const drained = yield* Effect.async<void>((resume) => server.tryShutdown(() => resume(Effect.void))).pipe(
            Effect.timeoutOption(options.shutdownGrace ?? Duration.seconds(2))
          )
          if (Option.isNone(drained)) server.forceShutdown()
        })
    )
    const keys = options.credentials !== undefined
      ? "to the verified client certificate's identity"
      : trustNodeIds
      ? "by node id, UNVERIFIED (controller.xds.insecureNodeIdentity)"
      : "to nobody (plaintext xDS: set controller.xds.tls: mtls)"
    yield* Effect.logInfo("serving").pipe(Effect.annotateLogs({ host, port: server.port, privateKeys: keys }))

    return Xds.of({
      address: { host, port: server.port },
      status: Effect.map(snapshots.current, (published) => ({
        address: `${host}:${server.port}`,
        snapshotVersion: published.snapshot.version,
        clients: [...streams.values()].map(describeStream)
      }))
    })
  }).pipe(Effect.annotateLogs({ module: "xds" }))

/**
 * Envoy's make-before-break order: secrets and clusters (and their endpoints) before the
 * listeners and routes that refer to them, so a new route never points at a cluster not yet sent.
 */
const ORDER: ReadonlyArray<string> = [
  TypeUrls.Secret,
  TypeUrls.Cluster,
  TypeUrls.ClusterLoadAssignment,
  TypeUrls.Listener,
  TypeUrls.RouteConfiguration
]
const rank = (url: string) => {
  const i = ORDER.indexOf(url)
  return i < 0 ? ORDER.length : i
}
const pushOrder = (stream: StreamState): ReadonlyArray<string> =>
  [...stream.types.keys()].sort((a, b) => rank(a) - rank(b))

const servingStatus = (service: string, snapshot: XdsSnapshot): ServingStatus => {
  if (service === "") return ServingStatus.SERVING
  const available = snapshot.availability.get(service)
  return available === undefined
    ? ServingStatus.SERVICE_UNKNOWN
    : available
    ? ServingStatus.SERVING
    : ServingStatus.NOT_SERVING
}
