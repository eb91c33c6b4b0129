import { Duration, Either, ParseResult, Schema } from "effect"
import { type MeshConfig, type RegistrationCheck, type ServiceConfig, ServiceName } from "../../schemas/Config.js"
import { type EndpointHealth, endpointKey } from "../MeshState.js"
import type { ApiRegistration, ConsulInstance, ConsulService } from "./Merge.js"

// ---------------------------------------------------------------------------------------------
// Responses → domain values. Only the fields the controller uses are decoded; Consul adds fields
// across versions and those are ignored.
// ---------------------------------------------------------------------------------------------

const CheckStatus = Schema.String
const HealthEntry = Schema.Struct({
  Node: Schema.Struct({ Node: Schema.String, Address: Schema.String }),
  Service: Schema.Struct({
    ID: Schema.String,
    Service: Schema.String,
    Address: Schema.optionalWith(Schema.String, { default: () => "" }),
    Port: Schema.Number,
    Tags: Schema.optionalWith(Schema.NullOr(Schema.Array(Schema.String)), { default: () => null }),
    Meta: Schema.optionalWith(Schema.NullOr(Schema.Record({ key: Schema.String, value: Schema.String })), {
      default: () => null
    }),
    Weights: Schema.optional(Schema.NullOr(Schema.Struct({ Passing: Schema.Number, Warning: Schema.Number })))
  }),
  Checks: Schema.optionalWith(Schema.NullOr(Schema.Array(Schema.Struct({ Status: CheckStatus }))), {
    default: () => null
  })
})
const HealthResponse = Schema.Array(HealthEntry)

/** The worst of an instance's checks (node checks included), as Consul's own DNS interface reads it. */
export const healthOfChecks = (statuses: ReadonlyArray<string>): EndpointHealth => {
  if (statuses.some((status) => status !== "passing" && status !== "warning")) return "unhealthy"
  return "healthy"
}

/** `/v1/health/service/:name` → the service's instances; an error names what did not decode. */
export const decodeHealthService = (name: string, body: unknown): Either.Either<ConsulService, string> =>
  Either.map(
    Either.mapLeft(Schema.decodeUnknownEither(HealthResponse)(body), (error) =>
      ParseResult.TreeFormatter.formatErrorSync(error)),
    (entries): ConsulService => ({
      name,
      instances: entries.map((entry): ConsulInstance => {
        const statuses = (entry.Checks ?? []).map((check) =>
          check.Status
        )
        const warning = statuses.includes("warning")
        return {
          id: entry.Service.ID,
          address: entry.Service.Address !== "" ? entry.Service.Address : entry.Node.Address,
          port: entry.Service.Port,
          weight: weightOf(entry.Service.Meta ?? {}) ??
            Math.max(1, (warning ? entry.Service.Weights?.Warning : entry.Service.Weights?.Passing) ?? 1),
          tags: entry.Service.Tags ?? [],
          meta: entry.Service.Meta ?? {},
          health: healthOfChecks(statuses)
        }
      })
    })
  )

export interface CatalogServices {
  /** Services of the mesh, sorted. */
  readonly names: ReadonlyArray<string>
  /** Names that cannot be mesh services (they become host names and SPIFFE IDs), sorted. */
  readonly ignored: ReadonlyArray<string>
}

const isServiceName = Schema.is(ServiceName)

/** `/v1/catalog/services` → service names (Consul's own `consul` service is not part of the mesh). */
export const decodeCatalogServices = (body: unknown): Either.Either<CatalogServices, string> =>
  Either.mapLeft(
    Either.map(
      Schema.decodeUnknownEither(Schema.Record({ key: Schema.String, value: Schema.Unknown }))(body),
      (record) => {
        const names = Object.keys(record).filter((name) => name !== "consul").sort()
        return { names: names.filter(isServiceName), ignored: names.filter((name) => !isServiceName(name)) }
      }
    ),
    (error) => ParseResult.TreeFormatter.formatErrorSync(error)
  )

// ---------------------------------------------------------------------------------------------
// Config → registrations
// ---------------------------------------------------------------------------------------------

