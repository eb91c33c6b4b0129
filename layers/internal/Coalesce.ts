/**
 * "Publish, then rest": the one coalescing loop of the controller. Producers signal that
 * something changed (never blocking, from Effect code or a Node callback); one fiber runs the
 * work, and signals that arrive while it runs or rests collapse into a single further run.
 *
 * Two shapes, combinable:
 * - leading edge with a rest (Health, Discovery): the first signal runs at once, then the loop
 *   rests `rest`, so a burst costs a few runs instead of one per signal;
 * - trailing edge, a debounce (Snapshot's `controller.debounce`, LiveConfig's file events):
 *   `settle` waits until signals stop for `quiet`, but never longer than `max` after the first;
 *   a zero `quiet` takes only the signals of the same turn, with no timer.
 */
import { Clock, Duration, Effect, Option, Queue, type Scope } from "effect"

export interface SettleWindow {
  /** Run once no signal came for this long. */
  readonly quiet: Duration.DurationInput
  /** ... but at most this long after the first signal of a burst (default: no bound). */
  readonly max?: Duration.DurationInput
}

export interface CoalesceOptions {
  /** Wait for quiet before each run; read at each burst, so a config reload can change it. */
  readonly settle?: Effect.Effect<SettleWindow>
  /** Rest after each run; signals meanwhile become one run after the rest. */
  readonly rest?: Duration.DurationInput
  /**
   * The clock the waits use (default: the fiber's). A rest that only bounds CPU, not anything
   * on a schedule, passes a wall clock so tests' TestClock need not drive it. `run` always
   * keeps the fiber's own clock.
   */
  readonly clock?: Clock.Clock
}

export interface Coalescer {
  /** Asks for a run. */
  readonly signal: Effect.Effect<void>
  /** The same, for Node callbacks. */
  readonly unsafeSignal: () => void
}

/** Starts the loop in the current scope; it stops when the scope closes. */
export const make = (
  run: Effect.Effect<void>,
  options: CoalesceOptions = {}
): Effect.Effect<Coalescer, never, Scope.Scope> =>
  Effect.gen(function*() {
    // A sliding queue of one: at most one run pending, however many signals arrive.
    const pending = yield* Queue.sliding<void>(1)
    const onClock = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      options.clock === undefined ? effect : Effect.withClock(effect, options.clock)

    // A zero quiet window (`controller.debounce.quiet: 0ms`) waits for nothing but the signals of
    // the same turn: a timer, even of 0 ms, cost every change a trip through the event loop's
    // timer phase (1 ms or more, several under load) on the way from a registration to the streams.
    const sameTurn = Effect.zipRight(Effect.yieldNow(), Effect.asVoid(Queue.takeAll(pending)))
    const settle = (window: SettleWindow) =>
      Duration.toMillis(window.quiet) <= 0 ? sameTurn : onClock(Effect.gen(function*() {
        const quiet = Duration.toMillis(window.quiet)
        const deadline = window.max === undefined
          ? Infinity
          : (yield* Clock.currentTimeMillis) + Duration.toMillis(window.max)
        while (true) {
          const left = deadline - (yield* Clock.currentTimeMillis)
          if (left <= 0) return
          const more = yield* Queue.take(pending).pipe(
            Effect.timeout(Duration.millis(Math.min(quiet, left))),
            Effect.option
          )
          if (Option.isNone(more)) return
        }
      }))

    const rest = options.rest === undefined ? Effect.void : onClock(Effect.sleep(options.rest))
    const settled = options.settle === undefined ? Effect.void : Effect.flatMap(options.settle, settle)

    yield* Queue.take(pending).pipe(
      Effect.zipRight(settled),
      Effect.zipRight(run),
      Effect.zipRight(rest),
      Effect.forever,
      Effect.forkScoped
    )
    return {
      signal: Effect.asVoid(Queue.offer(pending, undefined)),
      unsafeSignal: () => {
        Queue.unsafeOffer(pending, undefined)
      }
    }
  })
