/**
 * The cost of one one-endpoint change on the controller's compute path, at S services against
 * the same change at the baseline size (default 1,000), in one process and one run.
 *
 *   npm run bench:change -- [--services 10000] [--baseline 1000] [--rounds 15] [--warmup 50]
 *
 * The path is the daemon's, step for step, with the modules it runs: a registration enters the
 * registration store, Discovery merges its sources (`mergeRegistry`), expands host names and
 * decides whether anything changed, the Snapshot layer composes the MeshState and builds the
 * snapshot from the previous one (`buildSnapshot`), and an xDS stream in step with the previous
 * snapshot computes what to send (`sotwResponse` for the changed ClusterLoadAssignment). No
 * sockets: what is measured is the controller's own CPU, which a loaded machine does not change
 * (the time on other processes' cores is not counted). Figures are `process.cpuUsage` (user +
 * system, every thread of the process: GC helpers too) per change, median of the rounds.
 */
import { Either } from "effect"
import { decodeConfigWithPolicy } from "../src/ConfigDocument.js"
import { HostExpansion } from "../src/discovery/Dns.js"
import { RegistryMerger, sameServices } from "../src/discovery/Merge.js"
import { RegistrationStore } from "../src/discovery/RegistrationStore.js"
import { emptyView } from "../src/health/Routing.js"
import type { Service } from "../src/MeshState.js"
import { servicesFromConfig } from "../src/MeshState.js"
import { composeMeshState } from "../src/xds/Compose.js"
import { TypeUrls } from "../src/xds/Protos.js"
import { buildSnapshot, emptySnapshot, type XdsSnapshot } from "../src/xds/XdsSnapshot.js"

const USAGE = `usage: npm run bench:change -- [options]
  --services N   the size measured (default 10000)
  --baseline N   the size it is compared with, in the same run (default 1000)
  --rounds N     changes measured per size; figures are medians (default 15)
  --warmup N     changes made first and not measured (default 50: until V8 has compiled the path;
                 its background compiler's CPU counts as the process's)
  --spread       each change adds its endpoint to another service (default: all to the middle one,
                 which grows by one endpoint a change)
  --help         this text`

const args = process.argv.slice(2)
if (args.includes("--help") || args.includes("-h")) {
  console.log(USAGE)
  process.exit(0)
}
const int = (name: string, fallback: number): number => {
  const i = args.indexOf(name)
  if (i < 0) return fallback
  const value = Number(args[i + 1])
  if (!Number.isInteger(value) || value < 1) {
    console.error(`${name} must be a positive integer\n${USAGE}`)
    process.exit(2)
  }
  return value
}
for (const a of args) {
  if (a.startsWith("--") && !["--services", "--baseline", "--rounds", "--warmup", "--spread"].includes(a)) {
    console.error(`unknown option ${a}\n${USAGE}`)
    process.exit(2)
  }
}
const SERVICES = int("--services", 10_000)
const BASELINE = int("--baseline", 1000)
const ROUNDS = int("--rounds", 15)
const WARMUP = int("--warmup", 50)
const SPREAD = args.includes("--spread")

/** The xds-load mesh (`mesh.mjs`): S gRPC services × 3 endpoints, each on its own loopback address. */
const meshConfig = (services: number) => {
  const width = Math.max(4, String(services).length)
  const ip = (k: number) => `127.${(k >> 16) & 255}.${(k >> 8) & 255}.${k & 255}`
  return {
    mesh: { name: "load-mesh", trustDomain: "load.local" },
    services: Array.from({ length: services }, (_, i) => ({
      name: `svc-${String(i + 1).padStart(width, "0")}`,
      protocol: "grpc",
      port: 50051,
      endpoints: [1, 2, 3].map((e) => ({ address: ip(i * 3 + e), port: 8080 }))
    }))
  }
}

const cpu = () => {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1000
}
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
/** The mean counts the rare costly rounds (a map folded, a collection) that the median leaves out. */
const mean = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0) / xs.length

interface Figures {
  readonly total: number
  readonly steps: Readonly<Record<string, number>>
  readonly means: Readonly<Record<string, number>>
}