/** Meta key that marks a Consul service instance as registered by a controller of this mesh (value: the mesh name). */
export const OWNER_META = "mesh-controller"
/**
 * Meta key naming the controller that registered an instance (its controller ID): several
 * controllers on one agent each remove only what they registered.
 */
export const CONTROLLER_META = "mesh-controller-id"
/** Meta key saying what an instance came from: `config` (a `register`ed service) or `api` (the registration API). */
export const SOURCE_META = "mesh-controller-source"
/**
 * Meta key carrying an API registration's weight: the `consul` client sends no `Weights` on
 * registration, and a weight must not be lost on the way through the catalog.
 */
export const WEIGHT_META = "mesh-controller-weight"

/** Meta keys the controller writes itself; a label may not use them. */
const RESERVED_META: ReadonlyArray<string> = [OWNER_META, CONTROLLER_META, SOURCE_META, WEIGHT_META, "protocol"]

const weightOf = (meta: Readonly<Record<string, string>>): number | undefined => {
  const value = meta[WEIGHT_META]
  if (value === undefined || !/^[1-9][0-9]{0,6}$/.test(value)) return undefined
  return Number(value)
}

export type CheckDefinition =
  | { readonly kind: "ttl"; readonly ttl: string }
  | {
    readonly kind: "http"
    readonly url: string
    readonly method: string
    readonly interval: string
    readonly timeout: string
  }
  | { readonly kind: "tcp"; readonly target: string; readonly interval: string; readonly timeout: string }
  | { readonly kind: "grpc"; readonly target: string; readonly interval: string; readonly timeout: string }

/** One Consul service instance the controller keeps registered: one per endpoint of a `register`ed service. */
export interface Registration {
  readonly id: string
  readonly service: string
  readonly address: string
  readonly port: number
  readonly tags: ReadonlyArray<string>
  readonly meta: Readonly<Record<string, string>>
  readonly mode: RegistrationCheck
  /** Absent: no check (a `consul`-mode service without a healthCheck). */
  readonly check?: CheckDefinition
}

const goDuration = (duration: Duration.Duration): string => `${Math.max(1, Math.round(Duration.toMillis(duration)))}ms`

/** Instance IDs are URL path segments in the agent API: keep them to safe characters. */
export const registrationId = (service: string, address: string, port: number): string =>
  `mesh-${service}-${address.replace(/[^A-Za-z0-9.-]/g, "_")}-${port}`

const modeOf = (service: ServiceConfig, defaultMode: RegistrationCheck): RegistrationCheck | undefined => {
  if (service.register === undefined || service.register === false) return undefined
  return service.register === true ? defaultMode : service.register.check
}

const checkOf = (
  service: ServiceConfig,
  address: string,
  port: number,
  mode: RegistrationCheck,
  ttl: Duration.Duration
): CheckDefinition | undefined => {
  if (mode === "ttl") return { kind: "ttl", ttl: goDuration(ttl) }
  const check = service.healthCheck
  if (!check) return undefined
  const timing = { interval: goDuration(check.interval), timeout: goDuration(check.timeout) }
  switch (check.type) {
    case "http":
      return {
        kind: "http",
        url: `${check.https ? "https" : "http"}://${endpointKey({ address, port })}${check.path}`,
        method: check.method,
        ...timing
      }
    case "tcp":
      return { kind: "tcp", target: endpointKey({ address, port }), ...timing }
    case "grpc":
      return {
        kind: "grpc",
        target: check.service === ""
          ? endpointKey({ address, port })
          : `${endpointKey({ address, port })}/${check.service}`,
        ...timing
      }
  }
}

/**
 * The registrations the config asks for. A TTL check expires after three anti-entropy rounds, so
 * a controller that stops reporting (it crashed) turns its services critical.
 */
