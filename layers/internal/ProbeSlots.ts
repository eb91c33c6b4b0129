/**
 * A counting semaphore with a deadline per waiter and O(1) hand-off: the slot pool behind
 * Health's global bound on probes in flight.
 */

/** A probe waiting for a slot: granted (`true`) or skipped (`false`, its deadline passed first). */
interface SlotWaiter {
  readonly deadline: number
  readonly resume: (granted: boolean) => void
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

  /**
   * Asks for a slot: `onGrant(true)` once one is held (give it back with `release`), `onGrant(false)`
   * if `deadline` passed first; either may come before this returns. Callbacks rather than an effect:
   * Health's probe loop waits for its slot, probes and records in one async step. The function
   * returned withdraws a request still waiting (a granted slot is the caller's to release).
   */
  request(deadline: number, onGrant: (granted: boolean) => void): () => void {
    if (this.taken < this.max && this.head === this.queue.length) {
      this.taken++
      onGrant(true)
      return noop
    }
    const waiter: SlotWaiter = { deadline, resume: onGrant, state: "waiting" }
    this.queue.push(waiter)
    // Only cancelled waiters ahead of it and a slot free: hand it over now.
    if (this.taken < this.max) this.grant()
    return () => {
      if (waiter.state === "waiting") waiter.state = "cancelled"
    }
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
        waiter.resume(false)
        continue
      }
      waiter.state = "granted"
      this.taken++
      waiter.resume(true)
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

const noop = () => {}
