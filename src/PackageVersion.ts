import { readFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

/**
 * The package's version, read from the package.json above this module (src/, dist/src/ or the
 * bundle in dist/bin/) when called, not at import. Plain Node on purpose: the executable answers
 * `--version` with it before loading Effect (src/bin/mesh-controller.ts).
 */
export const readPackageVersion = (): string => {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 5; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name?: string; version?: string }
      if (pkg.name === "mesh-controller" && pkg.version) return pkg.version
    } catch {
      // not here: keep walking up
    }
    dir = dirname(dir)
  }
  // Shown by --version and /status, so a packaging mistake is visible rather than fatal.
  return "0.0.0-unknown"
}
