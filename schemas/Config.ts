import { Duration, Schema } from "effect"
import { DurationString, PositiveDuration } from "./Duration.js"
import { endpointKey } from "./Endpoint.js"
import { Re2Regex } from "./Regex.js"

// ---------------------------------------------------------------------------------------------
// Small values
// ---------------------------------------------------------------------------------------------

const intBetween = (min: number, max: number, what: string) =>
  Schema.Number.annotations({ message: (issue) => `expected ${what}, got ${JSON.stringify(issue.actual)}` }).pipe(
    Schema.filter((n) => (Number.isInteger(n) && n >= min && n <= max) || `expected ${what}, got ${n}`, {
      jsonSchema: { type: "integer", minimum: min, maximum: max }
    })
  )

/** A port a service listens on. */
export const Port = intBetween(1, 65535, "a port number from 1 to 65535")
/** A port the controller binds; 0 asks the system for a free one (tests use this). */
export const ListenPort = intBetween(0, 65535, "a port number from 0 to 65535 (0 picks a free port)")
const PositiveInt = intBetween(1, Number.MAX_SAFE_INTEGER, "a whole number greater than zero")
const NonNegativeInt = intBetween(0, Number.MAX_SAFE_INTEGER, "a whole number, zero or more")

/** A choice among fixed strings, with a message that lists them. */
export const oneOf = <const L extends ReadonlyArray<string>>(...values: L) =>
  Schema.Literal(...values).annotations({
    message: (issue) => ({
      message: `expected one of ${values.map((v) => JSON.stringify(v)).join(", ")}, got ${
        JSON.stringify(issue.actual)
      }`,
      override: true
    })
  })

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/

/** A service name: a DNS label, since it becomes part of host names and SPIFFE IDs. */
export const ServiceName = Schema.String.pipe(
  Schema.filter(
    (s) =>
      DNS_LABEL.test(s) ||
      `expected a service name (lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit), got ${
        JSON.stringify(s)
      }`,
    { jsonSchema: { pattern: DNS_LABEL.source } }
  )
)

const NonEmptyString = Schema.String.pipe(
  Schema.filter((s) => s.trim().length > 0 || "expected a non-empty string", { jsonSchema: { minLength: 1 } })
)

const TRUST_DOMAIN = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/
const TrustDomain = Schema.String.pipe(
  Schema.filter(
    (s) =>
      (TRUST_DOMAIN.test(s) && s.length <= 255) ||
      `expected a trust domain (lowercase letters, digits, '-' and '.'), got ${JSON.stringify(s)}`,
    { jsonSchema: { pattern: TRUST_DOMAIN.source } }
  )
)

const StringMap = Schema.Record({ key: Schema.String, value: Schema.String })

const withDefault = <A, I, R>(schema: Schema.Schema<A, I, R>, value: () => NoInfer<A>) =>
  Schema.optionalWith(schema, { default: value, exact: true })

const emptyArray = <A>(): ReadonlyArray<A> => []
const emptyMap = (): Readonly<Record<string, string>> => ({})

// ---------------------------------------------------------------------------------------------
// mesh, controller
// ---------------------------------------------------------------------------------------------

export const Mesh = Schema.Struct({
  name: ServiceName,
  trustDomain: withDefault(TrustDomain, () => "mesh.local")
})
export type Mesh = typeof Mesh.Type

export const ListenAddress = (host: string, port: number) =>
  Schema.Struct({
    host: withDefault(NonEmptyString, () => host),
    port: withDefault(ListenPort, () => port)
  })

const XdsListen = Schema.Struct({
  ...ListenAddress("0.0.0.0", 15010).fields,
  /** "mtls": only clients with a certificate from the mesh CA may connect (see layers/Certificates.ts). */
  tls: withDefault(oneOf("off", "mtls"), () => "off" as const),
  /**
   * Over plaintext xDS (`tls: off`), believe a sidecar's node id `<service>~<instance>` and send it
   * that service's private key over SDS. Off by default: anyone who can reach the port can claim
   * any node id. With `tls: mtls` the verified client certificate decides and this is ignored.
   */
  insecureNodeIdentity: withDefault(Schema.Boolean, () => false)
})
/**
 * Bounds on what the registration API accepts. They keep one caller from growing memory without
 * bound, and keep every resource built from registrations far below what xDS clients accept
 * (gRPC's default receive limit is 4 MiB): `maxServiceBytes` is capped at 2 MiB for that reason.
 */
