/**
 * xDS push benchmark (prints figures; not a test).
 *
 *   npx tsx bench/xds.ts            # short: Delta 100 and 1,000 streams, SotW 100, scaling 1k → 10k
 *   npx tsx bench/xds.ts --full     # adds SotW with 1,000 streams
 *
 * Each scenario runs in its own process (so peak RSS is its own), with the clients in another
 * process (so CPU time is the server's own). N raw ADS streams subscribe to the assignments of a
 * mesh of S services with 3 endpoints each; one endpoint changes; we measure the time until every
 * stream has received the update and the server's CPU time for it. The floor, in the same run: a
 * bare @grpc/grpc-js server writing the same number of bytes to the same number of streams.
 */
import * as grpc from "@grpc/grpc-js"
import { Effect, Either, Layer, Logger, LogLevel } from "effect"
import { fork } from "node:child_process"
import { fileURLToPath } from "node:url"
import { LiveConfig } from "../layers/LiveConfig.js"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { Snapshot } from "../layers/Snapshot.js"
import { Xds } from "../layers/Xds.js"
import type { MeshConfig } from "../schemas/Config.js"
import { decodeConfig } from "../src/ConfigDocument.js"

interface Result {
  readonly latencyMs: number
  readonly cpuMs: number
  readonly bytesPerStream: number
  readonly peakRssMiB: number
  readonly startupMs: number
}

const here = fileURLToPath(import.meta.url)
const clientsScript = fileURLToPath(new URL("./xds-clients.ts", import.meta.url))
const argv = process.argv.slice(2)

const mesh = (services: number, changed: boolean): MeshConfig => {
  const decoded = decodeConfig({
    mesh: { name: "bench" },
    controller: { debounce: { quiet: "1ms", max: "1s" } },
    services: Array.from({ length: services }, (_, i) => ({
      name: `svc-${i}`,
      protocol: "grpc",
      port: 8080,
      endpoints: [0, 1, 2].map((e) => ({
        address: `10.${(i >> 8) & 255}.${i & 255}.${changed && i === 0 && e === 0 ? 200 : e + 1}`
      }))
    }))
  }, "bench")
  if (Either.isLeft(decoded)) throw new Error(decoded.left.message)
  return decoded.right
}

type ClientMessage = { type: "ready" } | { type: "armed" } | { type: "done"; at: number; bytes: number }

/** Starts the client process and resolves each expected message in turn. */
const startClients = (address: string, mode: string, streams: number, services: number) => {
  const child = fork(clientsScript, [address, mode, String(streams), String(services)], {
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "inherit", "inherit", "ipc"]
  })
  const waiting = new Map<string, (m: ClientMessage) => void>()
  child.on("message", (m: ClientMessage) => waiting.get(m.type)?.(m))
  const expect = (type: ClientMessage["type"]) => new Promise<ClientMessage>((resolve) => waiting.set(type, resolve))
  return {
    expect,
    send: (type: string) => child.send({ type }),
    stop: () => {
      child.send({ type: "exit" })
    }
  }
}

const peakRss = () => process.resourceUsage().maxRSS / 1024

/** The controller: LiveConfig (memory) → Discovery → Snapshot → Xds, with the clients measuring it. */
const controllerScenario = (mode: string, streams: number, services: number): Promise<Result> =>
  Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const started = Date.now()
    const inputs = Layer.mergeAll(LiveConfig.layerMemory(mesh(services, false)), Health.layerNoop)
    const snapshot = Snapshot.layer.pipe(Layer.provide(Layer.merge(inputs, Discovery.layerEmbedded.pipe(Layer.provide(inputs)))))
    const context = yield* Layer.build(
      Layer.mergeAll(Xds.layer({ host: "127.0.0.1", port: 0 }).pipe(Layer.provide(Layer.merge(snapshot, inputs))), inputs)
    )
    const startupMs = Date.now() - started
    const xds = yield* Effect.provide(Xds, context)
    const config = yield* Effect.provide(LiveConfig, context)
    const changed = mesh(services, true)
    const clients = startClients(`127.0.0.1:${xds.address.port}`, mode, streams, services)
    yield* Effect.promise(() => clients.expect("ready"))
    const armed = clients.expect("armed")
    clients.send("arm")
    yield* Effect.promise(() => armed)
    const done = clients.expect("done")
    const cpu = process.cpuUsage()
    const t0 = Date.now()
    yield* config.apply(changed, "bench")
    const result = (yield* Effect.promise(() => done)) as Extract<ClientMessage, { type: "done" }>
    const used = process.cpuUsage(cpu)
    clients.stop()
    return {
      latencyMs: result.at - t0,
      cpuMs: (used.user + used.system) / 1000,
      bytesPerStream: result.bytes,
      peakRssMiB: peakRss(),
      startupMs
    }
  })).pipe(Logger.withMinimumLogLevel(LogLevel.Warning)))

