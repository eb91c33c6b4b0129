import { FileSystem } from "@effect/platform"
import { NodeFileSystem } from "@effect/platform-node"
import { Context, Duration, Effect, Either, Layer, Option, Ref, Schedule, type Stream, SubscriptionRef } from "effect"
import { createHash } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import type { MeshConfig } from "../schemas/Config.js"
import { ConfigInvalid, ConfigIssue, ConfigUnreadable } from "../schemas/Errors.js"
import { parseConfigWithPolicy } from "../src/ConfigDocument.js"
import { describeErrno } from "../src/Errno.js"
import { compileConfig, type CompiledPolicy, type PolicyInvalid } from "../src/policy/Compile.js"
import * as Coalesce from "./internal/Coalesce.js"
import { configReloads } from "./Metrics.js"

/** The config in force, with where it came from. */
export interface LoadedConfig {
  readonly config: MeshConfig
  /**
   * Its policies, compiled once here (decoding a document had to compile them anyway). A file or
   * KV document whose policies do not compile is never loaded; a value given to `apply` may carry
   * a Left, which the Policy layer rejects.
   */
  readonly policy: Either.Either<CompiledPolicy, PolicyInvalid>
  /** sha256 of the source text: equal hashes mean nothing changed. */
  readonly hash: string
  readonly loadedAt: Date
  readonly source: string
}

/** What asked for a reload: the file watch, the periodic check, or a caller (`reload`, SIGHUP). */
export type ReloadTrigger = "watch" | "poll" | "request"

/** The outcome of the last attempt to reload. */
export type ReloadResult =
  | { readonly _tag: "Applied"; readonly at: Date; readonly hash: string }
  | { readonly _tag: "Unchanged"; readonly at: Date; readonly hash: string }
  | { readonly _tag: "Rejected"; readonly at: Date; readonly errors: ReadonlyArray<string> }

export interface ConfigStatus {
  readonly source: string
  readonly hash: string
  readonly loadedAt: string
  readonly lastReload: ReloadResult | null
}

/**
 * The decoded config and its changes. A reload that does not validate is rejected and the config
 * in force stays as it was.
 */
export class LiveConfig extends Context.Tag("mesh-controller/LiveConfig")<
  LiveConfig,
  {
    readonly get: Effect.Effect<LoadedConfig>
    /** The current config first, then every applied change. */
    readonly changes: Stream.Stream<LoadedConfig>
    /** Re-reads the source now (the file variant) and applies it if it is valid. */
    readonly reload: Effect.Effect<ReloadResult>
    /** Applies an already-decoded config (memory variant, tests, other sources). */
    readonly apply: (config: MeshConfig, source: string) => Effect.Effect<void>
    readonly status: Effect.Effect<ConfigStatus>
  }
>() {
  static readonly layer = (options: ConfigFileOptions): Layer.Layer<LiveConfig, ConfigInvalid | ConfigUnreadable> =>
    Layer.scoped(LiveConfig, makeFile(options).pipe(Effect.annotateLogs({ module: "config" }))).pipe(
      Layer.provide(NodeFileSystem.layer)
    )

  static readonly layerMemory = (config: MeshConfig): Layer.Layer<LiveConfig> =>
    Layer.effect(LiveConfig, makeMemory(config).pipe(Effect.annotateLogs({ module: "config" })))

  /**
   * SIGHUP reloads the config, as Consul and nginx do (Node's default for SIGHUP is to exit at
   * once, skipping every finalizer). The listener lives exactly as long as this layer; SIGTERM and
   * SIGINT stay with the runtime (runMain).
   */
  static readonly reloadOnSighup: Layer.Layer<never, never, LiveConfig> = Layer.scopedDiscard(
    Effect.gen(function*() {
      const config = yield* LiveConfig
      // Signals during a reload become one more reload (the one coalescing loop).
      const reloads = yield* Coalesce.make(
        Effect.logInfo("SIGHUP: reloading the config").pipe(
          Effect.zipRight(config.reload.pipe(Effect.withSpan("config.sighup"))),
          Effect.asVoid
        )
      )
      const onSignal = () => reloads.unsafeSignal()
      yield* Effect.acquireRelease(
        Effect.sync(() => process.on("SIGHUP", onSignal)),
        () => Effect.sync(() => process.off("SIGHUP", onSignal))
      )
    }).pipe(Effect.annotateLogs({ module: "config" }))
  )
}