export const AdminRegistration = Schema.Struct({
  /** A request body larger than this is refused with 413 before it is parsed. */
  maxBodyBytes: withDefault(intBetween(1, 1024 * 1024, "a size in bytes from 1 to 1048576"), () => 64 * 1024),
  maxLabels: withDefault(NonNegativeInt, () => 16),
  maxLabelKeyLength: withDefault(PositiveInt, () => 63),
  maxLabelValueLength: withDefault(PositiveInt, () => 256),
  maxEndpointsPerService: withDefault(PositiveInt, () => 10_000),
  /** The registrations of one service, counted as their JSON size, may not grow past this. */
  maxServiceBytes: withDefault(
    intBetween(1024, 2 * 1024 * 1024, "a size in bytes from 1024 to 2097152"),
    () => 1024 * 1024
  ),
  /**
   * May the API create services the config file does not define (nor Consul)? Each one gets a
   * cluster and a workload certificate, so this is off unless asked for, and bounded by maxServices.
   */
  createServices: withDefault(Schema.Boolean, () => false),
  maxServices: withDefault(NonNegativeInt, () => 32)
})
export type AdminRegistration = typeof AdminRegistration.Type

const AdminListen = Schema.Struct({
  ...ListenAddress("127.0.0.1", 15014).fields,
  /**
   * The bearer token that state-changing requests must carry. Absent: `<certificates.dir>/admin-token`,
   * generated (mode 0600) on first start. A file that does not exist is created with a new token.
   */
  tokenFile: Schema.optionalWith(NonEmptyString, { exact: true }),
  /**
   * Who may read /status, /metrics and GET /v1/services: "open" to anyone who reaches the port, "token"
   * only with the token, "auto" (default) open when `host` is a loopback address and token otherwise.
   */
  readAccess: withDefault(oneOf("auto", "open", "token"), () => "auto" as const),
  /** Host names requests may carry besides the bound address (a DNS name the server is reached by). */
  allowedHosts: withDefault(Schema.Array(NonEmptyString), emptyArray),
  /**
   * Serve HTTPS with the controller's own mesh certificate (spiffe://<trustDomain>/controller, renewed
   * and rotated with the CA). The server asks for a client certificate but does not require one:
   * the bearer token and /healthz work without. Handshakes fail until the CA has loaded.
   */
  tls: withDefault(Schema.Boolean, () => false),
  /**
   * Services whose mesh certificate (URI SAN spiffe://<trustDomain>/service/<name>, verified against
   * the live trust bundle) is an admin credential, like the token. Needs `tls: true`. A valid mesh
   * certificate of any other identity is refused with 403.
   */
  adminIdentities: withDefault(Schema.Array(ServiceName), emptyArray),
  registration: withDefault(AdminRegistration, () => Schema.decodeSync(AdminRegistration)({}))
})
export type AdminListen = typeof AdminListen.Type

export const Debounce = Schema.Struct({
  /** Rebuild once inputs have been quiet this long. */
  quiet: withDefault(DurationString, () => Duration.millis(100)),
  /** …but never delay a rebuild by more than this. */
  max: withDefault(PositiveDuration, () => Duration.seconds(1))
})

/** Calls allowed to the signing service: a token bucket per key (burst, then `perSecond`). */
const SigningRate = (burst: number, perSecond: number) =>
  Schema.Struct({
    burst: withDefault(PositiveInt, () => burst),
    perSecond: withDefault(Schema.Number.pipe(Schema.positive()), () => perSecond)
  })

/**
 * The certificate signing service (join tokens and renewals for agents on other hosts), on a TLS
 * listener that presents the controller's mesh certificate. Absent: not served.
 */
export const SigningListen = Schema.Struct({
  ...ListenAddress("0.0.0.0", 15012).fields,
  /** Per caller address (IP). */
  perPeer: withDefault(SigningRate(20, 5), () => ({ burst: 20, perSecond: 5 })),
  /** Per join token: guessing a secret or replaying a token gets nowhere fast. */
  perToken: withDefault(SigningRate(3, 0.1), () => ({ burst: 3, perSecond: 0.1 }))
})
export type SigningListen = typeof SigningListen.Type

export const Controller = Schema.Struct({
  signing: Schema.optionalWith(SigningListen, { exact: true }),
  xds: withDefault(
    XdsListen,
    () => ({ host: "0.0.0.0", port: 15010, tls: "off" as const, insecureNodeIdentity: false })
  ),
  admin: withDefault(AdminListen, () => Schema.decodeSync(AdminListen)({})),
  shutdownTimeout: withDefault(PositiveDuration, () => Duration.seconds(10)),
  debounce: withDefault(Debounce, () => ({ quiet: Duration.millis(100), max: Duration.seconds(1) }))
})
export type Controller = typeof Controller.Type

// ---------------------------------------------------------------------------------------------
// discovery
// ---------------------------------------------------------------------------------------------

/** TLS to the Consul HTTP API (an `https://` address). Files are PEM. */
export const ConsulTls = Schema.Struct({
  caFile: Schema.optionalWith(NonEmptyString, { exact: true }),
  certFile: Schema.optionalWith(NonEmptyString, { exact: true }),
  keyFile: Schema.optionalWith(NonEmptyString, { exact: true }),
  serverName: Schema.optionalWith(NonEmptyString, { exact: true }),
  insecureSkipVerify: withDefault(Schema.Boolean, () => false)
})

/**
 * Who checks a service registered in Consul: `consul` (the agent runs the service's healthCheck
 * itself) or `ttl` (a TTL check the controller keeps up to date with its own probe results).
 */
