import { Context, Effect, Either, Layer, Ref, Stream, SubscriptionRef } from "effect"
import type { MeshConfig } from "../schemas/Config.js"
import { authorize, type AuthzRequest, type Decision } from "../src/policy/Authorize.js"
import type { CompiledPolicy, PolicyInvalid } from "../src/policy/Compile.js"
import { LiveConfig } from "./LiveConfig.js"
import { counter, gauge } from "./Metrics.js"

/** The compiled policy in force, with where it came from. */
export interface PolicyInForce {
  readonly policy: CompiledPolicy
  /** The hash of the config it was compiled from (see `LoadedConfig.hash`). */
  readonly configHash: string
  readonly compiledAt: Date
}

export interface PolicyStatus {
  readonly configHash: string
  readonly compiledAt: string
  readonly defaultAction: "allow" | "deny"
  readonly mtls: "strict" | "permissive"
  readonly authorizationRules: number
  readonly trafficPolicies: number
  readonly resiliencePolicies: number
  readonly warnings: ReadonlyArray<string>
  /** The last config whose policies did not compile (and were not applied); null once one compiles. */
  readonly lastRejected:
    | { readonly at: string; readonly configHash: string; readonly issues: ReadonlyArray<string> }
    | null
}

/**
 * Compiled traffic, security, resilience and observability policy, and authorization decisions.
 * Recompiled on every config change; a config whose policies do not compile is rejected (the
 * previous compiled policy stays in force, /status says why), like a bad reload.
 */
export class Policy extends Context.Tag("mesh-controller/Policy")<
  Policy,
  {
    readonly current: Effect.Effect<PolicyInForce>
    /** The current policy first, then every newly compiled one. */
    readonly changes: Stream.Stream<PolicyInForce>
    /** Whether `from` (a service name, a SPIFFE ID, or undefined: unauthenticated) may make `request` to `to`. */
    readonly authorize: (from: string | undefined, to: string, request?: AuthzRequest) => Effect.Effect<Decision>
    readonly status: Effect.Effect<PolicyStatus>
  }
>() {
  /** Follows `LiveConfig`; fails at startup when the config's policies do not compile. */
  static readonly layer: Layer.Layer<Policy, PolicyInvalid, LiveConfig> = Layer.scoped(
    Policy,
    Effect.suspend(() => make).pipe(Effect.annotateLogs({ module: "policy" }))
  )

  /** A fixed policy compiled from `config` (tests, `policy check`). */
  static readonly layerMemory = (config: MeshConfig): Layer.Layer<Policy, PolicyInvalid> =>
    Layer.scoped(
      Policy,
      make.pipe(Effect.provide(LiveConfig.layerMemory(config)), Effect.annotateLogs({ module: "policy" }))
    )
}

const compilations = counter(
  "mesh_controller_policy_compilations_total",
  "Policy compilations by result (ok, rejected).",
  ["result"]
)
const rulesGauge = gauge("mesh_controller_policy_authorization_rules", "Authorization rules in the policy in force.")
const warningsGauge = gauge(
  "mesh_controller_policy_warnings",
  "Warnings (such as shadowed routes) in the policy in force."
)
const decisions = counter(
  "mesh_controller_policy_decisions_total",
  "Authorization decisions made through the Policy service.",
  ["decision"]
)

const published = (inForce: PolicyInForce) => {
  compilations.inc({ result: "ok" })
  rulesGauge.set(inForce.policy.ruleCount)
  warningsGauge.set(inForce.policy.warnings.length)
}

type Rejected = NonNullable<PolicyStatus["lastRejected"]>

const make = Effect.gen(function*() {
  const config = yield* LiveConfig
  const loaded = yield* config.get
  // Compiled where the config was loaded (`LoadedConfig.policy`): once per config.
  const first = yield* Either.match(loaded.policy, {
    onLeft: (error) => Effect.zipRight(Effect.sync(() => compilations.inc({ result: "rejected" })), Effect.fail(error)),
    onRight: (policy) => Effect.succeed({ policy, configHash: loaded.hash, compiledAt: new Date() })
  })
  published(first)
  for (const warning of first.policy.warnings) yield* Effect.logWarning(warning.toString())
  const current = yield* SubscriptionRef.make<PolicyInForce>(first)
  const rejected = yield* Ref.make<Rejected | null>(null)

  yield* config.changes.pipe(
    // `changes` starts with the config in force: only configs other than the policy's source matter.
    Stream.filterEffect((next) =>
      Effect.map(SubscriptionRef.get(current), (inForce) => inForce.configHash !== next.hash)
    ),
    Stream.runForEach((next) =>
      Either.match(next.policy, {
        onLeft: (error) =>
          Effect.zipRight(
            Effect.sync(() => compilations.inc({ result: "rejected" })),
            Effect.zipRight(
              Ref.set(rejected, {
                at: new Date().toISOString(),
                configHash: next.hash,
                issues: error.issues.map(String)
              }),
              Effect.logWarning(`kept the policy in force; the new one is rejected: ${error.message}`)
            )
          ),
        onRight: (policy) => {
          const inForce = { policy, configHash: next.hash, compiledAt: new Date() }
          return Effect.sync(() => published(inForce)).pipe(
            Effect.zipRight(SubscriptionRef.set(current, inForce)),
            Effect.zipRight(Ref.set(rejected, null)),
            Effect.zipRight(Effect.forEach(policy.warnings, (w) => Effect.logWarning(w.toString()), { discard: true }))
          )
        }
      }).pipe(
        Effect.withLogSpan("policy.apply"),
        Effect.withSpan("policy.apply", { attributes: { configHash: next.hash } }),
        Effect.annotateLogs({ configHash: next.hash })
      )
    ),
    Effect.forkScoped
  )

  return Policy.of({
    current: SubscriptionRef.get(current),
    changes: current.changes,
    authorize: (from, to, request) =>
      Effect.map(SubscriptionRef.get(current), (inForce) => {
        const decision = authorize(inForce.policy, from, to, request)
        decisions.inc({ decision: decision.allowed ? "allow" : "deny" })
        return decision
      }),
    status: Effect.zipWith(SubscriptionRef.get(current), Ref.get(rejected), (inForce, lastRejected): PolicyStatus => ({
      configHash: inForce.configHash,
      compiledAt: inForce.compiledAt.toISOString(),
      defaultAction: inForce.policy.defaultAction,
      mtls: inForce.policy.mtls,
      authorizationRules: inForce.policy.ruleCount,
      trafficPolicies: inForce.policy.traffic.size,
      resiliencePolicies: inForce.policy.resilience.size,
      warnings: inForce.policy.warnings.map(String),
      lastRejected
    }))
  })
})
