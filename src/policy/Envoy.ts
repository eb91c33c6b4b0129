/**
 * The Envoy configuration that enforces compiled policy: pure functions from policy to plain
 * objects in Envoy's proto field names (checked by `src/xds/Protos.ts` before anything is encoded).
 *
 * Where each piece goes, and which client kind honours it:
 *
 * | policy                          | resource / field                                     | Envoy sidecar | proxyless gRPC (@grpc/grpc-js-xds 1.14) |
 * | ------------------------------- | ---------------------------------------------------- | ------------- | --------------------------------------- |
 * | route match: path, headers      | Route.match (prefix / path / safe_regex, headers)    | yes           | yes                                     |
 * | route match: method             | Route.match.headers `:method`                        | yes           | no: gRPC is always POST; avoid it       |
 * | route match: gRPC service/method| Route.match prefix `/<svc>/` or path `/<svc>/<m>`    | yes           | yes                                     |
 * | weights, timeout                | RouteAction weighted_clusters, timeout / max_stream_duration | yes   | yes                                     |
 * | retries (+ backoff)             | RouteAction.retry_policy(.retry_back_off)            | yes           | yes (gRPC status codes in retry_on)     |
 * | fault injection                 | HCM filter envoy.filters.http.fault + per-route override | yes       | yes (client-side filter)                |
 * | mirroring                       | RouteAction.request_mirror_policies                  | yes           | no (ignored)                            |
 * | circuit breakers                | Cluster.circuit_breakers                             | all four      | max_requests only                       |
 * | outlier detection               | Cluster.outlier_detection                            | yes           | yes                                     |
 * | authorization (RBAC)            | inbound HCM filters envoy.filters.http.rbac (tcp services: network RBAC, callers and ports only) | yes | clients: no; xDS *servers* (XdsServer): the same `rbacFilters` in their server Listener (src/xds/Resources.ts `serverListener`), with GRPC_XDS_EXPERIMENTAL_RBAC=true |
 * | local rate limit                | inbound HCM filter envoy.filters.http.local_ratelimit| yes           | no                                      |
 * | access logs, tracing            | HCM access_log, tracing (+ collector cluster)        | yes           | no                                      |
 * | stats tags                      | bootstrap stats_config.stats_tags (Sidecar layer)    | yes           | no                                      |
 */
import { Duration } from "effect"
import type {
  CircuitBreakers,
  Fault,
  HeaderMatch,
  Mirror,
  Observability,
  OutlierDetection,
  RateLimit,
  Retries,
  RouteMatch
} from "../../schemas/Config.js"
import { parseHostPort } from "../../schemas/Endpoint.js"
import { durationProto, type PlainObject, socketAddress, typeUrl } from "../envoy/Messages.js"
import type { CompiledPolicy, CompiledRule } from "./Compile.js"
import { effectivePath } from "./Compile.js"
import type { Glob } from "./Match.js"

export type { PlainObject }

export const PolicyTypes = {
  HttpRbac: "envoy.extensions.filters.http.rbac.v3.RBAC",
  NetworkRbac: "envoy.extensions.filters.network.rbac.v3.RBAC",
  HttpFault: "envoy.extensions.filters.http.fault.v3.HTTPFault",
  LocalRateLimit: "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
  OpenTelemetry: "envoy.config.trace.v3.OpenTelemetryConfig",
  StdoutAccessLog: "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
  HttpProtocolOptions: "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
  StatsConfig: "envoy.config.metrics.v3.StatsConfig"
} as const

export const FilterNames = {
  fault: "envoy.filters.http.fault",
  rbacDeny: "mesh.rbac.deny",
  rbacAllow: "mesh.rbac.allow",
  localRateLimit: "envoy.filters.http.local_ratelimit"
} as const

/** The cluster spans go to (an `outbound|` name, so sidecars' wildcard CDS receives it). */
export const TRACING_CLUSTER = "outbound|_tracing"

/** Percent (0–100, fractions allowed) as an Envoy FractionalPercent, per million for precision. */
export const fractionalPercent = (percent: number): PlainObject => ({
  numerator: Math.round(percent * 10_000),
  denominator: "MILLION"
})

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

