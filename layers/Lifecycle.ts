import { Context, Effect, Layer, Ref } from "effect"
import { layerUp } from "./Metrics.js"

export type Phase = "starting" | "ready" | "stopping"
export type LayerState = "starting" | "running" | "stopped"

interface Entry {
  readonly state: LayerState
  readonly since: Date
  readonly status: Effect.Effect<unknown> | undefined
}

/**
 * The daemon's phase and each layer's state, plus the status each layer reports once it runs.
 * `/readyz` and `/status` read this; layers themselves know nothing of it (program.ts tracks them).
 */
export class Lifecycle extends Context.Tag("mesh-controller/Lifecycle")<
  Lifecycle,
  {
    readonly phase: Effect.Effect<Phase>
    readonly setPhase: (phase: Phase) => Effect.Effect<void>
    readonly mark: (layer: string, state: LayerState, status?: Effect.Effect<unknown>) => Effect.Effect<void>
    /** The layers not running yet (or any more): cheap, for /readyz, which is polled. */
    readonly waiting: Effect.Effect<ReadonlyArray<string>>
    /** Each layer's state, since when, and the status it reports (when running). */
    readonly layers: Effect.Effect<Record<string, { state: LayerState; since: string; status?: unknown }>>
  }
>() {
  static readonly layer = (names: ReadonlyArray<string>): Layer.Layer<Lifecycle> =>
    Layer.effect(
      Lifecycle,
      Effect.gen(function*() {
        const phase = yield* Ref.make<Phase>("starting")
        const now = new Date()
        const entries = yield* Ref.make(
          new Map<string, Entry>(names.map((name) => [name, { state: "starting", since: now, status: undefined }]))
        )
        return Lifecycle.of({
          phase: Ref.get(phase),
          setPhase: (next) => Ref.set(phase, next),
          mark: (layer, state, status) =>
            Ref.update(entries, (map) =>
              new Map(map).set(layer, { state, since: new Date(), status: state === "running" ? status : undefined }))
              .pipe(Effect.zipRight(Effect.sync(() =>
                layerUp.set({ layer }, state === "running" ? 1 : 0)
              ))),
          waiting: Effect.map(Ref.get(entries), (map) =>
            [...map].filter(([, entry]) =>
              entry.state !== "running"
            ).map(([name]) => name)),
          layers: Effect.gen(function*() {
            const out: Record<string, { state: LayerState; since: string; status?: unknown }> = {}
            for (const [name, entry] of yield* Ref.get(entries)) {
              const status = entry.status === undefined
                ? undefined
                : yield* entry.status.pipe(
                  Effect.timeoutOption("2 seconds"),
                  Effect.map((o) => (o._tag === "Some" ? o.value : { error: "status timed out" })),
                  Effect.catchAllCause(() => Effect.succeed({ error: "status failed" }))
                )
              out[name] = {
                state: entry.state,
                since: entry.since.toISOString(),
                ...(status === undefined ? {} : { status })
              }
            }
            return out
          })
        })
      })
    )

  /**
   * Wraps a layer so its state is tracked: "running" once built (with the status it reports),
   * "stopped" when released.
   */
  static readonly track = <A, E, R>(
    name: string,
    layer: Layer.Layer<A, E, R>,
    status?: (context: Context.Context<A>) => Effect.Effect<unknown>
  ): Layer.Layer<A, E, R | Lifecycle> =>
    Layer.flatMap(layer, (context) =>
      Layer.scopedContext(
        Effect.gen(function*() {
          const lifecycle = yield* Lifecycle
          yield* Effect.acquireRelease(
            lifecycle.mark(name, "running", status?.(context)),
            () => lifecycle.mark(name, "stopped")
          )
          return context
        })
      ))
}
