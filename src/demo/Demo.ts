/**
 * `mesh-controller demo`: a small mesh on loopback that does something to watch. In this process:
 * the controller (the daemon's own layers, on the demo config), one agent per service instance
 * (layers/Agent.ts: each trades a join token for its certificate at the controller's signing
 * service and writes the files and gRPC xDS bootstrap its app reads) and a load loop. As processes
 * of their own, as apps on mesh hosts: the `greeter` instances (v1 and v2, proxyless xDS servers
 * that enforce the controller's mTLS and RBAC), the `web` front (a proxyless xDS client of
 * greeter) and an `intruder` (the same front with another identity, which an authorization rule
 * denies). One greeter instance is stopped and started on a timer, so its health flips and calls
 * move away and come back. Everything opened is closed by the scope's finalizers, the child
 * processes included, when Ctrl-C interrupts the program.
 */
import type { FileSystem } from "@effect/platform"
import { Console, Context, Data, Deferred, Duration, Effect, Layer, Schedule, type Scope } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeNet from "node:net"
import * as NodePath from "node:path"
import { Agent } from "../../layers/Agent.js"
import { loadFile } from "../../layers/LiveConfig.js"
import { counter } from "../../layers/Metrics.js"
import type { MeshConfig } from "../../schemas/Config.js"
import { issueJoinToken } from "../commands/token.js"
import { makeProgram } from "../program.js"
import type { Greeting } from "./Greeter.js"

/** The demo's calls, as /metrics shows them: the split between versions, the denials, the calls no instance answered. */
export const demoCalls = counter(
  "mesh_demo_calls_total",
  "Calls of the demo's load loop (web and intruder → xds:///greeter) by caller, outcome (ok; denied: " +
    "PERMISSION_DENIED by the greeter's RBAC; error: no answer), the greeter version and instance that " +
    "answered, and the caller identity (SPIFFE ID) the greeter saw in the mTLS handshake.",
  ["caller", "outcome", "version", "instance", "peer"]
)

export class DemoError extends Data.TaggedError("DemoError")<{ readonly reason: string }> {
  override get message() {
    return `demo: ${this.reason}`
  }
}

export interface DemoOptions {
  readonly configPath: string
  readonly version: string
  /** How to start this executable again for the services (`demo web …`, `demo greeter …`). */
  readonly self: { readonly command: string; readonly args: ReadonlyArray<string> }
  /** How long the flapping greeter instance serves, then stays stopped. */
  readonly flap?: { readonly up: Duration.Duration; readonly down: Duration.Duration }
}

interface Ports {
  readonly v1: ReadonlyArray<number>
  readonly v2: ReadonlyArray<number>
  readonly web: number
  readonly intruder: number
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
    const [intruder] = yield* endpointPorts(config, "intruder")
    if (v1.length < 2) {
      return yield* new DemoError({ reason: "greeter-v1 needs two endpoints (one of them is stopped on a timer)" })
    }
    return { v1, v2, web: web!, intruder: intruder! }
  })

const dialable = (host: string) => (host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host)

/**
 * Where the demo's agents keep their files: `<certificates.dir>/demo-agents`, git-ignored state
 * like the CA beside it. Fresh each run (the tokens are single-use) and removed at exit.
 */
const workDir = (config: MeshConfig): Effect.Effect<string, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const dir = NodePath.resolve(config.certificates.dir, "demo-agents")
      NodeFs.rmSync(dir, { recursive: true, force: true })
      NodeFs.mkdirSync(dir, { recursive: true, mode: 0o700 })
      return dir
    }),
    (dir) => Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
  )

/**
 * An instance's identity, as a new host gets it: a single-use join token for `service~instance`
 * from the controller's token store, then the agent (in this process) joining with it at the
 * signing service. The agent writes cert.pem, key.pem, ca.pem and the gRPC xDS bootstrap, and
 * renews them for as long as the demo runs. Returns the bootstrap's path and the identity.
 */
