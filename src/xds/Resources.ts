/**
 * Plain-object builders for the xDS resources of one service. Field names are Envoy's proto names;
 * `Protos.check` validates every object before it is encoded, so a typo here fails a test rather
 * than vanishing on the wire.
 *
 * Resource names:
 * - proxyless gRPC (`xds:///<service>`): Listener, RouteConfiguration, Cluster and
 *   ClusterLoadAssignment are all named `<service>`.
 * - Envoy sidecars: `inbound|<service>` (listener and local cluster), `outbound|http` (one listener
 *   and route configuration for every HTTP/gRPC service), `outbound|<service>` (the cluster, and
 *   for TCP services a listener), each outbound cluster reading the `<service>` assignment over EDS.
 */
import * as NodeNet from "node:net"
import type { Observability, Route, TrafficPolicy } from "../../schemas/Config.js"
import { identitySecretName, ROOT_CA_SECRET } from "../certs/Sds.js"
import { type PlainObject, socketAddress } from "../envoy/Messages.js"
import { routing } from "../health/Routing.js"
import type { Endpoint, Service } from "../MeshState.js"
import type { CompiledPolicy } from "../policy/Compile.js"
import {
  clusterResilience,
  faultFilter,
  hcmObservability,
  inboundHttpFilters,
  mirrorPolicies,
  networkRbacFilters,
  retryPolicy,
  routeFaultOverride,
  routeMatch
} from "../policy/Envoy.js"
import { durationProto, Types, typeUrl } from "./Protos.js"

/** Ports an Envoy sidecar binds (the bootstrap and README document them). */
export const SidecarPorts = {
  /** Callers' plaintext HTTP/gRPC traffic to any mesh service, routed by Host/:authority. */
  outbound: 15001,
  /** Traffic to the local service from the mesh, forwarded to 127.0.0.1:<service port>. */
  inbound: 15006
} as const

export const OUTBOUND_HTTP = "outbound|http"
export const inboundName = (service: string) => `inbound|${service}`
export const outboundName = (service: string) => `outbound|${service}`

export type { PlainObject }

const ads = { ads: {}, resource_api_version: "V3" }
const CONNECT_TIMEOUT = durationProto("5 seconds")

/** A fault in the input for one service: the service's name and why. */
export class ServiceInvalid {
  readonly _tag = "ServiceInvalid"
  constructor(readonly service: string, readonly message: string) {}
}

// ---------------------------------------------------------------------------------------------
// Clusters and endpoints
// ---------------------------------------------------------------------------------------------

const localityOf = (endpoint: Endpoint): PlainObject => {
  const locality: PlainObject = {}
  const region = endpoint.labels["region"]
  const zone = endpoint.labels["zone"]
  if (region !== undefined) locality["region"] = region
  if (zone !== undefined) locality["zone"] = zone
  return locality
}

/**
 * Every endpoint in an assignment is one to route to, so none is sent as UNHEALTHY: with fail-open
 * (all unhealthy) they go out as UNKNOWN, since gRPC clients drop UNHEALTHY endpoints outright
 * and the service would get no traffic at all.
 */
const healthStatus = (endpoint: Endpoint) => (endpoint.health === "healthy" ? "HEALTHY" : "UNKNOWN")

/**
 * The service's ClusterLoadAssignment: routable endpoints only (see `routing`: unhealthy ones are
 * left out, unless all are and the service fails open), grouped by their region/zone labels.
 * Every locality carries a weight, since gRPC silently drops a locality without one.
 */
export const loadAssignment = (service: Service, name: string = service.name): PlainObject => {
  const routed = routing(service, new Map()).endpoints
  for (const endpoint of routed) {
    if (NodeNet.isIP(endpoint.address) === 0) {
      throw new ServiceInvalid(
        service.name,
        `endpoint address "${endpoint.address}" is not an IP address (host names must be resolved before the snapshot)`
      )
    }
  }
  const localities = new Map<string, { locality: PlainObject; endpoints: Array<Endpoint> }>()
  for (const endpoint of routed) {
    const locality = localityOf(endpoint)
    const key = JSON.stringify(locality)
    const group = localities.get(key) ?? { locality, endpoints: [] }
    group.endpoints.push(endpoint)
    localities.set(key, group)
  }
  return {
    cluster_name: name,
    endpoints: [...localities.values()].map((group) => ({
      locality: group.locality,
      load_balancing_weight: { value: group.endpoints.reduce((sum, e) => sum + e.weight, 0) },
      lb_endpoints: group.endpoints.map((endpoint) => ({
        endpoint: { address: socketAddress(endpoint.address, endpoint.port) },
        health_status: healthStatus(endpoint),
        load_balancing_weight: { value: endpoint.weight }
      }))
    }))
  }
}

