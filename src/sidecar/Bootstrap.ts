/**
 * The Envoy bootstrap for one service's sidecar, as a pure function of the config. The value is
 * written in proto3 JSON form (what Envoy reads from YAML/JSON: durations as "10s", wrappers as
 * plain numbers, `Any` with "@type"), and `checkBootstrap` checks it against Envoy's own
 * `envoy.config.bootstrap.v3.Bootstrap` definition through src/xds/Protos.ts before anyone writes it.
 */
import type { Duration } from "effect"
import { Data, Either } from "effect"
import { createHash } from "node:crypto"
import * as NodeNet from "node:net"
import * as NodePath from "node:path"
import * as YAML from "yaml"
import type { MeshConfig } from "../../schemas/Config.js"
import { parseHostPort } from "../../schemas/Endpoint.js"
import { type IdentityFiles, identityFiles } from "../certs/IdentityFiles.js"
import { controllerId, serviceId } from "../certs/Spiffe.js"
import { socketAddress } from "../envoy/Messages.js"
import { durationJson, fromProto3Json } from "../envoy/Proto3Json.js"
import { statsConfig } from "../policy/Envoy.js"
import * as Protos from "../xds/Protos.js"

/** The static cluster Envoy reaches the controller's ADS server through. */
export const XDS_CLUSTER = "mesh-controller-xds"
const ADMIN_CLUSTER = "envoy-admin"
const TRACING_CLUSTER = "mesh-tracing"

export { type IdentityFiles, identityFiles } from "../certs/IdentityFiles.js"

/**
 * The bootstrap-level tracer, from `policies.observability.tracing`: the default provider for every
 * HTTP connection manager that traces. (The policy's per-HCM `tracing`, delivered over xDS with
 * its sampling, takes precedence where it names a provider; this one needs no CDS to work.)
 */
export interface TracingProvider {
  readonly kind: "opentelemetry"
  readonly collector: { readonly host: string; readonly port: number }
}

export interface BootstrapInput {
  readonly mesh: { readonly name: string; readonly trustDomain: string }
  readonly service: string
  readonly instance: string
  readonly xds: {
    readonly host: string
    readonly port: number
    readonly api: "delta" | "sotw"
    readonly initialFetchTimeout: Duration.Duration
    /** Present: mTLS to the controller with the service's identity. */
    readonly identity?: IdentityFiles
    /**
     * Present (with `identity`): Envoy takes the identity through file-based SDS, from resource
     * files kept in this directory (see `sdsFiles`), so it follows the identity directory's
     * renames. Absent: the files are named inline in the cluster, which Envoy reads only at start.
     */
    readonly sdsDir?: string
  }
  readonly admin: { readonly host: string; readonly port: number }
  readonly prometheus?: { readonly host: string; readonly port: number }
  readonly overload: { readonly maxHeapMiB: number; readonly maxConnections: number }
  readonly tracing?: TracingProvider
  /** Fixed tags on every stat (`policies.observability.statsTags`). */
  readonly statsTags: Readonly<Record<string, string>>
}

/** The sidecar section cannot produce a bootstrap (no service named, unknown service). */
export class BootstrapUnavailable extends Data.TaggedError("BootstrapUnavailable")<{ readonly reason: string }> {
  override get message(): string {
    return this.reason
  }
}

/** `<service>~<instance>`: the node id convention the xDS server parses. */
export const nodeId = (service: string, instance: string): string => `${service}~${instance}`

const WILDCARD = new Set(["0.0.0.0", "::", "[::]", ""])

/** Gathers the bootstrap's inputs from the config; `service` overrides `sidecar.envoy.service` (the CLI). */
export const inputFromConfig = (
  config: MeshConfig,
  options: { readonly instance: string; readonly service?: string }
): Either.Either<BootstrapInput, BootstrapUnavailable> => {
  const envoy = config.sidecar.envoy
  const observability = config.policies.observability
  const service = options.service ?? envoy.service
  if (service === undefined) {
    return Either.left(
      new BootstrapUnavailable({ reason: "no service named: set sidecar.envoy.service (or pass --service)" })
    )
  }
  if (!config.services.some((s) => s.name === service)) {
    const known = config.services.map((s) => s.name).join(", ") || "none"
    return Either.left(
      new BootstrapUnavailable({ reason: `unknown service "${service}" (services in the config: ${known})` })
    )
  }
  const xds = envoy.xdsAddress ?? {
    host: WILDCARD.has(config.controller.xds.host) ? "127.0.0.1" : config.controller.xds.host,
    port: config.controller.xds.port
  }
  return Either.right({
    mesh: config.mesh,
    service,
    instance: options.instance,
    xds: {
      host: xds.host,
      port: xds.port,
      api: envoy.xdsApi,
      initialFetchTimeout: envoy.initialFetchTimeout,
      ...(config.controller.xds.tls === "mtls" ? { identity: identityFiles(config.certificates.dir, service) } : {})
    },
    admin: envoy.admin,
    ...(envoy.prometheus !== undefined ? { prometheus: envoy.prometheus } : {}),
    overload: envoy.overload,
    ...(observability.tracing !== undefined
      ? { tracing: { kind: "opentelemetry" as const, collector: parseHostPort(observability.tracing.collector) } }
      : {}),
    statsTags: observability.statsTags
  })
}

