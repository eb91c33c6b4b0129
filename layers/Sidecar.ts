/**
 * The local Envoy sidecar: writes its bootstrap, runs the process, waits for readiness, restarts it
 * on crash (capped backoff, crash-loop detection), hot-restarts it when the bootstrap changes, and
 * drains and stops it on shutdown. The decisions are pure (src/sidecar/); this module does the I/O.
 */
import type { Scope } from "effect"
import {
  Clock,
  Context,
  Deferred,
  Duration,
  Effect,
  Either,
  Layer,
  LogLevel,
  Option,
  Runtime,
  Schema,
  Stream,
  SubscriptionRef
} from "effect"
import type { ChildProcess } from "node:child_process"
import { spawn } from "node:child_process"
import { createHash } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import * as NodeReadline from "node:readline"
import * as NodeZlib from "node:zlib"
import { type Envoy, ENVOY_STOP_RESERVE, type MeshConfig } from "../schemas/Config.js"
import { formatDuration } from "../schemas/Duration.js"
import {
  type BootstrapInput,
  type IdentityFiles,
  inputFromConfig,
  nodeId,
  renderBootstrap,
  type RenderedBootstrap
} from "../src/sidecar/Bootstrap.js"
import { explain, preflight, type PreflightResult } from "../src/sidecar/Preflight.js"
import {
  type Crash,
  decide,
  describeExit,
  drainSeconds,
  envoyArgs,
  type EnvoyLogLevel,
  parseEnvoyLogLine
} from "../src/sidecar/Restart.js"
import { writeAtomic } from "./internal/AtomicFile.js"
import { crashLoopGauge, readyGauge, restartsTotal } from "./internal/SidecarMetrics.js"
import { LiveConfig } from "./LiveConfig.js"

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

export type SidecarState =
  | "disabled"
  | "starting"
  | "ready"
  | "hot-restarting"
  | "restarting"
  | "crash-loop"
  | "stopping"
  | "stopped"

export interface SidecarExit {
  readonly code: number | null
  readonly signal: string | null
  readonly description: string
  readonly at: string
  readonly epoch: number
  /** It exited before it ever answered 200 on /ready. */
  readonly beforeReady: boolean
}

export interface SidecarStatus {
  readonly state: SidecarState
  readonly service: string | null
  readonly nodeId: string | null
  readonly pid: number | null
  readonly epoch: number
  /** Restarts after a crash (hot restarts are counted apart). */
  readonly restarts: number
  readonly hotRestarts: number
  readonly lastExit: SidecarExit | null
  readonly bootstrap: { readonly version: string; readonly path: string; readonly generation: number } | null
  readonly admin: string | null
  readonly preflight: PreflightResult | null
  /** Set in the crash-loop state: why restarts stopped, naming the likely cause when known. */
  readonly crashLoop: string | null
  readonly lastError: string | null
  /** Envoy is started with a parent-death signal (setpriv), so it dies with the controller whatever kills it. */
  readonly parentDeathSignal: boolean
}

const disabledStatus: SidecarStatus = {
  state: "disabled",
  service: null,
  nodeId: null,
  pid: null,
  epoch: 0,
  restarts: 0,
  hotRestarts: 0,
  lastExit: null,
  bootstrap: null,
  admin: null,
  preflight: null,
  crashLoop: null,
  lastError: null,
  parentDeathSignal: false
}

/** The sidecar config cannot produce a bootstrap Envoy would accept. */
export class SidecarConfigInvalid extends Schema.TaggedError<SidecarConfigInvalid>()("SidecarConfigInvalid", {
  reason: Schema.String
}) {
  override get message(): string {
    return `sidecar.envoy: ${this.reason}`
  }
}

export class Sidecar extends Context.Tag("mesh-controller/Sidecar")<
  Sidecar,
  {
    readonly status: Effect.Effect<SidecarStatus>
    /** The current status first, then every change. */
    readonly changes: Stream.Stream<SidecarStatus>
  }
