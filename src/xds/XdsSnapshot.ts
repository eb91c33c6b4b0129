/**
 * The pure snapshot builder: MeshState → versioned, encoded xDS resources. Each resource is
 * encoded once here (an encoded `google.protobuf.Any`) and its version is a hash of those bytes;
 * the server writes the same bytes to every stream.
 *
 * One service's bad input (a route to a service that does not exist, a host name where an IP
 * address belongs, a resource Envoy's protos reject) is reported with the service's name; that
 * service keeps the resources of the previous snapshot, if it had any, and the others are built
 * as usual.
 */
import { createHash } from "node:crypto"
import protobuf from "protobufjs"
import { CERTIFICATE_PROVIDER } from "../agent/GrpcBootstrap.js"
import { ROOT_CA_SECRET } from "../certs/Sds.js"
import { routing } from "../health/Routing.js"
import { byName, changedSince, findByName, type MeshState, type Service } from "../MeshState.js"
import { rbacFilters, servicePolicyKey, TRACING_CLUSTER, tracingCluster } from "../policy/Envoy.js"
import { pairDigest, xorInto } from "./HeldVersions.js"
import { LayeredMap } from "./LayeredMap.js"
import { check, encode, Types, typeUrl, TypeUrls } from "./Protos.js"
import {
  apiListener,
  edsCluster,
  inboundCluster,
  inboundListener,
  inboundName,
  loadAssignment,
  type MeshTls,
  OUTBOUND_HTTP,
  outboundHttpListener,
  outboundName,
  outboundTcpListener,
  OWN_SECRET,
  type PlainObject,
  type ProxylessTls,
  proxylessUpstreamTls,
  routeConfiguration,
  routesFor,
  serverListener,
  serverListenerAddress,
  serverListenerMarker,
  ServiceInvalid,
  TRUST_BUNDLE,
  virtualHost,
  withDownstreamTls,
  withUpstreamTls
} from "./Resources.js"

/** One encoded resource. */
export interface XdsResource {
  readonly name: string
  readonly typeUrl: string
  /** A hash of the encoded resource: equal bytes, equal version. */
  readonly version: string
  /** The encoded `google.protobuf.Any` (type_url + value), ready to be embedded in a response. */
  readonly any: Uint8Array
}

/** Everything built from one service, kept so an unchanged service is not rebuilt. */
export interface ServiceGroup {
  readonly service: string
  /** The inputs the group was built from; equal keys, equal resources. */
  readonly key: string
  readonly resources: ReadonlyArray<XdsResource>
  /** The service's virtual host in the sidecars' shared outbound route configuration. */
  readonly outboundVirtualHost: PlainObject | undefined
  readonly tcp: boolean
  /** `versionOf(resources)`. */
  readonly version: string
  /** The service value it was built from: an unchanged one is recognised without computing `key`. */
  readonly source?: Service
  /**
   * What a proxyless gRPC server of this service is sent for its Listener (named after the address
   * it binds, so built per request by `serverListenerResource`); absent for TCP services.
   */
  readonly server?: { readonly rbac: ReadonlyArray<PlainObject>; readonly tls: ProxylessTls | undefined }
}

export interface SnapshotError {
  readonly service: string
  readonly message: string
  /** The service is still served with the resources of an earlier snapshot. */
  readonly servingPrevious: boolean
}

export interface XdsSnapshot {
  /** A hash over every resource's name and version. */
  readonly version: string
  /** type URL → resource name → resource. */
  readonly resources: ReadonlyMap<string, ReadonlyMap<string, XdsResource>>
  readonly groups: ReadonlyMap<string, ServiceGroup>
  readonly errors: ReadonlyArray<SnapshotError>
  /** service → can take traffic (at least one endpoint healthy or unknown); for grpc.health.v1. */
  readonly availability: ReadonlyMap<string, boolean>
  /**
   * What changed since the snapshot this one was built from (`from` is its version): type URL →
   * names added, changed or removed. Lets a Delta stream look at those names only.
   */
  readonly changes?: { readonly from: string; readonly names: ReadonlyMap<string, ReadonlySet<string>> }
  /**
   * SPIFFE ID → that identity's certificate as a Secret named `OWN_SECRET`: what the server sends
   * a stream of that identity that asks for `OWN_SECRET` (never listed in `resources`).
   */
  readonly ownSecrets?: ReadonlyMap<string, XdsResource> | undefined
  /**
   * What every group depends on besides its own service: the compiled policy (by identity: compiled once per config), the mesh TLS
   * settings and the service names (a route's destination exists or not). Equal inputs and an
   * equal service value mean an equal group.
   */
  readonly inputs?: object
  /** The sidecars' shared outbound listener and route configuration, kept for reuse. */
  readonly outbound?: {
    readonly virtualHosts: ReadonlyArray<PlainObject>
    readonly listener: XdsResource
    readonly routes: XdsResource
  }
}

