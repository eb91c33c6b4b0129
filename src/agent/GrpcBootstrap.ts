/**
 * The gRPC xDS bootstrap (gRFC A27, with A29's certificate providers and A36's server listener
 * template) for proxyless apps on an agent's host: they read it from $GRPC_XDS_BOOTSTRAP, reach
 * the controller's xDS server, and take their mTLS identity from the agent's files, which the
 * `file_watcher` provider re-reads after every renewal. Pure: the agent writes what this returns.
 */
import type { IdentityFiles } from "../certs/IdentityFiles.js"

export interface GrpcBootstrapOptions {
  /** host:port of the controller's xDS server. */
  readonly xdsServer: string
  readonly service: string
  readonly instance: string
  readonly files: IdentityFiles
  /** How often gRPC re-reads the files (the agent swaps them at half life). */
  readonly refreshSeconds?: number
  /**
   * `tls`: dial xDS over TLS with the same files (for `controller.xds.tls: mtls`); `insecure`:
   * plaintext xDS (the default controller setting).
   */
  readonly xdsChannel?: "insecure" | "tls"
}

/** The certificate provider instance name resources refer to (`certificate_provider_instance`). */
export const CERTIFICATE_PROVIDER = "mesh"

export const grpcBootstrap = (options: GrpcBootstrapOptions): Record<string, unknown> => {
  const files = {
    certificate_file: options.files.certificateChain,
    private_key_file: options.files.privateKey,
    ca_certificate_file: options.files.trustedCa
  }
  return {
    xds_servers: [
      {
        server_uri: options.xdsServer,
        channel_creds: options.xdsChannel === "tls" ? [{ type: "tls", config: files }] : [{ type: "insecure" }],
        server_features: ["xds_v3"]
      }
    ],
    node: { id: `${options.service}~${options.instance}`, cluster: options.service, locality: {} },
    certificate_providers: {
      [CERTIFICATE_PROVIDER]: {
        plugin_name: "file_watcher",
        config: { ...files, refresh_interval: `${options.refreshSeconds ?? 10}s` }
      }
    },
    server_listener_resource_name_template: "grpc/server?xds.resource.listening_address=%s"
  }
}
