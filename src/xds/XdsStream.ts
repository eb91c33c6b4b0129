/**
 * The protocol state of one ADS stream, per resource type: subscriptions, nonces, ACK/NACK, and
 * the decision whether (and what) to push. Changed by the stream's fiber (its requests) and by the
 * server's snapshot fan-out, each call synchronous, so the mutation here is never concurrent; the
 * functions take the current time instead of reading a clock. Streams in the same state share
 * what they hold (`Held`, `Subscription`) and their pushes (`Plans`): none of it is mutated.
 *
 * Rules (both variants):
 * - At most one unacknowledged push per type: nothing is sent for a type while its last response
 *   waits for an ACK or NACK. A burst of snapshot changes becomes one push after the ACK.
 * - A request whose `response_nonce` is not the pending push's nonce is stale: its ACK/NACK is
 *   ignored (SotW ignores the whole request, as go-control-plane does).
 * - On a NACK the client keeps its last acknowledged state; the error is recorded, and the
 *   rejected content is not sent again: only a change of content (or, SotW, of subscription)
 *   leads to another push.
 *
 * SotW, Listener and Cluster (and Secret): every response holds every subscribed resource that
 * exists (a client treats an LDS/CDS resource left out as deleted), and a changed subscription
 * always gets a fresh response, since gRPC clients subscribe one name at a time and wait for an
 * answer to each.
 * SotW, ClusterLoadAssignment and RouteConfiguration: a response holds only the subscribed resources
 * the client does not have in their current version (the xDS spec lets a server leave out, for
 * these types, what did not change; Envoy and grpc-js-xds keep what a response does not name).
 * One endpoint change so sends one ClusterLoadAssignment, not all of them.
 * Delta: only changed resources are sent; names the client has that are gone (or left the
 * wildcard set) go in `removed_resources`.
 *
 * A stream in step with the snapshot its state was last reconciled with (`synced` is the new
 * snapshot's `changes.from`) looks only at the names that changed, so a push costs what changed,
 * not what exists.
 */
import { mayReadSecret } from "../certs/Sds.js"
import { serviceId } from "../certs/Spiffe.js"
import { byName } from "../MeshState.js"
import { Held } from "./HeldVersions.js"
import { OWN_SECRET, SERVER_LISTENER_PREFIX, serverListenerMarker, TRUST_BUNDLE } from "./Resources.js"
import { isKnownType, shortType, TypeUrls } from "./TypeUrls.js"
import type { DeltaRequest, NodeInfo, SotwRequest } from "./Wire.js"
import { encodeDeltaResponse, encodeResourceNames, encodeSotwResponse } from "./Wire.js"
import {
  inWildcard,
  serverListenerResource,
  sidecarService,
  versionOf,
  wildcardNamesOf,
  type XdsResource,
  type XdsSnapshot
} from "./XdsSnapshot.js"

export type Protocol = "sotw" | "delta"
export type ClientKind = "proxyless" | "envoy" | "unknown"

/**
 * Bounds on what a client can make the server hold. A request beyond a bound is rejected: the
 * stream ends with the status named here (the client reconnects and may ask again within the
 * bounds), and nothing of the request is applied. Sized so that a sidecar of a 10,000-service mesh
 * (one EDS name per service, twice over for inbound and outbound) stays well inside.
 */
export const XdsLimits = {
  /** Resource names in one request (SotW `resource_names`, Delta subscribe + unsubscribe). */
  namesPerRequest: 50_000,
  /** Distinct subscribed names on one stream, all types together. */
  subscriptionsPerStream: 100_000,
  /** Characters in one resource name. */
  nameLength: 4096,
  /** Characters of a client-sent string (node id, user agent, NACK `error_detail`) kept for logs and `/status`. */
  shown: 1024
} as const

/** `text` cut to `XdsLimits.shown` characters, saying how long it was: what logs and `/status` show of client input. */
export const clip = (text: string, max: number = XdsLimits.shown): string =>
  text.length <= max ? text : `${text.slice(0, max)}... (${text.length} characters, cut)`

export interface Nack {
  readonly version: string
  readonly message: string
  readonly at: number
}

/** What both protocols keep per resource type. */
interface TypeStateBase {
  subscribed: boolean
  wildcard: boolean
  /** The subscribed names: an interned, never-mutated set (see `Subscription`), replaced on a change. */
  names: ReadonlySet<string>
  subscription: Subscription
  pendingNonce: string | undefined
  pendingVersion: string | undefined
  pendingSince: number
  acked: { version: string; at: number } | undefined
  lastNack: Nack | undefined
  nacks: number
  pushes: number
}

/** SotW for Listener, Cluster and Secret: every push is the whole subscribed set, so the state is its version. */
export interface SotwWholeState extends TypeStateBase {
  readonly _tag: "SotwWhole"
  /** The subscription changed since the last push. */
  dirty: boolean
  /** The content version of the last push. */
  lastSent: string | undefined
  /** The content version the client rejected last. */
  rejected: string | undefined
  /** The snapshot version this type was last decided against (unset after a subscription change). */
  synced: string | undefined
}

