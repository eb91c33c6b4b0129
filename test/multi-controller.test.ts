/**
 * Several controller processes (the built CLI, `npm run build` first) on one Consul with
 * `certificates.store: consul`: one root whatever the start order, a creator killed inside the
 * lock, and a controller started while Consul is down.
 *
 * By default Consul is the stand-in (test/support/ConsulStandIn.ts), driven by the controllers'
 * real `consul` client. With CONSUL_HTTP_ADDR set, the first test runs against that agent (a
 * prefix unique to the run); the fault tests need the stand-in and are skipped.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import Consul from "consul"
import { Effect, Either, Exit, Scope } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { requestCertificate } from "../layers/internal/SigningClient.js"
import { generateKeyPair } from "../src/certs/Authority.js"
import { makeCsr } from "../src/signing/Csr.js"
import { TypeUrls } from "../src/xds/Protos.js"
import { AdsClient, grpcNode } from "./support/AdsClient.js"
import { freePort } from "./support/agent.js"
import { ConsulStandIn } from "./support/ConsulStandIn.js"
import { type Daemon, MAIN, requireBuild, runCli, startDaemon } from "./support/daemon.js"
import { waitFor } from "./support/eventually.js"

const REAL_AGENT = process.env["CONSUL_HTTP_ADDR"]
const run = Math.random().toString(36).slice(2, 7)
let count = 0

const started: Array<ChildProcess> = []
const scopes: Array<Scope.CloseableScope> = []
afterEach(async () => {
  await Promise.all(
    started.splice(0).map((child) =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve()
        child.once("exit", () => resolve())
        child.kill("SIGTERM")
      })
    )
  )
  for (const scope of scopes.splice(0)) await Effect.runPromise(Scope.close(scope, Exit.void))
})

const standIn = async () => {
  const scope = await Effect.runPromise(Scope.make())
  scopes.push(scope)
  return Effect.runPromise(Scope.extend(ConsulStandIn.make, scope))
}

/** A shared KEK and prefix (what the operator gives every controller), and a config per controller. */
const fleet = (address: string) => {
  const dir = mkdtempSync(join(tmpdir(), "mesh-multi-"))
  const kek = join(dir, "kek")
  writeFileSync(kek, `${Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64")}\n`, { mode: 0o600 })
  const prefix = `mesh-controller-test/${run}-${++count}/ca`
  const config = (name: string, signingPort?: number, xdsPort = 0) => {
    const path = join(dir, `${name}.yaml`)
    writeFileSync(
      path,
      `
mesh: { name: multi, trustDomain: mesh.local }
controller:
  xds: { host: 127.0.0.1, port: ${xdsPort} }
  admin: { host: 127.0.0.1, port: 0 }
  shutdownTimeout: 5s
${signingPort === undefined ? "" : `  signing: { host: 127.0.0.1, port: ${signingPort} }`}
services:
  - { name: web, port: 8080, endpoints: [ { address: 127.0.0.1, port: 18080 } ] }
discovery: { consul: { address: ${JSON.stringify(address)}, watchWait: 5s } }
certificates:
  dir: ${JSON.stringify(join(dir, name))}
  store: consul
  consul: { prefix: ${JSON.stringify(prefix)}, keyEncryptionKeyFile: ${JSON.stringify(kek)}, sessionTtl: 10s }
`
    )
    return path
  }
  return { prefix, config }
}

const track = (daemon: Daemon) => {
  started.push(daemon.child)
  return daemon
}

/** Starts a controller without waiting for it to become ready (it may not, by design). */
const spawnController = (configPath: string) => {
  requireBuild()
  const child = spawn(process.execPath, [MAIN, "run", "--config", configPath], {
    env: { ...process.env, LOG_FORMAT: "json" },
    stdio: ["ignore", "pipe", "pipe"]
  })
  started.push(child)
  const lines: Array<string> = []
  createInterface({ input: child.stdout! }).on("line", (line) => lines.push(line))
  createInterface({ input: child.stderr! }).on("line", (line) => lines.push(line))
  return { child, lines }
}

interface CertStatus {
  readonly ca: string
  readonly store: string
  readonly roots: ReadonlyArray<{ readonly fingerprint: string; readonly state: string }>
  readonly consul: { readonly prefix: string; readonly lockHolder: string | null } | null
}

const certStatus = async (adminUrl: string): Promise<CertStatus> => {
  const status = (await (await fetch(`${adminUrl}/status`)).json()) as {
    layers: { certificates: { status: CertStatus } }
  }
  return status.layers.certificates.status
}

