import { describe, expect, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { requireBuild } from "./support/daemon.js"

/**
 * A separate program that depends on mesh-controller and imports one layer through the package's
 * `exports`, using it alone: no daemon, no other layer.
 */
describe("mesh-controller as a library", () => {
  it("a consumer imports mesh-controller/layers/config and uses it on its own", () => {
    requireBuild()
    const consumer = mkdtempSync(join(tmpdir(), "mesh-consumer-"))
    mkdirSync(join(consumer, "node_modules"))
    symlinkSync(resolve("."), join(consumer, "node_modules", "mesh-controller"), "dir")
    symlinkSync(resolve("node_modules", "effect"), join(consumer, "node_modules", "effect"), "dir")
    writeFileSync(join(consumer, "mesh.yaml"), "mesh: { name: library }\nservices: [ { name: api, port: 8080 } ]\n")
    writeFileSync(
      join(consumer, "main.mjs"),
      `
import { Effect } from "effect"
import { LiveConfig } from "mesh-controller/layers/config"
import { parseConfig } from "mesh-controller"
const program = Effect.gen(function* () {
  const config = yield* LiveConfig
  const loaded = yield* config.get
  return { mesh: loaded.config.mesh.name, services: loaded.config.services.map((s) => s.name), parsed: parseConfig("mesh: {name: x}", "inline")._tag }
})
const result = await Effect.runPromise(program.pipe(Effect.provide(LiveConfig.layer({ path: "mesh.yaml", watch: false }))))
console.log(JSON.stringify(result))
`
    )
    const output = execFileSync(process.execPath, ["main.mjs"], { cwd: consumer }).toString().trim()
    expect(JSON.parse(output)).toEqual({ mesh: "library", services: ["api"], parsed: "Right" })
  })
})