/**
 * SotW for ClusterLoadAssignment and RouteConfiguration: a push names only what the client lacks,
 * so the state is what the client holds, by name (as Delta, without removals).
 */
export interface SotwMergedState extends TypeStateBase {
  readonly _tag: "SotwMerged"
  /** The subscription changed since the last push. */
  dirty: boolean
  /**
   * Resource name → version sent (the client keeps a rejected one's previous version; it is not
   * resent), and the content version of that set, which responses carry as `version_info`.
   */
  sent: Held
  /** The snapshot version `sent` was last reconciled with (unset after a subscription change). */
  synced: string | undefined
}

/** Delta: pushes carry only what changed, so the state is what the client holds, by name. */
export interface DeltaTypeState extends TypeStateBase {
  readonly _tag: "Delta"
  /** Resource name → version the client has been sent (or told it has). */
  known: Held
  /** The snapshot version `known` was last reconciled with (unset after a subscription change). */
  synced: string | undefined
  /** Refused secrets already answered with `removed_resources` (once per subscription). */
  readonly toldAbsent: Set<string>
}

export type TypeState = SotwWholeState | SotwMergedState | DeltaTypeState

/**
 * Whose private key a stream may read over SDS (everyone may read `ROOTCA`):
 * - `tls`: the SPIFFE ID of the client certificate the mTLS handshake verified;
 * - `node-id`: claimed, not proven: the service named by the node id `<service>~<instance>`. Only
 *   with the explicit opt-in `controller.xds.insecureNodeIdentity` on a plaintext server, since
 *   anyone who can reach the port can send any node id and so read any service's key;
 * - `none`: no identity, so no private key at all (a plaintext server's default).
 * A secret the stream may not read is answered as if it did not exist.
 */
export interface SecretAccess {
  readonly source: "tls" | "node-id" | "none"
  spiffeId: string | undefined
  /** `node-id`: the trust domain the node's service is named in. */
  readonly trustDomain: string
  /** Why there is no identity (`none`, or a `tls` call without a usable certificate). */
  readonly reason: string | undefined
  /** Secret names this stream asked for and was refused. */
  readonly denied: Set<string>
}

export const noSecretAccess = (reason: string): SecretAccess => ({
  source: "none",
  spiffeId: undefined,
  trustDomain: "",
  reason,
  denied: new Set()
})

export interface StreamState {
  readonly id: number
  readonly protocol: Protocol
  readonly peer: string
  readonly connectedAt: number
  /** The node of the first request, its strings clipped (`clip`). */
  node: NodeInfo | undefined
  /** The service whose sidecar this is (from the full node id `<service>~<instance>`), if any. */
  own: string | undefined
  /** Distinct subscribed names over all types (bounded by `XdsLimits.subscriptionsPerStream`). */
  subscriptions: number
  readonly types: Map<string, TypeState>
  /** The last nonce this stream was sent (see `Response`). */
  nonce: number
  readonly access: SecretAccess
}

export const newStream = (
  id: number,
  protocol: Protocol,
  peer: string,
  now: number,
  access: SecretAccess = noSecretAccess("no identity was given for this stream")
): StreamState => ({
  id,
  protocol,
  peer,
  connectedAt: now,
  node: undefined,
  own: undefined,
  subscriptions: 0,
  types: new Map(),
  nonce: 0,
  access
})

/** Remembers the node of a stream's first request; with `node-id` access, it names the identity. */
const bindNode = (stream: StreamState, node: NodeInfo | undefined) => {
  if (stream.node !== undefined || node === undefined) return
  stream.node = {
    id: clip(node.id),
    cluster: clip(node.cluster),
    user_agent_name: clip(node.user_agent_name),
    user_agent_version: clip(node.user_agent_version)
  }
  const service = sidecarService(node.id)
  stream.own = service
  if (stream.access.source === "node-id") {
    stream.access.spiffeId = service === undefined ? undefined : serviceId(stream.access.trustDomain, service)
  }
}

/** Whether the stream may read secret `name` (`OWN_SECRET` is its own identity's, if it has one). */
export const secretAllowed = (stream: StreamState, name: string): boolean =>
  name === OWN_SECRET
    ? stream.access.spiffeId !== undefined
    : name === TRUST_BUNDLE || mayReadSecret(stream.access.spiffeId, name)

/**
 * The resource a stream gets for `name`: for secrets, only what it may read, and `OWN_SECRET`
 * resolved to its own identity's certificate (shared outbound clusters name it for every sidecar).
 */
const lookup = (stream: StreamState, url: string, snapshot: XdsSnapshot, name: string): XdsResource | undefined => {
  // A proxyless gRPC server's Listener is named after the address it binds: built for its node's service.
  if (url === TypeUrls.Listener && name.startsWith(SERVER_LISTENER_PREFIX)) {
    return serverListenerResource(snapshot, stream.own, name)
  }
  if (url !== TypeUrls.Secret) return snapshot.resources.get(url)?.get(name)
  if (!secretAllowed(stream, name)) return undefined
  if (name === OWN_SECRET) return snapshot.ownSecrets?.get(stream.access.spiffeId ?? "")
  return snapshot.resources.get(url)?.get(name)
}

