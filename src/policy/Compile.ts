/**
 * Policy compilation: the `policies` section, checked against the service catalogue, turned into a
 * form that answers authorization questions without re-reading the config (rules grouped by
 * target service and split by action, peers as a set of SPIFFE IDs, conditions as matchers) and
 * that the xDS builders read (traffic, resilience and observability by service).
 *
 * Pure: no layers, no I/O. A problem is reported with the policy's name and the exact field; a
 * route that can never be reached (an earlier route takes all its requests) is a warning.
 */
import { Duration, Either, Schema } from "effect"
import type {
  AuthorizationRule,
  MeshConfig,
  Observability,
  PathMatch,
  Peer,
  Policies,
  ResiliencePolicy,
  Route,
  RouteMatch,
  TrafficPolicy
} from "../../schemas/Config.js"
import { serviceId } from "../../schemas/Identity.js"
import { re2Problem } from "../../schemas/Regex.js"
import { type Glob, parseGlob } from "./Match.js"

/** One problem (or warning) in the policies: which policy, which field, and why. */
export class PolicyIssue extends Schema.Class<PolicyIssue>("PolicyIssue")({
  policy: Schema.String,
  field: Schema.String,
  message: Schema.String,
  /**
   * "catalogue": how a policy relates to the services (an unknown service, a second policy for one
   * service, HTTP conditions on a tcp service); the message names the service, so a config
   * document reports it by its path alone, as it reports other references. "rule": inside one
   * policy, reported with the policy's name.
   */
  kind: Schema.optionalWith(Schema.Literal("catalogue", "rule"), { default: () => "rule" as const })
}) {
  override toString(): string {
    return `${this.field} (policy "${this.policy}"): ${this.message}`
  }
}

/** Policies that cannot be compiled; the policy in force stays as it was. */
export class PolicyInvalid extends Schema.TaggedError<PolicyInvalid>()("PolicyInvalid", {
  issues: Schema.Array(PolicyIssue)
}) {
  override get message(): string {
    const count = this.issues.length === 1 ? "1 problem" : `${this.issues.length} problems`
    return `policies: ${count}\n${this.issues.map((issue) => `  ${issue.toString()}`).join("\n")}`
  }
}

export type Action = "allow" | "deny"

export interface CompiledRule {
  readonly name: string
  /** Position in policies.security.authorization, for messages. */
  readonly index: number
  readonly action: Action
  readonly to: string
  /** SPIFFE IDs allowed as callers; "any" when the rule names no peers (any caller, even unauthenticated). */
  readonly principals: ReadonlySet<string> | "any"
  /** Upper-case HTTP methods; absent: any. */
  readonly methods: ReadonlySet<string> | undefined
  readonly paths: ReadonlyArray<Glob> | undefined
  readonly ports: ReadonlySet<number> | undefined
  /** Lower-case header names with their value globs; all must match. */
  readonly headers: ReadonlyArray<readonly [string, Glob]> | undefined
}

export interface TargetRules {
  readonly deny: ReadonlyArray<CompiledRule>
  readonly allow: ReadonlyArray<CompiledRule>
}

export interface CompiledPolicy {
  readonly trustDomain: string
  readonly mtls: "strict" | "permissive"
  readonly defaultAction: Action
  /** Authorization rules by target service. */
  readonly rules: ReadonlyMap<string, TargetRules>
  readonly ruleCount: number
  readonly traffic: ReadonlyMap<string, TrafficPolicy>
  readonly resilience: ReadonlyMap<string, ResiliencePolicy>
  readonly observability: Observability
  readonly warnings: ReadonlyArray<PolicyIssue>
}

export interface Catalogue {
  readonly trustDomain: string
  readonly services: Iterable<string>
  /** Services whose protocol is tcp: their rules can only name callers and ports. */
  readonly tcpServices?: Iterable<string>
}

export const principalOf = (trustDomain: string, peer: Peer): string =>
  "service" in peer ? serviceId(trustDomain, peer.service) : peer.principal

