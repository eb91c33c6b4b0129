#!/usr/bin/env node
/**
 * Start-up and footprint of the built executable, against Node itself measured in the same run.
 *
 *   npm run bench:startup                                  # builds, then the defaults below
 *   node bench/startup.mjs [--rounds 5] [--big-rounds 3] [--services 5000] [--idle 2000] [--skip-big]
 *                          [--root DIR]   (another checkout's build, e.g. the branch point's, for a before/after)
 *                          [--node-flags "FLAGS"]   (Node/V8 flags for the bin rows instead of the image's)
 *
 * Rows (each the median of its rounds: wall clock from spawn, CPU time of the process (user +
 * system, all threads; to readiness for the daemons), peak or idle RSS). On a shared machine the
 * wall clock follows the load; CPU time and RSS much less so:
 * The bin rows run the executable the way the image does: `node <the Dockerfile ENTRYPOINT's flags>
 * dist/bin/mesh-controller.mjs` (`--node-flags ""` runs it without; `npm start` has the same flags).
 * - `--version`, `--help`: the executable (dist/bin, the bundle the bin and the image run) and the
 *   per-module build (dist/src/main.js, what a library consumer's imports load), against
 *   `node -e ""` (the floor: starting Node at all).
 * - start → /readyz with examples/mesh.yaml (ports 0, state in a temporary directory), idle RSS
 *   after readiness; against a bare node:http server that answers /readyz (the floor for "a Node
 *   process that listens and answers").
 * - start → /readyz with a generated config of --services services (one endpoint each).
 *
 * Prints figures and ratios; never fails on a figure. Needs `npm run build` first.
 */
import { spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { loadavg, tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"

// --root DIR measures another checkout's build (say, the branch point's) with the same bench.
const rootArg = process.argv.indexOf("--root")
const root = rootArg > 0
  ? resolve(process.argv[rootArg + 1])
  : resolve(dirname(fileURLToPath(import.meta.url)), "..")
const argv = process.argv.slice(2)
if (argv.includes("--help")) {
  process.stdout.write(
    readFileSync(fileURLToPath(import.meta.url), "utf8").split("*/")[0].replace(/^#!.*\n\/\*\*\n/, "")
  )
  process.exit(0)
}
const numberArg = (name, fallback) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 ? Number(argv[i + 1]) : fallback
}
const ROUNDS = numberArg("rounds", 5)
const BIG_ROUNDS = numberArg("big-rounds", 3)
const SERVICES = numberArg("services", 5000)
const IDLE_MS = numberArg("idle", 2000)

const BIN = join(root, "dist", "bin", "mesh-controller.mjs")
// The flags between node and the script in the image's exec-form ENTRYPOINT.
const flagsArg = argv.indexOf("--node-flags")
const BIN_FLAGS = flagsArg >= 0
  ? argv[flagsArg + 1].split(" ").filter((flag) => flag !== "")
  : JSON.parse(/^ENTRYPOINT (\[.*\])$/m.exec(readFileSync(join(root, "Dockerfile"), "utf8"))[1]).slice(1, -1)
const MODULES = join(root, "dist", "src", "main.js")
const work = mkdtempSync(join(tmpdir(), "mesh-startup-"))

// Peak RSS of a short process: a preloaded module writes process.resourceUsage().maxRSS when it
// exits. The baseline gets the same preload, so both pay for it.
const probe = join(work, "rss-probe.mjs")
writeFileSync(
  probe,
  `import { writeSync, openSync } from "node:fs"
process.on("exit", () => { const u = process.resourceUsage(); const fd = openSync(process.env.BENCH_RSS_FILE, "w"); writeSync(fd, u.maxRSS + " " + (u.userCPUTime + u.systemCPUTime) / 1000) })
`
)

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/** Runs a short command to completion: wall time (ms) and peak RSS (MB). */
const runOnce = (args) =>
  new Promise((done, fail) => {
    const rssFile = join(work, `rss-${process.hrtime.bigint()}`)
    const start = process.hrtime.bigint()
    const child = spawn(process.execPath, ["--import", probe, ...args], {
      env: { ...process.env, BENCH_RSS_FILE: rssFile, LOG_FORMAT: "json" },
      stdio: ["ignore", "ignore", "pipe"]
    })
    let stderr = ""
    child.stderr.on("data", (chunk) => (stderr += chunk))
    child.on("exit", (code) => {
      const ms = Number(process.hrtime.bigint() - start) / 1e6
      if (code !== 0) return fail(new Error(`${args.join(" ")} exited ${code}: ${stderr}`))
      const [rss, cpu] = readFileSync(rssFile, "utf8").split(" ").map(Number)
      done({ ms, rssMb: rss / 1024, cpuMs: cpu })
    })
  })

/** CPU time (user + system, every thread) a process has used so far: what load does not change. */
const cpuMsOf = (pid) => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").replace(/^.*\) /, "").split(" ")
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100
}

const vmRssMb = (pid) => {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))
  return match ? Number(match[1]) / 1024 : NaN
}