/**
 * The secret names of a request this stream may not read and had not been refused before: the
 * caller logs and counts them.
 */
export const newDenials = (stream: StreamState, url: string, names: ReadonlyArray<string>): ReadonlyArray<string> => {
  if (url !== TypeUrls.Secret) return []
  const fresh = names.filter((n) => n !== "*" && !secretAllowed(stream, n) && !stream.access.denied.has(n))
  // Remembered (so logged) up to a bound; past it a denial is still counted and answered as absent.
  const room = Math.max(0, MAX_DENIED - stream.access.denied.size)
  const logged = fresh.slice(0, room)
  for (const n of logged) stream.access.denied.add(n)
  return logged
}

/**
 * A set of subscribed names, interned: streams that subscribe to the same names (a thousand
 * sidecars asking for the same thousand ClusterLoadAssignments) share one set and its strings, and
 * its `id` lets a push worked out for one of them serve the others (see `plans`). Never mutated: a
 * change of subscription makes (or finds) another.
 */
export interface Subscription {
  readonly id: number
  readonly names: ReadonlySet<string>
  /** `names` in their order. */
  readonly list: ReadonlyArray<string>
  /** `list` as a request's encoded `resource_names`, made when a SotW request first names it (`indexEncoding`). */
  encoded: Buffer | undefined
}

let subscriptionIds = 0
/** Live subscriptions by their names, in order; and by their names' encoding in a SotW request. */
const byNames = new Map<string, WeakRef<Subscription>>()
const byEncoding = new Map<string, WeakRef<Subscription>>()
const forget = new FinalizationRegistry<{ readonly index: Map<string, WeakRef<Subscription>>; readonly key: string }>(
  ({ index, key }) => {
    if (index.get(key)?.deref() === undefined) index.delete(key)
  }
)
const remember = (index: Map<string, WeakRef<Subscription>>, key: string, subscription: Subscription) => {
  index.set(key, new WeakRef(subscription))
  forget.register(subscription, { index, key })
}
const internNames = (names: ReadonlySet<string>): Subscription => {
  const list = [...names]
  const key = list.map((n) => `${n.length}:${n}`).join("")
  const known = byNames.get(key)?.deref()
  if (known !== undefined) return known
  const made: Subscription = { id: ++subscriptionIds, names, list, encoded: undefined }
  remember(byNames, key, made)
  return made
}
const NO_NAMES = internNames(new Set())

const setNames = (t: TypeStateBase, names: ReadonlySet<string>) => {
  t.subscription = internNames(names)
  t.names = t.subscription.names
}

/**
 * The live subscription whose names a SotW request's encoded `resource_names` are, exactly and in
 * order: an ACK repeats its stream's, and a thousand sidecars ask for the same thousand names, so
 * most requests need no names decoded, no set built.
 */
const encodedSubscription = (names: Buffer | undefined): Subscription | undefined =>
  names === undefined ? undefined : byEncoding.get(names.toString("latin1"))?.deref()

/** Lets later requests naming `subscription`'s names be recognised by their bytes. */
const indexEncoding = (subscription: Subscription) => {
  if (subscription.encoded !== undefined) return
  subscription.encoded = encodeResourceNames(subscription.list)
  remember(byEncoding, subscription.encoded.toString("latin1"), subscription)
}

const base = (): TypeStateBase => ({
  subscribed: false,
  wildcard: false,
  names: NO_NAMES.names,
  subscription: NO_NAMES,
  pendingNonce: undefined,
  pendingVersion: undefined,
  pendingSince: 0,
  acked: undefined,
  lastNack: undefined,
  nacks: 0,
  pushes: 0
})

/** The SotW types whose responses may leave out what did not change. */
const mergedType = (url: string) => url === TypeUrls.ClusterLoadAssignment || url === TypeUrls.RouteConfiguration

const newTypeState = (protocol: Protocol, url: string): TypeState =>
  protocol === "delta"
    ? { ...base(), _tag: "Delta", known: Held.empty(false), synced: undefined, toldAbsent: new Set() }
    : mergedType(url)
    ? { ...base(), _tag: "SotwMerged", dirty: false, sent: Held.empty(true), synced: undefined }
    : { ...base(), _tag: "SotwWhole", dirty: false, lastSent: undefined, rejected: undefined, synced: undefined }

/** The stream's state for `url`, created on first use in the stream's protocol. */
const MAX_DENIED = 1000

const typeState = (stream: StreamState, url: string): TypeState => {
  let t = stream.types.get(url)
  if (t === undefined) {
    t = newTypeState(stream.protocol, url)
    stream.types.set(url, t)
  }
  return t
}
const deltaState = (stream: StreamState, url: string): DeltaTypeState | undefined => {
  const t = stream.types.get(url)
  return t?._tag === "Delta" ? t : undefined
}

