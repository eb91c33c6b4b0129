import type { Endpoint, EndpointHealth, Service } from "../MeshState.js"
import { endpointKey } from "../MeshState.js"

/**
 * service name → endpoint key (`endpointKey`, `address:port`) → health, for every endpoint under
 * an active check. Endpoints absent from it (no check, or not probed yet) are "unknown".
 */
export type HealthView = ReadonlyMap<string, ReadonlyMap<string, EndpointHealth>>

export const emptyView: HealthView = new Map()

/** What the controller routes to for one service, given the health it knows. */
export interface ServiceRouting {
  /** The endpoints to put into the service's load assignment, each carrying its health. */
  readonly endpoints: ReadonlyArray<Endpoint>
  /**
   * Every endpoint is unhealthy (and there is at least one). With `failMode: open` the service is
   * routed to all of its endpoints anyway, as Envoy's panic threshold does; with `closed`, to none.
   */
  readonly panic: boolean
  /**
   * At least one endpoint is healthy or unknown (not yet decided, or not checked): the service
   * can take traffic without panic routing. This is what the controller's grpc.health.v1 reports.
   */
  readonly available: boolean
  readonly counts: { readonly healthy: number; readonly unhealthy: number; readonly unknown: number }
}

/** The health of one endpoint of a service: the view's word if it has one, else the endpoint's own. */
export const healthOf = (view: HealthView, service: string, endpoint: Endpoint): EndpointHealth =>
  view.get(service)?.get(endpointKey(endpoint)) ?? endpoint.health

/**
 * The fail-open decision for one service: route to healthy and unknown endpoints; when every
 * endpoint is unhealthy, route to all of them (`failMode: open`, panic) or none (`closed`).
 */
export const routing = (service: Service, view: HealthView): ServiceRouting => {
  const withHealth = service.endpoints.map((endpoint): Endpoint => {
    const health = healthOf(view, service.name, endpoint)
    return health === endpoint.health ? endpoint : { ...endpoint, health }
  })
  const counts = { healthy: 0, unhealthy: 0, unknown: 0 }
  for (const endpoint of withHealth) counts[endpoint.health]++
  const routable = withHealth.filter((endpoint) => endpoint.health !== "unhealthy")
  const panic = withHealth.length > 0 && routable.length === 0
  return {
    endpoints: panic ? (service.failMode === "open" ? withHealth : []) : routable,
    panic,
    available: routable.length > 0,
    counts
  }
}

/**
 * The services with each endpoint's `health` taken from the view (no endpoint is dropped). A service
 * the view changes nothing of is returned as it is, and one it changes is the same object as last
 * time while the service and its health map are: the snapshot builder recognises unchanged
 * services by identity.
 */
export const withHealth = (services: ReadonlyArray<Service>, view: HealthView): ReadonlyArray<Service> => {
  if (view.size === 0) return services
  return services.map((service) => {
    const health = view.get(service.name)
    if (health === undefined) return service
    const cached = applied.get(service)
    if (cached !== undefined && cached.health === health) return cached.service
    let changed = false
    const endpoints = service.endpoints.map((endpoint) => {
      const h = health.get(endpointKey(endpoint))
      if (h === undefined || h === endpoint.health) return endpoint
      changed = true
      return { ...endpoint, health: h }
    })
    const out = changed ? { ...service, endpoints } : service
    applied.set(service, { health, service: out })
    return out
  })
}
const applied = new WeakMap<
  Service,
  { readonly health: ReadonlyMap<string, EndpointHealth>; readonly service: Service }
>()

/** service name → available (see `ServiceRouting.available`), for every service given. */
export const availability = (services: ReadonlyArray<Service>, view: HealthView): ReadonlyMap<string, boolean> =>
  new Map(services.map((service) => [service.name, routing(service, view).available]))

/** Structural equality of two views (publishing only real changes keeps the snapshot quiet). */
export const sameView = (a: HealthView, b: HealthView): boolean => {
  if (a.size !== b.size) return false
  for (const [service, endpoints] of a) {
    const other = b.get(service)
    if (other === undefined || other.size !== endpoints.size) return false
    for (const [key, health] of endpoints) if (other.get(key) !== health) return false
  }
  return true
}
