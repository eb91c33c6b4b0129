/**
 * An immutable map made from another by a few changes, without copying it: the changes sit in a
 * small map over the shared base. Successive snapshots each differ from the previous in the one
 * service that changed, so copying a map of 10,000 services' resources per snapshot would be the
 * O(services) step of a one-endpoint change. The layer is folded into a fresh base once it grows
 * past the square root of the base (amortised O(√n) per change, and every lookup stays two map
 * lookups at most).
 *
 * Iteration order: the base's order (a changed key keeps its place), then the added keys.
 */
const REMOVED: unique symbol = Symbol("removed")
type Slot<V> = V | typeof REMOVED

/**
 * The base with the layer applied, in `entries()`'s order: Map's own copy, then `set` (a changed key
 * keeps its place, an added one goes last) and `delete`. Iterating the layered view instead made an
 * entry array per key, the most garbage a change left at 10,000 services.
 */
const fold = <K, V>(base: ReadonlyMap<K, V>, top: ReadonlyMap<K, Slot<V>>): Map<K, V> => {
  const out = new Map(base)
  for (const [key, slot] of top) {
    if (slot === REMOVED) out.delete(key)
    else out.set(key, slot)
  }
  return out
}

export class LayeredMap<K, V> implements ReadonlyMap<K, V> {
  readonly size: number

  private constructor(
    private readonly base: ReadonlyMap<K, V>,
    private readonly top: ReadonlyMap<K, Slot<V>>,
    size: number
  ) {
    this.size = size
  }

  static of<K, V>(map: ReadonlyMap<K, V>): LayeredMap<K, V> {
    return map instanceof LayeredMap ? map : new LayeredMap(map, new Map(), map.size)
  }

  /** This map with `changes` applied (undefined: the key is removed). The receiver does not change. */
  with(changes: Iterable<readonly [K, V | undefined]>): LayeredMap<K, V> {
    const top = new Map(this.top)
    let size = this.size
    for (const [key, value] of changes) {
      const slot = top.get(key)
      const had = slot !== undefined ? slot !== REMOVED : this.base.has(key)
      if (value === undefined) {
        if (!had) continue
        size--
        if (this.base.has(key)) top.set(key, REMOVED)
        else top.delete(key)
      } else {
        if (!had) size++
        top.set(key, value)
      }
    }
    if (top.size * top.size > Math.max(this.base.size, 256)) {
      return new LayeredMap(fold(this.base, top), new Map(), size)
    }
    return new LayeredMap(this.base, top, size)
  }

  get(key: K): V | undefined {
    const slot = this.top.get(key)
    if (slot !== undefined) return slot === REMOVED ? undefined : slot
    return this.base.get(key)
  }

  has(key: K): boolean {
    const slot = this.top.get(key)
    if (slot !== undefined) return slot !== REMOVED
    return this.base.has(key)
  }

  *entries(): MapIterator<[K, V]> {
    for (const entry of this.base) {
      const slot = this.top.get(entry[0])
      if (slot === undefined) yield entry
      else if (slot !== REMOVED) yield [entry[0], slot]
    }
    for (const [key, slot] of this.top) if (slot !== REMOVED && !this.base.has(key)) yield [key, slot]
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
