/**
 * `mesh-controller demo`: the first minute with the mesh (src/demo/Demo.ts), and `demo web` and
 * `demo greeter`, the demo's services, which `demo` starts as processes of their own. Each loads
 * its code when it runs.
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { Effect } from "effect"

const configOption = Options.file("config", { exists: "yes" }).pipe(
  Options.withAlias("c"),
  Options.withDescription("The demo's mesh config (greeter-v1, greeter-v2, web and their policy)."),
  Options.withDefault("examples/demo.yaml")
)

/** Started by `demo` (an IPC channel to it): stop, running the finalizers, when the demo is gone. */
const stopWithDemo = Effect.sync(() => {
  if (process.send !== undefined) process.once("disconnect", () => process.kill(process.pid, "SIGTERM"))
})

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
      stopWithDemo,
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

const greeter = Command.make(
  "greeter",
  {
    // An argument, not --version: that flag is the CLI's own (it prints the program's version).
    version: Args.text({ name: "VERSION" }).pipe(Args.withDescription("The version it answers with (v1, v2).")),
    port: Options.integer("port").pipe(Options.withDescription("The gRPC port on 127.0.0.1 (not 0)."))
  },
  ({ port, version }) =>
    Effect.zipRight(
      stopWithDemo,
      Effect.flatMap(
        Effect.promise(() => import("../demo/Greeter.js")),
        ({ greeter }) =>
          Effect.scoped(
            greeter(version, port).pipe(
              Effect.zipRight(Effect.logInfo(`demo greeter ${version}: serving on 127.0.0.1:${port}`)),
              Effect.zipRight(Effect.never)
            )
          )
      )
    )
).pipe(
  Command.withDescription(
    "One demo greeter instance alone (`demo` starts them): an xDS gRPC server ($GRPC_XDS_BOOTSTRAP; " +
      "GRPC_XDS_EXPERIMENTAL_RBAC=true for authorization)."
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
      "Run a small mesh on 127.0.0.1 to watch: the controller, greeter v1/v2, a web front, an intruder and a load loop. Ctrl-C stops it."
    ),
    Command.withSubcommands([web, greeter])
  )
