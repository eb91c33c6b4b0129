import { readFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

/**
 * The mesh-controller package this module belongs to: its directory and version, found by walking
 * up from `from` (a module in src/, dist/src/, dist/layers/ or the bundle's dist/bin/) when called,
 * not at import. Plain Node on purpose: the executable answers `--version` with it before loading
 * Effect (src/bin/mesh-controller.ts).
 */
export const findPackage = (
  from: string = fileURLToPath(import.meta.url)
): { readonly dir: string; readonly version: string } | undefined => {
  let dir = dirname(from)
  for (let i = 0; i < 6; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name?: string; version?: string }
      if (pkg.name === "mesh-controller" && pkg.version) return { dir, version: pkg.version }
    } catch {
      // not here: keep walking up
    }
    dir = dirname(dir)
  }
  return undefined
}

// Shown by --version and /status, so a packaging mistake is visible rather than fatal.
export const readPackageVersion = (): string => findPackage()?.version ?? "0.0.0-unknown"