export const kindOf = (node: NodeInfo | undefined): ClientKind => {
  const agent = node?.user_agent_name.toLowerCase() ?? ""
  if (agent === "envoy") return "envoy"
  if (agent.includes("grpc")) return "proxyless"
  return "unknown"
}

/** LDS and CDS are the types a client may subscribe to by wildcard (an empty first request). */
const wildcardType = (url: string) => url === TypeUrls.Listener || url === TypeUrls.Cluster

/** What a request meant, for logs and metrics. */
export type RequestOutcome =
  | { readonly _tag: "Subscribe" }
  | { readonly _tag: "Ack"; readonly version: string; readonly latency: number }
  | { readonly _tag: "Nack"; readonly nack: Nack }
  | { readonly _tag: "Stale" }
  /** A type this server does not serve: no state is kept for it, nothing is ever sent. */
  | { readonly _tag: "UnknownType" }
  /** Over a bound (`XdsLimits`): nothing was applied; the stream is to end with `code`. */
  | { readonly _tag: "Rejected"; readonly code: "RESOURCE_EXHAUSTED" | "INVALID_ARGUMENT"; readonly reason: string }

const settle = (
  t: TypeState,
  nonce: string,
  version: string,
  error: SotwRequest["error_detail"],
  now: number
): RequestOutcome => {
  if (nonce === "") return { _tag: "Subscribe" }
  if (t.pendingNonce === undefined || nonce !== t.pendingNonce) return { _tag: "Stale" }
  const latency = now - t.pendingSince
  const sent = t.pendingVersion ?? ""
  t.pendingNonce = undefined
  t.pendingVersion = undefined
  if (error !== undefined) {
    const nack = { version: sent, message: clip(error.message), at: now }
    t.lastNack = nack
    if (t._tag === "SotwWhole") t.rejected = sent
    t.nacks++
    return { _tag: "Nack", nack }
  }
  t.acked = { version: version === "" ? sent : version, at: now }
  return { _tag: "Ack", version: t.acked.version, latency }
}

const sameSet = (a: ReadonlySet<string>, b: ReadonlySet<string>) => a.size === b.size && [...a].every((x) => b.has(x))

/** Why a request breaks a bound, if it does; `added` is how many distinct names it would add to the stream. */
const overLimit = (
  stream: StreamState,
  names: ReadonlyArray<string>,
  added: number
): Extract<RequestOutcome, { _tag: "Rejected" }> | undefined => {
  if (names.length > XdsLimits.namesPerRequest) {
    return {
      _tag: "Rejected",
      code: "RESOURCE_EXHAUSTED",
      reason: `${names.length} resource names in one request; at most ${XdsLimits.namesPerRequest} are accepted`
    }
  }
  if (names.some((n) => n.length > XdsLimits.nameLength)) {
    return {
      _tag: "Rejected",
      code: "INVALID_ARGUMENT",
      reason: `a resource name longer than ${XdsLimits.nameLength} characters`
    }
  }
  if (stream.subscriptions + added > XdsLimits.subscriptionsPerStream) {
    return {
      _tag: "Rejected",
      code: "RESOURCE_EXHAUSTED",
      reason: `${stream.subscriptions + added} subscribed resource names on one stream; ` +
        `at most ${XdsLimits.subscriptionsPerStream} are accepted`
    }
  }
  return undefined
}

/** Whether a SotW request naming `names` subscribes by wildcard: `*`, or (LDS, CDS) no names at first or again. */
const sotwWildcard = (names: ReadonlyArray<string>, url: string, t: TypeStateBase): boolean =>
  names.includes("*") || (names.length === 0 && wildcardType(url) && (!t.subscribed || t.wildcard))

export const onSotwRequest = (stream: StreamState, request: SotwRequest, now: number): RequestOutcome => {
  bindNode(stream, request.node)
  if (!isKnownType(request.type_url)) return { _tag: "UnknownType" }
  const held = stream.types.get(request.type_url)
  // Names some stream subscribes to already (a known subscription has no `*` and no repeats).
  const known = encodedSubscription(request.resourceNames)
  const same = held !== undefined && held.subscribed && known === held.subscription &&
    sotwWildcard(known.list, request.type_url, held) === held.wildcard
  if (!same) {
    const names = known?.list ?? request.resource_names
    const distinct = known?.list.length ?? new Set(names).size
    const rejected = overLimit(stream, names, distinct - (held?.names.size ?? 0))
    if (rejected !== undefined) return rejected
  }
  const t = typeState(stream, request.type_url)
  if (t._tag === "Delta") return { _tag: "Stale" }
  const outcome = settle(t, request.response_nonce, request.version_info, request.error_detail, now)
  if (outcome._tag === "Stale") return outcome
  const subscription = known ?? internNames(new Set(request.resource_names.filter((n) => n !== "*")))
  const wildcard = sotwWildcard(known?.list ?? request.resource_names, request.type_url, t)
  if (
    !t.subscribed || wildcard !== t.wildcard ||
    (subscription !== t.subscription && !sameSet(subscription.names, t.names))
  ) {
    t.dirty = true
    t.synced = undefined
    // A name left and asked for again is sent again: the client forgot it when it left.
    if (t._tag === "SotwMerged") {
      const left: Array<readonly [string, undefined]> = []
      for (const n of t.sent.keys()) if (!subscription.names.has(n)) left.push([n, undefined])
      t.sent = t.sent.with(left)
    }
  }
  t.subscribed = true
  t.wildcard = wildcard
  stream.subscriptions += subscription.names.size - t.names.size
  t.subscription = subscription
  t.names = subscription.names
  if (request.resourceNames !== undefined) indexEncoding(subscription)
  return outcome
}