export interface ConfigFileOptions {
  readonly path: string
  /** How long the file must be quiet before a reload (editors write in several steps). */
  readonly debounce?: Duration.DurationInput
  /** A slow periodic check that also catches changes a file watch can miss. */
  readonly pollInterval?: Duration.DurationInput
  /** Whether to watch the file at all (the `validate` command does not). */
  readonly watch?: boolean
}

const sha256 = (text: string) => createHash("sha256").update(text).digest("hex")

/** A config that did not come from a file's text (memory, other sources): hashed by its content. */
export const loadedValue = (config: MeshConfig, source: string): LoadedConfig => ({
  config,
  policy: compileConfig(config),
  hash: sha256(JSON.stringify(config)),
  loadedAt: new Date(),
  source
})

/** Reads and decodes a config file once; used at start, by `validate`, and by every reload. */
export const loadFile = (
  path: string
): Effect.Effect<LoadedConfig, ConfigInvalid | ConfigUnreadable, FileSystem.FileSystem> =>
  Effect.map(loadFileUnless(path, undefined), (loaded) => loaded!)

/**
 * `loadFile`, or `undefined` without decoding when the text hashes to `unchanged` (the config in
 * force): the periodic check reads the file every few seconds, and decoding 5,000 services costs
 * a second of CPU.
 */
const loadFileUnless = (
  path: string,
  unchanged: string | undefined
): Effect.Effect<LoadedConfig | undefined, ConfigInvalid | ConfigUnreadable, FileSystem.FileSystem> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const text = yield* fs.readFileString(path).pipe(
      Effect.mapError((error) => new ConfigUnreadable({ source: path, reason: describeErrno(error) }))
    )
    const hash = sha256(text)
    if (hash === unchanged) return undefined
    return yield* Effect.withSpan(
      Effect.map(
        Either.match(parseConfigWithPolicy(text, path), {
          onLeft: (error) => Effect.fail(error),
          onRight: (checked) => Effect.succeed(checked)
        }),
        ({ config, policy }): LoadedConfig => ({
          config,
          policy: Either.right(policy),
          hash,
          loadedAt: new Date(),
          source: path
        })
      ),
      "config.decode",
      { attributes: { source: path } }
    )
  })

const statusOf = (loaded: LoadedConfig, lastReload: Option.Option<ReloadResult>): ConfigStatus => ({
  source: loaded.source,
  hash: loaded.hash,
  loadedAt: loaded.loadedAt.toISOString(),
  lastReload: Option.getOrNull(lastReload)
})

const makeMemory = (initial: MeshConfig) =>
  Effect.gen(function*() {
    const current = yield* SubscriptionRef.make(loadedValue(initial, "memory"))
    const last = yield* Ref.make(Option.none<ReloadResult>())
    const apply = (config: MeshConfig, source: string) =>
      Effect.gen(function*() {
        const loaded = loadedValue(config, source)
        yield* SubscriptionRef.set(current, loaded)
        yield* Ref.set(last, Option.some({ _tag: "Applied", at: loaded.loadedAt, hash: loaded.hash }))
      })
    return LiveConfig.of({
      get: SubscriptionRef.get(current),
      changes: current.changes,
      reload: Effect.map(
        SubscriptionRef.get(current),
        (loaded) => ({ _tag: "Unchanged", at: new Date(), hash: loaded.hash })
      ),
      apply,
      status: Effect.zipWith(SubscriptionRef.get(current), Ref.get(last), statusOf)
    })
  })