export const registrationsOf = (
  config: MeshConfig,
  /** The interval the anti-entropy rounds actually run at (fixed at start); default: the config's. */
  antiEntropyInterval: Duration.Duration | undefined = config.discovery.consul?.antiEntropyInterval,
  /** The registering controller's ID, written in `CONTROLLER_META`. */
  controllerId?: string
): ReadonlyArray<Registration> => {
  const consul = config.discovery.consul
  if (!consul || antiEntropyInterval === undefined) return []
  const ttl = Duration.times(antiEntropyInterval, 3)
  return config.services.flatMap((service) => {
    const mode = modeOf(service, consul.registration)
    if (mode === undefined) return []
    return service.endpoints.map((endpoint): Registration => {
      const port = endpoint.port ?? service.port
      const check = checkOf(service, endpoint.address, port, mode, ttl)
      return {
        id: registrationId(service.name, endpoint.address, port),
        service: service.name,
        address: endpoint.address,
        port,
        tags: service.tags,
        meta: consulMeta({
          ...service.metadata,
          ...endpoint.labels,
          protocol: service.protocol,
          [OWNER_META]: config.mesh.name,
          ...(controllerId === undefined ? {} : { [CONTROLLER_META]: controllerId, [SOURCE_META]: "config" })
        }),
        mode,
        ...(check ? { check } : {})
      }
    })
  })
}

const META_KEY = /^[A-Za-z0-9_-]{1,128}$/

/**
 * Consul refuses a registration whose meta breaks its rules (keys of letters, digits, `_` and `-`,
 * at most 128 characters, not starting with `consul-`; values at most 512 characters; at most 64
 * pairs). Labels such as `app.kubernetes.io/name` are legal in the file, so they are left out of
 * the registration rather than making it fail for ever.
 */
export const consulMeta = (meta: Readonly<Record<string, string>>): Readonly<Record<string, string>> =>
  Object.fromEntries(
    Object.entries(meta)
      .filter(([key, value]) => META_KEY.test(key) && !key.toLowerCase().startsWith("consul-") && value.length <= 512)
      // The controller's own keys first, so the cap of 64 pairs never drops them.
      .sort(([a], [b]) => reservedRank(a) - reservedRank(b))
      .slice(0, 64)
  )

const reservedRank = (key: string) => {
  const rank = RESERVED_META.indexOf(key)
  return rank === -1 ? RESERVED_META.length : rank
}

/**
 * Why Consul cannot carry these labels as an instance's meta, naming the label; undefined when it
 * can. An API registration's labels must arrive whole at every controller, so a label Consul would
 * refuse (or that `consulMeta` would leave out) is refused at the API instead of dropped.
 */
export const consulLabelProblem = (labels: Readonly<Record<string, string>>): string | undefined => {
  const keys = Object.keys(labels)
  if (keys.length > 64 - RESERVED_META.length) {
    return `labels: ${keys.length} labels; Consul meta holds at most ${
      64 - RESERVED_META.length
    } besides the controller's`
  }
  for (const key of keys) {
    const at = `labels[${JSON.stringify(key.slice(0, 64))}]`
    if (!META_KEY.test(key)) return `${at}: Consul meta keys have 1 to 128 letters, digits, "_" and "-"`
    if (key.toLowerCase().startsWith("consul-")) return `${at}: Consul reserves meta keys starting with "consul-"`
    if (RESERVED_META.includes(key)) return `${at}: the controller writes this meta key itself`
    if (labels[key]!.length > 512) return `${at}: Consul meta values have at most 512 characters`
  }
  return undefined
}

/** The Consul service ID of an API registration: its own prefix (no config ID starts with `mesh_`) and the controller. */
export const apiRegistrationId = (controllerId: string, service: string, address: string, port: number): string =>
  `mesh_api-${controllerId}-${service}-${address.replace(/[^A-Za-z0-9.-]/g, "_")}-${port}`

