import { describe, expect, it } from "@effect/vitest"
import { Ajv } from "ajv"
import { spawnSync } from "node:child_process"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as YAML from "yaml"
import { aliasBomb } from "./support/aliasBomb.js"
import { runCli } from "./support/daemon.js"

const temp = (text: string) => {
  const path = join(mkdtempSync(join(tmpdir(), "mesh-cli-")), "mesh.yaml")
  writeFileSync(path, text)
  return path
}

describe("mesh-controller CLI", () => {
  it("validate: exit 0 with a one-line summary for a valid file", async () => {
    const result = await runCli(["validate", "examples/mesh.yaml"])
    expect(result.code).toBe(0)
    expect(result.stdout.trim().split("\n")).toEqual([
      `examples/mesh.yaml: ok: mesh "home-lab" (trust domain mesh.local), 4 services, 6 endpoints, 1 traffic policy, 2 authorization rules`
    ])
  })

  it("validate: exit 1 with every problem and its path", async () => {
    const path = temp(
      "mesh: { name: lab }\nservices:\n  - { name: a, port: 80, healthCheck: { type: http, interval: 10 parsecs } }\n  - { name: a, port: 81 }\n"
    )
    const result = await runCli(["validate", path])
    expect(result.code).toBe(1)
    expect(result.stderr).toBe(
      `error: ${path}: 2 problems\n` +
        `  services[0].healthCheck.interval: expected a duration such as "10s", got "10 parsecs"\n` +
        `  services[1].name: duplicate service name "a" (first defined at services[0])\n`
    )
  })

  it("validate: YAML syntax errors give line and column", async () => {
    const result = await runCli(["validate", temp("mesh:\n  name: lab\n  name: again\n")])
    expect(result.code).toBe(1)
    expect(result.stderr).toContain("line 3, column 3: YAML syntax error: Map keys must be unique")
  })

  it("validate: a YAML alias bomb is one problem, not a stack trace", async () => {
    const path = temp(aliasBomb())
    const result = await runCli(["validate", path])
    expect(result.code).toBe(1)
    expect(result.stderr).toBe(
      `error: ${path}: 1 problem\n  YAML cannot be read: Excessive alias count indicates a resource exhaustion attack\n`
    )
  })

  it("validate: exit 1 for a missing file", async () => {
    const result = await runCli(["validate", "/nonexistent/mesh.yaml"])
    expect(result.code).toBe(1)
    expect(result.stderr.trim()).toBe(
      "error: /nonexistent/mesh.yaml: cannot read the config file: no such file or directory"
    )
  }, 90_000)

  it("exit 2 on a usage error", async () => {
    expect((await runCli(["frobnicate"])).code).toBe(2)
    expect((await runCli(["validate"])).code).toBe(2)
  })

  it("--version and --help", async () => {
    const version = await runCli(["--version"])
    expect(version.code).toBe(0)
    expect(version.stdout.trim()).toBe(JSON.parse(readFileSync("package.json", "utf8")).version)
    const help = await runCli(["--help"])
    expect(help.code).toBe(0)
    expect(help.stdout).toContain("validate")
    expect(help.stdout).toContain("schema")
  })

  it("the executable's --help (pre-rendered at build time) is the live CLI's, byte for byte", async () => {
    const live = await runCli(["--help"])
    const bin = spawnSync(process.execPath, [join("dist", "bin", "mesh-controller.mjs"), "--help"], {
      encoding: "utf8"
    })
    expect(bin.status).toBe(0)
    expect(bin.stdout).toBe(live.stdout)
  })

  it("schema: prints a JSON Schema that accepts the example and rejects an unknown key", async () => {
    const result = await runCli(["schema"])
    expect(result.code).toBe(0)
    const schema = JSON.parse(result.stdout) as object
    const validate = new Ajv({ strict: false, allErrors: true }).compile(schema)
    expect(validate(YAML.parse(readFileSync("examples/mesh.yaml", "utf8")))).toBe(true)
    expect(validate({ mesh: { name: "lab", colour: "blue" } })).toBe(false)
    expect(JSON.stringify(validate.errors)).toContain("additionalProperties")
    expect(validate({ mesh: { name: "lab" }, services: [{ name: "a", port: 70000 }] })).toBe(false)
    // The committed copy editors point at is the one the CLI prints.
    expect(JSON.parse(readFileSync("schemas/mesh.schema.json", "utf8"))).toEqual(schema)
  })
})
