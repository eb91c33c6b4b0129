/**
 * `certificates.store: consul`: the mesh CA in Consul's KV, shared by every controller that uses
 * the same Consul and prefix (README "Running several controllers").
 *
 * KV layout under `<prefix>`:
 *
 *   <prefix>/ca     one JSON document: the active root, a root waiting from `ca rotate` (`next`),
 *                   retired roots (`previous`). Root keys are sealed with AES-256-GCM under the
 *                   key-encryption key (KEK) read from `keyEncryptionKeyFile`; the certificate's
 *                   fingerprint is the additional data, so a sealed key cannot be moved to another
 *                   root. One key, so every change is one compare-and-set write.
 *   <prefix>/lock   the creation lock: held (`?acquire=`) by a Consul session while one controller
 *                   creates the first root; deleted with that session (behavior=delete).
 *
 * Creation happens once: a controller that finds no `ca` takes the lock, reads again, and writes
 * the root with `?cas=0` (only if the key is still absent); a loser of any race reads the winner's
 * root. The CAS is what guarantees one root; the lock spares the others the work and names the
 * creator in /status. A holder that dies loses the lock with its session (TTL), and the next
 * controller finishes. A controller that cannot read Consul never creates a root: it retries.
 */
import { Duration, Effect, Either, Option, Redacted, Ref, Schedule, type Scope } from "effect"
import { createHash, webcrypto } from "node:crypto"
import * as NodeFs from "node:fs/promises"
import * as NodeOs from "node:os"
import type { ConsulCaStoreSettings } from "../../schemas/Config.js"
import { fingerprint, loadAuthority } from "../../src/certs/Authority.js"
import { CaInvalid, CaOperationRefused, type SigningFailed } from "../../src/certs/Errors.js"
import { describeErrno } from "../../src/Errno.js"
import {
  blockingWatch,
  type ConsulConnection,
  ConsulUnavailable,
  type RetryOptions,
  retrySchedule
} from "../ConsulClient.js"
import { type CaMaterial, newRoot, type StoreSettings } from "./CaStore.js"

const subtle = webcrypto.subtle

/** A root key as it sits in KV: AES-256-GCM ciphertext (with its tag) under the KEK. */
export interface SealedKey {
  readonly alg: "A256GCM"
  readonly iv: string
  readonly data: string
}

interface StoredRoot {
  readonly cert: string
  readonly key: SealedKey
}

/** The `<prefix>/ca` document. */
export interface StoredCa {
  readonly version: 1
  readonly active: StoredRoot
  readonly next?: StoredRoot
  readonly previous: ReadonlyArray<{ readonly cert: string; readonly retiredAt: string }>
}

export interface ConsulCaKeys {
  readonly ca: string
  readonly lock: string
  readonly prefix: string
}

export const consulCaKeys = (prefix: string): ConsulCaKeys => ({ prefix, ca: `${prefix}/ca`, lock: `${prefix}/lock` })

// ---------------------------------------------------------------------------------------------
// The key-encryption key
// ---------------------------------------------------------------------------------------------

/**
 * Reads the KEK: 32 bytes, base64, in a file only its owner can read. The bytes go straight into a
 * non-extractable WebCrypto key and are never logged or kept elsewhere.
 */
export const readKek = (file: string): Effect.Effect<webcrypto.CryptoKey, CaInvalid> =>
  Effect.gen(function*() {
    const stat = yield* Effect.tryPromise({
      try: () => NodeFs.stat(file),
      catch: (cause) => new CaInvalid({ file, reason: `cannot read the key-encryption key: ${describeErrno(cause)}` })
    })
    if ((stat.mode & 0o077) !== 0) {
      return yield* new CaInvalid({
        file,
        reason: `permissions 0${
          (stat.mode & 0o777).toString(8)
        } are too open for the key-encryption key; run \`chmod 600 ${file}\``
      })
    }
    const text = yield* Effect.tryPromise({
      try: () => NodeFs.readFile(file, "utf8"),
      catch: (cause) => new CaInvalid({ file, reason: `cannot read the key-encryption key: ${describeErrno(cause)}` })
    })
    const trimmed = text.trim()
    const bytes = /^[A-Za-z0-9+/]+={0,2}$/.test(trimmed) ? Buffer.from(trimmed, "base64") : Buffer.alloc(0)
    if (bytes.length !== 32) {
      return yield* new CaInvalid({
        file,
        reason: "expected 32 random bytes, base64 encoded (make one with `openssl rand -base64 32`)"
      })
    }
    return yield* Effect.promise(() =>
      subtle.importKey("raw", bytes, { name: "AES-GCM" }, false, ["encrypt", "decrypt"])
    )
  })