/**
 * Starts a long-running process, learns its admin URL from stdout (`admin: listening on URL`),
 * polls URL/readyz until 200, waits IDLE_MS, reads its RSS, stops it with SIGTERM.
 */
const startToReady = (args, timeoutMs) =>
  new Promise((done, fail) => {
    const start = process.hrtime.bigint()
    const child = spawn(process.execPath, args, {
      cwd: work,
      env: { ...process.env, LOG_FORMAT: "json" },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let url
    let settled = false
    let log = ""
    const finish = (error, value) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      child.kill("SIGTERM")
      child.once("exit", () => (error ? fail(error) : done(value)))
    }
    const timer = setTimeout(
      () => finish(new Error(`not ready within ${timeoutMs} ms:\n${log.slice(-2000)}`)),
      timeoutMs
    )
    child.on("exit", (code) => {
      if (!settled) {
        settled = true
        clearTimeout(timer)
        fail(new Error(`exited ${code} before ready:\n${log.slice(-2000)}`))
      }
    })
    child.stderr.on("data", (chunk) => (log += chunk))
    createInterface({ input: child.stdout }).on("line", (line) => {
      log += `${line}\n`
      const match = /admin: listening on (http:\/\/[^"\s]+)/.exec(line)
      if (match && url === undefined) {
        url = match[1]
        void poll()
      }
    })
    const poll = async () => {
      while (!settled) {
        const ok = await fetch(`${url}/readyz`).then((r) => r.status === 200, () => false)
        if (ok) {
          const ms = Number(process.hrtime.bigint() - start) / 1e6
          const cpuMs = cpuMsOf(child.pid)
          await new Promise((r) => setTimeout(r, IDLE_MS))
          if (!settled) finish(undefined, { ms, cpuMs, rssMb: vmRssMb(child.pid) })
          return
        }
        await new Promise((r) => setTimeout(r, 5))
      }
    }
  })

// The floor for a daemon: a bare node:http server on port 0 that logs its URL and answers 200.
const floorServer = join(work, "floor-server.mjs")
writeFileSync(
  floorServer,
  `import { createServer } from "node:http"
const server = createServer((_req, res) => res.end("ok")).listen(0, "127.0.0.1", () => {
  console.log(JSON.stringify({ message: "admin: listening on http://127.0.0.1:" + server.address().port }))
})
process.on("SIGTERM", () => server.close(() => process.exit(0)))
`
)

/** examples/mesh.yaml with ports 0 and its state in the work directory. */
const exampleConfig = () => {
  const text = readFileSync(join(root, "examples", "mesh.yaml"), "utf8")
    .replace(/xds: \{ host: 127\.0\.0\.1, port: 15010 \}/, "xds: { host: 127.0.0.1, port: 0 }")
    .replace(/admin: \{ host: 127\.0\.0\.1, port: 15014 \}/, "admin: { host: 127.0.0.1, port: 0 }")
    .replace(/dir: \.mesh-state\/certs/, `dir: ${join(work, "certs")}`)
  if (!text.includes("port: 0 }")) throw new Error("examples/mesh.yaml changed shape: cannot set ports to 0")
  const file = join(work, "mesh.yaml")
  writeFileSync(file, text)
  return file
}

/** N services of one endpoint each on distinct loopback addresses (data only: nothing probes them). */
const bigConfig = (services) => {
  const width = String(services).length
  const lines = [
    `# bench/startup.mjs: ${services} services`,
    "mesh: { name: startup-bench, trustDomain: bench.local }",
    "controller:",
    "  xds: { host: 127.0.0.1, port: 0 }",
    "  admin: { host: 127.0.0.1, port: 0 }",
    `certificates: { dir: ${JSON.stringify(join(work, "big-certs"))} }`,
    "services:"
  ]
  for (let s = 1; s <= services; s++) {
    const ip = `127.${(s >> 16) & 255}.${(s >> 8) & 255}.${s & 255}`
    lines.push(`  - name: svc-${String(s).padStart(width, "0")}`, "    protocol: grpc", "    port: 50051")
    lines.push(`    endpoints: [ { address: ${ip}, port: 8080 } ]`)
  }
  const file = join(work, "big.yaml")
  writeFileSync(file, `${lines.join("\n")}\n`)
  return file
}

const rounds = async (count, run) => {
  const results = []
  for (let i = 0; i < count; i++) results.push(await run())
  return {
    ms: median(results.map((r) => r.ms)),
    cpuMs: median(results.map((r) => r.cpuMs)),
    rssMb: median(results.map((r) => r.rssMb))
  }
}

const fmt = (r, floor) =>
  `${r.ms.toFixed(0).padStart(6)} ms (${(r.ms / floor.ms).toFixed(1).padStart(5)}x)  cpu ${
    r.cpuMs.toFixed(0).padStart(5)
  } ms (${(r.cpuMs / floor.cpuMs).toFixed(1).padStart(5)}x)  ${r.rssMb.toFixed(0).padStart(4)} MB (${
    (r.rssMb / floor.rssMb).toFixed(1).padStart(4)
  }x)`

const load = () => loadavg().map((l) => l.toFixed(2)).join(" ")
console.log(
  `node ${process.version}, load average at start: ${load()}; medians of ${ROUNDS} rounds (big: ${BIG_ROUNDS}); bin runs as node ${
    BIN_FLAGS.join(" ")
  }`
)
try {
  const nodeFloor = await rounds(ROUNDS, () => runOnce(["-e", ""]))
  console.log(`floor   node -e ""                          ${fmt(nodeFloor, nodeFloor)}`)
  for (const [label, entry] of [["bin    ", [...BIN_FLAGS, BIN]], ["modules", [MODULES]]]) {
    for (const flag of ["--version", "--help"]) {
      const r = await rounds(ROUNDS, () => runOnce([...entry, flag]))
      console.log(`${label} ${flag.padEnd(36)}${fmt(r, nodeFloor)}`)
    }
  }
  const serverFloor = await rounds(ROUNDS, () => startToReady([floorServer], 30_000))
  console.log(`floor   bare node:http server → 200 (idle)    ${fmt(serverFloor, serverFloor)}`)
  const example = exampleConfig()
  for (const [label, entry] of [["bin    ", [...BIN_FLAGS, BIN]], ["modules", [MODULES]]]) {
    const r = await rounds(ROUNDS, () => startToReady([...entry, "run", "--config", example], 60_000))
    console.log(`${label} examples/mesh.yaml → /readyz (idle)  ${fmt(r, serverFloor)}`)
  }
  if (!argv.includes("--skip-big")) {
    const big = bigConfig(SERVICES)
    const r = await rounds(BIG_ROUNDS, () => startToReady([...BIN_FLAGS, BIN, "run", "--config", big], 600_000))
    console.log(`bin     ${SERVICES} services → /readyz (idle)   ${fmt(r, serverFloor)}`)
  }
  console.log(`load average at end: ${load()}`)
} finally {
  rmSync(work, { recursive: true, force: true })
}
