/**
 * The pure rules of who owns what in Consul's catalog (src/discovery/Consul.ts) and the content
 * version of what a SotW client holds (src/xds/HeldVersions.ts). The process tests in
 * multi-controller.test.ts show them at work between controllers.
 */
import { assert, describe, it } from "@effect/vitest"
import {
  apiRegisterOptions,
  consulLabelProblem,
  decodeHealthService,
  ownApiRegistrations,
  removableByAntiEntropy
} from "../src/discovery/Consul.js"
import { Held } from "../src/xds/HeldVersions.js"

const owner = { mesh: "m", controllerId: "a-1" }

describe("who owns a Consul instance", () => {
  it("anti-entropy removes only this controller's config registrations (and unattributed ones)", () => {
    const meta = (extra: Record<string, string>) => ({ "mesh-controller": "m", ...extra })
    assert.isTrue(
      removableByAntiEntropy(meta({ "mesh-controller-id": "a-1", "mesh-controller-source": "config" }), owner)
    )
    assert.isTrue(removableByAntiEntropy(meta({}), owner), "registered before instances named their controller")
    assert.isFalse(removableByAntiEntropy(meta({ "mesh-controller-id": "b-2" }), owner), "another controller's")
    assert.isFalse(
      removableByAntiEntropy(meta({ "mesh-controller-id": "a-1", "mesh-controller-source": "api" }), owner),
      "an API registration, even this controller's"
    )
    assert.isFalse(removableByAntiEntropy({ "mesh-controller": "other" }, owner), "another mesh's")
    assert.isFalse(removableByAntiEntropy(undefined, owner))
    assert.isFalse(
      removableByAntiEntropy(meta({ "mesh-controller-id": "a-1" }), { mesh: "m", controllerId: undefined }),
      "a controller without an ID removes no attributed instance"
    )
  })

  it("an API registration goes to Consul and comes back whole (weight, protocol, labels)", () => {
    const registration = {
      service: "web",
      address: "10.0.0.5",
      port: 8080,
      weight: 7,
      labels: { zone: "z1", tier: "front" },
      protocol: "grpc" as const
    }
    const body = apiRegisterOptions(registration, owner, "grpc")
    assert.strictEqual(body.id, "mesh_api-a-1-web-10.0.0.5-8080")
    const agent = { [body.id]: { Service: body.name, Address: body.address, Port: body.port, Meta: body.meta } }
    assert.deepStrictEqual(ownApiRegistrations(agent, owner), [registration])
    assert.deepStrictEqual(ownApiRegistrations(agent, { mesh: "m", controllerId: "b-2" }), [], "not B's")
    const seen = decodeHealthService("web", [{
      Node: { Node: "n", Address: "10.0.0.1" },
      Service: { ID: body.id, Service: "web", Address: "10.0.0.5", Port: 8080, Meta: body.meta },
      Checks: []
    }])
    assert.strictEqual(
      seen._tag === "Right" && seen.right.instances[0]!.weight,
      7,
      "the weight reaches other controllers"
    )
  })

  it("labels Consul cannot carry as meta are named, not dropped", () => {
    assert.isUndefined(consulLabelProblem({ zone: "z1", "team_name-2": "x" }))
    assert.match(consulLabelProblem({ "app.kubernetes.io/name": "x" })!, /labels\["app\.kubernetes\.io\/name"\]/)
    assert.match(consulLabelProblem({ "consul-x": "1" })!, /reserves/)
    assert.match(consulLabelProblem({ "mesh-controller-id": "b" })!, /writes this meta key itself/)
    assert.match(consulLabelProblem({ zone: "x".repeat(513) })!, /512/)
  })
})

describe("the content version of what a SotW client holds", () => {
  it("equal sets have equal versions, whatever the order they were sent in; a change changes it", () => {
    let a = Held.empty(true).with([["x", "1"]]).with([["y", "2"]])
    const b = Held.empty(true).with([["y", "2"]]).with([["z", "9"]]).with([["x", "0"]]).with([["x", "1"]])
      .with([["z", undefined]])
    assert.strictEqual(a.version, b.version)
    a = a.with([["y", "3"]])
    assert.notStrictEqual(a.version, b.version)
    a = a.with([["y", "2"]])
    assert.strictEqual(a.version, b.version, "back to the same content, back to the same version")
    assert.notStrictEqual(Held.empty(true).version, a.version)
  })
})
