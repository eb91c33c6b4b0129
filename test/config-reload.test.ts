import { NodeContext } from "@effect/platform-node"
import { afterEach, assert, describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { spawn } from "node:child_process"
import { existsSync, mkdtempSync, renameSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { LiveConfig, loadFile } from "../layers/LiveConfig.js"
import { aliasBomb } from "./support/aliasBomb.js"
import { type Daemon, jsonLogs, MAIN, requireBuild, startDaemon } from "./support/daemon.js"
import { eventually, waitFor } from "./support/eventually.js"

const yaml = (name: string, port = 80) => `mesh: { name: ${name} }\nservices: [ { name: web, port: ${port} } ]\n`

const withConfigFile = (initial: string) => {
  const dir = mkdtempSync(join(tmpdir(), "mesh-config-"))
  const path = join(dir, "mesh.yaml")
  writeFileSync(path, initial)
  return { dir, path }
}

const meshName = Effect.map(Effect.flatMap(LiveConfig, (c) => c.get), (loaded) => loaded.config.mesh.name)

describe("LiveConfig file layer", () => {
  it.live("applies a valid edit and reports it", () => {
    const { path } = withConfigFile(yaml("first"))
    return Effect.gen(function*() {
      const config = yield* LiveConfig
      assert.strictEqual(yield* meshName, "first")
      writeFileSync(path, yaml("second"))
      yield* eventually(Effect.filterOrFail(meshName, (name) => name === "second"))
      const status = yield* config.status
      expect(status.lastReload?._tag).toBe("Applied")
      expect(status.source).toBe(path)
    }).pipe(Effect.provide(LiveConfig.layer({ path, pollInterval: "200 millis" })))
  })

  it.live("rejects an invalid edit, keeps the config in force, and says why", () => {
    const { path } = withConfigFile(yaml("good"))
    return Effect.gen(function*() {
      const config = yield* LiveConfig
      const before = yield* config.get
      writeFileSync(path, yaml("good", 70000))
      const status = yield* eventually(
        Effect.filterOrFail(config.status, (s) => s.lastReload?._tag === "Rejected")
      )
      assert.deepStrictEqual(status.lastReload?._tag === "Rejected" && status.lastReload.errors, [
        "services[0].port: expected a port number from 1 to 65535, got 70000"
      ])
      const after = yield* config.get
      assert.strictEqual(after.hash, before.hash)
      assert.strictEqual(after.config.services[0]!.port, 80)
      // A later valid edit is still picked up.
      writeFileSync(path, yaml("fixed"))
      yield* eventually(Effect.filterOrFail(meshName, (name) => name === "fixed"))
    }).pipe(Effect.provide(LiveConfig.layer({ path, pollInterval: "200 millis" })))
  })

  it.live("rejects a YAML alias bomb, reports it, and applies the next good edit", () => {
    const { path } = withConfigFile(yaml("good"))
    return Effect.gen(function*() {
      const config = yield* LiveConfig
      writeFileSync(path, aliasBomb())
      // The watch and the periodic check both reach it: both must survive it.
      const status = yield* eventually(Effect.filterOrFail(config.status, (s) => s.lastReload?._tag === "Rejected"))
      assert.deepStrictEqual(status.lastReload?._tag === "Rejected" && status.lastReload.errors, [
        "YAML cannot be read: Excessive alias count indicates a resource exhaustion attack"
      ])
      assert.strictEqual(yield* meshName, "good")
      // An explicit reload of the same bomb is rejected too (and does not fail).
      expect((yield* config.reload)._tag).toBe("Rejected")
      writeFileSync(path, yaml("fixed"))
      yield* eventually(Effect.filterOrFail(meshName, (name) => name === "fixed"))
      expect((yield* config.status).lastReload?._tag).toBe("Applied")
    }).pipe(Effect.provide(LiveConfig.layer({ path, pollInterval: "200 millis" })))
  })

  it.live("picks up a file replaced by rename, as editors and config managers write it", () => {
    const { dir, path } = withConfigFile(yaml("before"))
    return Effect.gen(function*() {
      const temp = join(dir, ".mesh.yaml.tmp")
      writeFileSync(temp, yaml("after"))
      renameSync(temp, path)
      // The periodic check is an hour away: only the directory watch can see this in time.
      yield* eventually(Effect.filterOrFail(meshName, (name) => name === "after"))
      // And the watch still works on the new inode afterwards.
      writeFileSync(temp, yaml("again"))
      renameSync(temp, path)
      yield* eventually(Effect.filterOrFail(meshName, (name) => name === "again"))
    }).pipe(Effect.provide(LiveConfig.layer({ path, pollInterval: "1 hour" })))
  })

  it.live("fails to start on an invalid file, naming every problem", () => {
    const { path } = withConfigFile("mesh: { name: Bad }\nservices: [ { name: a, port: 0 } ]\n")
    return Effect.gen(function*() {
      const error = yield* Effect.flip(Layer.build(LiveConfig.layer({ path })).pipe(Effect.scoped))
      assert.strictEqual(error._tag, "ConfigInvalid")
      expect(error.message).toContain("mesh.name: expected a service name")
      expect(error.message).toContain("services[0].port: expected a port number from 1 to 65535, got 0")
    })
  })
})

describe("SIGHUP", () => {
  const daemonConfig = (name: string) => `
mesh: { name: ${name} }
controller:
  xds: { host: 127.0.0.1, port: 0 }
  admin: { host: 127.0.0.1, port: 0 }
  shutdownTimeout: 5s
services: [ { name: web, port: 8080, endpoints: [ { address: 127.0.0.1, port: 18080 } ] } ]
certificates: { dir: ${JSON.stringify(join(tmpdir(), "mesh-sighup-certs"))} }
`
  type Status = { layers: Record<string, { status?: { hash?: string; lastReload?: { _tag: string } } }> }
  const configStatus = async (daemon: Daemon) =>
    ((await (await fetch(`${daemon.adminUrl}/status`)).json()) as Status).layers.config!.status!

  let running: Daemon | undefined
  afterEach(() => {
    running?.child.kill("SIGKILL")
    running = undefined
  })

  it("reloads the config of the running daemon, which keeps running and still stops cleanly", async () => {
    const { path } = withConfigFile(daemonConfig("first"))
    const daemon = (running = await startDaemon(path))
    const before = (await configStatus(daemon)).hash

    writeFileSync(path, daemonConfig("second"))
    daemon.child.kill("SIGHUP")
    await waitFor(async () => {
      const status = await configStatus(daemon)
      expect(status.lastReload?._tag).toBe("Applied")
      expect(status.hash).not.toBe(before)
    })
    type Line = { message: unknown; annotations: Record<string, unknown>; spans?: Record<string, unknown> }
    const logs = () => jsonLogs(daemon.lines) as Array<Line>
    const sighups = () => logs().filter((l) => l.message === "SIGHUP: reloading the config").length
    await waitFor(async () => expect(sighups()).toBe(1))
    // The reload can be followed: its lines carry the module and run in the config.reload span.
    const reloaded = logs().find((l) => l.message === "config reloaded")
    expect(reloaded?.annotations["module"]).toBe("config")
    expect(Object.keys(reloaded?.spans ?? {})).toContain("config.reload")
    // A second SIGHUP with nothing changed is harmless too.
    daemon.child.kill("SIGHUP")
    await waitFor(async () => expect(sighups()).toBe(2))
    expect((await fetch(`${daemon.adminUrl}/healthz`)).status).toBe(200)

    daemon.child.kill("SIGTERM")
    expect(await daemon.exited).toEqual({ code: 0, signal: null })
  }, 90_000)

  it("a SIGHUP while the daemon starts, before its config has loaded, is harmless", async () => {
    requireBuild()
    const { path } = withConfigFile(daemonConfig("early"))
    // The preload holds the config read until the test releases it: a real "loaded, but no config yet".
    const child = spawn(process.execPath, [MAIN, "run", "--config", path], {
      env: {
        ...process.env,
        LOG_FORMAT: "json",
        HOLD_READ_PATH: path,
        NODE_OPTIONS: `--import=${pathToFileURL(join("test", "support", "hold-config-read.mjs")).href}`
      },
      stdio: ["ignore", "pipe", "pipe"]
    })
    const lines: Array<string> = []
    child.stdout.on("data", (chunk: Buffer) => lines.push(chunk.toString()))
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.on("exit", (code, signal) => resolve({ code, signal }))
    )
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined
    void exited.then((e) => (exit = e))
    const alive = () => {
      if (exit !== undefined) throw new Error(`the daemon exited: ${JSON.stringify(exit)}`)
    }
    try {
      await waitFor(async () => {
        alive()
        expect(existsSync(`${path}.reading`)).toBe(true)
      }, 30_000)
      child.kill("SIGHUP")
      // The old code died here at once (exit by SIGHUP, no finalizers).
      writeFileSync(`${path}.release`, "")
      const adminUrl = await waitFor(async () => {
        alive()
        const match = /admin: listening on (http:\/\/[^"\s]+)/.exec(lines.join(""))
        if (!match) throw new Error("no admin address logged yet")
        return match[1]!
      }, 30_000)
      await waitFor(async () => {
        alive()
        expect((await fetch(`${adminUrl}/readyz`)).status).toBe(200)
      }, 30_000)
      child.kill("SIGTERM")
      expect(await exited).toEqual({ code: 0, signal: null })
    } finally {
      child.kill("SIGKILL")
    }
  }, 90_000)
})

describe("loadFile given the config in force", () => {
  it.effect("gives it back for the same text at the same path, decodes a changed text or another path", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(join(tmpdir(), "mesh-load-"))
      const path = join(dir, "mesh.yaml")
      const other = join(dir, "other.yaml")
      const text =
        "mesh: { name: lab }\nservices:\n  - { name: web, port: 8080, endpoints: [{ address: 127.0.0.1, port: 8080 }] }\n"
      writeFileSync(path, text)
      writeFileSync(other, text)
      const first = yield* loadFile(path)
      // A periodic check of an unchanged file: the same value, not a second decode.
      writeFileSync(path, text)
      expect(yield* loadFile(path, first)).toBe(first)
      // The same text at another path is another source: decoded, with its own source.
      const elsewhere = yield* loadFile(other, first)
      expect(elsewhere).not.toBe(first)
      expect(elsewhere.source).toBe(other)
      expect(elsewhere.hash).toBe(first.hash)
      // A changed text is decoded, and a broken one still fails.
      writeFileSync(path, text.replace("port: 8080 }", "port: 8081 }"))
      const changed = yield* loadFile(path, first)
      expect(changed).not.toBe(first)
      expect(changed.config.services[0]?.endpoints[0]?.port).toBe(8081)
      writeFileSync(path, "mesh: [")
      const broken = yield* Effect.flip(loadFile(path, first))
      expect(broken._tag).toBe("ConfigInvalid")
    }).pipe(Effect.provide(NodeContext.layer)))
})
