/**
 * `mesh-controller agent`: runs layers/Agent.ts until SIGTERM. Bad input (an unreadable or spent
 * token, a controller whose root the token does not pin) ends it with one line and exit 1; an
 * unreachable controller is retried. The command line itself (options, help) is in
 * agentCommand.ts, which loads this module when the command runs.
 */
import { Duration, Effect, Layer, Option } from "effect"
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

/** What `agent` is given on the command line. */
export interface AgentFlags {
  readonly controller: string
  readonly tokenFile: Option.Option<string>
  readonly dir: string
  readonly service: Option.Option<string>
  readonly instance: string
  readonly admin: string
  readonly xds: Option.Option<string>
  readonly xdsTls: boolean
  readonly bootstrap: Option.Option<string>
  readonly envoy: boolean
  readonly envoyPath: string
  readonly envoyAdmin: string
  readonly envoyDir: Option.Option<string>
  readonly retryMax: string
  readonly bundleInterval: string
}

/** `agent`: checks the flags, then runs the Agent layer (and with --envoy, the local Envoy) until interrupted. */
export const runAgent = (flags: AgentFlags) =>
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
