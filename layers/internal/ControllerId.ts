/**
 * The controller's ID: a name for this controller that stays the same across restarts, kept in
 * `controller-id` in the state dir (`certificates.dir`), made on first start. What the controller
 * registers in Consul's catalog carries it (`mesh-controller-id` meta), so several controllers on
 * one agent each keep and remove only their own registrations, and a restarted controller finds
 * the registrations it made before.
 */
import { Data, Effect } from "effect"
import { randomBytes } from "node:crypto"
import * as NodeFs from "node:fs/promises"
import { hostname } from "node:os"
import * as NodePath from "node:path"
import { describeErrno, errnoCode } from "../../src/Errno.js"
import { createDir, writeIfAbsent } from "./AtomicFile.js"

/** The ID file cannot be read, made, or holds something that is not an ID. */
export class ControllerIdError extends Data.TaggedError("ControllerIdError")<{
  readonly path: string
  readonly reason: string
}> {
  override get message(): string {
    return `${this.path}: ${this.reason}`
  }
}

/** Letters, digits, `_` and `-`: the ID is part of Consul service IDs, which are URL path segments. */
const ID = /^[A-Za-z0-9_-]{1,64}$/

/** The host's name (readable in the catalog) and random bytes (two controllers on one host differ). */
const freshId = (): string => {
  const host = hostname().replace(/[^A-Za-z0-9-]/g, "-").replace(/^-+|-+$/g, "").slice(0, 40)
  return `${host === "" ? "controller" : host}-${randomBytes(4).toString("hex")}`
}

const read = (path: string) =>
  Effect.tryPromise({
    try: () => NodeFs.readFile(path, "utf8").then((text) => text.trim()),
    catch: (cause) => cause
  })

const checked = (path: string, id: string) =>
  ID.test(id)
    ? Effect.succeed(id)
    : Effect.fail(
      new ControllerIdError({ path, reason: "expected letters, digits, '_' or '-' (1 to 64), found other" })
    )

/** `controller-id` in `dir`: read, or made once (two processes starting together agree: the second reads the first's). */
export const loadOrCreateControllerId = (dir: string): Effect.Effect<string, ControllerIdError> => {
  const path = NodePath.join(dir, "controller-id")
  const unreadable = (cause: unknown) => new ControllerIdError({ path, reason: describeErrno(cause) })
  return read(path).pipe(
    Effect.catchAll((cause) =>
      errnoCode(cause) !== "ENOENT" ? Effect.fail(unreadable(cause)) : createDir(dir, 0o700).pipe(
        // `link` never replaces: if another process made the file first, its ID is the one read.
        Effect.zipRight(
          writeIfAbsent(path, `${freshId()}\n`, 0o644)
        ),
        Effect.zipRight(read(path)),
        Effect.mapError(unreadable)
      )
    ),
    Effect.flatMap((id) => checked(path, id))
  )
}
