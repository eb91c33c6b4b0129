import { Context, Duration, Effect, Either, Layer, Option, Ref, Schema, Stream, SubscriptionRef } from "effect"
import { createHash } from "node:crypto"
import { MeshConfig, Policies } from "../schemas/Config.js"
import { ConfigInvalid, ConfigIssue } from "../schemas/Errors.js"
import { decodeConfig, parseYaml } from "../src/ConfigDocument.js"
import { compileConfig } from "../src/policy/Compile.js"
import {
  blockingWatch,
  ConsulClient,
  type ConsulUnavailable,
  type RetryOptions,
  retrySchedule
} from "./ConsulClient.js"
import { policiesResults } from "./internal/DiscoveryMetrics.js"
import { LiveConfig, type LoadedConfig } from "./LiveConfig.js"

/**
 * Policies shared by several controllers through one Consul KV key (`discovery.consul.policiesKey`).
 * The value is the `policies` section of the config file (YAML or JSON: `traffic`, `security`).
 *
 * A value is checked exactly like a config reload: with the config in force (so it may only name
 * services that exist), every problem reported with its path. A bad value is rejected and the last
 * good one kept; a config reload re-checks the value against the new services. A missing key
 * means "no shared policies": `current` is None and the file's own `policies` apply. Consumers
 * (the policy/snapshot side) take `Some` over the file's section.
 */
export class ConsulPolicies extends Context.Tag("mesh-controller/ConsulPolicies")<
  ConsulPolicies,
  {
    /** The last good policies from the key; None without a key, while it is absent, or before any valid value. */
    readonly current: Effect.Effect<Option.Option<Policies>>
    /** The current value first, then every change. */
    readonly changes: Stream.Stream<Option.Option<Policies>>
    readonly status: Effect.Effect<ConsulPoliciesStatus>
  }
>() {
  static readonly layer = (
    options: ConsulPoliciesOptions = {}
  ): Layer.Layer<ConsulPolicies, never, LiveConfig | ConsulClient> =>
    Layer.scoped(ConsulPolicies, make(options).pipe(Effect.annotateLogs({ module: "consul" })))

  /**
   * The config as the rest of the controller should see it: the file's, with `policies` replaced
   * by the KV key's while it holds a valid value. Provide it in place of the file's `LiveConfig` to
   * the layers that read policy (Policy, Snapshot), so a shared policy reaches every controller.
   */
  static readonly configOverlay: Layer.Layer<LiveConfig, never, LiveConfig | ConsulPolicies> = Layer.scoped(
    LiveConfig,
    Effect.gen(function*() {
      const file = yield* LiveConfig
      const shared = yield* ConsulPolicies
      const effective = yield* SubscriptionRef.make(overlay(yield* file.get, yield* shared.current))
      yield* Stream.zipLatest(file.changes, shared.changes).pipe(
        Stream.runForEach(([loaded, policies]) => SubscriptionRef.set(effective, overlay(loaded, policies))),
        Effect.forkScoped
      )
      return LiveConfig.of({ ...file, get: SubscriptionRef.get(effective), changes: effective.changes })
    })
  )

  /** No shared policies. */
  static readonly layerNoop: Layer.Layer<ConsulPolicies> = Layer.succeed(
    ConsulPolicies,
    ConsulPolicies.of({
      current: Effect.succeedNone,
      changes: Stream.make(Option.none()),
      status: Effect.succeed({ enabled: false })
    })
  )
}

/** What `/status` shows under `consulPolicies`. */
export type ConsulPoliciesStatus =
  | { readonly enabled: false }
  | {
    readonly enabled: true
    readonly key: string
    /** Whose policies are in force. */
    readonly inForce: "consul-kv" | "config file"
    /** The last value read from the key and what became of it; null before the first answer. */
    readonly last: Outcome | null
    readonly consulError: string | null
  }

export interface ConsulPoliciesOptions {
  readonly retry?: RetryOptions
  readonly minQueryInterval?: Duration.DurationInput
}

export type Outcome =
  | { readonly _tag: "Applied"; readonly at: string }
  | { readonly _tag: "Rejected"; readonly at: string; readonly errors: ReadonlyArray<string> }
  | { readonly _tag: "Absent"; readonly at: string }

const encodeConfig = Schema.encodeSync(MeshConfig)