export const onDeltaRequest = (stream: StreamState, request: DeltaRequest, now: number): RequestOutcome => {
  bindNode(stream, request.node)
  if (!isKnownType(request.type_url)) return { _tag: "UnknownType" }
  const held = stream.types.get(request.type_url)?.names
  // A first subscription to names some stream subscribes to already: nothing to decode or build.
  const known = held === undefined || held.size === 0 ? encodedSubscription(request.subscribeNames) : undefined
  if (
    known !== undefined && known.list.length > 0 && request.resource_names_unsubscribe.length === 0 &&
    Object.keys(request.initial_resource_versions).length === 0
  ) return onDeltaSubscription(stream, request, known, now)
  const fresh = new Set(request.resource_names_subscribe.filter((n) => n !== "*" && held?.has(n) !== true)).size
  const initial = Object.keys(request.initial_resource_versions)
  const rejected = overLimit(
    stream,
    [...request.resource_names_subscribe, ...request.resource_names_unsubscribe, ...initial],
    fresh
  )
  if (rejected !== undefined) return rejected
  const t = typeState(stream, request.type_url)
  if (t._tag !== "Delta") return { _tag: "Stale" }
  const outcome = settle(t, request.response_nonce, "", request.error_detail, now)
  if (!t.subscribed) {
    t.known = t.known.with(Object.entries(request.initial_resource_versions))
    t.wildcard = request.resource_names_subscribe.length === 0 && wildcardType(request.type_url)
  }
  if (request.resource_names_subscribe.length > 0 || request.resource_names_unsubscribe.length > 0 || !t.subscribed) {
    t.synced = undefined
  }
  const before = t.names.size
  if (request.resource_names_subscribe.length > 0 || request.resource_names_unsubscribe.length > 0) {
    const names = new Set(t.names)
    const forgotten: Array<readonly [string, undefined]> = []
    for (const name of request.resource_names_subscribe) {
      if (name === "*") t.wildcard = true
      else names.add(name)
    }
    for (const name of request.resource_names_unsubscribe) {
      if (name === "*") t.wildcard = false
      else {
        names.delete(name)
        forgotten.push([name, undefined])
        t.toldAbsent.delete(name)
      }
    }
    t.known = t.known.with(forgotten)
    setNames(t, names)
  }
  stream.subscriptions += t.names.size - before
  t.subscribed = true
  if (request.subscribeNames !== undefined && request.resource_names_subscribe.length > 0) indexEncoding(t.subscription)
  return outcome
}

/** `onDeltaRequest` for a type holding no names, subscribing to exactly `known`'s names (no `*`, no repeats). */
const onDeltaSubscription = (
  stream: StreamState,
  request: DeltaRequest,
  known: Subscription,
  now: number
): RequestOutcome => {
  const rejected = overLimit(stream, known.list, known.list.length)
  if (rejected !== undefined) return rejected
  const t = typeState(stream, request.type_url)
  if (t._tag !== "Delta") return { _tag: "Stale" }
  const outcome = settle(t, request.response_nonce, "", request.error_detail, now)
  if (!t.subscribed) t.wildcard = false
  t.synced = undefined
  t.subscription = known
  t.names = known.names
  stream.subscriptions += known.names.size
  t.subscribed = true
  return outcome
}

const wanted = (stream: StreamState, t: TypeState, url: string, snapshot: XdsSnapshot): ReadonlyArray<string> => {
  if (!t.wildcard) return [...t.names]
  const names = new Set(wildcardNamesOf(snapshot, url, stream.own))
  for (const n of t.names) names.add(n)
  return [...names]
}

export interface Push {
  readonly bytes: Buffer
  readonly resources: number
  readonly removed: number
}

/**
 * A response ready to write, with its nonce. Nonces are numbered across all streams, so a response
 * shared by the streams a plan serves carries one nonce and is encoded once, not once per stream
 * with its own. A stream is sent the same response twice only with the same content, so its ACK
 * of either means the same.
 */
interface Response {
  readonly nonce: string
  readonly bytes: Buffer
}
let nonces = 0
const respond = (encode: (nonce: string) => Buffer): Response => {
  const nonce = String(++nonces)
  return { nonce, bytes: encode(nonce) }
}
/** Records `response` as the stream's pending push of `t`. */
const sent = (stream: StreamState, t: TypeStateBase, response: Response, version: string, now: number) => {
  stream.nonce = Number(response.nonce)
  t.pendingNonce = response.nonce
  t.pendingVersion = version
  t.pendingSince = now
  t.pushes++
}

