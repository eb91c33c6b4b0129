import type { Protocol } from "../../schemas/Config.js"
import { type Endpoint, type EndpointHealth, endpointKey, type RegistrySource, type Service } from "../MeshState.js"

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
  const services = new Map<string, Service>()
  const endpoints = new Map<string, Map<string, Endpoint>>()
  const addEndpoint = (service: string, endpoint: Endpoint) => {
    let byKey = endpoints.get(service)
    if (!byKey) endpoints.set(service, byKey = new Map())
    const key = endpointKey(endpoint)
    if (!byKey.has(key)) byKey.set(key, endpoint)
  }

  for (const service of config) {
    services.set(service.name, service)
    for (const endpoint of service.endpoints) addEndpoint(service.name, endpoint)
  }
  for (const registration of api) {
    if (!services.has(registration.service)) {
      services.set(
        registration.service,
        bareService(registration.service, registration.protocol ?? "http", registration.port, "api")
      )
    }
    addEndpoint(registration.service, {
      address: registration.address,
      port: registration.port,
      weight: registration.weight,
      labels: registration.labels,
      health: "unknown",
      source: "api"
    })
  }
  for (const [name, discovered] of [...consul].sort(([a], [b]) => compare(a, b))) {
    if (!services.has(name)) {
      if (discovered.instances.length === 0) continue
      const first = discovered.instances[0]!
      services.set(name, {
        ...bareService(name, consulProtocol(first), first.port, "consul"),
        tags: first.tags,
        metadata: first.meta
      })
    }
    for (const instance of discovered.instances) {
      addEndpoint(name, {
        address: instance.address,
        port: instance.port,
        weight: instance.weight,
        labels: instance.meta,
        health: instance.health,
        source: "consul"
      })
    }
  }

  return [...services.values()]
    .map((service) => ({
      ...service,
      endpoints: [...(endpoints.get(service.name)?.values() ?? [])].sort((a, b) =>
        compare(endpointKey(a), endpointKey(b))
      )
    }))
    .sort((a, b) => compare(a.name, b.name))
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