const headerMatcher = (h: HeaderMatch): PlainObject => {
  const base = { name: h.name.toLowerCase(), ...(h.invert ? { invert_match: true } : {}) }
  if (h.present !== undefined) return { ...base, present_match: h.present }
  if (h.exact !== undefined) return { ...base, string_match: { exact: h.exact } }
  if (h.prefix !== undefined) return { ...base, string_match: { prefix: h.prefix } }
  return { ...base, string_match: { safe_regex: { regex: h.regex ?? "" } } }
}

/** Route.match for a policy route: every request when absent. */
export const routeMatch = (match: RouteMatch | undefined): PlainObject => {
  const path = effectivePath(match)
  const pathPart = path?.exact !== undefined
    ? { path: path.exact }
    : path?.regex !== undefined
    ? { safe_regex: { regex: path.regex } }
    : { prefix: path?.prefix ?? "" }
  const headers = [
    ...(match?.method !== undefined ? [{ name: ":method", string_match: { exact: match.method } }] : []),
    ...(match?.headers ?? []).map(headerMatcher)
  ]
  return { ...pathPart, ...(headers.length > 0 ? { headers } : {}) }
}

/**
 * RouteAction.retry_policy; `attempts` counts the first try, Envoy and gRPC count retries after it.
 * For `attempts: 1` send no retry policy at all: gRPC clients reject `num_retries: 0`.
 */
export const retryPolicy = (retries: Retries | undefined): PlainObject | undefined =>
  retries === undefined || retries.attempts <= 1 ? undefined : ({
    retry_on: retries.on.join(","),
    num_retries: { value: retries.attempts - 1 },
    ...(retries.perTryTimeout ? { per_try_timeout: durationProto(retries.perTryTimeout) } : {}),
    ...(retries.backoff
      ? {
        retry_back_off: {
          base_interval: durationProto(retries.backoff.baseInterval),
          ...(retries.backoff.maxInterval ? { max_interval: durationProto(retries.backoff.maxInterval) } : {})
        }
      }
      : {})
  })

/** An HTTPFault config (an Any, for `typed_per_filter_config` or the HCM filter). */
export const faultConfig = (fault: Fault | undefined): PlainObject => ({
  "@type": typeUrl(PolicyTypes.HttpFault),
  ...(fault?.delay
    ? { delay: { fixed_delay: durationProto(fault.delay.fixed), percentage: fractionalPercent(fault.delay.percent) } }
    : {}),
  ...(fault?.abort
    ? {
      abort: {
        ...(fault.abort.grpcStatus !== undefined
          ? { grpc_status: fault.abort.grpcStatus }
          : { http_status: fault.abort.httpStatus }),
        percentage: fractionalPercent(fault.abort.percent)
      }
    }
    : {})
})

/** Route.typed_per_filter_config turning the HCM's (empty) fault filter on for one route. */
export const routeFaultOverride = (fault: Fault | undefined): PlainObject | undefined =>
  fault === undefined ? undefined : { [FilterNames.fault]: faultConfig(fault) }

export const mirrorPolicies = (mirror: Mirror, clusterOf: (service: string) => string): ReadonlyArray<PlainObject> => [{
  cluster: clusterOf(mirror.service),
  ...(mirror.percent < 100 ? { runtime_fraction: { default_value: fractionalPercent(mirror.percent) } } : {})
}]

/**
 * The fault filter every outbound HCM carries (proxyless and sidecar): empty, so it does nothing
 * until a route's `typed_per_filter_config` overrides it. It must come before the router.
 */
export const faultFilter: PlainObject = { name: FilterNames.fault, typed_config: faultConfig(undefined) }

// ---------------------------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------------------------

const u32 = (value: number | undefined) => (value === undefined ? {} : { value })