/** Whether a changed name concerns this stream's subscription to `url`. */
const concerns = (
  stream: StreamState,
  t: TypeState,
  url: string,
  changed: ReadonlySet<string> | undefined
): boolean => {
  if (changed === undefined) return false
  for (const n of changed) if (t.names.has(n) || (t.wildcard && inWildcard(url, stream.own, n))) return true
  return url === TypeUrls.Listener && changed.has(serverListenerMarker(stream.own ?? "")) &&
    serverNames(t.names).length > 0
}

/** The server Listener names among `names` (see `lookup`). */
const serverNames = (names: ReadonlySet<string>): ReadonlyArray<string> =>
  [...names].filter((n) => n.startsWith(SERVER_LISTENER_PREFIX))

/** The changed names of `url`, with the stream's server Listener names when its service's changed. */
const expandChanged = (
  stream: StreamState,
  t: { readonly names: ReadonlySet<string> },
  url: string,
  changed: ReadonlySet<string>
): Iterable<string> =>
  url === TypeUrls.Listener && changed.has(serverListenerMarker(stream.own ?? ""))
    ? [...changed, ...serverNames(t.names)]
    : changed

/** The snapshot's changes since `synced`, if the stream is in step with the snapshot they start from. */
const changesSince = (snapshot: XdsSnapshot, synced: string | undefined, url: string) => {
  const delta = snapshot.changes
  return synced !== undefined && delta !== undefined && delta.from === synced
    ? { names: delta.names.get(url) ?? new Set<string>() }
    : undefined
}

/**
 * The whole subscribed set of `url` for a wildcard subscription without named extras, computed
 * once per snapshot and client view (the sidecar's service) and shared by every stream with that
 * view: a thousand sidecars do not each sort and hash the same thousand clusters.
 */
const wholeSets = new WeakMap<
  XdsSnapshot,
  Map<string, { readonly version: string; readonly response: Response; readonly count: number }>
>()
const wholeSet = (stream: StreamState, t: SotwWholeState, url: string, snapshot: XdsSnapshot) => {
  const shared = t.wildcard && t.names.size === 0 && url !== TypeUrls.Secret
  const key = `${url}\u0000${stream.own ?? ""}`
  if (shared) {
    const cached = wholeSets.get(snapshot)?.get(key)
    if (cached !== undefined) return cached
  }
  const resources = wanted(stream, t, url, snapshot).flatMap((n) => {
    const r = lookup(stream, url, snapshot, n)
    return r === undefined ? [] : [r]
  }).sort(byName)
  const version = versionOf(resources)
  const built = {
    version,
    response: respond((nonce) => encodeSotwResponse(version, resources, url, nonce)),
    count: resources.length
  }
  if (shared) {
    let bySnapshot = wholeSets.get(snapshot)
    if (bySnapshot === undefined) wholeSets.set(snapshot, bySnapshot = new Map())
    bySnapshot.set(key, built)
  }
  return built
}

const sotwWholePush = (
  stream: StreamState,
  t: SotwWholeState,
  url: string,
  snapshot: XdsSnapshot,
  now: number
): Push | undefined => {
  if (!t.wildcard && t.names.size === 0) {
    t.dirty = false
    return undefined
  }
  // In step and nothing this stream sees changed: the set (so its version) is what it was.
  const since = t.dirty ? undefined : changesSince(snapshot, t.synced, url)
  const unchanged = since !== undefined && !concerns(stream, t, url, since.names)
  t.synced = snapshot.version
  if (unchanged) return undefined
  const set = wholeSet(stream, t, url, snapshot)
  if (!t.dirty && (set.version === t.lastSent || set.version === t.rejected)) return undefined
  sent(stream, t, set.response, set.version, now)
  t.lastSent = set.version
  t.dirty = false
  return { bytes: set.response.bytes, resources: set.count, removed: 0 }
}

/**
 * Pushes worked out once per snapshot and shared by every stream in the same state: the same
 * subscription (`Subscription.id`), the same held set (`Held.id`), in step with the same snapshot
 * or not. A thousand sidecars synced from the same snapshot hold the very same `Held`, so their
 * initial sync and every later change cost them one lookup each, and they are written the same
 * bytes (see `Response`), not a walk over a thousand names with a hash per name. Bounded per
 * snapshot: past the bound, a stream works its push out alone, as before. Secrets are never
 * shared (what a stream may read is its own).
 */
class Plans<P> {
  private readonly bySnapshot = new WeakMap<XdsSnapshot, Map<string, P>>()

  get(snapshot: XdsSnapshot, key: string | undefined, make: () => P): P {
    if (key === undefined) return make()
    let plans = this.bySnapshot.get(snapshot)
    const cached = plans?.get(key)
    if (cached !== undefined) return cached
    const plan = make()
    if (plans === undefined) this.bySnapshot.set(snapshot, plans = new Map())
    if (plans.size < PLANS_PER_SNAPSHOT) plans.set(key, plan)
    return plan
  }
}
const PLANS_PER_SNAPSHOT = 256

