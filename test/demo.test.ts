/**
 * `mesh-controller demo` as a user runs it, as a process: within its first minute the traffic
 * split between greeter v1 and v2 shows in /metrics, the intruder's calls are denied by the
 * greeters' RBAC (outcome="denied"), the greeters saw the web front's agent-issued identity in the
 * mTLS handshake (the peer label), the flapping greeter instance's health flips in
 * /ui/api/services (calls move to the other v1 instance and come back), new weights and removed
 * deny rules written to the config file move the split and let the intruder through (hot reload),
 * and SIGINT stops it all: the demo exits 0, its child processes (greeters, web front, intruder)
 * are gone, and every port is free again.
 */
import { describe, expect, it } from "@effect/vitest"
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { parse, stringify } from "yaml"
import { processAlive as alive } from "./support/daemon.js"
import { waitFor } from "./support/eventually.js"

const BIN = join(process.cwd(), "dist", "bin", "mesh-controller.mjs")

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })

const canListen = (port: number) =>
  new Promise<boolean>((resolve) => {
    const server = createServer()
    server.once("error", () => resolve(false))
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)))
  })

/** The pids whose parent is `pid` (from /proc). */
const childrenOf = (pid: number): ReadonlyArray<number> =>
  readdirSync("/proc").filter((name) => /^\d+$/.test(name)).flatMap((name) => {
    try {
      // "pid (comm) state ppid …": comm may hold spaces, so read after its closing parenthesis.
      const stat = readFileSync(`/proc/${name}/stat`, "utf8")
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1])
      return ppid === pid ? [Number(name)] : []
    } catch {
      return []
    }
  })

/** mesh_demo_calls_total, one entry per label set. */
const demoCalls = async (admin: string): Promise<ReadonlyArray<{ labels: Record<string, string>; calls: number }>> => {
  const text = await (await fetch(`${admin}/metrics`)).text()
  return text.split("\n").filter((line) => line.startsWith("mesh_demo_calls_total{")).map((line) => ({
    labels: Object.fromEntries([...line.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!])),
    calls: Number(line.split(" ").at(-1))
  }))
}

/** The web front's answered calls by greeter instance. */
const callsByInstance = async (admin: string): Promise<Map<string, { version: string; calls: number }>> => {
  const calls = new Map<string, { version: string; calls: number }>()
  for (const { calls: n, labels } of await demoCalls(admin)) {
    if (labels["caller"] !== "web" || labels["outcome"] !== "ok") continue
    const seen = calls.get(labels["instance"]!)?.calls ?? 0
    calls.set(labels["instance"]!, { version: labels["version"]!, calls: seen + n })
  }
  return calls
}

/** The intruder's calls by outcome (and, answered, the identity the greeter saw). */
const intruderCalls = async (admin: string) => {
  const totals = { denied: 0, ok: 0, error: 0, peers: new Set<string>() }
  for (const { calls, labels } of await demoCalls(admin)) {
    if (labels["caller"] !== "intruder") continue
    const outcome = labels["outcome"] as "denied" | "ok" | "error"
    totals[outcome] += calls
    if (outcome === "ok") totals.peers.add(labels["peer"]!)
  }
  return totals
}

interface EndpointJson {
  readonly key: string
  readonly health: string
  readonly transitions: ReadonlyArray<{ readonly from: string; readonly to: string }>
}

const endpointOf = async (admin: string, service: string, key: string): Promise<EndpointJson> => {
  const body = (await (await fetch(`${admin}/ui/api/services`)).json()) as {
    services: ReadonlyArray<{ name: string; endpoints: ReadonlyArray<EndpointJson> }>
  }
  const endpoint = body.services.find((s) => s.name === service)?.endpoints.find((e) => e.key === key)
  if (endpoint === undefined) throw new Error(`${service} ${key} not in /ui/api/services`)
  return endpoint
}

