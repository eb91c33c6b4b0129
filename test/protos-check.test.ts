import { assert, describe, it } from "@effect/vitest"
import { check, Types } from "../src/xds/Protos.js"

// Values wrong in every way the checker knows, nested through lists, maps, oneofs and Anys; the
// expected issues are what the checker said before its paths were built lazily (same text, same
// order), so a faster checker cannot say less, or say it elsewhere.
const cases: Array<[string, unknown]> = [
  [Types.Cluster, {
    name: "c",
    type: "STATICX",
    connect_timeout: { seconds: "x" },
    load_assignment: {
      cluster_name: "",
      endpoints: [{
        lb_endpoints: [{}, {
          endpoint: { address: { socket_address: { address: "a", port_value: -1, protocol: 7.5 } } }
        }]
      }]
    },
    metadata: { filter_metadata: { "a.b": { fields: { k: { numberValue: 1 } } }, ok: null } },
    transport_socket: {
      name: "t",
      typed_config: {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        sni: 5,
        bogus: 1
      }
    },
    circuit_breakers: [],
    lb_policy: 3
  }],
  [Types.Listener, {
    name: "l",
    address: { socket_address: { address: "x" }, pipe: { path: "p" } },
    filter_chains: [{
      filters: [{ name: "f", typed_config: { "@type": 7 } }, {
        name: "g",
        typed_config: { "@type": "type.googleapis.com/nope.Nope" }
      }, { name: "h", typed_config: { foo: 1 } }]
    }]
  }],
  [Types.ClusterLoadAssignment, "notanobject"],
  [Types.ClusterLoadAssignment, { cluster_name: "", endpoints: "x" }],
  [Types.RouteConfiguration, {
    name: "r",
    virtual_hosts: [{
      name: "v",
      domains: ["*"],
      routes: [{ match: { prefix: "/" }, route: { cluster: "c", weighted_clusters: { clusters: [] } } }]
    }]
  }]
]

const expected: ReadonlyArray<ReadonlyArray<string>> = [
  [
    "type: unknown DiscoveryType value \"STATICX\" (one of STATIC, STRICT_DNS, LOGICAL_DNS, EDS, ORIGINAL_DST)",
    "connect_timeout.seconds: expected an integer (int64), got \"x\"",
    "load_assignment.cluster_name: must not be empty",
    "load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.port_value: expected a non-negative integer (uint32), got -1",
    "load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.protocol: expected a Protocol name, got 7.5",
    "metadata.filter_metadata[\"ok\"]: expected a google.protobuf.Struct object, got null",
    "transport_socket.typed_config.sni: expected a string, got 5",
    "transport_socket.typed_config.bogus: unknown field in envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "circuit_breakers: expected a envoy.config.cluster.v3.CircuitBreakers object, got []"
  ],
  [
    "address.socket_address: one of port_value, named_port is required",
    "address: only one of socket_address, pipe may be set (oneof address)",
    "filter_chains[0].filters[0].typed_config[\"@type\"]: expected a type URL string, got 7",
    "filter_chains[0].filters[1].typed_config[\"@type\"]: unknown type \"type.googleapis.com/nope.Nope\" (not among the loaded Envoy protos)",
    "filter_chains[0].filters[2].typed_config.foo: unknown field in google.protobuf.Any (use \"@type\")",
    "filter_chains[0].filters[2].typed_config.type_url: expected a string"
  ],
  [
    "(root): expected a envoy.config.endpoint.v3.ClusterLoadAssignment object, got \"notanobject\""
  ],
  [
    "cluster_name: must not be empty",
    "endpoints: expected a list, got \"x\""
  ],
  [
    "virtual_hosts[0].routes[0].route.weighted_clusters.clusters: needs at least 1 item(s)",
    "virtual_hosts[0].routes[0].route: only one of cluster, weighted_clusters may be set (oneof cluster_specifier)"
  ]
]

describe("the strict resource checker", () => {
  it("names every problem at its path: fields, list items, map keys, Any contents, oneofs, required fields", () => {
    cases.forEach(([type, value], i) => assert.deepStrictEqual(check(type, value), expected[i]))
  })

  it("leaves a value it checked as it was (an Any's \"@type\" is skipped in place, not copied out)", () => {
    const value = {
      name: "l",
      filter_chains: [{
        filters: [{
          name: "f",
          typed_config: {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            sni: "x"
          }
        }]
      }]
    }
    const before = JSON.stringify(value)
    assert.deepStrictEqual(check(Types.Listener, value), [])
    assert.strictEqual(JSON.stringify(value), before)
  })
})