/**
 * An EDS cluster reading `<service>` over ADS, round-robin, with the service's circuit breakers and
 * outlier detection from `policy` (gRPC honours outlier detection and max_requests).
 */
export const edsCluster = (
  name: string,
  service: Service,
  forEnvoy: boolean,
  policy?: CompiledPolicy
): PlainObject => ({
  name,
  type: "EDS",
  eds_cluster_config: { eds_config: ads, service_name: service.name },
  lb_policy: "ROUND_ROBIN",
  connect_timeout: CONNECT_TIMEOUT,
  ...(forEnvoy && service.protocol === "grpc" ? http2Options : {}),
  ...(policy ? clusterResilience(policy, service.name) : {})
})

const http2Options = {
  typed_extension_protocol_options: {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
      "@type": typeUrl(Types.HttpProtocolOptions),
      explicit_http_config: { http2_protocol_options: {} }
    }
  }
}

/** The sidecar's cluster for its own service: the application on 127.0.0.1. */
export const inboundCluster = (service: Service): PlainObject => ({
  name: inboundName(service.name),
  type: "STATIC",
  connect_timeout: CONNECT_TIMEOUT,
  load_assignment: {
    cluster_name: inboundName(service.name),
    endpoints: [{
      locality: {},
      lb_endpoints: [{ endpoint: { address: socketAddress("127.0.0.1", service.port) } }]
    }]
  },
  ...(service.protocol === "grpc" ? http2Options : {})
})

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

/** One RouteAction for a policy route; `clusterOf` names the cluster a destination service is in. */
const routeAction = (
  route: Route,
  clusterOf: (service: string) => string,
  known: (service: string) => boolean,
  owner: string
): PlainObject => {
  for (const destination of route.destinations) {
    if (!known(destination.service)) {
      throw new ServiceInvalid(owner, `route to unknown service "${destination.service}"`)
    }
  }
  const [first, ...rest] = route.destinations
  if (first === undefined) throw new ServiceInvalid(owner, "a route without destinations")
  const target: PlainObject = rest.length === 0
    ? { cluster: clusterOf(first.service) }
    : {
      weighted_clusters: {
        clusters: route.destinations.map((d) => ({ name: clusterOf(d.service), weight: { value: d.weight } }))
      }
    }
  const retry = retryPolicy(route.retries)
  return {
    ...target,
    ...(route.timeout
      ? {
        // Envoy reads `timeout`; gRPC clients read `max_stream_duration`.
        timeout: durationProto(route.timeout),
        max_stream_duration: { max_stream_duration: durationProto(route.timeout) }
      }
      : {}),
    ...(retry ? { retry_policy: retry } : {}),
    // Envoy only: gRPC clients ignore mirroring.
    ...(route.mirror ? { request_mirror_policies: mirrorPolicies(route.mirror, clusterOf) } : {})
  }
}

/** The routes for callers of `service`: its traffic policy's, or one route to itself. */
export const routesFor = (
  service: Service,
  policy: TrafficPolicy | undefined,
  clusterOf: (service: string) => string,
  known: (service: string) => boolean
): ReadonlyArray<PlainObject> => {
  const routes: ReadonlyArray<Route> = policy?.routes ?? [{ destinations: [{ service: service.name, weight: 1 }] }]
  return routes.map((route, i) => {
    const fault = routeFaultOverride(route.fault)
    return {
      name: `${service.name}-${i}`,
      match: routeMatch(route.match),
      route: routeAction(route, clusterOf, known, service.name),
      ...(fault ? { typed_per_filter_config: fault } : {})
    }
  })
}

/** The domains a caller may use for `service`: its name, with or without the port. */
const domainsOf = (service: Service): ReadonlyArray<string> => [service.name, `${service.name}:${service.port}`]

