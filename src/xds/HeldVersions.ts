/**
 * What a client holds of one resource type: name → version, and (for SotW's merged types,
 * ClusterLoadAssignment and RouteConfiguration) a content version of the whole held set. That
 * version is the response's `version_info`, so two controllers that send a client the same
 * resources name them the same: a client moved from one to the other sees equal versions. (The
 * snapshot's own version, used before, also covers what the stream never sees, such as each
 * controller's own certificates.)
 *
 * The set's version is the XOR of one hash per (name, version) pair: independent of order, and
 * one change costs one hash, so a push that changes one of ten thousand held resources does not
 * hash the other ones again.
 *
 * `Held` is immutable: a thousand streams that were sent the same resources hold the very same
 * value (a stream's push is then worked out once for all of them, see XdsStream's plans), where
 * each used to keep a name → version map of its own (three million entries over 1,000 sidecars).
 */
import { createHash } from "node:crypto"
import { LayeredMap } from "./LayeredMap.js"

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

let heldIds = 0

/** An immutable name → version set; `id` names the value (equal ids, the same value). */
export class Held {
  /** Nothing held; `versioned` keeps the content version (`version`) as well. */
  static empty(versioned: boolean): Held {
    return versioned ? Held.emptyVersioned : Held.emptyPlain
  }
  private static readonly emptyPlain = new Held(LayeredMap.of(new Map()), undefined)
  private static readonly emptyVersioned = new Held(LayeredMap.of(new Map()), new Uint8Array(DIGEST_BYTES))

  readonly id = ++heldIds

  private constructor(
    private readonly byName: LayeredMap<string, string>,
    /** The XOR of every pair's `pairDigest`; undefined when not versioned. */
    private readonly digest: Uint8Array | undefined
  ) {}

  get size(): number {
    return this.byName.size
  }

  get(name: string): string | undefined {
    return this.byName.get(name)
  }

  has(name: string): boolean {
    return this.byName.has(name)
  }

  keys(): IterableIterator<string> {
    return this.byName.keys()
  }

  /** This set with `changes` applied (a version undefined: the name is dropped); itself when nothing changes. */
  with(changes: Iterable<readonly [string, string | undefined]>): Held {
    const effective: Array<readonly [string, string | undefined]> = []
    let digest: Uint8Array | undefined
    for (const change of changes) {
      const [name, version] = change
      const before = this.byName.get(name)
      if (before === version) continue
      effective.push(change)
      if (this.digest === undefined) continue
      digest ??= Uint8Array.from(this.digest)
      if (before !== undefined) xorInto(digest, pairDigest(name, before))
      if (version !== undefined) xorInto(digest, pairDigest(name, version))
    }
    return effective.length === 0 ? this : new Held(this.byName.with(effective), digest ?? this.digest)
  }

  /** The content version of everything held: equal sets, equal versions ("" when not versioned). */
  get version(): string {
    return this.digest === undefined ? "" : Buffer.from(this.digest).toString("base64url")
  }
}
