/**
 * The command line of `policy check`: its options and help. The code (the policy compiler and
 * the decision) is policy.ts, imported when the command runs, so `--help` does not load it.
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { Effect } from "effect"

const optionalText = (name: string, description: string) =>
  Options.text(name).pipe(Options.withDescription(description), Options.optional)

/** `policy check`, built around the CLI's own `--config` option (as `makeCertsCommands`). */
export const makePolicyCommand = (configOption: Options.Options<string>) => {
  const check = Command.make(
    "check",
    {
      config: configOption,
      from: Options.text("from").pipe(Options.withDescription("The caller: a service name or a spiffe:// ID.")),
      to: Options.text("to").pipe(Options.withDescription("The service called.")),
      method: optionalText("method", "The HTTP method (gRPC calls are POST)."),
      path: optionalText("path", "The request path (for gRPC: /package.Service/Method)."),
      port: Options.integer("port").pipe(Options.withDescription("The port the request arrives on."), Options.optional),
      header: Options.keyValueMap("header").pipe(
        Options.withDescription("A request header, k=v; repeat for more."),
        Options.optional
      )
    },
    (args) => Effect.flatMap(Effect.promise(() => import("./policy.js")), ({ checkCommand }) => checkCommand(args))
  ).pipe(
    Command.withDescription(
      "Decide one request with the config's policy: prints allow/deny and the rule that decided. Exit 0 allow, 3 deny."
    )
  )

  return Command.make("policy").pipe(
    Command.withDescription("Inspect the mesh's compiled policy."),
    Command.withSubcommands([check])
  )
}