>() {
  /** Runs Envoy for `sidecar.envoy.service`, whatever `sidecar.envoy.enabled` says. */
  static readonly layer = (options: SidecarOptions = {}): Layer.Layer<Sidecar, SidecarConfigInvalid, LiveConfig> =>
    Layer.scoped(Sidecar, make(options).pipe(Effect.annotateLogs({ module: "sidecar" })))

  /** Runs Envoy when `sidecar.envoy.enabled`, otherwise reports "disabled" (what program.ts wants). */
  static readonly layerConfig = (
    options: SidecarOptions = {}
  ): Layer.Layer<Sidecar, SidecarConfigInvalid, LiveConfig> =>
    Layer.scoped(
      Sidecar,
      Effect.flatMap(LiveConfig, (config) =>
        Effect.flatMap(
          config.get,
          (loaded) => (loaded.config.sidecar.envoy.enabled ? make(options) : Effect.provide(Sidecar, Sidecar.layerNone))
        )).pipe(Effect.annotateLogs({ module: "sidecar" }))
    )

  /** Runs Envoy with one fixed bootstrap, needing no LiveConfig (the agent's Envoy). */
  static readonly layerBootstrap = (options: SidecarBootstrapOptions): Layer.Layer<Sidecar, SidecarConfigInvalid> =>
    Layer.scoped(Sidecar, makeBootstrap(options).pipe(Effect.annotateLogs({ module: "sidecar" })))

  /** No sidecar on this host. */
  static readonly layerNone: Layer.Layer<Sidecar> = Layer.succeed(Sidecar, {
    status: Effect.succeed(disabledStatus),
    changes: Stream.make(disabledStatus)
  })
}

export interface SidecarOptions {
  /** The instance part of node.id; default `sidecar.envoy.instance`, then the host name. */
  readonly instance?: string
  /** The Raspberry Pi preflight's result; default: examine this host. */
  readonly preflight?: PreflightResult
}

// ---------------------------------------------------------------------------------------------
// Preflight (reads the host; the decision is src/sidecar/Preflight.ts)
// ---------------------------------------------------------------------------------------------

const readText = (path: string, gunzip = false): Effect.Effect<Option.Option<string>> =>
  Effect.tryPromise(async () => {
    const bytes = await NodeFs.promises.readFile(path)
    return (gunzip ? NodeZlib.gunzipSync(bytes) : bytes).toString("utf8")
  }).pipe(Effect.option)

/** Examines this host: the kernel config (/proc/config.gz, /boot/config-<release>) or else /proc/self/maps. */
export const hostPreflight: Effect.Effect<PreflightResult> = Effect.gen(function*() {
  const candidates = [
    { path: "/proc/config.gz", gunzip: true },
    { path: `/boot/config-${NodeOs.release()}`, gunzip: false }
  ]
  for (const candidate of candidates) {
    const text = yield* readText(candidate.path, candidate.gunzip)
    if (Option.isSome(text) && /CONFIG_ARM64_VA_BITS/.test(text.value)) {
      return preflight({ arch: process.arch, kernelConfig: text.value, kernelConfigSource: candidate.path })
    }
  }
  const maps = yield* readText("/proc/self/maps")
  return preflight({ arch: process.arch, memoryMap: Option.getOrUndefined(maps) })
})

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/** `sidecar.envoy.stateDir`, default `envoy/` next to the certificates dir. */
export const stateDirOf = (config: MeshConfig): string =>
  NodePath.resolve(config.sidecar.envoy.stateDir ?? NodePath.join(NodePath.dirname(config.certificates.dir), "envoy"))

// ---------------------------------------------------------------------------------------------
// One Envoy process
// ---------------------------------------------------------------------------------------------

interface ExitInfo {
  readonly code: number | null
  readonly signal: string | null
  readonly error: string | null
}

interface EnvoyProcess {
  readonly child: ChildProcess
  readonly pid: number | null
  readonly epoch: number
  readonly adminAddressPath: string
  readonly exited: Deferred.Deferred<ExitInfo>
}

/** What one start of Envoy is made of; a different `key` means a (hot) restart. */
interface Launch {
  readonly rendered: RenderedBootstrap
  readonly envoy: Envoy
  readonly bootstrapPath: string
  readonly stateDir: string
  readonly key: string
  /** With mTLS to the controller: the files Envoy reads its identity from. */
  readonly identity: IdentityFiles | undefined
  readonly identityHint: string
  readonly service: string
  readonly instance: string
}

