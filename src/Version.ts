import { Effect } from "effect"
import { readPackageVersion } from "./PackageVersion.js"

/** The package's version, read when the effect runs, not at import. The CLI reads it once. */
export const packageVersion: Effect.Effect<string> = Effect.sync(readPackageVersion)
