/**
 * Discovery without Consul: the pure rules (merge precedence, Consul index handling, response and
 * registration mapping), the embedded registry across config reloads, and the registration API
 * over real HTTP.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { Context, Duration, Effect, Either, Layer, TestClock } from "effect"
import { Discovery } from "../layers/Discovery.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import type { MeshConfig } from "../schemas/Config.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import {
  decodeCatalogServices,
  decodeHealthService,
  registerOptions,
  registrationsOf
} from "../src/discovery/Consul.js"
import { advance, parseIndex, rateLimitDelay } from "../src/discovery/ConsulIndex.js"
import { type ConsulService, mergeRegistry, RegistryMerger, sameJson } from "../src/discovery/Merge.js"
import { RegistrationStore } from "../src/discovery/RegistrationStore.js"
import { fromConfig } from "../src/MeshState.js"
import { bearer, post, post as postWithToken, request, startAdmin } from "./support/admin.js"
import { eventually } from "./support/eventually.js"

const decode = (value: Record<string, unknown>): MeshConfig =>
  Either.getOrThrowWith(decodeConfig({ mesh: { name: "unit" }, ...value }, "test"), (error) => new Error(error.message))

describe("Consul index rules", () => {
  it("advances, resets when the index goes backwards or is missing, and never uses zero", () => {
    assert.deepStrictEqual(advance(0n, 5n), { next: 5n, changed: true, reset: false })
    assert.deepStrictEqual(advance(5n, 5n), { next: 5n, changed: false, reset: false })
    assert.deepStrictEqual(advance(5n, 9n), { next: 9n, changed: true, reset: false })
    assert.deepStrictEqual(advance(9n, 3n), { next: 0n, changed: true, reset: true })
    assert.deepStrictEqual(advance(9n, undefined), { next: 0n, changed: true, reset: true })
    assert.deepStrictEqual(advance(0n, 0n), { next: 1n, changed: true, reset: false })
    assert.deepStrictEqual(advance(1n, 0n).next, 1n)
  })

  it("parses X-Consul-Index and rate-limits rapid returns", () => {
    assert.strictEqual(parseIndex("42"), 42n)
    assert.strictEqual(parseIndex(["7"]), 7n)
    assert.isUndefined(parseIndex("abc"))
    assert.isUndefined(parseIndex(undefined))
    assert.strictEqual(rateLimitDelay(1000, 1010, 50), 40)
    assert.strictEqual(rateLimitDelay(1000, 2000, 50), 0)
  })
})

describe("comparing published registries", () => {
  it("sameJson says what comparing the JSON says, without serialising", () => {
    const endpoint = { address: "10.0.0.1", port: 80, weight: 1, labels: { a: "1" }, health: "unknown" }
    const pairs: ReadonlyArray<readonly [unknown, unknown]> = [
      [{ ...endpoint }, { ...endpoint }],
      [{ ...endpoint, labels: { a: "1", b: "2" } }, { ...endpoint, labels: { b: "2", a: "1" } }],
      [{ ...endpoint, health: undefined }, { address: "10.0.0.1", port: 80, weight: 1, labels: { a: "1" } }],
      [[endpoint, endpoint], [endpoint]],
      [[endpoint], [{ ...endpoint, port: 81 }]],
      [{ interval: Duration.seconds(5) }, { interval: Duration.seconds(5) }],
      [{ interval: Duration.seconds(5) }, { interval: Duration.seconds(6) }],
      [[], {}],
      [null, {}],
      [1, "1"]
    ]
    for (const [a, b] of pairs) assert.strictEqual(sameJson(a, b), JSON.stringify(a) === JSON.stringify(b))
  })
})

describe("merge precedence: config > API > Consul", () => {
  const config = fromConfig(decode({
    services: [{ name: "echo", protocol: "grpc", port: 50051, endpoints: [{ address: "10.0.0.1", weight: 7 }] }]
  })).services
  const consul: ReadonlyMap<string, ConsulService> = new Map([
    ["echo", {
      name: "echo",
      instances: [
        {
          id: "a",
          address: "10.0.0.1",
          port: 50051,
          weight: 1,
          tags: [],
          meta: { protocol: "http" },
          health: "unhealthy"
        },
        { id: "b", address: "10.0.0.3", port: 50051, weight: 2, tags: [], meta: {}, health: "healthy" }
      ]
    }],
    ["only-consul", {
      name: "only-consul",
      instances: [{ id: "c", address: "10.9.0.1", port: 9000, weight: 1, tags: ["tcp"], meta: {}, health: "healthy" }]
    }],
    ["empty", { name: "empty", instances: [] }]
  ])

  it("keeps the file's service attributes and endpoint entries; unions endpoints", () => {
    const merged = mergeRegistry(config, [
      { service: "echo", address: "10.0.0.1", port: 50051, weight: 3, labels: {} },
      { service: "echo", address: "10.0.0.2", port: 50051, weight: 4, labels: { v: "2" }, protocol: "tcp" }
    ], consul)
    const echo = merged.find((s) => s.name === "echo")!
    assert.strictEqual(echo.source, "config")
    assert.strictEqual(echo.protocol, "grpc")
    assert.deepStrictEqual(echo.endpoints.map((e) => [e.address, e.source, e.weight, e.health]), [
      ["10.0.0.1", "config", 7, "unknown"],
      ["10.0.0.2", "api", 4, "unknown"],
      ["10.0.0.3", "consul", 2, "healthy"]
    ])
  })

  it("a service only Consul knows takes its protocol from meta or tags; one with no instances is left out", () => {
    const merged = mergeRegistry([], [], consul)
    assert.deepStrictEqual(merged.map((s) => [s.name, s.source, s.protocol, s.port]), [
      ["echo", "consul", "http", 50051],
      ["only-consul", "consul", "tcp", 9000]
    ])
  })

  it("the merger across publishes gives what merging every source again gives", () => {
    const store = new RegistrationStore()
    const merger = new RegistryMerger()
    // A fixed pseudo-random sequence: mostly new endpoints (the merger's fast path), some on the
    // config's and Consul's addresses, some replaced or removed (merged again from the sources).
    let seed = 7
    const next = (n: number) => (seed = (seed * 1103515245 + 12345) % 2147483648) % n
    for (let step = 0; step < 400; step++) {
      const service = ["echo", "new", "only-consul"][next(3)]!
      const address = `10.0.0.${next(6)}`
      const port = [50051, 9000][next(2)]!
      if (next(10) === 0) store.remove(service, `${address}:${port}`)
      else store.add({ service, address, port, weight: 1 + next(3), labels: {} }, undefined, () => true)
      if (next(3) > 0) continue
      const merged = merger.merge(config, (s) => store.forService(s), store.serviceNames(), store.takeChanged(), consul)
      assert.deepStrictEqual(merged, mergeRegistry(config, store.all(), consul), `step ${step}`)
    }
  })

  it("an API registration creates a service the file does not define", () => {
    const merged = mergeRegistry(config, [{
      service: "new",
      address: "10.5.0.1",
      port: 81,
      weight: 1,
      labels: {},
      protocol: "tcp"
    }], new Map())
    const created = merged.find((s) => s.name === "new")!
    assert.deepStrictEqual([created.source, created.protocol, created.port], ["api", "tcp", 81])
  })
})

describe("Consul mapping", () => {
  it("maps /v1/health/service entries: service address over node address, worst check, weights", () => {
    const decoded = decodeHealthService("web", [
      {
        Node: { Node: "n1", Address: "10.0.0.9" },
        Service: {
          ID: "web-1",
          Service: "web",
          Address: "",
          Port: 80,
          Tags: null,
          Meta: null,
          Weights: { Passing: 5, Warning: 1 }
        },
        Checks: [{ Status: "passing" }, { Status: "passing" }]
      },
      {
        Node: { Node: "n2", Address: "10.0.0.8" },
        Service: {
          ID: "web-2",
          Service: "web",
          Address: "10.1.0.2",
          Port: 81,
          Tags: ["a"],
          Meta: { k: "v" },
          Weights: { Passing: 5, Warning: 1 }
        },
        Checks: [{ Status: "passing" }, { Status: "warning" }]
      },
      {
        Node: { Node: "n3", Address: "10.0.0.7" },
        Service: { ID: "web-3", Service: "web", Port: 82 },
        Checks: [{ Status: "critical" }]
      }
    ])
    const web = Either.getOrThrow(decoded)
    assert.deepStrictEqual(web.instances.map((i) => [i.address, i.port, i.weight, i.health]), [
      ["10.0.0.9", 80, 5, "healthy"],
      ["10.1.0.2", 81, 1, "healthy"],
      ["10.0.0.7", 82, 1, "unhealthy"]
    ])
    assert.isTrue(Either.isLeft(decodeHealthService("web", { not: "an array" })))
    assert.deepStrictEqual(
      Either.getOrThrow(decodeCatalogServices({ consul: [], web: [], "Bad_Name": [], api: ["x"] })),
      {
        names: ["api", "web"],
        ignored: ["Bad_Name"]
      }
    )
  })

  it("builds registrations per endpoint of `register`ed services, with the configured check mode", () => {
    const config = decode({
      discovery: { consul: { registration: "consul", antiEntropyInterval: "10s" } },
      services: [
        {
          name: "api",
          port: 8080,
          register: true,
          endpoints: [{ address: "127.0.0.1" }, { address: "127.0.0.1", port: 8081 }],
          healthCheck: { type: "http", path: "/ready" }
        },
        { name: "worker", port: 9000, register: { check: "ttl" }, endpoints: [{ address: "127.0.0.1" }] },
        { name: "elsewhere", port: 7000, endpoints: [{ address: "10.0.0.1" }] }
      ]
    })
    const registrations = registrationsOf(config)
    assert.deepStrictEqual(registrations.map((r) => [r.id, r.check?.kind]), [
      ["mesh-api-127.0.0.1-8080", "http"],
      ["mesh-api-127.0.0.1-8081", "http"],
      ["mesh-worker-127.0.0.1-9000", "ttl"]
    ])
    const http = registerOptions(registrations[0]!)
    expect(http.check).toMatchObject({ http: "http://127.0.0.1:8080/ready", interval: "10000ms", timeout: "1000ms" })
    expect(registerOptions(registrations[2]!).check).toMatchObject({ ttl: "30000ms" })
    assert.deepStrictEqual(
      registrationsOf(decode({ services: [{ name: "x", port: 1, register: true }] })),
      [],
      "no Consul: nothing to register"
    )
    const labelled = registrationsOf(decode({
      discovery: { consul: {} },
      services: [{
        name: "y",
        port: 1,
        register: true,
        metadata: { "app.kubernetes.io/name": "y", team: "core", "consul-x": "1" },
        endpoints: [{ address: "10.0.0.1" }]
      }]
    }))
    assert.deepStrictEqual(
      labelled[0]!.meta,
      { "mesh-controller": "unit", protocol: "http", team: "core" },
      "meta Consul would refuse is left out"
    )
  })
})

describe("embedded registry and the registration API", () => {
  const initial = decode({ services: [{ name: "echo", port: 50051, endpoints: [{ address: "10.0.0.1" }] }] })

  it.scoped("with IP addresses only, no timer runs: a day of TestClock passes at once and changes nothing", () =>
    Effect.gen(function*() {
      const context = yield* Layer.build(Discovery.layerEmbedded.pipe(Layer.provide(LiveConfig.layerMemory(initial))))
      const discovery = Context.get(context, Discovery)
      const before = yield* discovery.services
      yield* TestClock.adjust("24 hours")
      assert.strictEqual(yield* discovery.services, before)
    }))

  // The real admin server; "fresh" is not in the config, so this one may create services.
  const serve = startAdmin(decode({
    controller: { admin: { registration: { createServices: true } } },
    services: [{ name: "echo", port: 50051, endpoints: [{ address: "10.0.0.1" }] }]
  }))
  const withToken = (token: string, init: RequestInit = {}): RequestInit => ({
    ...init,
    headers: { ...init.headers, ...bearer(token) }
  })

  it.scopedLive("POST adds an endpoint, GET lists it, DELETE removes it; registrations survive a config reload", () =>
    Effect.gen(function*() {
      const { base, config, discovery, token } = yield* serve
      const created = yield* post(`${base}/v1/services/echo/endpoints`, {
        address: "10.0.0.2",
        port: 50052,
        weight: 3,
        labels: { zone: "b" }
      }, token)
      assert.strictEqual(created.status, 201)
      assert.strictEqual(created.body?.["endpoint"], "10.0.0.2:50052")
      assert.strictEqual(
        (yield* post(`${base}/v1/services/fresh/endpoints`, { address: "10.7.0.1", port: 80, protocol: "tcp" }, token))
          .status,
        201
      )

      // Publishes are coalesced: the listing shows a registration shortly after its 201.
      const services = yield* eventually(Effect.flatMap(request(`${base}/v1/services`), (listed) => {
        const all = listed.body?.["services"] as ReadonlyArray<
          { name: string; source: string; endpoints: ReadonlyArray<{ address: string; source: string }> }
        >
        return all.length === 2 ? Effect.succeed(all) : Effect.fail(all)
      }))
      assert.deepStrictEqual(
        services.map((s) => [s.name, s.source, s.endpoints.map((e) => `${e.address}/${e.source}`)]),
        [
          ["echo", "config", ["10.0.0.1/config", "10.0.0.2/api"]],
          ["fresh", "api", ["10.7.0.1/api"]]
        ]
      )

      // A reload replaces the file's part only.
      yield* config.apply(
        decode({ services: [{ name: "echo", port: 50051, endpoints: [{ address: "10.0.0.9" }] }] }),
        "reload"
      )
      const after = yield* eventually(Effect.flatMap(discovery.services, (services) => {
        const addresses = services.find((s) => s.name === "echo")?.endpoints.map((e) => e.address)
        return JSON.stringify(addresses) === JSON.stringify(["10.0.0.2", "10.0.0.9"])
          ? Effect.succeed(services)
          : Effect.fail(addresses)
      }))
      assert.isDefined(after.find((s) => s.name === "fresh"))

      const removed = yield* request(
        `${base}/v1/services/echo/endpoints/10.0.0.2/50052`,
        withToken(token, { method: "DELETE" })
      )
      assert.strictEqual(removed.status, 204)
      const again = yield* request(
        `${base}/v1/services/echo/endpoints/10.0.0.2/50052`,
        withToken(token, { method: "DELETE" })
      )
      assert.strictEqual(again.status, 404)
      const configOwned = yield* request(
        `${base}/v1/services/echo/endpoints/10.0.0.9/50051`,
        withToken(token, { method: "DELETE" })
      )
      assert.strictEqual(configOwned.status, 404, "the API cannot remove what the file defines")
      yield* eventually(Effect.flatMap(discovery.services, (all) => {
        const addresses = all.find((s) => s.name === "echo")?.endpoints.map((e) => e.address)
        return JSON.stringify(addresses) === JSON.stringify(["10.0.0.9"]) ? Effect.void : Effect.fail(addresses)
      }))
    }))

  it.scopedLive("bad requests get 400 with a message that names the field", () =>
    Effect.gen(function*() {
      const { base, token } = yield* serve
      const post = (url: string, body: unknown) => postWithToken(url, body, token)
      const badPort = yield* post(`${base}/v1/services/echo/endpoints`, { address: "10.0.0.2", port: 70000 })
      assert.strictEqual(badPort.status, 400)
      expect(String(badPort.body?.["message"])).toMatch(/^body: port: expected a port number/)
      const badName = yield* post(`${base}/v1/services/Not_A_Name/endpoints`, { address: "10.0.0.2", port: 80 })
      assert.strictEqual(badName.status, 400)
      expect(String(badName.body?.["message"])).toMatch(/^path: name: expected a service name/)
      const unknownField = yield* post(`${base}/v1/services/echo/endpoints`, {
        address: "10.0.0.2",
        port: 80,
        colour: "red"
      })
      assert.strictEqual(unknownField.status, 400)
      expect(String(unknownField.body?.["message"])).toMatch(/colour/)
      const notJson = yield* request(`${base}/v1/services/echo/endpoints`, {
        method: "POST",
        body: "{",
        headers: { "content-type": "application/json", ...bearer(token) }
      })
      assert.strictEqual(notJson.status, 400)
      const badAddress = yield* post(`${base}/v1/services/echo/endpoints`, { address: "not an address!", port: 80 })
      assert.strictEqual(badAddress.status, 400)
      expect(String(badAddress.body?.["message"])).toMatch(/address: expected an IP address or a host name/)
    }))
})