/**
 * The bootstrap's inputs for the agent's Envoy (`mesh-controller agent --envoy`): no config file
 * on that host, so the identity the agent holds names the mesh (its trust domain, also used as
 * node.metadata.mesh) and the service; Envoy reaches the controller's xDS over mTLS with the
 * agent's files, through file-based SDS kept in `sdsDir`.
 */
export const inputForAgent = (options: {
  readonly trustDomain: string
  readonly service: string
  readonly instance: string
  readonly xds: { readonly host: string; readonly port: number }
  readonly envoy: MeshConfig["sidecar"]["envoy"]
  readonly identity: IdentityFiles
  readonly sdsDir: string
}): BootstrapInput => ({
  mesh: { name: options.trustDomain, trustDomain: options.trustDomain },
  service: options.service,
  instance: options.instance,
  xds: {
    host: options.xds.host,
    port: options.xds.port,
    api: options.envoy.xdsApi,
    initialFetchTimeout: options.envoy.initialFetchTimeout,
    identity: options.identity,
    sdsDir: options.sdsDir
  },
  admin: options.envoy.admin,
  ...(options.envoy.prometheus !== undefined ? { prometheus: options.envoy.prometheus } : {}),
  overload: options.envoy.overload,
  statsTags: {}
})

const staticCluster = (name: string, host: string, port: number, extra: Record<string, unknown> = {}) => ({
  name,
  // An IP needs no resolver; a name is re-resolved (the controller may move).
  type: NodeNet.isIP(host) === 0 ? "STRICT_DNS" : "STATIC",
  connect_timeout: "1s",
  load_assignment: {
    cluster_name: name,
    endpoints: [{ lb_endpoints: [{ endpoint: { address: socketAddress(host, port) } }] }]
  },
  ...extra
})

const http2Options = {
  "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": Protos.typeUrl(Protos.Types.HttpProtocolOptions),
    explicit_http_config: { http2_protocol_options: { connection_keepalive: { interval: "30s", timeout: "5s" } } }
  }
}

const upstreamMtls = (input: BootstrapInput, identity: IdentityFiles) => ({
  name: "envoy.transport_sockets.tls",
  typed_config: {
    "@type": Protos.typeUrl(Protos.Types.UpstreamTlsContext),
    common_tls_context: {
      tls_certificates: [{
        certificate_chain: { filename: identity.certificateChain },
        private_key: { filename: identity.privateKey },
        // Rotation: the Certificates layer replaces the files by rename in this directory.
        watched_directory: { path: identity.directory }
      }],
      validation_context: {
        trusted_ca: { filename: identity.trustedCa },
        watched_directory: { path: identity.directory },
        match_typed_subject_alt_names: [{ san_type: "URI", matcher: { exact: controllerId(input.mesh.trustDomain) } }]
      },
      alpn_protocols: ["h2"]
    }
  }
})

/** The names of the two file-based SDS secrets (one per file: Envoy's SDS takes one secret per subscription). */
export const SDS_IDENTITY = "mesh-identity"
export const SDS_TRUST = "mesh-trust"

/** Where the file-based SDS resources go, and what they say. */
export interface SdsFile {
  readonly path: string
  /** A `DiscoveryResponse` in proto3 JSON form holding one `Secret`. */
  readonly json: Record<string, unknown>
}

/**
 * The identity as file-based SDS: one `DiscoveryResponse` file per secret, each naming the
 * identity files and watching their directory. Envoy reloads a `path_config_source` when an entry
 * of its `watched_directory` is moved to, and re-reads the certificate and key together (checked
 * for a consistent pair) on the secret's own `watched_directory`: with the agent's `..data` swap
 * (layers/internal/AtomicWriter.ts) that is one rename, so a renewal reaches Envoy without a restart.
 * Statically named files (no SDS) are read once at start: Envoy documents `watched_directory` as
 * applying only to secrets delivered by SDS.
 */
