/**
 * The Envoy sidecar under the real daemon process (`dist/`, run `npm run build` first), with the
 * Envoy stand-in: shutdown drains and stops Envoy within `controller.shutdownTimeout`, and no
 * Envoy outlives the controller, however the controller ends.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { existsSync, mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { type Daemon, processAlive as alive, runCli, startDaemon } from "./support/daemon.js"
import { waitFor } from "./support/eventually.js"

const STANDIN = join(import.meta.dirname, "support", "envoy-standin.mjs")
const HAS_SETPRIV = ["/usr/bin/setpriv", "/bin/setpriv"].some((path) => existsSync(path))

/** Sidecar settings at their defaults (drainTime, controller.shutdownTimeout), except where tests must differ. */
const configText = (dir: string, extra: { readonly drainTime?: string; readonly shutdownTimeout?: string } = {}) => `
mesh: { name: sidecar-daemon }
controller:
  xds: { host: 127.0.0.1, port: 0 }
  admin: { host: 127.0.0.1, port: 0 }
${extra.shutdownTimeout ? `  shutdownTimeout: ${extra.shutdownTimeout}\n` : ""}services:
  - { name: echo, port: 8080 }
certificates: { dir: ${JSON.stringify(join(dir, "certs"))} }
sidecar:
  envoy:
    enabled: true
    service: echo
    path: ${JSON.stringify(STANDIN)}
    admin: { host: 127.0.0.1, port: 0 }
    baseId: ${2000 + Math.floor(Math.random() * 1000)}
    stateDir: ${JSON.stringify(join(dir, "envoy"))}
    args: [--standin-events, ${JSON.stringify(join(dir, "events.jsonl"))}]
${extra.drainTime ? `    drainTime: ${extra.drainTime}\n` : ""}`

const writeConfig = (extra: Parameters<typeof configText>[1] = {}) => {
  const dir = mkdtempSync(join(tmpdir(), "mesh-sidecar-daemon-"))
  const path = join(dir, "mesh.yaml")
  writeFileSync(path, configText(dir, extra))
  return { dir, path }
}

/** The Envoy pid once the sidecar reports ready. */
const envoyPid = (daemon: Daemon) =>
  waitFor(async () => {
    const status = await (await fetch(`${daemon.adminUrl}/status`)).json() as {
      layers: { sidecar?: { status?: { state: string; pid: number | null; parentDeathSignal: boolean } } }
    }
    const sidecar = status.layers.sidecar?.status
    if (sidecar?.state !== "ready" || sidecar.pid === null) throw new Error(`sidecar: ${JSON.stringify(sidecar)}`)
    return sidecar
  }, 30_000)

let running: Daemon | undefined
let envoy: number | undefined
afterEach(() => {
  running?.child.kill("SIGKILL")
  if (envoy !== undefined && alive(envoy)) process.kill(envoy, "SIGKILL")
  running = undefined
  envoy = undefined
})

describe("the sidecar under the daemon process", () => {
  it("SIGTERM at the default drain and shutdown timeout: Envoy drained and stopped, exit 0", async () => {
    const { path } = writeConfig()
    const daemon = (running = await startDaemon(path))
    const sidecar = await envoyPid(daemon)
    envoy = sidecar.pid!
    daemon.child.kill("SIGTERM")
    // Exit 0 says the drain and the stop ended within controller.shutdownTimeout (the watchdog exits 1).
    expect(await daemon.exited).toEqual({ code: 0, signal: null })
    expect(alive(sidecar.pid!)).toBe(false)
  }, 60_000)

  it.skipIf(!HAS_SETPRIV)("a controller killed with SIGKILL (no finalizer runs) takes Envoy with it", async () => {
    const { path } = writeConfig()
    const daemon = (running = await startDaemon(path))
    const sidecar = await envoyPid(daemon)
    envoy = sidecar.pid!
    expect(sidecar.parentDeathSignal).toBe(true)
    daemon.child.kill("SIGKILL")
    await daemon.exited
    await waitFor(async () => {
      if (alive(sidecar.pid!)) throw new Error(`Envoy ${sidecar.pid} still running`)
    })
  }, 60_000)

  it("a drain that cannot fit in the shutdown timeout is rejected at decode, naming both settings", async () => {
    const { path } = writeConfig({ drainTime: "10s", shutdownTimeout: "10s" })
    const result = await runCli(["validate", path])
    expect(result.code).toBe(1)
    const output = result.stdout + result.stderr
    expect(output).toContain("sidecar.envoy.drainTime")
    expect(output).toContain("controller.shutdownTimeout")
  })
})
