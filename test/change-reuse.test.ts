/**
 * A one-endpoint change reworks one service, not the registry: what the rest of the path sees of
 * the unchanged services is the very same objects (Discovery's Service values, the snapshot's
 * encoded resources and their versions), and the snapshot built from the previous one equals one
 * built from nothing (same resources, same version). Identity is what keeps the change from being
 * an O(services) step (bench/change.ts measures the cost); these tests pin it, not a timing.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Either, Layer, Stream } from "effect"
import { Discovery } from "../layers/Discovery.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { decodeConfigWithPolicy } from "../src/ConfigDocument.js"
import { RegistryMerger, sameServices } from "../src/discovery/Merge.js"
import { RegistrationStore } from "../src/discovery/RegistrationStore.js"
import { emptyView } from "../src/health/Routing.js"
import { changedSince, type EndpointHealth, type Service, servicesFromConfig } from "../src/MeshState.js"
import { composeMeshState } from "../src/xds/Compose.js"
import { LayeredMap } from "../src/xds/LayeredMap.js"
import { TypeUrls } from "../src/xds/Protos.js"
import { buildSnapshot, type XdsSnapshot } from "../src/xds/XdsSnapshot.js"

const checked = (services: number) =>
  Either.getOrThrowWith(
    decodeConfigWithPolicy({
      mesh: { name: "unit", trustDomain: "unit.local" },
      services: Array.from({ length: services }, (_, i) => ({
        name: `svc-${i}`,
        protocol: "grpc",
        port: 50051,
        endpoints: [{ address: `10.0.${i}.1`, port: 8080 }, { address: `10.0.${i}.2`, port: 8080 }]
      }))
    }, "test"),
    (error) => new Error(error.message)
  )

const names = (snapshot: XdsSnapshot) =>
  [...snapshot.resources].map(([url, byName]) => [url, [...byName].map(([n, r]) => `${n}@${r.version}`).sort()])

describe("a one-endpoint change keeps the unchanged services by identity", () => {
  it.scoped("Discovery: a registration republishes one new Service; every other is the same object", () =>
    Effect.gen(function*() {
      const { config } = checked(50)
      const context = yield* Layer.build(Discovery.layerEmbedded.pipe(Layer.provide(LiveConfig.layerMemory(config))))
      const discovery = Context.get(context, Discovery)
      const before = yield* discovery.services
      yield* discovery.register({ service: "svc-7", address: "10.9.9.9", port: 8080, weight: 1, labels: {} })
      const after = yield* discovery.changes.pipe(
        Stream.filter((services) => services !== before),
        Stream.runHead,
        Effect.flatten
      )
      assert.strictEqual(after.length, before.length)
      const changed = after.filter((s, i) => s !== before[i]).map((s) => s.name)
      assert.deepStrictEqual(changed, ["svc-7"])
      assert.deepStrictEqual(after.find((s) => s.name === "svc-7")?.endpoints.map((e) => `${e.address}/${e.source}`), [
        "10.0.7.1/config",
        "10.0.7.2/config",
        "10.9.9.9/api"
      ])
    }))

  it("Snapshot: unchanged services keep their encoded resources (same objects, same versions); the result equals a fresh build", () => {
    const { config, policy } = checked(40)
    const state = (services: ReadonlyArray<Service>) => composeMeshState(config, policy, services, emptyView)
    // The registry's way: one new Service object, every other kept.
    const base = servicesFromConfig(config)
    const target = base[12]!
    const next = base.map((s) =>
      s === target ? { ...s, endpoints: [...s.endpoints, { ...s.endpoints[0]!, address: "10.9.9.9" }] } : s
    )
    const from = buildSnapshot(state(base))
    const incremental = buildSnapshot(state(next), from)
    const eds = (s: XdsSnapshot, name: string) => s.resources.get(TypeUrls.ClusterLoadAssignment)?.get(name)
    for (const service of base) {
      if (service === target) continue
      assert.strictEqual(eds(incremental, service.name), eds(from, service.name), service.name)
      assert.strictEqual(incremental.groups.get(service.name), from.groups.get(service.name))
    }
    assert.notStrictEqual(eds(incremental, target.name)?.version, eds(from, target.name)?.version)
    assert.deepStrictEqual(
      [...incremental.changes!.names.get(TypeUrls.ClusterLoadAssignment)!],
      [target.name]
    )
    const fresh = buildSnapshot(state(next))
    assert.strictEqual(incremental.version, fresh.version)
    assert.deepStrictEqual(names(incremental), names(fresh))
    assert.deepStrictEqual([...incremental.availability].sort(), [...fresh.availability].sort())
    // Back to the first registry: the first version again (versions are content hashes).
    assert.strictEqual(buildSnapshot(state(base), incremental).version, from.version)
  })

  it("the merger names the services it replaced: comparisons and rebuilds that look at those alone agree with whole ones", () => {
    const { config, policy } = checked(30)
    const state = (services: ReadonlyArray<Service>) => composeMeshState(config, policy, services, emptyView)
    const configServices = servicesFromConfig(config)
    const store = new RegistrationStore()
    const merger = new RegistryMerger()
    const consul = new Map()
    const merge = () =>
      merger.merge(configServices, (s) => store.forService(s), store.serviceNames(), store.takeChanged(), consul)
    const register = (service: string, address: string, weight = 1) =>
      store.add({ service, address, port: 8080, weight, labels: {} }, undefined, () => true)
    let services = merge()
    let snapshot = buildSnapshot(state(services))
    const steps: ReadonlyArray<readonly [string, () => unknown]> = [
      ["an endpoint added", () => register("svc-3", "10.9.9.1")],
      ["two services at once", () => (register("svc-4", "10.9.9.2"), register("svc-20", "10.9.9.3"))],
      ["a registration replaced", () => register("svc-3", "10.9.9.1", 5)],
      ["the same registration again", () => register("svc-3", "10.9.9.1", 5)],
      ["a service only the API knows", () => register("zzz-new", "10.9.9.4")],
      ["its endpoint added to", () => register("zzz-new", "10.9.9.5")],
      ["it leaves", () => (store.remove("zzz-new", "10.9.9.4:8080"), store.remove("zzz-new", "10.9.9.5:8080"))],
      ["an API endpoint removed", () => store.remove("svc-4", "10.9.9.2:8080")]
    ]
    for (const [step, change] of steps) {
      change()
      const next = merge()
      const differing = new Set<string>()
      for (const s of next) if (services.find((b) => b.name === s.name) !== s) differing.add(s.name)
      for (const b of services) if (!next.some((s) => s.name === b.name)) differing.add(b.name)
      const named = changedSince(services, next)
      assert.isDefined(named, step)
      for (const name of differing) assert.isTrue(named!.has(name), `${step}: ${name}`)
      const whole = services.length === next.length &&
        services.every((s, i) => JSON.stringify(s) === JSON.stringify(next[i]))
      assert.strictEqual(sameServices(services, next), whole, step)
      const incremental = buildSnapshot(state(next), snapshot)
      const fresh = buildSnapshot(state(next))
      assert.strictEqual(incremental.version, fresh.version, step)
      assert.deepStrictEqual(names(incremental), names(fresh), step)
      assert.deepStrictEqual([...incremental.availability].sort(), [...fresh.availability].sort(), step)
      services = next
      snapshot = incremental
    }
    // Several publishes apart (a debounced rebuild sees only the last): the names add up.
    const first = services
    register("svc-1", "10.9.9.6")
    merge()
    register("svc-2", "10.9.9.7")
    const last = merge()
    assert.deepStrictEqual([...changedSince(first, last)!].sort(), ["svc-1", "svc-2"])
    const incremental = buildSnapshot(state(last), snapshot)
    assert.strictEqual(incremental.version, buildSnapshot(state(last)).version)
  })

  it("with endpoint health in the view, the composed services still name what changed; the build equals a fresh one", () => {
    const { config, policy } = checked(30)
    const store = new RegistrationStore()
    const merger = new RegistryMerger()
    const consul = new Map()
    const configServices = servicesFromConfig(config)
    const merge = () =>
      merger.merge(
        configServices,
        (s) => store.forService(s),
        store.serviceNames(),
        store.takeChanged(),
        consul
      )
    const view = new Map<string, ReadonlyMap<string, EndpointHealth>>([
      ["svc-3", new Map([["10.0.3.1:8080", "unhealthy"]])],
      ["svc-7", new Map([["10.0.7.2:8080", "healthy"]])]
    ])
    const first = composeMeshState(config, policy, merge(), view)
    const from = buildSnapshot(first)
    store.add({ service: "svc-7", address: "10.9.9.9", port: 8080, weight: 1, labels: {} }, undefined, () => true)
    const second = composeMeshState(config, policy, merge(), view)
    assert.deepStrictEqual([...changedSince(first.services, second.services)!], ["svc-7"])
    assert.strictEqual(second.services.find((s) => s.name === "svc-3"), first.services.find((s) => s.name === "svc-3"))
    const incremental = buildSnapshot(second, from)
    const fresh = buildSnapshot(second)
    assert.strictEqual(incremental.version, fresh.version)
    assert.deepStrictEqual(names(incremental), names(fresh))
    assert.deepStrictEqual([...incremental.changes!.names.get(TypeUrls.ClusterLoadAssignment)!], ["svc-7"])
  })

  it("LayeredMap: changes over a shared base read as a plain map, and the base never changes", () => {
    const base = new Map([["a", 1], ["b", 2], ["c", 3]])
    const one = LayeredMap.of(base).with([["b", 20], ["d", 4], ["a", undefined]])
    assert.deepStrictEqual([...one], [["b", 20], ["c", 3], ["d", 4]])
    assert.strictEqual(one.size, 3)
    assert.isFalse(one.has("a"))
    const two = one.with([["a", 10], ["d", undefined], ["d", 40]])
    assert.deepStrictEqual([...two].sort(), [["a", 10], ["b", 20], ["c", 3], ["d", 40]])
    assert.strictEqual(two.size, 4)
    assert.deepStrictEqual([...one], [["b", 20], ["c", 3], ["d", 4]])
    assert.deepStrictEqual([...base], [["a", 1], ["b", 2], ["c", 3]])
    // Past its bound the layer is folded into a new base: the content is the same.
    let many = LayeredMap.of(new Map<string, number>())
    for (let i = 0; i < 2000; i++) many = many.with([[`k${i % 700}`, i]])
    assert.strictEqual(many.size, 700)
    assert.strictEqual(many.get("k5"), 1405)
    assert.deepStrictEqual([...many.keys()], Array.from({ length: 700 }, (_, i) => `k${i}`), "folding keeps the order")
    // Every earlier map keeps reading what it read, and a map made from an earlier one (a branch)
    // does not change the later ones.
    const big = LayeredMap.of(new Map<string, number>(Array.from({ length: 2000 }, (_, i) => [`k${i}`, i])))
    const versions = [big]
    for (let i = 0; i < 300; i++) versions.push(versions[versions.length - 1]!.with([[`k${i % 7}`, 10_000 + i]]))
    const branch = versions[100]!.with([["k1", -1], ["k2", undefined], ["new", 5]])
    versions.forEach((v, n) => {
      for (let k = 0; k < 7; k++) {
        const last = [...Array(n).keys()].filter((i) => i % 7 === k).pop()
        assert.strictEqual(v.get(`k${k}`), last === undefined ? k : 10_000 + last, `version ${n}, k${k}`)
      }
      assert.strictEqual(v.size, 2000)
    })
    assert.deepStrictEqual([branch.get("k1"), branch.has("k2"), branch.get("new"), branch.get("k3"), branch.size], [
      -1,
      false,
      5,
      10_000 + 94,
      2000
    ])
    assert.deepStrictEqual([...branch.with([["k2", 2]])].length, 2001)
    assert.strictEqual(versions[300]!.get("k1"), 10_000 + 295)
    assert.isFalse(versions[300]!.has("new"))
  })
})
