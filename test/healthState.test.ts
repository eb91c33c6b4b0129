import { assert, describe, it } from "@effect/vitest"
import { appendBounded, type EndpointState, initialState, type ProbeResult, step } from "../src/health/HealthState.js"
import { availability, type HealthView, routing, sameView, withHealth } from "../src/health/Routing.js"
import type { Endpoint, EndpointHealth, Service } from "../src/MeshState.js"

const thresholds = { healthyThreshold: 2, unhealthyThreshold: 3 }
const result = (at: number, ok: boolean): ProbeResult => ({
  at,
  ok,
  latencyMs: 1,
  lagMs: 0,
  ...(ok ? {} : { error: "status 503" })
})

const run = (outcomes: ReadonlyArray<boolean>, from: EndpointState = initialState(0)) => {
  let state = from
  const seen: Array<EndpointHealth> = []
  outcomes.forEach((ok, i) => {
    state = step(state, result(i + 1, ok), thresholds, 5).state
    seen.push(state.health)
  })
  return { state, seen }
}

describe("health state machine", () => {
  it("starts unknown and becomes healthy after healthyThreshold successes", () => {
    assert.strictEqual(initialState(7).health, "unknown")
    assert.deepStrictEqual(run([true, true]).seen, ["unknown", "healthy"])
  })

  it("becomes unhealthy from unknown after unhealthyThreshold failures", () => {
    assert.deepStrictEqual(run([false, false, false]).seen, ["unknown", "unknown", "unhealthy"])
  })

  it("needs consecutive results: one success resets the failure streak", () => {
    assert.deepStrictEqual(
      run([true, true, false, false, true, false, false, false]).seen,
      ["unknown", "healthy", "healthy", "healthy", "healthy", "healthy", "healthy", "unhealthy"]
    )
  })

  it("reports the transition and moves `since` only when the health changes", () => {
    const first = step(initialState(0), result(10, true), thresholds, 5)
    assert.strictEqual(first.transition, undefined)
    assert.strictEqual(first.state.since, 0)
    const second = step(first.state, result(20, true), thresholds, 5)
    assert.deepStrictEqual(second.transition, { from: "unknown", to: "healthy" })
    assert.strictEqual(second.state.since, 20)
  })

  it("keeps at most historySize results, newest last", () => {
    const { state } = run([true, false, true, false, true, false, true])
    assert.deepStrictEqual(state.history.map((r) => r.at), [3, 4, 5, 6, 7])
    assert.deepStrictEqual(appendBounded([1, 2], 3, 0), [])
  })
})

const endpoint = (port: number, health: EndpointHealth = "unknown"): Endpoint => ({
  address: "10.0.0.1",
  port,
  weight: 1,
  labels: {},
  health,
  source: "config"
})

const service = (failMode: "open" | "closed", ports: ReadonlyArray<number>): Service => ({
  name: "echo",
  protocol: "http",
  port: 80,
  endpoints: ports.map((p) => endpoint(p)),
  failMode,
  tags: [],
  metadata: {},
  source: "config"
})

const view = (entries: Record<string, EndpointHealth>): HealthView =>
  new Map([["echo", new Map(Object.entries(entries))]])

describe("routing (fail open / closed)", () => {
  it("routes to healthy and unknown endpoints, not unhealthy ones", () => {
    const decision = routing(service("open", [1, 2, 3]), view({ "10.0.0.1:1": "healthy", "10.0.0.1:2": "unhealthy" }))
    assert.deepStrictEqual(decision.endpoints.map((e) => [e.port, e.health]), [[1, "healthy"], [3, "unknown"]])
    assert.isFalse(decision.panic)
    assert.isTrue(decision.available)
    assert.deepStrictEqual(decision.counts, { healthy: 1, unhealthy: 1, unknown: 1 })
  })

  it("all unhealthy with failMode open: panic, route to all", () => {
    const decision = routing(service("open", [1, 2]), view({ "10.0.0.1:1": "unhealthy", "10.0.0.1:2": "unhealthy" }))
    assert.isTrue(decision.panic)
    assert.isFalse(decision.available)
    assert.deepStrictEqual(decision.endpoints.map((e) => e.port), [1, 2])
  })

  it("all unhealthy with failMode closed: panic, route to none", () => {
    const decision = routing(service("closed", [1, 2]), view({ "10.0.0.1:1": "unhealthy", "10.0.0.1:2": "unhealthy" }))
    assert.isTrue(decision.panic)
    assert.deepStrictEqual(decision.endpoints, [])
  })

  it("a service without endpoints is unavailable but not in panic", () => {
    const decision = routing(service("open", []), new Map())
    assert.isFalse(decision.panic)
    assert.isFalse(decision.available)
  })

  it("availability and withHealth read the view per service", () => {
    const v = view({ "10.0.0.1:1": "unhealthy" })
    assert.deepStrictEqual([...availability([service("open", [1])], v)], [["echo", false]])
    assert.deepStrictEqual(withHealth([service("open", [1, 2])], v)[0]!.endpoints.map((e) => e.health), [
      "unhealthy",
      "unknown"
    ])
  })

  it("sameView compares structurally", () => {
    assert.isTrue(sameView(view({ a: "healthy" }), view({ a: "healthy" })))
    assert.isFalse(sameView(view({ a: "healthy" }), view({ a: "unknown" })))
    assert.isFalse(sameView(view({ a: "healthy" }), new Map()))
  })
})
