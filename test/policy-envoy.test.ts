import { assert, describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import type { CompiledPolicy } from "../src/policy/Compile.js"
import * as Envoy from "../src/policy/Envoy.js"
import { check, decode, encode, Types, typeUrl } from "../src/xds/Protos.js"
import { compiledOf, configWith } from "./support/policyConfig.js"

const SERVICES = [
  { name: "echo", protocol: "grpc", port: 50051 },
  { name: "gateway", port: 8080 },
  { name: "shadow", port: 8081 }
]
const compiled = (policies: Record<string, unknown>): CompiledPolicy => compiledOf(configWith(SERVICES, policies))

const policies = {
  traffic: [{
    name: "echo-routes",
    service: "echo",
    routes: [
      {
        match: {
          grpc: { service: "echo.Echo", method: "Say" },
          method: "POST",
          headers: [{ name: "X-Canary", exact: "1" }, { name: "x-b", present: true, invert: true }]
        },
        destinations: [{ service: "echo" }],
        retries: {
          attempts: 3,
          perTryTimeout: "1s",
          on: ["unavailable", "5xx"],
          backoff: { baseInterval: "25ms", maxInterval: "1s" }
        },
        fault: { delay: { fixed: "1s", percent: 10 }, abort: { grpcStatus: 14, percent: 50 } },
        mirror: { service: "shadow", percent: 5 }
      },
      {
        match: {
          path: { regex: "/api/v[0-9]+/.*" },
          headers: [{ name: "x-v", prefix: "2" }, { name: "x-r", regex: "a|b" }]
        },
        destinations: [{ service: "echo" }],
        fault: { abort: { httpStatus: 503, percent: 0.5 } }
      },
      { match: { path: { exact: "/health" } }, destinations: [{ service: "echo" }] },
      { destinations: [{ service: "echo" }] }
    ]
  }],
  security: {
    defaultAction: "deny",
    authorization: [
      {
        name: "gw",
        action: "allow",
        from: [{ service: "gateway" }, { principal: "spiffe://other.org/x" }],
        to: "echo"
      },
      { name: "anyone-health", action: "allow", to: "echo", when: { paths: ["/health"] } },
      {
        name: "no-admin",
        action: "deny",
        from: [{ service: "gateway" }],
        to: "echo",
        when: {
          paths: ["/admin/*", "*.php", "*"],
          methods: ["POST", "delete"],
          ports: [50051],
          headers: { "X-Debug": "*", "x-env": "prod*" }
        }
      }
    ]
  },
  resilience: [{
    service: "echo",
    circuitBreakers: { maxConnections: 100, maxPendingRequests: 10, maxRequests: 50, maxRetries: 3 },
    outlierDetection: {
      consecutive5xx: 3,
      consecutiveGatewayErrors: 2,
      interval: "5s",
      baseEjectionTime: "10s",
      maxEjectionPercent: 50
    },
    rateLimit: { requestsPerSecond: 20, burst: 40 }
  }],
  observability: {
    accessLogs: { enabled: true, format: "json" },
    tracing: { samplingPercent: 2.5, collector: "otel.local:4317" },
    statsTags: { env: "lab" }
  }
}

const valid = (typeName: string, value: unknown) => {
  const issues = check(typeName, value)
  assert.deepStrictEqual(issues, [], `${typeName}: ${issues.join("; ")}`)
  // …and it encodes and decodes with Envoy's protos.
  const bytes = encode(typeName, value)
  assert.isTrue(Either.isRight(bytes))
  return Either.isRight(bytes) ? decode(typeName, bytes.right) : {}
}

const router = { name: "envoy.filters.http.router", typed_config: { "@type": typeUrl(Types.Router) } }
const hcm = (filters: ReadonlyArray<unknown>, extra: Record<string, unknown> = {}) => ({
  "@type": typeUrl(Types.HttpConnectionManager),
  stat_prefix: "test",
  rds: { route_config_name: "test", config_source: { ads: {} } },
  http_filters: [...filters, router],
  ...extra
})
const listener = (typedConfig: unknown) => ({
  name: "l",
  address: { socket_address: { address: "0.0.0.0", port_value: 15006 } },
  filter_chains: [{ filters: [{ name: "envoy.filters.network.http_connection_manager", typed_config: typedConfig }] }]
})

describe("Envoy fragments validate against Envoy's protos", () => {
  const policy = compiled(policies)
  const routes = policy.traffic.get("echo")!.routes

  it("routes: match, retries with backoff, fault override, mirror", () => {
    const entries = routes.map((r, i) => ({
      name: `r${i}`,
      match: Envoy.routeMatch(r.match),
      route: {
        cluster: "echo",
        ...(r.retries ? { retry_policy: Envoy.retryPolicy(r.retries) } : {}),
        ...(r.mirror ? { request_mirror_policies: Envoy.mirrorPolicies(r.mirror, (s) => `outbound|${s}`) } : {})
      },
      ...(r.fault ? { typed_per_filter_config: Envoy.routeFaultOverride(r.fault) } : {})
    }))
    const decoded = valid(Types.RouteConfiguration, {
      name: "rc",
      virtual_hosts: [{ name: "echo", domains: ["echo"], routes: entries }]
    }) as any
    const first = decoded.virtual_hosts[0].routes[0]
    expect(first.match.path).toBe("/echo.Echo/Say")
    expect(first.match.headers.map((h: any) => h.name)).toEqual([":method", "x-canary", "x-b"])
    expect(first.match.headers[2].invert_match).toBe(true)
    expect(first.route.retry_policy.num_retries).toEqual({ value: 2 })
    expect(first.route.retry_policy.retry_back_off.base_interval).toEqual({ seconds: "0", nanos: 25_000_000 })
    expect(first.route.request_mirror_policies[0].cluster).toBe("outbound|shadow")
    expect(first.route.request_mirror_policies[0].runtime_fraction.default_value).toEqual({
      numerator: 50000,
      denominator: "MILLION"
    })
    const fault = first.typed_per_filter_config[Envoy.FilterNames.fault]
    expect(fault["@type"]).toBe(typeUrl(Envoy.PolicyTypes.HttpFault))
    expect(fault.abort).toEqual({ grpc_status: 14, percentage: { numerator: 500000, denominator: "MILLION" } })
    expect(decoded.virtual_hosts[0].routes[1].match.safe_regex.regex).toBe("/api/v[0-9]+/.*")
    expect(decoded.virtual_hosts[0].routes[1].typed_per_filter_config[Envoy.FilterNames.fault].abort.http_status).toBe(
      503
    )
    expect(decoded.virtual_hosts[0].routes[3].match.prefix ?? "").toBe("")
  })

  it("inbound listener: RBAC deny then allow with SPIFFE principals, then the local rate limit; access log and tracing", () => {
    const filters = Envoy.inboundHttpFilters(policy, "echo")
    const decoded = valid(
      Types.Listener,
      listener(hcm(filters, Envoy.hcmObservability(policy.observability, "echo")))
    ) as any
    const manager = decoded.filter_chains[0].filters[0].typed_config
    expect(manager.http_filters.map((f: any) => f.name)).toEqual([
      Envoy.FilterNames.rbacDeny,
      Envoy.FilterNames.rbacAllow,
      Envoy.FilterNames.localRateLimit,
      "envoy.filters.http.router"
    ])
    const deny = manager.http_filters[0].typed_config.rules
    expect(deny.action).toBe("DENY")
    expect(deny.policies["no-admin"].principals).toEqual([{
      authenticated: { principal_name: { exact: "spiffe://mesh.local/service/gateway" } }
    }])
    const allow = manager.http_filters[1].typed_config.rules
    expect(allow.action).toBe("ALLOW")
    expect(Object.keys(allow.policies).sort()).toEqual(["anyone-health", "gw"])
    expect(allow.policies["gw"].principals).toHaveLength(2)
    expect(allow.policies["anyone-health"].principals).toEqual([{ any: true }])
    expect(allow.policies["anyone-health"].permissions).toEqual([{ url_path: { path: { exact: "/health" } } }])
    const limit = manager.http_filters[2].typed_config
    expect(limit.token_bucket).toMatchObject({ max_tokens: 40, tokens_per_fill: { value: 20 } })
    expect(manager.access_log[0].typed_config.log_format.json_format.fields.peer).toEqual({
      stringValue: "%DOWNSTREAM_PEER_URI_SAN%"
    })
    expect(manager.tracing.random_sampling).toEqual({ value: 2.5 })
    expect(manager.tracing.custom_tags).toEqual([{ tag: "env", literal: { value: "lab" } }])
  })

  it("RBAC: default allow without allow rules adds no ALLOW filter; default deny with no rules denies all", () => {
    const open = compiled({
      security: { authorization: [{ name: "d", action: "deny", to: "echo", from: [{ service: "gateway" }] }] }
    })
    expect(Envoy.rbacFilters(open, "echo").map((f) => f["name"])).toEqual([Envoy.FilterNames.rbacDeny])
    expect(Envoy.rbacFilters(open, "gateway")).toEqual([])
    const closed = compiled({ security: { defaultAction: "deny" } })
    const filters = Envoy.rbacFilters(closed, "gateway")
    expect(filters).toHaveLength(1)
    valid(Types.HttpRbac, { ...(filters[0]!["typed_config"] as object), "@type": undefined })
    expect((filters[0]!["typed_config"] as any).rules).toEqual({ action: "ALLOW", policies: {} })
  })

  it("clusters: circuit breakers and outlier detection; the tracing collector cluster", () => {
    const decoded = valid(Types.Cluster, {
      name: "outbound|echo",
      type: "EDS",
      eds_cluster_config: { eds_config: { ads: {} } },
      ...Envoy.clusterResilience(policy, "echo")
    }) as any
    expect(decoded.circuit_breakers.thresholds[0]).toEqual({
      priority: "DEFAULT",
      max_connections: { value: 100 },
      max_pending_requests: { value: 10 },
      max_requests: { value: 50 },
      max_retries: { value: 3 }
    })
    expect(decoded.outlier_detection).toMatchObject({
      consecutive_5xx: { value: 3 },
      consecutive_gateway_failure: { value: 2 },
      max_ejection_percent: { value: 50 }
    })
    expect(Envoy.clusterResilience(policy, "gateway")).toEqual({})
    const collector = valid(Types.Cluster, Envoy.tracingCluster(policy.observability)) as any
    expect(collector.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address).toEqual({
      address: "otel.local",
      port_value: 4317
    })
  })

  it("text access logs, and nothing when observability is off", () => {
    const text = compiled({ observability: { accessLogs: { enabled: true } } })
    valid(Types.Listener, listener(hcm([], Envoy.hcmObservability(text.observability, "echo"))))
    expect((Envoy.accessLogs(text.observability)[0] as any).typed_config.log_format.text_format_source.inline_string)
      .toContain("%RESPONSE_CODE%")
    const off = compiled({})
    expect(Envoy.hcmObservability(off.observability, "echo")).toEqual({})
    expect(Envoy.tracingCluster(off.observability)).toBeUndefined()
  })

  // The stats tags live in the bootstrap (proto3 JSON form): test/sidecar-bootstrap.test.ts checks
  // them through Envoy's Bootstrap message.

  it("the outbound fault filter (empty HTTPFault) fits an HCM before the router", () => {
    valid(Types.Listener, listener(hcm([Envoy.faultFilter])))
  })

  it("the strict check does catch a wrong fragment (so the tests above mean something)", () => {
    const wrong = {
      ...Envoy.circuitBreakers({ maxRequests: 1 }),
      thresholds: [{ priority: "DEFAULT", max_request: { value: 1 } }]
    }
    expect(check(Types.Cluster, { name: "c", circuit_breakers: wrong }).join()).toContain(`unknown field`)
  })
})