describe(`several controllers on one Consul (${REAL_AGENT ? `agent ${REAL_AGENT}` : "the stand-in"})`, () => {
  it("three controllers started at once end with one root and equal bundles", async () => {
    const address = REAL_AGENT ?? (await standIn()).address
    const { config, prefix } = fleet(address)
    const daemons = (await Promise.all(["a", "b", "c"].map((name) => startDaemon(config(name))))).map(track)
    const statuses = await Promise.all(daemons.map((d) => certStatus(d.adminUrl)))
    for (const status of statuses) {
      expect(status.store).toBe("consul")
      expect(status.ca).toBe(`consul:${prefix}`)
      expect(status.roots).toEqual(statuses[0]!.roots)
    }
    expect(statuses[0]!.roots).toHaveLength(1)

    // `ca rotate` with any controller's config reaches every running controller.
    const rotated = await runCli(["ca", "rotate", "--config", config("a")])
    expect(rotated.code, rotated.stderr).toBe(0)
    await waitFor(async () => {
      for (const d of daemons) {
        expect((await certStatus(d.adminUrl)).roots.map((r) => r.state)).toEqual(["active", "next"])
      }
    }, 30_000)
    const activated = await runCli(["ca", "rotate", "--activate", "--config", config("b")])
    expect(activated.code, activated.stderr).toBe(0)
    await waitFor(async () => {
      const all = await Promise.all(daemons.map((d) => certStatus(d.adminUrl)))
      for (const status of all) expect(status.roots.map((r) => r.state)).toEqual(["active", "previous"])
      for (const status of all) expect(status.roots).toEqual(all[0]!.roots)
    }, 30_000)
    const shown = await runCli(["ca", "show", "--config", config("c")])
    expect(shown.stdout).toContain("active root")
    expect(shown.stdout).toContain("previous root")
  }, 90_000)
})

describe(`join tokens across controllers (${REAL_AGENT ? `agent ${REAL_AGENT}` : "the stand-in"})`, () => {
  it("a token made at A buys a certificate at B once, then nowhere", async () => {
    const address = REAL_AGENT ?? (await standIn()).address
    const { config, prefix } = fleet(address)
    const [portA, portB] = [await freePort(), await freePort()]
    const configA = config("a", portA)
    const configB = config("b", portB)
    const daemons = (await Promise.all([startDaemon(configA), startDaemon(configB)])).map(track)
    expect(daemons).toHaveLength(2)
    const created = await runCli(["token", "create", "--config", configA, "--service", "web"])
    expect(created.code, created.stderr).toBe(0)
    const token = created.stdout.trim()
    const url = new URL(address)
    const entry = (await new Consul({ host: url.hostname, port: Number(url.port) }).kv.get(`${prefix}/ca`)) as {
      Value: string
    }
    const doc = JSON.parse(entry.Value) as { active: { cert: string } }
    const ask = (port: number) =>
      Effect.runPromise(Effect.either(Effect.gen(function*() {
        const keys = yield* generateKeyPair("ecdsa-p256")
        const csr = yield* makeCsr(keys, { service: "web", spiffeId: "spiffe://mesh.local/service/web" })
        return yield* requestCertificate(`127.0.0.1:${port}`, { _tag: "Verified", roots: doc.active.cert }, {
          csr_pem: csr,
          token,
          service: "",
          instance: ""
        })
      })))
    const atB = await ask(portB)
    expect(Either.isRight(atB), JSON.stringify(atB)).toBe(true)
    for (const port of [portB, portA]) {
      const again = await ask(port)
      expect(Either.isLeft(again)).toBe(true)
      const refusal = Either.getLeft(again).pipe((o) => (o._tag === "Some" ? String(o.value.message) : ""))
      expect(refusal).toMatch(/spent|used/i)
    }
    // The token list at B (through Consul) shows it spent.
    const list = await runCli(["token", "list", "--config", configB])
    expect(list.stdout).toContain("spent")
  }, 120_000)
})