/** A launch from a bootstrap's inputs; `identityHint` says how to make missing identity files. */
const launchOf = (
  input: BootstrapInput,
  envoy: Envoy,
  stateDir: string,
  identityHint: string
): Either.Either<Launch, SidecarConfigInvalid> =>
  Either.map(
    Either.mapLeft(renderBootstrap(input), (error) =>
      new SidecarConfigInvalid({ reason: `generated bootstrap rejected: ${error.message}` })),
    (rendered) => {
      const settings = JSON.stringify([
        envoy.path,
        envoy.args,
        envoy.baseId,
        envoy.concurrency,
        formatDuration(envoy.drainTime)
      ])
      return {
        rendered,
        envoy,
        stateDir,
        bootstrapPath: NodePath.join(stateDir, "bootstrap.yaml"),
        identity: input.xds.identity,
        identityHint,
        service: input.service,
        instance: input.instance,
        key: createHash("sha256").update(rendered.version).update(settings).digest("hex").slice(0, 16)
      }
    }
  )

const toLaunch = (config: MeshConfig, options: SidecarOptions): Either.Either<Launch, SidecarConfigInvalid> => {
  const envoy = config.sidecar.envoy
  const instance = options.instance ?? envoy.instance ?? NodeOs.hostname()
  return Either.flatMap(
    Either.mapLeft(
      inputFromConfig(config, { instance }),
      (error) => new SidecarConfigInvalid({ reason: error.reason })
    ),
    (input) =>
      launchOf(
        // The identity by file-based SDS, so Envoy follows the Certificates layer's renewals (files
        // named inline are read only at start).
        input.xds.identity === undefined
          ? input
          : { ...input, xds: { ...input.xds, sdsDir: NodePath.join(stateDirOf(config), "sds") } },
        envoy,
        stateDirOf(config),
        `controller.xds.tls is "mtls": mesh-controller certs issue --service ${input.service} --out ${
          input.xds.identity?.directory ?? ""
        }`
      )
  )
}

const LOG_LEVEL: Record<EnvoyLogLevel, "Debug" | "Info" | "Warning" | "Error"> = {
  trace: "Debug",
  debug: "Debug",
  info: "Info",
  warning: "Warning",
  error: "Error",
  critical: "Error"
}

const fetchAdmin = (address: string, path: string, method: "GET" | "POST" = "GET") =>
  Effect.tryPromise((signal) =>
    fetch(`http://${address}${path}`, { method, signal }).then(async (response) => ({
      status: response.status,
      body: await response.text()
    }))
  ).pipe(Effect.timeoutFail({ duration: Duration.seconds(2), onTimeout: () => new Error(`admin ${path} timed out`) }))

// ---------------------------------------------------------------------------------------------
// One Envoy process
// ---------------------------------------------------------------------------------------------

type RunFork = <A, E>(effect: Effect.Effect<A, E>) => unknown

/** Each line Envoy prints goes to the controller's log at its own level, tagged with its pid and epoch. */
const pipeLines = (
  runFork: RunFork,
  proc: EnvoyProcess,
  stream: NodeJS.ReadableStream | null,
  name: "stdout" | "stderr"
) => {
  if (stream === null) return
  const lines = NodeReadline.createInterface({ input: stream, crlfDelay: Infinity })
  lines.on("line", (line) => {
    const parsed = parseEnvoyLogLine(line)
    runFork(
      Effect.logWithLevel(
        LogLevel.fromLiteral(
          parsed.level === undefined ? (name === "stderr" ? "Warning" : "Info") : LOG_LEVEL[parsed.level]
        ),
        parsed.message
      ).pipe(
        Effect.annotateLogs({
          source: "envoy",
          envoyPid: proc.pid ?? -1,
          envoyEpoch: proc.epoch,
          ...(parsed.logger !== undefined ? { envoyLogger: parsed.logger } : {})
        })
      )
    )
  })
}

