import { Clock, Context, Effect, Either, Layer, Option, Ref, Stream, SubscriptionRef, type Tracer } from "effect"
import type { MeshState } from "../src/MeshState.js"
import type { PolicyInvalid } from "../src/policy/Compile.js"
import { composeMeshState } from "../src/xds/Compose.js"
import { isKnownType, shortType } from "../src/xds/TypeUrls.js"
import { buildSnapshot, emptySnapshot, type XdsSnapshot } from "../src/xds/XdsSnapshot.js"
import { Discovery } from "./Discovery.js"
import { Health, type HealthView } from "./Health.js"
import * as Coalesce from "./internal/Coalesce.js"
import {
  snapshotBuilds as builds,
  snapshotBuildSeconds as buildSeconds,
  snapshotResources as resourcesGauge,
  snapshotServiceErrors as serviceErrors
} from "./internal/XdsMetrics.js"
import { LiveConfig } from "./LiveConfig.js"

/** A snapshot and when it was published (epoch ms, for push latency). */
export interface Published {
  readonly snapshot: XdsSnapshot
  readonly publishedAt: number
  /** The rebuild's span: each stream's push of this snapshot runs in a child span of it. */
  readonly span?: Tracer.AnySpan
}

export interface SnapshotStatus {
  readonly version: string
  readonly publishedAt: string | null
  readonly builds: number
  readonly resources: Readonly<Record<string, number>>
  readonly errors: ReadonlyArray<
    { readonly service: string; readonly message: string; readonly servingPrevious: boolean }
  >
}

/**
 * SDS secrets by resource name, as plain `envoy.extensions.transport_sockets.tls.v3.Secret`
 * objects without `name` (see `MeshState.secrets`). The current secrets first, then every change.
 */
export class SnapshotSecrets extends Context.Tag("mesh-controller/SnapshotSecrets")<
  SnapshotSecrets,
  { readonly changes: Stream.Stream<NonNullable<MeshState["secrets"]>> }
>() {}

/**
 * The xDS resources the controller serves, rebuilt from LiveConfig, Discovery, Health (and SDS secrets
 * when a `SnapshotSecrets` source is wired) whenever one of them changes, after a quiet window
 * (`controller.debounce.quiet`, default 100 ms) but never later than `controller.debounce.max`
 * (default 1 s) after the first change of a burst. Only a snapshot whose content changed is
 * published.
 */
export class Snapshot extends Context.Tag("mesh-controller/Snapshot")<
  Snapshot,
  {
    readonly current: Effect.Effect<Published>
    /** The current snapshot first, then every published one. */
    readonly changes: Stream.Stream<Published>
    readonly status: Effect.Effect<SnapshotStatus>
  }
>() {
  static readonly layer: Layer.Layer<Snapshot, PolicyInvalid, LiveConfig | Discovery | Health> = Layer.scoped(
    Snapshot,
    Effect.suspend(() => make(Option.none()))
  )

  /** Also serves the secrets of a `SnapshotSecrets` source (the Certificates layer) over SDS. */
  static readonly layerWithSecrets: Layer.Layer<
    Snapshot,
    PolicyInvalid,
    LiveConfig | Discovery | Health | SnapshotSecrets
  > = Layer
    .scoped(
      Snapshot,
      Effect.flatMap(SnapshotSecrets, (secrets) => make(Option.some(secrets.changes)))
    )

  /** A snapshot the test sets directly (`SubscriptionRef.set`). */
  static readonly layerMemory = (ref: SubscriptionRef.SubscriptionRef<Published>): Layer.Layer<Snapshot> =>
    Layer.succeed(
      Snapshot,
      Snapshot.of({
        current: SubscriptionRef.get(ref),
        changes: ref.changes,
        status: Effect.map(SubscriptionRef.get(ref), (p) => statusOf(p, 0))
      })
    )
}

/** Two snapshots with the same resources but different build errors must still be told apart. */
const errorsKey = (snapshot: XdsSnapshot): string =>
  snapshot.errors.map((error) => `${error.service}\u0000${error.message}`).join("\n")

const statusOf = (published: Published, count: number): SnapshotStatus => ({
  version: published.snapshot.version,
  publishedAt: published.publishedAt === 0 ? null : new Date(published.publishedAt).toISOString(),
  builds: count,
  resources: Object.fromEntries(
    [...published.snapshot.resources].flatMap(([url, r]) => (isKnownType(url) ? [[shortType(url), r.size]] : []))
  ),
  errors: published.snapshot.errors
})