/** The KV text as the `policies` of the config in force: the whole document is decoded, as a reload would be. */
export const checkPolicies = (
  text: string,
  config: MeshConfig,
  source: string
): Either.Either<Policies, ConfigInvalid> => {
  return Either.flatMap(
    parseYaml(text, source),
    (value) =>
      value === null || typeof value !== "object" || Array.isArray(value)
        ? Either.left(
          new ConfigInvalid({
            source,
            issues: [new ConfigIssue({ path: "", message: "expected a policies mapping (traffic, security)" })]
          })
        )
        : Either.map(decodeConfig({ ...encodeConfig(config), policies: value }, source), (decoded) => decoded.policies)
  )
}

const overlay = (loaded: LoadedConfig, policies: Option.Option<Policies>): LoadedConfig =>
  Option.match(policies, {
    onNone: () => loaded,
    onSome: (shared) => ({
      ...loaded,
      config: { ...loaded.config, policies: shared },
      // A new config (the file's with the key's policies): compiled once, here.
      policy: compileConfig({ ...loaded.config, policies: shared }),
      hash: createHash("sha256").update(loaded.hash).update(JSON.stringify(Schema.encodeSync(Policies)(shared))).digest(
        "hex"
      ),
      source: `${loaded.source} (policies from Consul KV)`
    })
  })

const make = (options: ConsulPoliciesOptions) =>
  Effect.gen(function*() {
    const config = yield* LiveConfig
    const consulClient = yield* ConsulClient
    const settings = Option.getOrUndefined(consulClient.settings)
    const client = Option.getOrUndefined(consulClient.connection)
    const key = settings?.policiesKey
    const good = yield* SubscriptionRef.make(Option.none<Policies>())
    if (!settings || !client || key === undefined) {
      return ConsulPolicies.of({
        current: SubscriptionRef.get(good),
        changes: good.changes,
        status: Effect.succeed({ enabled: false })
      })
    }
    const source = `consul-kv:${key}`
    const raw = yield* Ref.make(Option.none<string>())
    const seen = yield* Ref.make(false)
    const outcome = yield* Ref.make<Outcome | null>(null)
    const lastError = yield* Ref.make<string | null>(null)

    const lock = yield* Effect.makeSemaphore(1)
    const evaluate = lock.withPermits(1)(Effect.gen(function*() {
      if (!(yield* Ref.get(seen))) return
      const at = new Date().toISOString()
      const text = yield* Ref.get(raw)
      if (Option.isNone(text)) {
        yield* SubscriptionRef.set(good, Option.none())
        yield* Ref.set(outcome, { _tag: "Absent", at })
        policiesResults.inc({ result: "absent" })
        return
      }
      const checked = checkPolicies(text.value, (yield* config.get).config, source)
      if (Either.isLeft(checked)) {
        const errors = checked.left.issues.map((issue) => issue.toString())
        yield* Ref.set(outcome, { _tag: "Rejected", at, errors })
        policiesResults.inc({ result: "rejected" })
        yield* Effect.logError("policies from Consul KV rejected; keeping the last good ones").pipe(
          Effect.annotateLogs({ source, errors })
        )
        return
      }
      yield* SubscriptionRef.set(good, Option.some(checked.right))
      yield* Ref.set(outcome, { _tag: "Applied", at })
      policiesResults.inc({ result: "applied" })
    }))

    yield* Effect.forkScoped(blockingWatch(client, {
      name: `kv.get ${key}`,
      wait: settings.watchWait,
      minInterval: options.minQueryInterval ?? Duration.millis(50),
      schedule: retrySchedule(options.retry),
      query: (blocking) => (ctx) => client.consul.kv.get({ key, ...blocking, ctx } as { key: string }),
      decode: (body) => {
        if (body === undefined || body === null) return Either.right(Option.none<string>())
        const value = (body as { Value?: unknown }).Value
        return typeof value === "string" || value === null || value === undefined
          ? Either.right(Option.some(value ?? ""))
          : Either.left("the KV entry has no text value")
      },
      onChange: (value) => Ref.set(raw, value).pipe(Effect.zipRight(Ref.set(seen, true)), Effect.zipRight(evaluate)),
      onError: (error: ConsulUnavailable) => Ref.set(lastError, error.reason),
      onSuccess: Ref.set(lastError, null)
    }))
    yield* config.changes.pipe(Stream.drop(1), Stream.runForEach(() => evaluate), Effect.forkScoped)

    return ConsulPolicies.of({
      current: SubscriptionRef.get(good),
      changes: good.changes,
      status: Effect.gen(function*() {
        return {
          enabled: true as const,
          key,
          inForce: Option.isSome(yield* SubscriptionRef.get(good)) ? "consul-kv" : "config file",
          last: yield* Ref.get(outcome),
          consulError: yield* Ref.get(lastError)
        }
      })
    })
  })