export const circuitBreakers = (cb: CircuitBreakers): PlainObject => {
  const threshold: PlainObject = { priority: "DEFAULT" }
  if (cb.maxConnections !== undefined) threshold["max_connections"] = u32(cb.maxConnections)
  if (cb.maxPendingRequests !== undefined) threshold["max_pending_requests"] = u32(cb.maxPendingRequests)
  if (cb.maxRequests !== undefined) threshold["max_requests"] = u32(cb.maxRequests)
  if (cb.maxRetries !== undefined) threshold["max_retries"] = u32(cb.maxRetries)
  return { thresholds: [threshold] }
}

export const outlierDetection = (od: OutlierDetection): PlainObject => ({
  consecutive_5xx: { value: od.consecutive5xx },
  interval: durationProto(od.interval),
  base_ejection_time: durationProto(od.baseEjectionTime),
  max_ejection_percent: { value: Math.round(od.maxEjectionPercent) },
  ...(od.consecutiveGatewayErrors !== undefined
    ? {
      consecutive_gateway_failure: { value: od.consecutiveGatewayErrors },
      enforcing_consecutive_gateway_failure: { value: 100 }
    }
    : {})
})

/** Fields to merge into every cluster that sends traffic to `service` (proxyless and sidecar). */
export const clusterResilience = (policy: CompiledPolicy, service: string): PlainObject => {
  const resilience = policy.resilience.get(service)
  return {
    ...(resilience?.circuitBreakers ? { circuit_breakers: circuitBreakers(resilience.circuitBreakers) } : {}),
    ...(resilience?.outlierDetection ? { outlier_detection: outlierDetection(resilience.outlierDetection) } : {})
  }
}

// ---------------------------------------------------------------------------------------------
// Authorization (RBAC) and rate limits: the target's own sidecar, inbound
// ---------------------------------------------------------------------------------------------

const stringMatcher = (glob: Glob): PlainObject | undefined => {
  switch (glob._tag) {
    case "Any":
      return undefined
    case "Exact":
      return { exact: glob.value }
    case "Prefix":
      return glob.value === "" ? undefined : { prefix: glob.value }
    case "Suffix":
      return glob.value === "" ? undefined : { suffix: glob.value }
  }
}

const anyOf = (
  rules: ReadonlyArray<PlainObject>
): PlainObject => (rules.length === 1 ? rules[0]! : { or_rules: { rules } })

const permissionOf = (rule: CompiledRule): PlainObject => {
  const parts: Array<PlainObject> = []
  if (rule.methods !== undefined) {
    parts.push(anyOf([...rule.methods].map((m) => ({ header: { name: ":method", string_match: { exact: m } } }))))
  }
  if (rule.paths !== undefined) {
    parts.push(anyOf(rule.paths.map((glob) => {
      const matcher = stringMatcher(glob)
      return matcher === undefined ? { any: true } : { url_path: { path: matcher } }
    })))
  }
  if (rule.ports !== undefined) parts.push(anyOf([...rule.ports].map((port) => ({ destination_port: port }))))
  for (const [name, glob] of rule.headers ?? []) {
    const matcher = stringMatcher(glob)
    parts.push({ header: matcher === undefined ? { name, present_match: true } : { name, string_match: matcher } })
  }
  if (parts.length === 0) return { any: true }
  return parts.length === 1 ? parts[0]! : { and_rules: { rules: parts } }
}

/** Principals from the peer certificate's URI SAN (`authenticated.principal_name`), i.e. its SPIFFE ID. */
const principalsOf = (rule: CompiledRule): ReadonlyArray<PlainObject> =>
  rule.principals === "any"
    ? [{ any: true }]
    : [...rule.principals].sort().map((id) => ({ authenticated: { principal_name: { exact: id } } }))

const rbacPolicies = (rules: ReadonlyArray<CompiledRule>): PlainObject =>
  Object.fromEntries(
    rules.map((rule) => [rule.name, { permissions: [permissionOf(rule)], principals: principalsOf(rule) }])
  )

const rbacFilter = (name: string, action: "ALLOW" | "DENY", rules: ReadonlyArray<CompiledRule>): PlainObject => ({
  name,
  typed_config: { "@type": typeUrl(PolicyTypes.HttpRbac), rules: { action, policies: rbacPolicies(rules) } }
})