export const emptySnapshot: XdsSnapshot = {
  version: "",
  resources: new Map(),
  groups: new Map(),
  errors: [],
  availability: new Map()
}

const hash = (data: Uint8Array | string): string => createHash("sha256").update(data).digest("base64url").slice(0, 16)

/** Hash of a set of resources: what a SotW `version_info` names. */
export const versionOf = (resources: Iterable<XdsResource>): string => {
  const parts: Array<string> = []
  for (const resource of resources) parts.push(resource.name, resource.version)
  return hash(parts.join("\n"))
}

/** Wraps encoded bytes into an encoded `google.protobuf.Any`. */
const encodeAnyBytes = (url: string, value: Uint8Array): Uint8Array =>
  protobuf.Writer.create().uint32(10).string(url).uint32(18).bytes(value).finish()

/** Strictly checks and encodes one resource; a problem becomes the owning service's error. */
export const resource = (owner: string, typeName: string, name: string, object: PlainObject): XdsResource => {
  const encoded = encode(typeName, object)
  if (encoded._tag === "Left") {
    throw new ServiceInvalid(
      owner,
      `${typeName.slice(typeName.lastIndexOf(".") + 1)} "${name}": ${encoded.left.issues.join("; ")}`
    )
  }
  const url = typeUrl(typeName)
  return { name, typeUrl: url, version: hash(encoded.right), any: encodeAnyBytes(url, encoded.right) }
}

const buildGroup = (
  service: Service,
  key: string,
  state: MeshState,
  known: (name: string) => boolean,
  tls: MeshTls | undefined
): ServiceGroup => {
  const policy = state.policy.traffic.get(service.name)
  const compiled = state.policy
  const name = service.name
  const proxyless = proxylessTls(state)
  const clientCluster = edsCluster(name, service, false, compiled)
  const resources: Array<XdsResource> = [
    resource(name, Types.Listener, name, apiListener(service)),
    resource(
      name,
      Types.RouteConfiguration,
      name,
      routeConfiguration(name, [virtualHost(service, routesFor(service, policy, (s) => s, known))])
    ),
    resource(
      name,
      Types.Cluster,
      name,
      proxyless ? { ...clientCluster, transport_socket: proxylessUpstreamTls(proxyless, name) } : clientCluster
    ),
    resource(name, Types.ClusterLoadAssignment, name, loadAssignment(service)),
    resource(
      name,
      Types.Cluster,
      outboundName(name),
      tlsCluster(edsCluster(outboundName(name), service, true, compiled), service, tls)
    ),
    resource(
      name,
      Types.Listener,
      inboundName(name),
      tls ? withDownstreamTls(inboundListener(service, compiled), tls, service) : inboundListener(service, compiled)
    ),
    resource(name, Types.Cluster, inboundName(name), inboundCluster(service))
  ]
  const tcp = service.protocol === "tcp"
  const server = tcp ? undefined : { rbac: rbacFilters(compiled, name), tls: proxyless }
  // Checked once here with a stand-in address, so a proto problem is this service's build error.
  if (server !== undefined) {
    resource(
      name,
      Types.Listener,
      serverListenerMarker(name),
      serverListener(serverListenerMarker(name), "127.0.0.1", 1, name, server.rbac, server.tls)
    )
  }
  if (tcp) resources.push(resource(name, Types.Listener, outboundName(name), outboundTcpListener(service)))
  const outboundVirtualHost = tcp ? undefined : virtualHost(service, routesFor(service, policy, outboundName, known))
  if (outboundVirtualHost !== undefined) {
    const issues = check("envoy.config.route.v3.VirtualHost", outboundVirtualHost)
    if (issues.length > 0) throw new ServiceInvalid(name, `outbound virtual host: ${issues.join("; ")}`)
  }
  const version = groupVersion(resources, server)
  return {
    service: name,
    key,
    resources,
    outboundVirtualHost,
    tcp,
    version,
    source: service,
    ...(server ? { server } : {})
  }
}

