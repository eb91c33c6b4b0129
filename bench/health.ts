/**
 * Health-checking benchmark: N HTTP endpoints on loopback probed at a fixed interval.
 *
 *   npx tsx bench/health.ts                                  # short: 200 endpoints, 10 s
 *   npx tsx bench/health.ts --endpoints 1000 --seconds 30    # the run
 *   options: --endpoints N --seconds S --interval-ms MS --max-concurrent N
 *   BENCH_PROFILE=/tmp/prof writes a CPU profile per child process
 *   --node-flags "F": Node/V8 flags of both children (default: the Dockerfile ENTRYPOINT's, the
 *   daemon's own; "" for none)
 *
 * Three processes, so each measurement has its process to itself: the targets (N HTTP servers),
 * then the controller (the Health layer), then the floor (a bare loop issuing the same requests at
 * the same rate and the same jitter, with plain node:http and timers). For controller and floor it
 * prints the CPU share (user+system CPU time over wall time), the peak RSS (and the RSS before the
 * first probe, and the peak V8 heap), and the spread between scheduled and actual probe start
 * (p50/p99/max), then the controller/floor ratios. Figures, not a test: nothing fails on timing.
 *
 * Like with like: both children are forked from this file with this process's exec arguments and
 * the daemon's Node flags (the image's ENTRYPOINT: they set the heap's growth, hence its RSS), so
 * both run under the same loader (tsx, when the bench is started with it) and both load the same
 * modules (this file's imports: effect, the Health layer and its dependencies) before they start
 * probing. The RSS ratio therefore compares what probing costs on top of the same process, not
 * the cost of loading the controller's code.
 */
import { Context, Effect, Layer, Logger, LogLevel, Schema, SubscriptionRef } from "effect"
import { type ChildProcess, fork } from "node:child_process"
import * as Http from "node:http"
import type * as Net from "node:net"
import { loadavg } from "node:os"
import { fileURLToPath } from "node:url"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { HealthCheck } from "../schemas/Config.js"
import type { Service } from "../src/MeshState.js"
import { nodeFlags } from "./imageFlags.js"

interface Settings {
  readonly endpoints: number
  readonly seconds: number
  readonly intervalMs: number
  readonly maxConcurrent: number
}

interface Measurement {
  readonly cpuShare: number
  readonly rssPeakMb: number
  readonly rssStartMb: number
  /** RSS with every module loaded, before the first probe. */
  readonly rssBaseMb: number
  readonly heapPeakMb: number
  readonly probes: number
  readonly failures: number
  readonly lagMs: { readonly p50: number; readonly p99: number; readonly max: number }
  /** How long the targets took to answer: with a bound on probes in flight, this caps throughput. */
  readonly latencyP50Ms: number
}

const JITTER = 0.1
const WARMUP_INTERVALS = 2

const argument = (name: string, fallback: number): number => {
  const i = process.argv.indexOf(`--${name}`)
  const value = i >= 0 ? Number(process.argv[i + 1]) : fallback
  return Number.isFinite(value) && value > 0 ? value : fallback
}

const settings: Settings = {
  endpoints: argument("endpoints", 200),
  seconds: argument("seconds", 10),
  intervalMs: argument("interval-ms", 1000),
  maxConcurrent: argument("max-concurrent", 64)
}
const role = process.argv[process.argv.indexOf("--role") + 1]
const ports = (): ReadonlyArray<number> => JSON.parse(process.env.BENCH_PORTS ?? "[]") as ReadonlyArray<number>

const percentile = (sorted: ReadonlyArray<number>, p: number): number =>
  sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!

/** CPU and RSS over the measurement window, sampled from this process. */
const measureWindow = async (
  seconds: number
): Promise<{ cpuShare: number; rssPeakMb: number; rssStartMb: number; heapPeakMb: number }> => {
  const rssStart = process.memoryUsage.rss()
  let rssPeak = rssStart
  let heapPeak = 0
  const sampler = setInterval(() => {
    const usage = process.memoryUsage()
    rssPeak = Math.max(rssPeak, usage.rss)
    heapPeak = Math.max(heapPeak, usage.heapUsed)
  }, 200)
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000))
  const cpu = process.cpuUsage(cpu0)
  const wall = performance.now() - t0
  clearInterval(sampler)
  return {
    cpuShare: (cpu.user + cpu.system) / 1000 / wall,
    rssPeakMb: rssPeak / 2 ** 20,
    rssStartMb: rssStart / 2 ** 20,
    heapPeakMb: heapPeak / 2 ** 20
  }
}

// ---------------------------------------------------------------------------------------------
// roles
// ---------------------------------------------------------------------------------------------

