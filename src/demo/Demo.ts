/**
 * `mesh-controller demo`: a small mesh on loopback that does something to watch. In this process:
 * the controller (the daemon's own layers, on the demo config), the `greeter` instances (v1 and v2,
 * real grpc-js servers probed by the controller's gRPC health checks) and a load loop; in a child
 * process: the `web` front, a proxyless xDS client of greeter. One greeter instance is stopped and
 * started on a timer, so its health flips and calls move away and come back. Everything opened is
 * closed by the scope's finalizers, the child process included, when Ctrl-C interrupts the program.
 */
import type { FileSystem } from "@effect/platform"
import { Console, Data, Duration, Effect, Layer, Schedule, type Scope } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { loadFile } from "../../layers/LiveConfig.js"
import { counter } from "../../layers/Metrics.js"
import type { MeshConfig } from "../../schemas/Config.js"
import { makeProgram } from "../program.js"
import { greeter, type Greeting } from "./Greeter.js"

/** The demo's calls, as /metrics shows them: the split between versions, and the calls no instance answered. */
export const demoCalls = counter(
  "mesh_demo_calls_total",
  "Calls of the demo's load loop (web → xds:///greeter) by the greeter version and instance that answered; " +
    "outcome=error when none did.",
  ["outcome", "version", "instance"]
)

export class DemoError extends Data.TaggedError("DemoError")<{ readonly reason: string }> {
  override get message() {
    return `demo: ${this.reason}`
  }
}

export interface DemoOptions {
  readonly configPath: string
  readonly version: string
  /** How to start this executable again for the `web` child (`demo web --port N`). */
  readonly self: { readonly command: string; readonly args: ReadonlyArray<string> }
  /** How long the flapping greeter instance serves, then stays stopped. */
  readonly flap?: { readonly up: Duration.Duration; readonly down: Duration.Duration }
}

interface Ports {
  readonly v1: ReadonlyArray<number>
  readonly v2: ReadonlyArray<number>
  readonly web: number
}

const endpointPorts = (config: MeshConfig, name: string): Effect.Effect<ReadonlyArray<number>, DemoError> => {
  const service = config.services.find((s) => s.name === name)
  if (service === undefined || service.endpoints.length === 0) {
    return Effect.fail(new DemoError({ reason: `the config needs a service "${name}" with endpoints` }))
  }
  const remote = service.endpoints.find((e) => e.address !== "127.0.0.1")
  return remote === undefined
    ? Effect.succeed(service.endpoints.map((e) => e.port ?? service.port))
    : Effect.fail(new DemoError({ reason: `${name}: the demo runs its services on 127.0.0.1 only` }))
}

const portsOf = (config: MeshConfig): Effect.Effect<Ports, DemoError> =>
  Effect.gen(function*() {
    const v1 = yield* endpointPorts(config, "greeter-v1")
    const v2 = yield* endpointPorts(config, "greeter-v2")
    const [web] = yield* endpointPorts(config, "web")
    if (v1.length < 2) {
      return yield* new DemoError({ reason: "greeter-v1 needs two endpoints (one of them is stopped on a timer)" })
    }
    return { v1, v2, web: web! }
  })

/** The gRPC xDS bootstrap the web front reads from $GRPC_XDS_BOOTSTRAP: plaintext xDS to the controller. */
const bootstrapFile = (xds: string): Effect.Effect<string, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "mesh-demo-"))
      const file = NodePath.join(dir, "grpc-bootstrap.json")
      const bootstrap = {
        xds_servers: [{ server_uri: xds, channel_creds: [{ type: "insecure" }], server_features: ["xds_v3"] }],
        node: { id: "web~demo", cluster: "web", locality: {} }
      }
      NodeFs.writeFileSync(file, JSON.stringify(bootstrap, null, 2))
      return file
    }),
    (file) => Effect.sync(() => NodeFs.rmSync(NodePath.dirname(file), { recursive: true, force: true }))
  )

const exitOf = (child: ChildProcess) =>
  Effect.async<void>((resume) => {
    if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
    child.once("exit", () => resume(Effect.void))
  })