/** The `consul` client's `agent.service.register` body for an endpoint registered through the API. */
export const apiRegisterOptions = (
  registration: ApiRegistration,
  owner: { readonly mesh: string; readonly controllerId: string },
  protocol: string
) => ({
  id: apiRegistrationId(owner.controllerId, registration.service, registration.address, registration.port),
  name: registration.service,
  address: registration.address,
  port: registration.port,
  tags: [],
  meta: {
    [OWNER_META]: owner.mesh,
    [CONTROLLER_META]: owner.controllerId,
    [SOURCE_META]: "api",
    ...(registration.weight === 1 ? {} : { [WEIGHT_META]: String(registration.weight) }),
    protocol,
    ...registration.labels
  }
})

/** An agent's `/v1/agent/services` answer, in the fields read here. */
export type AgentServices = Readonly<
  Record<
    string,
    {
      readonly Service?: string
      readonly Address?: string
      readonly Port?: number
      readonly Meta?: Readonly<Record<string, string>> | null
    }
  >
>

/** The API registrations this controller made that the agent holds (what a restart reads back). */
export const ownApiRegistrations = (
  agent: AgentServices,
  owner: { readonly mesh: string; readonly controllerId: string }
): ReadonlyArray<ApiRegistration> =>
  Object.values(agent).flatMap((service) => {
    const meta = service.Meta ?? {}
    if (
      meta[OWNER_META] !== owner.mesh || meta[CONTROLLER_META] !== owner.controllerId || meta[SOURCE_META] !== "api" ||
      service.Service === undefined || service.Address === undefined || service.Port === undefined
    ) return []
    const labels = Object.fromEntries(Object.entries(meta).filter(([key]) => !RESERVED_META.includes(key)))
    const protocol = meta["protocol"]
    return [{
      service: service.Service,
      address: service.Address,
      port: service.Port,
      weight: weightOf(meta) ?? 1,
      labels,
      ...(protocol === "http" || protocol === "grpc" || protocol === "tcp" ? { protocol } : {})
    }]
  })

/**
 * Whether anti-entropy may remove an agent's instance that the config no longer asks for: one a
 * controller of this mesh registered from its config, and this controller (or, before instances
 * named their controller, any controller of the mesh). Another controller's instances and every
 * API registration are left alone: two controllers on one agent must not remove each other's.
 */
export const removableByAntiEntropy = (
  meta: Readonly<Record<string, string>> | null | undefined,
  /** `controllerId` undefined: a controller without an ID, which removes only unattributed instances. */
  owner: { readonly mesh: string; readonly controllerId: string | undefined }
): boolean =>
  meta?.[OWNER_META] === owner.mesh && meta[SOURCE_META] !== "api" &&
  (meta[CONTROLLER_META] === undefined || meta[CONTROLLER_META] === owner.controllerId)

/** The body the `consul` client's `agent.service.register` takes. */
export const registerOptions = (registration: Registration) => ({
  id: registration.id,
  name: registration.service,
  address: registration.address,
  port: registration.port,
  tags: [...registration.tags],
  meta: { ...registration.meta },
  ...(registration.check ? { check: checkOptions(registration) } : {})
})

const checkOptions = (registration: Registration) => {
  const check = registration.check!
  const name = `mesh-controller ${check.kind} check`
  switch (check.kind) {
    case "ttl":
      return {
        name,
        ttl: check.ttl,
        timeout: check.ttl,
        status: "warning",
        notes: "reported by mesh-controller from its own probes"
      }
    case "http":
      return { name, http: check.url, method: check.method, interval: check.interval, timeout: check.timeout }
    case "tcp":
      return { name, tcp: check.target, interval: check.interval, timeout: check.timeout }
    case "grpc":
      return { name, grpc: check.target, interval: check.interval, timeout: check.timeout }
  }
}

/** Consul gives a service's single check the ID `service:<service id>`. */
export const checkId = (registration: Registration): string => `service:${registration.id}`

/** How an agent's `/v1/agent/services` entry must look for a registration to count as present. */
export const isRegistered = (
  registration: Registration,
  agentServices: Readonly<
    Record<string, { readonly Service?: string; readonly Address?: string; readonly Port?: number }>
  >
): boolean => {
  const found = agentServices[registration.id]
  return found !== undefined && found.Service === registration.service && found.Address === registration.address &&
    found.Port === registration.port
}
