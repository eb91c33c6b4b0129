import { Context, Effect, Layer, Stream, SubscriptionRef } from "effect"
import { fromConfig, type Service } from "../src/MeshState.js"
import { Config } from "./Config.js"

/**
 * The one place that knows the mesh's services and their endpoints. Everything downstream (health
 * checks, the snapshot) reads services from here, never from the config directly.
 */
export class Discovery extends Context.Tag("mesh-controller/Discovery")<
  Discovery,
  {
    readonly services: Effect.Effect<ReadonlyArray<Service>>
    /** The current services first, then every change. */
    readonly changes: Stream.Stream<ReadonlyArray<Service>>
    readonly status: Effect.Effect<unknown>
  }
>() {
  /** The embedded registry: services and endpoints from the config file. */
  static readonly layerEmbedded: Layer.Layer<Discovery, never, Config> = Layer.scoped(
    Discovery,
    Effect.gen(function*() {
      const config = yield* Config
      const initial = fromConfig((yield* config.get).config).services
      const ref = yield* SubscriptionRef.make(initial)
      yield* config.changes.pipe(
        Stream.runForEach((loaded) => SubscriptionRef.set(ref, fromConfig(loaded.config).services)),
        Effect.forkScoped
      )
      return Discovery.of({
        services: SubscriptionRef.get(ref),
        changes: ref.changes,
        status: Effect.map(SubscriptionRef.get(ref), (services) => ({
          source: "embedded",
          services: services.map((s) => ({ name: s.name, source: s.source, endpoints: s.endpoints.length }))
        }))
      })
    })
  )

  /** A fixed registry for tests; `SubscriptionRef.set` on the returned ref changes it. */
  static readonly layerMemory = (ref: SubscriptionRef.SubscriptionRef<ReadonlyArray<Service>>): Layer.Layer<Discovery> =>
    Layer.succeed(
      Discovery,
      Discovery.of({
        services: SubscriptionRef.get(ref),
        changes: ref.changes,
        status: Effect.succeed({ source: "memory" })
      })
    )
}
