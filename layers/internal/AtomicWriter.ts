/**
 * Atomic writes for sets of files that must change together (one file: ./AtomicFile.ts).
 *
 * - `writeDirectoryAtomic`: Kubernetes' atomic writer (pkg/volume/util/atomic_writer.go): the files
 *   go into a fresh `..<timestamp>` directory, a `..data_tmp` symlink to it is renamed over `..data`
 *   (one rename: the swap), and each visible name is a symlink `name -> ..data/name`. A reader that
 *   opens cert.pem and key.pem resolves both through the same `..data` at that moment, so it never
 *   pairs a new certificate with an old key. Old data directories are removed after the swap.
 */
import { Data, Effect } from "effect"
import { randomBytes } from "node:crypto"
import * as NodeFs from "node:fs/promises"
import * as NodePath from "node:path"
import { describeErrno, errnoCode } from "../../src/Errno.js"
import { fsyncDir } from "./AtomicFile.js"

export class AtomicWriteFailed
  extends Data.TaggedError("AtomicWriteFailed")<{ readonly path: string; readonly reason: string }>
{
  override get message(): string {
    return `${this.path}: ${this.reason}`
  }
}

const failed = (path: string) => (cause: unknown) => new AtomicWriteFailed({ path, reason: describeErrno(cause) })

const writeSynced = async (path: string, content: string, mode: number) => {
  const handle = await NodeFs.open(path, "wx", mode)
  try {
    await handle.writeFile(content)
    await handle.sync()
  } finally {
    await handle.close()
  }
}

export interface DirectoryFile {
  readonly name: string
  readonly content: string
  readonly mode: number
}

const DATA = "..data"

/** Replaces the set of files in `dir` as one step (see the module comment). */
export const writeDirectoryAtomic = (
  dir: string,
  files: ReadonlyArray<DirectoryFile>
): Effect.Effect<void, AtomicWriteFailed> =>
  Effect.tryPromise({
    try: async () => {
      await NodeFs.mkdir(dir, { recursive: true, mode: 0o700 })
      const stamp = `..${new Date().toISOString().replace(/[-:.]/g, "")}.${randomBytes(4).toString("hex")}`
      const dataDir = NodePath.join(dir, stamp)
      await NodeFs.mkdir(dataDir, { mode: 0o700 })
      for (const file of files) await writeSynced(NodePath.join(dataDir, file.name), file.content, file.mode)
      await fsyncDir(dataDir)
      const previous = await NodeFs.readlink(NodePath.join(dir, DATA)).catch((cause) => {
        if (errnoCode(cause) === "ENOENT") return undefined
        throw cause
      })
      const tempLink = NodePath.join(dir, "..data_tmp")
      await NodeFs.rm(tempLink, { force: true })
      await NodeFs.symlink(stamp, tempLink)
      await NodeFs.rename(tempLink, NodePath.join(dir, DATA))
      // The visible names point through ..data, so they are made once and never change.
      for (const file of files) {
        const visible = NodePath.join(dir, file.name)
        const target = NodePath.join(DATA, file.name)
        const current = await NodeFs.readlink(visible).catch(() => undefined)
        if (current === target) continue
        const temp = `${visible}.tmp-${randomBytes(4).toString("hex")}`
        await NodeFs.symlink(target, temp)
        await NodeFs.rename(temp, visible)
      }
      await fsyncDir(dir)
      if (previous !== undefined && previous !== stamp) {
        await NodeFs.rm(NodePath.join(dir, previous), { recursive: true, force: true })
      }
    },
    catch: failed(dir)
  })
