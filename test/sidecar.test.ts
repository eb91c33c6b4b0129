/**
 * The Sidecar layer against test/support/envoy-standin.mjs, spawned for real: readiness, crash and
 * restart, crash loops, hot restart, shutdown. Every wait is a wait-for-condition with a generous
 * deadline; nothing asserts how long something took.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Either, Exit, Layer, List, Logger, Ref, Schedule, Scope, Stream } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import * as YAML from "yaml"
import { LiveConfig } from "../layers/LiveConfig.js"
import { registry } from "../layers/Metrics.js"
import { Sidecar, type SidecarStatus } from "../layers/Sidecar.js"
import type { MeshConfig } from "../schemas/Config.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import { preflight } from "../src/sidecar/Preflight.js"
import { processAlive as alive } from "./support/daemon.js"

const STANDIN = NodePath.join(import.meta.dirname, "support", "envoy-standin.mjs")
const fixture = (name: string) =>
  NodeFs.readFileSync(NodePath.join(import.meta.dirname, "fixtures", "sidecar", name), "utf8")

interface Setup {
  readonly dir: string
  readonly events: string
  readonly control: string
  readonly config: (envoy?: Record<string, unknown>) => MeshConfig
}

let nextBaseId = 4000 + Math.floor(Math.random() * 1000) * 10

const setup = (): Setup => {
  const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "sidecar-test-"))
  const events = NodePath.join(dir, "events.jsonl")
  const control = NodePath.join(dir, "crash-mode")
  const baseId = nextBaseId++
  const config = (envoy: Record<string, unknown> = {}) => {
    const { args, ...rest } = envoy
    const decoded = decodeConfig({
      mesh: { name: "lab" },
      services: [{ name: "echo", port: 8080 }],
      certificates: { dir: NodePath.join(dir, "certs") },
      sidecar: {
        envoy: {
          enabled: true,
          service: "echo",
          instance: "test-host",
          path: STANDIN,
          concurrency: 2,
          drainTime: "200ms",
          admin: { host: "127.0.0.1", port: 0 },
          baseId,
          stateDir: NodePath.join(dir, "envoy"),
          readinessTimeout: "10s",
          restart: { initialBackoff: "100ms", maxBackoff: "400ms", maxCrashes: 3, window: "1m" },
          args: [
            "--standin-events",
            events,
            "--standin-control",
            control,
            "--standin-ready-delay-ms",
            "100",
            ...((args as Array<string>) ?? [])
          ],
          ...rest
        }
      }
    }, "test")
    return Either.getOrThrow(decoded)
  }
  return { dir, events, control, config }
}

interface StandinEvent {
  readonly event: string
  readonly pid: number
  readonly epoch: number
  readonly graceful?: boolean
  readonly signal?: string
  readonly why?: string
}

const readEvents = (path: string): ReadonlyArray<StandinEvent> =>
  NodeFs.existsSync(path)
    ? NodeFs.readFileSync(path, "utf8").split("\n").filter((line) => line !== "").map((line) =>
      JSON.parse(line) as StandinEvent
    )
    : []

interface ServerInfo {
  readonly command_line_options: Record<string, unknown>
  readonly node: { readonly id: string }
}

const DEADLINE = Duration.seconds(20)

/** Waits for a status that satisfies `predicate` (the current one counts). */
const waitFor = (sidecar: Context.Tag.Service<Sidecar>, predicate: (status: SidecarStatus) => boolean, what: string) =>
  sidecar.changes.pipe(
    Stream.filter(predicate),
    Stream.runHead,
    Effect.flatMap((found) => found),
    Effect.timeoutFail({ duration: DEADLINE, onTimeout: () => new Error(`timed out waiting for: ${what}`) }),
    Effect.orDie
  )

const eventually = (condition: () => boolean, what: string) =>
  Effect.gen(function*() {
    const until = Date.now() + Duration.toMillis(DEADLINE)
    while (!condition()) {
      if (Date.now() > until) return yield* Effect.die(new Error(`timed out waiting for: ${what}`))
      yield* Effect.sleep(Duration.millis(50))
    }
  })