/** The additional data: the sealed key opens only as the key of this certificate under this prefix. */
const aadOf = (prefix: string, certPem: string) =>
  Buffer.from(`mesh-controller ca key\0${prefix}\0${fingerprint(certPem)}`)

export const sealKey = (kek: webcrypto.CryptoKey, prefix: string, certPem: string, keyPem: Redacted.Redacted<string>) =>
  seal(kek, aadOf(prefix, certPem), Buffer.from(Redacted.value(keyPem)))

/** AES-256-GCM under the KEK with a fresh 96-bit IV; `aad` binds the ciphertext to what it is for. */
export const seal = (kek: webcrypto.CryptoKey, aad: Uint8Array, plain: Uint8Array) =>
  Effect.promise(async (): Promise<SealedKey> => {
    const iv = webcrypto.getRandomValues(new Uint8Array(12))
    const data = await subtle.encrypt({ name: "AES-GCM", iv, additionalData: aad }, kek, plain)
    return { alg: "A256GCM", iv: Buffer.from(iv).toString("base64"), data: Buffer.from(data).toString("base64") }
  })

/** The plaintext of `seal`, or undefined when the KEK or the additional data do not match. */
export const unseal = (kek: webcrypto.CryptoKey, aad: Uint8Array, sealed: SealedKey) =>
  Effect.promise(() =>
    subtle.decrypt(
      { name: "AES-GCM", iv: Buffer.from(sealed.iv, "base64"), additionalData: aad },
      kek,
      Buffer.from(sealed.data, "base64")
    ).then((plain) => new Uint8Array(plain), () => undefined)
  )

const openKey = (kek: webcrypto.CryptoKey, prefix: string, where: string, root: StoredRoot) =>
  Effect.tryPromise({
    try: async () => {
      const plain = await subtle.decrypt(
        { name: "AES-GCM", iv: Buffer.from(root.key.iv, "base64"), additionalData: aadOf(prefix, root.cert) },
        kek,
        Buffer.from(root.key.data, "base64")
      )
      return Redacted.make(Buffer.from(plain).toString("utf8"))
    },
    catch: () =>
      new CaInvalid({
        file: where,
        reason:
          "the root key does not open with this key-encryption key (a different KEK file than the controller that made it?)"
      })
  })

// ---------------------------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------------------------

const isRoot = (value: unknown): value is StoredRoot => {
  const root = value as StoredRoot | undefined
  return typeof root?.cert === "string" && root.key?.alg === "A256GCM" && typeof root.key.iv === "string" &&
    typeof root.key.data === "string"
}

export const parseStoredCa = (where: string, text: string): Either.Either<StoredCa, CaInvalid> => {
  const invalid = (reason: string) => Either.left(new CaInvalid({ file: where, reason }))
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return invalid("not JSON")
  }
  const doc = value as Partial<StoredCa>
  if (doc?.version !== 1) return invalid(`unknown version ${JSON.stringify(doc?.version)}`)
  if (!isRoot(doc.active)) return invalid("no valid `active` root")
  if (doc.next !== undefined && !isRoot(doc.next)) return invalid("`next` is not a valid root")
  const previous = Array.isArray(doc.previous) ? doc.previous : []
  if (!previous.every((p) => typeof p?.cert === "string" && !Number.isNaN(Date.parse(p?.retiredAt)))) {
    return invalid("`previous` holds an invalid entry")
  }
  return Either.right({ version: 1, active: doc.active, ...(doc.next ? { next: doc.next } : {}), previous })
}

