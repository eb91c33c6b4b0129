/**
 * An immutable map made from another by a few changes, without copying it: the changes sit over a
 * shared base. Successive snapshots each differ from the previous in the one service that changed,
 * so copying a map of 10,000 services' resources per snapshot would be the O(services) step of a
 * one-endpoint change.
 *
 * The maps made from one another by `with` share one lineage: the base, and a log of every change
 * since, each entry stamped with the generation that made it (a value, or its removal). A map is a
 * generation: it reads a key's latest entry no newer than itself, else the base. `with` on the
 * newest map appends its changes (O(changes), no copy); on an older one (a branch) it starts a new
 * lineage from what that map reads. The log is folded into a fresh base once it holds a quarter of
 * the base's size (amortised O(1) per change, the garbage of a change O(changes)); lookups stay two
 * map lookups for the newest maps.
 *
 * Iteration order: the base's order (a changed key keeps its place), then the added keys in the
 * order they were first added.
 */
const REMOVED: unique symbol = Symbol("removed")
type Slot<V> = V | typeof REMOVED

/** One change of a key: its slot from generation `gen` on, over the key's earlier changes. */
interface Entry<V> {
  readonly gen: number
  readonly slot: Slot<V>
  readonly earlier: Entry<V> | undefined
}

interface Lineage<K, V> {
  readonly base: ReadonlyMap<K, V>
  /** key → its latest change; earlier ones follow `earlier`. */
  readonly log: Map<K, Entry<V>>
  /** The newest generation: only its map appends to this lineage. */
  newest: number
  /** Entries in the log (its chains included): what a fold is weighed against. */
  entries: number
}

/** The entry `gen` reads of a key's chain: the latest no newer than it. */
const at = <V>(entry: Entry<V> | undefined, gen: number): Entry<V> | undefined => {
  while (entry !== undefined && entry.gen > gen) entry = entry.earlier
  return entry
}

export class LayeredMap<K, V> implements ReadonlyMap<K, V> {
  readonly size: number

  private constructor(
    private readonly lineage: Lineage<K, V>,
    private readonly gen: number,
    size: number
  ) {
    this.size = size
  }

  static of<K, V>(map: ReadonlyMap<K, V>): LayeredMap<K, V> {
    return map instanceof LayeredMap ? map : new LayeredMap(lineageOf(map), 0, map.size)
  }

  /** This map with `changes` applied (undefined: the key is removed). The receiver does not change. */
  with(changes: Iterable<readonly [K, V | undefined]>): LayeredMap<K, V> {
    const list = Array.isArray(changes) ? changes as ReadonlyArray<readonly [K, V | undefined]> : [...changes]
    if (list.length === 0) return this
    const { base } = this.lineage
    // Past its bound the log is folded: into a fresh base holding what this map reads, changed.
    if ((this.lineage.entries + list.length) * 4 > Math.max(base.size, 256)) {
      const out = foldAt(this.lineage, this.gen)
      for (const [key, value] of list) {
        if (value === undefined) out.delete(key)
        else out.set(key, value)
      }
      return new LayeredMap(lineageOf(out), 0, out.size)
    }
    let lineage = this.lineage
    let from = this.gen
    if (lineage.newest !== from) {
      // A branch: the newer maps of this lineage must keep reading what they read.
      const log = new Map<K, Entry<V>>()
      for (const [key, entry] of lineage.log) {
        const seen = at(entry, from)
        if (seen !== undefined) log.set(key, { gen: 0, slot: seen.slot, earlier: undefined })
      }
      lineage = { base, log, newest: 0, entries: log.size }
      from = 0
    }
    const gen = from + 1
    const log = lineage.log
    let size = this.size
    let appended = false
    for (const [key, value] of list) {
      const latest = log.get(key)
      const slot = latest !== undefined ? latest.slot : base.has(key) ? base.get(key) as V : REMOVED
      if (value === undefined ? slot === REMOVED : slot === value) continue
      if (value === undefined) size--
      else if (slot === REMOVED) size++
      // A key changed twice in one call keeps only the last change.
      const again = latest !== undefined && latest.gen === gen
      if (!again) lineage.entries++
      log.set(key, { gen, slot: value === undefined ? REMOVED : value, earlier: again ? latest.earlier : latest })
      appended = true
    }
    if (!appended) return this
    lineage.newest = gen
    return new LayeredMap(lineage, gen, size)
  }

  get(key: K): V | undefined {
    const entry = at(this.lineage.log.get(key), this.gen)
    if (entry !== undefined) return entry.slot === REMOVED ? undefined : entry.slot
    return this.lineage.base.get(key)
  }

  has(key: K): boolean {
    const entry = at(this.lineage.log.get(key), this.gen)
    if (entry !== undefined) return entry.slot !== REMOVED
    return this.lineage.base.has(key)
  }

  *entries(): MapIterator<[K, V]> {
    const { base, log } = this.lineage
    for (const entry of base) {
      const change = at(log.get(entry[0]), this.gen)
      if (change === undefined) yield entry
      else if (change.slot !== REMOVED) yield [entry[0], change.slot]
    }
    for (const [key, latest] of log) {
      if (base.has(key)) continue
      const change = at(latest, this.gen)
      if (change !== undefined && change.slot !== REMOVED) yield [key, change.slot]
    }
  }

  *keys(): MapIterator<K> {
    for (const [key] of this.entries()) yield key
  }

  *values(): MapIterator<V> {
    for (const [, value] of this.entries()) yield value
  }

  [Symbol.iterator](): MapIterator<[K, V]> {
    return this.entries()
  }

  forEach(callback: (value: V, key: K, map: ReadonlyMap<K, V>) => void, thisArg?: unknown): void {
    for (const [key, value] of this.entries()) callback.call(thisArg, value, key, this)
  }

  get [Symbol.toStringTag](): string {
    return "LayeredMap"
  }
}

const lineageOf = <K, V>(base: ReadonlyMap<K, V>): Lineage<K, V> => ({ base, log: new Map(), newest: 0, entries: 0 })

/**
 * What generation `gen` of `lineage` reads, as a fresh map in `entries()`'s order: the base copied
 * entry by entry (`forEach`: Map's iterable constructor makes an entry array per key), then each
 * key's change (a changed key keeps its place, an added one goes last).
 */
const foldAt = <K, V>(lineage: Lineage<K, V>, gen: number): Map<K, V> => {
  const out = new Map<K, V>()
  lineage.base.forEach((value, key) => out.set(key, value))
  for (const [key, latest] of lineage.log) {
    const entry = at(latest, gen)
    if (entry === undefined) continue
    if (entry.slot === REMOVED) out.delete(key)
    else out.set(key, entry.slot)
  }
  return out
}
