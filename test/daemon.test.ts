import { afterEach, describe, expect, it } from "@effect/vitest"
import { mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { createServer, type Server } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { type Daemon, jsonLogs, runCli, startDaemon } from "./support/daemon.js"
import { waitFor } from "./support/eventually.js"

const configText = (name: string, adminPort = 0, stateDir = join(tmpdir(), "mesh-daemon-certs")) => `
mesh: { name: ${name} }
controller:
  xds: { host: 127.0.0.1, port: 0 }
  admin: { host: 127.0.0.1, port: ${adminPort} }
  shutdownTimeout: 5s
services:
  - name: web
    port: 8080
    endpoints: [ { address: 127.0.0.1, port: 18080 } ]
certificates: { dir: ${JSON.stringify(stateDir)} }
`

const writeConfig = (text: string) => {
  const dir = mkdtempSync(join(tmpdir(), "mesh-daemon-"))
  const path = join(dir, "mesh.yaml")
  writeFileSync(path, text)
  return path
}

const portIsFree = (port: number) =>
  new Promise<boolean>((resolve) => {
    const probe = createServer()
    probe.once("error", () => resolve(false))
    probe.listen(port, "127.0.0.1", () => probe.close(() => resolve(true)))
  })

let running: Daemon | undefined
afterEach(() => {
  running?.child.kill("SIGKILL")
  running = undefined
})

describe("the daemon as a process", () => {
  it("becomes ready, serves admin endpoints, hot-reloads, and stops cleanly on SIGTERM", async () => {
    const path = writeConfig(configText("first"))
    const daemon = (running = await startDaemon(path))

    expect((await fetch(`${daemon.adminUrl}/healthz`)).status).toBe(200)
    const status = (await (await fetch(`${daemon.adminUrl}/status`)).json()) as {
      version: string
      phase: string
      layers: Record<
        string,
        { state: string; status?: { hash?: string; lastReload?: { _tag: string; errors?: Array<string> } } }
      >
    }
    expect(status.phase).toBe("ready")
    expect(status.version).toMatch(/^\d+\.\d+\.\d+/)
    for (const layer of Object.values(status.layers)) expect(layer.state).toBe("running")
    const firstHash = status.layers.config!.status!.hash

    // A valid edit is applied and shows in /status and /metrics.
    writeFileSync(path, configText("second"))
    await waitFor(async () => {
      const s = (await (await fetch(`${daemon.adminUrl}/status`)).json()) as typeof status
      expect(s.layers.config!.status!.lastReload!._tag).toBe("Applied")
      expect(s.layers.config!.status!.hash).not.toBe(firstHash)
    })
    // An invalid edit is rejected with its reason; the config in force stays.
    writeFileSync(path, configText("Bad Name"))
    await waitFor(async () => {
      const s = (await (await fetch(`${daemon.adminUrl}/status`)).json()) as typeof status
      expect(s.layers.config!.status!.lastReload!._tag).toBe("Rejected")
      expect(s.layers.config!.status!.lastReload!.errors!.join("\n")).toContain("mesh.name: expected a service name")
    })
    const metrics = await (await fetch(`${daemon.adminUrl}/metrics`)).text()
    expect(metrics).toContain("mesh_controller_config_reloads_total{result=\"ok\"} 1")
    expect(metrics).toContain("mesh_controller_config_reloads_total{result=\"failed\"} 1")
    expect(metrics).toMatch(/mesh_controller_process_resident_memory_bytes \d+/)
    expect(jsonLogs(daemon.lines).some((l) => l.message === "config reload rejected; keeping the config in force"))
      .toBe(true)

    const adminPort = Number(new URL(daemon.adminUrl).port)
    daemon.child.kill("SIGTERM")
    // Exit 0 also says "within controller.shutdownTimeout": past it, the watchdog exits 1.
    const exit = await daemon.exited
    expect(exit).toEqual({ code: 0, signal: null })
    expect(await portIsFree(adminPort)).toBe(true)
  })

  it("generates the admin token into the state dir (0600, never logged); the registration API needs it", async () => {
    const stateDir = join(mkdtempSync(join(tmpdir(), "mesh-daemon-state-")), "state")
    const daemon = (running = await startDaemon(writeConfig(configText("tokens", 0, stateDir))))
    const tokenFile = join(stateDir, "admin-token")
    const token = readFileSync(tokenFile, "utf8").trim()
    expect(statSync(tokenFile).mode & 0o777).toBe(0o600)
    const url = `${daemon.adminUrl}/v1/services/web/endpoints`
    const body = JSON.stringify({ address: "127.0.0.1", port: 18081 })
    const json = { "content-type": "application/json" }
    expect((await fetch(url, { method: "POST", headers: json, body })).status).toBe(401)
    expect(
      (await fetch(url, { method: "POST", headers: { ...json, authorization: "Bearer wrong-token-0123456789" }, body }))
        .status
    ).toBe(403)
    expect(
      (await fetch(url, {
        method: "POST",
        headers: { "content-type": "text/plain", authorization: `Bearer ${token}` },
        body
      })).status
    )
      .toBe(415)
    expect((await fetch(url, { method: "POST", headers: { ...json, authorization: `Bearer ${token}` }, body })).status)
      .toBe(201)
    const status = (await (await fetch(`${daemon.adminUrl}/status`)).json()) as {
      layers: { admin: { status: unknown } }
    }
    expect(status.layers.admin.status).toMatchObject({ readAccess: "open", tokenFile })
    expect(jsonLogs(daemon.lines).some((l) => l.message === `admin: generated the admin token in ${tokenFile}`)).toBe(
      true
    )
    expect([...daemon.lines, ...daemon.stderr].join("\n")).not.toContain(token)

    // A restart keeps the token.
    daemon.child.kill("SIGTERM")
    await daemon.exited
    const again = (running = await startDaemon(writeConfig(configText("tokens", 0, stateDir))))
    expect(readFileSync(tokenFile, "utf8").trim()).toBe(token)
    expect(
      (await fetch(url.replace(daemon.adminUrl, again.adminUrl), {
        method: "POST",
        headers: { ...json, authorization: `Bearer ${token}` },
        body
      })).status
    )
      .toBe(201)
  }, 120_000)

  it("exits 1 with one clear line when the admin port is taken", async () => {
    const blocker: Server = createServer()
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve))
    const port = (blocker.address() as { port: number }).port
    try {
      const result = await runCli(["run", "--config", writeConfig(configText("busy", port))], { LOG_FORMAT: "json" })
      expect(result.code).toBe(1)
      expect(result.stderr.trim()).toBe(`error: admin: cannot listen on 127.0.0.1:${port}: address already in use`)
    } finally {
      blocker.close()
    }
  })

  it("exits 1 listing every problem when the config is invalid, without a stack trace", async () => {
    const result = await runCli([
      "run",
      "--config",
      writeConfig("mesh: { name: x }\nservices: [ { name: a, port: 0, protocol: udp } ]\n")
    ])
    expect(result.code).toBe(1)
    expect(result.stderr).toContain("services[0].protocol: expected one of \"http\", \"grpc\", \"tcp\", got \"udp\"")
    expect(result.stderr).toContain("services[0].port: expected a port number from 1 to 65535, got 0")
    expect(result.stderr).not.toMatch(/\n\s+at /)
  })
})
