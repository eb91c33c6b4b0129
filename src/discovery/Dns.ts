import { isIP } from "node:net"
import type { RegistrySource, Service } from "../MeshState.js"
import { type Endpoint, endpointKey } from "../MeshState.js"

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