const tlsCluster = (cluster: PlainObject, service: Service, tls: MeshTls | undefined) =>
  tls ? withUpstreamTls(cluster, tls, service) : cluster

/**
 * Sidecar mTLS is on when certificates are served (the trust bundle is among the secrets) and
 * sidecars can read their own keys (`sidecarKeys`): a listener or cluster naming a secret that
 * never comes would keep Envoy waiting for it.
 */
export const meshTls = (state: MeshState): MeshTls | undefined =>
  state.secrets?.has(ROOT_CA_SECRET) && state.sidecarKeys === true
    ? { trustDomain: state.mesh.trustDomain, mode: state.policy.mtls }
    : undefined

/**
 * Proxyless mTLS is on under `mtls: strict` alone: proxyless apps read their certificates from
 * files (the agent's, or `certs issue`'s) through the bootstrap's certificate provider, not over
 * SDS. Permissive stays plaintext for them: a gRPC server cannot tell TLS from plaintext callers
 * on one port (A36 drops filter chains matching on `transport_protocol`).
 */
export const proxylessTls = (state: MeshState): ProxylessTls | undefined =>
  state.policy.mtls === "strict" ? { trustDomain: state.mesh.trustDomain, instance: CERTIFICATE_PROVIDER } : undefined

/** The server Listener `name` for a proxyless server of `service`; undefined if it has none or the name is no address. */
const serverListeners = new WeakMap<object, Map<string, XdsResource>>()
export const serverListenerResource = (
  snapshot: XdsSnapshot,
  service: string | undefined,
  name: string
): XdsResource | undefined => {
  const server = service === undefined ? undefined : snapshot.groups.get(service)?.server
  const address = serverListenerAddress(name)
  if (server === undefined || service === undefined || address === undefined) return undefined
  let byName = serverListeners.get(server)
  if (byName === undefined) serverListeners.set(server, byName = new Map())
  const cached = byName.get(name)
  if (cached !== undefined) return cached
  try {
    const built = resource(
      service,
      Types.Listener,
      name,
      serverListener(name, address.host, address.port, service, server.rbac, server.tls)
    )
    // A server binds a handful of addresses; the bound keeps a client naming many from growing this.
    if (byName.size < 64) byName.set(name, built)
    return built
  } catch (error) {
    if (error instanceof ServiceInvalid) return undefined
    throw error
  }
}

/** What a service's resources depend on: itself, its policy, and whether its destinations exist. */
const groupKey = (service: Service, state: MeshState, known: ReadonlySet<string>, tls: MeshTls | undefined): string => {
  const policy = state.policy.traffic.get(service.name)
  const destinations = policy?.routes.flatMap((r) => r.destinations.map((d) => `${d.service}:${known.has(d.service)}`))
  // The rest of the policy that applies to the service: authorization, resilience, observability.
  const rest = servicePolicyKey(state.policy, service.name)
  return JSON.stringify([service, policy ?? null, destinations ?? null, rest, tls ?? null, state.policy.mtls])
}

/** The outbound listener and the tracing collector's cluster, encoded once per observability setting. */
const meshResources = new WeakMap<
  object,
  { readonly listener: XdsResource; readonly tracing: XdsResource | undefined }
>()
const meshResourcesFor = (observability: MeshState["policy"]["observability"]) => {
  const cached = meshResources.get(observability)
  if (cached !== undefined) return cached
  const collector = tracingCluster(observability)
  const built = {
    listener: resource("(mesh)", Types.Listener, OUTBOUND_HTTP, outboundHttpListener(observability)),
    tracing: collector === undefined ? undefined : resource("(mesh)", Types.Cluster, TRACING_CLUSTER, collector)
  }
  meshResources.set(observability, built)
  return built
}

/**
 * A secret's resources (itself, its `OWN_SECRET` alias, the matcher-free bundle), encoded once per
 * secret value: the secrets only change when the Certificates layer publishes, not on every rebuild.
 */
