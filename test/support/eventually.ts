import { Duration, Effect } from "effect"

/**
 * Retries `check` until it succeeds or the deadline passes; the last failure is reported. For
 * conditions that depend on real I/O (file watches, sockets), without depending on timing luck.
 */
export const eventually = <A, E, R>(
  check: Effect.Effect<A, E, R>,
  options: { readonly timeout?: Duration.DurationInput; readonly interval?: Duration.DurationInput } = {}
): Effect.Effect<A, E, R> =>
  Effect.gen(function*() {
    const deadline = Date.now() + Duration.toMillis(options.timeout ?? "15 seconds")
    for (;;) {
      const attempt = yield* Effect.either(check)
      if (attempt._tag === "Right") return attempt.right
      if (Date.now() > deadline) return yield* Effect.fail(attempt.left)
      yield* Effect.sleep(options.interval ?? "50 millis")
    }
  })

/** Polls a promise-returning check until it passes (for plain async tests). */
export const waitFor = async <A>(
  check: () => Promise<A>,
  timeoutMs = 15_000,
  intervalMs = 50
): Promise<A> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      return await check()
    } catch (error) {
      if (Date.now() > deadline) throw error
      await new Promise((resolve) => setTimeout(resolve, intervalMs))
    }
  }
}
