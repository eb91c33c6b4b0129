/**
 * The status page's rules, as pure functions: how a certificate stands, an endpoint's
 * availability, a data plane's service and whether its NACK still stands.
 */
import { assert, describe, it } from "@effect/vitest"
import type { Service } from "../src/MeshState.js"
import { certificateTone, dataPlanesView, RENEWAL_GRACE_MS, servicesView, type XdsClientInput } from "../src/ui/View.js"

const H = 3600_000
const t0 = Date.parse("2026-01-01T00:00:00Z")
const iso = (ms: number) => new Date(ms).toISOString()

describe("certificateTone", () => {
  const notBefore = iso(t0)
  const notAfter = iso(t0 + 24 * H)
  const renewAt = iso(t0 + 12 * H)

  it("is ok before renewal time and within the grace after it", () => {
    assert.strictEqual(certificateTone(t0 + H, notBefore, notAfter, renewAt), "ok")
    assert.strictEqual(certificateTone(t0 + 12 * H + RENEWAL_GRACE_MS, notBefore, notAfter, renewAt), "ok")
  })

  it("says renewal overdue once the grace has passed", () => {
    assert.strictEqual(
      certificateTone(t0 + 12 * H + RENEWAL_GRACE_MS + 1, notBefore, notAfter, renewAt),
      "renew-overdue"
    )
  })

  it("says expiring within a fifth of the lifetime, capped at 30 days, and expired after", () => {
    assert.strictEqual(certificateTone(t0 + 19.3 * H, notBefore, notAfter, renewAt), "expiring")
    assert.strictEqual(certificateTone(t0 + 24 * H, notBefore, notAfter, renewAt), "expired")
    const rootEnd = t0 + 3650 * 24 * H
    assert.strictEqual(certificateTone(rootEnd - 31 * 24 * H, notBefore, iso(rootEnd)), "ok")
    assert.strictEqual(certificateTone(rootEnd - 29 * 24 * H, notBefore, iso(rootEnd)), "expiring")
  })
})

describe("servicesView", () => {
  const service: Service = {
    name: "web",
    protocol: "http",
    port: 80,
    failMode: "open",
    tags: [],
    metadata: {},
    source: "config",
    endpoints: [
      { address: "127.0.0.1", port: 81, weight: 2, labels: {}, health: "unknown", source: "api" },
      { address: "127.0.0.1", port: 82, weight: 1, labels: {}, health: "unknown", source: "config" }
    ]
  }

  it("joins discovery's endpoints with the health view and history; availability over the tracked time", () => {
    const view = new Map([["web", new Map([["127.0.0.1:81", "unhealthy" as const]])]])
    const [web] = servicesView([service], view, {
      services: [{
        name: "web",
        check: { type: "http", path: "/healthz", interval: "5s" },
        endpoints: [{
          endpoint: "127.0.0.1:81",
          health: "unhealthy",
          since: iso(t0 + 90_000),
          consecutiveFailures: 3,
          trackedSince: iso(t0),
          unhealthyMs: 10_000,
          transitions: [{ at: iso(t0 + 90_000), from: "healthy", to: "unhealthy" }],
          history: [{ at: iso(t0 + 99_000), ok: false, latencyMs: 1, error: "connection refused" }]
        }]
      }]
    }, t0 + 100_000)
    assert.strictEqual(web!.check, "http GET /healthz every 5s")
    const [a, b] = web!.endpoints
    assert.strictEqual(a!.health, "unhealthy")
    assert.strictEqual(a!.source, "api")
    assert.strictEqual(a!.weight, 2)
    assert.strictEqual(a!.availability, 0.9)
    assert.strictEqual(a!.lastError, "connection refused")
    assert.strictEqual(b!.checked, false)
    assert.strictEqual(b!.availability, null)
    assert.isTrue(web!.available)
  })
})

describe("dataPlanesView", () => {
  const type = (acknowledgedAt: string | null, nackAt: string | null) => ({
    subscribed: ["echo"],
    subscribedCount: 1,
    acknowledgedVersion: acknowledgedAt === null ? null : "v1",
    acknowledgedAt,
    waitingForAck: false,
    pushes: 2,
    nacks: nackAt === null ? 0 : 1,
    lastNack: nackAt === null ? null : { version: "v2", message: "bad route", at: nackAt }
  })
  const client = (nodeId: string, types: XdsClientInput["types"]): XdsClientInput => ({
    stream: 1,
    nodeId,
    kind: "proxyless",
    userAgent: null,
    protocol: "delta",
    peer: "127.0.0.1:1",
    identity: null,
    connectedAt: iso(t0),
    types
  })

  it("names a sidecar's service from its node id and a proxyless client's from what it dials", () => {
    const [sidecar, proxyless] = dataPlanesView([
      client("web~1", {}),
      client("app-7", { Listener: type(iso(t0), null) })
    ])
    assert.strictEqual(sidecar!.service, "web")
    assert.strictEqual(proxyless!.service, "echo")
    assert.strictEqual(proxyless!.protocol, "Delta")
  })

  it("a NACK stands until a later ACK", () => {
    const [standing, answered] = dataPlanesView([
      client("a", { Listener: type(iso(t0), iso(t0 + 1000)) }),
      client("b", { Listener: type(iso(t0 + 2000), iso(t0 + 1000)) })
    ])
    assert.isTrue(standing!.nacked)
    assert.isFalse(answered!.nacked)
    assert.strictEqual(standing!.types[0]!.lastNack!.message, "bad route")
  })
})
