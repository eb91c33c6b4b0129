import { Context, Duration, Effect, Layer } from "effect"
import { Admin } from "../layers/Admin.js"
import { Config } from "../layers/Config.js"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { Lifecycle } from "../layers/Lifecycle.js"
import { Snapshot } from "../layers/Snapshot.js"
import { Xds } from "../layers/Xds.js"

export interface ProgramOptions {
  readonly configPath: string
  readonly version: string
}

/** The layers, in start order; /readyz waits for all of them. */
export const LAYER_NAMES = ["config", "discovery", "admin", "health", "snapshot", "xds"] as const

/**
 * Marks the daemon ready once every other layer is built, and not ready as soon as shutdown
 * begins (this is released first). Shutdown as a whole is bounded by `controller.shutdownTimeout`:
 * a watchdog that no finalizer can block ends the process if the layers take longer.
 */
const Ready: Layer.Layer<never, never, Lifecycle | Config> = Layer.scopedDiscard(
  Effect.gen(function*() {
    const lifecycle = yield* Lifecycle
    const config = yield* Config
    yield* Effect.acquireRelease(
      Effect.zipRight(lifecycle.setPhase("ready"), Effect.logInfo("mesh-controller is ready")),
      () =>
        Effect.gen(function*() {
          const timeout = (yield* config.get).config.controller.shutdownTimeout
          yield* lifecycle.setPhase("stopping")
          yield* Effect.logInfo(`shutting down (at most ${Duration.format(timeout)})`)
          yield* Effect.sync(() => {
            const timer = setTimeout(() => {
              process.stderr.write(`shutdown did not finish within ${Duration.format(timeout)}; exiting\n`)
              process.exit(1)
            }, Duration.toMillis(timeout))
            timer.unref()
          })
        })
    )
  })
)

/** The composition root: every layer of the daemon, in dependency order. */
export const makeProgram = (options: ProgramOptions): Layer.Layer<never, unknown> => {
  const ConfigLive = Lifecycle.track("config", Config.layer({ path: options.configPath }), (ctx) =>
    Context.get(ctx, Config).status)

  const DiscoveryLive = Lifecycle.track("discovery", Discovery.layer(), (ctx) => Context.get(ctx, Discovery).status)
  const HealthLive = Lifecycle.track("health", Health.layer(), (ctx) => Context.get(ctx, Health).status)
  const SnapshotLive = Lifecycle.track("snapshot", Snapshot.layer, (ctx) => Context.get(ctx, Snapshot).status)
  const XdsLive = Lifecycle.track("xds", Xds.layer(), (ctx) => Context.get(ctx, Xds).status)

  const AdminLive = Lifecycle.track(
    "admin",
    Layer.unwrapEffect(
      Effect.map(Config, ({ get }) => get).pipe(
        Effect.flatten,
        Effect.map(({ config }) =>
          Admin.layer({ host: config.controller.admin.host, port: config.controller.admin.port, version: options.version })
        )
      )
    ),
    (ctx) => Effect.succeed(Context.get(ctx, Admin).address)
  )

  return Ready.pipe(
    Layer.provide(XdsLive),
    Layer.provide(SnapshotLive),
    Layer.provideMerge(HealthLive),
    Layer.provide(AdminLive),
    Layer.provideMerge(DiscoveryLive),
    Layer.provideMerge(ConfigLive),
    Layer.provide(Lifecycle.layer(LAYER_NAMES))
  )
}
