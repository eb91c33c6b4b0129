import { Args, Command, Options } from "@effect/cli"
import { Config as EffectConfig, Console, Effect, Layer } from "effect"
import { loadFile } from "../layers/LiveConfig.js"
import { agentCommand } from "./commands/agent.js"
import { makeCertsCommands } from "./commands/certs.js"
import { makeEnvoyCommand } from "./commands/envoy.js"
import { makePolicyCommand } from "./commands/policy.js"
import { makeTokenCommand } from "./commands/token.js"
import { summarize } from "./commands/Summary.js"
import { configJsonSchema } from "./ConfigSchema.js"
import { makeProgram } from "./program.js"
import { version } from "./Version.js"

/** `--config FILE`, or `MESH_CONFIG` from the environment. */
export const configOption = Options.file("config", { exists: "yes" }).pipe(
  Options.withAlias("c"),
  Options.withDescription("The mesh config file (YAML). Defaults to $MESH_CONFIG."),
  Options.withFallbackConfig(EffectConfig.string("MESH_CONFIG"))
)

const run = Command.make("run", { config: configOption }, ({ config }) =>
  Layer.launch(makeProgram({ configPath: config, version }))).pipe(
    Command.withDescription("Run the control plane daemon until SIGTERM or SIGINT.")
  )

const validate = Command.make(
  "validate",
  { file: Args.file({ name: "FILE" }).pipe(Args.withDescription("The config file to check.")) },
  ({ file }) =>
    loadFile(file).pipe(Effect.flatMap(({ config }) => Console.log(summarize(file, config))))
).pipe(Command.withDescription("Check a config file; print every problem found, with its path."))

const schema = Command.make("schema", {}, () => Console.log(JSON.stringify(configJsonSchema(), null, 2))).pipe(
  Command.withDescription("Print the config file's JSON Schema (for yaml-language-server and other editors).")
)

const { ca, certs } = makeCertsCommands(configOption)

export const rootCommand = Command.make("mesh-controller").pipe(
  Command.withDescription("The control plane of a small service mesh, served over Envoy's xDS protocol."),
  Command.withSubcommands([run, validate, schema, certs, ca, makeEnvoyCommand(configOption), makePolicyCommand(configOption),
    makeTokenCommand(configOption),
    agentCommand
  ])
)

export const cli = Command.run(rootCommand, { name: "mesh-controller", version })
