/**
 * Registration API cost: the built daemon (`dist/`, the full program: discovery, health, snapshot,
 * xDS) as a process, and one client that registers N endpoints of one service over HTTP with the
 * admin token, one request at a time on a kept-alive connection. Prints the total time and each
 * slice of 1,000; the ratio of the last slice to the first says whether the cost per registration
 * grows with the service (1.0 = linear total; before the fix it grew with n, the last 1,000 of
 * 10,000 took ~48 s).
 *
 *   npm run build && npx tsx bench/registration.ts [--endpoints 10000] [--slice 1000] [--no-floor]
 *
 * The floor, in the same run: the same client and requests against a bare `node:http` server that
 * reads each body, parses it and answers 201 (what no HTTP API can beat on the machine). The client
 * is `node:http` with a keep-alive agent: `fetch` (undici) spent more CPU per request than the
 * daemon did, so the figure measured the client.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import * as Http from "node:http"
import { loadavg, tmpdir } from "node:os"
import { join } from "node:path"
import { startDaemon } from "../test/support/daemon.js"

const USAGE = `usage: npm run build && npx tsx bench/registration.ts [options]
  --endpoints N   registrations, all on one service (default 10000)
  --slice N       print a line every N registrations (default 1000)
  --no-floor      skip the bare node:http server run
  --help          this text`

const args = process.argv.slice(2)
if (args.includes("--help") || args.includes("-h")) {
  console.log(USAGE)
  process.exit(0)
}
for (const a of args) {
  if (a.startsWith("--") && !["--endpoints", "--slice", "--no-floor"].includes(a)) {
    console.error(`unknown option ${a}\n${USAGE}`)
    process.exit(2)
  }
}
const arg = (name: string, fallback: number) => {
  const i = args.indexOf(`--${name}`)
  if (i < 0) return fallback
  const value = Number(args[i + 1])
  if (!Number.isInteger(value) || value < 1) {
    console.error(`--${name} must be a positive integer\n${USAGE}`)
    process.exit(2)
  }
  return value
}
const ENDPOINTS = arg("endpoints", 10_000)
const SLICE = arg("slice", 1_000)

/** One request at a time on one kept-alive connection. */
const client = (base: string, token: string) => {
  const url = new URL(base)
  const agent = new Http.Agent({ keepAlive: true, maxSockets: 1 })
  const post = (path: string, body: string) =>
    new Promise<number>((resolve, reject) => {
      const request = Http.request({
        host: url.hostname,
        port: url.port,
        path,
        method: "POST",
        agent,
        headers: {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
          authorization: `Bearer ${token}`
        }
      }, (response) => {
        response.resume()
        response.on("end", () => resolve(response.statusCode ?? 0))
      })
      request.on("error", reject)
      request.end(body)
    })
  return { post, close: () => agent.destroy() }
}

const bodyOf = (i: number) =>
  JSON.stringify({ address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, port: 8080, labels: { zone: "a" } })

/** Registers ENDPOINTS endpoints; returns the total time, printing each slice (wall, and `cpu()` when given). */
const register = async (base: string, token: string, cpu: (() => number) | undefined) => {
  const { close, post } = client(base, token)
  const slices: Array<number> = []
  const cpuSlices: Array<number> = []
  let cpuStart = cpu?.() ?? 0
  const start = performance.now()
  let sliceStart = start
  for (let i = 0; i < ENDPOINTS; i++) {
    const status = await post("/v1/services/bench/endpoints", bodyOf(i))
    if (status !== 201) throw new Error(`registration ${i}: HTTP ${status}`)
    if (cpu !== undefined && ((i + 1) % SLICE === 0 || i + 1 === ENDPOINTS)) {
      const now = performance.now()
      slices.push(now - sliceStart)
      sliceStart = now
      const c = cpu()
      cpuSlices.push(c - cpuStart)
      cpuStart = c
      // Printed as it goes, so a run cut short by a loaded machine still shows its slices.
      console.log(
        `  slice ${String(slices.length).padStart(2)}: ${(slices.at(-1)! / 1000).toFixed(2)} s wall, ` +
          `${cpuSlices.at(-1)!.toFixed(2)} s daemon CPU`
      )
    }
  }
  close()
  return { total: performance.now() - start, slices, cpuSlices }
}

