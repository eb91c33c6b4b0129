import { FileSystem, Path } from "@effect/platform"
import { Effect, Option } from "effect"

/**
 * The package's version, read from the package.json above this module (in src/ or dist/src/) when
 * the effect runs, not at import: importing this module does no I/O. The CLI reads it once.
 */
export const packageVersion: Effect.Effect<string, never, FileSystem.FileSystem | Path.Path> = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  let dir = path.dirname(yield* path.fromFileUrl(new URL(import.meta.url)).pipe(Effect.orDie))
  for (let i = 0; i < 5; i++) {
    const found = yield* fs.readFileString(path.join(dir, "package.json")).pipe(
      Effect.map((text) => JSON.parse(text) as { name?: string; version?: string }),
      Effect.option
    )
    const pkg = Option.getOrUndefined(found)
    if (pkg?.name === "mesh-controller" && pkg.version) return pkg.version
    dir = path.dirname(dir)
  }
  // Shown by --version and /status, so a packaging mistake is visible rather than fatal.
  return "0.0.0-unknown"
})
