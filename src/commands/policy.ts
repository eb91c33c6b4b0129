/**
 * `policy check --config FILE --from A --to B [--method M] [--path P] [--port N] [--header k=v ...]`:
 * "why was this request denied?" answered from the same compiled policy the controller enforces.
 *
 * Prints the decision and the rule that decided. Exit codes: 0 allow; 3 deny (`PolicyDenied`
 * carries `exitCode: 3`); 1 a config or policy problem; 2 a usage error. The command line itself
 * (options, help) is in policyCommand.ts, which loads this module when the command runs.
 */
import { Console, Effect, Either, HashMap, Option, Schema } from "effect"
import type { MeshConfig } from "../../schemas/Config.js"
import { authorize, type AuthzRequest, callerIdentity, type Decision, describeDecision } from "../policy/Authorize.js"
import { compileConfig, type CompiledPolicy, type PolicyInvalid } from "../policy/Compile.js"

/** The request was denied: a result, not a failure, but the exit code must say so. */
export class PolicyDenied extends Schema.TaggedError<PolicyDenied>()("PolicyDenied", {
  to: Schema.String,
  rule: Schema.NullOr(Schema.String)
}) {
  /** The process exit code for a deny (0 is allow, 1 a user error, 2 a usage error). */
  readonly exitCode = 3
  override get message(): string {
    return this.rule === null
      ? `request to "${this.to}" denied`
      : `request to "${this.to}" denied by rule "${this.rule}"`
  }
}

export class PolicyCheckInvalid extends Schema.TaggedError<PolicyCheckInvalid>()("PolicyCheckInvalid", {
  reason: Schema.String
}) {
  override get message(): string {
    return this.reason
  }
}

export interface CheckInput {
  readonly from: string
  readonly to: string
  readonly request: AuthzRequest
}

/** The lines `policy check` prints for one decision. */
export const formatCheck = (policy: CompiledPolicy, input: CheckInput, decision: Decision): string => {
  const r = input.request
  const what = [r.method ?? "(any method)", r.path ?? "(no path)", r.port === undefined ? "" : `port ${r.port}`]
    .filter((s) => s !== "")
    .join(" ")
  const headers = Object.entries(r.headers ?? {}).map(([k, v]) => `${k}=${v}`).join(" ")
  return [
    describeDecision(policy, decision, input.to),
    `  from ${callerIdentity(policy, input.from)} to ${input.to}: ${what}${headers === "" ? "" : ` [${headers}]`}`
  ].join("\n")
}

/** Decides `input` with `config`'s compiled policies (compiled here unless given); the printed text and the decision. */
export const checkConfig = (
  config: MeshConfig,
  input: CheckInput,
  compiled: Either.Either<CompiledPolicy, PolicyInvalid> = compileConfig(config)
): Either.Either<
  { readonly text: string; readonly decision: Decision; readonly warnings: ReadonlyArray<string> },
  PolicyCheckInvalid
> => {
  if (!config.services.some((s) => s.name === input.to)) {
    return Either.left(new PolicyCheckInvalid({ reason: `--to: unknown service "${input.to}"` }))
  }
  if (!input.from.startsWith("spiffe://") && !config.services.some((s) => s.name === input.from)) {
    return Either.left(
      new PolicyCheckInvalid({
        reason: `--from: unknown service "${input.from}" (give a service name or a spiffe:// ID)`
      })
    )
  }
  return Either.match(compiled, {
    onLeft: (error) => Either.left(new PolicyCheckInvalid({ reason: error.message })),
    onRight: (policy) => {
      const decision = authorize(policy, input.from, input.to, input.request)
      return Either.right({
        text: formatCheck(policy, input, decision),
        decision,
        warnings: policy.warnings.map(String)
      })
    }
  })
}

/** What `policy check` is given on the command line. */
export interface CheckArgs {
  readonly config: string
  readonly from: string
  readonly to: string
  readonly method: Option.Option<string>
  readonly path: Option.Option<string>
  readonly port: Option.Option<number>
  readonly header: Option.Option<HashMap.HashMap<string, string>>
}

/** `policy check`: prints the decision (and the policy's warnings); a deny fails with `PolicyDenied` (exit 3). */
export const checkCommand = (args: CheckArgs) =>
  Effect.gen(function*() {
    // The config loader is imported when the command runs, not when the CLI starts (start-up).
    const { loadFile } = yield* Effect.promise(() => import("../../layers/LiveConfig.js"))
    const loaded = yield* loadFile(args.config)
    const request: AuthzRequest = {
      method: Option.getOrUndefined(args.method),
      path: Option.getOrUndefined(args.path),
      port: Option.getOrUndefined(args.port),
      headers: Option.match(args.header, {
        onNone: () => undefined,
        onSome: (map) => Object.fromEntries(HashMap.toEntries(map))
      })
    }
    const result = yield* checkConfig(loaded.config, { from: args.from, to: args.to, request }, loaded.policy)
    for (const warning of result.warnings) yield* Console.error(`warning: ${warning}`)
    yield* Console.log(result.text)
    if (!result.decision.allowed) {
      return yield* Effect.fail(new PolicyDenied({ to: args.to, rule: result.decision.rule }))
    }
  })