/** Builds LiveConfig (memory) + Sidecar in a scope the test closes itself, to observe shutdown. */
const start = (config: MeshConfig, options: Parameters<typeof Sidecar.layer>[0] = {}) =>
  Effect.gen(function*() {
    // The test closes the scope itself to observe shutdown; this release covers a failed assertion.
    const scope = yield* Effect.acquireRelease(Scope.make(), (scope) => Scope.close(scope, Exit.void))
    const context = yield* Layer.buildWithScope(
      Layer.provideMerge(
        Sidecar.layer({ preflight: preflight({ arch: "x64" }), ...options }),
        LiveConfig.layerMemory(config)
      ),
      scope
    )
    return { scope, sidecar: Context.get(context, Sidecar), config: Context.get(context, LiveConfig) }
  }).pipe(
    // Quiet test output: the default logger goes (a test that replaced it keeps its own).
    Effect.provide(Logger.remove(Logger.defaultLogger))
  )

const metricValue = async (name: string): Promise<number | undefined> => {
  const metric = registry.getSingleMetric(name)
  const values = metric === undefined ? [] : (await metric.get()).values
  return values[0]?.value
}

describe("Sidecar (against the Envoy stand-in)", () => {
  it.scopedLive("starts Envoy with its bootstrap and arguments, waits for /ready, and tags its output in the log", () =>
    Effect.gen(function*() {
      const t = setup()
      const lines = yield* Ref.make(List.empty<{ message: unknown; annotations: Record<string, unknown> }>())
      const capture = Logger.make(({ annotations, message }) => {
        const plain: Record<string, unknown> = {}
        for (const [key, value] of annotations) plain[key] = value
        Effect.runSync(Ref.update(lines, List.prepend({ message, annotations: plain })))
      })
      const { scope, sidecar } = yield* start(t.config()).pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, capture))
      )
      const ready = yield* waitFor(sidecar, (s) => s.state === "ready", "ready")

      assert.strictEqual(ready.nodeId, "echo~test-host")
      assert.strictEqual(ready.epoch, 0)
      assert.isNotNull(ready.pid)
      assert.isTrue(alive(ready.pid!))
      const info = yield* Effect.promise(() =>
        fetch(`http://${ready.admin}/server_info`).then((r) => r.json() as Promise<ServerInfo>)
      )
      assert.deepInclude(info.command_line_options, { concurrency: 2, restart_epoch: 0, drain_time: "1s" })
      assert.strictEqual(info.node.id, "echo~test-host")

      const written = YAML.parse(NodeFs.readFileSync(ready.bootstrap!.path, "utf8"))
      assert.strictEqual(written.node.cluster, "echo")
      assert.strictEqual(written.dynamic_resources.ads_config.api_type, "DELTA_GRPC")
      assert.strictEqual(ready.bootstrap!.generation, 1)
      assert.strictEqual(yield* Effect.promise(() => metricValue("mesh_controller_sidecar_ready")), 1)

      const findTagged = Effect.map(
        Ref.get(lines),
        (all) =>
          List.toArray(all).find((line) =>
            String(line.message).includes("all dependencies initialized") && line.annotations["source"] === "envoy"
          )
      )
      // Envoy's output arrives on its own pipe, not necessarily before /ready answered.
      yield* Effect.repeat(findTagged, {
        until: (found) => found !== undefined,
        schedule: Schedule.spaced(Duration.millis(50))
      }).pipe(
        Effect.timeout(DEADLINE)
      )
      const tagged = yield* findTagged
      assert.isDefined(tagged)
      assert.strictEqual(tagged!.annotations["envoyPid"], ready.pid)
      assert.strictEqual(tagged!.annotations["envoyLogger"], "config")

      yield* Scope.close(scope, Exit.void)
      assert.isFalse(alive(ready.pid!))
    }))

  it.scopedLive("restarts Envoy after a crash, with the exit recorded", () =>
    Effect.gen(function*() {
      const t = setup()
      NodeFs.writeFileSync(t.control, "after-ready:100")
      const { scope, sidecar } = yield* start(t.config())
      const restarting = yield* waitFor(sidecar, (s) => s.restarts >= 1, "a restart")
      NodeFs.rmSync(t.control)
      assert.strictEqual(restarting.lastExit?.code, 1)
      assert.isFalse(restarting.lastExit!.beforeReady)
      assert.include(restarting.lastExit!.description, "exit code 1")
      const first = readEvents(t.events).find((e) => e.event === "start")!
      assert.isFalse(alive(first.pid))

      const again = yield* waitFor(sidecar, (s) => s.state === "ready" && s.restarts >= 1, "ready after restart")
      assert.notStrictEqual(again.pid, first.pid)
      assert.strictEqual(again.epoch, 0)
      assert.isTrue(readEvents(t.events).filter((e) => e.event === "crash").length >= 1)
      yield* Scope.close(scope, Exit.void)
    }))

  it.scopedLive("stops restarting after repeated crashes at start and names the 39-bit address space as the likely cause", () =>
    Effect.gen(function*() {
      const t = setup()
      const rpi = preflight({
        arch: "arm64",
        kernelConfig: fixture("kernel-config-rpi-bcm2711-39bit.txt"),
        kernelConfigSource: "/proc/config.gz"
      })
      const { config, scope, sidecar } = yield* start(t.config({ args: ["--standin-crash", "start"] }), {
        preflight: rpi
      })
      const looped = yield* waitFor(sidecar, (s) => s.state === "crash-loop", "crash loop")

      assert.strictEqual(looped.restarts, 2)
      assert.isNull(looped.pid)
      assert.isTrue(looped.lastExit!.beforeReady)
      assert.include(looped.crashLoop!, "crashed 3 times")
      assert.include(looped.crashLoop!, "39-bit")
      assert.include(looped.crashLoop!, "proxyless gRPC")
      assert.strictEqual(readEvents(t.events).filter((e) => e.event === "start").length, 3)
      assert.strictEqual(yield* Effect.promise(() => metricValue("mesh_controller_sidecar_crash_loop")), 1)

      // A changed sidecar config is worth another try.
      yield* config.apply(t.config(), "test")
      const recovered = yield* waitFor(sidecar, (s) => s.state === "ready", "ready after the config change")
      assert.isNull(recovered.crashLoop)
      assert.strictEqual(yield* Effect.promise(() => metricValue("mesh_controller_sidecar_crash_loop")), 0)
      yield* Scope.close(scope, Exit.void)
    }))

  it.scopedLive("hot-restarts Envoy with the next epoch when the bootstrap changes", () =>
    Effect.gen(function*() {
      const t = setup()
      const { config, scope, sidecar } = yield* start(t.config())
      const before = yield* waitFor(sidecar, (s) => s.state === "ready", "ready")

      yield* config.apply(t.config({ initialFetchTimeout: "3s" }), "test")
      const after = yield* waitFor(sidecar, (s) => s.state === "ready" && s.hotRestarts === 1, "hot restart")

      assert.strictEqual(after.epoch, 1)
      assert.strictEqual(after.restarts, 0)
      assert.notStrictEqual(after.pid, before.pid)
      assert.notStrictEqual(after.bootstrap!.version, before.bootstrap!.version)
      assert.strictEqual(after.bootstrap!.generation, 2)
      const written = YAML.parse(NodeFs.readFileSync(after.bootstrap!.path, "utf8"))
      assert.strictEqual(written.dynamic_resources.cds_config.initial_fetch_timeout, "3s")
      const info = yield* Effect.promise(() =>
        fetch(`http://${after.admin}/server_info`).then((r) => r.json() as Promise<ServerInfo>)
      )
      assert.strictEqual(info.command_line_options.restart_epoch, 1)

      // The new epoch took the admin port over from its parent, then terminated it.
      yield* eventually(() => !alive(before.pid!), "the parent epoch to exit")
      const events = readEvents(t.events)
      assert.isTrue(events.some((e) => e.event === "shutdown-admin" && e.pid === before.pid))
      assert.isTrue(events.some((e) => e.event === "terminated-by-child" && e.pid === before.pid))
      assert.strictEqual((yield* sidecar.status).state, "ready")
      yield* Scope.close(scope, Exit.void)
    }))

  it.scopedLive("counts an Envoy that never becomes ready as a failed start, and stops it", () =>
    Effect.gen(function*() {
      const t = setup()
      const { scope, sidecar } = yield* start(
        t.config({
          readinessTimeout: "500ms",
          restart: { maxCrashes: 1 },
          args: ["--standin-ready-delay-ms", "600000"]
        })
      )
      const looped = yield* waitFor(sidecar, (s) => s.state === "crash-loop", "crash loop")
      // A failed start is recorded only once the process has exited (it was stopped, not left running).
      assert.include(looped.lastExit!.description, "not ready within 500ms")
      assert.isTrue(looped.lastExit!.beforeReady)
      assert.isNull(looped.pid)
      yield* Scope.close(scope, Exit.void)
    }))

  it.scopedLive("falls back to a cold start when the hot-restarted epoch fails", () =>
    Effect.gen(function*() {
      const t = setup()
      const { config, scope, sidecar } = yield* start(t.config())
      const before = yield* waitFor(sidecar, (s) => s.state === "ready", "ready")
      yield* config.apply(t.config({ args: ["--standin-crash", "start"] }), "test")
      const looped = yield* waitFor(sidecar, (s) => s.state === "crash-loop", "crash loop after the failed hot restart")

      assert.strictEqual(looped.hotRestarts, 0)
      assert.isFalse(alive(before.pid!))
      const starts = readEvents(t.events).filter((e) => e.event === "start").map((e) => e.epoch)
      // epoch 0 (good), epoch 1 (the failed hot restart), then cold starts at epoch 0 again
      assert.deepStrictEqual(starts.slice(0, 3), [0, 1, 0])
      yield* Scope.close(scope, Exit.void)
    }))

  it.scopedLive("with mTLS to the controller, names missing identity files instead of starting Envoy", () =>
    Effect.gen(function*() {
      const t = setup()
      const base = t.config({ restart: { maxCrashes: 1 } })
      const mtls: MeshConfig = {
        ...base,
        controller: { ...base.controller, xds: { ...base.controller.xds, tls: "mtls" } }
      }
      const { sidecar } = yield* start(mtls)
      const looped = yield* waitFor(sidecar, (s) => s.state === "crash-loop", "crash loop")
      assert.include(looped.crashLoop!, NodePath.join(t.dir, "certs", "workloads", "echo", "cert.pem"))
      assert.include(looped.crashLoop!, "mesh-controller certs issue --service echo")
      assert.deepStrictEqual(readEvents(t.events), [])
    }))

  it.scopedLive("on shutdown drains listeners, then SIGTERMs, leaving no process behind", () =>
    Effect.gen(function*() {
      const t = setup()
      const { scope, sidecar } = yield* start(t.config())
      const ready = yield* waitFor(sidecar, (s) => s.state === "ready", "ready")
      yield* Scope.close(scope, Exit.void)

      assert.isFalse(alive(ready.pid!))
      const mine = readEvents(t.events).filter((e) => e.pid === ready.pid).map((e) => e.event)
      const drained = mine.indexOf("drain_listeners")
      const signalled = mine.indexOf("signal")
      assert.isAtLeast(drained, 0)
      assert.isAbove(signalled, drained)
      assert.isTrue(readEvents(t.events).some((e) => e.event === "drain_listeners" && e.graceful === true))
      assert.strictEqual((yield* sidecar.status).state, "stopped")
    }))

  it.scopedLive("SIGKILLs an Envoy that ignores SIGTERM", () =>
    Effect.gen(function*() {
      const t = setup()
      const { scope, sidecar } = yield* start(t.config({ args: ["--standin-ignore-sigterm"] }))
      const ready = yield* waitFor(sidecar, (s) => s.state === "ready", "ready")
      yield* Scope.close(scope, Exit.void)

      assert.isFalse(alive(ready.pid!))
      const mine = readEvents(t.events).filter((e) => e.pid === ready.pid)
      assert.isTrue(mine.some((e) => e.event === "signal" && e.signal === "SIGTERM"))
      assert.isFalse(mine.some((e) => e.event === "exit"))
    }))

  it.effect("reports a config that cannot produce a bootstrap", () =>
    Effect.gen(function*() {
      const t = setup()
      const config = t.config()
      const broken: MeshConfig = { ...config, sidecar: { envoy: { ...config.sidecar.envoy, service: "nope" } } }
      const error = yield* Layer.build(
        Sidecar.layer({ preflight: preflight({ arch: "x64" }) }).pipe(Layer.provide(LiveConfig.layerMemory(broken)))
      ).pipe(
        Effect.scoped,
        Effect.flip
      )
      assert.strictEqual(error._tag, "SidecarConfigInvalid")
      assert.include(error.message, "unknown service \"nope\"")
    }))

  it.effect("layerConfig reports \"disabled\" when sidecar.envoy.enabled is false", () =>
    Effect.gen(function*() {
      const t = setup()
      const sidecar = yield* Sidecar.pipe(
        Effect.provide(Sidecar.layerConfig().pipe(Layer.provide(LiveConfig.layerMemory(t.config({ enabled: false })))))
      )
      assert.strictEqual((yield* sidecar.status).state, "disabled")
    }))
})
