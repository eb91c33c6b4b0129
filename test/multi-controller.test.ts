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
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
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
  const config = (
    name: string,
    signingPort?: number,
    xdsPort = 0,
    extra: { consul?: string; services?: string } = {}
  ) => {
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
${extra.services ?? ""}
discovery: { consul: { address: ${JSON.stringify(address)}, watchWait: 5s${extra.consul ?? ""} } }
certificates:
  dir: ${JSON.stringify(join(dir, name))}
  store: consul
  consul: { prefix: ${JSON.stringify(prefix)}, keyEncryptionKeyFile: ${JSON.stringify(kek)}, sessionTtl: 10s }
`
    )
    return path
  }
  return { prefix, config, dir }
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

/** The endpoints (`address:port`) of `service` in a fresh SotW EDS answer from the controller at `xdsPort`. */
const edsEndpoints = (xdsPort: number, service: string) =>
  Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const ads = yield* AdsClient.sotw(`127.0.0.1:${xdsPort}`)
    // EDS names a cluster's service_name, the service's name.
    yield* ads.send({
      node: grpcNode("watcher~1"),
      type_url: TypeUrls.ClusterLoadAssignment,
      resource_names: [service]
    })
    const eds = yield* ads.next(TypeUrls.ClusterLoadAssignment)
    return eds.resources.flatMap((cla) =>
      ((cla["endpoints"] ?? []) as Array<Record<string, any>>).flatMap((locality) =>
        ((locality["lb_endpoints"] ?? []) as Array<Record<string, any>>).map((lb) => {
          const socket = lb["endpoint"]["address"]["socket_address"]
          return `${socket["address"]}:${socket["port_value"]}`
        })
      )
    ).sort()
  })))

/** Waits until the controller has run `rounds` more anti-entropy rounds (as its /status tells). */
const antiEntropyRounds = async (adminUrl: string, rounds: number) => {
  const seen = new Set<string>()
  await waitFor(async () => {
    const status = (await (await fetch(`${adminUrl}/status`)).json()) as {
      layers: { consulRegistration: { status: { lastSyncAt: string | null } } }
    }
    const at = status.layers.consulRegistration.status.lastSyncAt
    if (at !== null) seen.add(at)
    // The first one seen may be a round that ran before the wait began.
    expect(seen.size).toBeGreaterThan(rounds)
  }, 60_000)
}

const api = (adminUrl: string, tokenFile: string) => {
  const token = readFileSync(tokenFile, "utf8").trim()
  const call = (method: string, path: string, body?: unknown) =>
    fetch(`${adminUrl}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { "content-type": "application/json" })
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) })
    })
  return {
    register: (service: string, body: unknown) => call("POST", `/v1/services/${service}/endpoints`, body),
    deregister: (service: string, address: string, port: number) =>
      call("DELETE", `/v1/services/${service}/endpoints/${address}/${port}`)
  }
}