/** The CA material of a stored document: both keys opened with the KEK and checked against their certificates. */
export const materialOf = (
  kek: webcrypto.CryptoKey,
  keys: ConsulCaKeys,
  text: string
): Effect.Effect<CaMaterial, CaInvalid> =>
  Effect.gen(function*() {
    const where = `consul:${keys.ca}`
    const doc = yield* parseStoredCa(where, text)
    const keyPem = yield* openKey(kek, keys.prefix, where, doc.active)
    const authority = yield* loadAuthority({
      certPem: doc.active.cert,
      certFile: where,
      keyPem,
      keyFile: `${where} (active key)`
    })
    if (authority.rootPem !== authority.certPem) {
      return yield* new CaInvalid({ file: where, reason: "the active root is not self-signed" })
    }
    let next = Option.none<string>()
    if (doc.next !== undefined) {
      const nextKey = yield* openKey(kek, keys.prefix, where, doc.next)
      const loaded = yield* loadAuthority({
        certPem: doc.next.cert,
        certFile: `${where} (next)`,
        keyPem: nextKey,
        keyFile: `${where} (next key)`
      })
      next = Option.some(loaded.certPem)
    }
    return {
      authority,
      active: authority.certPem,
      next,
      previous: doc.previous.map((p) => ({ pem: p.cert, retiredAt: new Date(p.retiredAt) })),
      external: false,
      digest: createHash("sha256").update(text).digest("hex")
    }
  })

// ---------------------------------------------------------------------------------------------
// Reading, creating under the lock, watching
// ---------------------------------------------------------------------------------------------

interface KvEntry {
  readonly Value?: string | null
  readonly ModifyIndex?: number
  readonly Session?: string
  readonly Key?: string
}

/** The `ca` document as text with its ModifyIndex, or none when the key is absent. */
const readDoc = (client: ConsulConnection, key: string) =>
  Effect.map(
    client.call<KvEntry | undefined | null>(
      `kv.get ${key}`,
      (ctx) => client.consul.kv.get({ key, ctx } as { key: string }) as Promise<KvEntry | undefined | null>
    ),
    (entry) =>
      entry === undefined || entry === null || typeof entry.Value !== "string" || entry.Value === ""
        ? Option.none<{ text: string; modifyIndex: number }>()
        : Option.some({ text: entry.Value, modifyIndex: entry.ModifyIndex ?? 0 })
  )

/** Who holds the creation lock, from the lock key's entry (its value names the holder). */
const holderOf = (entry: KvEntry | undefined): string | null => {
  if (entry?.Session === undefined || typeof entry.Value !== "string") return null
  try {
    const parsed = JSON.parse(entry.Value) as { holder?: unknown }
    return typeof parsed.holder === "string" ? parsed.holder : entry.Session
  } catch {
    return entry.Session
  }
}

export interface ConsulCaStatus {
  readonly prefix: string
  /** Who holds the creation lock now (normally nobody: it is held only while a first root is made). */
  readonly lockHolder: string | null
  /** Why the last read of the prefix failed, while it does (the CA in force keeps signing). */
  readonly consulError: string | null
  /** Set once a document was seen that could not be used (the CA in force stays). */
  readonly invalid: string | null
}

export interface ConsulCaStoreOptions {
  readonly client: ConsulConnection
  readonly settings: ConsulCaStoreSettings
  readonly store: StoreSettings
  /** How this controller names itself in the lock (default: host name and pid). */
  readonly holder?: string
  readonly retry?: RetryOptions
  /** The `wait` of the prefix watch. */
  readonly watchWait?: Duration.DurationInput
}

export interface ConsulCaStore {
  readonly keys: ConsulCaKeys
  /** The CA, created once across all controllers if there is none; waits (retrying) while Consul is unreachable. */
  readonly open: Effect.Effect<CaMaterial, CaInvalid | SigningFailed>
  /** One read of the CA now (never creates one): for `ca show`. */
  readonly read: Effect.Effect<CaMaterial, CaInvalid | ConsulUnavailable>
  /** The CA as last seen by the watch (no network): what a re-check compares with the CA in force. */
  readonly current: Effect.Effect<CaMaterial, CaInvalid>
  /** Watches the prefix for ever, calling `onChange` after each change was recorded. */
  readonly watch: (onChange: Effect.Effect<void>) => Effect.Effect<never>
  readonly status: Effect.Effect<ConsulCaStatus>
  /** `ca rotate`: puts a new root in `next` (CAS on the document). */
  readonly rotate: Effect.Effect<string, CaInvalid | CaOperationRefused | SigningFailed | ConsulUnavailable>
  /** `ca rotate --activate`: `next` signs, the old active root retires (CAS on the document). */
  readonly activate: Effect.Effect<string, CaInvalid | CaOperationRefused | ConsulUnavailable>
  /** The KEK, for the token store beside the CA (layers/internal/ConsulTokenStore.ts). */
  readonly kek: webcrypto.CryptoKey
}

