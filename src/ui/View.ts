/**
 * What the status page (/ui) shows, as pure functions of the layers' status values: the JSON its
 * small endpoints answer. The inputs are the shapes of `Health.status`, `Xds.status`,
 * `Certificates.status` and `Policy` (declared structurally here, since src/ imports nothing from
 * layers/); the page only lays the answers out, so every rule (availability, which certificate
 * is due, what a client's service is) lives here where a test can reach it.
 */
import { healthOf, type HealthView, routing } from "../health/Routing.js"
import type { EndpointHealth, RegistrySource, Service } from "../MeshState.js"
import { endpointKey } from "../MeshState.js"
import type { CompiledPolicy, CompiledRule } from "../policy/Compile.js"
import type { Glob } from "../policy/Match.js"
import { sidecarService } from "../xds/XdsSnapshot.js"
import type { StreamStatus } from "../xds/XdsStream.js"

// ---------------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------------

/** One checked endpoint as `Health.status` reports it (the fields the page uses). */
export interface CheckedEndpoint {
  readonly endpoint: string
  readonly health: EndpointHealth
  readonly since: string
  readonly consecutiveFailures: number
  readonly trackedSince: string
  readonly unhealthyMs: number
  readonly transitions: ReadonlyArray<
    { readonly at: string; readonly from: EndpointHealth; readonly to: EndpointHealth }
  >
  readonly history: ReadonlyArray<
    { readonly at: string; readonly ok: boolean; readonly latencyMs: number; readonly error?: string }
  >
}

export interface HealthStatusInput {
  readonly services: ReadonlyArray<{
    readonly name: string
    readonly check: Readonly<Record<string, unknown>>
    readonly endpoints: ReadonlyArray<CheckedEndpoint>
  }>
}

export interface EndpointView {
  readonly key: string
  readonly address: string
  readonly port: number
  readonly weight: number
  readonly source: RegistrySource
  readonly labels: Readonly<Record<string, string>>
  readonly health: EndpointHealth
  /** Whether a health check probes it (otherwise its health stays what discovery says). */
  readonly checked: boolean
  /** When `health` took its value; null when unchecked. */
  readonly since: string | null
  /** Since when it is probed: the window of `availability`. */
  readonly trackedSince: string | null
  /** Fraction of the time since `trackedSince` it was not unhealthy; null when unchecked or just started. */
  readonly availability: number | null
  readonly unhealthyMs: number
  readonly lastError: string | null
  readonly transitions: CheckedEndpoint["transitions"]
  readonly history: CheckedEndpoint["history"]
}

export interface ServiceView {
  readonly name: string
  readonly protocol: string
  readonly port: number
  readonly source: RegistrySource
  readonly failMode: "open" | "closed"
  /** "http GET /healthz every 5s", or null when the service is not checked. */
  readonly check: string | null
  readonly available: boolean
  readonly panic: boolean
  readonly counts: { readonly healthy: number; readonly unhealthy: number; readonly unknown: number }
  readonly endpoints: ReadonlyArray<EndpointView>
}

const describeCheck = (check: Readonly<Record<string, unknown>>): string => {
  const parts = [String(check["type"] ?? "check")]
  if (check["type"] === "http") parts.push(`${String(check["method"] ?? "GET")} ${String(check["path"] ?? "/")}`)
  if (check["type"] === "grpc" && typeof check["service"] === "string" && check["service"] !== "") {
    parts.push(String(check["service"]))
  }
  if (check["interval"] !== undefined) parts.push(`every ${String(check["interval"])}`)
  return parts.join(" ")
}

const availabilityOf = (checked: CheckedEndpoint, now: number): number | null => {
  const window = now - Date.parse(checked.trackedSince)
  if (!(window > 0)) return null
  return Math.min(1, Math.max(0, 1 - checked.unhealthyMs / window))
}

