import type { Protocol } from "../../schemas/Config.js"
import {
  byName,
  changedSince,
  type Endpoint,
  type EndpointHealth,
  endpointKey,
  findByName,
  indexByName,
  lowerBound,
  markDerived,
  markSortedByName,
  type RegistrySource,
  type Service
} from "../MeshState.js"

/** An endpoint added at run time through the registration API. */
export interface ApiRegistration {
  readonly service: string
  readonly address: string
  readonly port: number
  readonly weight: number
  readonly labels: Readonly<Record<string, string>>
  /** Used only when no config entry defines the service. */
  readonly protocol?: Protocol
}

/** One instance of a service as Consul's health endpoint reports it. */
export interface ConsulInstance {
  readonly id: string
  readonly address: string
  readonly port: number
  readonly weight: number
  readonly tags: ReadonlyArray<string>
  readonly meta: Readonly<Record<string, string>>
  readonly health: EndpointHealth
}

export interface ConsulService {
  readonly name: string
  readonly instances: ReadonlyArray<ConsulInstance>
}

/**
 * Precedence, highest first: **config file > registration API > Consul**.
 *
 * - A service's attributes (protocol, port, health check, fail mode, tags, metadata) come from the
 *   highest source that defines the service; `Service.source` names that source. A service only
 *   Consul knows gets protocol from its `protocol` meta (else its `grpc`/`tcp`/`http` tag, else
 *   http) and port from its first instance.
 * - Endpoints are the union of all sources, keyed by `address:port`. When two sources list the same
 *   key, the higher one's entry (weight, labels, health) wins; `Endpoint.source` names it.
 *
 * So an operator's file is never overridden by what a registry says, a runtime registration adds
 * to the file rather than replacing it, and Consul adds to both. Removing an endpoint from one
 * source removes it only if no other source lists it.
 */
export const mergeRegistry = (
  config: ReadonlyArray<Service>,
  api: ReadonlyArray<ApiRegistration>,
  consul: ReadonlyMap<string, ConsulService>
): ReadonlyArray<Service> => {
  const apiByService = new Map<string, Array<ApiRegistration>>()
  for (const registration of api) {
    const list = apiByService.get(registration.service)
    if (list) list.push(registration)
    else apiByService.set(registration.service, [registration])
  }
  const configByName = new Map(config.map((s) => [s.name, s]))
  const names = new Set([...configByName.keys(), ...apiByService.keys(), ...consul.keys()])
  const out: Array<Service> = []
  for (const name of names) {
    const merged = mergeService(name, configByName.get(name), apiByService.get(name), consul.get(name))
    if (merged !== undefined) out.push(merged)
  }
  return out.sort(byName)
}

/**
 * One service merged from what each source says of it (the rule of `mergeRegistry`); undefined when
 * only Consul names it and lists no instance.
 */
const mergeService = (
  name: string,
  config: Service | undefined,
  api: ReadonlyArray<ApiRegistration> | undefined,
  consul: ConsulService | undefined
): Service | undefined => {
  const first = consul?.instances[0]
  const base = config ??
    (api !== undefined && api.length > 0
      ? bareService(name, api[0]!.protocol ?? "http", api[0]!.port, "api")
      : first !== undefined
      ? { ...bareService(name, consulProtocol(first), first.port, "consul"), tags: first.tags, metadata: first.meta }
      : undefined)
  if (base === undefined) return undefined
  const byKey = new Map<string, Endpoint>()
  const add = (endpoint: Endpoint) => {
    const key = endpointKey(endpoint)
    if (!byKey.has(key)) byKey.set(key, endpoint)
  }
  for (const endpoint of config?.endpoints ?? []) add(endpoint)
  for (const registration of api ?? []) add(apiEndpoint(registration))
  for (const instance of consul?.instances ?? []) add(consulEndpoint(instance))
  return {
    ...base,
    endpoints: [...byKey].sort(([a], [b]) => compare(a, b)).map(([, endpoint]) => endpoint)
  }
}

/** The endpoint object of a registration, made once per registration: equal inputs, the same object. */
const apiEndpoints = new WeakMap<ApiRegistration, Endpoint>()
const apiEndpoint = (registration: ApiRegistration): Endpoint => {
  let endpoint = apiEndpoints.get(registration)
  if (endpoint === undefined) {
    endpoint = {
      address: registration.address,
      port: registration.port,
      weight: registration.weight,
      labels: registration.labels,
      health: "unknown",
      source: "api"
    }
    apiEndpoints.set(registration, endpoint)
  }
  return endpoint
}