describe(`an xDS client moving between controllers (${REAL_AGENT ? `agent ${REAL_AGENT}` : "the stand-in"})`, () => {
  it("a client moved from A to B receives the same resources and versions (content hashes)", async () => {
    const address = REAL_AGENT ?? (await standIn()).address
    const { config } = fleet(address)
    const [xdsA, xdsB] = [await freePort(), await freePort()]
    const daemons =
      (await Promise.all([startDaemon(config("a", undefined, xdsA)), startDaemon(config("b", undefined, xdsB))]))
        .map(track)
    expect(daemons).toHaveLength(2)
    const fetchAll = (port: number) =>
      Effect.runPromise(Effect.scoped(Effect.gen(function*() {
        const ads = yield* AdsClient.sotw(`127.0.0.1:${port}`)
        const node = grpcNode("mover~1")
        yield* ads.send({ node, type_url: TypeUrls.Listener, resource_names: ["web"] })
        const lds = yield* ads.next(TypeUrls.Listener)
        yield* ads.send({ node, type_url: TypeUrls.Cluster, resource_names: [] })
        const cds = yield* ads.next(TypeUrls.Cluster)
        // EDS is asked by each cluster's service_name, as a client does.
        const edsNames = cds.resources.map((c) => c["eds_cluster_config"]?.service_name ?? c["name"])
        yield* ads.send({ node, type_url: TypeUrls.ClusterLoadAssignment, resource_names: edsNames })
        const eds = yield* ads.next(TypeUrls.ClusterLoadAssignment)
        return [lds, cds, eds].map((r) => ({ typeUrl: r.typeUrl, version: r.version, resources: r.resources }))
      })))
    // Both controllers read the same Consul; wait until each serves the web endpoint.
    const fromA = await waitFor(async () => {
      const got = await fetchAll(xdsA)
      expect(JSON.stringify(got[2]!.resources)).toContain("18080")
      return got
    }, 30_000)
    const fromB = await waitFor(async () => {
      const got = await fetchAll(xdsB)
      expect(got.map((r) => r.resources)).toEqual(fromA.map((r) => r.resources))
      return got
    }, 30_000)
    // Versions are content hashes of what the stream is sent: equal at both controllers, EDS too
    // (whose version once hashed the controller's whole snapshot, its own certificates included).
    expect(fromB.map((r) => r.version)).toEqual(fromA.map((r) => r.version))
  }, 120_000)
})

describe.skipIf(REAL_AGENT !== undefined)("several controllers: faults (the stand-in)", () => {
  it("the controller holding the lock is killed during creation; another completes without a second root", async () => {
    const consul = await standIn()
    const { config, prefix } = fleet(consul.address)
    // The creator's root write is parked, so it sits inside the lock until it is killed.
    consul.holdWrites((key) => key === `${prefix}/ca`)
    const creator = spawnController(config("creator"))
    await waitFor(async () => expect(consul.heldWrites()).toBe(1), 60_000)
    expect(consul.kvEntry(`${prefix}/lock`)?.session).toBeDefined()
    creator.child.kill("SIGKILL")
    await new Promise((resolve) => creator.child.once("exit", resolve))
    consul.holdWrites(undefined)
    // The dead creator's write arrives at no one: its connection is gone.
    consul.releaseHeldWrites()
    expect(consul.kvEntry(`${prefix}/ca`)).toBeUndefined()
    // The next one waits for the dead creator's session to lapse (TTL), then makes the root.
    const other = track(await startDaemon(config("other"), {}))
    const status = await certStatus(other.adminUrl)
    const stored = JSON.parse(consul.kvEntry(`${prefix}/ca`)!.value.toString()) as { active: { cert: string } }
    expect(status.roots).toHaveLength(1)
    expect(stored.active.cert).toContain("BEGIN CERTIFICATE")
    expect(consul.kvKeys().filter((k) => k.startsWith(prefix))).toEqual([`${prefix}/ca`])
    // A second controller agrees.
    const third = track(await startDaemon(config("third")))
    expect((await certStatus(third.adminUrl)).roots).toEqual(status.roots)
  }, 120_000)

  it(
    "Consul down while a controller starts whose peers made the CA: it waits, makes no root, then adopts theirs",
    async () => {
      const consul = await standIn()
      const { config, prefix } = fleet(consul.address)
      const first = track(await startDaemon(config("first")))
      const roots = (await certStatus(first.adminUrl)).roots
      const written = consul.kvEntry(`${prefix}/ca`)!.modifyIndex
      await consul.refuseConnections()
      const late = spawnController(config("late"))
      await waitFor(async () => {
        expect(late.lines.some((line) => line.includes("cannot reach Consul to read the CA"))).toBe(true)
      }, 60_000)
      // Not ready while it waits, and alive.
      const admin = await waitFor(async () => {
        const line = late.lines.find((l) => /admin: listening on (http:\/\/[^"\s]+)/.test(l))
        if (line === undefined) throw new Error("no admin address yet")
        return /admin: listening on (http:\/\/[^"\s]+)/.exec(line)![1]!
      })
      expect((await fetch(`${admin}/readyz`)).status).toBe(503)
      expect(late.child.exitCode).toBeNull()
      await consul.acceptConnections()
      await waitFor(async () => expect((await fetch(`${admin}/readyz`)).status).toBe(200), 60_000)
      expect((await certStatus(admin)).roots).toEqual(roots)
      expect(consul.kvEntry(`${prefix}/ca`)!.modifyIndex).toBe(written)
    },
    120_000
  )
})