export const sdsFiles = (identity: IdentityFiles, sdsDir: string): ReadonlyArray<SdsFile> => {
  const watched = { path: identity.directory }
  const file = (name: string, secret: Record<string, unknown>): SdsFile => ({
    path: NodePath.join(sdsDir, `${name}.yaml`),
    json: { resources: [{ "@type": Protos.typeUrl(Protos.Types.Secret), name, ...secret }] }
  })
  return [
    file(SDS_IDENTITY, {
      tls_certificate: {
        certificate_chain: { filename: identity.certificateChain },
        private_key: { filename: identity.privateKey },
        watched_directory: watched
      }
    }),
    file(SDS_TRUST, {
      validation_context: { trusted_ca: { filename: identity.trustedCa }, watched_directory: watched }
    })
  ]
}

const sdsConfig = (path: string, identity: IdentityFiles) => ({
  path_config_source: { path, watched_directory: { path: identity.directory } },
  resource_api_version: "V3"
})

const upstreamMtlsSds = (input: BootstrapInput, identity: IdentityFiles, sdsDir: string) => {
  const [certificate, trust] = sdsFiles(identity, sdsDir)
  return {
    name: "envoy.transport_sockets.tls",
    typed_config: {
      "@type": Protos.typeUrl(Protos.Types.UpstreamTlsContext),
      common_tls_context: {
        tls_certificate_sds_secret_configs: [{
          name: SDS_IDENTITY,
          sds_config: sdsConfig(certificate!.path, identity)
        }],
        combined_validation_context: {
          default_validation_context: {
            match_typed_subject_alt_names: [{
              san_type: "URI",
              matcher: { exact: controllerId(input.mesh.trustDomain) }
            }]
          },
          validation_context_sds_secret_config: { name: SDS_TRUST, sds_config: sdsConfig(trust!.path, identity) }
        },
        alpn_protocols: ["h2"]
      }
    }
  }
}

const prometheusListener = (prometheus: { readonly host: string; readonly port: number }) => ({
  name: "prometheus-stats",
  address: socketAddress(prometheus.host, prometheus.port),
  filter_chains: [{
    filters: [{
      name: "envoy.filters.network.http_connection_manager",
      typed_config: {
        "@type": Protos.typeUrl(Protos.Types.HttpConnectionManager),
        stat_prefix: "prometheus_stats",
        route_config: {
          name: "prometheus-stats",
          virtual_hosts: [{
            name: "stats",
            domains: ["*"],
            routes: [{ match: { path: "/stats/prometheus" }, route: { cluster: ADMIN_CLUSTER } }]
          }]
        },
        http_filters: [{
          name: "envoy.filters.http.router",
          typed_config: { "@type": Protos.typeUrl(Protos.Types.Router) }
        }]
      }
    }]
  }]
})

const FIXED_HEAP = "envoy.resource_monitors.fixed_heap"
const MAX_CONNECTIONS = "envoy.resource_monitors.global_downstream_max_connections"
export const OVERLOAD_TYPES = {
  FixedHeap: "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
  DownstreamConnections: "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
  OpenTelemetry: "envoy.config.trace.v3.OpenTelemetryConfig"
} as const

/** Limits for a small host: shrink the heap at 90% of the budget, refuse new requests at 98%. */
const overloadManager = (overload: BootstrapInput["overload"]) => ({
  refresh_interval: "0.250s",
  resource_monitors: [
    {
      name: FIXED_HEAP,
      typed_config: {
        "@type": Protos.typeUrl(OVERLOAD_TYPES.FixedHeap),
        max_heap_size_bytes: overload.maxHeapMiB * 1024 * 1024
      }
    },
    {
      name: MAX_CONNECTIONS,
      typed_config: {
        "@type": Protos.typeUrl(OVERLOAD_TYPES.DownstreamConnections),
        max_active_downstream_connections: overload.maxConnections
      }
    }
  ],
  actions: [
    { name: "envoy.overload_actions.shrink_heap", triggers: [{ name: FIXED_HEAP, threshold: { value: 0.9 } }] },
    {
      name: "envoy.overload_actions.stop_accepting_requests",
      triggers: [{ name: FIXED_HEAP, threshold: { value: 0.98 } }]
    }
  ]
})