const consulEndpoints = new WeakMap<ConsulInstance, Endpoint>()
const consulEndpoint = (instance: ConsulInstance): Endpoint => {
  let endpoint = consulEndpoints.get(instance)
  if (endpoint === undefined) {
    endpoint = {
      address: instance.address,
      port: instance.port,
      weight: instance.weight,
      labels: instance.meta,
      health: instance.health,
      source: "consul"
    }
    consulEndpoints.set(instance, endpoint)
  }
  return endpoint
}

interface Merged {
  readonly config: Service | undefined
  readonly api: ReadonlyArray<ApiRegistration> | undefined
  readonly consul: ConsulService | undefined
  readonly service: Service | undefined
}

/**
 * `mergeRegistry` across successive publishes, keeping every merged `Service` whose inputs are the
 * same objects as last time, so downstream (the snapshot builder) recognises an unchanged service
 * by identity. When the config and Consul views are the same objects as last time, only the services
 * the registration API changed (`changedApi`) are merged again; the rest of the previous result is
 * kept as it is. A one-endpoint change then costs one service's merge, not the registry's.
 */
export class RegistryMerger {
  private readonly entries = new Map<string, Merged>()
  private lastConfig: ReadonlyArray<Service> | undefined
  private lastConsul: ReadonlyMap<string, ConsulService> | undefined
  private result: ReadonlyArray<Service> = []
  /** The services the last `merge` may have changed; undefined when it looked at every service. */
  changed: ReadonlySet<string> | undefined = undefined

  merge(
    config: ReadonlyArray<Service>,
    api: (service: string) => ReadonlyArray<ApiRegistration> | undefined,
    apiServices: Iterable<string>,
    changedApi: ReadonlySet<string> | undefined,
    consul: ReadonlyMap<string, ConsulService>
  ): ReadonlyArray<Service> {
    const incremental = changedApi !== undefined && config === this.lastConfig && consul === this.lastConsul
    this.lastConfig = config
    this.lastConsul = consul
    this.changed = incremental ? changedApi : undefined
    if (incremental) {
      if (changedApi.size === 0) return this.result
      const configByName = configIndex(config)
      let next: Array<Service> | undefined
      let replaced: Set<string> | undefined
      for (const name of changedApi) {
        const before = this.entries.get(name)?.service
        const service = this.entry(name, configByName.get(name), api(name), consul.get(name))
        if (service === before) continue
        next ??= [...this.result]
        replaceSorted(next, name, service)
        ;(replaced ??= new Set()).add(name)
      }
      // Downstream (the "did anything change" comparison, the snapshot builder) looks at these names only.
      if (next !== undefined) this.result = markDerived(markSortedByName(next), this.result, replaced!)
      return this.result
    }
    const configByName = configIndex(config)
    const names = new Set<string>([...configByName.keys(), ...apiServices, ...consul.keys()])
    for (const name of this.entries.keys()) if (!names.has(name)) this.entries.delete(name)
    const out: Array<Service> = []
    for (const name of names) {
      const service = this.entry(name, configByName.get(name), api(name), consul.get(name))
      if (service !== undefined) out.push(service)
    }
    out.sort(byName)
    const same = out.length === this.result.length && out.every((s, i) => s === this.result[i])
    if (!same) this.result = markSortedByName(out)
    return this.result
  }

  private entry(
    name: string,
    config: Service | undefined,
    api: ReadonlyArray<ApiRegistration> | undefined,
    consul: ConsulService | undefined
  ): Service | undefined {
    const before = this.entries.get(name)
    if (before !== undefined && before.config === config && before.api === api && before.consul === consul) {
      return before.service
    }
    const merged = (before !== undefined && before.config === config && before.consul === consul
      ? withAppended(before.service, before.api, api)
      : undefined) ?? mergeService(name, config, api, consul)
    // A service merged again to the same content keeps its object (a Consul answer that repeats itself).
    const service = merged !== undefined && before?.service !== undefined && sameJson(merged, before.service)
      ? before.service
      : merged
    if (config === undefined && api === undefined && consul === undefined) this.entries.delete(name)
    else this.entries.set(name, { config, api, consul, service })
    return service
  }
}

/**
 * `mergeService` again after registrations were only added (the store appends them: `after` starts
 * with every element of `before`), from the previous result: each added endpoint goes to its place
 * by a binary search over the sorted endpoints, replacing a Consul entry with its key and yielding to
 * a config one, as `mergeService` ranks them. Undefined when that is not the change (a registration
 * replaced or removed, no previous result): then the service is merged from its sources. Merging a
 * service of n registrations from its sources builds n keys and sorts them, per publish: 10,000
 * registrations on one service cost a few ms each time.
 */