/** Starts one Envoy process; it is in `live` from the moment it exists until it has exited. */
const spawnEnvoy = (runFork: RunFork, live: Set<EnvoyProcess>, launch: Launch, epoch: number, setpriv: string | null) =>
  Effect.gen(function*() {
    const adminAddressPath = NodePath.join(launch.stateDir, `admin-address.${epoch}`)
    yield* Effect.promise(() => NodeFs.promises.rm(adminAddressPath, { force: true }))
    const args = envoyArgs({
      bootstrapPath: launch.bootstrapPath,
      adminAddressPath,
      baseId: launch.envoy.baseId,
      concurrency: launch.envoy.concurrency,
      drainTime: launch.envoy.drainTime,
      args: launch.envoy.args
    }, epoch)
    const exited = yield* Deferred.make<ExitInfo>()
    // Spawning and registering happen in one step, so an interruption cannot orphan a process.
    const proc = yield* Effect.sync(() => {
      const [command, commandArgs] = setpriv === null
        ? [launch.envoy.path, args]
        : [setpriv, ["--pdeathsig", "KILL", "--", launch.envoy.path, ...args]]
      const child = spawn(command, commandArgs, { stdio: ["ignore", "pipe", "pipe"], detached: true })
      const proc: EnvoyProcess = { child, pid: child.pid ?? null, epoch, adminAddressPath, exited }
      live.add(proc)
      child.once("error", (error) => {
        live.delete(proc)
        runFork(
          Deferred.succeed(exited, {
            code: null,
            signal: null,
            error: `cannot start ${launch.envoy.path}: ${error.message}`
          })
        )
      })
      child.once("exit", (code, signal) => {
        live.delete(proc)
        runFork(Deferred.succeed(exited, { code, signal, error: null }))
      })
      pipeLines(runFork, proc, child.stdout, "stdout")
      pipeLines(runFork, proc, child.stderr, "stderr")
      return proc
    })
    yield* Effect.logInfo("Envoy started").pipe(
      Effect.annotateLogs({ pid: proc.pid ?? -1, epoch, path: launch.envoy.path })
    )
    return proc
  }).pipe(Effect.uninterruptible)

const adminAddressOf = (proc: EnvoyProcess) =>
  Effect.promise(() => NodeFs.promises.readFile(proc.adminAddressPath, "utf8").catch(() => "")).pipe(
    Effect.map((text) => (text.trim() === "" ? Option.none<string>() : Option.some(text.trim())))
  )

/** Polls /ready until 200; fails when the process exits first or the timeout passes. */
const awaitReady = (proc: EnvoyProcess, timeout: Duration.Duration) => {
  const poll = Effect.gen(function*() {
    while (true) {
      const address = yield* adminAddressOf(proc)
      if (Option.isSome(address)) {
        const answer = yield* Effect.either(fetchAdmin(address.value, "/ready"))
        if (Either.isRight(answer) && answer.right.status === 200) return address.value
      }
      yield* Effect.sleep(Duration.millis(100))
    }
  })
  return Effect.raceFirst(
    Effect.map(poll, (address) => ({ _tag: "Ready" as const, address })),
    Effect.map(Deferred.await(proc.exited), (exit) => ({ _tag: "Exited" as const, exit }))
  ).pipe(
    Effect.timeoutTo({
      duration: timeout,
      onTimeout: () => ({ _tag: "TimedOut" as const }),
      onSuccess: (result) => result
    })
  )
}

/** SIGTERM's grace and the wait after SIGKILL: together ENVOY_STOP_RESERVE, which the config leaves after the drain. */
const TERM_GRACE = Duration.seconds(2)
const KILL_WAIT = Duration.subtract(ENVOY_STOP_RESERVE, TERM_GRACE)

/**
 * Signals Envoy's whole process group: Envoy runs in a group of its own (spawned detached), so
 * anything it (or a wrapper script around it) started goes with it, and a terminal's Ctrl-C
 * reaches only the controller, which then drains Envoy in order.
 */
const signalGroup = (proc: EnvoyProcess, signal: NodeJS.Signals): void => {
  if (proc.pid === null) return
  try {
    process.kill(-proc.pid, signal)
  } catch {
    // The group is gone already; the process itself may still be reaped.
    proc.child.kill(signal)
  }
}

/**
 * The parent-death signal: Linux's PR_SET_PDEATHSIG, set by util-linux's `setpriv --pdeathsig`
 * (which then execs Envoy, so the pid is Envoy's): the kernel SIGKILLs Envoy when the controller
 * dies, even by SIGKILL or a crash that runs no finalizer. Node cannot call prctl itself without
 * a native addon. Where setpriv is missing (the distroless image), status says so; in a container
 * the controller is PID 1, whose death takes every process of the container with it.
 */