export const virtualHost = (service: Service, routes: ReadonlyArray<PlainObject>): PlainObject => ({
  name: service.name,
  domains: domainsOf(service),
  routes
})

export const routeConfiguration = (name: string, virtualHosts: ReadonlyArray<PlainObject>): PlainObject => ({
  name,
  virtual_hosts: virtualHosts
})

// ---------------------------------------------------------------------------------------------
// Listeners
// ---------------------------------------------------------------------------------------------

const routerFilter = { name: "envoy.filters.http.router", typed_config: { "@type": typeUrl(Types.Router) } }

/** The proxyless gRPC listener: an api_listener whose HttpConnectionManager reads RDS `<service>`. */
export const apiListener = (service: Service): PlainObject => ({
  name: service.name,
  api_listener: {
    api_listener: {
      "@type": typeUrl(Types.HttpConnectionManager),
      stat_prefix: service.name,
      rds: { route_config_name: service.name, config_source: ads },
      // The fault filter does nothing until a route's typed_per_filter_config turns it on.
      http_filters: [faultFilter, routerFilter]
    }
  }
})

/** The sidecar's outbound listener for HTTP and gRPC: every destination by Host/:authority. */
export const outboundHttpListener = (observability?: Observability): PlainObject => ({
  name: OUTBOUND_HTTP,
  address: socketAddress("127.0.0.1", SidecarPorts.outbound),
  filter_chains: [{
    filters: [{
      name: "envoy.filters.network.http_connection_manager",
      typed_config: {
        "@type": typeUrl(Types.HttpConnectionManager),
        stat_prefix: OUTBOUND_HTTP,
        codec_type: "AUTO",
        rds: { route_config_name: OUTBOUND_HTTP, config_source: ads },
        http_filters: [faultFilter, routerFilter],
        ...(observability ? hcmObservability(observability, OUTBOUND_HTTP) : {})
      }
    }]
  }]
})

/** A TCP service gets its own outbound listener on 127.0.0.1:<service port>. */
export const outboundTcpListener = (service: Service): PlainObject => ({
  name: outboundName(service.name),
  address: socketAddress("127.0.0.1", service.port),
  filter_chains: [{ filters: [tcpProxy(outboundName(service.name), outboundName(service.name))] }]
})

const tcpProxy = (statPrefix: string, cluster: string) => ({
  name: "envoy.filters.network.tcp_proxy",
  typed_config: { "@type": typeUrl(Types.TcpProxy), stat_prefix: statPrefix, cluster }
})

/**
 * The sidecar's inbound listener: the mesh's traffic to the local service, where `policy`'s
 * authorization (RBAC on the caller certificate's SPIFFE ID) and the service's rate limit apply.
 * TCP services get network RBAC instead: callers and ports only.
 */
export const inboundListener = (service: Service, policy?: CompiledPolicy): PlainObject => {
  const cluster = inboundName(service.name)
  const filters = service.protocol === "tcp"
    ? [...(policy ? networkRbacFilters(policy, service.name) : []), tcpProxy(cluster, cluster)]
    : [{
      name: "envoy.filters.network.http_connection_manager",
      typed_config: {
        "@type": typeUrl(Types.HttpConnectionManager),
        stat_prefix: cluster,
        codec_type: "AUTO",
        route_config: {
          name: cluster,
          virtual_hosts: [{
            name: service.name,
            domains: ["*"],
            routes: [{ match: { prefix: "" }, route: { cluster } }]
          }]
        },
        http_filters: [...(policy ? inboundHttpFilters(policy, service.name) : []), routerFilter],
        ...(policy ? hcmObservability(policy.observability, service.name) : {})
      }
    }]
  return {
    name: cluster,
    address: socketAddress("0.0.0.0", SidecarPorts.inbound),
    filter_chains: [{ filters }]
  }
}

// ---------------------------------------------------------------------------------------------
// mTLS between sidecars (policies.security.mtls), with certificates served over SDS
// ---------------------------------------------------------------------------------------------

/**
 * The SDS name a sidecar uses for its own certificate where a resource is shared by every sidecar
 * (the outbound clusters): the xDS server answers it, per stream, with the certificate of that
 * stream's own identity, and with nothing to a stream without one (see XdsStream `lookup`).
 */
