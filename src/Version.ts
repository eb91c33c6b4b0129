import { readFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

/** The package's version, read from the package.json above this module (in src/ or dist/src/). */
export const version: string = (() => {
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
  return "0.0.0-unknown"
})()