interface MergedPlan {
  readonly updates: ReadonlyArray<XdsResource>
  /** What the stream holds once the push is made (names gone from the snapshot dropped, even with no push). */
  readonly next: Held
  readonly version: string
  /** Encoded when first sent. */
  response: Response | undefined
}
const mergedPlans = new Plans<MergedPlan>()

const mergedPlan = (
  stream: StreamState,
  t: SotwMergedState,
  url: string,
  snapshot: XdsSnapshot,
  since: { readonly names: ReadonlySet<string> } | undefined
): MergedPlan => {
  const updates: Array<XdsResource> = []
  const changes: Array<readonly [string, string | undefined]> = []
  for (const n of since === undefined ? t.names : expandChanged(stream, t, url, since.names)) {
    if (!t.names.has(n)) continue
    const r = lookup(stream, url, snapshot, n)
    if (r === undefined) changes.push([n, undefined])
    else if (t.sent.get(n) !== r.version) updates.push(r)
  }
  updates.sort(byName)
  for (const r of updates) changes.push([r.name, r.version])
  const next = t.sent.with(changes)
  return { updates, next, version: next.version, response: undefined }
}

const sotwMergedPush = (
  stream: StreamState,
  t: SotwMergedState,
  url: string,
  snapshot: XdsSnapshot,
  now: number
): Push | undefined => {
  if (t.names.size === 0) {
    t.dirty = false
    return undefined
  }
  if (!t.dirty && t.synced === snapshot.version) return undefined
  const since = t.dirty ? undefined : changesSince(snapshot, t.synced, url)
  // Merged types are looked up by name alone (no secrets, no server listeners): shared by all.
  const key = `${since === undefined ? "all" : "step"}\u0000${url}\u0000${t.subscription.id}\u0000${t.sent.id}`
  const plan = mergedPlans.get(snapshot, key, () => mergedPlan(stream, t, url, snapshot, since))
  t.synced = snapshot.version
  t.sent = plan.next
  // A changed subscription is always answered (gRPC clients wait for an answer to each), even
  // when all it asks for is already held or does not exist.
  if (plan.updates.length === 0 && !t.dirty) return undefined
  // The content of what this client holds, not the snapshot's version (see `Held`).
  const { updates, version } = plan
  plan.response ??= respond((nonce) => encodeSotwResponse(version, updates, url, nonce))
  sent(stream, t, plan.response, plan.version, now)
  t.dirty = false
  return { bytes: plan.response.bytes, resources: plan.updates.length, removed: 0 }
}

/** The SotW response for `url` if one is due (see the module comment), recording it as pending. */
export const sotwPush = (stream: StreamState, url: string, snapshot: XdsSnapshot, now: number): Push | undefined => {
  const t = stream.types.get(url)
  if (t === undefined || !t.subscribed || t.pendingNonce !== undefined) return undefined
  if (t._tag === "SotwWhole") return sotwWholePush(stream, t, url, snapshot, now)
  if (t._tag === "SotwMerged") return sotwMergedPush(stream, t, url, snapshot, now)
  return undefined
}

interface DeltaPlan {
  readonly updates: ReadonlyArray<XdsResource>
  readonly removed: ReadonlyArray<string>
  /** What the stream holds once the push is made. */
  readonly next: Held
  /** Encoded when first sent. */
  response: Response | undefined
}
const deltaPlans = new Plans<DeltaPlan>()

const deltaPlan = (
  stream: StreamState,
  t: DeltaTypeState,
  url: string,
  snapshot: XdsSnapshot,
  inStep: boolean
): DeltaPlan => {
  const updates: Array<XdsResource> = []
  const removed: Array<string> = []
  if (inStep) {
    const own = stream.own
    for (const n of expandChanged(stream, t, url, snapshot.changes?.names.get(url) ?? new Set<string>())) {
      const want = t.names.has(n) || (t.wildcard && inWildcard(url, own, n))
      const r = lookup(stream, url, snapshot, n)
      if (want && r !== undefined) {
        if (t.known.get(n) !== r.version) updates.push(r)
      } else if (t.known.has(n)) removed.push(n)
    }
  } else {
    const names = new Set(wanted(stream, t, url, snapshot))
    for (const n of names) {
      const r = lookup(stream, url, snapshot, n)
      if (r !== undefined && t.known.get(n) !== r.version) updates.push(r)
      // A refused secret is answered as absent, so the client need not wait for it.
      if (
        r === undefined && !t.known.has(n) && !t.toldAbsent.has(n) && url === TypeUrls.Secret &&
        !secretAllowed(stream, n)
      ) {
        removed.push(n)
        t.toldAbsent.add(n)
      }
    }
    for (const n of t.known.keys()) if (!names.has(n) || lookup(stream, url, snapshot, n) === undefined) removed.push(n)
  }
  updates.sort(byName)
  const next = t.known.with([
    ...updates.map((r) => [r.name, r.version] as const),
    ...removed.map((n) => [n, undefined] as const)
  ])
  return { updates, removed, next, response: undefined }
}