const SETPRIV_PATHS: ReadonlyArray<string> = ["/usr/bin/setpriv", "/bin/setpriv"]
const findSetpriv = (): string | null => SETPRIV_PATHS.find((path) => NodeFs.existsSync(path)) ?? null

/** Drain (optional), wait out the drain time, SIGTERM, and SIGKILL if it still runs. */
const stopProcess = (proc: EnvoyProcess, drainTime: Duration.Duration, drain: boolean) =>
  Effect.gen(function*() {
    if (yield* Deferred.isDone(proc.exited)) return
    if (drain) {
      const address = yield* adminAddressOf(proc)
      if (Option.isSome(address)) {
        const drained = yield* Effect.either(fetchAdmin(address.value, "/drain_listeners?graceful", "POST"))
        if (Either.isLeft(drained)) yield* Effect.logWarning("Envoy drain request failed", drained.left)
        yield* Deferred.await(proc.exited).pipe(Effect.timeoutOption(drainTime))
      }
    }
    if (yield* Deferred.isDone(proc.exited)) return
    yield* Effect.sync(() => signalGroup(proc, "SIGTERM"))
    const grace = Duration.min(drainTime, TERM_GRACE)
    const exited = yield* Deferred.await(proc.exited).pipe(Effect.timeoutOption(grace))
    if (Option.isNone(exited)) {
      yield* Effect.logWarning("Envoy ignored SIGTERM; sending SIGKILL").pipe(
        Effect.annotateLogs({ pid: proc.pid ?? -1 })
      )
      yield* Effect.sync(() => signalGroup(proc, "SIGKILL"))
      yield* Deferred.await(proc.exited).pipe(Effect.timeoutOption(KILL_WAIT))
    }
  })

/** Envoy's outcome while it was supposed to be running. */
interface Outcome {
  readonly _tag: "Crashed"
  readonly exit: ExitInfo
  readonly beforeReady: boolean
  readonly epoch: number
  readonly why: string
}

const crashed = (proc: EnvoyProcess, exit: ExitInfo, beforeReady: boolean, why?: string): Outcome => ({
  _tag: "Crashed",
  exit,
  beforeReady,
  epoch: proc.epoch,
  why: why ?? exit.error ?? describeExit(exit.code, exit.signal)
})

// ---------------------------------------------------------------------------------------------
// The supervisor
// ---------------------------------------------------------------------------------------------

export const make = (
  options: SidecarOptions = {}
): Effect.Effect<Context.Tag.Service<Sidecar>, SidecarConfigInvalid, LiveConfig | Scope.Scope> =>
  Effect.gen(function*() {
    const config = yield* LiveConfig
    const first = yield* config.get
    const initial = yield* Either.match(toLaunch(first.config, options), {
      onLeft: Effect.fail,
      onRight: Effect.succeed
    })
    // LiveConfig changes become new launches; a config that cannot produce a valid bootstrap is
    // reported and the running Envoy keeps its bootstrap.
    const launches = config.changes.pipe(
      Stream.drop(1),
      Stream.map((loaded) => toLaunch(loaded.config, options))
    )
    return yield* supervisor(initial, launches, options)
  })

/** What a sidecar with a fixed bootstrap needs (`Sidecar.layerBootstrap`: the agent's Envoy). */
export interface SidecarBootstrapOptions {
  readonly input: BootstrapInput
  /** The Envoy settings (`sidecar.envoy`'s schema, decoded; `service`, `stateDir` and `enabled` are not read). */
  readonly envoy: Envoy
  /** Where the bootstrap, its SDS files and Envoy's admin address files go. */
  readonly stateDir: string
  /** How an operator makes the identity files if they are missing. */
  readonly identityHint: string
  readonly preflight?: PreflightResult
}

/** A sidecar for one bootstrap that does not change (no LiveConfig): what `mesh-controller agent --envoy` runs. */
export const makeBootstrap = (
  options: SidecarBootstrapOptions
): Effect.Effect<Context.Tag.Service<Sidecar>, SidecarConfigInvalid, Scope.Scope> =>
  Effect.flatMap(
    launchOf(options.input, options.envoy, NodePath.resolve(options.stateDir), options.identityHint),
    (initial) =>
      supervisor(initial, Stream.never, options.preflight === undefined ? {} : { preflight: options.preflight })
  )

