/**
 * Where join tokens live. An interface so that a shared store (Consul KV, for several controllers)
 * can stand beside the file store without the signing service or the CLI knowing which it is.
 *
 * The file store keeps each token under `<dir>` (0700) as numbered versions, each 0600, written
 * once and never changed: `<id>.json` (version 0, what `token create` writes), then `<id>.1.json`,
 * `<id>.2.json` … for each spend or revocation, plus `mac-key` (0600, 32 random bytes in hex) that
 * signs the tokens. The highest version is the record. A change is a compare-and-swap that holds
 * across processes (`token revoke` in the CLI, redemptions in one or more daemons): read version n,
 * decide, then create version n+1 with link(), which fails if it exists; a writer that loses
 * re-reads and decides again, so two callers never spend the same last use and a revocation is
 * never overwritten by a spend that read the record before it. Nothing is held while deciding, so
 * a process that dies mid-way leaves no lock behind. A token has at most `uses` + 2 versions (one
 * per spend, one for its revocation); they are kept (see `commit`).
 */
import { Effect, Either, Option, Schema } from "effect"
import { randomBytes } from "node:crypto"
import * as NodeFs from "node:fs/promises"
import * as NodePath from "node:path"
import { describeErrno, errnoCode } from "../../src/Errno.js"
import type { TokenRecord, TokenRefusal } from "../../src/tokens/Token.js"
import { ensurePrivateDir, writeAtomic, writeIfAbsent } from "./AtomicFile.js"

/** The token store cannot be read or written; names the place. */
export class TokenStoreError extends Schema.TaggedError<TokenStoreError>()("TokenStoreError", {
  path: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `token store ${this.path}: ${this.reason}`
  }
}

export class TokenNotFound extends Schema.TaggedError<TokenNotFound>()("TokenNotFound", { id: Schema.String }) {
  override get message(): string {
    return `no token with id ${JSON.stringify(this.id)} (see \`token list\`)`
  }
}

export interface TokenStore {
  /** For messages: where the tokens are. */
  readonly location: string
  /** The key tokens are signed with (made on first use). */
  readonly macKey: Effect.Effect<Uint8Array, TokenStoreError>
  readonly create: (record: TokenRecord) => Effect.Effect<void, TokenStoreError>
  readonly list: Effect.Effect<ReadonlyArray<TokenRecord>, TokenStoreError>
  readonly get: (id: string) => Effect.Effect<Option.Option<TokenRecord>, TokenStoreError>
  readonly revoke: (id: string, at: Date) => Effect.Effect<TokenRecord, TokenStoreError | TokenNotFound>
  /**
   * Reads the record, lets `check` decide, and stores what it returns (the record with one more
   * use) as one step: two callers never spend the same last use.
   */
  readonly redeem: (
    id: string,
    check: (record: TokenRecord) => Either.Either<TokenRecord, TokenRefusal>
  ) => Effect.Effect<Either.Either<TokenRecord, TokenRefusal>, TokenStoreError>
}

/** A token record as either store keeps it: JSON, the secret only as its hash. */
const StoredRecord = Schema.Struct({
  id: Schema.String,
  service: Schema.String,
  instance: Schema.optional(Schema.String),
  createdAt: Schema.String,
  expiresAt: Schema.String,
  uses: Schema.Number,
  used: Schema.Number,
  revokedAt: Schema.optional(Schema.String),
  secretHash: Schema.String
})
export const decodeRecord = Schema.decodeUnknownEither(Schema.parseJson(StoredRecord))

/** `<id>.json` is version 0; `<id>.<n>.json` version n. */
const VERSION_FILE = /^([0-9a-f]{12})(?:\.([1-9]\d*))?\.json$/

