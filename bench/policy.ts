/**
 * Authorization benchmark (prints figures; not a test).
 *
 *   npx tsx bench/policy.ts            # ~1 s per engine
 *   npx tsx bench/policy.ts --seconds 5
 *
 * A policy set of realistic size: 100 services, 500 rules (per service about four allow rules and
 * one deny, with callers, methods and path globs), and the same rules as a casbin model in the same
 * run (deny-override effect; `keyMatch` for path globs). Both engines decide the same 10,000
 * requests; the run first checks that they agree (on the first 2,000), then measures decisions/second for
 * each, and the time to compile the policy set (and, for comparison, to build the casbin enforcer).
 */
import { newEnforcer, newModelFromString, StringAdapter } from "casbin"
import { Either } from "effect"
import type { MeshConfig } from "../schemas/Config.js"
import { serviceId as spiffeId } from "../schemas/Identity.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import { authorize, type AuthzRequest } from "../src/policy/Authorize.js"
import { compileConfig } from "../src/policy/Compile.js"

const argv = process.argv.slice(2)
const secondsArg = argv.indexOf("--seconds")
const SECONDS = secondsArg >= 0 ? Number(argv[secondsArg + 1]) : 1

const SERVICES = 100
const RULES = 500
const METHODS = ["GET", "POST", "PUT", "DELETE"] as const
const PATHS = ["/api/*", "/admin/*", "/health", "/static/*", "/v1/orders/*"] as const
const REQUEST_PATHS = ["/api/users", "/admin/settings", "/health", "/static/app.js", "/v1/orders/42", "/other"] as const

/** A small deterministic PRNG, so every run measures the same policy set and requests. */
let seed = 42
const random = () => {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff
  return seed / 0x7fffffff
}
const pick = <A>(xs: ReadonlyArray<A>): A => xs[Math.floor(random() * xs.length)]!

interface BenchRule {
  readonly name: string
  readonly action: "allow" | "deny"
  readonly from: string | undefined
  readonly to: string
  readonly method: string | undefined
  readonly path: string | undefined
}

const service = (i: number) => `svc-${i}`
const rules: Array<BenchRule> = Array.from({ length: RULES }, (_, i) => {
  const to = service(i % SERVICES)
  const deny = i >= RULES - SERVICES // the last 100 rules: one deny per service
  return {
    name: `rule-${i}`,
    action: deny ? "deny" : "allow",
    from: random() < 0.1 ? undefined : service(Math.floor(random() * SERVICES)),
    to,
    method: random() < 0.3 ? undefined : pick(METHODS),
    path: deny ? "/admin/*" : random() < 0.3 ? undefined : pick(PATHS)
  }
})

const meshConfig = (): MeshConfig => {
  const decoded = decodeConfig({
    mesh: { name: "bench", trustDomain: "mesh.local" },
    services: Array.from({ length: SERVICES }, (_, i) => ({ name: service(i), port: 8080 })),
    policies: {
      security: {
        defaultAction: "deny",
        authorization: rules.map((r) => ({
          name: r.name,
          action: r.action,
          from: r.from === undefined ? [] : [{ service: r.from }],
          to: r.to,
          ...(r.method || r.path
            ? { when: { ...(r.method ? { methods: [r.method] } : {}), ...(r.path ? { paths: [r.path] } : {}) } }
            : {})
        }))
      }
    }
  }, "bench")
  if (Either.isLeft(decoded)) throw new Error(decoded.left.message)
  return decoded.right
}

const CASBIN_MODEL = `
[request_definition]
r = sub, obj, act, path

[policy_definition]
p = sub, obj, act, path, eft

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = r.obj == p.obj && (p.sub == "*" || r.sub == p.sub) && (p.act == "*" || r.act == p.act) && keyMatch(r.path, p.path)
`
const casbinPolicy = rules
  .map((r) =>
    ["p", r.from === undefined ? "*" : spiffeId("mesh.local", r.from), r.to, r.method ?? "*", r.path ?? "*", r.action]
      .join(", ")
  )
  .join("\n")