/**
 * The RBAC filters for `service`'s inbound listener, in the order `authorize` decides: a DENY
 * filter with the deny rules, then an ALLOW filter with the allow rules when there are any (or with
 * none at all when the default is deny: it then rejects everything that got this far).
 */
export const rbacFilters = (policy: CompiledPolicy, service: string): ReadonlyArray<PlainObject> => {
  const rules = policy.rules.get(service) ?? { deny: [], allow: [] }
  const filters: Array<PlainObject> = []
  if (rules.deny.length > 0) filters.push(rbacFilter(FilterNames.rbacDeny, "DENY", rules.deny))
  if (rules.allow.length > 0 || policy.defaultAction === "deny") {
    filters.push(rbacFilter(FilterNames.rbacAllow, "ALLOW", rules.allow))
  }
  return filters
}

/**
 * The network RBAC filters for a TCP service's inbound listener (before tcp_proxy): callers by
 * SPIFFE ID and ports only, which is all its rules may name (the compiler rejects the rest).
 */
export const networkRbacFilters = (policy: CompiledPolicy, service: string): ReadonlyArray<PlainObject> =>
  rbacFilters(policy, service).map((filter) => ({
    name: `envoy.filters.network.rbac/${String(filter["name"]).slice("mesh.rbac.".length)}`,
    typed_config: {
      ...(filter["typed_config"] as PlainObject),
      "@type": typeUrl(PolicyTypes.NetworkRbac),
      stat_prefix: `rbac_${service}`
    }
  }))

/** A token bucket holding `burst` tokens, refilled with `requestsPerSecond` every second. */
export const localRateLimitFilter = (service: string, limit: RateLimit): PlainObject => {
  const always = {
    default_value: { numerator: 100, denominator: "HUNDRED" },
    runtime_key: `mesh.${service}.rate_limit`
  }
  return {
    name: FilterNames.localRateLimit,
    typed_config: {
      "@type": typeUrl(PolicyTypes.LocalRateLimit),
      stat_prefix: `rate_limit_${service}`,
      token_bucket: {
        max_tokens: limit.burst ?? limit.requestsPerSecond,
        tokens_per_fill: { value: limit.requestsPerSecond },
        fill_interval: durationProto(Duration.seconds(1))
      },
      filter_enabled: always,
      filter_enforced: always
    }
  }
}

/** The HTTP filters (before the router) of `service`'s inbound listener: authorization, then its rate limit. */
export const inboundHttpFilters = (policy: CompiledPolicy, service: string): ReadonlyArray<PlainObject> => {
  const limit = policy.resilience.get(service)?.rateLimit
  return [...rbacFilters(policy, service), ...(limit ? [localRateLimitFilter(service, limit)] : [])]
}

// ---------------------------------------------------------------------------------------------
// Observability (Envoy only)
// ---------------------------------------------------------------------------------------------

const TEXT_FORMAT =
  "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% " +
  "%BYTES_RECEIVED% %BYTES_SENT% %DURATION% \"%DOWNSTREAM_PEER_URI_SAN%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n"

const JSON_FIELDS: Readonly<Record<string, string>> = {
  start_time: "%START_TIME%",
  method: "%REQ(:METHOD)%",
  path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
  protocol: "%PROTOCOL%",
  response_code: "%RESPONSE_CODE%",
  grpc_status: "%GRPC_STATUS%",
  response_flags: "%RESPONSE_FLAGS%",
  bytes_received: "%BYTES_RECEIVED%",
  bytes_sent: "%BYTES_SENT%",
  duration_ms: "%DURATION%",
  peer: "%DOWNSTREAM_PEER_URI_SAN%",
  authority: "%REQ(:AUTHORITY)%",
  upstream_host: "%UPSTREAM_HOST%"
}