export const OWN_SECRET = "default"

/**
 * The trust bundle alone, without `ROOTCA`'s trust-domain SAN matcher (derived from it by the
 * snapshot builder): outbound clusters add an exact SAN matcher for their destination, and Envoy
 * merges a combined validation context's matchers with the SDS ones as alternatives, so with
 * `ROOTCA` any mesh identity would pass for any destination.
 */
export const TRUST_BUNDLE = "ROOTCA_BUNDLE"

/** Sidecar mTLS settings; absent when no certificates are served (then everything stays plaintext). */
export interface MeshTls {
  readonly trustDomain: string
  readonly mode: "strict" | "permissive"
}

const TLS_SOCKET = "envoy.transport_sockets.tls"
const sdsSecret = (name: string) => ({ name, sds_config: ads })
const tlsParams = { tls_minimum_protocol_version: "TLSv1_2" }

/** The inbound side: the service's own certificate; a client certificate from the mesh's bundle required. */
export const downstreamTls = (tls: MeshTls, service: Service): PlainObject => ({
  name: TLS_SOCKET,
  typed_config: {
    "@type": typeUrl(Types.DownstreamTlsContext),
    common_tls_context: {
      tls_params: tlsParams,
      tls_certificate_sds_secret_configs: [sdsSecret(identitySecretName(tls.trustDomain, service.name))],
      // ROOTCA carries the trust bundle and accepts only URI SANs of this trust domain.
      validation_context_sds_secret_config: sdsSecret(ROOT_CA_SECRET),
      ...(service.protocol === "tcp" ? {} : { alpn_protocols: ["h2", "http/1.1"] })
    },
    require_client_certificate: { value: true }
  }
})

/**
 * The outbound side: the calling sidecar's own certificate (`OWN_SECRET`, so one cluster serves
 * every sidecar), and a server certificate from the mesh's bundle naming the destination's SPIFFE ID.
 */
export const upstreamTls = (tls: MeshTls, destination: Service): PlainObject => ({
  name: TLS_SOCKET,
  typed_config: {
    "@type": typeUrl(Types.UpstreamTlsContext),
    common_tls_context: {
      tls_params: tlsParams,
      tls_certificate_sds_secret_configs: [sdsSecret(OWN_SECRET)],
      combined_validation_context: {
        default_validation_context: {
          match_typed_subject_alt_names: [{
            san_type: "URI",
            matcher: { exact: identitySecretName(tls.trustDomain, destination.name) }
          }]
        },
        validation_context_sds_secret_config: sdsSecret(TRUST_BUNDLE)
      }
    },
    sni: destination.name
  }
})

/** An outbound cluster that originates mTLS. */
export const withUpstreamTls = (cluster: PlainObject, tls: MeshTls, destination: Service): PlainObject => ({
  ...cluster,
  transport_socket: upstreamTls(tls, destination)
})

/**
 * The inbound listener with mTLS: `strict` terminates TLS on its one filter chain (plaintext
 * callers fail the handshake); `permissive` lets a TLS inspector pick between a TLS chain and a
 * plaintext chain with the same filters, for callers that are not in the mesh yet.
 */
export const withDownstreamTls = (listener: PlainObject, tls: MeshTls, service: Service): PlainObject => {
  const chains = listener["filter_chains"] as ReadonlyArray<PlainObject>
  const socket = downstreamTls(tls, service)
  if (tls.mode === "strict") {
    return { ...listener, filter_chains: chains.map((chain) => ({ ...chain, transport_socket: socket })) }
  }
  return {
    ...listener,
    listener_filters: [
      ...((listener["listener_filters"] as ReadonlyArray<PlainObject> | undefined) ?? []),
      { name: "envoy.filters.listener.tls_inspector", typed_config: { "@type": typeUrl(Types.TlsInspector) } }
    ],
    filter_chains: chains.flatMap((chain) => [
      { ...chain, filter_chain_match: { transport_protocol: "tls" }, transport_socket: socket },
      { ...chain, filter_chain_match: { transport_protocol: "raw_buffer" } }
    ])
  }
}

// ---------------------------------------------------------------------------------------------
// Proxyless gRPC security: xDS-enabled servers (gRFC A36), certificate providers (A29), RBAC (A41)
// ---------------------------------------------------------------------------------------------