/** The floor: a bare node:http server in its own process (as the daemon is), answering as the API does. */
const startFloor = () =>
  new Promise<{ readonly child: ChildProcess; readonly base: string }>((resolve, reject) => {
    const server = `
      const http = require("node:http")
      const s = http.createServer((req, res) => {
        let body = ""
        req.on("data", (chunk) => (body += chunk))
        req.on("end", () => {
          const { address, port } = JSON.parse(body)
          res.writeHead(201, { "content-type": "application/json" })
          res.end(JSON.stringify({ service: "bench", endpoint: address + ":" + port, weight: 1, labels: {} }))
        })
      })
      s.listen(0, "127.0.0.1", () => console.log(s.address().port))`
    const child = spawn(process.execPath, ["-e", server], { stdio: ["ignore", "pipe", "inherit"] })
    child.stdout!.once("data", (data: Buffer) => resolve({ child, base: `http://127.0.0.1:${Number(String(data))}` }))
    child.once("error", reject)
  })

const dir = mkdtempSync(join(tmpdir(), "mesh-bench-registration-"))
const config = join(dir, "mesh.yaml")
writeFileSync(
  config,
  `
mesh: { name: bench }
controller:
  xds: { host: 127.0.0.1, port: 0 }
  admin:
    host: 127.0.0.1
    port: 0
    registration: { maxEndpointsPerService: ${Math.max(ENDPOINTS, 1)} }
services:
  - { name: bench, port: 8080 }
certificates: { dir: ${JSON.stringify(join(dir, "state"))} }
`
)

console.log(`load average before: ${loadavg().map((n) => n.toFixed(2)).join(" ")}`)
const daemon = await startDaemon(config)
let controller: Awaited<ReturnType<typeof register>>
try {
  const token = readFileSync(join(dir, "state", "admin-token"), "utf8").trim()
  // The daemon's own CPU time (user + system, from /proc): what the machine's load does not change.
  const cpu = () =>
    readFileSync(`/proc/${daemon.child.pid}/stat`, "utf8").split(") ")[1]!.split(" ").slice(11, 13)
      .reduce((sum, ticks) => sum + Number(ticks) / 100, 0)
  const cpuAtStart = cpu()
  controller = await register(daemon.adminUrl, token, cpu)
  const start = performance.now() - controller.total
  // The registry has them all once the (coalesced) publish ran.
  for (;;) {
    const listed = (await (await fetch(`${daemon.adminUrl}/v1/services`)).json()) as {
      services: ReadonlyArray<{ name: string; endpoints: ReadonlyArray<unknown> }>
    }
    if (listed.services.find((s) => s.name === "bench")?.endpoints.length === ENDPOINTS) break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const visible = performance.now() - start
  console.log(
    `\nregistered ${ENDPOINTS} endpoints of one service over HTTP in ${(controller.total / 1000).toFixed(2)} s` +
      ` (all listed after ${(visible / 1000).toFixed(2)} s)`
  )
  console.log(`daemon CPU during the registrations: ${(cpu() - cpuAtStart).toFixed(2)} s`)
  const ratio = (xs: ReadonlyArray<number>) => (xs[xs.length - 1]! / xs[0]!).toFixed(2)
  console.log(
    `last slice / first slice (same run): wall ${ratio(controller.slices)}, daemon CPU ${ratio(controller.cpuSlices)}`
  )
} finally {
  daemon.child.kill("SIGTERM")
  await daemon.exited
}
if (!args.includes("--no-floor")) {
  const floor = await startFloor()
  try {
    const { total } = await register(floor.base, "floor", undefined)
    console.log(
      `floor (bare node:http server, same client, same run): ${(total / 1000).toFixed(2)} s; ` +
        `daemon / floor ${(controller.total / total).toFixed(2)}×`
    )
  } finally {
    floor.child.kill("SIGTERM")
  }
}
console.log(`load average after: ${loadavg().map((n) => n.toFixed(2)).join(" ")}`)
