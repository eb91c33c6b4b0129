/**
 * The "publish, then rest" loop (layers/internal/Coalesce.ts) that Health and Discovery publish
 * through, and that Snapshot's and LiveConfig's debounce can use: driven with TestClock.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Deferred, Effect, Ref, TestClock } from "effect"
import * as Coalesce from "../layers/internal/Coalesce.js"

/** Lets the loop's fiber run up to its next wait. */
const settle = Effect.repeatN(Effect.yieldNow(), 20)

describe("Coalesce", () => {
  it.scoped("leading edge: the first signal runs at once; a burst during the rest becomes one more run", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const loop = yield* Coalesce.make(Ref.update(runs, (n) => n + 1), { rest: "50 millis" })
      yield* loop.signal
      yield* settle
      assert.strictEqual(yield* Ref.get(runs), 1)
      for (let i = 0; i < 100; i++) loop.unsafeSignal()
      yield* settle
      assert.strictEqual(yield* Ref.get(runs), 1, "resting")
      yield* TestClock.adjust("50 millis")
      yield* settle
      assert.strictEqual(yield* Ref.get(runs), 2, "the burst ran once")
      yield* TestClock.adjust("50 millis")
      yield* settle
      assert.strictEqual(yield* Ref.get(runs), 2, "nothing pending, nothing run")
    }))

  it.scoped("trailing edge: runs once signals stop for `quiet`, and no later than `max` after the first", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const loop = yield* Coalesce.make(Ref.update(runs, (n) => n + 1), {
        settle: Effect.succeed({ quiet: "100 millis", max: "250 millis" })
      })
      yield* loop.signal
      yield* settle
      yield* TestClock.adjust("99 millis")
      yield* settle
      assert.strictEqual(yield* Ref.get(runs), 0, "still within the quiet window")
      yield* TestClock.adjust("1 millis")
      yield* settle
      assert.strictEqual(yield* Ref.get(runs), 1)
      // A steady stream of signals, every 60 ms: `max` bounds the wait.
      for (let t = 0; t < 300; t += 60) {
        yield* loop.signal
        yield* settle
        yield* TestClock.adjust("60 millis")
        yield* settle
      }
      assert.isAtLeast(yield* Ref.get(runs), 2, "a run happened although signals never stopped")
    }))

  it.scoped("a zero quiet window runs without waiting for the clock, once for the signals of one turn", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const loop = yield* Coalesce.make(Ref.update(runs, (n) => n + 1), {
        settle: Effect.succeed({ quiet: "0 millis", max: "1 second" })
      })
      for (let i = 0; i < 10; i++) loop.unsafeSignal()
      yield* settle
      assert.strictEqual(yield* Ref.get(runs), 1, "ran with the TestClock standing still")
      yield* loop.signal
      yield* settle
      assert.strictEqual(yield* Ref.get(runs), 2)
    }))

  it.scoped("waits on the clock it is given (a wall clock here) while the run keeps the fiber's TestClock", () =>
    Effect.gen(function*() {
      const seen = yield* Deferred.make<number>()
      const loop = yield* Coalesce.make(Effect.flatMap(Clock.currentTimeMillis, (now) => Deferred.succeed(seen, now)), {
        rest: "1 hour",
        clock: Clock.make()
      })
      yield* loop.signal
      assert.strictEqual(yield* Deferred.await(seen), 0, "the run read the TestClock (still at 0)")
    }))
})
