/**
 * A counting semaphore with a deadline per waiter and O(1) hand-off: the slot pool behind
 * Health's global bound on probes in flight.
 */
import { Effect } from "effect"

/** A probe waiting for a slot: granted (`true`) or skipped (`false`, its deadline passed first). */
interface SlotWaiter {
  readonly deadline: number
  readonly resume: (granted: Effect.Effect<boolean>) => void
  state: "waiting" | "granted" | "cancelled"
}

/**
 * The global bound on probes in flight (Health's `maxConcurrentProbes`). Effect's semaphore
 * wakes every waiter on each release (they all re-check, one wins, the rest wait again): with a
 * thousand endpoints queued behind 64 slots that is a thousand fiber wake-ups per finished
 * probe, which starved the event loop and the heap (bench/health.ts at 1,000 endpoints: 125% CPU,
 * 2 GB). Here a freed slot is handed straight to the oldest waiter, O(1) per probe. A waiter whose
 * deadline (its endpoint's next due probe) has passed when its turn comes is skipped instead: a
 * slow or overloaded controller drops ticks, it never builds a backlog.
 */
export class ProbeSlots {
  private taken = 0
  private readonly queue: Array<SlotWaiter | undefined> = []
  private head = 0
  constructor(private readonly max: number, private readonly now: () => number) {}

  get inFlight(): number {
    return this.taken
  }

  get waiting(): number {
    let n = 0
    for (let i = this.head; i < this.queue.length; i++) if (this.queue[i]?.state === "waiting") n++
    return n
  }

  /** `true` once a slot is held (give it back with `release`), `false` if `deadline` passed first. */
  acquire(deadline: number): Effect.Effect<boolean> {
    return Effect.async<boolean>((resume) => {
      if (this.taken < this.max && this.head === this.queue.length) {
        this.taken++
        resume(Effect.succeed(true))
        return
      }
      const waiter: SlotWaiter = { deadline, resume, state: "waiting" }
      this.queue.push(waiter)
      // Only cancelled waiters ahead of it and a slot free: hand it over now.
      if (this.taken < this.max) this.grant()
      return Effect.sync(() => {
        // Interrupted while waiting; if the slot was handed over in the meantime, give it back.
        if (waiter.state === "waiting") waiter.state = "cancelled"
        else if (waiter.state === "granted") this.release()
      })
    })
  }

  release(): void {
    this.taken--
    this.grant()
  }

  private grant(): void {
    let now: number | undefined
    while (this.taken < this.max && this.head < this.queue.length) {
      const waiter = this.queue[this.head]!
      this.queue[this.head++] = undefined
      if (waiter.state !== "waiting") continue
      now ??= this.now()
      if (waiter.deadline <= now) {
        waiter.state = "cancelled"
        waiter.resume(Effect.succeed(false))
        continue
      }
      waiter.state = "granted"
      this.taken++
      waiter.resume(Effect.succeed(true))
    }
    if (this.head === this.queue.length) {
      this.queue.length = 0
      this.head = 0
    } else if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head)
      this.head = 0
    }
  }
}
