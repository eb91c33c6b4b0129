/**
 * Policy in the xDS snapshot: what the builder publishes for sidecars and proxyless clients,
 * decoded back with Envoy's protos, and which services a policy change rebuilds.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { Snapshot } from "../layers/Snapshot.js"
import type { MeshConfig } from "../schemas/Config.js"
import { fromConfig } from "../src/MeshState.js"
import { FilterNames, TRACING_CLUSTER } from "../src/policy/Envoy.js"
import { decode, Types, TypeUrls } from "../src/xds/Protos.js"
import { buildSnapshot, type XdsSnapshot } from "../src/xds/XdsSnapshot.js"
import { eventually } from "./support/eventually.js"
import { configWith } from "./support/policyConfig.js"

const config = (policies: Record<string, unknown>) =>
  configWith([
    { name: "echo", protocol: "grpc", port: 50051, endpoints: [{ address: "127.0.0.1", port: 7001 }] },
    { name: "web", protocol: "http", port: 8080, endpoints: [{ address: "127.0.0.2", port: 8080 }] },
    { name: "shadow", protocol: "http", port: 8080, endpoints: [{ address: "127.0.0.3", port: 8080 }] },
    { name: "db", protocol: "tcp", port: 5432, endpoints: [{ address: "127.0.0.4", port: 5432 }] }
  ], policies)

const policies = {
  traffic: [{
    name: "web-routes",
    service: "web",
    routes: [
      {
        match: { path: { prefix: "/api/" }, method: "GET" },
        destinations: [{ service: "web" }],
        fault: { delay: { fixed: "100ms", percent: 1 } },
        mirror: { service: "shadow" }
      },
      { destinations: [{ service: "web" }], retries: { attempts: 2, backoff: { baseInterval: "50ms" } } }
    ]
  }],
  security: {
    authorization: [
      { name: "web-to-echo", action: "allow", from: [{ service: "web" }], to: "echo" },
      { name: "no-admin", action: "deny", to: "web", when: { paths: ["/admin/*"] } },
      { name: "web-to-db", action: "allow", from: [{ service: "web" }], to: "db", when: { ports: [5432] } }
    ]
  },
  resilience: [{
    service: "echo",
    circuitBreakers: { maxRequests: 10 },
    outlierDetection: { consecutive5xx: 2 },
    rateLimit: { requestsPerSecond: 100 }
  }],
  observability: { accessLogs: { enabled: true }, tracing: { collector: "127.0.0.1:4317", samplingPercent: 10 } }
}

const body = (snapshot: XdsSnapshot, url: string, name: string): any => {
  const r = snapshot.resources.get(url)?.get(name)
  assert.isDefined(r, `${url} ${name}`)
  return decode(Types.Any, r!.any)
}

const inboundFilters = (snapshot: XdsSnapshot, service: string): ReadonlyArray<string> =>
  body(snapshot, TypeUrls.Listener, `inbound|${service}`).filter_chains[0].filters[0].typed_config.http_filters.map((
    f: any
  ) => f.name)

describe("policy in the snapshot", () => {
  const snapshot = buildSnapshot(fromConfig(config(policies)))

  it("builds without errors", () => {
    assert.deepStrictEqual(snapshot.errors, [])
  })

  it("inbound listeners carry RBAC (deny, then allow), the rate limit, and access logs", () => {
    expect(inboundFilters(snapshot, "echo")).toEqual([
      FilterNames.rbacAllow,
      FilterNames.localRateLimit,
      "envoy.filters.http.router"
    ])
    expect(inboundFilters(snapshot, "web")).toEqual([FilterNames.rbacDeny, "envoy.filters.http.router"])
    expect(inboundFilters(snapshot, "shadow")).toEqual(["envoy.filters.http.router"])
    const manager = body(snapshot, TypeUrls.Listener, "inbound|echo").filter_chains[0].filters[0].typed_config
    const allow = manager.http_filters[0].typed_config.rules
    expect(allow.policies["web-to-echo"].principals).toEqual([{
      authenticated: { principal_name: { exact: "spiffe://mesh.local/service/web" } }
    }])
    expect(manager.access_log).toHaveLength(1)
    expect(manager.tracing.provider.typed_config.grpc_service.envoy_grpc.cluster_name).toBe(TRACING_CLUSTER)
  })

  it("a tcp service's inbound listener authorizes connections with network RBAC before tcp_proxy", () => {
    const filters = body(snapshot, TypeUrls.Listener, "inbound|db").filter_chains[0].filters
    expect(filters.map((f: any) => f.name)).toEqual([
      "envoy.filters.network.rbac/allow",
      "envoy.filters.network.tcp_proxy"
    ])
    expect(filters[0].typed_config.rules.policies["web-to-db"]).toEqual({
      permissions: [{ destination_port: 5432 }],
      principals: [{ authenticated: { principal_name: { exact: "spiffe://mesh.local/service/web" } } }]
    })
  })

  it("proxyless and sidecar clusters carry circuit breakers and outlier detection", () => {
    for (const name of ["echo", "outbound|echo"]) {
      const cluster = body(snapshot, TypeUrls.Cluster, name)
      expect(cluster.circuit_breakers.thresholds[0].max_requests).toEqual({ value: 10 })
      expect(cluster.outlier_detection.consecutive_5xx).toEqual({ value: 2 })
    }
    expect(body(snapshot, TypeUrls.Cluster, "web").circuit_breakers).toBeUndefined()
  })

  it("routes carry matches, fault overrides, mirrors and retry backoff; listeners carry the fault filter", () => {
    const routes = body(snapshot, TypeUrls.RouteConfiguration, "web").virtual_hosts[0].routes
    expect(routes[0].match).toMatchObject({
      prefix: "/api/",
      headers: [{ name: ":method", string_match: { exact: "GET" } }]
    })
    expect(routes[0].typed_per_filter_config[FilterNames.fault].delay.percentage).toEqual({
      numerator: 10000,
      denominator: "MILLION"
    })
    expect(routes[0].route.request_mirror_policies[0].cluster).toBe("shadow")
    expect(routes[1].route.retry_policy.retry_back_off.base_interval).toEqual({ seconds: "0", nanos: 50_000_000 })
    const outbound = body(snapshot, TypeUrls.RouteConfiguration, "outbound|http").virtual_hosts.find((v: any) =>
      v.name === "web"
    )
    expect(outbound.routes[0].route.request_mirror_policies[0].cluster).toBe("outbound|shadow")
    const api = body(snapshot, TypeUrls.Listener, "web").api_listener.api_listener
    expect(api.http_filters.map((f: any) => f.name)).toEqual([FilterNames.fault, "envoy.filters.http.router"])
    const sidecar = body(snapshot, TypeUrls.Listener, "outbound|http").filter_chains[0].filters[0].typed_config
    expect(sidecar.http_filters.map((f: any) => f.name)).toEqual([FilterNames.fault, "envoy.filters.http.router"])
    expect(sidecar.access_log).toHaveLength(1)
  })

  it("serves the tracing collector's cluster while tracing is on", () => {
    expect(body(snapshot, TypeUrls.Cluster, TRACING_CLUSTER).type).toBe("STRICT_DNS")
    const off = buildSnapshot(fromConfig(config({ ...policies, observability: {} })), snapshot)
    assert.isUndefined(off.resources.get(TypeUrls.Cluster)?.get(TRACING_CLUSTER))
    assert.isTrue(off.changes?.names.get(TypeUrls.Cluster)?.has(TRACING_CLUSTER) ?? false)
  })

  it("an authorization change rebuilds only the service it targets", () => {
    const next = config({
      ...policies,
      security: {
        authorization: [...policies.security.authorization, {
          name: "web-only-get",
          action: "allow",
          from: [{ service: "echo" }],
          to: "web"
        }]
      }
    })
    const after = buildSnapshot(fromConfig(next), snapshot)
    assert.strictEqual(after.groups.get("echo"), snapshot.groups.get("echo"))
    assert.strictEqual(after.groups.get("shadow"), snapshot.groups.get("shadow"))
    assert.notStrictEqual(after.groups.get("web"), snapshot.groups.get("web"))
    expect(inboundFilters(after, "web")).toEqual([
      FilterNames.rbacDeny,
      FilterNames.rbacAllow,
      "envoy.filters.http.router"
    ])
  })
})

describe("the Snapshot layer's policy", () => {
  const good = config(policies)
  const live = Snapshot.layer.pipe(
    Layer.provide(Layer.merge(Discovery.layerEmbedded, Health.layerNoop)),
    Layer.provideMerge(LiveConfig.layerMemory(good))
  )
  const current = Effect.flatMap(Snapshot, (snapshot) => Effect.map(snapshot.current, (p) => p.snapshot))

  it.live("is the policy compiled with the config in force: one the Policy layer rejects changes nothing", () =>
    Effect.gen(function*() {
      const cfg = yield* LiveConfig
      expect(inboundFilters(yield* current, "web")).toEqual([FilterNames.rbacDeny, "envoy.filters.http.router"])

      // A config that bypassed decoding: a new service (which Discovery follows), and policies that
      // do not compile (a rule for an unknown service) and would drop the deny rule on web.
      const bad: MeshConfig = {
        ...good,
        services: [...good.services, { ...good.services[1]!, name: "extra" }],
        policies: {
          ...good.policies,
          security: {
            ...good.policies.security,
            authorization: [{ name: "x", action: "allow", from: [], to: "ghost" }]
          }
        }
      }
      yield* cfg.apply(bad, "memory:bad")
      const seen = yield* eventually(Effect.filterOrFail(current, (s) => s.groups.has("extra")))
      expect(inboundFilters(seen, "web")).toEqual([FilterNames.rbacDeny, "envoy.filters.http.router"])

      // A config whose policies compile is followed: without the deny rule, web has no RBAC.
      const next = config({
        ...policies,
        security: { authorization: policies.security.authorization.filter((r) => r.name !== "no-admin") }
      })
      yield* cfg.apply(next, "memory:next")
      const after = yield* eventually(Effect.filterOrFail(current, (s) => inboundFilters(s, "web").length === 1))
      expect(inboundFilters(after, "web")).toEqual(["envoy.filters.http.router"])
    }).pipe(Effect.provide(live)))
})