export const RegistrationCheck = oneOf("consul", "ttl")
export type RegistrationCheck = typeof RegistrationCheck.Type

/** The ACL token is not here: it comes from the CONSUL_HTTP_TOKEN environment variable. */
export const ConsulSettings = Schema.Struct({
  address: withDefault(NonEmptyString, () => "http://127.0.0.1:8500"),
  datacenter: Schema.optionalWith(NonEmptyString, { exact: true }),
  tls: Schema.optionalWith(ConsulTls, { exact: true }),
  /** The default check mode of services marked `register` (a service may override it). */
  registration: withDefault(RegistrationCheck, () => "consul" as const),
  /** How often registrations are verified against the agent and restored. */
  antiEntropyInterval: withDefault(PositiveDuration, () => Duration.seconds(30)),
  /** The `wait` of blocking queries. */
  watchWait: withDefault(PositiveDuration, () => Duration.minutes(5)),
  /** A KV key holding a `policies` document (YAML or JSON) shared by several controllers. */
  policiesKey: Schema.optionalWith(NonEmptyString, { exact: true })
})
export type ConsulSettings = typeof ConsulSettings.Type

export const DnsSettings = Schema.Struct({
  /** How often host-name endpoint addresses are resolved again. */
  refreshInterval: withDefault(PositiveDuration, () => Duration.seconds(30)),
  /** Consul's DNS interface (`host:port`), used for `*.consul` names. */
  consulServer: withDefault(NonEmptyString, () => "127.0.0.1:8600")
})
export type DnsSettings = typeof DnsSettings.Type

export const Discovery = Schema.Struct({
  /** Absent: the embedded registry (services from this file and the registration API) only. */
  consul: Schema.optionalWith(ConsulSettings, { exact: true }),
  dns: withDefault(DnsSettings, () => ({ refreshInterval: Duration.seconds(30), consulServer: "127.0.0.1:8600" }))
})
export type Discovery = typeof Discovery.Type

// ---------------------------------------------------------------------------------------------
// services
// ---------------------------------------------------------------------------------------------

export const Protocol = oneOf("http", "grpc", "tcp")
export type Protocol = typeof Protocol.Type

export const EndpointConfig = Schema.Struct({
  /** An IP address or a host name (host names are resolved before they reach xDS). */
  address: NonEmptyString,
  /** Defaults to the service's port. */
  port: Schema.optionalWith(Port, { exact: true }),
  labels: withDefault(StringMap, emptyMap),
  weight: withDefault(PositiveInt, () => 1)
})
export type EndpointConfig = typeof EndpointConfig.Type

const checkTiming = {
  interval: withDefault(PositiveDuration, () => Duration.seconds(10)),
  timeout: withDefault(PositiveDuration, () => Duration.seconds(1)),
  healthyThreshold: withDefault(PositiveInt, () => 2),
  unhealthyThreshold: withDefault(PositiveInt, () => 3)
}

const StatusCode = intBetween(100, 599, "an HTTP status code from 100 to 599")

export const HttpCheck = Schema.Struct({
  type: Schema.Literal("http"),
  ...checkTiming,
  method: withDefault(oneOf("GET", "HEAD", "POST", "PUT", "OPTIONS"), () => "GET" as const),
  path: withDefault(
    Schema.String.pipe(
      Schema.filter((p) => p.startsWith("/") || `expected a path starting with "/", got ${JSON.stringify(p)}`)
    ),
    () => "/healthz"
  ),
  expectedStatuses: withDefault(Schema.Array(StatusCode), () => [200]),
  host: Schema.optionalWith(NonEmptyString, { exact: true }),
  https: withDefault(Schema.Boolean, () => false),
  /** With https: trust the mesh CA instead of the system roots. */
  trustMeshCa: withDefault(Schema.Boolean, () => false)
})

export const TcpCheck = Schema.Struct({
  type: Schema.Literal("tcp"),
  ...checkTiming
})

export const GrpcCheck = Schema.Struct({
  type: Schema.Literal("grpc"),
  ...checkTiming,
  /** The service name sent in grpc.health.v1 HealthCheckRequest; "" asks about the server as a whole. */
  service: withDefault(Schema.String, () => "")
})

export const HealthCheck = Schema.Union(HttpCheck, TcpCheck, GrpcCheck)
export type HealthCheck = typeof HealthCheck.Type

export const ServiceConfig = Schema.Struct({
  name: ServiceName,
  protocol: withDefault(Protocol, () => "http" as const),
  port: Port,
  endpoints: withDefault(Schema.Array(EndpointConfig), emptyArray),
  healthCheck: Schema.optionalWith(HealthCheck, { exact: true }),
  /** When every endpoint is unhealthy: keep routing to all of them (open) or to none (closed). */
  failMode: withDefault(oneOf("open", "closed"), () => "open" as const),
  tags: withDefault(Schema.Array(NonEmptyString), emptyArray),
  metadata: withDefault(StringMap, emptyMap),
  /**
   * Runs on this host: register its endpoints with the local Consul agent. `true` uses
   * `discovery.consul.registration`; `{ check: ttl }` or `{ check: consul }` overrides it.
   */
  register: Schema.optionalWith(Schema.Union(Schema.Boolean, Schema.Struct({ check: RegistrationCheck })), {
    exact: true
  })
})
export type ServiceConfig = typeof ServiceConfig.Type