const withAppended = (
  service: Service | undefined,
  before: ReadonlyArray<ApiRegistration> | undefined,
  after: ReadonlyArray<ApiRegistration> | undefined
): Service | undefined => {
  if (service === undefined || before === undefined || before.length === 0 || after === undefined) return undefined
  if (after.length <= before.length) return undefined
  for (let i = 0; i < before.length; i++) if (before[i] !== after[i]) return undefined
  let endpoints: Array<Endpoint> | undefined
  for (let i = before.length; i < after.length; i++) {
    const endpoint = apiEndpoint(after[i]!)
    const list = endpoints ?? service.endpoints
    const key = endpointKey(endpoint)
    const at = lowerBound(list, endpointKey, key)
    const found = at < list.length && endpointKey(list[at]!) === key
    if (found && list[at]!.source === "config") continue
    if (found && list[at]!.source === "api") return undefined
    endpoints ??= [...service.endpoints]
    if (found) endpoints[at] = endpoint
    else endpoints.splice(at, 0, endpoint)
  }
  return endpoints === undefined ? service : { ...service, endpoints }
}

const configIndexes = new WeakMap<ReadonlyArray<Service>, ReadonlyMap<string, Service>>()
const configIndex = (config: ReadonlyArray<Service>): ReadonlyMap<string, Service> => {
  let index = configIndexes.get(config)
  if (index === undefined) configIndexes.set(config, index = new Map(config.map((s) => [s.name, s])))
  return index
}

/**
 * What `JSON.stringify(a) === JSON.stringify(b)` says of two registry values (the same keys in the
 * same order, undefined members left out), without serialising them: a part that is the same object
 * on both sides costs one comparison, so a service whose endpoints the merger kept is compared in
 * what differs, and one whose endpoint count changed differs at once. Serialising a service of
 * 10,000 endpoints twice per publish made 10,000 registrations quadratic. Values that are not
 * plain objects or arrays (a `Duration` in a health check) are compared as JSON.
 */
export const sameJson = (a: unknown, b: unknown): boolean => {
  if (a === b) return true
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false
    for (let i = 0; i < a.length; i++) if (!sameJson(a[i], b[i])) return false
    return true
  }
  if (!isPlain(a) || !isPlain(b)) return JSON.stringify(a) === JSON.stringify(b)
  const ka = jsonKeys(a)
  const kb = jsonKeys(b)
  if (ka.length !== kb.length) return false
  for (let i = 0; i < ka.length; i++) {
    const key = ka[i]!
    if (key !== kb[i] || !sameJson((a as Record<string, unknown>)[key], (b as Record<string, unknown>)[key])) {
      return false
    }
  }
  return true
}

const isPlain = (o: object): boolean => {
  const proto = Object.getPrototypeOf(o)
  return proto === Object.prototype || proto === null
}

/** The keys JSON.stringify writes, in its order. */
const jsonKeys = (o: object): Array<string> =>
  Object.keys(o).filter((key) => {
    const value = (o as Record<string, unknown>)[key]
    return value !== undefined && typeof value !== "function" && typeof value !== "symbol"
  })

/** Puts `service` (or, undefined, removes the service `name`) at its place in `sorted`, by name. */
const replaceSorted = (sorted: Array<Service>, name: string, service: Service | undefined): void => {
  const lo = indexByName(sorted, name)
  const found = lo < sorted.length && sorted[lo]!.name === name
  if (service === undefined) {
    if (found) sorted.splice(lo, 1)
  } else if (found) sorted[lo] = service
  else sorted.splice(lo, 0, service)
}

const compare = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0)

const bareService = (name: string, protocol: Protocol, port: number, source: RegistrySource): Service => ({
  name,
  protocol,
  port,
  endpoints: [],
  failMode: "open",
  tags: [],
  metadata: {},
  source
})

const PROTOCOLS: ReadonlyArray<Protocol> = ["http", "grpc", "tcp"]
const isProtocol = (value: string | undefined): value is Protocol => PROTOCOLS.includes(value as Protocol)

const consulProtocol = (instance: ConsulInstance): Protocol => {
  const meta = instance.meta["protocol"]
  if (isProtocol(meta)) return meta
  return instance.tags.find(isProtocol) ?? "http"
}

/**
 * Whether two published registries are equal, element by element: services the merger kept by
 * identity cost nothing to compare, and when the merger says which services it replaced
 * (`changedSince`) only those are looked at, so a one-service change compares one service.
 */
export const sameServices = (a: ReadonlyArray<Service>, b: ReadonlyArray<Service>): boolean => {
  if (a === b) return true
  if (a.length !== b.length) return false
  // `b` made from `a` by the merger: every other element is the same object, compare these alone.
  const changed = changedSince(a, b)
  if (changed !== undefined) {
    for (const name of changed) if (!sameJson(findByName(a, name), findByName(b, name))) return false
    return true
  }
  for (let i = 0; i < a.length; i++) {
    if (!sameJson(a[i], b[i])) return false
  }
  return true
}