const identity = (
  config: MeshConfig,
  signing: { readonly host: string; readonly port: number },
  work: string,
  service: string,
  instance: string
) =>
  Effect.gen(function*() {
    const dir = NodePath.join(work, `${service}~${instance}`)
    const tokenFile = NodePath.join(work, `${service}~${instance}.token`)
    const token = yield* issueJoinToken(config, { service, instance, ttlMillis: 10 * 60_000, uses: 1 })
    yield* Effect.sync(() => NodeFs.writeFileSync(tokenFile, token + "\n", { mode: 0o600 }))
    const bootstrapFile = NodePath.join(dir, "grpc-bootstrap.json")
    const context = yield* Layer.buildWithScope(
      Agent.layer({
        controller: `${dialable(signing.host)}:${signing.port}`,
        tokenFile,
        dir,
        service,
        instance,
        admin: { host: "127.0.0.1", port: 0 },
        xdsServer: `${dialable(config.controller.xds.host)}:${config.controller.xds.port}`,
        xdsChannel: "insecure",
        bootstrapFile,
        renewAt: 0.5,
        retryInitial: Duration.millis(200),
        retryMax: Duration.seconds(5),
        bundleInterval: Duration.seconds(30)
      }),
      yield* Effect.scope
    )
    const status = yield* Context.get(context, Agent).status
    return { bootstrapFile, spiffeId: status.spiffeId ?? "" }
  })

const exitOf = (child: ChildProcess) =>
  Effect.async<void>((resume) => {
    if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
    child.once("exit", () => resume(Effect.void))
  })

const exited = (child: ChildProcess) => child.exitCode !== null || child.signalCode !== null

/**
 * One of the demo's services as a child process (`demo web …`, `demo greeter …`) with its agent's
 * bootstrap. Its finalizer asks it to stop (SIGTERM runs its finalizers), and kills it if it has
 * not exited within five seconds: no process outlives the demo. A child that ends by itself ends
 * the demo (`fatal`), with its own error above.
 */
const serviceProcess = (
  options: DemoOptions,
  what: string,
  args: ReadonlyArray<string>,
  bootstrap: string,
  fatal: Deferred.Deferred<never, DemoError>
) =>
  Effect.gen(function*() {
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        spawn(options.self.command, [...options.self.args, "demo", ...args], {
          // RBAC is off in @grpc/grpc-js-xds 1.14 unless this is set: servers would reject the Listener.
          env: { ...process.env, GRPC_XDS_BOOTSTRAP: bootstrap, GRPC_XDS_EXPERIMENTAL_RBAC: "true" },
          // The IPC channel closes when this process ends however it ends (even SIGKILL): the child
          // stops then too (see commands/demo.ts), so a killed demo leaves no orphan behind.
          stdio: ["ignore", "inherit", "inherit", "ipc"]
        })
      ),
      (child) =>
        Effect.gen(function*() {
          if (exited(child)) return
          child.kill("SIGTERM")
          const done = yield* exitOf(child).pipe(Effect.timeoutOption("5 seconds"))
          if (done._tag === "None") {
            child.kill("SIGKILL")
            yield* exitOf(child).pipe(Effect.timeoutOption("5 seconds"))
          }
        })
    )
    // Forked after the child, so it is interrupted before the finalizer stops the child on purpose.
    yield* exitOf(child).pipe(
      Effect.zipRight(
        Effect.suspend(() =>
          Deferred.fail(
            fatal,
            new DemoError({ reason: `${what} exited (${child.exitCode ?? child.signalCode}); its error is above` })
          )
        )
      ),
      Effect.forkScoped
    )
    return child
  })

/**
 * Until 127.0.0.1:`port` accepts connections (an XdsServer opens it once its Listener arrived), at
 * most two minutes: a process start takes tens of seconds on a loaded small host.
 */
const accepting = (port: number, what: string) =>
  Effect.async<void, Error>((resume) => {
    const socket = NodeNet.connect(port, "127.0.0.1")
    socket.once("connect", () => {
      socket.destroy()
      resume(Effect.void)
    })
    socket.once("error", (error) => resume(Effect.fail(error)))
  }).pipe(
    Effect.retry(Schedule.spaced("200 millis").pipe(Schedule.upTo("120 seconds"))),
    Effect.mapError(() => new DemoError({ reason: `${what} did not start serving on 127.0.0.1:${port}` }))
  )

/** Serves for `up` (counted from when it accepts connections), stops for `down`, forever: the instance whose health flips. */
const flapping = (
  start: Effect.Effect<unknown, DemoError, Scope.Scope>,
  where: string,
  up: Duration.Duration,
  down: Duration.Duration
) =>
  Effect.gen(function*() {
    yield* Effect.scoped(Effect.zipRight(start, Effect.sleep(up)))
    yield* Console.log(`demo: stopped ${where} for ${Duration.format(down)}: watch its health flip`)
    yield* Effect.sleep(down)
    yield* Console.log(`demo: started ${where} again`)
  }).pipe(Effect.forever)

interface Window {
  readonly counts: Map<string, number>
  denied: number
  errors: number
  lastError: string
}

const newWindow = (): Window => ({ counts: new Map(), denied: 0, errors: 0, lastError: "" })

