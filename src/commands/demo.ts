/**
 * `mesh-controller demo`: the first minute with the mesh (src/demo/Demo.ts), and `demo web`, the
 * demo's web front, which `demo` starts as its own process. Both load their code when they run.
 */
import { Command, Options } from "@effect/cli"
import { Effect } from "effect"

const configOption = Options.file("config", { exists: "yes" }).pipe(
  Options.withAlias("c"),
  Options.withDescription("The demo's mesh config (greeter-v1, greeter-v2, web and their policy)."),
  Options.withDefault("examples/demo.yaml")
)

const web = Command.make(
  "web",
  {
    port: Options.integer("port").pipe(Options.withDescription("The HTTP port on 127.0.0.1.")),
    target: Options.text("target").pipe(
      Options.withDefault("greeter"),
      Options.withDescription("The service called as xds:///<target>.")
    )
  },
  ({ port, target }) =>
    Effect.zipRight(
      // Started by `demo` (an IPC channel to it): stop, running the finalizers, when the demo is gone.
      Effect.sync(() => {
        if (process.send !== undefined) process.once("disconnect", () => process.kill(process.pid, "SIGTERM"))
      }),
      Effect.flatMap(
        Effect.promise(() => import("../demo/Web.js")),
        ({ web }) => Effect.scoped(Effect.zipRight(web(port, target), Effect.never))
      )
    )
).pipe(
  Command.withDescription(
    "The demo's web front alone (`demo` starts it): GET /hello calls the target through xDS ($GRPC_XDS_BOOTSTRAP)."
  )
)

export const makeDemoCommand = (version: string) =>
  Command.make(
    "demo",
    { config: configOption },
    ({ config }) =>
      Effect.flatMap(
        Effect.promise(() => import("../demo/Demo.js")),
        ({ runDemo }) =>
          Effect.scoped(runDemo({
            configPath: config,
            version,
            // The web front is this executable again, as `demo web`.
            self: { command: process.execPath, args: [...process.execArgv, process.argv[1]!] }
          }))
      )
  ).pipe(
    Command.withDescription(
      "Run a small mesh on 127.0.0.1 to watch: the controller, greeter v1/v2, a web front and a load loop. Ctrl-C stops it."
    ),
    Command.withSubcommands([web])
  )