/** Every service Discovery knows, each endpoint with its health, source, weight and history. */
export const servicesView = (
  services: ReadonlyArray<Service>,
  view: HealthView,
  status: HealthStatusInput,
  now: number
): ReadonlyArray<ServiceView> =>
  services.map((service) => {
    const checkedService = status.services.find((s) => s.name === service.name)
    const checked = new Map((checkedService?.endpoints ?? []).map((e) => [e.endpoint, e]))
    const decision = routing(service, view)
    return {
      name: service.name,
      protocol: service.protocol,
      port: service.port,
      source: service.source,
      failMode: service.failMode,
      check: checkedService === undefined ? null : describeCheck(checkedService.check),
      available: decision.available,
      panic: decision.panic,
      counts: decision.counts,
      endpoints: service.endpoints.map((endpoint): EndpointView => {
        const key = endpointKey(endpoint)
        const c = checked.get(key)
        const lastFailure = c?.history.at(-1)
        return {
          key,
          address: endpoint.address,
          port: endpoint.port,
          weight: endpoint.weight,
          source: endpoint.source,
          labels: endpoint.labels,
          health: healthOf(view, service.name, endpoint),
          checked: c !== undefined,
          since: c?.since ?? null,
          trackedSince: c?.trackedSince ?? null,
          availability: c === undefined ? null : availabilityOf(c, now),
          unhealthyMs: c?.unhealthyMs ?? 0,
          lastError: lastFailure !== undefined && !lastFailure.ok ? lastFailure.error ?? "failed" : null,
          transitions: c?.transitions ?? [],
          history: c?.history ?? []
        }
      })
    }
  })

// ---------------------------------------------------------------------------------------------
// Data planes
// ---------------------------------------------------------------------------------------------

/** One client as `Xds.status` describes it (the fields the page uses). */
export type XdsClientInput = Pick<
  StreamStatus,
  "stream" | "nodeId" | "kind" | "userAgent" | "protocol" | "peer" | "identity" | "connectedAt" | "types"
>

export interface DataPlaneView {
  readonly stream: number
  readonly nodeId: string | null
  /** The sidecar's own service (`<service>~<instance>`), or the services a proxyless client dials. */
  readonly service: string | null
  readonly kind: string
  readonly userAgent: string | null
  readonly protocol: "SotW" | "Delta"
  readonly peer: string
  readonly identity: string | null
  readonly connectedAt: string
  /** Some resource type's last response was rejected and nothing newer was acknowledged since. */
  readonly nacked: boolean
  readonly types: ReadonlyArray<{
    readonly type: string
    readonly subscribed: number
    readonly acknowledgedVersion: string | null
    readonly acknowledgedAt: string | null
    readonly waitingForAck: boolean
    readonly pushes: number
    readonly nacks: number
    readonly lastNack: { readonly version: string; readonly message: string; readonly at: string } | null
  }>
}

const serviceOfClient = (client: XdsClientInput): string | null => {
  const own = client.nodeId === null ? undefined : sidecarService(client.nodeId)
  if (own !== undefined) return own
  const dialled = client.types["Listener"]?.subscribed.filter((n) => n !== "*") ?? []
  return dialled.length > 0 ? dialled.join(", ") : null
}

/** A NACK still stands when no ACK came after it. */
const nackStands = (t: XdsClientInput["types"][string]): boolean =>
  t.lastNack !== null && (t.acknowledgedAt === null || Date.parse(t.acknowledgedAt) < Date.parse(t.lastNack.at))

