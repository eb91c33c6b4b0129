/**
 * What a SotW client holds of one merged type (ClusterLoadAssignment, RouteConfiguration): name →
 * version, and a content version of the whole held set. That version is the response's
 * `version_info`, so two controllers that send a client the same resources name them the same:
 * a client moved from one to the other sees equal versions. (The snapshot's own version, used
 * before, also covers what the stream never sees, such as each controller's own certificates.)
 *
 * The set's version is the XOR of one hash per (name, version) pair: independent of order, and
 * one change costs one hash, so a push that changes one of ten thousand held resources does not
 * hash the other ones again.
 */
import { createHash } from "node:crypto"

const DIGEST_BYTES = 16

/**
 * One (name, version) pair's part of a set digest. The set's digest is the XOR of its pairs'
 * (`xorInto`), so adding or removing a pair is one hash; the snapshot's version is kept the same way.
 */
export const pairDigest = (name: string, version: string): Uint8Array =>
  createHash("sha256").update(name).update("\n").update(version).digest().subarray(0, DIGEST_BYTES)

/** Adds (or, again, removes) `value` to the set digest `into`. */
export const xorInto = (into: Uint8Array, value: Uint8Array): void => {
  for (let i = 0; i < into.length; i++) into[i]! ^= value[i]!
}

export class HeldVersions {
  private readonly byName = new Map<string, string>()
  private readonly digest = Buffer.alloc(DIGEST_BYTES)

  get(name: string): string | undefined {
    return this.byName.get(name)
  }

  keys(): IterableIterator<string> {
    return this.byName.keys()
  }

  set(name: string, version: string): void {
    const before = this.byName.get(name)
    if (before === version) return
    if (before !== undefined) this.toggle(name, before)
    this.byName.set(name, version)
    this.toggle(name, version)
  }

  delete(name: string): void {
    const before = this.byName.get(name)
    if (before === undefined) return
    this.byName.delete(name)
    this.toggle(name, before)
  }

  /** The content version of everything held: equal sets, equal versions. */
  get version(): string {
    return this.digest.toString("base64url")
  }

  private toggle(name: string, version: string): void {
    xorInto(this.digest, pairDigest(name, version))
  }
}
