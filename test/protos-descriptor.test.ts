/**
 * The Envoy types come from a descriptor generated at build time (src/xds/EnvoyProtos.ts, written by
 * `npm run protos`), not from parsing the `.proto` files at start-up. It must describe exactly what
 * the installed `.proto` files do: a stale descriptor (after an upgrade of @grpc/grpc-js-xds, or a
 * new file in PROTO_FILES) fails here, with the command that fixes it.
 */
import { assert, describe, it } from "@effect/vitest"
import { ENVOY_PROTOS } from "../src/xds/EnvoyProtos.js"
import { check, loadProtoFiles, protoDescriptor, root, Types } from "../src/xds/Protos.js"

describe("the generated proto descriptor", () => {
  it("equals the installed .proto files, parsed (else: npm run protos)", () => {
    assert.isTrue(ENVOY_PROTOS === protoDescriptor(loadProtoFiles()), "src/xds/EnvoyProtos.ts is stale: npm run protos")
  })

  it("gives the strict checker the same types and rules as the .proto files", () => {
    const parsed = loadProtoFiles()
    for (const name of Object.values(Types)) {
      assert.deepStrictEqual(root().lookupType(name).toJSON(), parsed.lookupType(name).toJSON(), name)
    }
    // protoc-gen-validate options survive the descriptor: a required field is still required.
    assert.include(check(Types.Cluster, { conect_timeout: { seconds: 1 } }).join("\n"), "conect_timeout")
    assert.deepStrictEqual(check(Types.ClusterLoadAssignment, { cluster_name: "" }), [
      "cluster_name: must not be empty"
    ])
  })
})
