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
import type { MeshState, Service } from "../MeshState.js"
import { rbacFilters, servicePolicyKey, TRACING_CLUSTER, tracingCluster } from "../policy/Envoy.js"
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
  readonly ownSecrets?: ReadonlyMap<string, XdsResource>
  /**
   * What every group depends on besides its own service: the compiled policy (by identity: compiled once per config), the mesh TLS
   * settings and the service names (a route's destination exists or not). Equal inputs and an
   * equal service value mean an equal group.
   */
  readonly inputs?: { readonly policy: object; readonly tls: string; readonly names: ReadonlyArray<string> }
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
  // The server listener's inputs are part of the group's version: a change to them reaches servers.
  const version = server === undefined
    ? versionOf(resources)
    : hash(`${versionOf(resources)}\n${JSON.stringify(server)}`)
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

const sameNames = (a: ReadonlyArray<string>, b: ReadonlyArray<string>) =>
  a === b || (a.length === b.length && a.every((n, i) => n === b[i]))

/** Builds the snapshot for `state`, reusing `previous`'s work for services whose inputs did not change. */
export const buildSnapshot = (state: MeshState, previous: XdsSnapshot = emptySnapshot): XdsSnapshot => {
  const names = state.services.map((s) => s.name)
  const known = new Set(names)
  const tls = meshTls(state)
  const inputs = { policy: state.policy, tls: JSON.stringify([tls ?? null, state.policy.mtls]), names }
  const was = previous.inputs
  const sameInputs = was !== undefined && was.policy === inputs.policy && was.tls === inputs.tls &&
    sameNames(was.names, names)
  const groups = new Map<string, ServiceGroup>()
  const errors: Array<SnapshotError> = []
  for (const service of state.services) {
    const before = previous.groups.get(service.name)
    if (sameInputs && before?.source !== undefined && sameService(before.source, service)) {
      groups.set(service.name, before)
      continue
    }
    const key = groupKey(service, state, known, tls)
    if (before !== undefined && before.key === key) {
      groups.set(service.name, before)
      continue
    }
    try {
      groups.set(service.name, buildGroup(service, key, state, (name) => known.has(name), tls))
    } catch (error) {
      if (!(error instanceof ServiceInvalid)) throw error
      errors.push({ service: error.service, message: error.message, servingPrevious: before !== undefined })
      if (before !== undefined) groups.set(service.name, before)
    }
  }
  const byType = new Map<string, Map<string, XdsResource>>(
    Object.values(TypeUrls).map((url) => [url, new Map<string, XdsResource>()])
  )
  const add = (r: XdsResource) => byType.get(r.typeUrl)!.set(r.name, r)
  for (const group of groups.values()) group.resources.forEach(add)

  // The shared outbound route configuration holds every service's virtual host: re-encode it only
  // when one of them changed (unchanged groups keep their virtual host object).
  const virtualHosts = [...groups.values()].flatMap((g) => (g.outboundVirtualHost ? [g.outboundVirtualHost] : []))
  const before = previous.outbound
  const mesh = meshResourcesFor(state.policy.observability)
  const sameHosts = before !== undefined && before.virtualHosts.length === virtualHosts.length &&
    before.virtualHosts.every((v, i) => v === virtualHosts[i] || JSON.stringify(v) === JSON.stringify(virtualHosts[i]))
  const outbound = sameHosts && before.listener === mesh.listener
    ? before
    : {
      virtualHosts,
      listener: mesh.listener,
      routes: sameHosts
        ? before.routes
        : resource("(mesh)", Types.RouteConfiguration, OUTBOUND_HTTP, routeConfiguration(OUTBOUND_HTTP, virtualHosts))
    }
  if (mesh.tracing !== undefined) add(mesh.tracing)
  add(outbound.listener)
  add(outbound.routes)

  const ownSecrets = new Map<string, XdsResource>()
  for (const [name, secret] of state.secrets ?? []) {
    try {
      const encoded = secretResourcesFor(name, secret)
      add(encoded.main)
      if (encoded.own !== undefined) ownSecrets.set(name, encoded.own)
      if (encoded.bundle !== undefined) add(encoded.bundle)
    } catch (error) {
      if (!(error instanceof ServiceInvalid)) throw error
      errors.push({ service: `secret ${name}`, message: error.message, servingPrevious: false })
    }
  }

  // The snapshot's version from the groups' versions: no need to walk every resource again.
  const parts: Array<string> = []
  for (const group of groups.values()) parts.push(group.service, group.version)
  parts.push(outbound.listener.version, outbound.routes.version)
  for (const secret of byType.get(TypeUrls.Secret)!.values()) parts.push(secret.name, secret.version)
  if (mesh.tracing !== undefined) parts.push(mesh.tracing.name, mesh.tracing.version)
  const changed = new Map<string, Set<string>>([...byType.keys()].map((url) => [url, new Set<string>()]))
  const mark = (r: XdsResource) => changed.get(r.typeUrl)?.add(r.name)
  for (const [name, group] of groups) {
    const old = previous.groups.get(name)
    if (old !== group && old?.version !== group.version) {
      group.resources.forEach(mark)
      old?.resources.forEach(mark)
      changed.get(TypeUrls.Listener)?.add(serverListenerMarker(name))
    }
  }
  for (const [name, old] of previous.groups) {
    if (groups.has(name)) continue
    old.resources.forEach(mark)
    changed.get(TypeUrls.Listener)?.add(serverListenerMarker(name))
  }
  if (previous.outbound !== outbound) {
    mark(outbound.listener)
    mark(outbound.routes)
  }
  const secrets = byType.get(TypeUrls.Secret)!
  const oldSecrets = previous.resources.get(TypeUrls.Secret) ?? new Map<string, XdsResource>()
  for (const [name, r] of secrets) if (oldSecrets.get(name)?.version !== r.version) mark(r)
  for (const [name, r] of oldSecrets) if (!secrets.has(name)) mark(r)
  const oldTracing = previous.resources.get(TypeUrls.Cluster)?.get(TRACING_CLUSTER)
  if (oldTracing?.version !== mesh.tracing?.version) mark(mesh.tracing ?? oldTracing!)
  // Any identity's certificate changed: every stream re-resolves its `OWN_SECRET`.
  const oldOwn = previous.ownSecrets ?? new Map<string, XdsResource>()
  if (ownSecrets.size !== oldOwn.size || [...ownSecrets].some(([id, r]) => oldOwn.get(id)?.version !== r.version)) {
    changed.get(TypeUrls.Secret)?.add(OWN_SECRET)
  }

  return {
    changes: { from: previous.version, names: changed },
    inputs,
    version: hash(parts.join("\n")),
    resources: byType,
    groups,
    errors,
    ownSecrets,
    availability: new Map(state.services.map((s) => [s.name, routing(s, new Map()).available])),
    outbound
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