export const make = (secretsSource: Option.Option<Stream.Stream<NonNullable<MeshState["secrets"]>>>) =>
  Effect.gen(function*() {
    const config = yield* LiveConfig
    const discovery = yield* Discovery
    const health = yield* Health

    // The policy comes compiled with its config (`LoadedConfig.policy`, once per config). A config
    // whose policy does not compile changes no policy, here as in the Policy layer (which reports it).
    const loaded = yield* config.get
    const inputs = yield* Ref.make({
      config: loaded.config,
      policy: yield* loaded.policy,
      services: yield* discovery.services,
      health: (yield* health.view) as HealthView,
      secrets: new Map() as NonNullable<MeshState["secrets"]>
    })
    const count = yield* Ref.make(0)

    const rebuild = (previous: XdsSnapshot) =>
      Effect.gen(function*() {
        const i = yield* Ref.get(inputs)
        const start = yield* Clock.currentTimeMillis
        const snapshot = buildSnapshot(composeMeshState(i.config, i.policy, i.services, i.health, i.secrets), previous)
        const at = yield* Clock.currentTimeMillis
        buildSeconds.observe((at - start) / 1000)
        yield* Ref.update(count, (n) => n + 1)
        const span = Option.getOrUndefined(yield* Effect.option(Effect.currentSpan))
        return { snapshot, publishedAt: at, ...(span !== undefined ? { span } : {}) }
      }).pipe(Effect.withSpan("snapshot.rebuild"))

    const first = yield* rebuild(emptySnapshot)
    const ref = yield* SubscriptionRef.make<Published>(first)
    const report = (published: Published) =>
      Effect.gen(function*() {
        serviceErrors.set(published.snapshot.errors.length)
        for (const [url, resources] of published.snapshot.resources) {
          if (isKnownType(url)) resourcesGauge.set({ type: shortType(url) }, resources.size)
        }
        for (const error of published.snapshot.errors) {
          yield* Effect.logError("cannot build a service's resources").pipe(
            Effect.annotateLogs({
              service: error.service,
              reason: error.message,
              servingPrevious: error.servingPrevious
            })
          )
        }
      })
    yield* report(first)

    // Every input change is a signal; the rebuild runs once they settle (controller.debounce:
    // quiet, but never later than max after the first).
    const rebuildAndPublish = Effect.gen(function*() {
      const previous = yield* SubscriptionRef.get(ref)
      const next = yield* rebuild(previous.snapshot)
      const changed = next.snapshot.version !== previous.snapshot.version ||
        errorsKey(next.snapshot) !== errorsKey(previous.snapshot)
      builds.inc({ changed: String(changed) })
      if (changed) {
        yield* SubscriptionRef.set(ref, next)
        yield* report(next)
        yield* Effect.logDebug("snapshot published").pipe(Effect.annotateLogs({ version: next.snapshot.version }))
      }
    })
    const rebuilds = yield* Coalesce.make(rebuildAndPublish, {
      settle: Effect.map(Ref.get(inputs), (i) => i.config.controller.debounce)
    })
    const feed = <A>(stream: Stream.Stream<A>, set: (a: A) => Effect.Effect<void>) =>
      stream.pipe(Stream.runForEach((a) => Effect.zipRight(set(a), rebuilds.signal)), Effect.forkScoped)
    yield* feed(
      config.changes,
      (loaded) =>
        Ref.update(inputs, (i) => ({
          ...i,
          config: loaded.config,
          policy: Either.getOrElse(loaded.policy, () => i.policy)
        }))
    )
    yield* feed(discovery.changes, (services) => Ref.update(inputs, (i) => ({ ...i, services })))
    yield* feed(health.changes, (view) => Ref.update(inputs, (i) => ({ ...i, health: view })))
    if (Option.isSome(secretsSource)) {
      yield* feed(secretsSource.value, (secrets) => Ref.update(inputs, (i) => ({ ...i, secrets })))
    }

    return Snapshot.of({
      current: SubscriptionRef.get(ref),
      changes: ref.changes,
      status: Effect.zipWith(SubscriptionRef.get(ref), Ref.get(count), statusOf)
    })
  }).pipe(Effect.annotateLogs({ module: "snapshot" }))