// ---------------------------------------------------------------------------------------------
// policies
// ---------------------------------------------------------------------------------------------

export const RetryOn = oneOf(
  "unavailable",
  "reset",
  "cancelled",
  "deadline-exceeded",
  "resource-exhausted",
  "internal",
  "connect-failure",
  "refused-stream",
  "5xx",
  "gateway-error",
  "retriable-4xx"
)
export type RetryOn = typeof RetryOn.Type

/** Waits between retries: jittered, growing from `baseInterval` up to `maxInterval`. */
export const RetryBackoff = Schema.Struct({
  baseInterval: PositiveDuration,
  /** Default: 10 × baseInterval (what Envoy and gRPC assume). */
  maxInterval: Schema.optionalWith(PositiveDuration, { exact: true })
})
export type RetryBackoff = typeof RetryBackoff.Type

export const Retries = Schema.Struct({
  attempts: intBetween(1, 10, "a number of attempts from 1 to 10"),
  perTryTimeout: Schema.optionalWith(PositiveDuration, { exact: true }),
  on: withDefault(Schema.Array(RetryOn), () => ["unavailable", "reset", "connect-failure"] as const),
  backoff: Schema.optionalWith(RetryBackoff, { exact: true })
})
export type Retries = typeof Retries.Type

export const Destination = Schema.Struct({
  service: ServiceName,
  weight: withDefault(PositiveInt, () => 1)
})
export type Destination = typeof Destination.Type

/** A percentage of requests, 0 to 100 (fractions allowed). */
export const Percent = Schema.Number.pipe(
  Schema.filter((n) => (n >= 0 && n <= 100) || `expected a percentage from 0 to 100, got ${n}`, {
    jsonSchema: { minimum: 0, maximum: 100 }
  })
)

const exactlyOne = (what: string, keys: ReadonlyArray<string>) => (value: object): true | string => {
  const set = keys.filter((key) => (value as Record<string, unknown>)[key] !== undefined)
  return set.length === 1 ||
    `${what}: give exactly one of ${keys.join(", ")}${set.length > 1 ? ` (got ${set.join(" and ")})` : ""}`
}

const RequestPath = Schema.String.pipe(
  Schema.filter((p) => p.startsWith("/") || `expected a path starting with "/", got ${JSON.stringify(p)}`)
)

/** The request path: a prefix, the exact path, or an RE2 regex matching the whole path. */
export const PathMatch = Schema.Struct({
  prefix: Schema.optionalWith(RequestPath, { exact: true }),
  exact: Schema.optionalWith(RequestPath, { exact: true }),
  regex: Schema.optionalWith(Re2Regex, { exact: true })
}).pipe(Schema.filter(exactlyOne("path", ["prefix", "exact", "regex"])))
export type PathMatch = typeof PathMatch.Type

/** One request header: its value exactly, by prefix, by RE2 regex, or just present; `invert` negates. */
export const HeaderMatch = Schema.Struct({
  name: NonEmptyString,
  exact: Schema.optionalWith(Schema.String, { exact: true }),
  prefix: Schema.optionalWith(NonEmptyString, { exact: true }),
  regex: Schema.optionalWith(Re2Regex, { exact: true }),
  present: Schema.optionalWith(Schema.Boolean, { exact: true }),
  invert: withDefault(Schema.Boolean, () => false)
}).pipe(Schema.filter(exactlyOne("header", ["exact", "prefix", "regex", "present"])))
export type HeaderMatch = typeof HeaderMatch.Type

export const HttpMethod = oneOf("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")

/**
 * Which requests a route takes; every given part must match. Absent: all requests. Routes are
 * tried in order and the first match wins.
 */
export const RouteMatch = Schema.Struct({
  path: Schema.optionalWith(PathMatch, { exact: true }),
  headers: withDefault(Schema.Array(HeaderMatch), emptyArray),
  method: Schema.optionalWith(HttpMethod, { exact: true }),
  /** A gRPC service (`package.Service`) and optionally one method: the path `/<service>/<method>`. */
  grpc: Schema.optionalWith(
    Schema.Struct({ service: NonEmptyString, method: Schema.optionalWith(NonEmptyString, { exact: true }) }),
    { exact: true }
  )
}).pipe(Schema.filter((m) => !(m.path !== undefined && m.grpc !== undefined) || "match: give path or grpc, not both"))
export type RouteMatch = typeof RouteMatch.Type

