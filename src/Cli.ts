import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { Config as EffectConfig, Console, Effect, Layer } from "effect"
import { agentCommand } from "./commands/agent.js"
import { makeCertsCommands } from "./commands/certs.js"
import { makeDemoCommand } from "./commands/demo.js"
import { makeEnvoyCommand } from "./commands/envoy.js"
import { makeGrpcCommand } from "./commands/grpc.js"
import { makePolicyCommand } from "./commands/policy.js"
import { makeTokenCommand } from "./commands/token.js"
import { packageVersion } from "./Version.js"

// The daemon, the config loader and the schema are imported when their command runs, not when the
// CLI starts: `--help` and a mistyped command must not pay for loading every layer (start-up
// matters on a Raspberry Pi; the executable is a bundle split at these imports).
const daemon = () => import("./program.js")
const configFile = () => import("../layers/LiveConfig.js")

/** `--config FILE`, or `MESH_CONFIG` from the environment. */
export const configOption = Options.file("config", { exists: "yes" }).pipe(
  Options.withAlias("c"),
  Options.withDescription("The mesh config file (YAML). Defaults to $MESH_CONFIG."),
  Options.withFallbackConfig(EffectConfig.string("MESH_CONFIG"))
)

const makeRun = (version: string) =>
  Command.make(
    "run",
    { config: configOption },
    ({ config }) =>
      Effect.flatMap(
        Effect.promise(daemon),
        ({ makeProgram }) => Layer.launch(makeProgram({ configPath: config, version }))
      )
  ).pipe(
    Command.withDescription("Run the control plane daemon until SIGTERM or SIGINT; SIGHUP reloads the config.")
  )

const validate = Command.make(
  "validate",
  { file: Args.file({ name: "FILE" }).pipe(Args.withDescription("The config file to check.")) },
  ({ file }) =>
    Effect.promise(() => Promise.all([configFile(), import("./commands/Summary.js")])).pipe(
      Effect.flatMap(([{ loadFile }, { summarize }]) =>
        loadFile(file).pipe(Effect.flatMap(({ config }) => Console.log(summarize(file, config))))
      )
    )
).pipe(Command.withDescription("Check a config file; print every problem found, with its path."))

const schema = Command.make("schema", {}, () =>
  Effect.flatMap(
    Effect.promise(() => import("./ConfigSchema.js")),
    ({ configJsonSchema }) => Console.log(JSON.stringify(configJsonSchema(), null, 2))
  )).pipe(
    Command.withDescription("Print the config file's JSON Schema (for yaml-language-server and other editors).")
  )

const { ca, certs } = makeCertsCommands(configOption)

export const makeRootCommand = (version: string) =>
  Command.make("mesh-controller").pipe(
    Command.withDescription("The control plane of a small service mesh, served over Envoy's xDS protocol."),
    Command.withSubcommands([
      makeRun(version),
      validate,
      schema,
      certs,
      ca,
      makeEnvoyCommand(configOption),
      makeGrpcCommand(configOption),
      makePolicyCommand(configOption),
      makeTokenCommand(configOption),
      agentCommand,
      makeDemoCommand(version)
    ])
  )

/** The CLI: the package version is read when it runs (for --version and the daemon's /status). */
export const cli = (argv: ReadonlyArray<string>) =>
  Effect.flatMap(
    packageVersion,
    (version) => Command.run(makeRootCommand(version), { name: "mesh-controller", version })(argv)
  )