/** The bootstrap, in proto3 JSON form (serialise it with `toYaml`). */
export const buildBootstrap = (input: BootstrapInput): Record<string, unknown> => {
  const configSource = {
    ads: {},
    resource_api_version: "V3",
    initial_fetch_timeout: durationJson(input.xds.initialFetchTimeout)
  }
  const identity = input.xds.identity
  const clusters: Array<Record<string, unknown>> = [
    staticCluster(XDS_CLUSTER, input.xds.host, input.xds.port, {
      typed_extension_protocol_options: http2Options,
      ...(identity === undefined
        ? {}
        : {
          transport_socket: input.xds.sdsDir === undefined
            ? upstreamMtls(input, identity)
            : upstreamMtlsSds(input, identity, input.xds.sdsDir)
        })
    })
  ]
  if (input.prometheus !== undefined) clusters.push(staticCluster(ADMIN_CLUSTER, input.admin.host, input.admin.port))
  if (input.tracing !== undefined) {
    clusters.push(staticCluster(TRACING_CLUSTER, input.tracing.collector.host, input.tracing.collector.port, {
      typed_extension_protocol_options: http2Options
    }))
  }
  return {
    node: {
      id: nodeId(input.service, input.instance),
      cluster: input.service,
      metadata: {
        mesh: input.mesh.name,
        service: input.service,
        instance: input.instance,
        spiffe_id: serviceId(input.mesh.trustDomain, input.service)
      }
    },
    dynamic_resources: {
      ads_config: {
        api_type: input.xds.api === "delta" ? "DELTA_GRPC" : "GRPC",
        transport_api_version: "V3",
        set_node_on_first_message_only: true,
        grpc_services: [{ envoy_grpc: { cluster_name: XDS_CLUSTER } }]
      },
      cds_config: configSource,
      lds_config: configSource
    },
    static_resources: {
      clusters,
      ...(input.prometheus !== undefined ? { listeners: [prometheusListener(input.prometheus)] } : {})
    },
    admin: { address: socketAddress(input.admin.host, input.admin.port) },
    stats_config: statsConfig(input.statsTags),
    overload_manager: overloadManager(input.overload),
    ...(input.tracing !== undefined
      ? {
        tracing: {
          http: {
            name: "envoy.tracers.opentelemetry",
            typed_config: {
              "@type": Protos.typeUrl(OVERLOAD_TYPES.OpenTelemetry),
              grpc_service: { envoy_grpc: { cluster_name: TRACING_CLUSTER } },
              service_name: input.service
            }
          }
        }
      }
      : {})
  }
}

/** The YAML Envoy reads (`-c bootstrap.yaml`). */
export const toYaml = (bootstrap: Record<string, unknown>): string =>
  YAML.stringify(bootstrap, { lineWidth: 0, aliasDuplicateObjects: false })

/** The bootstrap's version: the first 12 hex digits of the sha256 of its YAML. */
export const versionOf = (yaml: string): string => createHash("sha256").update(yaml).digest("hex").slice(0, 12)

// ---------------------------------------------------------------------------------------------
// Checking against Envoy's protobuf definitions
// ---------------------------------------------------------------------------------------------

/** Checks a bootstrap (proto3 JSON form, e.g. parsed from YAML) against Envoy's `Bootstrap` message. */
export const checkBootstrap = (bootstrap: unknown): Either.Either<Uint8Array, Protos.ProtoInvalid> => {
  const type = Protos.lookupType(Protos.Types.Bootstrap)
  return Protos.encode(Protos.Types.Bootstrap, fromProto3Json(type, bootstrap))
}

/** Checks a file-based SDS resource file against Envoy's `DiscoveryResponse` (and the `Secret` in it). */
export const checkSdsFile = (json: unknown): Either.Either<Uint8Array, Protos.ProtoInvalid> => {
  const type = Protos.lookupType(Protos.Types.DiscoveryResponse)
  return Protos.encode(Protos.Types.DiscoveryResponse, fromProto3Json(type, json))
}

/** Builds, checks and renders: what `envoy bootstrap` prints and the Sidecar layer writes. */
export interface RenderedBootstrap {
  readonly json: Record<string, unknown>
  readonly yaml: string
  /** Of the bootstrap and its SDS files together. */
  readonly version: string
  /** The file-based SDS resources the bootstrap names (written before it); empty without `xds.sdsDir`. */
  readonly sds: ReadonlyArray<{ readonly path: string; readonly yaml: string }>
}

export const renderBootstrap = (input: BootstrapInput): Either.Either<RenderedBootstrap, Protos.ProtoInvalid> => {
  const json = buildBootstrap(input)
  const identity = input.xds.identity
  const sds = identity === undefined || input.xds.sdsDir === undefined ? [] : sdsFiles(identity, input.xds.sdsDir)
  return Either.flatMap(
    checkBootstrap(json),
    () =>
      Either.map(Either.all(sds.map((file) => checkSdsFile(file.json))), () => {
        const yaml = toYaml(json)
        const files = sds.map((file) => ({ path: file.path, yaml: toYaml(file.json) }))
        const version = files.length === 0
          ? versionOf(yaml)
          : versionOf([yaml, ...files.map((file) => `${file.path}\n${file.yaml}`)].join("\n---\n"))
        return { json, yaml, version, sds: files }
      })
  )
}
