#!/usr/bin/env node
/**
 * The executable's entry (package.json `bin`, the image's ENTRYPOINT, built as the bundle
 * dist/bin/mesh-controller.mjs). `--version` and `--help` are answered before the CLI is loaded,
 * since loading it costs most of a second on a Raspberry Pi; everything else goes to main.ts.
 */
// First: a SIGHUP while `run` starts must not kill it (see SighupGuard.ts).
import "../SighupGuard.js"
import { readFileSync } from "node:fs"
import { readPackageVersion } from "../PackageVersion.js"

const args = process.argv.slice(2)
if (args.length === 1 && args[0] === "--version") {
  // The same bytes @effect/cli prints for --version.
  process.stdout.write(`${readPackageVersion()}\n\n`)
} else if (args.length === 1 && args[0] === "--help") {
  // The bytes @effect/cli prints for --help, rendered by this bundle's CLI when it was built
  // (scripts/bundle.mjs writes help.txt beside this file).
  process.stdout.write(readFileSync(new URL("help.txt", import.meta.url)))
} else {
  await import("../main.js")
}