/**
 * The web front as a child process. Its finalizer asks it to stop (SIGTERM runs its finalizers),
 * and kills it if it has not exited within five seconds: no process outlives the demo.
 */
const webProcess = (options: DemoOptions, port: number, bootstrap: string) =>
  Effect.acquireRelease(
    Effect.sync(() =>
      spawn(options.self.command, [...options.self.args, "demo", "web", "--port", String(port)], {
        env: { ...process.env, GRPC_XDS_BOOTSTRAP: bootstrap },
        // The IPC channel closes when this process ends however it ends (even SIGKILL): the web
        // front stops then too (see commands/demo.ts), so a killed demo leaves no orphan behind.
        stdio: ["ignore", "inherit", "inherit", "ipc"]
      })
    ),
    (child) =>
      Effect.gen(function*() {
        if (child.exitCode !== null || child.signalCode !== null) return
        child.kill("SIGTERM")
        const exited = yield* exitOf(child).pipe(Effect.timeoutOption("5 seconds"))
        if (exited._tag === "None") {
          child.kill("SIGKILL")
          yield* exitOf(child).pipe(Effect.timeoutOption("5 seconds"))
        }
      })
  )

/** Serves for `up`, stops for `down`, forever: the instance whose health flips. */
const flapping = (version: string, port: number, up: Duration.Duration, down: Duration.Duration) =>
  Effect.gen(function*() {
    const where = `greeter ${version} at 127.0.0.1:${port}`
    yield* Effect.scoped(Effect.zipRight(greeter(version, port), Effect.sleep(up))).pipe(
      Effect.catchAll((error) => Console.log(`demo: ${error.message}`))
    )
    yield* Console.log(`demo: stopped ${where} for ${Duration.format(down)}: watch its health flip`)
    yield* Effect.sleep(down)
    yield* Console.log(`demo: started ${where} again`)
  }).pipe(Effect.forever)

interface Window {
  readonly counts: Map<string, number>
  errors: number
  lastError: string
}

/** One call through the web front; counted in /metrics and in the window the demo prints. */
const callOnce = (webPort: number, window: Window) =>
  Effect.tryPromise(async () => {
    const response = await fetch(`http://127.0.0.1:${webPort}/hello`, { signal: AbortSignal.timeout(10_000) })
    const text = await response.text()
    if (response.status !== 200) throw new Error(`web answered ${response.status}: ${text}`)
    return JSON.parse(text) as Greeting
  }).pipe(
    Effect.match({
      onFailure: (error) => {
        demoCalls.inc({ outcome: "error", version: "", instance: "" })
        window.errors++
        window.lastError = String((error.error as Error | undefined)?.message ?? error)
      },
      onSuccess: (greeting) => {
        demoCalls.inc({ outcome: "ok", version: greeting.version, instance: greeting.instance })
        const key = `${greeting.version} ${greeting.instance}`
        window.counts.set(key, (window.counts.get(key) ?? 0) + 1)
      }
    })
  )

/** "v1 80% (127.0.0.1:50071 20, 127.0.0.1:50072 20)  v2 20% (…)": the split of one window. */
export const describeWindow = (counts: ReadonlyMap<string, number>, errors: number): string => {
  const byVersion = new Map<string, Array<[string, number]>>()
  let total = 0
  for (const [key, n] of [...counts].sort(([a], [b]) => a.localeCompare(b))) {
    const [version, instance] = key.split(" ") as [string, string]
    byVersion.set(version, [...(byVersion.get(version) ?? []), [instance, n]])
    total += n
  }
  const parts = [...byVersion].map(([version, instances]) => {
    const n = instances.reduce((sum, [, c]) => sum + c, 0)
    const share = total === 0 ? 0 : Math.round((100 * n) / total)
    return `${version} ${share}% (${instances.map(([i, c]) => `${i} ${c}`).join(", ")})`
  })
  return `${parts.length === 0 ? "no answers" : parts.join("  ")}${errors > 0 ? `  errors ${errors}` : ""}`
}

