/**
 * The admin server against untrusted callers, over real HTTP on 127.0.0.1:0: credentials for
 * every state-changing request, Host checks against DNS rebinding, JSON-only bodies, the read rule,
 * and the bounds on what the registration API accepts. Each case failed on the code before.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Either, Layer, Ref, Stream, TestClock } from "effect"
import { mkdtempSync, readFileSync, statSync } from "node:fs"
import * as NodeHttp from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Admin } from "../layers/Admin.js"
import { makeAccessRule } from "../layers/admin/AdminAccess.js"
import { loadOrCreateToken } from "../layers/admin/AdminToken.js"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { Lifecycle } from "../layers/Lifecycle.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { RegistrationApi } from "../layers/RegistrationApi.js"
import { Snapshot } from "../layers/Snapshot.js"
import { Xds } from "../layers/Xds.js"
import type { MeshConfig } from "../schemas/Config.js"
import { decodeConfig, parseConfig } from "../src/ConfigDocument.js"
import { encode, Types, TypeUrls } from "../src/xds/Protos.js"
import { loadAssignment } from "../src/xds/Resources.js"
import { bearer, post, request, startAdmin } from "./support/admin.js"
import { AdsClient, type AdsResponse, grpcNode } from "./support/AdsClient.js"
import { eventually } from "./support/eventually.js"

const decode = (value: Record<string, unknown>): MeshConfig =>
  Either.getOrThrowWith(decodeConfig({ mesh: { name: "unit" }, ...value }, "test"), (error) => new Error(error.message))

const echoOnly = (admin: Record<string, unknown> = {}) =>
  decode({ controller: { admin }, services: [{ name: "echo", port: 50051, endpoints: [{ address: "10.0.0.1" }] }] })

/** A request with a Host header of our choosing (fetch does not let one set it). */
const rawRequest = (
  url: string,
  options: { method?: string; host: string; headers?: Record<string, string>; body?: string }
) =>
  Effect.async<{ status: number; text: string }>((resume) => {
    const target = new URL(url)
    const req = NodeHttp.request({
      host: "127.0.0.1",
      port: target.port,
      path: target.pathname,
      method: options.method ?? "GET",
      headers: { ...options.headers, host: options.host }
    }, (res) => {
      let text = ""
      res.setEncoding("utf8")
      res.on("data", (chunk: string) => (text += chunk))
      res.on("end", () => resume(Effect.succeed({ status: res.statusCode ?? 0, text })))
    })
    req.on("error", (error) => resume(Effect.die(error)))
    req.end(options.body)
  })

