/**
 * The admin bearer token: read from its file, or generated into it on first start.
 *
 * The token itself is kept only as its SHA-256 digest; a presented token is hashed and compared
 * with `timingSafeEqual`, so the comparison takes the same time whatever prefix matches, and
 * digests of equal length make the length of the secret irrelevant too. Nothing here logs it.
 */
import { Data, Effect, Redacted } from "effect"
import { createHash, randomBytes, timingSafeEqual } from "node:crypto"
import * as NodeFs from "node:fs/promises"
import * as NodePath from "node:path"
import { describeErrno, errnoCode } from "../../src/Errno.js"
import { writeIfAbsent } from "../internal/AtomicFile.js"

/** The token file could not be read or written; names the file and the reason. */
export class AdminTokenError extends Data.TaggedError("AdminTokenError")<{
  readonly path: string
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `admin token ${this.path}: ${this.reason}`
  }
}

export interface AdminToken {
  /** Where the token lives (shown in /status and the log; the token never is). */
  readonly path: string
  /** True when this start generated the file. */
  readonly created: boolean
  /** Constant-time check of a presented token. */
  readonly verify: (presented: string) => boolean
}

const digest = (value: string): Buffer => createHash("sha256").update(value, "utf8").digest()

/** A verifier for one known token (also what a library user with its own secret store calls). */
export const tokenVerifier = (token: Redacted.Redacted<string>): (presented: string) => boolean => {
  const expected = digest(Redacted.value(token))
  return (presented) => timingSafeEqual(digest(presented), expected)
}

/** 32 random bytes, base64url: fits in a header and a shell variable without quoting. */
const generate = (): string => randomBytes(32).toString("base64url")

const MIN_LENGTH = 16

const fail = (path: string, reason: string, cause?: unknown) => new AdminTokenError({ path, reason, cause })

/**
 * Reads the token at `path`, generating it first when the file does not exist (its directory is
 * created with mode 0700 when missing). A file that others may read is used, with a warning.
 */
export const loadOrCreateToken = (path: string): Effect.Effect<AdminToken, AdminTokenError> =>
  Effect.gen(function*() {
    const cannotCreate = (cause: unknown) => fail(path, `cannot create it: ${describeErrno(cause)}`, cause)
    const exists = yield* Effect.tryPromise({
      try: async () => {
        await NodeFs.mkdir(NodePath.dirname(path), { recursive: true, mode: 0o700 })
        return await NodeFs.stat(path).then(() => true, (cause) => {
          if (errnoCode(cause) === "ENOENT") return false
          throw cause
        })
      },
      catch: cannotCreate
    })
    const created = exists ? false : yield* writeIfAbsent(path, `${generate()}\n`, 0o600).pipe(
      Effect.mapError((error) => cannotCreate(error.cause))
    )
    const { mode, text } = yield* Effect.tryPromise({
      try: async () => ({ text: await NodeFs.readFile(path, "utf8"), mode: (await NodeFs.stat(path)).mode }),
      catch: (cause) => fail(path, `cannot read it: ${describeErrno(cause)}`, cause)
    })
    const token = text.trim()
    if (token.length < MIN_LENGTH || /\s/.test(token)) {
      return yield* fail(path, `expected one token of at least ${MIN_LENGTH} characters without spaces`)
    }
    if ((mode & 0o077) !== 0) {
      yield* Effect.logWarning(
        `admin token ${path} can be read by other users (mode ${(mode & 0o777).toString(8)}); run: chmod 600 ${path}`
      )
    }
    return { path, created, verify: tokenVerifier(Redacted.make(token)) }
  })
