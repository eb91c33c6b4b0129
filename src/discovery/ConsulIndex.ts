/**
 * Consul's rules for the index of blocking queries
 * (https://developer.hashicorp.com/consul/api-docs/features/blocking, "Implementation details"):
 *
 * - the `X-Consul-Index` of a response is the `index` of the next query;
 * - an index that goes backwards (a restarted agent, a snapshot restore, another server) resets
 *   the watch: the next query starts from 0, i.e. returns at once with the full current state;
 * - an index that is not greater than zero would make every query return at once (a busy loop),
 *   so it is replaced by 1;
 * - a watch re-issues queries no faster than a minimum interval, whatever the index does.
 */
export interface IndexStep {
  /** The `index` to send with the next query. */
  readonly next: bigint
  /** The response may carry new data (its index differs from the one asked with). */
  readonly changed: boolean
  /** The index went backwards (or was missing): the previous state is not comparable. */
  readonly reset: boolean
}

/** Reads `X-Consul-Index`; anything that is not a whole number is "missing". */
export const parseIndex = (header: string | ReadonlyArray<string> | undefined): bigint | undefined => {
  const value = typeof header === "string" ? header : header?.[0]
  if (value === undefined || !/^\d+$/.test(value.trim())) return undefined
  return BigInt(value.trim())
}

export const advance = (previous: bigint, returned: bigint | undefined): IndexStep => {
  if (returned === undefined) return { next: 0n, changed: true, reset: true }
  // Zero first: resetting to 0 on it would make the next query non-blocking again.
  if (returned <= 0n) return { next: 1n, changed: previous !== 1n, reset: false }
  if (returned < previous) return { next: 0n, changed: true, reset: true }
  return { next: returned, changed: returned !== previous, reset: false }
}

/** How long to wait before the next query so that queries start at most once per `minIntervalMillis`. */
export const rateLimitDelay = (lastStartMillis: number, nowMillis: number, minIntervalMillis: number): number =>
  Math.max(0, minIntervalMillis - (nowMillis - lastStartMillis))
