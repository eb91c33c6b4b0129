import { assert, describe, it } from "@effect/vitest"
import { Either } from "effect"
import type { MeshConfig } from "../schemas/Config.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import { fromConfig, type MeshState, type Service } from "../src/MeshState.js"
import { compileUnchecked } from "../src/policy/Compile.js"
import { composeMeshState } from "../src/xds/Compose.js"
import { check, decode, Types, TypeUrls } from "../src/xds/Protos.js"
import { buildSnapshot, wildcardNames, type XdsResource, type XdsSnapshot } from "../src/xds/XdsSnapshot.js"

const config = (overrides: Record<string, unknown> = {}): MeshConfig => {
  const decoded = decodeConfig({
    mesh: { name: "test" },
    services: [
      {
        name: "echo",
        protocol: "grpc",
        port: 50051,
        endpoints: [{ address: "127.0.0.1", port: 7001 }, { address: "127.0.0.1", port: 7002 }]
      },
      {
        name: "echo-v2",
        protocol: "grpc",
        port: 50051,
        endpoints: [{ address: "127.0.0.2", port: 7003, labels: { zone: "b" } }]
      },
      { name: "db", protocol: "tcp", port: 5432, endpoints: [{ address: "10.0.0.9" }] }
    ],
    ...overrides
  }, "test")
  if (Either.isLeft(decoded)) throw new Error(decoded.left.message)
  return decoded.right
}

const get = (snapshot: XdsSnapshot, url: string, name: string): XdsResource => {
  const r = snapshot.resources.get(url)?.get(name)
  assert.isDefined(r, `${url} ${name}`)
  return r!
}

/** The decoded inner resource of an encoded Any. */
const body = (snapshot: XdsSnapshot, url: string, name: string): any => {
  const any = decode(Types.Any, get(snapshot, url, name).any)
  return any
}

const withEndpoints = (state: MeshState, service: string, f: (s: Service) => Service): MeshState => ({
  ...state,
  services: state.services.map((s) => (s.name === service ? f(s) : s))
})