export const dataPlanesView = (clients: ReadonlyArray<XdsClientInput>): ReadonlyArray<DataPlaneView> =>
  clients.map((client) => ({
    stream: client.stream,
    nodeId: client.nodeId,
    service: serviceOfClient(client),
    kind: client.kind,
    userAgent: client.userAgent,
    protocol: client.protocol === "delta" ? "Delta" : "SotW",
    peer: client.peer,
    identity: client.identity,
    connectedAt: client.connectedAt,
    nacked: Object.values(client.types).some(nackStands),
    types: Object.entries(client.types).map(([type, t]) => ({
      type,
      subscribed: t.subscribedCount,
      acknowledgedVersion: t.acknowledgedVersion,
      acknowledgedAt: t.acknowledgedAt,
      waitingForAck: t.waitingForAck,
      pushes: t.pushes,
      nacks: t.nacks,
      lastNack: t.lastNack
    }))
  }))

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/**
 * How a certificate stands: `ok`; `renew-overdue` (a workload cert past its renewal time by more
 * than `RENEWAL_GRACE_MS`: the rotation is not happening); `expiring` (within a fifth of its
 * lifetime or 30 days of expiry, whichever is sooner); `expired`.
 */
export type CertificateTone = "ok" | "renew-overdue" | "expiring" | "expired"

/** The rotation checks the clock every few seconds; a renewal this late has failed or stalled. */
export const RENEWAL_GRACE_MS = 2 * 60_000
const NEAR_EXPIRY_CAP_MS = 30 * 24 * 3600_000

export const certificateTone = (
  now: number,
  notBefore: string,
  notAfter: string,
  renewAt?: string
): CertificateTone => {
  const start = Date.parse(notBefore)
  const end = Date.parse(notAfter)
  if (now >= end) return "expired"
  if (end - now <= Math.min((end - start) / 5, NEAR_EXPIRY_CAP_MS)) return "expiring"
  if (renewAt !== undefined && now > Date.parse(renewAt) + RENEWAL_GRACE_MS) return "renew-overdue"
  return "ok"
}

export interface CertificatesInput {
  readonly trustDomain: string
  readonly ca: string
  readonly roots: ReadonlyArray<{
    readonly subject: string
    readonly fingerprint: string
    readonly serial: string
    readonly notBefore: string
    readonly notAfter: string
    readonly state: string
  }>
  readonly identities: ReadonlyArray<{
    readonly spiffeId: string
    readonly serial: string
    readonly notBefore: string
    readonly notAfter: string
    readonly renewAt: string
  }>
  readonly renewals: number
  readonly failures: number
  readonly lastError: string | null
}

export const certificatesView = (status: CertificatesInput, now: number) => ({
  trustDomain: status.trustDomain,
  ca: status.ca,
  renewals: status.renewals,
  failures: status.failures,
  lastError: status.lastError,
  roots: status.roots.map((root) => ({ ...root, tone: certificateTone(now, root.notBefore, root.notAfter) })),
  identities: status.identities.map((identity) => ({
    ...identity,
    tone: certificateTone(now, identity.notBefore, identity.notAfter, identity.renewAt)
  }))
})

// ---------------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------------

const globText = (glob: Glob): string => {
  switch (glob._tag) {
    case "Any":
      return "*"
    case "Exact":
      return glob.value
    case "Prefix":
      return `${glob.value}*`
    case "Suffix":
      return `*${glob.value}`
  }
}

const ruleView = (rule: CompiledRule) => ({
  name: rule.name,
  action: rule.action,
  to: rule.to,
  from: rule.principals === "any" ? null : [...rule.principals],
  methods: rule.methods === undefined ? null : [...rule.methods],
  paths: rule.paths === undefined ? null : rule.paths.map(globText),
  ports: rule.ports === undefined ? null : [...rule.ports],
  headers: rule.headers === undefined ? null : rule.headers.map(([name, glob]) => `${name}: ${globText(glob)}`)
})

/** The compiled authorization rules by target (deny first, as they are evaluated), in config order. */
export const rulesView = (policy: CompiledPolicy) => ({
  trustDomain: policy.trustDomain,
  mtls: policy.mtls,
  defaultAction: policy.defaultAction,
  ruleCount: policy.ruleCount,
  trafficPolicies: [...policy.traffic.keys()],
  resiliencePolicies: [...policy.resilience.keys()],
  warnings: policy.warnings.map(String),
  targets: [...policy.rules]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([service, rules]) => ({ service, rules: [...rules.deny, ...rules.allow].map(ruleView) }))
})