/** The floor: a bare grpc-js server writing `bytes` to each of `streams` streams. */
const floorScenario = async (streams: number, bytes: number): Promise<Result> => {
  const calls: Array<grpc.ServerDuplexStream<Buffer, Buffer>> = []
  const server = new grpc.Server()
  const identity = (b: Buffer) => b
  server.addService({
    Stream: { path: "/bench.Floor/Stream", requestStream: true, responseStream: true, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity }
  }, {
    Stream: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      calls.push(call)
      call.write(Buffer.from([1]))
    }
  })
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p)))
  )
  const clients = startClients(`127.0.0.1:${port}`, "floor", streams, 0)
  await clients.expect("ready")
  const armed = clients.expect("armed")
  clients.send("arm")
  await armed
  const done = clients.expect("done")
  const cpu = process.cpuUsage()
  const t0 = Date.now()
  // The same work a push is: one buffer of that size per stream (not shared, as each response has its own nonce).
  for (const call of calls) call.write(Buffer.alloc(bytes, 7))
  const result = (await done) as Extract<ClientMessage, { type: "done" }>
  const used = process.cpuUsage(cpu)
  clients.stop()
  server.forceShutdown()
  return { latencyMs: result.at - t0, cpuMs: (used.user + used.system) / 1000, bytesPerStream: result.bytes, peakRssMiB: peakRss(), startupMs: 0 }
}

/** Runs one scenario in a fresh process and returns its result. */
const inChild = (args: ReadonlyArray<string>) =>
  new Promise<Result>((resolve, reject) => {
    const child = fork(here, ["--scenario", ...args], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] })
    child.on("message", (m: Result) => resolve(m))
    child.on("exit", (code) => (code === 0 ? undefined : reject(new Error(`scenario ${args.join(" ")} exited with ${code}`))))
  })

const fmt = (n: number, digits = 1) => n.toFixed(digits).padStart(9)

const main = async () => {
  const full = argv.includes("--full")
  const cases: Array<[string, number, number]> = [["delta", 100, 1000], ["delta", 1000, 1000], ["sotw", 100, 1000]]
  if (full) cases.push(["sotw", 1000, 1000])
  console.log("one endpoint change; time until every stream has it, server CPU for it, server peak RSS")
  console.log("protocol  streams services |  latency ms   cpu ms  bytes/stream  rss MiB | floor ms  floor cpu | ratio time  ratio cpu")
  for (const [mode, streams, services] of cases) {
    const c = await inChild(["controller", mode, String(streams), String(services)])
    const f = await inChild(["floor", String(streams), String(c.bytesPerStream)])
    console.log(
      `${mode.padEnd(8)} ${String(streams).padStart(8)} ${String(services).padStart(8)} |${fmt(c.latencyMs)}${fmt(c.cpuMs)}${String(c.bytesPerStream).padStart(14)}${fmt(c.peakRssMiB)} |${fmt(f.latencyMs)}${fmt(f.cpuMs, 1)}  |${fmt(c.latencyMs / Math.max(f.latencyMs, 0.1), 2)}${fmt(c.cpuMs / Math.max(f.cpuMs, 0.1), 2)}`
    )
  }
  console.log("\nscaling: cost of one endpoint change, Delta, 10 streams")
  console.log("services |  latency ms   cpu ms  bytes/stream  rss MiB  startup ms")
  for (const services of [1000, 10000]) {
    const c = await inChild(["controller", "delta", "10", String(services)])
    console.log(`${String(services).padStart(8)} |${fmt(c.latencyMs)}${fmt(c.cpuMs)}${String(c.bytesPerStream).padStart(14)}${fmt(c.peakRssMiB)}${fmt(c.startupMs, 0)}`)
  }
}

if (argv[0] === "--scenario") {
  const [, kind, a = "", b = "", c = ""] = argv
  const result = kind === "controller"
    ? await controllerScenario(a, Number(b), Number(c))
    : await floorScenario(Number(a), Number(b))
  // Run directly (e.g. under --cpu-prof) a scenario prints its result instead.
  if (process.send) process.send(result, () => process.exit(0))
  else {
    console.log(JSON.stringify(result))
    process.exit(0)
  }
} else {
  await main()
}