interface SecretResources {
  readonly name: string
  readonly main: XdsResource
  readonly own: XdsResource | undefined
  readonly bundle: XdsResource | undefined
}
const secretResources = new WeakMap<object, SecretResources>()
const secretResourcesFor = (name: string, secret: Readonly<Record<string, unknown>>): SecretResources => {
  const cached = secretResources.get(secret)
  if (cached !== undefined && cached.name === name) return cached
  const trusted = name === ROOT_CA_SECRET
    ? (secret as { validation_context?: { trusted_ca?: unknown } }).validation_context?.trusted_ca
    : undefined
  const built: SecretResources = {
    name,
    main: resource("(secrets)", Types.Secret, name, { ...secret, name }),
    own: "tls_certificate" in secret
      ? resource("(secrets)", Types.Secret, OWN_SECRET, { ...secret, name: OWN_SECRET })
      : undefined,
    bundle: trusted === undefined
      ? undefined
      : resource("(secrets)", Types.Secret, TRUST_BUNDLE, {
        name: TRUST_BUNDLE,
        validation_context: { trusted_ca: trusted }
      })
  }
  secretResources.set(secret, built)
  return built
}

/**
 * The same service value, compared one level deep: the registry rebuilds its service objects on
 * every change but keeps their parts (endpoints, tags, metadata) when they did not change, so this
 * recognises an unchanged service without serialising it (what made a one-endpoint change cost
 * O(services) in `groupKey`). A false "different" only costs the `groupKey` comparison.
 */
const sameService = (a: Service, b: Service): boolean =>
  a === b || (
    a.name === b.name && a.protocol === b.protocol && a.port === b.port && a.failMode === b.failMode &&
    a.source === b.source && a.healthCheck === b.healthCheck && a.tags === b.tags && a.metadata === b.metadata &&
    a.endpoints.length === b.endpoints.length && a.endpoints.every((e, i) => e === b.endpoints[i])
  )

/** A group's version: its resources', and the server listener's inputs (a change to them reaches servers). */
const groupVersion = (resources: ReadonlyArray<XdsResource>, server: ServiceGroup["server"]): string =>
  server === undefined ? versionOf(resources) : hash(`${versionOf(resources)}\n${JSON.stringify(server)}`)

/** The same service but for its endpoints: every other part the same object (see `sameService`). */
const onlyEndpointsDiffer = (a: Service, b: Service): boolean =>
  a.name === b.name && a.protocol === b.protocol && a.port === b.port && a.failMode === b.failMode &&
  a.source === b.source && a.healthCheck === b.healthCheck && a.tags === b.tags && a.metadata === b.metadata

/**
 * `buildGroup` for a service whose endpoints alone changed, with the rest of its inputs the same
 * (`sameInputs`): only the ClusterLoadAssignment reads the endpoints, so the group's other
 * resources, virtual host and server listener inputs are the previous group's, and the one resource
 * is rebuilt in its place (so the version is the one a full build gives). Rebuilding and checking
 * the other six resources was most of a one-endpoint change's build.
 */
const withEndpoints = (before: ServiceGroup, service: Service, key: string): ServiceGroup => {
  const name = service.name
  const resources = before.resources.map((r) =>
    r.typeUrl === TypeUrls.ClusterLoadAssignment && r.name === name
      ? resource(name, Types.ClusterLoadAssignment, name, loadAssignment(service))
      : r
  )
  return { ...before, key, resources, version: groupVersion(resources, before.server), source: service }
}

/**
 * The services of `now` that are not the very objects `before` held at their place; undefined when
 * the names differ (a service added or removed). The registry keeps unchanged services by identity
 * and names the ones it replaced (`changedSince`): then only those are looked at; otherwise it is a
 * pointer comparison per service.
 */
const changedServices = (
  before: ReadonlyArray<Service>,
  now: ReadonlyArray<Service>
): Array<Service> | undefined => {
  const out: Array<Service> = []
  if (before === now) return out
  if (before.length !== now.length) return undefined
  // The registry says which services it replaced: look at those alone, not at every service.
  const named = changedSince(before, now)
  if (named !== undefined) {
    for (const name of named) {
      const service = findByName(now, name)
      const old = findByName(before, name)
      if (service === undefined || old === undefined) return undefined
      if (service !== old) out.push(service)
    }
    // In the registry's order, as the scan finds them (build errors are reported in this order).
    return out.length > 1 ? out.sort(byName) : out
  }
  for (let i = 0; i < now.length; i++) {
    const service = now[i]!
    const old = before[i]!
    if (service === old) continue
    if (service.name !== old.name) return undefined
    out.push(service)
  }
  return out
}

