/**
 * The proxyless security resources in the snapshot: the server Listener built per requested
 * address for the node's service, the client Cluster's UpstreamTlsContext under strict, plaintext
 * under permissive, and the change marker that makes a rule change reach running servers.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { fromConfig } from "../src/MeshState.js"
import { decode, Types, TypeUrls } from "../src/xds/Protos.js"
import { serverListenerMarker } from "../src/xds/Resources.js"
import { buildSnapshot, serverListenerResource, type XdsSnapshot } from "../src/xds/XdsSnapshot.js"
import { configWith } from "./support/policyConfig.js"

const services = [
  { name: "echo", protocol: "grpc", port: 50051, endpoints: [{ address: "127.0.0.1", port: 50051 }] },
  { name: "db", protocol: "tcp", port: 5432, endpoints: [{ address: "127.0.0.1", port: 5432 }] },
  { name: "web", protocol: "grpc", port: 8080, endpoints: [{ address: "127.0.0.1", port: 8080 }] }
]
const authorization = [{ name: "web-echo", action: "allow", from: [{ service: "web" }], to: "echo" }]
const snapshotOf = (
  mtls: "strict" | "permissive",
  rules: ReadonlyArray<unknown> = authorization,
  previous?: XdsSnapshot
) => buildSnapshot(fromConfig(configWith(services, { security: { mtls, authorization: rules } })), previous)

const NAME = "grpc/server?xds.resource.listening_address=127.0.0.1:50051"
const decoded = (r: { readonly any: Uint8Array } | undefined): any => {
  assert.isDefined(r)
  return decode(Types.Any, r!.any)
}

describe("proxyless security resources", () => {
  it("strict: the server Listener for the node's service, on the requested address, with mTLS and RBAC", () => {
    const snapshot = snapshotOf("strict")
    assert.deepStrictEqual(snapshot.errors, [])
    const listener = decoded(serverListenerResource(snapshot, "echo", NAME))
    expect(listener.name).toBe(NAME)
    expect(listener.address.socket_address).toEqual({ address: "127.0.0.1", port_value: 50051 })
    const chain = listener.filter_chains[0]
    const tls = chain.transport_socket.typed_config
    expect(tls.require_client_certificate).toEqual({ value: true })
    expect(tls.common_tls_context.tls_certificate_provider_instance.instance_name).toBe("mesh")
    expect(tls.common_tls_context.validation_context.ca_certificate_provider_instance.instance_name).toBe("mesh")
    const manager = chain.filters[0].typed_config
    expect(manager.http_filters.map((f: any) => f.name)).toEqual(["mesh.rbac.allow", "envoy.filters.http.router"])
    expect(manager.http_filters[0].typed_config.rules.policies["web-echo"].principals)
      .toEqual([{ authenticated: { principal_name: { exact: "spiffe://mesh.local/service/web" } } }])
    expect(manager.route_config.virtual_hosts[0].routes[0].non_forwarding_action).toEqual({})
  })

  it("strict: the client Cluster verifies the destination's exact SPIFFE ID with the client's provider", () => {
    const cluster = decoded(snapshotOf("strict").resources.get(TypeUrls.Cluster)?.get("echo"))
    const context = cluster.transport_socket.typed_config.common_tls_context
    expect(context.tls_certificate_provider_instance.instance_name).toBe("mesh")
    expect(context.validation_context.match_subject_alt_names).toEqual([{ exact: "spiffe://mesh.local/service/echo" }])
  })

  it("permissive: plaintext server Listener (RBAC kept) and plaintext client Cluster", () => {
    const snapshot = snapshotOf("permissive")
    const listener = decoded(serverListenerResource(snapshot, "echo", NAME))
    expect(listener.filter_chains[0].transport_socket).toBeUndefined()
    expect(listener.filter_chains[0].filters[0].typed_config.http_filters).toHaveLength(2)
    expect(decoded(snapshot.resources.get(TypeUrls.Cluster)?.get("echo")).transport_socket).toBeUndefined()
  })

  it("nothing for a node without a service, a TCP service, an unknown service, or a name that is not IP:PORT", () => {
    const snapshot = snapshotOf("strict")
    assert.isUndefined(serverListenerResource(snapshot, undefined, NAME))
    assert.isUndefined(serverListenerResource(snapshot, "db", NAME))
    assert.isUndefined(serverListenerResource(snapshot, "nope", NAME))
    for (const address of ["localhost:50051", "127.0.0.1:0", "127.0.0.1", "127.0.0.1:99999", "[::1:50051"]) {
      assert.isUndefined(
        serverListenerResource(snapshot, "echo", `grpc/server?xds.resource.listening_address=${address}`),
        address
      )
    }
    expect(
      decoded(serverListenerResource(snapshot, "echo", "grpc/server?xds.resource.listening_address=[::1]:8443")).address
        .socket_address
    )
      .toEqual({ address: "::1", port_value: 8443 })
  })

  it("a changed rule marks the service's server Listeners changed; an unrelated rebuild does not", () => {
    const before = snapshotOf("strict")
    const same = snapshotOf("strict", authorization, before)
    assert.isFalse(same.changes?.names.get(TypeUrls.Listener)?.has(serverListenerMarker("echo")) ?? false)
    const after = snapshotOf("strict", [...authorization, {
      name: "no-admin",
      action: "deny",
      to: "echo",
      when: { paths: ["/admin/*"] }
    }], before)
    assert.isTrue(after.changes?.names.get(TypeUrls.Listener)?.has(serverListenerMarker("echo")))
    const filters =
      decoded(serverListenerResource(after, "echo", NAME)).filter_chains[0].filters[0].typed_config.http_filters
    expect(filters.map((f: any) => f.name)).toEqual(["mesh.rbac.deny", "mesh.rbac.allow", "envoy.filters.http.router"])
  })
})