const HTTP_METHODS = new Set(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"])

/** Compiles the config's policies against the config's own services. */
export const compileConfig = (config: MeshConfig): Either.Either<CompiledPolicy, PolicyInvalid> =>
  compilePolicies(config.policies, {
    trustDomain: config.mesh.trustDomain,
    services: config.services.map((s) => s.name),
    tcpServices: config.services.filter((s) => s.protocol === "tcp").map((s) => s.name)
  })

export const compilePolicies = (
  policies: Policies,
  catalogue: Catalogue
): Either.Either<CompiledPolicy, PolicyInvalid> => {
  const { issues, policy } = compileAll(
    policies,
    catalogue.trustDomain,
    new Set(catalogue.services),
    new Set(catalogue.tcpServices ?? [])
  )
  return issues.length > 0 ? Either.left(new PolicyInvalid({ issues })) : Either.right(policy)
}

/**
 * Compiles without checking names against a service catalogue, for a config already checked
 * (`MeshState.fromConfig`, tests and benchmarks). The daemon compiles each config once, where it is
 * loaded (`LoadedConfig.policy`), and the snapshot takes the Policy layer's result.
 */
export const compileUnchecked = (config: MeshConfig): CompiledPolicy =>
  compileAll(config.policies, config.mesh.trustDomain, undefined, new Set()).policy

/** Compiles everything it can and lists every problem; `known` undefined skips the service checks. */
const compileAll = (
  policies: Policies,
  trustDomain: string,
  known: ReadonlySet<string> | undefined,
  tcp: ReadonlySet<string>
): { readonly policy: CompiledPolicy; readonly issues: ReadonlyArray<PolicyIssue> } => {
  const catalogue = { trustDomain }
  const issues: Array<PolicyIssue> = []
  const warnings: Array<PolicyIssue> = []
  const issue = (policy: string, field: string, message: string) =>
    issues.push(new PolicyIssue({ policy, field, message }))
  const catalogueIssue = (policy: string, field: string, message: string) =>
    issues.push(new PolicyIssue({ policy, field, message, kind: "catalogue" }))
  const service = (policy: string, field: string, name: string) => {
    if (known !== undefined && !known.has(name)) catalogueIssue(policy, field, `unknown service "${name}"`)
  }

  const traffic = new Map<string, TrafficPolicy>()
  const trafficAt = new Map<string, number>()
  const trafficNames = new Map<string, number>()
  policies.traffic.forEach((policy, i) => {
    const base = `policies.traffic[${i}]`
    const named = trafficNames.get(policy.name)
    if (named !== undefined) {
      issue(policy.name, `${base}.name`, `duplicate traffic policy name (first defined at policies.traffic[${named}])`)
    } else trafficNames.set(policy.name, i)
    service(policy.name, `${base}.service`, policy.service)
    const seen = trafficAt.get(policy.service)
    if (seen !== undefined) {
      const message =
        `service "${policy.service}" already has a traffic policy (policies.traffic[${seen}]); merge their routes into one`
      catalogueIssue(policy.name, `${base}.service`, message)
    } else {
      trafficAt.set(policy.service, i)
      traffic.set(policy.service, policy)
    }
    policy.routes.forEach((route, r) => checkRoute(policy.name, `${base}.routes[${r}]`, route, service, issue))
    for (const warning of shadowedRoutes(policy, base)) warnings.push(warning)
  })

  const rules = new Map<string, { deny: Array<CompiledRule>; allow: Array<CompiledRule> }>()
  const ruleAt = new Map<string, number>()
  const denyKeys = new Map<string, number>()
  const keyOf = (rule: AuthorizationRule) =>
    JSON.stringify([rule.to, rule.from.map((p) => principalOf(catalogue.trustDomain, p)).sort(), rule.when ?? null])
  policies.security.authorization.forEach((rule, i) => {
    if (rule.action === "deny" && !denyKeys.has(keyOf(rule))) denyKeys.set(keyOf(rule), i)
  })
  policies.security.authorization.forEach((rule, i) => {
    const base = `policies.security.authorization[${i}]`
    const seen = ruleAt.get(rule.name)
    if (seen !== undefined) {
      issue(
        rule.name,
        `${base}.name`,
        `duplicate rule name (first defined at policies.security.authorization[${seen}])`
      )
    } else ruleAt.set(rule.name, i)
    service(rule.name, `${base}.to`, rule.to)
    rule.from.forEach((peer, p) => {
      if ("service" in peer) service(rule.name, `${base}.from[${p}].service`, peer.service)
    })
    const deny = rule.action === "allow" ? denyKeys.get(keyOf(rule)) : undefined
    if (deny !== undefined) {
      issue(
        rule.name,
        base,
        `conflicts with deny rule at policies.security.authorization[${deny}]: same callers, target and conditions, so it never allows anything`
      )
    }
    const when = rule.when
    if (tcp.has(rule.to) && (when?.methods !== undefined || when?.paths !== undefined || when?.headers !== undefined)) {
      // Envoy's network RBAC sees connections, not requests: such a rule could not be enforced.
      catalogueIssue(
        rule.name,
        `${base}.when`,
        `service "${rule.to}" speaks tcp: a rule for it can only name callers (from) and ports`
      )
    }
    const compiled = compileRule(rule, i, catalogue.trustDomain, base, issue)
    const group = rules.get(rule.to) ?? { deny: [], allow: [] }
    group[rule.action].push(compiled)
    rules.set(rule.to, group)
  })

  const resilience = new Map<string, ResiliencePolicy>()
  policies.resilience.forEach((policy, i) => {
    const base = `policies.resilience[${i}]`
    const name = `resilience of ${policy.service}`
    service(name, `${base}.service`, policy.service)
    if (resilience.has(policy.service)) {
      catalogueIssue(
        name,
        `${base}.service`,
        `service "${policy.service}" already has a resilience policy; merge them into one`
      )
    } else resilience.set(policy.service, policy)
  })

  return {
    issues,
    policy: {
      trustDomain: catalogue.trustDomain,
      mtls: policies.security.mtls,
      defaultAction: policies.security.defaultAction,
      rules,
      ruleCount: policies.security.authorization.length,
      traffic,
      resilience,
      observability: policies.observability,
      warnings
    }
  }
}

type Report = (policy: string, field: string, message: string) => void

const checkRegex = (policy: string, field: string, pattern: string, issue: Report) => {
  const problem = re2Problem(pattern)
  if (problem !== undefined) {
    issue(policy, field, `RE2 (Envoy's regex engine) rejects ${JSON.stringify(pattern)}: ${problem}`)
  }
}

const checkRoute = (
  policy: string,
  base: string,
  route: Route,
  service: (policy: string, field: string, name: string) => void,
  issue: Report
) => {
  route.destinations.forEach((d, j) => service(policy, `${base}.destinations[${j}].service`, d.service))
  if (route.mirror !== undefined) service(policy, `${base}.mirror.service`, route.mirror.service)
  const match = route.match
  if (match?.path?.regex !== undefined) checkRegex(policy, `${base}.match.path.regex`, match.path.regex, issue)
  match?.headers.forEach((h, j) => {
    if (h.regex !== undefined) checkRegex(policy, `${base}.match.headers[${j}].regex`, h.regex, issue)
  })
  if (match?.path !== undefined && match.grpc !== undefined) {
    issue(policy, `${base}.match`, "give path or grpc, not both")
  }
  const backoff = route.retries?.backoff
  if (backoff?.maxInterval !== undefined && Duration.lessThan(backoff.maxInterval, backoff.baseInterval)) {
    issue(policy, `${base}.retries.backoff.maxInterval`, "must not be shorter than baseInterval")
  }
}

const compileRule = (
  rule: AuthorizationRule,
  index: number,
  trustDomain: string,
  base: string,
  issue: Report
): CompiledRule => {
  const when = rule.when
  const globs = (field: string, values: ReadonlyArray<string>) =>
    values.flatMap((value, j) => {
      const glob = parseGlob(value)
      if (typeof glob === "string") {
        issue(rule.name, `${base}.when.${field}[${j}]`, glob)
        return []
      }
      return [glob]
    })
  when?.methods?.forEach((method, j) => {
    if (!HTTP_METHODS.has(method.toUpperCase())) {
      issue(rule.name, `${base}.when.methods[${j}]`, `unknown HTTP method "${method}"`)
    }
  })
  when?.paths?.forEach((path, j) => {
    if (!path.startsWith("/") && !path.startsWith("*")) {
      issue(
        rule.name,
        `${base}.when.paths[${j}]`,
        `expected a path starting with "/" (or a "*" suffix form), got "${path}"`
      )
    }
  })
  const headers = when?.headers === undefined ? undefined : Object.entries(when.headers).flatMap(([name, value]) => {
    const glob = parseGlob(value)
    if (typeof glob === "string") {
      issue(rule.name, `${base}.when.headers.${name}`, glob)
      return []
    }
    return [[name.toLowerCase(), glob] as const]
  })
  return {
    name: rule.name,
    index,
    action: rule.action,
    to: rule.to,
    principals: rule.from.length === 0 ? "any" : new Set(rule.from.map((peer) => principalOf(trustDomain, peer))),
    methods: when?.methods === undefined ? undefined : new Set(when.methods.map((m) => m.toUpperCase())),
    paths: when?.paths === undefined ? undefined : globs("paths", when.paths),
    ports: when?.ports === undefined ? undefined : new Set(when.ports),
    headers
  }
}

// ---------------------------------------------------------------------------------------------
// Shadowed routes
// ---------------------------------------------------------------------------------------------

/** A route's path condition in the form Envoy sees: gRPC service/method become a prefix or exact path. */
export const effectivePath = (match: RouteMatch | undefined): PathMatch | undefined => {
  if (match?.grpc !== undefined) {
    return match.grpc.method === undefined
      ? { prefix: `/${match.grpc.service}/` }
      : { exact: `/${match.grpc.service}/${match.grpc.method}` }
  }
  return match?.path
}

/** Whether every path `later` accepts is accepted by `earlier`. Regexes only cover themselves. */
const pathCovers = (earlier: PathMatch | undefined, later: PathMatch | undefined): boolean => {
  if (earlier === undefined) return true
  if (later === undefined) return earlier.prefix === "/" || earlier.prefix === ""
  if (earlier.prefix !== undefined) {
    const p = earlier.prefix
    return (later.prefix !== undefined && later.prefix.startsWith(p)) ||
      (later.exact !== undefined && later.exact.startsWith(p))
  }
  if (earlier.exact !== undefined) return later.exact === earlier.exact
  return earlier.regex !== undefined && later.regex === earlier.regex
}

const covers = (earlier: RouteMatch | undefined, later: RouteMatch | undefined): boolean => {
  if (!pathCovers(effectivePath(earlier), effectivePath(later))) return false
  if (earlier?.method !== undefined && earlier.method !== later?.method) return false
  const laterHeaders = new Set((later?.headers ?? []).map((h) => JSON.stringify(h)))
  return (earlier?.headers ?? []).every((h) => laterHeaders.has(JSON.stringify(h)))
}

const shadowedRoutes = (policy: TrafficPolicy, base: string): ReadonlyArray<PolicyIssue> =>
  policy.routes.flatMap((route, j) => {
    const i = policy.routes.findIndex((earlier, k) => k < j && covers(earlier.match, route.match))
    return i < 0 ? [] : [
      new PolicyIssue({
        policy: policy.name,
        field: `${base}.routes[${j}]`,
        message: `never used: routes[${i}] comes first and takes every request this route would match`
      })
    ]
  })