/** What `buildSnapshot` keeps between builds so the next one can start from this one. */
interface BuildInputs {
  readonly policy: object
  readonly tls: string
  readonly services: ReadonlyArray<Service>
  readonly known: ReadonlySet<string>
  readonly secrets: MeshState["secrets"]
  /** XOR of `pairDigest(service, group version)` over every group: a content hash of the set, kept by XOR. */
  readonly digest: Uint8Array
  /** The secrets' and tracing cluster's part of the version. */
  readonly shared: string
}

/**
 * Builds the snapshot for `state`, reusing `previous`'s work for services whose inputs did not change.
 *
 * A one-endpoint change must not cost O(services): services the registry kept by identity are
 * recognised by a pointer comparison, the resource, group and availability maps are the previous
 * ones with the changed entries layered over them (`LayeredMap`), and the version is a content hash
 * of the set of groups kept up to date by XOR. The result is the same as a build from nothing:
 * equal content, equal version, on any controller.
 */
export const buildSnapshot = (state: MeshState, previous: XdsSnapshot = emptySnapshot): XdsSnapshot => {
  const tls = meshTls(state)
  const tlsKey = JSON.stringify([tls ?? null, state.policy.mtls])
  const was = previous.inputs as BuildInputs | undefined
  // The services to look at: every one, unless the previous build had the same inputs; then only
  // those whose value is not the very object it was built from, and those whose build failed.
  const changedNow = was !== undefined && was.policy === state.policy && was.tls === tlsKey
    ? changedServices(was.services, state.services)
    : undefined
  const sameInputs = changedNow !== undefined
  const known = sameInputs ? was!.known : new Set(state.services.map((s) => s.name))
  let candidates: ReadonlyArray<Service> = state.services
  if (changedNow !== undefined) {
    for (const error of previous.errors) {
      const service = findByName(state.services, error.service)
      if (service !== undefined && !changedNow.includes(service)) changedNow.push(service)
    }
    candidates = changedNow
  }

  const changedGroups = new Map<string, ServiceGroup | undefined>()
  const errors: Array<SnapshotError> = []
  for (const service of candidates) {
    const before = previous.groups.get(service.name)
    // A group whose last build failed may hold resources of older inputs: it is built whole.
    const reusable = sameInputs && !previous.errors.some((e) => e.service === service.name)
    const next = nextGroup(service, before, sameInputs, reusable, state, known, tls, errors)
    if (next !== before) changedGroups.set(service.name, next)
  }
  if (!sameInputs) {
    for (const name of previous.groups.keys()) if (!known.has(name)) changedGroups.set(name, undefined)
  }

  const groups = LayeredMap.of(previous.groups).with(changedGroups)
  const resourceChanges = new Map<string, Array<readonly [string, XdsResource | undefined]>>()
  const change = (url: string, name: string, r: XdsResource | undefined) => {
    let list = resourceChanges.get(url)
    if (list === undefined) resourceChanges.set(url, list = [])
    list.push([name, r])
  }
  for (const [name, group] of changedGroups) {
    const old = previous.groups.get(name)
    for (const r of old?.resources ?? []) change(r.typeUrl, r.name, undefined)
    for (const r of group?.resources ?? []) change(r.typeUrl, r.name, r)
  }

  // The shared outbound route configuration holds every service's virtual host: re-encode it only
  // when one of them changed (unchanged groups keep their virtual host object).
  const mesh = meshResourcesFor(state.policy.observability)
  const beforeOutbound = previous.outbound
  const hostsChanged = beforeOutbound === undefined || !sameInputs ||
    [...changedGroups].some(([name, group]) => {
      const old = previous.groups.get(name)?.outboundVirtualHost
      const now = group?.outboundVirtualHost
      return old !== now && JSON.stringify(old) !== JSON.stringify(now)
    })
  const virtualHosts = hostsChanged
    ? state.services.flatMap((s) => {
      const vh = groups.get(s.name)?.outboundVirtualHost
      return vh ? [vh] : []
    })
    : beforeOutbound.virtualHosts
  const sameHosts = beforeOutbound !== undefined && (!hostsChanged || (
    beforeOutbound.virtualHosts.length === virtualHosts.length &&
    beforeOutbound.virtualHosts.every((v, i) =>
      v === virtualHosts[i] || JSON.stringify(v) === JSON.stringify(virtualHosts[i])
    )
  ))
  const outbound = sameHosts && beforeOutbound.listener === mesh.listener
    ? beforeOutbound
    : {
      virtualHosts,
      listener: mesh.listener,
      routes: sameHosts
        ? beforeOutbound.routes
        : resource("(mesh)", Types.RouteConfiguration, OUTBOUND_HTTP, routeConfiguration(OUTBOUND_HTTP, virtualHosts))
    }
  change(outbound.listener.typeUrl, outbound.listener.name, outbound.listener)
  change(outbound.routes.typeUrl, outbound.routes.name, outbound.routes)
  const oldTracing = previous.resources.get(TypeUrls.Cluster)?.get(TRACING_CLUSTER)
  change(TypeUrls.Cluster, TRACING_CLUSTER, mesh.tracing)

  // Secrets change when the Certificates layer publishes: the same map, the same encoded secrets.
  const sameSecrets = was !== undefined && was.secrets === state.secrets
  const ownSecrets: Map<string, XdsResource> = sameSecrets
    ? previous.ownSecrets as Map<string, XdsResource> ?? new Map()
    : new Map()
  const oldSecrets = previous.resources.get(TypeUrls.Secret) ?? new Map<string, XdsResource>()
  if (!sameSecrets) {
    const secrets = new Map<string, XdsResource>()
    for (const [name, secret] of state.secrets ?? []) {
      try {
        const encoded = secretResourcesFor(name, secret)
        secrets.set(encoded.main.name, encoded.main)
        if (encoded.own !== undefined) ownSecrets.set(name, encoded.own)
        if (encoded.bundle !== undefined) secrets.set(encoded.bundle.name, encoded.bundle)
      } catch (error) {
        if (!(error instanceof ServiceInvalid)) throw error
        errors.push({ service: `secret ${name}`, message: error.message, servingPrevious: false })
      }
    }
    for (const name of oldSecrets.keys()) if (!secrets.has(name)) change(TypeUrls.Secret, name, undefined)
    for (const [name, r] of secrets) if (oldSecrets.get(name) !== r) change(TypeUrls.Secret, name, r)
  } else {
    for (const e of previous.errors) if (e.service.startsWith("secret ")) errors.push(e)
  }

  const resources = new Map<string, ReadonlyMap<string, XdsResource>>()
  for (const url of Object.values(TypeUrls)) {
    const before = previous.resources.get(url) ?? new Map<string, XdsResource>()
    const list = resourceChanges.get(url)
    resources.set(url, list === undefined ? LayeredMap.of(before) : LayeredMap.of(before).with(list))
  }

  // The version: a hash of every group's version (by XOR, so only changed groups are hashed), the
  // outbound listener and routes, the secrets and the tracing cluster.
  const digest = new Uint8Array(was !== undefined && previous.groups.size > 0 ? was.digest : new Uint8Array(16))
  for (const [name, group] of changedGroups) {
    const old = previous.groups.get(name)
    if (old !== undefined) xorInto(digest, pairDigest(name, old.version))
    if (group !== undefined) xorInto(digest, pairDigest(name, group.version))
  }
  const secretsNow = resources.get(TypeUrls.Secret)!
  const shared = sameSecrets && oldTracing?.version === mesh.tracing?.version
    ? was.shared
    : [
      ...[...secretsNow.values()].sort(byName).flatMap((
        r
      ) => [r.name, r.version]),
      ...(mesh.tracing !== undefined ? [mesh.tracing.name, mesh.tracing.version] : [])
    ].join("\n")
  const version = hash(
    [Buffer.from(digest).toString("base64url"), outbound.listener.version, outbound.routes.version, shared].join("\n")
  )

  // What changed, per type, for streams in step with `previous`.
  const changed = new Map<string, Set<string>>(Object.values(TypeUrls).map((url) => [url, new Set<string>()]))
  const mark = (r: XdsResource) => changed.get(r.typeUrl)?.add(r.name)
  for (const [name, group] of changedGroups) {
    const old = previous.groups.get(name)
    if (old?.version === group?.version) continue
    group?.resources.forEach(mark)
    old?.resources.forEach(mark)
    changed.get(TypeUrls.Listener)?.add(serverListenerMarker(name))
  }
  if (previous.outbound !== outbound) {
    mark(outbound.listener)
    mark(outbound.routes)
  }
  if (!sameSecrets) {
    for (const [name, r] of secretsNow) if (oldSecrets.get(name)?.version !== r.version) mark(r)
    for (const [name, r] of oldSecrets) if (!secretsNow.has(name)) mark(r)
    // Any identity's certificate changed: every stream re-resolves its `OWN_SECRET`.
    const oldOwn = previous.ownSecrets ?? new Map<string, XdsResource>()
    if (ownSecrets.size !== oldOwn.size || [...ownSecrets].some(([id, r]) => oldOwn.get(id)?.version !== r.version)) {
      changed.get(TypeUrls.Secret)?.add(OWN_SECRET)
    }
  }
  if (oldTracing?.version !== mesh.tracing?.version) mark(mesh.tracing ?? oldTracing!)

  // Availability depends on the service value alone: only the services looked at can have changed.
  const availability = sameInputs
    ? LayeredMap.of(previous.availability).with(
      candidates.map((service) => [service.name, routing(service, new Map()).available] as const)
    )
    : new Map(state.services.map((service) => [service.name, routing(service, new Map()).available]))
  const inputs: BuildInputs = {
    policy: state.policy,
    tls: tlsKey,
    services: state.services,
    known,
    secrets: state.secrets,
    digest,
    shared
  }
  return {
    changes: { from: previous.version, names: changed },
    inputs,
    version,
    resources,
    groups,
    errors,
    ownSecrets,
    availability,
    outbound
  }
}

