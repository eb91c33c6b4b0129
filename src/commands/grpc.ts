/**
 * `grpc bootstrap --config F --service NAME --instance ID --certs DIR [--xds HOST:PORT]`: prints
 * the gRPC xDS bootstrap (JSON) for a proxyless app, built by the same function as the agent's
 * file (src/agent/GrpcBootstrap.ts), so both name the same certificate provider (`mesh`) and the
 * same server listener template. Point $GRPC_XDS_BOOTSTRAP at what it prints. The command line
 * itself (options, help) is in grpcCommand.ts, which loads this module when the command runs.
 */
import { Console, Effect, Option, Schema } from "effect"

/** Bad flags: which one and why (the CLI prints the reason and exits 1). */
export class GrpcBootstrapInvalid extends Schema.TaggedError<GrpcBootstrapInvalid>()("GrpcBootstrapInvalid", {
  reason: Schema.String
}) {
  override get message() {
    return this.reason
  }
}

const HOST_PORT = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

/** The address proxyless apps dial: the configured xDS listen address, a wildcard host read as loopback. */
const defaultXds = (host: string, port: number): string => {
  const dialled = host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "[::1]" : host.includes(":") ? `[${host}]` : host
  return `${dialled}:${port}`
}

/** What `grpc bootstrap` is given on the command line. */
export interface BootstrapArgs {
  readonly config: string
  readonly service: string
  readonly instance: string
  readonly certs: string
  readonly xds: Option.Option<string>
}

/** `grpc bootstrap`: checks the flags, reads the config, prints the bootstrap. */
export const bootstrapCommand = ({ certs, config, instance, service, xds }: BootstrapArgs) =>
  Effect.gen(function*() {
    const [{ loadFile }, { grpcBootstrap }, { filesIn }] = yield* Effect.promise(() =>
      Promise.all([
        import("../../layers/LiveConfig.js"),
        import("../agent/GrpcBootstrap.js"),
        import("../certs/IdentityFiles.js")
      ])
    )
    if (!NAME.test(service)) {
      return yield* new GrpcBootstrapInvalid({
        reason: `--service: ${JSON.stringify(service)} is not a service name`
      })
    }
    if (!NAME.test(instance)) {
      return yield* new GrpcBootstrapInvalid({
        reason: `--instance: ${JSON.stringify(instance)} must be letters, digits, '.', '_' or '-' (no '~')`
      })
    }
    if (Option.isSome(xds) && !HOST_PORT.test(xds.value)) {
      return yield* new GrpcBootstrapInvalid({
        reason: `--xds: expected HOST:PORT, got ${JSON.stringify(xds.value)}`
      })
    }
    const { config: mesh } = yield* loadFile(config)
    const listen = mesh.controller.xds
    const document = grpcBootstrap({
      xdsServer: Option.getOrElse(xds, () => defaultXds(listen.host, listen.port)),
      xdsChannel: listen.tls === "mtls" ? "tls" : "insecure",
      service,
      instance,
      files: filesIn(certs)
    })
    yield* Console.log(JSON.stringify(document, null, 2))
  })