const metricValue = (text: string, series: string) => {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `))
  return line === undefined ? 0 : Number(line.slice(series.length + 1))
}

const endpointOf = { address: "10.0.0.2", port: 50052 }

describe("who may change the mesh", () => {
  it.scopedLive("no credential: 401 with WWW-Authenticate; a wrong one: 403; both counted; nothing changes", () =>
    Effect.gen(function*() {
      const { base, discovery, token } = yield* startAdmin(echoOnly())
      const metricsBefore = (yield* request(`${base}/metrics`)).text
      const url = `${base}/v1/services/echo/endpoints`
      const json = { "content-type": "application/json" }

      const none = yield* request(url, { method: "POST", body: JSON.stringify(endpointOf), headers: json })
      assert.strictEqual(none.status, 401)
      expect(none.headers.get("www-authenticate")).toMatch(/^Bearer /)
      const basic = yield* request(url, {
        method: "POST",
        body: JSON.stringify(endpointOf),
        headers: { ...json, authorization: "Basic YTpi" }
      })
      assert.strictEqual(basic.status, 401)
      const wrong = yield* post(url, endpointOf, `${token.slice(0, -1)}${token.endsWith("A") ? "B" : "A"}`)
      assert.strictEqual(wrong.status, 403)
      const deleteNone = yield* request(`${url}/10.0.0.2/50052`, { method: "DELETE" })
      assert.strictEqual(deleteNone.status, 401)

      assert.deepStrictEqual(yield* discovery.registrations, [], "a refused request changes nothing")
      const metrics = (yield* request(`${base}/metrics`)).text
      const delta = (series: string) => metricValue(metrics, series) - metricValue(metricsBefore, series)
      assert.strictEqual(delta(`mesh_controller_admin_auth_failures_total{result="missing"}`), 3)
      assert.strictEqual(delta(`mesh_controller_admin_auth_failures_total{result="invalid"}`), 1)

      const ok = yield* post(url, endpointOf, token)
      assert.strictEqual(ok.status, 201)
      assert.strictEqual((yield* discovery.registrations).length, 1)
    }))

  it.scopedLive("the token file: generated once with mode 0600, then read back unchanged", () =>
    Effect.gen(function*() {
      const { token, tokenFile } = yield* startAdmin(echoOnly())
      assert.strictEqual(statSync(tokenFile).mode & 0o777, 0o600)
      expect(token.length).toBeGreaterThanOrEqual(32)
      const again = yield* loadOrCreateToken(tokenFile)
      assert.isFalse(again.created)
      assert.isTrue(again.verify(token))
      assert.isFalse(again.verify(`${token}x`))
      assert.isFalse(again.verify(""))
    }))

  it.scopedLive("only application/json bodies: a text/plain POST (what a cross-origin form sends) gets 415", () =>
    Effect.gen(function*() {
      const { base, discovery, token } = yield* startAdmin(echoOnly())
      const url = `${base}/v1/services/echo/endpoints`
      for (const type of ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]) {
        const answer = yield* request(url, {
          method: "POST",
          body: JSON.stringify(endpointOf),
          headers: { "content-type": type, ...bearer(token) }
        })
        assert.strictEqual(answer.status, 415, type)
      }
      const charset = yield* request(url, {
        method: "POST",
        body: JSON.stringify(endpointOf),
        headers: { "content-type": "application/json; charset=utf-8", ...bearer(token) }
      })
      assert.strictEqual(charset.status, 201)
      assert.strictEqual((yield* discovery.registrations).length, 1)
    }))

  it.scopedLive("DNS rebinding: a Host the server is not bound to gets 421 on every route but /healthz and /readyz", () =>
    Effect.gen(function*() {
      const { base, discovery, token } = yield* startAdmin(echoOnly(), { allowedHosts: ["mesh-admin.lan"] })
      const evil = "evil.example:80"
      const body = JSON.stringify(endpointOf)
      const headers = { "content-type": "application/json", ...bearer(token) }
      assert.strictEqual(
        (yield* rawRequest(`${base}/v1/services/echo/endpoints`, { method: "POST", host: evil, headers, body })).status,
        421
      )
      for (const path of ["/status", "/metrics", "/v1/services", "/no-such-page"]) {
        assert.strictEqual((yield* rawRequest(`${base}${path}`, { host: evil })).status, 421, path)
      }
      assert.deepStrictEqual(yield* discovery.registrations, [])
      assert.strictEqual((yield* rawRequest(`${base}/healthz`, { host: evil })).status, 200)
      assert.notStrictEqual((yield* rawRequest(`${base}/readyz`, { host: evil })).status, 421)

      const port = new URL(base).port
      for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, "LOCALHOST", "mesh-admin.lan:15014"]) {
        assert.strictEqual((yield* rawRequest(`${base}/status`, { host })).status, 200, host)
      }
      assert.strictEqual(
        (yield* rawRequest(`${base}/v1/services/echo/endpoints`, {
          method: "POST",
          host: `127.0.0.1:${port}`,
          headers,
          body
        })).status,
        201
      )
    }))

  it.scopedLive("the read rule: with readAccess token, /status, /metrics and GET /v1/services need the token; /healthz does not", () =>
    Effect.gen(function*() {
      const { base, token } = yield* startAdmin(echoOnly(), { readAccess: "token" })
      for (const path of ["/status", "/metrics", "/v1/services"]) {
        assert.strictEqual((yield* request(`${base}${path}`)).status, 401, path)
        assert.strictEqual(
          (yield* request(`${base}${path}`, { headers: bearer("not-the-token-at-all") })).status,
          403,
          path
        )
        assert.strictEqual((yield* request(`${base}${path}`, { headers: bearer(token) })).status, 200, path)
      }
      assert.strictEqual((yield* request(`${base}/healthz`)).status, 200)
      assert.notInclude([401, 403], (yield* request(`${base}/readyz`)).status)
    }))

  it.scopedLive("with the default read rule on loopback, reads are open", () =>
    Effect.gen(function*() {
      const { base } = yield* startAdmin(echoOnly())
      for (const path of ["/status", "/metrics", "/v1/services"]) {
        assert.strictEqual((yield* request(`${base}${path}`)).status, 200, path)
      }
    }))

  it("the container's config is safe by default: reads need the token, the API creates no services", () => {
    const config = Either.getOrThrow(
      parseConfig(readFileSync("examples/container.yaml", "utf8"), "examples/container.yaml")
    )
    const admin = config.controller.admin
    assert.strictEqual(admin.host, "0.0.0.0")
    assert.isFalse(makeAccessRule(admin.host, { readAccess: admin.readAccess }).readOpen)
    assert.isFalse(admin.registration.createServices)
  })

  it("adminIdentities need tls: the config says so at the setting; a bad service name is refused", () => {
    const without = decodeConfig({ mesh: { name: "unit" }, controller: { admin: { adminIdentities: ["ops"] } } }, "t")
    assert.isTrue(Either.isLeft(without))
    expect(Either.isLeft(without) && without.left.message).toMatch(
      /controller\.admin\.adminIdentities.*set controller\.admin\.tls: true/s
    )
    const badName = decodeConfig({
      mesh: { name: "unit" },
      controller: { admin: { tls: true, adminIdentities: ["Ops Team"] } }
    }, "t")
    expect(Either.isLeft(badName) && badName.left.message).toContain("expected a service name")
    const ok = decodeConfig(
      { mesh: { name: "unit" }, controller: { admin: { tls: true, adminIdentities: ["ops"] } } },
      "t"
    )
    assert.isTrue(Either.isRight(ok))
  })

  it("auto: reads are open only when the server is bound to loopback", () => {
    for (const host of ["127.0.0.1", "127.0.0.2", "::1", "localhost"]) {
      assert.isTrue(makeAccessRule(host).readOpen, host)
    }
    for (const host of ["0.0.0.0", "::", "10.0.0.5", "mesh.lan"]) assert.isFalse(makeAccessRule(host).readOpen, host)
    assert.isTrue(makeAccessRule("0.0.0.0", { readAccess: "open" }).readOpen)
    assert.isFalse(makeAccessRule("127.0.0.1", { readAccess: "token" }).readOpen)
  })
})

describe("bounds on what the registration API accepts", () => {
  it.scopedLive("a body over the cap gets 413 (one 5 MB label); labels over their caps get 400 naming them", () =>
    Effect.gen(function*() {
      const { base, discovery, token } = yield* startAdmin(echoOnly())
      const url = `${base}/v1/services/echo/endpoints`
      const huge = yield* post(url, { ...endpointOf, labels: { zone: "z".repeat(5 * 1024 * 1024) } }, token)
      assert.strictEqual(huge.status, 413)
      // Without a Content-Length (chunked), the cap holds while reading.
      const chunked = yield* request(url, {
        method: "POST",
        headers: { "content-type": "application/json", ...bearer(token) },
        body: new ReadableStream({
          start(controller) {
            controller.enqueue(
              new TextEncoder().encode(JSON.stringify({ ...endpointOf, labels: { zone: "z".repeat(200_000) } }))
            )
            controller.close()
          }
        }),
        duplex: "half"
      } as RequestInit)
      assert.strictEqual(chunked.status, 413)

      const tooMany = yield* post(url, {
        ...endpointOf,
        labels: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, "v"]))
      }, token)
      assert.strictEqual(tooMany.status, 400)
      expect(String(tooMany.body?.["message"])).toMatch(/^body: labels: 17 labels, at most 16/)
      const longKey = yield* post(url, { ...endpointOf, labels: { ["k".repeat(64)]: "v" } }, token)
      assert.strictEqual(longKey.status, 400)
      const longValue = yield* post(url, { ...endpointOf, labels: { zone: "z".repeat(257) } }, token)
      assert.strictEqual(longValue.status, 400)
      expect(String(longValue.body?.["message"])).toMatch(/labels\["zone"\]: value longer than 256/)
      assert.deepStrictEqual(yield* discovery.registrations, [])
    }))

  it.scopedLive("services the config does not define: 404 by default; with createServices, at most maxServices", () =>
    Effect.gen(function*() {
      const closed = yield* startAdmin(echoOnly())
      const refused = yield* post(`${closed.base}/v1/services/newcomer/endpoints`, endpointOf, closed.token)
      assert.strictEqual(refused.status, 404)
      expect(String(refused.body?.["message"])).toContain("createServices")

      const open = yield* startAdmin(echoOnly({ registration: { createServices: true, maxServices: 2 } }))
      for (const name of ["new-a", "new-b"]) {
        assert.strictEqual(
          (yield* post(`${open.base}/v1/services/${name}/endpoints`, endpointOf, open.token)).status,
          201
        )
      }
      // More endpoints of a service the API created are fine; a third service is not.
      assert.strictEqual(
        (yield* post(`${open.base}/v1/services/new-a/endpoints`, { ...endpointOf, port: 2 }, open.token)).status,
        201
      )
      const third = yield* post(`${open.base}/v1/services/new-c/endpoints`, endpointOf, open.token)
      assert.strictEqual(third.status, 409)
      expect(String(third.body?.["message"])).toContain("maxServices")
      // Services of the config never count against the cap.
      assert.strictEqual((yield* post(`${open.base}/v1/services/echo/endpoints`, endpointOf, open.token)).status, 201)
    }))

  it.scopedLive("endpoints per service are capped; replacing one at the cap is still allowed", () =>
    Effect.gen(function*() {
      const { base, token } = yield* startAdmin(echoOnly({ registration: { maxEndpointsPerService: 3 } }))
      const url = `${base}/v1/services/echo/endpoints`
      for (const port of [1, 2, 3]) {
        assert.strictEqual((yield* post(url, { address: "10.0.0.2", port }, token)).status, 201)
      }
      const fourth = yield* post(url, { address: "10.0.0.2", port: 4 }, token)
      assert.strictEqual(fourth.status, 409)
      expect(String(fourth.body?.["message"])).toContain("maxEndpointsPerService")
      assert.strictEqual((yield* post(url, { address: "10.0.0.2", port: 3, weight: 7 }, token)).status, 201)
      assert.strictEqual(
        (yield* request(`${url}/10.0.0.2/3`, { method: "DELETE", headers: bearer(token) })).status,
        204
      )
      assert.strictEqual((yield* post(url, { address: "10.0.0.2", port: 4 }, token)).status, 201)
    }))

  it.scopedLive("labels can never make EDS bigger than a gRPC client accepts: EDS stays below 2× maxServiceBytes, whose cap is 2 MiB", () =>
    Effect.gen(function*() {
      // A small budget keeps the test quick; EDS grows linearly with it, so the ratio is what counts:
      // below 2, the largest allowed budget (2 MiB) stays below gRPC's default 4 MiB. Region and zone
      // are the labels that reach EDS (as localities), so each endpoint gets its own, at full length.
      const maxServiceBytes = 64 * 1024
      const { base, discovery, token } = yield* startAdmin(echoOnly({ registration: { maxServiceBytes } }))
      const url = `${base}/v1/services/echo/endpoints`
      let accepted = 0
      let refusal: { status: number; message: string } | undefined
      for (let i = 0; refusal === undefined; i++) {
        const mark = String(i).padStart(6, "0")
        const answer = yield* post(url, {
          address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
          port: 1000 + (i % 60000),
          weight: 1_000_000,
          labels: { region: mark + "r".repeat(250), zone: mark + "z".repeat(250) }
        }, token)
        if (answer.status === 201) accepted++
        else refusal = { status: answer.status, message: String(answer.body?.["message"]) }
      }
      assert.strictEqual(refusal.status, 409)
      expect(refusal.message).toContain("maxServiceBytes")
      const service = yield* eventually(Effect.flatMap(discovery.services, (all) => {
        const echo = all.find((s) => s.name === "echo")!
        return echo.endpoints.length === accepted + 1 ? Effect.succeed(echo) : Effect.fail(echo.endpoints.length)
      }))
      const bytes = Either.getOrThrow(encode(Types.ClusterLoadAssignment, loadAssignment(service))).length
      expect(accepted).toBeGreaterThan(50)
      expect(bytes).toBeLessThan(2 * maxServiceBytes)
      // The schema refuses a budget that could outgrow the client's limit.
      const tooBig = decodeConfig({
        mesh: { name: "unit" },
        controller: { admin: { registration: { maxServiceBytes: 3 * 1024 * 1024 } } }
      }, "test")
      assert.isTrue(Either.isLeft(tooBig))
    }))
  it.scopedLive("a real grpc-js ADS client (4 MiB default receive limit) keeps its stream and every update while a service fills to the largest byte cap", () =>
    Effect.gen(function*() {
      // The worst case the settings allow: the largest budget (2 MiB), the largest bodies, and labels
      // that reach EDS (region and zone become localities) hundreds of KiB long.
      const maxServiceBytes = 2 * 1024 * 1024
      const config = echoOnly({
        registration: { maxServiceBytes, maxBodyBytes: 1024 * 1024, maxLabelValueLength: 300_000 }
      })
      const inputs = Layer.mergeAll(LiveConfig.layerMemory(config), Health.layerNoop, Lifecycle.layer([]))
      const registry = Layer.merge(inputs, Discovery.layerEmbedded.pipe(Layer.provide(inputs)))
      const tokenFile = join(mkdtempSync(join(tmpdir(), "mesh-admin-")), "admin-token")
      const token = yield* loadOrCreateToken(tokenFile)
      const context = yield* Layer.build(Layer.mergeAll(
        registry,
        Admin.layer({
          host: "127.0.0.1",
          port: 0,
          version: "0.0.0-test",
          routes: RegistrationApi,
          access: { verifyToken: token.verify }
        }).pipe(Layer.provide(registry)),
        Xds.layer({ host: "127.0.0.1", port: 0 }).pipe(
          Layer.provide(Layer.merge(Snapshot.layer.pipe(Layer.provide(registry)), registry))
        )
      ))
      const base = `http://127.0.0.1:${Context.get(context, Admin).address.port}`
      const discovery = Context.get(context, Discovery)
      const secret = readFileSync(tokenFile, "utf8").trim()

      // A plain grpc.Client: grpc-js's default receive limit (4 MiB), as a proxyless client has.
      const ads = yield* AdsClient.sotw(`127.0.0.1:${Context.get(context, Xds).address.port}`)
      const eds = (ack?: { version: string; nonce: string }) =>
        ads.send({
          node: grpcNode("big-eds"),
          type_url: TypeUrls.ClusterLoadAssignment,
          resource_names: ["echo"],
          ...(ack ? { version_info: ack.version, response_nonce: ack.nonce } : {})
        })
      const endpointsIn = (response: AdsResponse) =>
        ((response.resources[0]?.["endpoints"] ?? []) as Array<{ lb_endpoints: Array<unknown> }>)
          .reduce((n, locality) => n + locality.lb_endpoints.length, 0)
      /** Takes (and ACKs) responses until one carries `count` endpoints. */
      const untilEndpoints = (count: number): Effect.Effect<AdsResponse> =>
        Effect.flatMap(ads.next(TypeUrls.ClusterLoadAssignment), (response) =>
          Effect.zipRight(
            eds(response),
            endpointsIn(response) === count ? Effect.succeed(response) : untilEndpoints(count)
          ))
      yield* eds()
      yield* untilEndpoints(1)

      const url = `${base}/v1/services/echo/endpoints`
      let accepted = 0
      for (let i = 0;; i++) {
        const mark = String(i).padStart(6, "0")
        const answer = yield* post(url, {
          address: `10.0.1.${i + 1}`,
          port: 2000 + i,
          labels: { region: mark + "r".repeat(299_000), zone: mark + "z".repeat(299_000) }
        }, secret)
        if (answer.status !== 201) {
          assert.strictEqual(answer.status, 409, answer.text)
          break
        }
        accepted++
        // Each update reaches the client over the same stream.
        yield* untilEndpoints(accepted + 1)
      }
      expect(accepted).toBeGreaterThan(1)
      const echo = (yield* discovery.services).find((s) => s.name === "echo")!
      const bytes = Either.getOrThrow(encode(Types.ClusterLoadAssignment, loadAssignment(echo))).length
      expect(bytes).toBeLessThan(4 * 1024 * 1024)

      // Still connected: a later change (one registration removed) arrives too.
      const removed = yield* request(`${url}/10.0.1.1/2000`, { method: "DELETE", headers: bearer(secret) })
      assert.strictEqual(removed.status, 204, removed.text)
      yield* untilEndpoints(accepted)
    }))
})

describe("registration cost", () => {
  it.scoped("a burst of registrations is merged and published a few times, not once per registration", () =>
    Effect.gen(function*() {
      const context = yield* Layer.build(
        Discovery.layerEmbedded.pipe(Layer.provide(LiveConfig.layerMemory(echoOnly())))
      )
      const discovery = Context.get(context, Discovery)
      const published = yield* Ref.make(0)
      yield* discovery.changes.pipe(
        Stream.drop(1),
        Stream.runForEach(() => Ref.update(published, (n) => n + 1)),
        Effect.forkScoped
      )
      yield* Effect.yieldNow()
      const n = 2_000
      for (let i = 0; i < n; i++) {
        yield* discovery.register({ service: "echo", address: "10.1.0.1", port: 1 + i, weight: 1, labels: {} })
      }
      // TestClock: the publisher's pause between publishes passes only here.
      yield* TestClock.adjust("1 second")
      yield* eventually(
        Effect.flatMap(discovery.services, (all) =>
          all.find((s) => s.name === "echo")!.endpoints.length === n + 1
            ? Effect.void
            : Effect.fail("not yet"))
      )
      expect(yield* Ref.get(published)).toBeLessThanOrEqual(3)
    }))
})
