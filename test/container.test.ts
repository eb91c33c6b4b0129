import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync
} from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { entrypointFlags } from "../bench/imageFlags.js"
import { requireBuild, startDaemon } from "./support/daemon.js"

/**
 * No Docker engine runs here, so this runs what the image runs, the way it runs it: the bundle
 * in dist/bin and the page files in dist/src/ui/static (the parts of dist/ the image copies) with production dependencies only
 * (`npm ci --omit=dev`, as the Dockerfile's prune leaves them), as UID 65532 when the tests run as
 * root, with the config on a read-only path, and the image's own entry point, health check and
 * stop signal.
 */
const RUNTIME_UID = 65532
// The Node flags between node and the script in the image's exec-form ENTRYPOINT.
const IMAGE_NODE_FLAGS = entrypointFlags(process.cwd())
const asRoot = process.getuid?.() === 0

let root = ""
let app = ""
let etc = ""
let state = ""

beforeAll(() => {
  requireBuild()
  root = mkdtempSync(join(tmpdir(), "mesh-container-"))
  chmodSync(root, 0o755)
  app = join(root, "app")
  mkdirSync(app)
  cpSync(join("dist", "bin"), join(app, "dist", "bin"), { recursive: true })
  cpSync(join("dist", "src", "ui", "static"), join(app, "dist", "src", "ui", "static"), { recursive: true })
  for (const file of ["package.json", "package-lock.json"]) cpSync(file, join(app, file))
  execFileSync("npm", ["ci", "--omit=dev", "--ignore-scripts", "--prefer-offline", "--no-audit", "--no-fund"], {
    cwd: app,
    stdio: "pipe"
  })
  etc = join(root, "etc")
  mkdirSync(etc)
  const config = readFileSync("examples/container.yaml", "utf8")
    .replace("xds: { host: 0.0.0.0, port: 15010 }", "xds: { host: 127.0.0.1, port: 0 }")
    .replace("admin: { host: 0.0.0.0, port: 15014 }", "admin: { host: 127.0.0.1, port: 0 }")
    .replace("/var/lib/mesh-controller/certs", join(root, "state", "certs"))
  writeFileSync(join(etc, "mesh.yaml"), config)
  chmodSync(join(etc, "mesh.yaml"), 0o444)
  chmodSync(etc, 0o555)
  state = join(root, "state")
  mkdirSync(state, { mode: 0o700 })
  if (asRoot) chownSync(state, RUNTIME_UID, RUNTIME_UID)
}, 180_000)

// Removing the installed node_modules takes long on a loaded machine; the bound matches beforeAll's.
afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true })
}, 180_000)

describe("the container's process, run as the image runs it", () => {
  it("runs the daemon with the same Node flags as `npm start`", () => {
    const start: string = JSON.parse(readFileSync("package.json", "utf8")).scripts.start
    expect(start).toContain(["node", ...IMAGE_NODE_FLAGS, "dist/bin/mesh-controller.mjs run"].join(" "))
  })

  it("has no development dependency installed", () => {
    for (const devOnly of ["vitest", "typescript", "@effect/vitest"]) {
      expect(existsSync(join(app, "node_modules", devOnly))).toBe(false)
    }
    expect(existsSync(join(app, "node_modules", "effect"))).toBe(true)
  })

  it("becomes ready as a non-root user with a read-only config, passes its health check, and stops on SIGTERM", async () => {
    const command = asRoot ? "setpriv" : process.execPath
    const prefix = asRoot
      ? [`--reuid=${RUNTIME_UID}`, `--regid=${RUNTIME_UID}`, "--clear-groups", process.execPath]
      : []
    const daemon = await startDaemon(join(etc, "mesh.yaml"), {
      command,
      args: [...prefix, ...IMAGE_NODE_FLAGS, join(app, "dist", "bin", "mesh-controller.mjs")],
      cwd: app,
      env: { NODE_ENV: "production" }
    })
    try {
      const health = execFileSync(process.execPath, [
        join(app, "dist", "bin", "healthcheck.mjs"),
        `${daemon.adminUrl}/healthz`
      ], {
        stdio: "pipe"
      })
      expect(health.toString()).toBe("")
      // The status page and what it loads come from dist/ and the production dependencies alone.
      for (
        const path of [
          "/ui",
          "/ui/app.js",
          "/ui/app.css",
          "/ui/vendor/preact-htm.js",
          "/ui/api/services",
          "/ui/api/policy"
        ]
      ) {
        const response = await fetch(`${daemon.adminUrl}${path}`)
        expect({ path, status: response.status }).toEqual({ path, status: 200 })
      }
      if (asRoot) {
        const status = readFileSync(`/proc/${daemon.child.pid}/status`, "utf8")
        const child = Number(/\nUid:\s+(\d+)/.exec(status)?.[1] ?? -1)
        // setpriv execs node in place, so the pid is the daemon's.
        expect(child).toBe(RUNTIME_UID)
      }
      daemon.child.kill("SIGTERM")
      expect(await daemon.exited).toEqual({ code: 0, signal: null })
    } finally {
      daemon.child.kill("SIGKILL")
    }
  })

  it("the image's executable answers --version, --help, validate and schema, and exits 2 on a usage error", () => {
    // Each command loads its part of the bundle when it runs; this checks those parts resolve with
    // production dependencies only.
    const bin = join(app, "dist", "bin", "mesh-controller.mjs")
    const run = (args: ReadonlyArray<string>) => {
      try {
        return {
          code: 0,
          stdout: execFileSync(process.execPath, [bin, ...args], { cwd: app, stdio: "pipe" }).toString()
        }
      } catch (error) {
        const failed = error as { status: number; stdout: Buffer }
        return { code: failed.status, stdout: failed.stdout.toString() }
      }
    }
    expect(run(["--version"])).toEqual({
      code: 0,
      stdout: `${JSON.parse(readFileSync("package.json", "utf8")).version}\n\n`
    })
    const help = run(["--help"])
    expect(help.code).toBe(0)
    expect(help.stdout).toContain("validate")
    const validated = run(["validate", join(etc, "mesh.yaml")])
    expect(validated.code).toBe(0)
    expect(validated.stdout).toContain(": ok: mesh")
    const schema = run(["schema"])
    expect(schema.code).toBe(0)
    expect(JSON.stringify(JSON.parse(schema.stdout))).toContain("\"services\"")
    expect(run(["no-such-command"]).code).toBe(2)
  })

  it("the health check fails when nothing answers", () => {
    expect(() =>
      execFileSync(process.execPath, [join(app, "dist", "bin", "healthcheck.mjs"), "http://127.0.0.1:1/healthz"], {
        stdio: "pipe"
      })
    ).toThrow()
  })
})