/** Fault injection on the caller's side: delay and/or fail a percentage of requests. */
export const Fault = Schema.Struct({
  delay: Schema.optionalWith(Schema.Struct({ fixed: PositiveDuration, percent: Percent }), { exact: true }),
  abort: Schema.optionalWith(
    Schema.Struct({
      httpStatus: Schema.optionalWith(intBetween(200, 599, "an HTTP status code from 200 to 599"), { exact: true }),
      grpcStatus: Schema.optionalWith(intBetween(1, 16, "a gRPC status code from 1 to 16"), { exact: true }),
      percent: Percent
    }).pipe(Schema.filter(exactlyOne("abort", ["httpStatus", "grpcStatus"]))),
    { exact: true }
  )
}).pipe(Schema.filter((f) => f.delay !== undefined || f.abort !== undefined || "fault: give delay, abort or both"))
export type Fault = typeof Fault.Type

/** Copies a percentage of the route's requests to another service; the copies' responses are dropped. */
export const Mirror = Schema.Struct({
  service: ServiceName,
  percent: withDefault(Percent, () => 100)
})
export type Mirror = typeof Mirror.Type

export const Route = Schema.Struct({
  match: Schema.optionalWith(RouteMatch, { exact: true }),
  destinations: Schema.Array(Destination).pipe(
    Schema.minItems(1, { message: () => "expected at least one destination" })
  ),
  timeout: Schema.optionalWith(PositiveDuration, { exact: true }),
  retries: Schema.optionalWith(Retries, { exact: true }),
  fault: Schema.optionalWith(Fault, { exact: true }),
  mirror: Schema.optionalWith(Mirror, { exact: true })
})
export type Route = typeof Route.Type

export const TrafficPolicy = Schema.Struct({
  name: NonEmptyString,
  /** The service whose callers this policy applies to. */
  service: ServiceName,
  routes: Schema.Array(Route).pipe(Schema.minItems(1, { message: () => "expected at least one route" }))
})
export type TrafficPolicy = typeof TrafficPolicy.Type