/** Runs `initial`, then each launch that `launches` brings (a Left is reported; the running Envoy stays). */
const supervisor = (
  initial: Launch,
  launches: Stream.Stream<Either.Either<Launch, SidecarConfigInvalid>>,
  options: SidecarOptions
): Effect.Effect<Context.Tag.Service<Sidecar>, never, Scope.Scope> =>
  Effect.gen(function*() {
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())

    const setpriv = findSetpriv()
    if (setpriv === null) {
      yield* Effect.logWarning(
        "setpriv not found: an Envoy started now would outlive a controller killed without its finalizers"
      )
    }
    const check = options.preflight ?? (yield* hostPreflight)
    if (check.verdict === "likely-crash") yield* Effect.logWarning(`Envoy preflight: ${explain(check)}`)
    else yield* Effect.logDebug(`Envoy preflight: ${check.message}`)

    const status = yield* SubscriptionRef.make<SidecarStatus>({
      ...disabledStatus,
      state: "starting",
      service: initial.service,
      nodeId: nodeId(initial.service, initial.instance),
      preflight: check,
      parentDeathSignal: setpriv !== null
    })
    const update = (f: (s: SidecarStatus) => SidecarStatus) => SubscriptionRef.update(status, f)
    const setState = (state: SidecarState) =>
      Effect.zipRight(
        Effect.sync(() => {
          // While a hot restart is under way the running epoch still serves.
          readyGauge.set(state === "ready" || state === "hot-restarting" ? 1 : 0)
          crashLoopGauge.set(state === "crash-loop" ? 1 : 0)
        }),
        update((s) => ({ ...s, state }))
      )

    const desired = yield* SubscriptionRef.make(initial)
    const live = new Set<EnvoyProcess>()
    let generation = 0
    let lastWritten = ""

    // ---- files ----
    const writeBootstrap = (launch: Launch) =>
      Effect.gen(function*() {
        if (lastWritten !== launch.rendered.version) {
          // Readers (Envoy, operators) see the old or the new bootstrap, never a part of one.
          yield* Effect.tryPromise({
            try: () => NodeFs.promises.mkdir(launch.stateDir, { recursive: true }),
            catch: (cause) => new SidecarConfigInvalid({ reason: `cannot create ${launch.stateDir}: ${String(cause)}` })
          })
          // The SDS files first: Envoy needs every path_config_source to exist when it loads the bootstrap.
          for (const file of launch.rendered.sds) {
            yield* Effect.tryPromise({
              try: () => NodeFs.promises.mkdir(NodePath.dirname(file.path), { recursive: true }),
              catch: (cause) =>
                new SidecarConfigInvalid({ reason: `cannot create ${NodePath.dirname(file.path)}: ${String(cause)}` })
            })
            yield* writeAtomic(file.path, file.yaml, { mode: 0o644, replace: true }).pipe(
              Effect.mapError((error) =>
                new SidecarConfigInvalid({ reason: `cannot write ${file.path}: ${error.message}` })
              )
            )
          }
          yield* writeAtomic(launch.bootstrapPath, launch.rendered.yaml, { mode: 0o644, replace: true }).pipe(
            Effect.mapError((error) =>
              new SidecarConfigInvalid({ reason: `cannot write the bootstrap: ${error.message}` })
            )
          )
          lastWritten = launch.rendered.version
          generation += 1
          yield* Effect.logInfo("Envoy bootstrap written").pipe(
            Effect.annotateLogs({ path: launch.bootstrapPath, version: launch.rendered.version })
          )
        }
        const written = generation
        yield* update((s) => ({
          ...s,
          bootstrap: { version: launch.rendered.version, path: launch.bootstrapPath, generation: written }
        }))
      })

    const nextLaunch = (key: string) =>
      desired.changes.pipe(Stream.filter((launch) => launch.key !== key), Stream.runHead, Effect.map(Option.getOrThrow))

    /** Envoy cannot start without its identity files; say which are missing and how to make them. */
    const identityPresent = (launch: Launch) =>
      Effect.gen(function*() {
        const identity = launch.identity
        if (identity === undefined) return
        const files = [identity.certificateChain, identity.privateKey, identity.trustedCa]
        const missing = files.filter((file) => !NodeFs.existsSync(file))
        if (missing.length === 0) return
        return yield* new SidecarConfigInvalid({
          reason: `the sidecar's identity files are missing: ${missing.join(", ")} (${launch.identityHint})`
        })
      })

    /** Watches a hot-restarted parent: its child terminates it; if it lingers, stop it. */
    const retireParent = (parent: EnvoyProcess, envoy: Envoy) =>
      Deferred.await(parent.exited).pipe(
        Effect.timeoutOption(Duration.sum(Duration.seconds(drainSeconds(envoy.drainTime) + 1), Duration.seconds(5))),
        Effect.flatMap((exited) => (Option.isNone(exited) ? stopProcess(parent, envoy.drainTime, false) : Effect.void))
      )

    /** Starts Envoy (cold, epoch 0) and keeps it running through hot restarts until it fails. */
    const runUntilFailure = (start: Launch) =>
      Effect.gen(function*() {
        let launch = start
        yield* identityPresent(launch)
        yield* writeBootstrap(launch)
        let proc = yield* spawnEnvoy(runFork, live, launch, 0, setpriv)
        yield* update((s) => ({ ...s, pid: proc.pid, epoch: 0 }))
        const first = yield* awaitReady(proc, launch.envoy.readinessTimeout)
        if (first._tag === "Exited") return crashed(proc, first.exit, true)
        if (first._tag === "TimedOut") {
          yield* stopProcess(proc, launch.envoy.drainTime, false)
          return crashed(
            proc,
            yield* Deferred.await(proc.exited),
            true,
            `not ready within ${formatDuration(launch.envoy.readinessTimeout)}`
          )
        }
        yield* update((s) => ({ ...s, admin: first.address, crashLoop: null }))
        yield* setState("ready")
        yield* Effect.logInfo("Envoy is ready").pipe(Effect.annotateLogs({ pid: proc.pid ?? -1, admin: first.address }))

        while (true) {
          const event = yield* Effect.raceFirst(
            Effect.map(Deferred.await(proc.exited), (exit) => ({ _tag: "Exited" as const, exit })),
            Effect.map(nextLaunch(launch.key), (next) => ({ _tag: "Changed" as const, next }))
          )
          if (event._tag === "Exited") return crashed(proc, event.exit, false)

          // Hot restart: the new epoch takes over from the running one.
          const next = event.next
          const wrote = yield* Effect.either(Effect.zipRight(identityPresent(next), writeBootstrap(next)))
          if (Either.isLeft(wrote)) {
            // The running Envoy keeps its bootstrap; the next change tries again.
            yield* update((s) => ({ ...s, lastError: wrote.left.message }))
            yield* Effect.logError(
              "cannot hot-restart Envoy with the new bootstrap; keeping the running one",
              wrote.left
            )
            launch = next
            continue
          }
          yield* setState("hot-restarting")
          const child = yield* spawnEnvoy(runFork, live, next, proc.epoch + 1, setpriv)
          const result = yield* awaitReady(child, next.envoy.readinessTimeout)
          if (result._tag !== "Ready") {
            yield* Effect.logError("Envoy hot restart failed; stopping both epochs for a cold start").pipe(
              Effect.annotateLogs({ epoch: child.epoch })
            )
            yield* Effect.all([
              stopProcess(child, next.envoy.drainTime, false),
              stopProcess(proc, next.envoy.drainTime, false)
            ], {
              concurrency: 2,
              discard: true
            })
            const exit = yield* Deferred.await(child.exited)
            return crashed(child, exit, true, result._tag === "TimedOut" ? "hot restart: not ready in time" : undefined)
          }
          restartsTotal.inc({ reason: "hot-restart" })
          yield* Effect.forkScoped(retireParent(proc, launch.envoy))
          proc = child
          launch = next
          yield* update((s) => ({
            ...s,
            admin: result.address,
            hotRestarts: s.hotRestarts + 1,
            pid: child.pid,
            epoch: child.epoch
          }))
          yield* setState("ready")
          yield* Effect.logInfo("Envoy hot restart complete").pipe(
            Effect.annotateLogs({ epoch: child.epoch, version: next.rendered.version })
          )
        }
      })

    const supervise = Effect.gen(function*() {
      let crashes: Array<Crash> = []
      while (true) {
        const launch = yield* SubscriptionRef.get(desired)
        const outcome = yield* runUntilFailure(launch).pipe(
          Effect.catchAll((error): Effect.Effect<Outcome> =>
            Effect.succeed({
              _tag: "Crashed",
              exit: { code: null, signal: null, error: error.message },
              beforeReady: true,
              epoch: 0,
              why: error.message
            })
          )
        )
        const now = yield* Clock.currentTimeMillis
        const exit: SidecarExit = {
          code: outcome.exit.code,
          signal: outcome.exit.signal,
          description: outcome.why,
          at: new Date(now).toISOString(),
          epoch: outcome.epoch,
          beforeReady: outcome.beforeReady
        }
        crashes = [...crashes, {
          at: now,
          beforeReady: outcome.beforeReady,
          code: outcome.exit.code,
          signal: outcome.exit.signal
        }]
        const current = yield* SubscriptionRef.get(desired)
        const policy = current.envoy.restart
        const decision = decide(crashes, now, policy)
        yield* update((s) => ({ ...s, pid: null, lastExit: exit, lastError: outcome.exit.error ?? s.lastError }))
        if (decision._tag === "Restart") {
          restartsTotal.inc({ reason: "crash" })
          yield* update((s) => ({ ...s, restarts: s.restarts + 1 }))
          yield* setState("restarting")
          yield* Effect.logWarning(`Envoy exited (${outcome.why}); restarting in ${formatDuration(decision.delay)}`)
            .pipe(
              Effect.annotateLogs({ recentCrashes: decision.recentCrashes })
            )
          yield* Effect.sleep(decision.delay)
          continue
        }
        const atStart = crashes.slice(-decision.recentCrashes).every((crash) => crash.beforeReady)
        const cause = atStart && check.verdict === "likely-crash"
          ? ` Likely cause: ${explain(check)}`
          : ""
        const report = `Envoy crashed ${decision.recentCrashes} times within ${formatDuration(policy.window)}` +
          `${
            atStart ? ", each time before it became ready" : ""
          } (last: ${outcome.why}); restarts stopped until the sidecar config changes.${cause}`
        yield* update((s) => ({ ...s, crashLoop: report }))
        yield* setState("crash-loop")
        yield* Effect.logError(report)
        // A changed bootstrap or Envoy setting is worth another try.
        yield* nextLaunch(current.key)
        crashes = []
      }
    })

    // Shutdown: stop supervising (finalizers run in reverse, so this one runs after the fiber is
    // interrupted), then drain and stop every Envoy still running, bounded.
    const stopAll = Effect.gen(function*() {
      const envoy = (yield* SubscriptionRef.get(desired)).envoy
      yield* setState("stopping")
      yield* Effect.forEach([...live], (proc) => stopProcess(proc, envoy.drainTime, true), {
        concurrency: "unbounded",
        discard: true
      })
      yield* update((s) => ({ ...s, pid: null }))
      yield* setState("stopped")
    })
    const killAll = () => {
      for (const proc of live) signalGroup(proc, "SIGKILL")
    }
    // Last resort: if the controller exits without running finalizers, take Envoy down with it.
    yield* Effect.acquireRelease(
      Effect.sync(() => process.on("exit", killAll)),
      () => Effect.sync(() => process.off("exit", killAll))
    )
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        // The drain plus the stop, which the config keeps within controller.shutdownTimeout.
        const bound = Duration.sum((yield* SubscriptionRef.get(desired)).envoy.drainTime, ENVOY_STOP_RESERVE)
        // Finalizers run uninterruptibly; the timeouts inside (drain wait, SIGTERM grace) need to interrupt.
        yield* Effect.interruptible(stopAll).pipe(
          Effect.timeoutOption(bound),
          Effect.flatMap((done) => (Option.isNone(done) ? Effect.sync(killAll) : Effect.void))
        )
      })
    )

    yield* launches.pipe(
      Stream.runForEach((next) =>
        Either.match(next, {
          onLeft: (error) =>
            Effect.zipRight(
              update((s) => ({ ...s, lastError: error.message })),
              Effect.logError("sidecar config change rejected; Envoy keeps its bootstrap", error)
            ),
          onRight: (launch) =>
            Effect.zipRight(update((s) => ({ ...s, lastError: null })), SubscriptionRef.set(desired, launch))
        })
      ),
      Effect.forkScoped
    )
    yield* Effect.forkScoped(supervise)

    return Sidecar.of({ status: SubscriptionRef.get(status), changes: status.changes })
  })
