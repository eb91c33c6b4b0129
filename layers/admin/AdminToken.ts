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

/**
 * Writes `content` to `path` only if no file is there: a temporary file with mode 0600 in the same
 * directory, fsync, then `link` (which fails when the target exists: two controllers starting at
 * once keep the first token), then fsync the directory. A crash leaves no token or a whole one.
 */
const createExclusive = async (path: string, content: string): Promise<boolean> => {
  const temp = `${path}.tmp-${randomBytes(6).toString("hex")}`
  const handle = await NodeFs.open(temp, "wx", 0o600)
  try {
    await handle.writeFile(content)
    await handle.sync()
  } finally {
    await handle.close()
  }
  try {
    await NodeFs.link(temp, path)
  } catch (cause) {
    if (errnoCode(cause) === "EEXIST") return false
    throw cause
  } finally {
    await NodeFs.rm(temp, { force: true })
  }
  const dir = await NodeFs.open(NodePath.dirname(path), "r")
  try {
    await dir.sync()
  } finally {
    await dir.close()
  }
  return true
}

const fail = (path: string, reason: string, cause?: unknown) => new AdminTokenError({ path, reason, cause })

/**
 * Reads the token at `path`, generating it first when the file does not exist (its directory is
 * created with mode 0700 when missing). A file that others may read is used, with a warning.
 */
export const loadOrCreateToken = (path: string): Effect.Effect<AdminToken, AdminTokenError> =>
  Effect.gen(function*() {
    const created = yield* Effect.tryPromise({
      try: async () => {
        await NodeFs.mkdir(NodePath.dirname(path), { recursive: true, mode: 0o700 })
        const exists = await NodeFs.stat(path).then(() => true, (cause) => {
          if (errnoCode(cause) === "ENOENT") return false
          throw cause
        })
        return exists ? false : await createExclusive(path, `${generate()}\n`)
      },
      catch: (cause) => fail(path, `cannot create it: ${describeErrno(cause)}`, cause)
    })
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