const SPIFFE_ID = /^spiffe:\/\/[a-z0-9]([-a-z0-9.]*[a-z0-9])?(\/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+$/

/** A caller: a mesh service (its identity in this mesh's trust domain) or any SPIFFE ID. */
export const Peer = Schema.Union(
  Schema.Struct({ service: ServiceName }),
  Schema.Struct({
    principal: Schema.String.pipe(
      Schema.filter(
        (s) =>
          SPIFFE_ID.test(s) ||
          `expected a SPIFFE ID such as "spiffe://mesh.local/service/web", got ${JSON.stringify(s)}`,
        { jsonSchema: { pattern: SPIFFE_ID.source } }
      )
    )
  })
)
export type Peer = typeof Peer.Type

export const Condition = Schema.Struct({
  methods: Schema.optionalWith(Schema.Array(NonEmptyString), { exact: true }),
  paths: Schema.optionalWith(Schema.Array(NonEmptyString), { exact: true }),
  ports: Schema.optionalWith(Schema.Array(Port), { exact: true }),
  headers: Schema.optionalWith(StringMap, { exact: true })
})

export const AuthorizationRule = Schema.Struct({
  name: NonEmptyString,
  action: oneOf("allow", "deny"),
  from: withDefault(Schema.Array(Peer), emptyArray),
  to: ServiceName,
  when: Schema.optionalWith(Condition, { exact: true })
})
export type AuthorizationRule = typeof AuthorizationRule.Type

export const Security = Schema.Struct({
  mtls: withDefault(oneOf("strict", "permissive"), () => "permissive" as const),
  /** What a request gets when no deny rule matches and no allow rule targets its service. */
  defaultAction: withDefault(oneOf("allow", "deny"), () => "allow" as const),
  authorization: withDefault(Schema.Array(AuthorizationRule), emptyArray)
})

export const CircuitBreakers = Schema.Struct({
  maxConnections: Schema.optionalWith(PositiveInt, { exact: true }),
  maxPendingRequests: Schema.optionalWith(PositiveInt, { exact: true }),
  maxRequests: Schema.optionalWith(PositiveInt, { exact: true }),
  maxRetries: Schema.optionalWith(PositiveInt, { exact: true })
})
export type CircuitBreakers = typeof CircuitBreakers.Type

/** Ejects an endpoint that keeps failing, for baseEjectionTime × the number of its ejections. */
export const OutlierDetection = Schema.Struct({
  consecutive5xx: withDefault(PositiveInt, () => 5),
  consecutiveGatewayErrors: Schema.optionalWith(PositiveInt, { exact: true }),
  interval: withDefault(PositiveDuration, () => Duration.seconds(10)),
  baseEjectionTime: withDefault(PositiveDuration, () => Duration.seconds(30)),
  maxEjectionPercent: withDefault(Percent, () => 10)
})
export type OutlierDetection = typeof OutlierDetection.Type

/** A token bucket at the service's own sidecar: `burst` tokens, refilled at `requestsPerSecond`. */
export const RateLimit = Schema.Struct({
  requestsPerSecond: PositiveInt,
  /** Default: requestsPerSecond. */
  burst: Schema.optionalWith(PositiveInt, { exact: true })
})
export type RateLimit = typeof RateLimit.Type

export const ResiliencePolicy = Schema.Struct({
  /** The service being protected: its callers' clusters and its own sidecar. */
  service: ServiceName,
  circuitBreakers: Schema.optionalWith(CircuitBreakers, { exact: true }),
  outlierDetection: Schema.optionalWith(OutlierDetection, { exact: true }),
  rateLimit: Schema.optionalWith(RateLimit, { exact: true })
})
export type ResiliencePolicy = typeof ResiliencePolicy.Type

const HOST_PORT = /^[A-Za-z0-9.-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/

export const Observability = Schema.Struct({
  accessLogs: withDefault(
    Schema.Struct({
      enabled: withDefault(Schema.Boolean, () => false),
      format: withDefault(oneOf("text", "json"), () => "text" as const)
    }),
    () => ({ enabled: false, format: "text" as const })
  ),
  /** Absent: no tracing. Spans go to an OpenTelemetry collector (OTLP/gRPC). */
  tracing: Schema.optionalWith(
    Schema.Struct({
      samplingPercent: withDefault(Percent, () => 1),
      collector: Schema.String.pipe(
        Schema.filter((s) => HOST_PORT.test(s) || `expected host:port, got ${JSON.stringify(s)}`, {
          jsonSchema: { pattern: HOST_PORT.source }
        })
      )
    }),
    { exact: true }
  ),
  /** Fixed tags added to every stat and span of the mesh's proxies. */
  statsTags: withDefault(StringMap, emptyMap)
})
export type Observability = typeof Observability.Type

export const Policies = Schema.Struct({
  traffic: withDefault(Schema.Array(TrafficPolicy), emptyArray),
  security: withDefault(
    Security,
    () => ({ mtls: "permissive" as const, defaultAction: "allow" as const, authorization: [] })
  ),
  resilience: withDefault(Schema.Array(ResiliencePolicy), emptyArray),
  observability: withDefault(Observability, () => Schema.decodeSync(Observability)({}))
})
export type Policies = typeof Policies.Type

// ---------------------------------------------------------------------------------------------
// certificates, sidecar
// ---------------------------------------------------------------------------------------------

const Fraction = (what: string) =>
  Schema.Number.pipe(
    Schema.filter((n) => (n > 0 && n < 1) || `expected ${what} between 0 and 1 (exclusive), got ${n}`, {
      jsonSchema: { exclusiveMinimum: 0, exclusiveMaximum: 1 }
    })
  )

/** An operator-provided CA ("bring your own"): files the controller reads and never writes. */
export const CaFiles = Schema.Struct({
  /** PEM certificate that signs workload certificates (a root, or an intermediate). */
  cert: NonEmptyString,
  /** Its PEM private key (PKCS#8, SEC1 or PKCS#1). */
  key: NonEmptyString,
  /** PEM intermediates from `cert`'s issuer up to and including the self-signed root. */
  chain: Schema.optionalWith(NonEmptyString, { exact: true })
})

export const KeyAlgorithm = oneOf("ecdsa-p256", "rsa-2048", "rsa-3072")
export type KeyAlgorithm = typeof KeyAlgorithm.Type

/** `certificates.store: consul`: where in Consul's KV the shared CA lives, and how its keys are sealed. */
export const ConsulCaStoreSettings = Schema.Struct({
  /** KV prefix holding the CA (`<prefix>/ca`) and its creation lock (`<prefix>/lock`); no leading or trailing `/`. */
  prefix: withDefault(
    NonEmptyString.pipe(
      Schema.filter((p) =>
        (!p.startsWith("/") && !p.endsWith("/")) || `expected a KV prefix without a leading or trailing "/", got "${p}"`
      )
    ),
    () => "mesh-controller/ca"
  ),
  /**
   * File holding the key-encryption key: 32 random bytes, base64 (`openssl rand -base64 32`), mode
   * 0600, the same on every controller. CA keys are stored in KV only sealed with it (AES-256-GCM).
   */
  keyEncryptionKeyFile: NonEmptyString,
  /** TTL of the Consul session that holds the creation lock (Consul's range: 10s to 24h). */
  sessionTtl: withDefault(
    PositiveDuration.pipe(
      Schema.filter((d) =>
        (Duration.toMillis(d) >= 10_000 && Duration.toMillis(d) <= 86_400_000) ||
        "expected a session TTL from 10s to 24h"
      )
    ),
    () => Duration.seconds(15)
  )
})
export type ConsulCaStoreSettings = typeof ConsulCaStoreSettings.Type

export const Certificates = Schema.Struct({
  /**
   * Where the CA lives: `file` (under `dir`, the default) or `consul` (in Consul's KV under
   * `consul.prefix`, shared by every controller using the same Consul; needs `discovery.consul`).
   */
  store: withDefault(oneOf("file", "consul"), () => "file" as const),
  /** Settings of `store: consul`. */
  consul: Schema.optionalWith(ConsulCaStoreSettings, { exact: true }),
  /** Where the mesh CA lives (0700; keys 0600). Unused when `ca` is given. */
  dir: withDefault(NonEmptyString, () => "/var/lib/mesh-controller/certs"),
  workloadTtl: withDefault(PositiveDuration, () => Duration.hours(24)),
  /** Key type of the root the controller creates and of every workload key. */
  keyAlgorithm: withDefault(KeyAlgorithm, () => "ecdsa-p256" as const),
  /** Lifetime of a root the controller creates. */
  caValidity: withDefault(PositiveDuration, () => Duration.days(3650)),
  /** Renew a workload certificate once this fraction of its lifetime has passed… */
  renewAt: withDefault(Fraction("a fraction of the lifetime"), () => 0.5),
  /** …minus up to this fraction of that point, at random per certificate, so renewals spread out. */
  renewJitter: withDefault(
    Schema.Number.pipe(Schema.filter((n) => (n >= 0 && n < 1) || `expected a fraction from 0 to below 1, got ${n}`)),
    () => 0.1
  ),
  /** How often the wall clock is compared with renewal times (and the CA directory re-read). */
  checkInterval: withDefault(PositiveDuration, () => Duration.seconds(30)),
  /** Absent: the controller creates (once) and keeps its own root under `dir`. */
  ca: Schema.optionalWith(CaFiles, { exact: true })
})
export type Certificates = typeof Certificates.Type

export const EnvoyRestart = Schema.Struct({
  /** The first restart after a crash waits this long; each further crash doubles it… */
  initialBackoff: withDefault(PositiveDuration, () => Duration.millis(500)),
  /** …up to this. */
  maxBackoff: withDefault(PositiveDuration, () => Duration.seconds(30)),
  /** This many crashes within `window` is a crash loop: restarts stop and /status says why. */
  maxCrashes: withDefault(PositiveInt, () => 5),
  window: withDefault(PositiveDuration, () => Duration.minutes(2))
})

export const EnvoyOverload = Schema.Struct({
  /** Envoy's heap budget: it shrinks its heap at 90% and stops accepting requests at 98%. */
  maxHeapMiB: withDefault(PositiveInt, () => 256),
  /** Downstream connections across all listeners. */
  maxConnections: withDefault(PositiveInt, () => 1024)
})

export const Envoy = Schema.Struct({
  enabled: withDefault(Schema.Boolean, () => false),
  /** The service this Envoy fronts (node.cluster, and node.id `<service>~<instance>`); required when enabled. */
  service: Schema.optionalWith(ServiceName, { exact: true }),
  /** The instance part of node.id; defaults to the host name. */
  instance: Schema.optionalWith(NonEmptyString, { exact: true }),
  path: withDefault(NonEmptyString, () => "envoy"),
  concurrency: withDefault(PositiveInt, () => 1),
  /** Must leave ENVOY_STOP_RESERVE of controller.shutdownTimeout (see crossFieldIssues). */
  drainTime: withDefault(PositiveDuration, () => Duration.seconds(5)),
  args: withDefault(Schema.Array(Schema.String), emptyArray),
  /** Envoy's admin interface (readiness, drain, stats). Port 0 picks a free one (tests). */
  admin: withDefault(ListenAddress("127.0.0.1", 15000), () => ({ host: "127.0.0.1", port: 15000 })),
  /** A listener serving Envoy's stats at /stats/prometheus; absent: only through the admin port. */
  prometheus: Schema.optionalWith(
    Schema.Struct({ host: withDefault(NonEmptyString, () => "0.0.0.0"), port: ListenPort }),
    { exact: true }
  ),
  /** Envoy's --base-id: distinct per Envoy on one host (hot restart shares memory by it). */
  baseId: withDefault(NonNegativeInt, () => 0),
  /** Where the bootstrap and Envoy's files go; default: `envoy/` next to the certificates dir. */
  stateDir: Schema.optionalWith(NonEmptyString, { exact: true }),
  /** Where Envoy reaches the controller's xDS server; default: controller.xds (127.0.0.1 if it binds all addresses). */
  xdsAddress: Schema.optionalWith(Schema.Struct({ host: NonEmptyString, port: Port }), { exact: true }),
  /** Delta xDS (default) or state-of-the-world. */
  xdsApi: withDefault(oneOf("delta", "sotw"), () => "delta" as const),
  initialFetchTimeout: withDefault(PositiveDuration, () => Duration.seconds(10)),
  /** How long a started Envoy may take to answer 200 on /ready before it counts as failed. */
  readinessTimeout: withDefault(PositiveDuration, () => Duration.seconds(30)),
  restart: withDefault(EnvoyRestart, () => Schema.decodeSync(EnvoyRestart)({})),
  overload: withDefault(EnvoyOverload, () => Schema.decodeSync(EnvoyOverload)({}))
})
export type Envoy = typeof Envoy.Type

export const Sidecar = Schema.Struct({
  envoy: withDefault(Envoy, () => Schema.decodeSync(Envoy)({}))
})

// ---------------------------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------------------------

const MeshConfigFields = Schema.Struct({
  mesh: Mesh,
  controller: withDefault(Controller, () => Schema.decodeSync(Controller)({})),
  discovery: withDefault(Discovery, () => Schema.decodeSync(Discovery)({})),
  services: withDefault(Schema.Array(ServiceConfig), emptyArray),
  policies: withDefault(Policies, () => Schema.decodeSync(Policies)({})),
  certificates: withDefault(Certificates, () => Schema.decodeSync(Certificates)({})),
  sidecar: withDefault(Sidecar, () => Schema.decodeSync(Sidecar)({}))
})

/**
 * What stopping Envoy takes after its drain: SIGTERM's grace and the wait after SIGKILL
 * (layers/Sidecar.ts). The drain plus this must fit in `controller.shutdownTimeout`.
 */
export const ENVOY_STOP_RESERVE = Duration.seconds(3)

type Fields = typeof MeshConfigFields.Type
type Issue = { readonly path: ReadonlyArray<PropertyKey>; readonly message: string }

/**
 * Rules that span fields outside `policies`: service names and endpoints are unique, and the
 * sidecar names a service that exists. Policies are checked by their compiler
 * (src/policy/Compile.ts), the one home of the policy rules; `src/ConfigDocument.ts` runs both.
 */
export const crossFieldIssues = (
  config: Fields,
  options: { readonly partial?: boolean } = {}
): ReadonlyArray<Issue> => {
  const issues: Array<Issue> = []
  const firstIndex = new Map<string, number>()
  config.services.forEach((service, i) => {
    const seen = firstIndex.get(service.name)
    if (seen === undefined) firstIndex.set(service.name, i)
    else {issues.push({
        path: ["services", i, "name"],
        message: `duplicate service name "${service.name}" (first defined at services[${seen}])`
      })}
    const endpointKeys = new Set<string>()
    service.endpoints.forEach((endpoint, j) => {
      const key = endpointKey({ address: endpoint.address, port: endpoint.port ?? service.port })
      if (endpointKeys.has(key)) {
        issues.push({ path: ["services", i, "endpoints", j], message: `duplicate endpoint ${key}` })
      }
      endpointKeys.add(key)
    })
  })
  const known = (name: string) => firstIndex.has(name)
  const unknown = (name: string) => `unknown service "${name}"`

  // Rules below read decoded values (durations, defaults): skipped on a partial (undecodable) document.
  if (options.partial === true) return issues
  const admin = config.controller.admin
  if (admin.adminIdentities.length > 0 && !admin.tls) {
    issues.push({
      path: ["controller", "admin", "adminIdentities"],
      message: "client certificates need HTTPS: set controller.admin.tls: true (or remove adminIdentities)"
    })
  }
  const envoy = config.sidecar.envoy
  if (envoy.service !== undefined && !known(envoy.service)) {
    issues.push({ path: ["sidecar", "envoy", "service"], message: unknown(envoy.service) })
  } else if (envoy.enabled && envoy.service === undefined) {
    issues.push({
      path: ["sidecar", "envoy", "service"],
      message: "name the service this Envoy fronts (required when enabled)"
    })
  }
  if (Duration.greaterThan(envoy.restart.initialBackoff, envoy.restart.maxBackoff)) {
    issues.push({
      path: ["sidecar", "envoy", "restart", "initialBackoff"],
      message: "must not be longer than restart.maxBackoff"
    })
  }

  if (Duration.greaterThan(config.controller.debounce.quiet, config.controller.debounce.max)) {
    issues.push({
      path: ["controller", "debounce", "quiet"],
      message: "the quiet window must not be longer than debounce.max"
    })
  }
  // Shutdown drains Envoy, then stops it; all of that must end before the shutdown watchdog
  // exits the controller, or Envoy would be cut off mid-drain.
  const envoyStop = Duration.sum(envoy.drainTime, ENVOY_STOP_RESERVE)
  if (envoy.enabled && Duration.greaterThan(envoyStop, config.controller.shutdownTimeout)) {
    issues.push({
      path: ["sidecar", "envoy", "drainTime"],
      message:
        `the drain (${Duration.format(envoy.drainTime)}) plus ${Duration.format(ENVOY_STOP_RESERVE)} to stop Envoy ` +
        `must fit in controller.shutdownTimeout (${Duration.format(config.controller.shutdownTimeout)}): ` +
        "shorten sidecar.envoy.drainTime or lengthen controller.shutdownTimeout"
    })
  }
  return issues
}

/** The config file, as decoded from YAML: structure, defaults, and the rules that span fields. */
export const MeshConfig = MeshConfigFields.pipe(
  Schema.filter((config) => {
    const issues = crossFieldIssues(config, {})
    return issues.length === 0 ? true : issues
  })
).annotations({
  identifier: "MeshConfig",
  title: "mesh-controller configuration",
  description: "The configuration file of mesh-controller (mesh.yaml)."
})
export type MeshConfig = typeof MeshConfig.Type
