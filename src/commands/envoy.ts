/**
 * `envoy bootstrap --service NAME [--config FILE]`: prints the Envoy bootstrap (YAML) the Sidecar
 * layer would write for that service, checked against Envoy's Bootstrap proto. For hosts whose
 * Envoy the controller does not run itself: `mesh-controller envoy bootstrap --service echo > envoy.yaml`.
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { Console, Effect, Either, Option } from "effect"
import * as NodeOs from "node:os"

/** The `envoy` command group, built around the CLI's own `--config` option (as `certs` is). */
export const makeEnvoyCommand = (configOption: Options.Options<string>) => {
  const bootstrap = Command.make(
    "bootstrap",
    {
      config: configOption,
      service: Options.text("service").pipe(
        Options.withDescription("The service the Envoy fronts (node.cluster). Defaults to sidecar.envoy.service."),
        Options.optional
      ),
      instance: Options.text("instance").pipe(
        Options.withDescription(
          "The instance part of node.id (<service>~<instance>). Defaults to sidecar.envoy.instance, then this host's name."
        ),
        Options.optional
      )
    },
    ({ config, instance, service }) =>
      Effect.gen(function*() {
        // Imported when the command runs, not when the CLI starts (start-up).
        const [{ loadFile }, { SidecarConfigInvalid }, { inputFromConfig, renderBootstrap }] = yield* Effect.promise(
          () =>
            Promise.all([
              import("../../layers/LiveConfig.js"),
              import("../../layers/Sidecar.js"),
              import("../sidecar/Bootstrap.js")
            ])
        )
        const loaded = yield* loadFile(config)
        const input = yield* Either.match(
          inputFromConfig(loaded.config, {
            instance: Option.getOrElse(instance, () => loaded.config.sidecar.envoy.instance ?? NodeOs.hostname()),
            ...(Option.isSome(service) ? { service: service.value } : {})
          }),
          {
            onLeft: (error) => Effect.fail(new SidecarConfigInvalid({ reason: error.reason })),
            onRight: Effect.succeed
          }
        )
        const rendered = yield* Either.match(renderBootstrap(input), {
          onLeft: (error) =>
            Effect.fail(new SidecarConfigInvalid({ reason: `generated bootstrap rejected: ${error.message}` })),
          onRight: Effect.succeed
        })
        yield* Console.log(rendered.yaml.trimEnd())
      })
  ).pipe(
    Command.withDescription(
      "Print the Envoy bootstrap (YAML) for a service's sidecar, checked against Envoy's Bootstrap proto."
    )
  )

  return Command.make("envoy").pipe(
    Command.withDescription("The Envoy sidecar."),
    Command.withSubcommands([bootstrap])
  )
}