/** grpc.status.PERMISSION_DENIED, as the front reports the gRPC code of a failed call. */
const PERMISSION_DENIED = 7

/** One call through a front (web or intruder); counted in /metrics and in the window the demo prints. */
const callOnce = (caller: string, port: number, window: Window) =>
  Effect.tryPromise(async () => {
    const response = await fetch(`http://127.0.0.1:${port}/hello`, { signal: AbortSignal.timeout(10_000) })
    const text = await response.text()
    if (response.status === 200) return { _tag: "ok", greeting: JSON.parse(text) as Greeting } as const
    const failure = (() => {
      try {
        return JSON.parse(text) as { error?: string; code?: number }
      } catch {
        return {}
      }
    })()
    if (failure.code === PERMISSION_DENIED) return { _tag: "denied", details: failure.error ?? "" } as const
    throw new Error(`${caller} answered ${response.status}: ${text}`)
  }).pipe(
    Effect.match({
      onFailure: (error) => {
        demoCalls.inc({ caller, outcome: "error", version: "", instance: "", peer: "" })
        window.errors++
        window.lastError = String((error.error as Error | undefined)?.message ?? error)
      },
      onSuccess: (result) => {
        if (result._tag === "denied") {
          demoCalls.inc({ caller, outcome: "denied", version: "", instance: "", peer: "" })
          window.denied++
          window.lastError = `PERMISSION_DENIED: ${result.details}`
          return
        }
        const { greeting } = result
        demoCalls.inc({
          caller,
          outcome: "ok",
          version: greeting.version,
          instance: greeting.instance,
          peer: greeting.peer
        })
        const key = `${greeting.version} ${greeting.instance}`
        window.counts.set(key, (window.counts.get(key) ?? 0) + 1)
      }
    })
  )

/** "v1 80% (127.0.0.1:50071 20, 127.0.0.1:50072 20)  v2 20% (…)  denied 3": the calls of one window. */
export const describeWindow = (
  counts: ReadonlyMap<string, number>,
  errors: number,
  denied = 0
): string => {
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
  const answers = parts.length === 0 ? (denied > 0 ? "" : "no answers") : parts.join("  ")
  return [answers, denied > 0 ? `denied ${denied}` : "", errors > 0 ? `errors ${errors}` : ""]
    .filter((s) => s !== "")
    .join("  ")
}

/** Until a front answers /healthz (its process takes a moment to start), at most two minutes. */
const frontReady = (what: string, port: number, child: ChildProcess) =>
  Effect.tryPromise(async () => {
    if (exited(child)) throw new Error(`${what} exited with code ${child.exitCode}`)
    const response = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2_000) })
    if (response.status !== 200) throw new Error(`${what} /healthz answered ${response.status}`)
  }).pipe(
    Effect.retry(
      Schedule.spaced("200 millis").pipe(Schedule.upTo("120 seconds"), Schedule.whileInput(() => !exited(child)))
    ),
    Effect.mapError(() =>
      new DemoError({
        reason: exited(child)
          ? `${what} exited (code ${child.exitCode}); its error is above`
          : `${what} did not answer on 127.0.0.1:${port}`
      })
    )
  )

/** The web front is called ten times a second, the intruder twice; a line every 5 s says what happened. */
const loadLoop = (ports: Ports) =>
  Effect.gen(function*() {
    const web = newWindow()
    const intruder = newWindow()
    const describe = (window: Window) =>
      describeWindow(window.counts, window.errors, window.denied) +
      (window.errors + window.denied > 0 ? ` (last: ${window.lastError})` : "")
    const report = Effect.suspend(() => {
      const line = `demo: calls in the last 5s: web ${describe(web)}\n` +
        `demo:                          intruder ${describe(intruder)}`
      for (const window of [web, intruder]) {
        window.counts.clear()
        window.errors = 0
        window.denied = 0
      }
      return Console.log(line)
    })
    yield* report.pipe(Effect.delay("5 seconds"), Effect.forever, Effect.forkScoped)
    yield* callOnce("web", ports.web, web).pipe(Effect.repeat(Schedule.spaced("100 millis")), Effect.forkScoped)
    yield* callOnce("intruder", ports.intruder, intruder).pipe(
      Effect.repeat(Schedule.spaced("500 millis")),
      Effect.forkScoped
    )
  })