describe.skipIf(REAL_AGENT !== undefined)(
  "the registration API writes through to Consul's catalog (the stand-in)",
  () => {
    it(
      "an endpoint registered at A is served by B's xDS, outlives A's restart, and a DELETE at A removes it from B",
      async () => {
        const consul = await standIn()
        const { config, dir } = fleet(consul.address)
        const [xdsA, xdsB] = [await freePort(), await freePort()]
        // Each controller also registers a service of its own from its config, so the anti-entropy
        // rounds below have something of the other's to (wrongly) remove.
        const own = (name: string, port: number) => ({
          consul: ", antiEntropyInterval: 300ms",
          services:
            `  - { name: ${name}, port: ${port}, register: true, endpoints: [ { address: 127.0.0.1, port: ${port} } ] }`
        })
        const configA = config("a", undefined, xdsA, own("from-a", 19001))
        const configB = config("b", undefined, xdsB, own("from-b", 19002))
        let a = track(await startDaemon(configA))
        const b = track(await startDaemon(configB))
        const atA = api(a.adminUrl, join(dir, "a", "admin-token"))

        const posted = await atA.register("web", {
          address: "127.0.0.1",
          port: 18081,
          weight: 3,
          labels: { zone: "z1" }
        })
        expect(posted.status, await posted.clone().text()).toBe(201)
        // In the catalog, marked as an API registration of A (by its persisted controller ID).
        const idA = readFileSync(join(dir, "a", "controller-id"), "utf8").trim()
        const inCatalog = consul.registeredServices().filter((s) => s.Port === 18081)
        expect(inCatalog).toHaveLength(1)
        expect(inCatalog[0]!.Meta).toMatchObject({
          "mesh-controller": "multi",
          "mesh-controller-id": idA,
          "mesh-controller-source": "api",
          "mesh-controller-weight": "3",
          zone: "z1"
        })
        await waitFor(
          async () => expect(await edsEndpoints(xdsB, "web")).toEqual(["127.0.0.1:18080", "127.0.0.1:18081"]),
          30_000
        )

        // Several anti-entropy rounds of both: neither removes the other's registrations.
        await Promise.all([antiEntropyRounds(a.adminUrl, 3), antiEntropyRounds(b.adminUrl, 3)])
        expect(consul.registeredServices().map((s) => `${s.Service}:${s.Port}`).sort()).toEqual(
          ["from-a:19001", "from-b:19002", "web:18081"]
        )

        // A stops: its API registration stays in the catalog (its config registration leaves with it),
        // and B keeps serving it.
        a.child.kill("SIGTERM")
        await a.exited
        expect(consul.registeredServices().map((s) => `${s.Service}:${s.Port}`).sort()).toEqual(
          ["from-b:19002", "web:18081"]
        )
        expect(await edsEndpoints(xdsB, "web")).toEqual(["127.0.0.1:18080", "127.0.0.1:18081"])

        // A again, with the same state dir: same ID, its registration read back, and removable there.
        a = track(await startDaemon(configA))
        expect(readFileSync(join(dir, "a", "controller-id"), "utf8").trim()).toBe(idA)
        await waitFor(async () => {
          const listed = (await (await fetch(`${a.adminUrl}/v1/services`)).json()) as {
            services: Array<{ name: string; endpoints: Array<{ port: number; source: string; weight: number }> }>
          }
          const web = listed.services.find((s) => s.name === "web")!
          expect(web.endpoints.find((e) => e.port === 18081)).toMatchObject({ source: "api", weight: 3 })
        }, 30_000)
        const deleted = await api(a.adminUrl, join(dir, "a", "admin-token")).deregister("web", "127.0.0.1", 18081)
        expect(deleted.status, await deleted.clone().text()).toBe(204)
        expect(consul.registeredServices().filter((s) => s.Port === 18081)).toEqual([])
        await waitFor(async () => expect(await edsEndpoints(xdsB, "web")).toEqual(["127.0.0.1:18080"]), 30_000)
        await waitFor(async () => expect(await edsEndpoints(xdsA, "web")).toEqual(["127.0.0.1:18080"]), 30_000)
      },
      180_000
    )

    it(
      "Consul down at POST and DELETE time: 503 with Consul's reason, nothing changed; taken once Consul is back",
      async () => {
        const consul = await standIn()
        const { config, dir } = fleet(consul.address)
        const xds = await freePort()
        const a = track(await startDaemon(config("a", undefined, xds)))
        const atA = api(a.adminUrl, join(dir, "a", "admin-token"))
        const endpoint = { address: "127.0.0.1", port: 18082 }

        await consul.refuseConnections()
        const refused = await atA.register("web", endpoint)
        expect(refused.status).toBe(503)
        const body = (await refused.json()) as { error: string; message: string }
        expect(body.error).toBe("ConsulUnavailable")
        expect(body.message).toContain(`Consul at ${consul.address} did not take it`)
        expect(body.message).toMatch(/ECONNREFUSED|connection refused/i)
        // Not served either: an accepted registration is in the catalog, a refused one nowhere.
        expect(await edsEndpoints(xds, "web")).toEqual(["127.0.0.1:18080"])

        await consul.acceptConnections()
        const taken = await atA.register("web", endpoint)
        expect(taken.status, await taken.clone().text()).toBe(201)
        expect(consul.registeredServices().filter((s) => s.Port === 18082)).toHaveLength(1)
        await waitFor(
          async () => expect(await edsEndpoints(xds, "web")).toEqual(["127.0.0.1:18080", "127.0.0.1:18082"]),
          30_000
        )

        await consul.refuseConnections()
        const notRemoved = await atA.deregister("web", endpoint.address, endpoint.port)
        expect(notRemoved.status).toBe(503)
        await consul.acceptConnections()
        expect(consul.registeredServices().filter((s) => s.Port === 18082)).toHaveLength(1)
        expect(await edsEndpoints(xds, "web")).toEqual(["127.0.0.1:18080", "127.0.0.1:18082"])

        // A label Consul cannot carry as meta is refused, not dropped on the way.
        const dotted = await atA.register("web", {
          ...endpoint,
          port: 18083,
          labels: { "app.kubernetes.io/name": "x" }
        })
        expect(dotted.status).toBe(400)
        expect(((await dotted.json()) as { message: string }).message).toContain("labels[\"app.kubernetes.io/name\"]")
      },
      120_000
    )

    it("Consul down while a controller starts: API requests get their 503 in time, not a hang", async () => {
      const consul = await standIn()
      const { config, dir } = fleet(consul.address)
      // A is started once so its state dir (admin token, controller ID) exists, then again with Consul down.
      const first = track(await startDaemon(config("a")))
      first.child.kill("SIGTERM")
      await first.exited
      await consul.refuseConnections()
      const late = spawnController(config("a"))
      const admin = await waitFor(async () => {
        const line = late.lines.find((l) => /admin: listening on (http:\/\/[^"\s]+)/.test(l))
        if (line === undefined) throw new Error("no admin address yet")
        return /admin: listening on (http:\/\/[^"\s]+)/.exec(line)![1]!
      }, 60_000)
      const answer = await api(admin, join(dir, "a", "admin-token")).register("web", {
        address: "127.0.0.1",
        port: 18084
      })
      expect(answer.status).toBe(503)
      expect(((await answer.json()) as { message: string }).message).toContain("did not take it")
      await consul.acceptConnections()
      expect(consul.registeredServices().filter((s) => s.Port === 18084)).toEqual([])
    }, 120_000)
  }
)
