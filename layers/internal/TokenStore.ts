/**
 * Where join tokens live. An interface so that a shared store (Consul KV, for several controllers)
 * can stand beside the file store without the signing service or the CLI knowing which it is.
 *
 * The file store keeps one file per token under `<dir>` (0700), each 0600 and written atomically,
 * plus `mac-key` (0600, 32 random bytes in hex) that signs the tokens. One file per token means
 * `token create` (a CLI process) and the daemon spending another token never rewrite the same
 * file. Spending is read-check-write under a lock per store in this process; the CLI only ever
 * creates new files or marks one revoked.
 */
import { Effect, Either, Option, Schema } from "effect"
import { randomBytes } from "node:crypto"
import * as NodeFs from "node:fs/promises"
import * as NodePath from "node:path"
import { describeErrno, errnoCode } from "../../src/Errno.js"
import type { TokenRecord, TokenRefusal } from "../../src/tokens/Token.js"
import { ensurePrivateDir, writeAtomic } from "./AtomicFile.js"

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

const ID_FILE = /^([0-9a-f]{12})\.json$/

/** The file store under `dir` (the controller uses `<certificates.dir>/tokens`). */
export const fileTokenStore = (directory: string): TokenStore => {
  const dir = NodePath.resolve(directory)
  const fileOf = (id: string) => NodePath.join(dir, `${id}.json`)
  const keyFile = NodePath.join(dir, "mac-key")
  const lock = Effect.unsafeMakeSemaphore(1)
  const storeError = (path: string) => (cause: unknown) => new TokenStoreError({ path, reason: describeErrno(cause) })
  const prepare = ensurePrivateDir(dir).pipe(
    Effect.mapError((e) => new TokenStoreError({ path: e.path, reason: e.reason }))
  )
  const write = (path: string, content: string, replace: boolean) =>
    writeAtomic(path, content, { mode: 0o600, replace }).pipe(
      Effect.mapError((e) => new TokenStoreError({ path: e.path, reason: e.reason }))
    )

  const read = (id: string): Effect.Effect<Option.Option<TokenRecord>, TokenStoreError> =>
    Effect.tryPromise({ try: () => NodeFs.readFile(fileOf(id), "utf8"), catch: (cause) => cause }).pipe(
      Effect.catchAll((cause) =>
        errnoCode(cause) === "ENOENT" ? Effect.succeed(undefined) : Effect.fail(storeError(fileOf(id))(cause))
      ),
      Effect.flatMap((text) => {
        if (text === undefined) return Effect.succeedNone
        return Either.match(decodeRecord(text), {
          onLeft: () =>
            Effect.fail(new TokenStoreError({ path: fileOf(id), reason: "not a token record (corrupt file?)" })),
          onRight: (record) => Effect.succeed(Option.some(record as TokenRecord))
        })
      })
    )

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
    create: (record) => Effect.zipRight(prepare, write(fileOf(record.id), JSON.stringify(record), false)),
    get: read,
    list: Effect.gen(function*() {
      const names = yield* Effect.tryPromise({ try: () => NodeFs.readdir(dir), catch: (cause) => cause }).pipe(
        Effect.catchAll((
          cause
        ) => (errnoCode(cause) === "ENOENT"
          ? Effect.succeed([] as Array<string>)
          : Effect.fail(storeError(dir)(cause)))
        )
      )
      const ids = names.flatMap((name) => ID_FILE.exec(name)?.[1] ?? [])
      const records = yield* Effect.forEach(ids, read)
      return records.flatMap(Option.toArray).sort((a, b) => a.createdAt.localeCompare(b.createdAt))
    }),
    revoke: (id, at) =>
      lock.withPermits(1)(
        Effect.gen(function*() {
          const record = yield* read(id)
          if (Option.isNone(record)) return yield* new TokenNotFound({ id })
          if (record.value.revokedAt !== undefined) return record.value
          const revoked = { ...record.value, revokedAt: at.toISOString() }
          yield* write(fileOf(id), JSON.stringify(revoked), true)
          return revoked
        })
      ),
    redeem: (id, check) =>
      lock.withPermits(1)(
        Effect.gen(function*() {
          const record = yield* read(id)
          if (Option.isNone(record)) return Either.left<TokenRefusal>({ _tag: "Unknown" })
          const outcome = check(record.value)
          if (Either.isRight(outcome)) yield* write(fileOf(id), JSON.stringify(outcome.right), true)
          return outcome
        })
      )
  }
}

/** The controller's token directory: next to the CA, in the state it already keeps private. */
export const tokenDirectory = (certificatesDir: string): string =>
  NodePath.join(NodePath.resolve(certificatesDir), "tokens")
