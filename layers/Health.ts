import { Context, Effect, Layer, Stream } from "effect"
import type { EndpointHealth } from "../src/MeshState.js"

/** service name → endpoint key (`address:port`) → health. Endpoints absent from it are "unknown". */
export type HealthView = ReadonlyMap<string, ReadonlyMap<string, EndpointHealth>>

/** Active health checking of every endpoint that has a health check. */
export class Health extends Context.Tag("mesh-controller/Health")<
  Health,
  {
    readonly view: Effect.Effect<HealthView>
    /** The current view first, then every change. */
    readonly changes: Stream.Stream<HealthView>
    readonly status: Effect.Effect<unknown>
  }
>() {
  /** No checks: every endpoint stays "unknown" (and is routed to). */
  static readonly layerNoop: Layer.Layer<Health> = Layer.succeed(
    Health,
    Health.of({
      view: Effect.succeed(new Map()),
      changes: Stream.make(new Map()),
      status: Effect.succeed({ checks: "off" })
    })
  )
}