const runTargets = async () => {
  const servers = await Promise.all(
    Array.from({ length: settings.endpoints }, () =>
      new Promise<Http.Server>((resolve) => {
        const server = Http.createServer((_request, response) => {
          response.writeHead(200, { "content-type": "text/plain" })
          response.end("ok\n")
        })
        server.listen(0, "127.0.0.1", () => resolve(server))
      }))
  )
  process.send!({ ports: servers.map((s) => (s.address() as Net.AddressInfo).port) })
  process.on("disconnect", () => process.exit(0))
}

const runController = async (): Promise<Measurement> => {
  const check = Schema.decodeUnknownSync(HealthCheck)({
    type: "http",
    path: "/healthz",
    interval: `${settings.intervalMs}ms`,
    timeout: "1s"
  })
  const service: Service = {
    name: "bench",
    protocol: "http",
    port: 80,
    failMode: "open",
    tags: [],
    metadata: {},
    source: "config",
    healthCheck: check,
    endpoints: ports().map((port) => ({
      address: "127.0.0.1",
      port,
      weight: 1,
      labels: {},
      health: "unknown",
      source: "config"
    }))
  }
  const historySize = Math.ceil((settings.seconds * 1000) / settings.intervalMs) + WARMUP_INTERVALS + 4
  const program = Effect.gen(function*() {
    const rssBaseMb = process.memoryUsage.rss() / 2 ** 20
    const registry = yield* SubscriptionRef.make<ReadonlyArray<Service>>([service])
    const context = yield* Layer.build(
      Health.layer({ historySize, jitter: JITTER, maxConcurrentProbes: settings.maxConcurrent }).pipe(
        Layer.provide(Discovery.layerMemory(registry))
      )
    )
    const health = Context.get(context, Health)
    yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, WARMUP_INTERVALS * settings.intervalMs)))
    const windowStart = Date.now()
    const window = yield* Effect.promise(() => measureWindow(settings.seconds))
    const windowEnd = Date.now()
    const status = yield* health.status
    const results = status.services.flatMap((s) => s.endpoints.flatMap((e) => e.history)).filter((r) => {
      const at = Date.parse(r.at)
      return at >= windowStart && at < windowEnd
    })
    const lags = results.map((r) => r.lagMs).sort((a, b) => a - b)
    return {
      ...window,
      rssBaseMb,
      latencyP50Ms: percentile(results.map((r) => r.latencyMs).sort((a, b) => a - b), 50),
      probes: results.length,
      failures: results.filter((r) => !r.ok).length,
      lagMs: { p50: percentile(lags, 50), p99: percentile(lags, 99), max: lags.at(-1) ?? Number.NaN }
    }
  })
  return Effect.runPromise(program.pipe(Effect.scoped, Logger.withMinimumLogLevel(LogLevel.Error)))
}

/** The floor: per endpoint, a timer loop at the same fixed rate, one plain HTTP request per tick. */
const runFloor = async (): Promise<Measurement> => {
  const lags: Array<number> = []
  const latencies: Array<number> = []
  let probes = 0
  let failures = 0
  let measuring = false
  let stopped = false
  const request = (port: number) =>
    new Promise<boolean>((resolve) => {
      const req = Http.request(
        { host: "127.0.0.1", port, path: "/healthz", agent: false, headers: { connection: "close" } },
        (response) => {
          response.resume()
          response.once("end", () => resolve(response.statusCode === 200))
        }
      )
      req.setTimeout(1000, () => req.destroy())
      req.once("error", () => resolve(false))
      req.end()
    })
  const loop = (port: number) => {
    let due = Date.now() + Math.random() * settings.intervalMs
    const tick = () => {
      if (stopped) return
      const at = Date.now()
      const started = performance.now()
      void request(port).then((ok) => {
        if (measuring) {
          latencies.push(performance.now() - started)
          probes++
          if (!ok) failures++
          lags.push(Math.max(0, at - due))
        }
        due = Math.max(due + settings.intervalMs * (1 - JITTER + 2 * JITTER * Math.random()), Date.now())
        setTimeout(tick, Math.max(0, due - Date.now()))
      })
    }
    setTimeout(tick, Math.max(0, due - Date.now()))
  }
  const rssBaseMb = process.memoryUsage.rss() / 2 ** 20
  ports().forEach(loop)
  await new Promise((resolve) => setTimeout(resolve, WARMUP_INTERVALS * settings.intervalMs))
  measuring = true
  const window = await measureWindow(settings.seconds)
  measuring = false
  stopped = true
  lags.sort((a, b) => a - b)
  return {
    ...window,
    rssBaseMb,
    latencyP50Ms: percentile(latencies.sort((a, b) => a - b), 50),
    probes,
    failures,
    lagMs: { p50: percentile(lags, 50), p99: percentile(lags, 99), max: lags.at(-1) ?? Number.NaN }
  }
}