/** The file store under `dir` (the controller uses `<certificates.dir>/tokens`). */
export const fileTokenStore = (directory: string): TokenStore => {
  const dir = NodePath.resolve(directory)
  const fileOf = (id: string, version: number) =>
    NodePath.join(dir, version === 0 ? `${id}.json` : `${id}.${version}.json`)
  const keyFile = NodePath.join(dir, "mac-key")
  // Callers in this process queue here instead of racing each other through retries.
  const lock = Effect.unsafeMakeSemaphore(1)
  const storeError = (path: string) => (cause: unknown) => new TokenStoreError({ path, reason: describeErrno(cause) })
  const prepare = ensurePrivateDir(dir).pipe(
    Effect.mapError((e) => new TokenStoreError({ path: e.path, reason: e.reason }))
  )
  const write = (path: string, content: string, replace: boolean) =>
    writeAtomic(path, content, { mode: 0o600, replace }).pipe(
      Effect.mapError((e) => new TokenStoreError({ path: e.path, reason: e.reason }))
    )

  /** Every token id and its versions present, from one directory read. */
  const versions = Effect.tryPromise({ try: () => NodeFs.readdir(dir), catch: (cause) => cause }).pipe(
    Effect.catchAll((cause) =>
      errnoCode(cause) === "ENOENT" ? Effect.succeed([] as Array<string>) : Effect.fail(storeError(dir)(cause))
    ),
    Effect.map((names) => {
      const byId = new Map<string, Array<number>>()
      for (const name of names) {
        const match = VERSION_FILE.exec(name)
        if (match === null) continue
        const list = byId.get(match[1]!) ?? []
        list.push(match[2] === undefined ? 0 : Number(match[2]))
        byId.set(match[1]!, list)
      }
      return byId
    })
  )

  const readVersion = (id: string, version: number) =>
    Effect.tryPromise({ try: () => NodeFs.readFile(fileOf(id, version), "utf8"), catch: (cause) => cause }).pipe(
      Effect.map(Option.some),
      Effect.catchAll((cause) =>
        errnoCode(cause) === "ENOENT" ? Effect.succeedNone : Effect.fail(storeError(fileOf(id, version))(cause))
      ),
      Effect.flatMap((text) =>
        Option.match(text, {
          onNone: () => Effect.succeedNone,
          onSome: (text) =>
            Either.match(decodeRecord(text), {
              onLeft: () =>
                Effect.fail(
                  new TokenStoreError({ path: fileOf(id, version), reason: "not a token record (corrupt file?)" })
                ),
              onRight: (record) => Effect.succeed(Option.some(record as TokenRecord))
            })
        })
      )
    )

  /** The current record and its version (the highest present). */
  const current = (
    id: string
  ): Effect.Effect<Option.Option<{ version: number; record: TokenRecord }>, TokenStoreError> =>
    Effect.gen(function*() {
      const present = (yield* versions).get(id)
      if (present === undefined) return Option.none()
      const version = Math.max(...present)
      const record = yield* readVersion(id, version)
      if (Option.isNone(record)) {
        return yield* new TokenStoreError({
          path: fileOf(id, version),
          reason: "a version disappeared (removed by hand?)"
        })
      }
      return Option.some({ version, record: record.value })
    })

  /**
   * Writes version `next` unless another writer got there first (false). Versions are never
   * removed, so a number once taken stays taken: a writer that read an old version can never
   * create a number below the newest one (a store that pruned old versions would let it).
   */
  const commit = (id: string, next: number, record: TokenRecord) =>
    writeIfAbsent(fileOf(id, next), JSON.stringify(record), 0o600).pipe(
      Effect.mapError((e) => new TokenStoreError({ path: e.path, reason: e.reason }))
    )

  /** Read, decide, commit; again from the read when another process committed first. */
  const update = <A, E>(
    id: string,
    decide: (
      record: TokenRecord
    ) => Effect.Effect<{ readonly write: Option.Option<TokenRecord>; readonly result: A }, E>
  ): Effect.Effect<Option.Option<A>, E | TokenStoreError> =>
    lock.withPermits(1)(Effect.gen(function*() {
      while (true) {
        const found = yield* current(id)
        if (Option.isNone(found)) return Option.none()
        const decision = yield* decide(found.value.record)
        if (Option.isNone(decision.write)) return Option.some(decision.result)
        if (yield* commit(id, found.value.version + 1, decision.write.value)) return Option.some(decision.result)
      }
    }))

  const macKey = Effect.gen(function*() {
    const existing = yield* Effect.tryPromise({ try: () => NodeFs.readFile(keyFile, "utf8"), catch: (cause) => cause })
      .pipe(
        Effect.map(Option.some),
        Effect.catchAll((
          cause
        ) => (errnoCode(cause) === "ENOENT" ? Effect.succeedNone : Effect.fail(storeError(keyFile)(cause))))
      )
    if (Option.isSome(existing)) return new Uint8Array(Buffer.from(existing.value, "hex"))
    yield* prepare
    // link() refuses to clobber: of two processes making the key at once, one wins and both read it.
    yield* write(keyFile, randomBytes(32).toString("hex"), false).pipe(Effect.catchAll(() => Effect.void))
    return new Uint8Array(
      Buffer.from(
        yield* Effect.tryPromise({ try: () => NodeFs.readFile(keyFile, "utf8"), catch: storeError(keyFile) }),
        "hex"
      )
    )
  })

  return {
    location: dir,
    macKey,
    create: (record) => Effect.zipRight(prepare, write(fileOf(record.id, 0), JSON.stringify(record), false)),
    get: (id) => Effect.map(current(id), Option.map((found) => found.record)),
    list: Effect.gen(function*() {
      const ids = [...(yield* versions).keys()]
      const records = yield* Effect.forEach(ids, current)
      return records.flatMap(Option.toArray).map((found) => found.record).sort((a, b) =>
        a.createdAt.localeCompare(b.createdAt)
      )
    }),
    revoke: (id, at) =>
      update(id, (record) => {
        if (record.revokedAt !== undefined) return Effect.succeed({ write: Option.none(), result: record })
        const revoked = { ...record, revokedAt: at.toISOString() }
        return Effect.succeed({ write: Option.some(revoked), result: revoked })
      }).pipe(
        Effect.flatMap(Option.match({ onNone: () => Effect.fail(new TokenNotFound({ id })), onSome: Effect.succeed }))
      ),
    redeem: (id, check) =>
      update(id, (record) => {
        const outcome = check(record)
        return Effect.succeed({ write: Either.getRight(outcome), result: outcome })
      }).pipe(Effect.map(Option.getOrElse(() => Either.left<TokenRefusal>({ _tag: "Unknown" }))))
  }
}

/** The controller's token directory: next to the CA, in the state it already keeps private. */
export const tokenDirectory = (certificatesDir: string): string =>
  NodePath.join(NodePath.resolve(certificatesDir), "tokens")