const banner = (config: MeshConfig, ports: Ports, configPath: string, flapPort: number) => {
  const admin = `http://${config.controller.admin.host}:${config.controller.admin.port}`
  return [
    "",
    "mesh-controller demo is running on 127.0.0.1:",
    `  status page  ${admin}/ui`,
    `  metrics      ${admin}/metrics  (mesh_demo_calls_total: the calls by caller, outcome, greeter version, peer identity)`,
    `  web front    http://127.0.0.1:${ports.web}/hello  (calls xds:///greeter as a proxyless gRPC client, over mTLS)`,
    `  intruder     http://127.0.0.1:${ports.intruder}/hello  (the same, as service "intruder": denied by the greeters' RBAC)`,
    `  greeter v1   ${ports.v1.map((p) => `127.0.0.1:${p}`).join(", ")}; v2 ${
      ports.v2.map((p) => `127.0.0.1:${p}`).join(", ")
    }`,
    `Each service got its certificate from an agent with a join token (mtls: ${config.policies.security.mtls}).`,
    "Try:",
    `  edit ${configPath}: change the weights of greeter-split (say 50 and 50) and save;`,
    "  the split printed below (and on the status page) moves within seconds.",
    "  delete (or comment out) the two no-intruder rules and save: the intruder's calls are answered;",
    "  put them back and they are denied again.",
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
    const signing = config.controller.signing
    if (signing === undefined) {
      return yield* new DemoError({
        reason: `${options.configPath}: controller.signing is needed: the demo's agents get their certificates there`
      })
    }
    const flapPort = ports.v1[ports.v1.length - 1]!
    const fatal = yield* Deferred.make<never, DemoError>()
    // A service process that ends by itself ends the demo, whether it is starting or running.
    return yield* Effect.raceFirst(start(options, config, signing, ports, flapPort, fatal), Deferred.await(fatal))
  })

const start = (
  options: DemoOptions,
  config: MeshConfig,
  signing: { readonly host: string; readonly port: number },
  ports: Ports,
  flapPort: number,
  fatal: Deferred.Deferred<never, DemoError>
) =>
  Effect.gen(function*() {
    const flap = options.flap ?? { up: Duration.seconds(20), down: Duration.seconds(15) }
    yield* Layer.buildWithScope(
      makeProgram({ configPath: options.configPath, version: options.version }),
      yield* Effect.scope
    )
    const work = yield* workDir(config)
    const greeters = [
      ...ports.v1.map((port) => ({ service: "greeter-v1", version: "v1", port })),
      ...ports.v2.map((port) => ({ service: "greeter-v2", version: "v2", port }))
    ]
    // One agent per instance, as one per host: node id and certificate are the instance's own.
    const instances = [...greeters, { service: "web", port: ports.web }, { service: "intruder", port: ports.intruder }]
    const identities = new Map(
      yield* Effect.forEach(
        instances,
        ({ port, service }) =>
          Effect.map(identity(config, signing, work, service, `demo-${port}`), (id) => [port, id] as const),
        { concurrency: "unbounded" }
      )
    )
    yield* Console.log(
      `demo: identities from the agents: ${[...new Set([...identities.values()].map((i) => i.spiffeId))].join(", ")}`
    )
    const bootstrapOf = (port: number) => identities.get(port)!.bootstrapFile

    const greeterProcess = (g: (typeof greeters)[number]) =>
      serviceProcess(
        options,
        `greeter ${g.version} at 127.0.0.1:${g.port}`,
        ["greeter", g.version, "--port", String(g.port)],
        bootstrapOf(g.port),
        fatal
      )
    for (const g of greeters.filter((g) => g.port !== flapPort)) yield* greeterProcess(g)
    const flapper = greeters.find((g) => g.port === flapPort)!
    yield* Effect.forkScoped(
      flapping(
        Effect.zipRight(greeterProcess(flapper), accepting(flapPort, "greeter v1")),
        `greeter v1 at 127.0.0.1:${flapPort}`,
        flap.up,
        flap.down
      ).pipe(Effect.catchAll((error) => Deferred.fail(fatal, error)))
    )
    const fronts = [
      { what: "the web front", service: "web", port: ports.web },
      { what: "the intruder", service: "intruder", port: ports.intruder }
    ]
    yield* Effect.forEach(fronts, (front) =>
      Effect.flatMap(
        serviceProcess(options, front.what, ["web", "--port", String(front.port)], bootstrapOf(front.port), fatal),
        (child) => frontReady(front.what, front.port, child)
      ), { concurrency: "unbounded" })
    // The first calls find the greeters serving: each opens its port once its Listener arrived.
    yield* Effect.forEach(greeters, (g) => accepting(g.port, `greeter ${g.version}`), { concurrency: "unbounded" })
    yield* loadLoop(ports)
    yield* Console.log(banner(config, ports, options.configPath, flapPort))
    return yield* Effect.never
  })