/** HttpConnectionManager.access_log: stdout, text or JSON; empty when access logs are off. */
export const accessLogs = (observability: Observability): ReadonlyArray<PlainObject> => {
  if (!observability.accessLogs.enabled) return []
  const log_format = observability.accessLogs.format === "json"
    ? {
      json_format: { fields: Object.fromEntries(Object.entries(JSON_FIELDS).map(([k, v]) => [k, { stringValue: v }])) }
    }
    : { text_format_source: { inline_string: TEXT_FORMAT } }
  return [{
    name: "envoy.access_loggers.stdout",
    typed_config: { "@type": typeUrl(PolicyTypes.StdoutAccessLog), log_format }
  }]
}

/** HttpConnectionManager.tracing: OpenTelemetry over gRPC to the collector cluster; undefined when off. */
export const tracing = (observability: Observability, service: string): PlainObject | undefined => {
  const t = observability.tracing
  if (t === undefined) return undefined
  const tags = Object.entries(observability.statsTags).map(([tag, value]) => ({ tag, literal: { value } }))
  return {
    random_sampling: { value: t.samplingPercent },
    provider: {
      name: "envoy.tracers.opentelemetry",
      typed_config: {
        "@type": typeUrl(PolicyTypes.OpenTelemetry),
        grpc_service: { envoy_grpc: { cluster_name: TRACING_CLUSTER } },
        service_name: service
      }
    },
    ...(tags.length > 0 ? { custom_tags: tags } : {})
  }
}

/** The fields to merge into an Envoy HttpConnectionManager for `service` (access log, tracing). */
export const hcmObservability = (observability: Observability, service: string): PlainObject => {
  const logs = accessLogs(observability)
  const trace = tracing(observability, service)
  return { ...(logs.length > 0 ? { access_log: logs } : {}), ...(trace ? { tracing: trace } : {}) }
}

/** The collector's cluster (STRICT_DNS, HTTP/2 for OTLP/gRPC); undefined when tracing is off. */
export const tracingCluster = (observability: Observability): PlainObject | undefined => {
  const t = observability.tracing
  if (t === undefined) return undefined
  const { host, port } = parseHostPort(t.collector)
  return {
    name: TRACING_CLUSTER,
    type: "STRICT_DNS",
    connect_timeout: durationProto(Duration.seconds(5)),
    load_assignment: {
      cluster_name: TRACING_CLUSTER,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: socketAddress(host, port) } }] }]
    },
    typed_extension_protocol_options: {
      "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": typeUrl(PolicyTypes.HttpProtocolOptions),
        explicit_http_config: { http2_protocol_options: {} }
      }
    }
  }
}

/** Bootstrap `stats_config`: Envoy's default tags plus the mesh's fixed ones (`observability.statsTags`). */
export const statsConfig = (statsTags: Readonly<Record<string, string>>): PlainObject => ({
  use_all_default_tags: true,
  ...(Object.keys(statsTags).length > 0
    ? { stats_tags: Object.entries(statsTags).map(([tag_name, fixed_value]) => ({ tag_name, fixed_value })) }
    : {})
})

// ---------------------------------------------------------------------------------------------
// For the snapshot builder
// ---------------------------------------------------------------------------------------------

const plainRule = (rule: CompiledRule) => ({
  name: rule.name,
  action: rule.action,
  principals: rule.principals === "any" ? "any" : [...rule.principals].sort(),
  methods: rule.methods === undefined ? null : [...rule.methods].sort(),
  paths: rule.paths ?? null,
  ports: rule.ports === undefined ? null : [...rule.ports].sort(),
  headers: rule.headers ?? null
})

/**
 * What `service`'s resources take from the policy beyond its traffic policy (authorization rules
 * for it, its resilience, the default action, observability): part of its snapshot group key, so
 * a change to any of them rebuilds the service's resources, and nothing else does.
 */
export const servicePolicyKey = (policy: CompiledPolicy, service: string): string => {
  const rules = policy.rules.get(service)
  return JSON.stringify([
    policy.trustDomain,
    policy.defaultAction,
    rules === undefined ? null : [rules.deny.map(plainRule), rules.allow.map(plainRule)],
    policy.resilience.get(service) ?? null,
    policy.observability
  ])
}
