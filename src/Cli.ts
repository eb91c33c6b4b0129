import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import type * as NodeContext from "@effect/platform-node/NodeContext"
import { Config as EffectConfig, Console, Effect, Layer } from "effect"
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

/** What the commands need from the runtime: main.ts provides NodeContext. */
type AnyCommand = Command.Command<any, NodeContext.NodeContext, any, any>

/**
 * The command groups whose modules are heavy (the CA, Consul, the config schema, the policy
 * compiler), in the order `--help` lists them, each loaded by a dynamic import. A command line
 * that names one of them loads that one only: `mesh-controller agent` on a small host does not
 * carry the CA or Consul's client (its idle memory), and every command starts sooner. What a group
 * loads here is its command line alone (options and help: `commands/<name>Command.ts`); its code is
 * imported when one of its commands runs, so `--help`, which loads every group, loads no handler.
 */
const groups: ReadonlyArray<{
  readonly names: ReadonlyArray<string>
  readonly load: (version: string) => Promise<ReadonlyArray<AnyCommand>>
}> = [
  {
    names: ["certs", "ca"],
    load: () =>
      import("./commands/certsCommands.js").then(({ makeCertsCommands }) => {
        const { ca, certs } = makeCertsCommands(configOption)
        return [certs, ca]
      })
  },
  { names: ["envoy"], load: () => import("./commands/envoy.js").then((m) => [m.makeEnvoyCommand(configOption)]) },
  { names: ["grpc"], load: () => import("./commands/grpcCommand.js").then((m) => [m.makeGrpcCommand(configOption)]) },
  {
    names: ["policy"],
    load: () => import("./commands/policyCommand.js").then((m) => [m.makePolicyCommand(configOption)])
  },
  {
    names: ["token"],
    load: () => import("./commands/tokenCommand.js").then((m) => [m.makeTokenCommand(configOption)])
  },
  { names: ["agent"], load: () => import("./commands/agentCommand.js").then((m) => [m.agentCommand]) },
  { names: ["demo"], load: (version) => import("./commands/demo.js").then((m) => [m.makeDemoCommand(version)]) }
]

const BUILT_IN: ReadonlyArray<string> = ["run", "validate", "schema"]

/**
 * The command the arguments name: the first one that is not an option. Anything else (no
 * command, `--help`, an option before the command, a typo) gets every group, so help and
 * usage errors list them all.
 */
const namedGroups = (argv: ReadonlyArray<string>) => {
  const first = argv.slice(2).find((arg) => !arg.startsWith("-"))
  // `run`, `validate` and `schema` are defined here: the daemon's command line loads no group.
  if (first !== undefined && argv[2] === first && BUILT_IN.includes(first)) return []
  const named = groups.filter((group) => first !== undefined && group.names.includes(first))
  return named.length === 1 && argv[2] === first ? named : groups
}

/** The root command with the groups `argv` needs (all of them when `argv` is omitted). */
export const makeRootCommand = (version: string, argv?: ReadonlyArray<string>) =>
  Effect.promise(() =>
    Promise.all((argv === undefined ? groups : namedGroups(argv)).map((group) => group.load(version)))
  ).pipe(
    Effect.map((loaded) =>
      Command.make("mesh-controller").pipe(
        Command.withDescription("The control plane of a small service mesh, served over Envoy's xDS protocol."),
        Command.withSubcommands([makeRun(version), validate, schema, ...loaded.flat()])
      )
    )
  )

/** The CLI: the package version is read when it runs (for --version and the daemon's /status). */
export const cli = (argv: ReadonlyArray<string>) =>
  Effect.flatMap(
    packageVersion,
    (version) =>
      Effect.flatMap(
        makeRootCommand(version, argv),
        (root) => Command.run(root, { name: "mesh-controller", version })(argv)
      )
  )
