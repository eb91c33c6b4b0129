/**
 * Registration API cost: the built daemon (`dist/`, the full program: discovery, health, snapshot,
 * xDS) as a process, and one client that registers N endpoints of one service over HTTP with the
 * admin token, one request at a time on a kept-alive connection. Prints the total time and each
 * slice of 1,000; the baseline measured in the same run is the first slice, and the ratio of the
 * last slice to it says whether the cost per registration grows with the service (1.0 = linear
 * total; before the fix it grew with n, the last 1,000 of 10,000 took ~48 s).
 *
 *   npm run build && npx tsx bench/registration.ts [--endpoints 10000] [--slice 1000]
 */
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { loadavg, tmpdir } from "node:os"
import { join } from "node:path"
import { startDaemon } from "../test/support/daemon.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? Number(process.argv[i + 1]) : fallback
}
const ENDPOINTS = arg("endpoints", 10_000)
const SLICE = arg("slice", 1_000)

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

const daemon = await startDaemon(config)
try {
  const token = readFileSync(join(dir, "state", "admin-token"), "utf8").trim()
  const url = `${daemon.adminUrl}/v1/services/bench/endpoints`
  const headers = { "content-type": "application/json", authorization: `Bearer ${token}` }
  const slices: Array<number> = []
  const cpuSlices: Array<number> = []
  // The daemon's own CPU time (user + system, from /proc): what the machine's load does not change.
  const cpu = () =>
    readFileSync(`/proc/${daemon.child.pid}/stat`, "utf8").split(") ")[1]!.split(" ").slice(11, 13)
      .reduce((sum, ticks) => sum + Number(ticks) / 100, 0)
  let cpuStart = cpu()
  const cpuAtStart = cpuStart
  const start = performance.now()
  let sliceStart = start
  for (let i = 0; i < ENDPOINTS; i++) {
    const body = JSON.stringify({
      address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
      port: 8080,
      labels: { zone: "a" }
    })
    const response = await fetch(url, { method: "POST", headers, body })
    await response.arrayBuffer()
    if (response.status !== 201) throw new Error(`registration ${i}: HTTP ${response.status}`)
    if ((i + 1) % SLICE === 0 || i + 1 === ENDPOINTS) {
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
  const total = performance.now() - start
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
    `\nregistered ${ENDPOINTS} endpoints of one service over HTTP in ${(total / 1000).toFixed(2)} s` +
      ` (all listed after ${(visible / 1000).toFixed(2)} s)`
  )
  console.log(`daemon CPU during the registrations: ${(cpu() - cpuAtStart).toFixed(2)} s`)
  const ratio = (xs: ReadonlyArray<number>) => (xs[xs.length - 1]! / xs[0]!).toFixed(2)
  console.log(`last slice / first slice (baseline, same run): wall ${ratio(slices)}, daemon CPU ${ratio(cpuSlices)}`)
  console.log(`load average: ${loadavg().map((n) => n.toFixed(2)).join(" ")}`)
} finally {
  daemon.child.kill("SIGTERM")
  await daemon.exited
}
