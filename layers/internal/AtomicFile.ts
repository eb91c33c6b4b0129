/**
 * Files that readers see whole or not at all: a temporary file in the same directory, fsync, then
 * `link` (never clobbers) or `rename` (replaces), then fsync of the directory. Shared by the CA
 * store, workload identity files and the Envoy bootstrap; no layer reaches into another for it.
 */
import { Data, Effect } from "effect"
import { randomBytes } from "node:crypto"
import * as NodeFs from "node:fs/promises"
import * as NodePath from "node:path"
import { describeErrno, errnoCode } from "../../src/Errno.js"

/** A file or directory could not be written; names the path and the reason in a person's words. */
export class FileWriteError extends Data.TaggedError("FileWriteError")<{
  readonly path: string
  readonly reason: string
  readonly cause: unknown
}> {
  override get message(): string {
    return `${this.path}: ${this.reason}`
  }
}

/** The marker in a temporary file's name; `removeTempFiles` deletes what a crash left with it. */
export const TEMP_MARKER = ".tmp-"

const writeError = (path: string) => (cause: unknown) =>
  new FileWriteError({ path, reason: describeErrno(cause), cause })

/**
 * The reason a directory cannot be created, worded for the errno: a read-only mount or missing
 * permission is what a person must fix, and Node's recursive mkdir reports some of them oddly.
 */
const mkdirReason = async (dir: string, cause: unknown): Promise<string> => {
  const code = errnoCode(cause)
  if (code === "EROFS") return "cannot create the directory: read-only file system (mount a writable volume there)"
  if (code === "EACCES" || code === "EPERM") return "cannot create the directory: permission denied"
  if (code === "ENOTDIR") return "cannot create the directory: a part of the path is a file, not a directory"
  if (code === "ENOENT") {
    // Recursive mkdir says ENOENT when the nearest existing ancestor cannot be written into (a
    // read-only mount, for instance): find that ancestor and ask it.
    let parent = NodePath.dirname(dir)
    while (parent !== NodePath.dirname(parent)) {
      const exists = await NodeFs.stat(parent).then(() => true, () => false)
      if (exists) break
      parent = NodePath.dirname(parent)
    }
    const probe = await NodeFs.mkdtemp(NodePath.join(parent, ".mesh-probe-")).then(
      (made) => NodeFs.rmdir(made).then(() => undefined),
      (error: unknown) => error
    )
    if (probe !== undefined) return `cannot create the directory in ${parent}: ${describeErrno(probe)}`
  }
  return `cannot create the directory: ${describeErrno(cause)}`
}

/** Creates the directory (and its parents) if needed; a failure says why in words a person can act on. */
export const createDir = (dir: string, mode: number): Effect.Effect<void, FileWriteError> =>
  Effect.tryPromise({
    try: async () => {
      try {
        await NodeFs.mkdir(dir, { recursive: true, mode })
      } catch (cause) {
        throw new FileWriteError({ path: dir, reason: await mkdirReason(dir, cause), cause })
      }
    },
    catch: (cause) => (cause instanceof FileWriteError ? cause : writeError(dir)(cause))
  })

/** Creates the directory if needed and makes it 0700 (it holds keys). */
export const ensurePrivateDir = (dir: string): Effect.Effect<void, FileWriteError> =>
  Effect.zipRight(
    createDir(dir, 0o700),
    Effect.tryPromise({ try: () => NodeFs.chmod(dir, 0o700), catch: writeError(dir) })
  )

/** Makes renames and links in `dir` durable. */
export const fsyncDir = async (dir: string): Promise<void> => {
  const handle = await NodeFs.open(dir, "r")
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}

/**
 * Writes a file atomically: a temporary file in the same directory (created with `mode`), fsync,
 * then `link` (fails if the target exists: nothing is overwritten) or `rename` (replace: for files
 * the user asked to replace), then fsync the directory.
 */
export const writeAtomic = (
  path: string,
  content: string,
  options: { readonly mode: number; readonly replace: boolean }
): Effect.Effect<void, FileWriteError> =>
  Effect.tryPromise({
    try: async () => {
      const temp = `${path}${TEMP_MARKER}${randomBytes(6).toString("hex")}`
      const handle = await NodeFs.open(temp, "wx", options.mode)
      try {
        await handle.writeFile(content)
        await handle.sync()
      } finally {
        await handle.close()
      }
      try {
        if (options.replace) await NodeFs.rename(temp, path)
        else await NodeFs.link(temp, path)
      } finally {
        await NodeFs.rm(temp, { force: true })
      }
      await fsyncDir(NodePath.dirname(path))
    },
    catch: writeError(path)
  })

/**
 * `writeAtomic` without replacing: true when this call created the file, false when one was already
 * there (the `link` fails with EEXIST), so two writers racing for one path agree on the first.
 */
export const writeIfAbsent = (
  path: string,
  content: string,
  mode: number
): Effect.Effect<boolean, FileWriteError> =>
  writeAtomic(path, content, { mode, replace: false }).pipe(
    Effect.as(true),
    Effect.catchIf((error) => errnoCode(error.cause) === "EEXIST", () => Effect.succeed(false))
  )

/** Deletes the temporary files a crash left in `dir` (a missing directory has none). Returns their names. */
export const removeTempFiles = (dir: string): Effect.Effect<ReadonlyArray<string>, FileWriteError> =>
  Effect.tryPromise({
    try: async () => {
      const names = await NodeFs.readdir(dir).catch((error: unknown) => {
        if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return [] as Array<string>
        throw error
      })
      const temps = names.filter((name) => name.includes(TEMP_MARKER))
      for (const name of temps) await NodeFs.rm(NodePath.join(dir, name), { force: true, recursive: true })
      return temps
    },
    catch: writeError(dir)
  })