const makeFile = (options: ConfigFileOptions) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = NodePath.resolve(options.path)
    const initial = yield* loadFile(path)
    const current = yield* SubscriptionRef.make(initial)
    const last = yield* Ref.make(Option.none<ReloadResult>())
    const withFs = Effect.provideService(FileSystem.FileSystem, fs)

    // Reloads are serialised so two events close together cannot apply out of order. Each runs in
    // a span (config.reload > config.decode, config.apply) named with what triggered it, and its
    // logs carry the new config's hash, which the Policy layer's logs carry too.
    const lock = yield* Effect.makeSemaphore(1)
    const reloadFrom = (trigger: ReloadTrigger): Effect.Effect<ReloadResult> =>
      lock.withPermits(1)(
        Effect.gen(function*() {
          // No input may end the reload loops: a defect in one attempt (a library throwing on
          // hostile input) is that attempt's rejection, reported like any other.
          const inForce = (yield* SubscriptionRef.get(current)).hash
          const attempt = yield* Effect.either(
            withFs(loadFileUnless(path, inForce)).pipe(Effect.catchAllDefect((defect) =>
              Effect.fail(
                new ConfigInvalid({
                  source: path,
                  issues: [new ConfigIssue({ path: "", message: `cannot process the file: ${defectLine(defect)}` })]
                })
              )
            ))
          )
          const at = new Date()
          const result: ReloadResult = yield* Either.match(attempt, {
            onLeft: (error) =>
              Effect.as(
                Effect.logError("config reload rejected; keeping the config in force").pipe(
                  Effect.annotateLogs({ source: path, errors: errorLines(error) })
                ),
                { _tag: "Rejected" as const, at, errors: errorLines(error) }
              ),
            onRight: (loaded) =>
              Effect.gen(function*() {
                const before = yield* SubscriptionRef.get(current)
                if (loaded === undefined) return { _tag: "Unchanged" as const, at, hash: inForce }
                if (before.hash === loaded.hash) return { _tag: "Unchanged" as const, at, hash: loaded.hash }
                yield* SubscriptionRef.set(current, loaded).pipe(
                  Effect.withSpan("config.apply", { attributes: { configHash: loaded.hash } })
                )
                yield* Effect.logInfo("config reloaded").pipe(
                  Effect.annotateLogs({ source: path, configHash: loaded.hash })
                )
                return { _tag: "Applied" as const, at, hash: loaded.hash }
              })
          })
          if (result._tag !== "Unchanged") {
            yield* Ref.set(last, Option.some(result))
            configReloads.inc({ result: result._tag === "Applied" ? "ok" : "failed" })
          }
          return result
        })
      ).pipe(
        // Whatever else goes wrong in one attempt, the attempt is rejected and the loops go on.
        Effect.catchAllDefect((defect) =>
          Effect.as(
            Effect.logError("config reload failed; keeping the config in force").pipe(
              Effect.annotateLogs({ source: path, errors: [defectLine(defect)] })
            ),
            { _tag: "Rejected" as const, at: new Date(), errors: [defectLine(defect)] }
          )
        ),
        // A tracing span, and the same name as a log span so the log lines show it too.
        Effect.withLogSpan("config.reload"),
        Effect.withSpan("config.reload", { attributes: { source: path, trigger } }),
        Effect.annotateLogs({ module: "config", trigger })
      )

    if (options.watch !== false) {
      const directory = NodePath.dirname(path)
      const name = NodePath.basename(path)
      // File events settle before a reload (editors write in several steps): the one coalescing loop.
      const events = yield* Coalesce.make(Effect.asVoid(reloadFrom("watch")), {
        settle: Effect.succeed({ quiet: options.debounce ?? Duration.millis(150) })
      })
      // Watch the directory, not the file: editors and config managers replace files by rename,
      // which would leave a watch on the old inode blind. The watch is registered before this
      // layer is ready, so no edit made after start can slip past it.
      yield* Effect.acquireRelease(
        Effect.sync(() => {
          const watcher = NodeFs.watch(directory, (_event, filename) => {
            if (filename === null || filename === name) events.unsafeSignal()
          })
          watcher.on("error", () => events.unsafeSignal())
          return watcher
        }),
        (watcher) => Effect.sync(() => watcher.close())
      )
      // A slow periodic check as well, for file systems whose change events do not arrive
      // (network mounts, some container bind mounts).
      const every = options.pollInterval ?? Duration.seconds(5)
      yield* reloadFrom("poll").pipe(Effect.repeat(Schedule.spaced(every)), Effect.delay(every), Effect.forkScoped)
    }

    return LiveConfig.of({
      get: SubscriptionRef.get(current),
      changes: current.changes,
      reload: reloadFrom("request"),
      apply: (config, source) => SubscriptionRef.set(current, loadedValue(config, source)),
      status: Effect.zipWith(SubscriptionRef.get(current), Ref.get(last), statusOf)
    })
  })

const defectLine = (defect: unknown): string =>
  (defect instanceof Error ? `${defect.name}: ${defect.message}` : String(defect)).split("\n")[0]!

const errorLines = (error: ConfigInvalid | ConfigUnreadable): ReadonlyArray<string> =>
  error._tag === "ConfigInvalid" ? error.issues.map((issue) => issue.toString()) : [error.message]
