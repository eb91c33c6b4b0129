/**
 * Join tokens in Consul's KV (`certificates.store: consul`), so a token made at one controller is
 * accepted, once, at any (the TokenStore interface of layers/internal/TokenStore.ts).
 *
 * KV layout under the CA prefix:
 *
 *   <prefix>/tokens/<id>      one token record (JSON: the secret's hash, never the secret)
 *   <prefix>/token-mac-key    the key tokens are signed with, sealed with the KEK (AES-256-GCM)
 *
 * Every change is a compare-and-set write (`?cas=`): a record is created only if absent, and a
 * redemption writes back only if nobody changed the record since it was read, so two controllers
 * never spend the same last use (the loser reads again and is refused).
 */
import { Effect, Either, Option } from "effect"
import { randomBytes, type webcrypto } from "node:crypto"
import type { TokenRecord, TokenRefusal } from "../../src/tokens/Token.js"
import type { ConsulConnection, ConsulUnavailable } from "../ConsulClient.js"
import { seal, type SealedKey, unseal } from "./ConsulCaStore.js"
import { decodeRecord, TokenNotFound, type TokenStore, TokenStoreError } from "./TokenStore.js"

interface KvEntry {
  readonly Key?: string
  readonly Value?: string | null
  readonly ModifyIndex?: number
}

/** A CAS write lost to a concurrent one is retried this many times before it is reported. */
const CAS_ATTEMPTS = 20

export const consulTokenStore = (client: ConsulConnection, prefix: string, kek: webcrypto.CryptoKey): TokenStore => {
  const tokenKey = (id: string) => `${prefix}/tokens/${id}`
  const macKeyKey = `${prefix}/token-mac-key`
  const location = `consul:${prefix}/tokens/`
  const aad = Buffer.from(`mesh-controller token mac key\0${prefix}`)
  const unavailable = (where: string) => (error: ConsulUnavailable) =>
    new TokenStoreError({ path: where, reason: error.reason })

  const getEntry = (key: string) =>
    client.call<KvEntry | undefined | null>(
      `kv.get ${key}`,
      (ctx) => client.consul.kv.get({ key, ctx } as { key: string }) as Promise<KvEntry | undefined | null>
    ).pipe(Effect.mapError(unavailable(`consul:${key}`)))

  const put = (key: string, value: string, cas: number) =>
    client.call<boolean>(
      `kv.cas ${key}`,
      (ctx) => client.consul.kv.set({ key, value, cas, ctx } as { key: string; value: string })
    )
      .pipe(Effect.mapError(unavailable(`consul:${key}`)), Effect.map((ok) => ok === true))

  const decode = (key: string, entry: KvEntry) =>
    Either.match(decodeRecord(entry.Value ?? ""), {
      onLeft: () => Effect.fail(new TokenStoreError({ path: `consul:${key}`, reason: "not a token record" })),
      onRight: (record) => Effect.succeed({ record: record as TokenRecord, index: entry.ModifyIndex ?? 0 })
    })

  const read = (id: string) =>
    Effect.flatMap(
      getEntry(tokenKey(id)),
      (entry) =>
        entry === undefined || entry === null || typeof entry.Value !== "string"
          ? Effect.succeedNone
          : Effect.map(decode(tokenKey(id), entry), Option.some)
    )

  /** Read, decide, write back with CAS; a lost race reads again. */
  const change = <A, E>(
    id: string,
    decide: (
      current: Option.Option<TokenRecord>
    ) => Effect.Effect<{ readonly write?: TokenRecord; readonly result: A }, E>
  ): Effect.Effect<A, E | TokenStoreError> =>
    Effect.gen(function*() {
      for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
        const found = yield* read(id)
        const { result, write } = yield* decide(Option.map(found, (f) => f.record))
        if (write === undefined) return result
        const index = Option.isSome(found) ? found.value.index : 0
        if (yield* put(tokenKey(id), JSON.stringify(write), index)) return result
      }
      return yield* new TokenStoreError({
        path: `consul:${tokenKey(id)}`,
        reason: "too many concurrent changes; try again"
      })
    })

  const macKey = Effect.gen(function*() {
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const entry = yield* getEntry(macKeyKey)
      if (entry !== undefined && entry !== null && typeof entry.Value === "string" && entry.Value !== "") {
        const sealed = JSON.parse(entry.Value) as SealedKey
        const plain = yield* unseal(kek, aad, sealed)
        if (plain === undefined) {
          return yield* new TokenStoreError({
            path: `consul:${macKeyKey}`,
            reason: "the token key does not open with this key-encryption key"
          })
        }
        return plain
      }
      // Made once: of several controllers making it at once, the create-only write of one wins.
      yield* put(macKeyKey, JSON.stringify(yield* seal(kek, aad, randomBytes(32))), 0)
    }
    return yield* new TokenStoreError({ path: `consul:${macKeyKey}`, reason: "cannot create the token key" })
  })

  return {
    location,
    macKey,
    create: (record) =>
      Effect.flatMap(put(tokenKey(record.id), JSON.stringify(record), 0), (ok) =>
        ok
          ? Effect.void
          : Effect.fail(
            new TokenStoreError({ path: `consul:${tokenKey(record.id)}`, reason: "a token with this id exists" })
          )),
    get: (id) => Effect.map(read(id), Option.map((f) => f.record)),
    list: Effect.gen(function*() {
      const key = `${prefix}/tokens/`
      const entries = yield* client.call<ReadonlyArray<KvEntry> | undefined | null>(
        `kv.get ${key} (recurse)`,
        (ctx) =>
          client.consul.kv.get({ key, recurse: true, ctx } as { key: string }) as unknown as Promise<
            ReadonlyArray<KvEntry> | undefined
          >
      ).pipe(Effect.mapError(unavailable(`consul:${key}`)))
      const records = yield* Effect.forEach(entries ?? [], (entry) => decode(entry.Key ?? key, entry))
      return records.map((r) => r.record).sort((a, b) => a.createdAt.localeCompare(b.createdAt))
    }),
    revoke: (id, at) =>
      change(id, (current) =>
        Option.match(current, {
          onNone: () => Effect.fail(new TokenNotFound({ id })),
          onSome: (record) => {
            if (record.revokedAt !== undefined) return Effect.succeed({ result: record })
            const revoked = { ...record, revokedAt: at.toISOString() }
            return Effect.succeed({ write: revoked, result: revoked })
          }
        })),
    redeem: (id, check) =>
      change(id, (current) =>
        Effect.succeed(Option.match(current, {
          onNone: () => ({
            result: Either.left<TokenRefusal>({ _tag: "Unknown" }) as Either.Either<TokenRecord, TokenRefusal>
          }),
          onSome: (record) => {
            const outcome = check(record)
            return Either.isRight(outcome) ? { write: outcome.right, result: outcome } : { result: outcome }
          }
        })))
  }
}