/** The demo on free ports and a temporary state dir, as a process. */
const startDemo = async () => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`npm run build\` first (npm test does)`)
  const dir = mkdtempSync(join(tmpdir(), "demo-test-"))
  const [xds, admin, signing, v1a, v1b, v2, web, intruder] = await Promise.all(
    Array.from({ length: 8 }, freePort)
  ) as [number, number, number, number, number, number, number, number]
  // examples/demo.yaml itself, on free ports and a temporary state dir.
  const config = parse(readFileSync("examples/demo.yaml", "utf8"))
  config.controller.xds.port = xds
  config.controller.admin.port = admin
  config.controller.signing.port = signing
  const service = (name: string) => config.services.find((s: { name: string }) => s.name === name)
  service("greeter-v1").endpoints[0].port = v1a
  service("greeter-v1").endpoints[1].port = v1b
  service("greeter-v2").endpoints[0].port = v2
  service("web").endpoints[0].port = web
  service("intruder").endpoints[0].port = intruder
  config.certificates.dir = join(dir, "certs")
  const configPath = join(dir, "demo.yaml")
  writeFileSync(configPath, stringify(config))

  const output: Array<string> = []
  const child: ChildProcess = spawn(process.execPath, [BIN, "demo", "--config", configPath], {
    env: { ...process.env, LOG_FORMAT: "json" },
    stdio: ["ignore", "pipe", "pipe"]
  })
  createInterface({ input: child.stdout! }).on("line", (line) => output.push(line))
  createInterface({ input: child.stderr! }).on("line", (line) => output.push(line))
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
  let done = false
  void exited.then(() => (done = true))
  const adminUrl = `http://127.0.0.1:${admin}`
  const running = () => {
    if (done) throw new Error(`the demo exited early:\n${output.join("\n")}`)
  }
  return {
    dir,
    config,
    configPath,
    service,
    child,
    exited,
    adminUrl,
    running,
    isDone: () => done,
    output,
    ports: { xds, admin, signing, v1a, v1b, v2, web, intruder }
  }
}

