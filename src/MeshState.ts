import type { HealthCheck, Mesh, MeshConfig, Protocol } from "../schemas/Config.js"
import { type CompiledPolicy, compileUnchecked } from "./policy/Compile.js"

/** What the controller currently believes about one endpoint's health. */
export type EndpointHealth = "healthy" | "unhealthy" | "unknown"

/** Where a service or endpoint came from (see the README for precedence). */
export type RegistrySource = "config" | "api" | "consul"

export interface Endpoint {
  /** An IP address once it reaches the snapshot builder (host names are resolved before). */
  readonly address: string
  readonly port: number
  readonly weight: number
  readonly labels: Readonly<Record<string, string>>
  readonly health: EndpointHealth
  readonly source: RegistrySource
}

export interface Service {
  readonly name: string
  readonly protocol: Protocol
  readonly port: number
  readonly endpoints: ReadonlyArray<Endpoint>
  readonly failMode: "open" | "closed"
  /** Absent: the endpoints are not probed and their health stays "unknown". */
  readonly healthCheck?: HealthCheck
  readonly tags: ReadonlyArray<string>
  readonly metadata: Readonly<Record<string, string>>
  readonly source: RegistrySource
}

/**
 * Everything the xDS resources are computed from, as one immutable value. Nothing reaches the
 * snapshot builder except through this.
 */
export interface MeshState {
  readonly mesh: Mesh
  /** Sorted by name, so equal states build byte-identical resources. */
  readonly services: ReadonlyArray<Service>
  /** The policy in force, compiled once per config (the Policy layer's); the builder never compiles. */
  readonly policy: CompiledPolicy
  /**
   * SDS secrets (workload certificates, trust bundles) to serve as Envoy `Secret` resources, keyed
   * by resource name. Absent: none. The Certificates layer fills this; the snapshot builder encodes
   * each as `envoy.extensions.transport_sockets.tls.v3.Secret` (the object must omit `name`).
   */
  readonly secrets?: ReadonlyMap<string, Readonly<Record<string, unknown>>>
  /**
   * Sidecars can be given their own private keys over SDS: the xDS server verifies their identity
   * (`controller.xds.tls: mtls`) or, by explicit opt-in, trusts their node ids. Sidecar mTLS is
   * configured only then: a listener or cluster naming a secret its sidecar may not read never warms.
   */
  readonly sidecarKeys?: boolean
}

export { endpointKey } from "../schemas/Endpoint.js"

const sortedArrays = new WeakSet<ReadonlyArray<Service>>()

/** Marks `services` as sorted by name (built so, as the registry's merge builds them): `sortedByName` trusts it. */
export const markSortedByName = <A extends ReadonlyArray<Service>>(services: A): A => {
  sortedArrays.add(services)
  return services
}

/**
 * `services` sorted by name: the array itself when it is known sorted, or found so (a scan, not a
 * copy). The registry publishes sorted arrays, so a change costs no scan of every service.
 */
export const sortedByName = (services: ReadonlyArray<Service>): ReadonlyArray<Service> => {
  if (sortedArrays.has(services)) return services
  for (let i = 1; i < services.length; i++) {
    if (services[i - 1]!.name > services[i]!.name) return markSortedByName([...services].sort(byName))
  }
  return markSortedByName(services)
}

/**
 * How published registries were made from earlier ones: each marked array gets a number, and the
 * last `RECENT` steps are kept (number → the earlier array's number and the names that differ). No
 * reference to an earlier array is held: a chain of registries keeps nothing alive.
 */
const ids = new WeakMap<ReadonlyArray<Service>, number>()
const steps = new Map<number, { readonly from: number; readonly changed: ReadonlySet<string> }>()
const RECENT = 64
let lastId = 0
const NOTHING: ReadonlySet<string> = new Set()

const idOf = (services: ReadonlyArray<Service>): number => {
  let id = ids.get(services)
  if (id === undefined) ids.set(services, id = ++lastId)
  return id
}

/**
 * Records that `next` is `from` with only the services named in `changed` added, removed or
 * replaced (every other element the same object, in the same order): `changedSince` then answers
 * in O(changed) what a scan of every service would.
 */
export const markDerived = <A extends ReadonlyArray<Service>>(
  next: A,
  from: ReadonlyArray<Service>,
  changed: ReadonlySet<string>
): A => {
  if (next === from) return next
  const step = { from: idOf(from), changed }
  steps.set(idOf(next), step)
  if (steps.size > RECENT) steps.delete(steps.keys().next().value!)
  return next
}

/**
 * The names of the services that may differ between `before` and `now` (added, removed or another
 * object), when `now` was derived from `before` by recent `markDerived` steps (at most `maxSteps`);
 * undefined when that is not known: compare them whole. A superset: a named service may be the
 * same object in both.
 */
export const changedSince = (
  before: ReadonlyArray<Service>,
  now: ReadonlyArray<Service>,
  maxSteps = 16
): ReadonlySet<string> | undefined => {
  if (before === now) return NOTHING
  const target = ids.get(before)
  let at = ids.get(now)
  if (target === undefined || at === undefined) return undefined
  let names: Set<string> | undefined
  for (let n = 0; n < maxSteps; n++) {
    const step = steps.get(at)
    if (step === undefined) return undefined
    if (step.from === target && names === undefined) return step.changed
    names ??= new Set()
    for (const name of step.changed) names.add(name)
    if (step.from === target) return names
    at = step.from
  }
  return undefined
}

/** Where an element whose `keyOf` is `key` is, or would go, in `sorted` (sorted by `keyOf`): a binary search. */
export const lowerBound = <A>(sorted: ReadonlyArray<A>, keyOf: (a: A) => string, key: string): number => {
  let lo = 0
  let hi = sorted.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (keyOf(sorted[mid]!) < key) lo = mid + 1
    else hi = mid
  }
  return lo
}

const nameOf = (a: { readonly name: string }) => a.name

/** Where a service named `name` is, or would go, in `sorted` (sorted by name). */
export const indexByName = (sorted: ReadonlyArray<{ readonly name: string }>, name: string): number =>
  lowerBound(sorted, nameOf, name)

/** The service named `name` in `sorted` (sorted by name), if any. */
export const findByName = <A extends { readonly name: string }>(
  sorted: ReadonlyArray<A>,
  name: string
): A | undefined => {
  const at = sorted[indexByName(sorted, name)]
  return at?.name === name ? at : undefined
}

/** Orders by name (services, resources). */
export const byName = <A extends { readonly name: string }>(
  a: A,
  b: A
) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)

/** The mesh as the config file alone describes it: every endpoint's health still unknown. */
export const fromConfig = (config: MeshConfig, policy: CompiledPolicy = compileUnchecked(config)): MeshState => ({
  mesh: config.mesh,
  policy,
  services: servicesFromConfig(config)
})

/** The config file's services, sorted by name, every endpoint's health still unknown. */
export const servicesFromConfig = (config: MeshConfig): ReadonlyArray<Service> =>
  config.services
    .map((service): Service => ({
      name: service.name,
      protocol: service.protocol,
      port: service.port,
      failMode: service.failMode,
      tags: service.tags,
      metadata: service.metadata,
      source: "config",
      ...(service.healthCheck ? { healthCheck: service.healthCheck } : {}),
      endpoints: service.endpoints.map((endpoint): Endpoint => ({
        address: endpoint.address,
        port: endpoint.port ?? service.port,
        weight: endpoint.weight,
        labels: endpoint.labels,
        health: "unknown",
        source: "config"
      }))
    }))
    .sort(byName)