/** The group of `service` for this build: the previous one when its inputs are unchanged. */
const nextGroup = (
  service: Service,
  before: ServiceGroup | undefined,
  sameInputs: boolean,
  /** `sameInputs`, and the previous build of this group did not fail: its other resources are current. */
  reusable: boolean,
  state: MeshState,
  known: ReadonlySet<string>,
  tls: MeshTls | undefined,
  errors: Array<SnapshotError>
): ServiceGroup | undefined => {
  if (sameInputs && before?.source !== undefined && sameService(before.source, service)) return before
  const key = groupKey(service, state, known, tls)
  if (before !== undefined && before.key === key) return before
  try {
    return reusable && before?.source !== undefined && onlyEndpointsDiffer(before.source, service)
      ? withEndpoints(before, service, key)
      : buildGroup(service, key, state, (name) => known.has(name), tls)
  } catch (error) {
    if (!(error instanceof ServiceInvalid)) throw error
    errors.push({ service: error.service, message: error.message, servingPrevious: before !== undefined })
    return before
  }
}

// ---------------------------------------------------------------------------------------------
// Who gets what
// ---------------------------------------------------------------------------------------------

/**
 * Node id convention for Envoy sidecars: `<service>~<instance>` (e.g. `echo~host-a-1`). The part
 * before the first `~` names the service the sidecar fronts; it gets that service's inbound
 * listener and cluster. Any other Envoy (say, a gateway) gets the outbound view only.
 */
