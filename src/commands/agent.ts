/**
 * `mesh-controller agent`: runs layers/Agent.ts until SIGTERM. Bad input (an unreadable or spent
 * token, a controller whose root the token does not pin) ends it with one line and exit 1; an
 * unreachable controller is retried.
 */
import { Command, Options } from "@effect/cli"
import { Duration, Effect, Layer, Option } from "effect"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { Agent, AgentRefused, defaultBootstrapFile } from "../../layers/Agent.js"
import { parseDurationMillis } from "../../schemas/Duration.js"

const HOST_PORT = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/

const hostPort = (flag: string, text: string) => {
  const match = HOST_PORT.exec(text)
  const port = match === null ? NaN : Number(match[2])
  return match === null || port > 65535
    ? Effect.fail(new AgentRefused({ reason: `--${flag}: expected HOST:PORT, got ${JSON.stringify(text)}` }))
    : Effect.succeed({ host: match[1]!.replace(/^\[|\]$/g, ""), port, text })
}

const duration = (flag: string, text: string) =>
  Option.match(parseDurationMillis(text), {
    onNone: () =>
      Effect.fail(
        new AgentRefused({ reason: `--${flag}: expected a duration such as 500ms or 30s, got ${JSON.stringify(text)}` })
      ),
    onSome: (millis) => Effect.succeed(Duration.millis(millis))
  })

export const agentCommand = Command.make(
  "agent",
  {
    controller: Options.text("controller").pipe(
      Options.withDescription("HOST:PORT of the controller's signing service (port 15012 by default there).")
    ),
    tokenFile: Options.file("token-file").pipe(
      Options.optional,
      Options.withDescription("The join token (needed once: later starts reuse the certificate in --dir).")
    ),
    dir: Options.directory("dir", { exists: "either" }).pipe(
      Options.withDescription("Where cert.pem, key.pem (0600) and ca.pem are kept.")
    ),
    service: Options.text("service").pipe(
      Options.optional,
      Options.withDescription("The service this host is (checked against the token).")
    ),
    instance: Options.text("instance").pipe(
      Options.withDefault(NodeOs.hostname()),
      Options.withDescription("This host's instance name (node id <service>~<instance>).")
    ),
    admin: Options.text("admin").pipe(
      Options.withDefault("127.0.0.1:15021"),
      Options.withDescription("The agent's /healthz and /metrics (HOST:PORT; port 0 picks one).")
    ),
    xds: Options.text("xds").pipe(
      Options.optional,
      Options.withDescription(
        "HOST:PORT of the controller's xDS server for the gRPC bootstrap (default: the controller's host, port 15010)."
      )
    ),
    xdsTls: Options.boolean("xds-tls").pipe(
      Options.withDescription("Proxyless apps dial xDS over mTLS with these files (controller.xds.tls: mtls).")
    ),
    bootstrap: Options.text("grpc-bootstrap").pipe(
      Options.optional,
      Options.withDescription("Where to write the gRPC xDS bootstrap (default: DIR/grpc-bootstrap.json).")
    ),
    envoy: Options.boolean("envoy").pipe(
      Options.withDescription(
        "Also run the local Envoy once the certificate is held: its bootstrap reaches --xds over mTLS with these " +
          "files (file-based SDS, so renewals need no restart); needs --xds-tls. Envoy stops when the agent stops."
      )
    ),
    envoyPath: Options.text("envoy-path").pipe(
      Options.withDefault("envoy"),
      Options.withDescription("The Envoy binary (with --envoy).")
    ),
    envoyAdmin: Options.text("envoy-admin").pipe(
      Options.withDefault("127.0.0.1:15000"),
      Options.withDescription("Envoy's admin address (HOST:PORT; port 0 picks one).")
    ),
    envoyDir: Options.text("envoy-dir").pipe(
      Options.optional,
      Options.withDescription("Where Envoy's bootstrap and SDS files go (default: envoy/ beside --dir).")
    ),
    retryMax: Options.text("retry-max").pipe(
      Options.withDefault("30s"),
      Options.withDescription("The longest wait between retries when the controller is unreachable.")
    ),
    bundleInterval: Options.text("bundle-interval").pipe(
      Options.withDefault("30s"),
      Options.withDescription("How often the trust bundle is re-read (root rotation).")
    )
  },
  (flags) =>
    Effect.gen(function*() {
      const controller = yield* hostPort("controller", flags.controller)
      const admin = yield* hostPort("admin", flags.admin)
      const xds = Option.isSome(flags.xds)
        ? yield* hostPort("xds", flags.xds.value)
        : { host: controller.host, port: 15010, text: `${flags.controller.replace(/:\d+$/, "")}:15010` }
      if (flags.envoy && !flags.xdsTls) {
        return yield* new AgentRefused({
          reason: "--envoy: Envoy reaches the controller's xDS over mTLS with the agent's files; add --xds-tls " +
            "(the controller needs controller.xds.tls: mtls)"
        })
      }
      const envoyAdmin = yield* hostPort("envoy-admin", flags.envoyAdmin)
      const layer = Agent.layer({
        controller: controller.text,
        tokenFile: Option.getOrUndefined(flags.tokenFile),
        dir: flags.dir,
        service: Option.getOrUndefined(flags.service),
        instance: flags.instance,
        admin,
        xdsServer: xds.text,
        xdsChannel: flags.xdsTls ? "tls" : "insecure",
        bootstrapFile: Option.getOrElse(flags.bootstrap, () => defaultBootstrapFile(flags.dir)),
        renewAt: 0.5,
        retryInitial: Duration.millis(200),
        retryMax: yield* duration("retry-max", flags.retryMax),
        bundleInterval: yield* duration("bundle-interval", flags.bundleInterval)
      })
      if (!flags.envoy) return yield* Layer.launch(layer)
      // Imported only with --envoy (the agent's memory on a small host).
      const { agentEnvoyLayer } = yield* Effect.promise(() => import("./agentEnvoy.js"))
      const envoy = agentEnvoyLayer({
        path: flags.envoyPath,
        admin: envoyAdmin,
        stateDir: Option.getOrElse(flags.envoyDir, () =>
          NodePath.join(NodePath.dirname(NodePath.resolve(flags.dir)), "envoy")),
        xds,
        instance: flags.instance
      })
      return yield* Layer.launch(envoy.pipe(Layer.provideMerge(layer)))
    })
).pipe(Command.withDescription("Keep this host's mesh identity: join with a token, then renew at half life over mTLS."))
