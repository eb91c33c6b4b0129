/**
 * Token buckets by key (pure: the caller passes the time). Used by the signing service per peer
 * address and per join token. The map is bounded: when full, the bucket touched longest ago goes
 * (a forgotten bucket is a full one, so eviction can only be generous, never lock anyone out).
 */
export interface RateSettings {
  readonly burst: number
  readonly perSecond: number
}

interface Bucket {
  tokens: number
  at: number
}

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>()
  constructor(private readonly settings: RateSettings, private readonly maxKeys = 10_000) {}

  /** Takes one call's worth for `key` at `now` (ms); false when the key is over its rate. */
  take(key: string, now: number): boolean {
    const { burst, perSecond } = this.settings
    const found = this.buckets.get(key)
    const bucket = found ?? { tokens: burst, at: now }
    bucket.tokens = Math.min(burst, bucket.tokens + (Math.max(0, now - bucket.at) / 1000) * perSecond)
    bucket.at = now
    // Re-insert so Map order is least recently used first.
    this.buckets.delete(key)
    this.buckets.set(key, bucket)
    if (this.buckets.size > this.maxKeys) this.buckets.delete(this.buckets.keys().next().value!)
    if (bucket.tokens < 1) return false
    bucket.tokens -= 1
    return true
  }
}
