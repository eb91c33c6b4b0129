import { isIP } from "node:net"
import type { RegistrySource, Service } from "../MeshState.js"
import { type Endpoint, endpointKey, findByName } from "../MeshState.js"

/** Names Consul's DNS interface answers (`web.service.consul`, `node1.node.dc1.consul`). */
export const isConsulName = (host: string): boolean => /\.consul\.?$/i.test(host)

export const isHostName = (address: string): boolean => isIP(address) === 0

/** Every endpoint address that is a host name, sorted, without duplicates. */
export const hostNamesOf = (services: ReadonlyArray<Service>): ReadonlyArray<string> =>
  [...new Set(services.flatMap((service) => service.endpoints.map((e) => e.address).filter(isHostName)))].sort()

const RANK: Record<RegistrySource, number> = { config: 0, api: 1, consul: 2 }

/**
 * Replaces each host-name endpoint by one endpoint per address the name resolves to (same port,
 * weight, labels, source). A name with no addresses yet is left out: EDS needs IP addresses. When
 * a resolved address collides with another endpoint, the higher-precedence source keeps it.
 */
export const expandHostNames = (
  services: ReadonlyArray<Service>,
  addresses: (host: string) => ReadonlyArray<string>
): ReadonlyArray<Service> =>
  services.map((service) => {
    if (!service.endpoints.some((e) => isHostName(e.address))) return service
    const byKey = new Map<string, Endpoint>()
    const expanded = service.endpoints.flatMap((endpoint) =>
      isHostName(endpoint.address)
        ? addresses(endpoint.address).map((address) => ({ ...endpoint, address }))
        : [endpoint]
    )
    for (const endpoint of expanded) {
      const key = endpointKey(endpoint)
      const seen = byKey.get(key)
      if (!seen || RANK[endpoint.source] < RANK[seen.source]) byKey.set(key, endpoint)
    }
    return {
      ...service,
      endpoints: [...byKey.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, e]) => e)
    }
  })

/**
 * `hostNamesOf` and `expandHostNames` across successive publishes: which services name hosts is
 * kept per service and updated only for the services that changed, so a registry of IP addresses
 * (the common case) costs nothing per publish, and an expanded service is the same object for as
 * long as it and the addresses it names are.
 */
const ipEndpoints = new WeakSet<Endpoint>()

export class HostExpansion {
  /** service name → the host names its endpoints use (only services that use some). */
  private readonly hosts = new Map<string, ReadonlyArray<string>>()
  private readonly expanded = new WeakMap<Service, { readonly key: string; readonly service: Service }>()

  /** Takes note of `services`; `changed` names the services that may differ from last time (undefined: any). */
  update(services: ReadonlyArray<Service>, changed: ReadonlySet<string> | undefined): void {
    if (changed === undefined) {
      this.hosts.clear()
      for (const service of services) this.note(service.name, service)
      return
    }
    for (const name of changed) this.note(name, findByName(services, name))
  }

  private note(name: string, service: Service | undefined): void {
    // Called per publish for each changed service, so for every endpoint of a large one: one pass,
    // and an address already seen as an IP (its endpoint object) is not parsed again.
    const names: Array<string> = []
    for (const endpoint of service?.endpoints ?? []) {
      if (ipEndpoints.has(endpoint)) continue
      if (isHostName(endpoint.address)) names.push(endpoint.address)
      else ipEndpoints.add(endpoint)
    }
    if (names.length > 0) this.hosts.set(name, names)
    else this.hosts.delete(name)
  }

  /** `hostNamesOf` the services last given to `update`. */
  hostNames(): ReadonlyArray<string> {
    return [...new Set([...this.hosts.values()].flat())].sort()
  }

  /** `expandHostNames`, keeping the objects of services that name no host or whose addresses did not change. */
  expand(services: ReadonlyArray<Service>, addresses: (host: string) => ReadonlyArray<string>): ReadonlyArray<Service> {
    if (this.hosts.size === 0) return services
    return services.map((service) => {
      const hosts = this.hosts.get(service.name)
      if (hosts === undefined) return service
      const key = JSON.stringify(hosts.map(addresses))
      const cached = this.expanded.get(service)
      if (cached !== undefined && cached.key === key) return cached.service
      const [out] = expandHostNames([service], addresses)
      this.expanded.set(service, { key, service: out! })
      return out!
    })
  }
}