/**
 * The Delta response for `url` if anything changed for this client, recording it as pending.
 * When the client is in step with the snapshot this one was built from, only the names that
 * changed between the two are examined, so a push costs what changed, not what exists.
 */
export const deltaPush = (stream: StreamState, url: string, snapshot: XdsSnapshot, now: number): Push | undefined => {
  const t = deltaState(stream, url)
  if (t === undefined || !t.subscribed || t.pendingNonce !== undefined) return undefined
  // Reconciled with this very snapshot and no subscription change since: nothing to send.
  if (t.synced === snapshot.version) return undefined
  const delta = snapshot.changes
  const inStep = t.synced !== undefined && delta !== undefined && delta.from === t.synced
  // The view (`own`) decides the wildcard set and server listeners; secrets are the stream's own.
  const key = url === TypeUrls.Secret
    ? undefined
    : `${inStep ? "step" : "all"}\u0000${url}\u0000${
      stream.own ?? ""
    }\u0000${t.wildcard}\u0000${t.subscription.id}\u0000${t.known.id}`
  const plan = deltaPlans.get(snapshot, key, () => deltaPlan(stream, t, url, snapshot, inStep))
  t.synced = snapshot.version
  t.known = plan.next
  if (plan.updates.length === 0 && plan.removed.length === 0) return undefined
  const { removed, updates } = plan
  plan.response ??= respond((nonce) => encodeDeltaResponse(snapshot.version, updates, removed, url, nonce))
  sent(stream, t, plan.response, snapshot.version, now)
  return { bytes: plan.response.bytes, resources: updates.length, removed: removed.length }
}

export const push = (stream: StreamState, url: string, snapshot: XdsSnapshot, now: number): Push | undefined =>
  stream.protocol === "sotw" ? sotwPush(stream, url, snapshot, now) : deltaPush(stream, url, snapshot, now)

const iso = (ms: number) => new Date(ms).toISOString()
const MAX_LISTED = 50

/** One resource type of a stream as `/status` shows it. */
export interface TypeStatus {
  /** Up to 50 subscribed names; `*` first for a wildcard subscription. */
  readonly subscribed: ReadonlyArray<string>
  readonly subscribedCount: number
  readonly acknowledgedVersion: string | null
  readonly acknowledgedAt: string | null
  readonly waitingForAck: boolean
  readonly pushes: number
  readonly nacks: number
  readonly lastNack: { readonly version: string; readonly message: string; readonly at: string } | null
}

/** One stream as `/status` shows it. */
export interface StreamStatus {
  readonly stream: number
  readonly nodeId: string | null
  readonly kind: ClientKind
  readonly userAgent: string | null
  readonly protocol: Protocol
  readonly peer: string
  /** The SPIFFE ID whose private key the stream may read, if any. */
  readonly identity: string | null
  readonly identitySource: SecretAccess["source"]
  /** Why the stream has no identity (only when it has none). */
  readonly identityMissing?: string
  readonly deniedSecrets: ReadonlyArray<string>
  readonly connectedAt: string
  /** By short type name (`Cluster`, `ClusterLoadAssignment`, ...). */
  readonly types: Readonly<Record<string, TypeStatus>>
}

const describeType = (t: TypeState): TypeStatus => ({
  subscribed: t.wildcard ? ["*", ...[...t.names].slice(0, MAX_LISTED)] : [...t.names].slice(0, MAX_LISTED),
  subscribedCount: t.names.size,
  acknowledgedVersion: t.acked?.version ?? null,
  acknowledgedAt: t.acked ? iso(t.acked.at) : null,
  waitingForAck: t.pendingNonce !== undefined,
  pushes: t.pushes,
  nacks: t.nacks,
  lastNack: t.lastNack ? { version: t.lastNack.version, message: t.lastNack.message, at: iso(t.lastNack.at) } : null
})

/** The stream as `/status` shows it. */
export const describeStream = (stream: StreamState): StreamStatus => ({
  stream: stream.id,
  nodeId: stream.node?.id ?? null,
  kind: kindOf(stream.node),
  userAgent: stream.node ? `${stream.node.user_agent_name} ${stream.node.user_agent_version}`.trim() : null,
  protocol: stream.protocol,
  peer: stream.peer,
  identity: stream.access.spiffeId ?? null,
  identitySource: stream.access.source,
  ...(stream.access.reason !== undefined && stream.access.spiffeId === undefined
    ? { identityMissing: stream.access.reason }
    : {}),
  deniedSecrets: [...stream.access.denied].slice(0, MAX_LISTED),
  connectedAt: iso(stream.connectedAt),
  types: Object.fromEntries(
    [...stream.types].flatMap(([url, t]) => (isKnownType(url) ? [[shortType(url), describeType(t)]] : []))
  )
})