interface BenchRequest {
  readonly from: string
  readonly to: string
  readonly request: AuthzRequest & { readonly method: string; readonly path: string }
}
const requests: ReadonlyArray<BenchRequest> = Array.from({ length: 10_000 }, () => ({
  from: spiffeId("mesh.local", service(Math.floor(random() * SERVICES))),
  to: service(Math.floor(random() * SERVICES)),
  request: { method: pick(METHODS), path: pick(REQUEST_PATHS) }
}))

const timeIt = <A>(f: () => A): { value: A; ms: number } => {
  const start = process.hrtime.bigint()
  const value = f()
  return { value, ms: Number(process.hrtime.bigint() - start) / 1e6 }
}

/** Runs `decide` over the requests, round after round, for about `SECONDS`; decisions per second. */
const throughput = (decide: (r: BenchRequest) => boolean): number => {
  for (let i = 0; i < 200; i++) decide(requests[i]!) // warm-up
  let decisions = 0
  let allowed = 0
  const start = process.hrtime.bigint()
  const budget = BigInt(Math.round(SECONDS * 1e9))
  while (process.hrtime.bigint() - start < budget) {
    for (let i = 0; i < 100; i++) if (decide(requests[(decisions + i) % requests.length]!)) allowed++
    decisions += 100
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9
  if (allowed < 0) console.log(allowed) // keeps the loop's result alive
  return decisions / seconds
}

const main = async () => {
  const config = meshConfig()
  // Compile time: the median of 21 compilations (the first includes the JIT warming up).
  const compileTimes = Array.from({ length: 21 }, () => timeIt(() => compileConfig(config)).ms).sort((a, b) => a - b)
  const compiled = compileConfig(config)
  if (Either.isLeft(compiled)) throw new Error(compiled.left.message)
  const policy = compiled.right

  const casbinBuild = await (async () => {
    const start = process.hrtime.bigint()
    const enforcer = await newEnforcer(newModelFromString(CASBIN_MODEL), new StringAdapter(casbinPolicy))
    return { enforcer, ms: Number(process.hrtime.bigint() - start) / 1e6 }
  })()
  const enforcer = casbinBuild.enforcer

  const ours = (r: BenchRequest) => authorize(policy, r.from, r.to, r.request).allowed
  const theirs = (r: BenchRequest) => enforcer.enforceSync(r.from, r.to, r.request.method, r.request.path)

  // casbin needs about 2 ms a decision here: the agreement check covers the first 2,000 requests.
  const checked = requests.slice(0, 2_000)
  let disagreements = 0
  let allowedCount = 0
  for (const r of checked) {
    const a = ours(r)
    if (a) allowedCount++
    if (a !== theirs(r)) disagreements++
  }

  const oursRate = throughput(ours)
  const casbinRate = throughput(theirs)
  const fmt = (n: number) => Math.round(n).toLocaleString("en-US")
  console.log(
    `policy set: ${SERVICES} services, ${RULES} rules (${
      rules.filter((r) => r.action === "deny").length
    } deny); ${requests.length} distinct requests`
  )
  console.log(
    `agreement with casbin: ${checked.length - disagreements}/${checked.length} (${allowedCount} allowed)${
      disagreements > 0 ? "  (MISMATCH: the models differ)" : ""
    }`
  )
  console.log(`mesh-controller authorize: ${fmt(oursRate)} decisions/s`)
  console.log(`casbin enforceSync:        ${fmt(casbinRate)} decisions/s`)
  console.log(`ratio (mesh-controller / casbin): ${(oursRate / casbinRate).toFixed(1)}x`)
  console.log(
    `compile ${RULES} rules: median ${compileTimes[10]!.toFixed(2)} ms (min ${
      compileTimes[0]!.toFixed(2)
    } ms); casbin enforcer build: ${casbinBuild.ms.toFixed(2)} ms`
  )
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
