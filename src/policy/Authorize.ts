/**
 * Authorization decisions from a compiled policy. The semantics are those of the best-known
 * meshes (Istio's AuthorizationPolicy, Consul intentions):
 *
 * 1. a deny rule for the target that matches the request denies it;
 * 2. otherwise, if any allow rule targets the service, the request passes only if one matches;
 * 3. otherwise the mesh's `security.defaultAction` decides.
 *
 * A rule matches when its caller set contains the caller's identity (or it names no callers) and
 * every condition it gives holds. A condition on something the request does not carry (no path,
 * no port) does not hold. Which rule is reported when several match is the first in config order;
 * whether the request passes never depends on that order.
 */
import { serviceId } from "../../schemas/Identity.js"
import type { CompiledPolicy, CompiledRule } from "./Compile.js"
import { globMatches, urlPath } from "./Match.js"

export interface AuthzRequest {
  readonly method?: string | undefined
  /** The request path, query string allowed (it is ignored, as Envoy's RBAC `url_path` does). */
  readonly path?: string | undefined
  /** The port the request arrived on at the target. */
  readonly port?: number | undefined
  readonly headers?: Readonly<Record<string, string>> | undefined
}

export type DecisionReason =
  /** A deny rule matched. */
  | "deny-rule"
  /** An allow rule matched. */
  | "allow-rule"
  /** The service has allow rules and none matched. */
  | "not-allowed"
  /** No rule applies to the service: the default action. */
  | "default"

export interface Decision {
  readonly allowed: boolean
  /** The rule that decided; null when none did (`not-allowed`, `default`). */
  readonly rule: string | null
  readonly reason: DecisionReason
}

/**
 * The caller's identity as a SPIFFE ID: `spiffe://…` is taken as is, a bare name is a mesh service
 * in the policy's trust domain, undefined is an unauthenticated caller.
 */
export const callerIdentity = (policy: CompiledPolicy, from: string | undefined): string | undefined =>
  from === undefined || from.startsWith("spiffe://") ? from : serviceId(policy.trustDomain, from)

const lowerHeaders = (headers: Readonly<Record<string, string>> | undefined): ReadonlyMap<string, string> => {
  const map = new Map<string, string>()
  if (headers !== undefined) { for (const [name, value] of Object.entries(headers)) map.set(name.toLowerCase(), value) }
  return map
}

interface Prepared {
  readonly principal: string | undefined
  readonly method: string | undefined
  readonly path: string | undefined
  readonly port: number | undefined
  readonly headers: ReadonlyMap<string, string>
}

export const ruleMatches = (rule: CompiledRule, request: Prepared): boolean => {
  if (rule.principals !== "any" && (request.principal === undefined || !rule.principals.has(request.principal))) {
    return false
  }
  if (rule.methods !== undefined && (request.method === undefined || !rule.methods.has(request.method))) return false
  if (rule.ports !== undefined && (request.port === undefined || !rule.ports.has(request.port))) return false
  if (rule.paths !== undefined) {
    const path = request.path
    if (path === undefined || !rule.paths.some((glob) => globMatches(glob, path))) return false
  }
  if (rule.headers !== undefined) {
    for (const [name, glob] of rule.headers) {
      const value = request.headers.get(name)
      if (value === undefined || !globMatches(glob, value)) return false
    }
  }
  return true
}

const NO_HEADERS: ReadonlyMap<string, string> = new Map()

/** Whether `from` (a service name, a SPIFFE ID, or undefined) may make `request` to service `to`, and why. */
export const authorize = (
  policy: CompiledPolicy,
  from: string | undefined,
  to: string,
  request: AuthzRequest = {}
): Decision => {
  const rules = policy.rules.get(to)
  if (rules === undefined) return { allowed: policy.defaultAction === "allow", rule: null, reason: "default" }
  const prepared: Prepared = {
    principal: callerIdentity(policy, from),
    method: request.method?.toUpperCase(),
    path: request.path === undefined ? undefined : urlPath(request.path),
    port: request.port,
    headers: request.headers === undefined ? NO_HEADERS : lowerHeaders(request.headers)
  }
  for (const rule of rules.deny) {
    if (ruleMatches(rule, prepared)) return { allowed: false, rule: rule.name, reason: "deny-rule" }
  }
  if (rules.allow.length === 0) return { allowed: policy.defaultAction === "allow", rule: null, reason: "default" }
  for (const rule of rules.allow) {
    if (ruleMatches(rule, prepared)) return { allowed: true, rule: rule.name, reason: "allow-rule" }
  }
  return { allowed: false, rule: null, reason: "not-allowed" }
}

/** One line for people: "deny (rule no-admin)", "allow (no rule applies; default allow)". */
export const describeDecision = (policy: CompiledPolicy, decision: Decision, to: string): string => {
  const verdict = decision.allowed ? "allow" : "deny"
  switch (decision.reason) {
    case "deny-rule":
    case "allow-rule":
      return `${verdict}: rule "${decision.rule}"`
    case "not-allowed":
      return `deny: service "${to}" has allow rules and none matches this request`
    case "default":
      return `${verdict}: no rule for service "${to}" matches; the default action is ${policy.defaultAction}`
  }
}
