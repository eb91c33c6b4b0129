/**
 * The command line of `grpc bootstrap`: its options and help. The code is grpc.ts, imported when
 * the command runs, so `--help` does not load it (nor the Schema module its error needs).
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { Effect } from "effect"

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
    (args) =>
      Effect.flatMap(Effect.promise(() => import("./grpc.js")), ({ bootstrapCommand }) => bootstrapCommand(args))
  ).pipe(Command.withDescription("Print the gRPC xDS bootstrap (JSON) for a proxyless app: $GRPC_XDS_BOOTSTRAP."))

  return Command.make("grpc").pipe(
    Command.withDescription("Proxyless gRPC apps."),
    Command.withSubcommands([bootstrap])
  )
}