export const makeConsulCaStore = (options: ConsulCaStoreOptions): Effect.Effect<ConsulCaStore, CaInvalid> =>
  Effect.gen(function*() {
    const { client, settings } = options
    const keys = consulCaKeys(settings.prefix)
    const kek = yield* readKek(settings.keyEncryptionKeyFile)
    const holder = options.holder ?? `${NodeOs.hostname()} pid ${process.pid}`
    const schedule = retrySchedule(options.retry ?? { base: Duration.millis(200), cap: Duration.seconds(5) })
    const latest = yield* Ref.make<Option.Option<string>>(Option.none())
    const lockHolder = yield* Ref.make<string | null>(null)
    const consulError = yield* Ref.make<string | null>(null)
    const invalid = yield* Ref.make<string | null>(null)
    const ttlMillis = Duration.toMillis(settings.sessionTtl)

    /** Retries while Consul is unreachable, reporting each failure; never gives up. */
    const persist = <A, E = never>(
      what: string,
      effect: Effect.Effect<A, E | ConsulUnavailable>
    ): Effect.Effect<A, Exclude<E, ConsulUnavailable>> =>
      effect.pipe(
        Effect.tapError((error) =>
          error instanceof ConsulUnavailable
            ? Effect.zipRight(
              Ref.set(consulError, error.reason),
              Effect.logWarning(`cannot reach Consul to ${what}; retrying (no root is created without reading Consul)`)
                .pipe(
                  Effect.annotateLogs({ error: error.reason })
                )
            )
            : Effect.void
        ),
        Effect.retry({ schedule, while: (error) => error instanceof ConsulUnavailable }),
        // The schedule never ends, so what fails here is never ConsulUnavailable.
        Effect.mapError((error) => error as Exclude<E, ConsulUnavailable>),
        Effect.tap(() => Ref.set(consulError, null))
      )

    /** Creates the first root while holding the lock; none when the lock is someone else's. */
    const createUnderLock = Effect.gen(function*() {
      const session = yield* client.call<{ ID: string }>("session.create", (ctx) =>
        client.consul.session.create(
          {
            name: `mesh-controller CA creation (${holder})`,
            ttl: `${Math.round(ttlMillis / 1000)}s`,
            behavior: "delete",
            // The CAS write is what prevents a second root; a lock-delay would only slow the takeover.
            lockdelay: "0s",
            ctx
          } as Parameters<typeof client.consul.session.create>[0]
        ))
      const id = session.ID
      const destroy = client.call(
        "session.destroy",
        (ctx) => client.consul.session.destroy({ id, ctx } as { id: string })
      ).pipe(
        Effect.ignore
      )
      return yield* Effect.gen(function*() {
        // Renewed at a third of the TTL while creation runs.
        yield* client.call("session.renew", (ctx) => client.consul.session.renew({ id, ctx } as { id: string })).pipe(
          Effect.ignore,
          Effect.repeat(Schedule.spaced(Duration.millis(ttlMillis / 3))),
          Effect.delay(Duration.millis(ttlMillis / 3)),
          Effect.forkScoped
        )
        const acquired = yield* client.call<boolean>("kv.acquire", (ctx) =>
          client.consul.kv.set({
            key: keys.lock,
            value: JSON.stringify({ holder, since: new Date().toISOString() }),
            acquire: id,
            ctx
          } as { key: string; value: string }))
        if (acquired !== true) return Option.none<string>()
        yield* Ref.set(lockHolder, holder)
        yield* Effect.logInfo("holding the CA creation lock").pipe(Effect.annotateLogs({ key: keys.lock }))
        // Someone may have finished between our read and the acquire.
        const again = yield* readDoc(client, keys.ca)
        if (Option.isSome(again)) return Option.some(again.value.text)
        const root = yield* newRoot(options.store)
        const doc: StoredCa = {
          version: 1,
          active: { cert: root.certPem, key: yield* sealKey(kek, keys.prefix, root.certPem, root.keyPem) },
          previous: []
        }
        const text = JSON.stringify(doc)
        const written = yield* client.call<boolean>(
          "kv.cas",
          (ctx) => client.consul.kv.set({ key: keys.ca, value: text, cas: 0, ctx } as { key: string; value: string })
        )
        if (written !== true) return Option.none<string>()
        yield* Effect.logInfo("created the mesh root CA in Consul").pipe(
          Effect.annotateLogs({ key: keys.ca, fingerprint: fingerprint(root.certPem) })
        )
        return Option.some(text)
      }).pipe(Effect.ensuring(Effect.zipRight(destroy, Ref.set(lockHolder, null))), Effect.scoped)
    })

    /** Waits until the lock key changes (released, deleted with a dead holder's session), at most one TTL. */
    const awaitLock = Effect.gen(function*() {
      const [response, entry] = yield* client.callWithResponse<KvEntry | undefined>(
        "kv.get lock",
        (ctx) => client.consul.kv.get({ key: keys.lock, ctx } as { key: string })
      )
      yield* Ref.set(lockHolder, holderOf(entry))
      if (entry === undefined) return
      const index = String(response.headers["x-consul-index"] ?? "0")
      yield* client.callWithResponse(
        "kv.get lock (blocking)",
        (ctx) =>
          client.consul.kv.get(
            { key: keys.lock, index, wait: `${ttlMillis}ms`, timeout: ttlMillis + 5_000, ctx } as { key: string }
          )
      )
    })

    const open: ConsulCaStore["open"] = Effect.gen(function*() {
      for (;;) {
        const found = yield* persist("read the CA", readDoc(client, keys.ca))
        if (Option.isSome(found)) {
          yield* Ref.set(latest, Option.some(found.value.text))
          return yield* materialOf(kek, keys, found.value.text)
        }
        const created = yield* persist("create the CA under the lock", createUnderLock)
        if (Option.isSome(created)) {
          yield* Ref.set(latest, Option.some(created.value))
          return yield* materialOf(kek, keys, created.value)
        }
        yield* Effect.logInfo("another controller is creating the CA; waiting for it").pipe(
          Effect.annotateLogs({ holder: yield* Ref.get(lockHolder) })
        )
        yield* persist("wait for the CA lock", awaitLock)
      }
    })

    const current: ConsulCaStore["current"] = Effect.flatMap(Ref.get(latest), (text) =>
      Option.isNone(text)
        ? Effect.fail(
          new CaInvalid({ file: `consul:${keys.ca}`, reason: "no CA document in Consul (was it deleted?)" })
        )
        : materialOf(kek, keys, text.value))

    const watch = (onChange: Effect.Effect<void>): Effect.Effect<never> =>
      blockingWatch(client, {
        name: `kv.get ${keys.prefix}/ (recurse)`,
        wait: Duration.decode(options.watchWait ?? Duration.minutes(5)),
        minInterval: Duration.millis(50),
        schedule,
        query: (blocking) => (ctx) =>
          client.consul.kv.get({ key: `${keys.prefix}/`, recurse: true, ...blocking, ctx } as { key: string }),
        decode: (body) =>
          body === undefined || body === null || Array.isArray(body)
            ? Either.right((body ?? []) as ReadonlyArray<KvEntry>)
            : Either.left("expected a list of KV entries"),
        onChange: (entries) =>
          Effect.gen(function*() {
            yield* Ref.set(lockHolder, holderOf(entries.find((e) => e.Key === keys.lock)))
            const doc = entries.find((e) => e.Key === keys.ca)
            // A deleted document is not a reason to drop the CA in force (or make another): keep the last one seen.
            if (doc === undefined || typeof doc.Value !== "string" || doc.Value === "") {
              if (Option.isNone(yield* Ref.get(latest))) return
              const why =
                `${keys.ca} is missing from Consul; keeping the CA in force (restore the key from a Consul snapshot)`
              if ((yield* Ref.getAndSet(invalid, why)) !== why) yield* Effect.logError(why)
              return
            }
            const checked = yield* Effect.either(materialOf(kek, keys, doc.Value))
            if (Either.isLeft(checked)) {
              yield* Ref.set(invalid, checked.left.message)
              return yield* Effect.logError("the CA in Consul cannot be used; keeping the CA in force").pipe(
                Effect.annotateLogs({ error: checked.left.message })
              )
            }
            yield* Ref.set(invalid, null)
            // Token writes under the prefix wake the watch too; only a changed CA document matters.
            const before = yield* Ref.getAndSet(latest, Option.some(doc.Value))
            if (Option.isSome(before) && before.value === doc.Value) return
            yield* onChange
          }),
        onError: (error) => Ref.set(consulError, error.reason),
        onSuccess: Ref.set(consulError, null)
      })

    /** Read, change, write back with CAS; a concurrent change makes the operator retry. */
    const update = <E>(what: string, change: (doc: StoredCa) => Effect.Effect<StoredCa, E>) =>
      Effect.gen(function*() {
        const found = yield* readDoc(client, keys.ca)
        if (Option.isNone(found)) {
          return yield* new CaOperationRefused({
            reason: `no CA in Consul under ${keys.ca} yet (a controller creates it at start)`
          })
        }
        const doc = yield* parseStoredCa(`consul:${keys.ca}`, found.value.text)
        // The KEK must open what is there before anything is written over it.
        yield* materialOf(kek, keys, found.value.text)
        const next = yield* change(doc)
        const written = yield* client.call<boolean>(`kv.cas ${what}`, (ctx) =>
          client.consul.kv.set({ key: keys.ca, value: JSON.stringify(next), cas: found.value.modifyIndex, ctx } as {
            key: string
            value: string
          }))
        if (written !== true) {
          return yield* new CaOperationRefused({ reason: `the CA in Consul changed while ${what} ran; run it again` })
        }
        return next
      })

    const rotate: ConsulCaStore["rotate"] = Effect.map(
      update("ca rotate", (doc) =>
        Effect.gen(function*() {
          if (doc.next !== undefined) {
            return yield* new CaOperationRefused({
              reason: `a new root is already waiting (${
                fingerprint(doc.next.cert)
              }); activate it with \`ca rotate --activate\``
            })
          }
          const root = yield* newRoot(options.store)
          return {
            ...doc,
            next: { cert: root.certPem, key: yield* sealKey(kek, keys.prefix, root.certPem, root.keyPem) }
          }
        })),
      (doc) => fingerprint(doc.next!.cert)
    )

    const activate: ConsulCaStore["activate"] = Effect.map(
      update("ca rotate --activate", (doc) =>
        doc.next === undefined
          ? Effect.fail(new CaOperationRefused({ reason: "no new root is waiting; run `ca rotate` first" }))
          : Effect.succeed<StoredCa>({
            version: 1,
            active: doc.next,
            previous: [...doc.previous, { cert: doc.active.cert, retiredAt: new Date().toISOString() }]
          })),
      (doc) => fingerprint(doc.active.cert)
    )

    const read: ConsulCaStore["read"] = Effect.flatMap(readDoc(client, keys.ca), (found) =>
      Option.isNone(found)
        ? Effect.fail(
          new CaInvalid({ file: `consul:${keys.ca}`, reason: "no CA yet (a controller creates it at its first start)" })
        )
        : materialOf(kek, keys, found.value.text))

    return {
      keys,
      kek,
      open,
      read,
      current,
      watch,
      rotate,
      activate,
      status: Effect.gen(function*() {
        return {
          prefix: keys.prefix,
          lockHolder: yield* Ref.get(lockHolder),
          consulError: yield* Ref.get(consulError),
          invalid: yield* Ref.get(invalid)
        }
      })
    }
  })

/** Scope is needed by nothing here; exported for callers that build the store inside a layer. */
export type ConsulCaStoreScope = Scope.Scope
