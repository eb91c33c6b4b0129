/**
 * The xDS resource types the server serves, by type URL, and the short names that label them in
 * metrics and `/status`. Kept apart from `Protos.ts` (which loads Envoy's `.proto` files) so that
 * naming a type costs nothing: the snapshot layer, the stream and the metrics need the names only.
 */
import { typeUrl } from "../envoy/Messages.js"

// One home for the `type.googleapis.com/` form (src/envoy/Messages.ts); re-exported for the stream.
export { TYPE_URL_PREFIX, typeUrl } from "../envoy/Messages.js"

export const TypeUrls = {
  Listener: typeUrl("envoy.config.listener.v3.Listener"),
  RouteConfiguration: typeUrl("envoy.config.route.v3.RouteConfiguration"),
  Cluster: typeUrl("envoy.config.cluster.v3.Cluster"),
  ClusterLoadAssignment: typeUrl("envoy.config.endpoint.v3.ClusterLoadAssignment"),
  Secret: typeUrl("envoy.extensions.transport_sockets.tls.v3.Secret")
} as const

export type TypeUrl = (typeof TypeUrls)[keyof typeof TypeUrls]
export type ShortType = "Listener" | "RouteConfiguration" | "Cluster" | "ClusterLoadAssignment" | "Secret"

const known: ReadonlySet<string> = new Set(Object.values(TypeUrls))

export const isKnownType = (url: string): url is TypeUrl => known.has(url)

/** `type.googleapis.com/envoy.config.cluster.v3.Cluster` → `Cluster` (for a URL the server serves). */
export const shortType = (url: TypeUrl): ShortType => url.slice(url.lastIndexOf(".") + 1) as ShortType

/**
 * The metric label of a client-sent `type_url`: its short name when the server serves that type,
 * `other` for anything else, so a client cannot mint one series per string it makes up.
 */
export const typeLabel = (url: string): ShortType | "other" => (isKnownType(url) ? shortType(url) : "other")