describe("snapshot builder", () => {
  it("builds proxyless and sidecar resources that Envoy's protos accept", () => {
    const snapshot = buildSnapshot(fromConfig(config()))
    assert.deepStrictEqual(snapshot.errors, [])
    const listener = body(snapshot, TypeUrls.Listener, "echo")
    assert.strictEqual(listener.api_listener.api_listener.rds.route_config_name, "echo")
    const route = body(snapshot, TypeUrls.RouteConfiguration, "echo")
    assert.deepStrictEqual(route.virtual_hosts[0].domains, ["echo", "echo:50051"])
    assert.strictEqual(route.virtual_hosts[0].routes[0].route.cluster, "echo")
    const cluster = body(snapshot, TypeUrls.Cluster, "echo")
    assert.strictEqual(cluster.type, "EDS")
    assert.deepStrictEqual(cluster.eds_cluster_config.eds_config.ads, {})
    const cla = body(snapshot, TypeUrls.ClusterLoadAssignment, "echo")
    assert.strictEqual(cla.endpoints.length, 1)
    assert.deepStrictEqual(cla.endpoints[0].locality, {})
    assert.deepStrictEqual(cla.endpoints[0].load_balancing_weight, { value: 2 })
    assert.deepStrictEqual(
      cla.endpoints[0].lb_endpoints.map((e: any) => e.endpoint.address.socket_address.port_value),
      [7001, 7002]
    )
    assert.deepStrictEqual(body(snapshot, TypeUrls.ClusterLoadAssignment, "echo-v2").endpoints[0].locality, {
      zone: "b"
    })
    // Sidecar: a TCP service gets its own outbound listener; HTTP/gRPC share outbound|http.
    assert.strictEqual(body(snapshot, TypeUrls.Listener, "outbound|db").address.socket_address.port_value, 5432)
    const outbound = body(snapshot, TypeUrls.RouteConfiguration, "outbound|http")
    assert.deepStrictEqual(outbound.virtual_hosts.map((v: any) => v.name), ["echo", "echo-v2"])
    assert.strictEqual(outbound.virtual_hosts[0].routes[0].route.cluster, "outbound|echo")
  })

  it("is deterministic, and one endpoint change touches one assignment", () => {
    const state = fromConfig(config())
    const a = buildSnapshot(state)
    const b = buildSnapshot(fromConfig(config()))
    assert.strictEqual(a.version, b.version)
    const changed = buildSnapshot(
      withEndpoints(state, "echo", (s) => ({ ...s, endpoints: s.endpoints.slice(0, 1) })),
      a
    )
    assert.notStrictEqual(changed.version, a.version)
    const differing: Array<string> = []
    for (const [url, resources] of changed.resources) {
      for (const [name, r] of resources) {
        if (a.resources.get(url)?.get(name)?.version !== r.version) differing.push(`${url.split(".").pop()}/${name}`)
      }
    }
    assert.deepStrictEqual(differing, ["ClusterLoadAssignment/echo"])
  })

  it("leaves unhealthy endpoints out, and fails open or closed when all are unhealthy", () => {
    const base = config()
    const services = fromConfig(base).services
    const view = (entries: Record<string, "healthy" | "unhealthy">) =>
      new Map([["echo", new Map(Object.entries(entries))]])
    const ports = (state: MeshState) =>
      body(buildSnapshot(state), TypeUrls.ClusterLoadAssignment, "echo").endpoints.flatMap((l: any) =>
        l.lb_endpoints.map((e: any) => [e.endpoint.address.socket_address.port_value, e.health_status])
      )
    assert.deepStrictEqual(
      ports(
        composeMeshState(
          base,
          compileUnchecked(base),
          services,
          view({ "127.0.0.1:7001": "unhealthy", "127.0.0.1:7002": "healthy" })
        )
      ),
      [[7002, "HEALTHY"]]
    )
    const allDown = view({ "127.0.0.1:7001": "unhealthy", "127.0.0.1:7002": "unhealthy" })
    assert.deepStrictEqual(ports(composeMeshState(base, compileUnchecked(base), services, allDown)), [
      [7001, "UNKNOWN"],
      [7002, "UNKNOWN"]
    ])
    const closed = services.map((s) => (s.name === "echo" ? { ...s, failMode: "closed" as const } : s))
    const snapshot = buildSnapshot(composeMeshState(base, compileUnchecked(base), closed, allDown))
    assert.deepStrictEqual(body(snapshot, TypeUrls.ClusterLoadAssignment, "echo").endpoints ?? [], [])
    assert.strictEqual(snapshot.availability.get("echo"), false)
    assert.strictEqual(snapshot.availability.get("echo-v2"), true)
  })

  it("translates weighted destinations, timeout and retries", () => {
    const snapshot = buildSnapshot(fromConfig(config({
      policies: {
        traffic: [{
          name: "split",
          service: "echo",
          routes: [{
            destinations: [{ service: "echo", weight: 80 }, { service: "echo-v2", weight: 20 }],
            timeout: "2s",
            retries: { attempts: 3, perTryTimeout: "500ms", on: ["unavailable", "reset"] }
          }]
        }]
      }
    })))
    const action = body(snapshot, TypeUrls.RouteConfiguration, "echo").virtual_hosts[0].routes[0].route
    assert.deepStrictEqual(action.weighted_clusters.clusters, [{ name: "echo", weight: { value: 80 } }, {
      name: "echo-v2",
      weight: { value: 20 }
    }])
    assert.deepStrictEqual(action.timeout, { seconds: "2", nanos: 0 })
    assert.deepStrictEqual(action.max_stream_duration.max_stream_duration, { seconds: "2", nanos: 0 })
    assert.strictEqual(action.retry_policy.retry_on, "unavailable,reset")
    assert.deepStrictEqual(action.retry_policy.num_retries, { value: 2 })
    const single = buildSnapshot(fromConfig(config({
      policies: {
        traffic: [{
          name: "one",
          service: "echo",
          routes: [{ destinations: [{ service: "echo" }], retries: { attempts: 1 } }]
        }]
      }
    })))
    assert.isUndefined(body(single, TypeUrls.RouteConfiguration, "echo").virtual_hosts[0].routes[0].route.retry_policy)
    const outbound = body(snapshot, TypeUrls.RouteConfiguration, "outbound|http").virtual_hosts[0].routes[0].route
    assert.deepStrictEqual(outbound.weighted_clusters.clusters.map((c: any) => c.name), [
      "outbound|echo",
      "outbound|echo-v2"
    ])
  })

  it("isolates a bad service: reported by name, the others served, its last good resources kept", () => {
    const good = fromConfig(config())
    const first = buildSnapshot(good)
    const bad = withEndpoints(good, "echo", (s) => ({
      ...s,
      endpoints: [{ ...s.endpoints[0]!, address: "echo-1.internal", port: 7009 }]
    }))
    const fresh = buildSnapshot(bad)
    assert.strictEqual(fresh.errors.length, 1)
    assert.strictEqual(fresh.errors[0]!.service, "echo")
    assert.include(fresh.errors[0]!.message, "echo-1.internal")
    assert.isFalse(fresh.errors[0]!.servingPrevious)
    assert.isUndefined(fresh.resources.get(TypeUrls.Cluster)?.get("echo"))
    assert.isDefined(fresh.resources.get(TypeUrls.Cluster)?.get("echo-v2"))

    const next = buildSnapshot(bad, first)
    assert.isTrue(next.errors[0]!.servingPrevious)
    assert.strictEqual(
      get(next, TypeUrls.ClusterLoadAssignment, "echo").version,
      get(first, TypeUrls.ClusterLoadAssignment, "echo").version
    )

    // A route to a service that Discovery no longer knows.
    const routed = fromConfig(config({
      policies: { traffic: [{ name: "p", service: "echo", routes: [{ destinations: [{ service: "echo-v2" }] }] }] }
    }))
    const gone = buildSnapshot({ ...routed, services: routed.services.filter((s) => s.name !== "echo-v2") })
    assert.deepStrictEqual(gone.errors.map((e) => [e.service, e.message]), [[
      "echo",
      "route to unknown service \"echo-v2\""
    ]])
    assert.isDefined(gone.resources.get(TypeUrls.Cluster)?.get("db"))
  })

  it("serves SDS secrets from the state's secrets seam", () => {
    const state: MeshState = {
      ...fromConfig(config()),
      secrets: new Map([["spiffe://test/ca", { validation_context: { trusted_ca: { inline_string: "PEM" } } }]])
    }
    const secret = body(buildSnapshot(state), TypeUrls.Secret, "spiffe://test/ca")
    assert.strictEqual(secret.validation_context.trusted_ca.inline_string, "PEM")
  })

  it("gives a sidecar its inbound listener and every outbound one (node id <service>~<instance>)", () => {
    const snapshot = buildSnapshot(fromConfig(config()))
    assert.deepStrictEqual([...wildcardNames(snapshot, TypeUrls.Listener, "echo~a")].sort(), [
      "inbound|echo",
      "outbound|db",
      "outbound|http"
    ])
    assert.deepStrictEqual([...wildcardNames(snapshot, TypeUrls.Listener, "db~a")].sort(), [
      "inbound|db",
      "outbound|http"
    ])
    assert.deepStrictEqual(
      [...wildcardNames(snapshot, TypeUrls.Cluster, "gateway")].sort(),
      ["outbound|db", "outbound|echo", "outbound|echo-v2"]
    )
  })

  it("rejects misspelled fields that protobufjs would silently drop", () => {
    assert.deepStrictEqual(check(Types.Cluster, { name: "x", conect_timeout: { seconds: 1 } }), [
      "conect_timeout: unknown field in envoy.config.cluster.v3.Cluster (did you mean \"connect_timeout\"?)"
    ])
    assert.include(check("google.protobuf.Struct", { fields: { a: { number_value: 1 } } })[0], "numberValue")
  })
})