describe("mesh-controller demo", () => {
  it(
    "shows the split over mTLS, a denial, a health flip, a weight and a rule change, and SIGINT leaves nothing behind",
    { timeout: 480_000 },
    async () => {
      const { adminUrl, child, config, configPath, dir, exited, isDone, ports, running, output } = await startDemo()
      const { admin, intruder, signing, v1a, v1b, v2, web, xds } = ports
      try {
        // It says what to open.
        await waitFor(
          async () => {
            running()
            if (!output.some((line) => line.includes(`${adminUrl}/ui`))) throw new Error("no banner yet")
          },
          240_000,
          200
        )

        // The split: both versions answer calls made through xds:///greeter.
        await waitFor(
          async () => {
            running()
            const versions = new Set([...(await callsByInstance(adminUrl)).values()].map((c) => c.version))
            if (!versions.has("v1") || !versions.has("v2")) throw new Error(`versions seen: ${[...versions]}`)
          },
          120_000,
          500
        )

        // mTLS with the agents' identities: every answered web call was seen from the web front's certificate.
        const webPeers = new Set(
          (await demoCalls(adminUrl)).filter((c) => c.labels["caller"] === "web" && c.labels["outcome"] === "ok")
            .map((c) => c.labels["peer"])
        )
        expect([...webPeers]).toEqual([`spiffe://${config.mesh.trustDomain}/service/web`])

        // The denial: the greeters' RBAC (from the no-intruder rules) turns the intruder away.
        await waitFor(
          async () => {
            running()
            const calls = await intruderCalls(adminUrl)
            if (calls.denied < 3) {
              throw new Error(`intruder calls: ${JSON.stringify({ ...calls, peers: [...calls.peers] })}`)
            }
            // And the demo prints it.
            if (!output.some((line) => /intruder denied \d+ \(last: PERMISSION_DENIED/.test(line))) {
              throw new Error("no denial printed yet")
            }
          },
          120_000,
          500
        )
        expect((await intruderCalls(adminUrl)).ok).toBe(0)

        // The flip: the timer stops the second v1 instance; its health turns unhealthy.
        const flapping = `127.0.0.1:${v1b}`
        const steady = `127.0.0.1:${v1a}`
        await waitFor(
          async () => {
            running()
            const endpoint = await endpointOf(adminUrl, "greeter-v1", flapping)
            if (!endpoint.transitions.some((t) => t.to === "unhealthy")) throw new Error(JSON.stringify(endpoint))
          },
          120_000,
          500
        )

        // Calls move away: while it is down, the other v1 instance takes calls and it takes none.
        let before = await callsByInstance(adminUrl)
        await waitFor(
          async () => {
            running()
            const now = await callsByInstance(adminUrl)
            const endpoint = await endpointOf(adminUrl, "greeter-v1", flapping)
            const moved = endpoint.health === "unhealthy" &&
              now.get(flapping)?.calls === before.get(flapping)?.calls &&
              (now.get(steady)?.calls ?? 0) >= (before.get(steady)?.calls ?? 0) + 5
            if (!moved) {
              before = now
              throw new Error(`not moved yet: ${JSON.stringify([...now])}, ${endpoint.health}`)
            }
          },
          120_000,
          1_500
        )

        // And come back: healthy again, and it answers calls again.
        const down = (await callsByInstance(adminUrl)).get(flapping)?.calls ?? 0
        await waitFor(
          async () => {
            running()
            const endpoint = await endpointOf(adminUrl, "greeter-v1", flapping)
            const back = endpoint.transitions.some((t) => t.from === "unhealthy" && t.to === "healthy")
            const calls = (await callsByInstance(adminUrl)).get(flapping)?.calls ?? 0
            if (!back || calls <= down) throw new Error(`not back yet: ${endpoint.health}, ${calls} calls`)
          },
          120_000,
          500
        )

        // Hot reload: new weights in the file move the split (1/99 makes v1 a small minority of the calls),
        // and without the deny rules the intruder's calls are answered.
        const byVersion = async () => {
          const totals = { v1: 0, v2: 0 }
          for (const { calls, version } of (await callsByInstance(adminUrl)).values()) {
            if (version === "v1" || version === "v2") totals[version] += calls
          }
          return totals
        }
        config.policies.traffic[0].routes[0].destinations[0].weight = 1
        config.policies.traffic[0].routes[0].destinations[1].weight = 99
        config.policies.security.authorization = []
        writeFileSync(configPath, stringify(config))
        let base = await byVersion()
        await waitFor(
          async () => {
            running()
            const now = await byVersion()
            const v1 = now.v1 - base.v1
            const v2 = now.v2 - base.v2
            if (v2 < 30) throw new Error(`window still filling: v1 ${v1}, v2 ${v2}`)
            base = now
            if (v1 * 4 > v2) throw new Error(`split not moved yet: v1 ${v1}, v2 ${v2}`)
          },
          120_000,
          500
        )
        await waitFor(
          async () => {
            running()
            const calls = await intruderCalls(adminUrl)
            if (calls.ok < 3) throw new Error(`intruder still turned away: ${JSON.stringify(calls.ok)}`)
            expect([...calls.peers]).toEqual([`spiffe://${config.mesh.trustDomain}/service/intruder`])
          },
          120_000,
          500
        )

        // Ctrl-C: the demo and its services exit, and every port is free again.
        const children = childrenOf(child.pid!)
        expect(children.length).toBeGreaterThan(0)
        child.kill("SIGINT")
        expect(await Promise.race([exited, new Promise((r) => setTimeout(() => r("timeout"), 60_000))])).toBe(0)
        await waitFor(
          async () => {
            const left = children.filter(alive)
            if (left.length > 0) throw new Error(`still running: ${left}`)
          },
          30_000,
          200
        )
        for (const port of [xds, admin, signing, v1a, v1b, v2, web, intruder]) expect(await canListen(port)).toBe(true)
      } finally {
        if (!isDone()) child.kill("SIGKILL")
        rmSync(dir, { recursive: true, force: true })
      }
    }
  )

  it("a killed demo (SIGKILL, no finalizers) leaves no service process behind", { timeout: 300_000 }, async () => {
    const { child, dir, exited, isDone, ports, running } = await startDemo()
    try {
      await waitFor(
        async () => {
          running()
          // The two steady greeters, the web front and the intruder (the flapping greeter may be down).
          if (childrenOf(child.pid!).length < 4) throw new Error(`children: ${childrenOf(child.pid!)}`)
          for (const port of [ports.web, ports.intruder]) {
            const response = await fetch(`http://127.0.0.1:${port}/healthz`)
            if (response.status !== 200) throw new Error(`127.0.0.1:${port}/healthz ${response.status}`)
          }
        },
        120_000,
        200
      )
      const children = childrenOf(child.pid!)
      child.kill("SIGKILL")
      await exited
      await waitFor(
        async () => {
          const left = children.filter(alive)
          if (left.length > 0) throw new Error(`still running: ${left}`)
        },
        30_000,
        200
      )
      for (const port of [ports.web, ports.intruder, ports.v1a, ports.v2]) expect(await canListen(port)).toBe(true)
    } finally {
      if (!isDone()) child.kill("SIGKILL")
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
