/**
 * The endpoints registered through the registration API, indexed by service and `address:port`,
 * with each service's count and size kept as they change. Adding, replacing and removing one
 * registration costs the same whether a service has ten endpoints or ten thousand: the old store
 * (one array, filtered and copied per request, merged and published per request) made 10,000
 * registrations take minutes.
 *
 * Mutable on purpose, and only ever touched inside one synchronous step (`Effect.sync`), so each
 * operation is atomic; readers get fresh arrays (`all`), never the maps.
 */
import { Schema } from "effect"
import { endpointKey } from "../MeshState.js"
import type { ApiRegistration } from "./Merge.js"

/** The bounds a registration must stay within (see `controller.admin.registration`). */
export interface RegistrationLimits {
  readonly maxEndpointsPerService: number
  readonly maxServiceBytes: number
  readonly createServices: boolean
  readonly maxServices: number
}

/** A registration refused by a bound; `reason` says which. */
export class RegistrationRefused extends Schema.TaggedError<RegistrationRefused>()("RegistrationRefused", {
  /** `labels`: Consul cannot carry a label; `consul`: Consul is configured but did not take the change. */
  reason: Schema.Literal("unknown-service", "services", "endpoints", "bytes", "labels", "consul"),
  message: Schema.String
}) {}

/** What one registration weighs against `maxServiceBytes`: its JSON size in bytes. */
export const registrationBytes = (r: ApiRegistration): number =>
  Buffer.byteLength(JSON.stringify({ address: r.address, port: r.port, weight: r.weight, labels: r.labels }))

interface ServiceEntry {
  readonly endpoints: Map<string, { readonly registration: ApiRegistration; readonly bytes: number }>
  bytes: number
  /** `forService`'s answer, kept until the service's registrations change (so it is the same array). */
  list: ReadonlyArray<ApiRegistration> | undefined
}

export class RegistrationStore {
  private readonly services = new Map<string, ServiceEntry>()
  private total = 0
  /** Services whose registrations changed since the last `takeChanged`. */
  private changed = new Set<string>()

  get size(): number {
    return this.total
  }

  /**
   * Adds or replaces one registration, unless it breaks a bound (then nothing changes).
   * `known` says whether the config (or another source) defines a service, so the API is not creating it.
   */
  add(
    registration: ApiRegistration,
    limits: RegistrationLimits | undefined,
    known: (service: string) => boolean
  ): RegistrationRefused | undefined {
    const refused = this.check(registration, limits, known)
    if (refused) return refused
    this.commit(registration)
    return undefined
  }

  /** Whether `add` would refuse the registration (and why), changing nothing. */
  check(
    registration: ApiRegistration,
    limits: RegistrationLimits | undefined,
    known: (service: string) => boolean
  ): RegistrationRefused | undefined {
    const name = registration.service
    const entry = this.services.get(name)
    const key = endpointKey(registration)
    const bytes = registrationBytes(registration)
    const previous = entry?.endpoints.get(key)
    if (limits) {
      if (entry === undefined && !known(name)) {
        if (!limits.createServices) {
          return new RegistrationRefused({
            reason: "unknown-service",
            message: `service "${name}" is not in the config; the API may create services only with ` +
              "controller.admin.registration.createServices: true"
          })
        }
        const created = [...this.services.keys()].filter((s) => !known(s)).length
        if (created >= limits.maxServices) {
          return new RegistrationRefused({
            reason: "services",
            message: `the API has created ${created} services, ` +
              "the most controller.admin.registration.maxServices allows"
          })
        }
      }
      const count = (entry?.endpoints.size ?? 0) + (previous ? 0 : 1)
      if (count > limits.maxEndpointsPerService) {
        return new RegistrationRefused({
          reason: "endpoints",
          message: `service "${name}" has ${count - 1} registered endpoints, the most ` +
            "controller.admin.registration.maxEndpointsPerService allows"
        })
      }
      const size = (entry?.bytes ?? 0) - (previous?.bytes ?? 0) + bytes
      if (size > limits.maxServiceBytes) {
        return new RegistrationRefused({
          reason: "bytes",
          message: `the registrations of service "${name}" would take ${size} bytes, more than ` +
            `controller.admin.registration.maxServiceBytes (${limits.maxServiceBytes})`
        })
      }
    }
    return undefined
  }

  /** Whether the API registered `key` (`address:port`) of `service`. */
  has(service: string, key: string): boolean {
    return this.services.get(service)?.endpoints.has(key) === true
  }

  private commit(registration: ApiRegistration): void {
    const name = registration.service
    const entry = this.services.get(name)
    const key = endpointKey(registration)
    const bytes = registrationBytes(registration)
    const previous = entry?.endpoints.get(key)
    const target: ServiceEntry = entry ?? { endpoints: new Map(), bytes: 0, list: undefined }
    if (entry === undefined) this.services.set(name, target)
    // Delete first so a replaced registration moves to the end, as the array store ordered it.
    if (previous) target.endpoints.delete(key)
    else this.total++
    target.endpoints.set(key, { registration, bytes })
    target.bytes += bytes - (previous?.bytes ?? 0)
    target.list = undefined
    this.changed.add(name)
  }

  /** Removes one registration; false when there was none. */
  remove(service: string, key: string): boolean {
    const entry = this.services.get(service)
    const previous = entry?.endpoints.get(key)
    if (!entry || !previous) return false
    entry.endpoints.delete(key)
    entry.bytes -= previous.bytes
    this.total--
    entry.list = undefined
    this.changed.add(service)
    if (entry.endpoints.size === 0) this.services.delete(service)
    return true
  }

  /**
   * One service's registrations in the order they were first added; the same array until they
   * change, so a reader can tell an unchanged service by identity. Undefined when it has none.
   */
  forService(service: string): ReadonlyArray<ApiRegistration> | undefined {
    const entry = this.services.get(service)
    if (entry === undefined) return undefined
    entry.list ??= [...entry.endpoints.values()].map((e) => e.registration)
    return entry.list
  }

  /** The services that have registrations. */
  serviceNames(): Iterable<string> {
    return this.services.keys()
  }

  /** The services whose registrations changed since the last call (each change is counted once). */
  takeChanged(): ReadonlySet<string> {
    const changed = this.changed
    this.changed = new Set()
    return changed
  }

  /** Every registration, in the order they were first added (per service). */
  all(): ReadonlyArray<ApiRegistration> {
    const out: Array<ApiRegistration> = []
    for (const entry of this.services.values()) {
      for (const { registration } of entry.endpoints.values()) out.push(registration)
    }
    return out
  }
}