export const sidecarService = (nodeId: string): string | undefined => {
  const i = nodeId.indexOf("~")
  return i > 0 ? nodeId.slice(0, i) : undefined
}

/**
 * The names a wildcard subscription (Envoy's LDS and CDS) receives. Proxyless gRPC clients never
 * subscribe by wildcard: they name `<service>` resources.
 */
export const wildcardNames = (snapshot: XdsSnapshot, url: string, nodeId: string): ReadonlyArray<string> =>
  wildcardNamesOf(snapshot, url, sidecarService(nodeId))

/** `wildcardNames` for the sidecar of service `own` (undefined: not a sidecar). */
export const wildcardNamesOf = (snapshot: XdsSnapshot, url: string, own: string | undefined): ReadonlyArray<string> => {
  if (url !== TypeUrls.Listener && url !== TypeUrls.Cluster) return []
  return [...(snapshot.resources.get(url)?.keys() ?? [])].filter((n) => inWildcard(url, own, n))
}

/** Whether resource `name` of type `url` belongs to the wildcard set of the sidecar of `own`. */
export const inWildcard = (url: string, own: string | undefined, name: string): boolean => {
  if (url === TypeUrls.Listener) {
    return name === OUTBOUND_HTTP || (name.startsWith("outbound|") && name !== outboundName(own ?? "")) ||
      (own !== undefined && name === inboundName(own))
  }
  if (url === TypeUrls.Cluster) return name.startsWith("outbound|") || (own !== undefined && name === inboundName(own))
  return false
}