/**
 * What a gRPC xDS server asks for: the bootstrap's `server_listener_resource_name_template` with
 * `%s` replaced by the address it binds (`IP:PORT`, `[v6]:PORT`).
 */
export const SERVER_LISTENER_PREFIX = "grpc/server?xds.resource.listening_address="

/** The Listener name change tracking uses for "`service`'s server listeners changed" (never served). */
export const serverListenerMarker = (service: string): string => `${SERVER_LISTENER_PREFIX}<${service}>`

/** The address in a server listener name; undefined unless it is a literal IP and a port. */
export const serverListenerAddress = (name: string): { readonly host: string; readonly port: number } | undefined => {
  if (!name.startsWith(SERVER_LISTENER_PREFIX)) return undefined
  const rest = name.slice(SERVER_LISTENER_PREFIX.length)
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(rest)
  if (match === null) return undefined
  const host = match[1] ?? match[2]!
  const port = Number(match[3])
  if (NodeNet.isIP(host) === 0 || port < 1 || port > 65535) return undefined
  return { host, port }
}

/** Proxyless mTLS: on under `policies.security.mtls: strict` (see README "what applies where"). */
export interface ProxylessTls {
  readonly trustDomain: string
  /** The bootstrap's certificate provider instance (the agent's and `grpc bootstrap`'s: `mesh`). */
  readonly instance: string
}

const providerInstance = (tls: ProxylessTls) => ({ instance_name: tls.instance })

/**
 * The server side: its own certificate and the CA bundle from the provider, a client certificate
 * required. gRPC refuses `tls_params` and SDS here, hence a context of its own, not `downstreamTls`.
 */
export const proxylessDownstreamTls = (tls: ProxylessTls): PlainObject => ({
  name: TLS_SOCKET,
  typed_config: {
    "@type": typeUrl(Types.DownstreamTlsContext),
    common_tls_context: {
      tls_certificate_provider_instance: providerInstance(tls),
      validation_context: { ca_certificate_provider_instance: providerInstance(tls) }
    },
    require_client_certificate: { value: true }
  }
})

/**
 * The client side: the caller's certificate, the CA bundle, and the destination's exact SPIFFE ID.
 * grpc-js-xds 1.14 reads only the older `match_subject_alt_names` (an exact matcher compares each
 * SAN's value, URI ones included), not `match_typed_subject_alt_names`.
 */
export const proxylessUpstreamTls = (tls: ProxylessTls, destination: string): PlainObject => ({
  name: TLS_SOCKET,
  typed_config: {
    "@type": typeUrl(Types.UpstreamTlsContext),
    common_tls_context: {
      tls_certificate_provider_instance: providerInstance(tls),
      validation_context: {
        ca_certificate_provider_instance: providerInstance(tls),
        match_subject_alt_names: [{ exact: identitySecretName(tls.trustDomain, destination) }]
      }
    }
  }
})

/**
 * The Listener for a proxyless server of `service` bound at `host:port`, named `name`: one filter
 * chain with an HttpConnectionManager whose RBAC filters are the sidecar's (`rbacFilters`: same
 * rules, same order, principals on the peer certificate's URI SAN), then the router; an inline
 * route configuration whose one route is `non_forwarding_action` (what A36 requires of servers).
 * With `tls`, the chain terminates mTLS; without, it is plaintext.
 */
export const serverListener = (
  name: string,
  host: string,
  port: number,
  service: string,
  rbac: ReadonlyArray<PlainObject>,
  tls: ProxylessTls | undefined
): PlainObject => ({
  name,
  address: socketAddress(host, port),
  filter_chains: [{
    name: "mesh",
    filters: [{
      name: "envoy.filters.network.http_connection_manager",
      typed_config: {
        "@type": typeUrl(Types.HttpConnectionManager),
        stat_prefix: `server|${service}`,
        route_config: {
          name: `server|${service}`,
          virtual_hosts: [{
            name: service,
            domains: ["*"],
            routes: [{ name: "all", match: { prefix: "" }, non_forwarding_action: {} }]
          }]
        },
        http_filters: [...rbac, routerFilter]
      }
    }],
    ...(tls ? { transport_socket: proxylessDownstreamTls(tls) } : {})
  }]
})