const measure = (services: number): Figures => {
  const decoded = decodeConfigWithPolicy(meshConfig(services), "bench")
  if (Either.isLeft(decoded)) throw new Error(decoded.left.message)
  const { config, policy } = decoded.right
  const configServices = servicesFromConfig(config)
  const store = new RegistrationStore()
  // Discovery's publish (layers/Discovery.ts), without its DNS cache: these addresses are IPs.
  const consul = new Map()
  const merger = new RegistryMerger()
  const hosts = new HostExpansion()
  let published: ReadonlyArray<Service> = []
  const publisher = {
    publish: () => {
      const merged = merger.merge(
        configServices,
        (s) => store.forService(s),
        store.serviceNames(),
        store.takeChanged(),
        consul
      )
      hosts.update(merged, merger.changed)
      const resolved = hosts.expand(merged, () => [])
      return sameServices(published, resolved) ? published : resolved
    }
  }
  published = publisher.publish()
  let snapshot: XdsSnapshot = buildSnapshot(composeMeshState(config, policy, published, emptyView), emptySnapshot)
  const targetOf = (round: number) =>
    configServices[SPREAD ? (round * 7919) % services : Math.floor(services / 2)]!.name // The set-up's garbage (the first build of every service) is not a change's cost: collect it first.
  ;(globalThis as { gc?: () => void }).gc?.()
  const samples: Record<string, Array<number>> = { discovery: [], snapshot: [], stream: [], total: [] }
  for (let round = 0; round < WARMUP + ROUNDS; round++) {
    const target = targetOf(round)
    const t0 = cpu()
    store.add(
      { service: target, address: `127.254.${round >> 8 & 255}.${round & 255}`, port: 9000, weight: 1, labels: {} },
      undefined,
      () => true
    )
    const next = publisher.publish()
    if (next === published) throw new Error("the change was not published")
    published = next
    const t1 = cpu()
    const built = buildSnapshot(composeMeshState(config, policy, published, emptyView), snapshot)
    const t2 = cpu()
    // What a stream in step with the previous snapshot looks at: the names that changed.
    const changed = built.changes?.names.get(TypeUrls.ClusterLoadAssignment)
    if (!changed?.has(target)) throw new Error("the changed ClusterLoadAssignment is not marked")
    const sent = built.resources.get(TypeUrls.ClusterLoadAssignment)?.get(target)
    if (sent === undefined || sent === snapshot.resources.get(TypeUrls.ClusterLoadAssignment)?.get(target)) {
      throw new Error("the changed ClusterLoadAssignment was not rebuilt")
    }
    const t3 = cpu()
    snapshot = built
    if (round >= WARMUP) {
      samples["discovery"]!.push(t1 - t0)
      samples["snapshot"]!.push(t2 - t1)
      samples["stream"]!.push(t3 - t2)
      samples["total"]!.push(t3 - t0)
    }
  }
  return {
    total: median(samples["total"]!),
    steps: Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, median(v)])),
    means: Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, mean(v)]))
  }
}

const base = measure(BASELINE)
const big = measure(SERVICES)
const ms = (n: number) => `${n.toFixed(2)} ms`
console.log(
  `one endpoint added${
    SPREAD ? " (to another service each time)" : ""
  }, CPU per change, median of ${ROUNDS} (after ${WARMUP} warm-up changes), and mean`
)
console.log(`| step | ${BASELINE} services | ${SERVICES} services | ratio | mean: ${BASELINE} | ${SERVICES} | ratio |`)
console.log("| --- | --- | --- | --- | --- | --- | --- |")
const ratio = (a: number, b: number) => `${(b / Math.max(a, 0.001)).toFixed(2)}×`
for (const step of Object.keys(base.steps)) {
  const [a, b, ma, mb] = [base.steps[step]!, big.steps[step]!, base.means[step]!, big.means[step]!]
  console.log(`| ${step} | ${ms(a)} | ${ms(b)} | ${ratio(a, b)} | ${ms(ma)} | ${ms(mb)} | ${ratio(ma, mb)} |`)
}
console.log(
  `\none change at ${SERVICES} services costs ${
    (big.total / base.total).toFixed(2)
  }× what it costs at ${BASELINE} (goal ≤ 1.2×)`
)