/** Until the web front answers /healthz (its process takes a moment to start), at most 60 seconds. */
const webReady = (webPort: number, child: ChildProcess) =>
  Effect.tryPromise(async () => {
    if (child.exitCode !== null) throw new Error(`the web front exited with code ${child.exitCode}`)
    const response = await fetch(`http://127.0.0.1:${webPort}/healthz`, { signal: AbortSignal.timeout(2_000) })
    if (response.status !== 200) throw new Error(`web /healthz answered ${response.status}`)
  }).pipe(
    Effect.retry(
      Schedule.spaced("200 millis").pipe(
        Schedule.upTo("60 seconds"),
        Schedule.whileInput(() => child.exitCode === null)
      )
    ),
    Effect.mapError(() =>
      new DemoError({
        reason: child.exitCode === null
          ? `the web front did not answer on 127.0.0.1:${webPort}`
          : `the web front exited (code ${child.exitCode}); its error is above`
      })
    )
  )

const loadLoop = (webPort: number) =>
  Effect.gen(function*() {
    const window: Window = { counts: new Map(), errors: 0, lastError: "" }
    const report = Effect.suspend(() => {
      const line = `demo: calls in the last 5s: ${describeWindow(window.counts, window.errors)}` +
        (window.errors > 0 ? ` (last error: ${window.lastError})` : "")
      window.counts.clear()
      window.errors = 0
      return Console.log(line)
    })
    yield* report.pipe(Effect.delay("5 seconds"), Effect.forever, Effect.forkScoped)
    yield* callOnce(webPort, window).pipe(Effect.repeat(Schedule.spaced("100 millis")), Effect.forkScoped)
  })

const banner = (config: MeshConfig, ports: Ports, configPath: string, flapPort: number) => {
  const admin = `http://${config.controller.admin.host}:${config.controller.admin.port}`
  return [
    "",
    "mesh-controller demo is running on 127.0.0.1:",
    `  status page  ${admin}/ui`,
    `  metrics      ${admin}/metrics  (mesh_demo_calls_total: the calls by greeter version)`,
    `  web front    http://127.0.0.1:${ports.web}/hello  (calls xds:///greeter as a proxyless gRPC client)`,
    `  greeter v1   ${ports.v1.map((p) => `127.0.0.1:${p}`).join(", ")}; v2 ${
      ports.v2.map((p) => `127.0.0.1:${p}`).join(", ")
    }`,
    "Try:",
    `  edit ${configPath}: change the weights of greeter-split (say 50 and 50) and save;`,
    "  the split printed below (and on the status page) moves within seconds.",
    `  greeter v1 at 127.0.0.1:${flapPort} is stopped and started on a timer: watch its health flip`,
    "  on the status page, and the calls move to the other v1 instance and come back.",
    "Ctrl-C stops everything.",
    ""
  ].join("\n")
}

/** The demo, until interrupted (Ctrl-C): everything it started is stopped by its scope. */
export const runDemo = (
  options: DemoOptions
): Effect.Effect<never, unknown, FileSystem.FileSystem | Scope.Scope> =>
  Effect.gen(function*() {
    const { config } = yield* loadFile(options.configPath)
    const ports = yield* portsOf(config)
    const flap = options.flap ?? { up: Duration.seconds(20), down: Duration.seconds(15) }
    const flapPort = ports.v1[ports.v1.length - 1]!
    // The greeters first, so the controller's first health checks find them.
    for (const port of ports.v1.slice(0, -1)) yield* greeter("v1", port)
    for (const port of ports.v2) yield* greeter("v2", port)
    yield* Effect.forkScoped(flapping("v1", flapPort, flap.up, flap.down))
    yield* Layer.buildWithScope(
      makeProgram({ configPath: options.configPath, version: options.version }),
      yield* Effect.scope
    )
    const xds = `${
      config.controller.xds.host === "0.0.0.0" ? "127.0.0.1" : config.controller.xds.host
    }:${config.controller.xds.port}`
    const bootstrap = yield* bootstrapFile(xds)
    const child = yield* webProcess(options, ports.web, bootstrap)
    yield* webReady(ports.web, child)
    yield* Console.log(`demo: web front started (pid ${child.pid})`)
    yield* loadLoop(ports.web)
    yield* Console.log(banner(config, ports, options.configPath, flapPort))
    return yield* Effect.never
  })
