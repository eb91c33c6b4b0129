/**
 * `grpc bootstrap --config F --service NAME --instance ID --certs DIR [--xds HOST:PORT]`: prints
 * the gRPC xDS bootstrap (JSON) for a proxyless app, built by the same function as the agent's
 * file (src/agent/GrpcBootstrap.ts), so both name the same certificate provider (`mesh`) and the
 * same server listener template. Point $GRPC_XDS_BOOTSTRAP at what it prints.
 */
import { Command, Options } from "@effect/cli"
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

export const makeGrpcCommand = (configOption: Options.Options<string>) => {
  const bootstrap = Command.make(
    "bootstrap",
    {
      config: configOption,
      service: Options.text("service").pipe(
        Options.withDescription("The service the app is (node.id <service>~<instance>).")
      ),
      instance: Options.text("instance").pipe(
        Options.withDescription("This instance's name (the part of node.id after ~).")
      ),
      certs: Options.directory("certs", { exists: "either" }).pipe(
        Options.withDescription("The directory of cert.pem, key.pem and ca.pem (the agent's, or `certs issue --out`).")
      ),
      xds: Options.text("xds").pipe(
        Options.optional,
        Options.withDescription("HOST:PORT of the controller's xDS server (default: controller.xds from the config).")
      )
    },
    ({ certs, config, instance, service, xds }) =>
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
  ).pipe(Command.withDescription("Print the gRPC xDS bootstrap (JSON) for a proxyless app: $GRPC_XDS_BOOTSTRAP."))

  return Command.make("grpc").pipe(
    Command.withDescription("Proxyless gRPC apps."),
    Command.withSubcommands([bootstrap])
  )
}