// ---------------------------------------------------------------------------------------------
// the parent
// ---------------------------------------------------------------------------------------------

const self = fileURLToPath(import.meta.url)
const childFlags = nodeFlags(fileURLToPath(new URL("..", import.meta.url)), process.argv)
const child = (childRole: string, env: Record<string, string> = {}): ChildProcess =>
  fork(self, [...process.argv.slice(2), "--role", childRole], {
    env: { ...process.env, ...env },
    // BENCH_PROFILE=dir writes a V8 CPU profile of each child there (open it in Chrome DevTools).
    // Both children run with the flags the image runs the daemon with: same heap settings for both.
    execArgv: [
      ...process.execArgv,
      ...childFlags,
      ...(process.env.BENCH_PROFILE ? ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_PROFILE}`] : [])
    ]
  })

const measureIn = (childRole: string, portList: ReadonlyArray<number>) =>
  new Promise<Measurement>((resolve, reject) => {
    const proc = child(childRole, { BENCH_PORTS: JSON.stringify(portList) })
    proc.once("message", (message) => resolve(message as Measurement))
    proc.once("exit", (code) => (code === 0 ? undefined : reject(new Error(`${childRole} exited with ${code}`))))
  })

const fmt = (n: number, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : "n/a")

const main = async () => {
  console.log(
    `health bench: ${settings.endpoints} HTTP endpoints on loopback, every ${settings.intervalMs} ms (±${
      JITTER * 100
    }%), ` +
      `${settings.seconds} s measured after ${WARMUP_INTERVALS} intervals of warm-up; controller bound ${settings.maxConcurrent} in flight`
  )
  const targets = child("targets")
  const portList = await new Promise<ReadonlyArray<number>>((resolve) =>
    targets.once("message", (m) => resolve((m as { ports: ReadonlyArray<number> }).ports))
  )
  try {
    const controller = await measureIn("controller", portList)
    const floor = await measureIn("floor", portList)
    const expected = Math.round((settings.endpoints * settings.seconds * 1000) / settings.intervalMs)
    const row = (name: string, m: Measurement) =>
      `${name.padEnd(11)} cpu ${fmt(m.cpuShare * 100).padStart(6)} %   rss peak ${
        fmt(m.rssPeakMb).padStart(6)
      } MB (before probing ${fmt(m.rssBaseMb)}, window start ${fmt(m.rssStartMb)}; heap peak ${fmt(m.heapPeakMb)})` +
      `   probes ${String(m.probes).padStart(6)}/${expected} (${m.failures} failed)` +
      `   lag p50 ${fmt(m.lagMs.p50, 0)} ms p99 ${fmt(m.lagMs.p99, 0)} ms max ${fmt(m.lagMs.max, 0)} ms` +
      `   answer p50 ${fmt(m.latencyP50Ms, 0)} ms`
    console.log(row("controller", controller))
    console.log(row("floor", floor))
    if (controller.latencyP50Ms * settings.endpoints > settings.maxConcurrent * settings.intervalMs) {
      console.log(
        `note: at ${
          fmt(controller.latencyP50Ms, 0)
        } ms per answer, ${settings.endpoints} endpoints per ${settings.intervalMs} ms need more than ` +
          `--max-concurrent ${settings.maxConcurrent} probes in flight: the controller is held by its bound (the floor has none)`
      )
    }
    console.log(
      `ratio       cpu ${fmt(controller.cpuShare / floor.cpuShare, 2)}x   rss ${
        fmt(controller.rssPeakMb / floor.rssPeakMb, 2)
      }x (above the loaded process: controller +${fmt(controller.rssPeakMb - controller.rssBaseMb)} MB, floor +${
        fmt(floor.rssPeakMb - floor.rssBaseMb)
      } MB)` +
        `   lag p99 +${fmt(controller.lagMs.p99 - floor.lagMs.p99, 0)} ms`
    )
    console.log(
      `both children: node ${process.version} ${
        [...childFlags, ...process.execArgv].join(" ") || "(no exec arguments)"
      }; load average ${loadavg().map((l) => l.toFixed(2)).join(" ")}`
    )
  } finally {
    targets.disconnect()
  }
}

const finish = (result: Promise<Measurement>) =>
  result.then(
    (m) => process.send!(m, () => process.exit(0)),
    (error) => {
      console.error(error)
      process.exit(1)
    }
  )

if (role === "targets") void runTargets()
else if (role === "controller") finish(runController())
else if (role === "floor") finish(runFloor())
else {
  main().catch((error) => {
    console.error(error)
    process.exitCode = 1
  })
}
