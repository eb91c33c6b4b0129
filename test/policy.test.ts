import { Command, Options } from "@effect/cli"
import { NodeContext } from "@effect/platform-node"
import { assert, describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Either, Exit, FastCheck as fc, Layer, Option, Stream, TestClock } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { LiveConfig } from "../layers/LiveConfig.js"
import { Policy } from "../layers/Policy.js"
import type { AuthorizationRule, MeshConfig, Policies } from "../schemas/Config.js"
import { serviceId as spiffeId, serviceOfId as serviceOfSpiffeId } from "../schemas/Identity.js"
import { checkConfig, PolicyDenied } from "../src/commands/policy.js"
import { makePolicyCommand } from "../src/commands/policyCommand.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import { authorize, type AuthzRequest } from "../src/policy/Authorize.js"
import { compileConfig, type CompiledPolicy, compilePolicies, PolicyInvalid } from "../src/policy/Compile.js"
import { runCli } from "./support/daemon.js"
import { compiledOf, configWith } from "./support/policyConfig.js"

const SERVICES = ["echo", "gateway", "web", "admin", "db"] as const

const config = (policies: Record<string, unknown> = {}): MeshConfig =>
  configWith(SERVICES.map((name, i) => ({ name, port: 8000 + i })), policies)

const compiled = (policies: Record<string, unknown>): CompiledPolicy => compiledOf(config(policies))

/** Compiles policies that the config decoder would already reject, to see the compiler's own report. */
const compileRaw = (policies: Policies) => compilePolicies(policies, { trustDomain: "mesh.local", services: SERVICES })

const basePolicies = (security: Record<string, unknown>): Policies => config({ security }).policies

describe("authorization semantics", () => {
  const policy = compiled({
    security: {
      authorization: [
        { name: "gw-to-echo", action: "allow", from: [{ service: "gateway" }], to: "echo" },
        {
          name: "web-to-echo-get",
          action: "allow",
          from: [{ service: "web" }],
          to: "echo",
          when: { methods: ["GET"] }
        },
        {
          name: "no-admin",
          action: "deny",
          from: [{ service: "gateway" }],
          to: "echo",
          when: { paths: ["/admin/*"], methods: ["POST"] }
        },
        { name: "no-debug", action: "deny", to: "web", when: { headers: { "x-debug": "*" } } },
        { name: "no-php", action: "deny", to: "web", when: { paths: ["*.php"], ports: [8002] } },
        { name: "ext", action: "allow", from: [{ principal: "spiffe://other.org/ns/prod/sa/billing" }], to: "db" }
      ]
    }
  })

  const table: ReadonlyArray<[string, string | undefined, string, AuthzRequest, boolean, string | null, string]> = [
    ["allow rule matches", "gateway", "echo", { method: "GET", path: "/" }, true, "gw-to-echo", "allow-rule"],
    ["deny beats allow", "gateway", "echo", { method: "POST", path: "/admin/users" }, false, "no-admin", "deny-rule"],
    [
      "deny needs every condition",
      "gateway",
      "echo",
      { method: "GET", path: "/admin/users" },
      true,
      "gw-to-echo",
      "allow-rule"
    ],
    [
      "method names are case-insensitive",
      "gateway",
      "echo",
      { method: "post", path: "/admin/x" },
      false,
      "no-admin",
      "deny-rule"
    ],
    [
      "query string is not part of the path",
      "gateway",
      "echo",
      { method: "POST", path: "/admin/x?y=1" },
      false,
      "no-admin",
      "deny-rule"
    ],
    ["allow-list: unlisted caller is denied", "admin", "echo", { method: "GET" }, false, null, "not-allowed"],
    ["allow-list: condition not met", "web", "echo", { method: "DELETE" }, false, null, "not-allowed"],
    ["allow-list: condition met", "web", "echo", { method: "GET" }, true, "web-to-echo-get", "allow-rule"],
    ["unauthenticated caller vs allow-list", undefined, "echo", {}, false, null, "not-allowed"],
    ["only deny rules: default applies", "admin", "web", { path: "/index.html" }, true, null, "default"],
    ["header presence denies", "admin", "web", { headers: { "X-Debug": "1" } }, false, "no-debug", "deny-rule"],
    ["suffix and port", "admin", "web", { path: "/a/b.php", port: 8002 }, false, "no-php", "deny-rule"],
    ["port condition absent from request does not hold", "admin", "web", { path: "/a/b.php" }, true, null, "default"],
    ["no rules at all: default", "web", "admin", {}, true, null, "default"],
    [
      "principal from another trust domain",
      "spiffe://other.org/ns/prod/sa/billing",
      "db",
      {},
      true,
      "ext",
      "allow-rule"
    ],
    [
      "service name is a SPIFFE ID in the mesh's domain",
      "spiffe://mesh.local/service/gateway",
      "echo",
      { path: "/" },
      true,
      "gw-to-echo",
      "allow-rule"
    ],
    [
      "same name, other trust domain, is someone else",
      "spiffe://evil.org/service/gateway",
      "echo",
      {},
      false,
      null,
      "not-allowed"
    ]
  ]
  for (const [name, from, to, request, allowed, rule, reason] of table) {
    it(name, () => {
      const decision = authorize(policy, from, to, request)
      assert.deepStrictEqual(decision, { allowed, rule, reason })
    })
  }

  it("defaultAction: deny closes services without allow rules", () => {
    const closed = compiled({
      security: {
        defaultAction: "deny",
        authorization: [{ name: "x", action: "deny", to: "web", from: [{ service: "db" }] }]
      }
    })
    assert.deepStrictEqual(authorize(closed, "gateway", "admin"), { allowed: false, rule: null, reason: "default" })
    assert.deepStrictEqual(authorize(closed, "gateway", "web"), { allowed: false, rule: null, reason: "default" })
  })

  it("SPIFFE IDs", () => {
    assert.strictEqual(spiffeId("mesh.local", "echo"), "spiffe://mesh.local/service/echo")
    assert.strictEqual(serviceOfSpiffeId("mesh.local", "spiffe://mesh.local/service/echo"), "echo")
    assert.strictEqual(serviceOfSpiffeId("mesh.local", "spiffe://other/service/echo"), undefined)
    assert.strictEqual(serviceOfSpiffeId("mesh.local", "spiffe://mesh.local/service/a/b"), undefined)
  })
})

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

const serviceArb = fc.constantFrom(...SERVICES)
const pathArb = fc.constantFrom("/", "/admin/x", "/api/v1", "/a.php", "/static/app.js")
const methodArb = fc.constantFrom("GET", "POST", "DELETE")
const ruleArb = (action: "allow" | "deny", i: number) =>
  fc.record({
    from: fc.array(serviceArb, { maxLength: 2 }),
    to: serviceArb,
    methods: fc.option(fc.array(methodArb, { minLength: 1, maxLength: 2 }), { nil: undefined }),
    paths: fc.option(
      fc.array(fc.constantFrom("/admin/*", "*.php", "/", "*", "/api/*"), { minLength: 1, maxLength: 2 }),
      { nil: undefined }
    ),
    ports: fc.option(fc.array(fc.constantFrom(8000, 8001), { minLength: 1, maxLength: 2 }), { nil: undefined })
  }).map((r): AuthorizationRule => ({
    name: `${action}-${i}`,
    action,
    from: r.from.map((service) => ({ service })),
    to: r.to,
    ...(r.methods || r.paths || r.ports
      ? {
        when: {
          ...(r.methods ? { methods: r.methods } : {}),
          ...(r.paths ? { paths: r.paths } : {}),
          ...(r.ports ? { ports: r.ports } : {})
        }
      }
      : {})
  }))
const rulesArb = (action: "allow" | "deny", prefix: number) =>
  fc.integer({ min: 0, max: 6 }).chain((n) =>
    fc.tuple(...Array.from({ length: n }, (_, i) => ruleArb(action, prefix + i)))
  )
const requestArb = fc.record({
  from: fc.option(serviceArb, { nil: undefined }),
  to: serviceArb,
  method: methodArb,
  path: pathArb,
  port: fc.constantFrom(8000, 8001, 8002)
})
const defaultArb = fc.constantFrom("allow" as const, "deny" as const)

const compileRules = (rules: ReadonlyArray<AuthorizationRule>, defaultAction: "allow" | "deny") => {
  const base = basePolicies({ defaultAction })
  return compileRaw({ ...base, security: { ...base.security, authorization: rules } })
}
const decide = (policy: CompiledPolicy, r: typeof requestArb extends fc.Arbitrary<infer A> ? A : never) =>
  authorize(policy, r.from, r.to, { method: r.method, path: r.path, port: r.port }).allowed

describe("authorization properties", () => {
  it("adding a deny rule never allows more", () => {
    fc.assert(
      fc.property(
        rulesArb("allow", 0),
        rulesArb("deny", 100),
        ruleArb("deny", 999),
        defaultArb,
        fc.array(requestArb, { minLength: 1, maxLength: 20 }),
        (allow, deny, extra, d, requests) => {
          const before = compileRules([...allow, ...deny], d)
          const after = compileRules([...allow, ...deny, extra], d)
          // A conflict (same callers and conditions as an allow rule) is a compile error: nothing to compare.
          if (Either.isLeft(before) || Either.isLeft(after)) return
          for (const r of requests) if (decide(after.right, r)) assert.isTrue(decide(before.right, r))
        }
      ),
      { numRuns: 100 }
    )
  })

  it("decisions do not depend on rule order within one action", () => {
    fc.assert(
      fc.property(
        rulesArb("allow", 0),
        rulesArb("deny", 100),
        defaultArb,
        fc.array(requestArb, { minLength: 1, maxLength: 20 }),
        fc.integer(),
        (allow, deny, d, requests, seed) => {
          const shuffle = <A>(xs: ReadonlyArray<A>) => {
            const out = [...xs]
            let s = seed
            for (let i = out.length - 1; i > 0; i--) {
              s = (s * 1103515245 + 12345) & 0x7fffffff
              const j = s % (i + 1)
              ;[out[i], out[j]] = [out[j]!, out[i]!]
            }
            return out
          }
          const a = compileRules([...allow, ...deny], d)
          const b = compileRules([...shuffle(deny), ...shuffle(allow)], d)
          if (Either.isLeft(a) || Either.isLeft(b)) return
          for (const r of requests) assert.strictEqual(decide(a.right, r), decide(b.right, r))
        }
      ),
      { numRuns: 100 }
    )
  })
})

// ---------------------------------------------------------------------------------------------
// Compilation errors
// ---------------------------------------------------------------------------------------------

const route = (extra: Record<string, unknown>) => ({ destinations: [{ service: "echo" }], ...extra })
const traffic = (routes: ReadonlyArray<Record<string, unknown>>, service = "echo") => ({
  traffic: [{ name: "p", service, routes }]
})

describe("compilation", () => {
  const issuesOf = (policies: Policies): ReadonlyArray<string> => {
    const result = compileRaw(policies)
    assert.isTrue(Either.isLeft(result), "expected a compile error")
    return Either.isLeft(result) ? result.left.issues.map(String) : []
  }
  const good = config(traffic([route({})])).policies
  const goodRoute = good.traffic[0]!.routes[0]!

  it("unknown services, naming the policy and field", () => {
    const issues = issuesOf({
      ...good,
      traffic: [{
        name: "canary",
        service: "nope",
        routes: [{
          ...goodRoute,
          destinations: [{ service: "ghost", weight: 1 }],
          mirror: { service: "spook", percent: 100 }
        }]
      }],
      security: {
        ...good.security,
        authorization: [{ name: "r", action: "allow", from: [{ service: "who" }], to: "where" }]
      },
      resilience: [{ service: "gone" }]
    })
    expect(issues).toEqual([
      `policies.traffic[0].service (policy "canary"): unknown service "nope"`,
      `policies.traffic[0].routes[0].destinations[0].service (policy "canary"): unknown service "ghost"`,
      `policies.traffic[0].routes[0].mirror.service (policy "canary"): unknown service "spook"`,
      `policies.security.authorization[0].to (policy "r"): unknown service "where"`,
      `policies.security.authorization[0].from[0].service (policy "r"): unknown service "who"`,
      `policies.resilience[0].service (policy "resilience of gone"): unknown service "gone"`
    ])
  })

  it("regexes RE2 rejects (backreferences, lookahead), in paths and headers", () => {
    const issues = issuesOf({
      ...good,
      traffic: [{
        name: "re",
        service: "echo",
        routes: [{
          ...goodRoute,
          match: { path: { regex: "(a)\\1" }, headers: [{ name: "x", regex: "(?=y)", invert: false }] }
        }]
      }]
    })
    expect(issues).toHaveLength(2)
    expect(issues[0]).toMatch(
      /^policies\.traffic\[0\]\.routes\[0\]\.match\.path\.regex \(policy "re"\): RE2 .* rejects "\(a\)\\\\1": .*invalid escape/
    )
    expect(issues[1]).toMatch(
      /^policies\.traffic\[0\]\.routes\[0\]\.match\.headers\[0\]\.regex \(policy "re"\): RE2 .*Perl syntax/
    )
  })

  it("conflicting policies for one target", () => {
    const issues = issuesOf({
      ...good,
      traffic: [good.traffic[0]!, { ...good.traffic[0]!, name: "again" }],
      security: {
        ...good.security,
        authorization: [
          { name: "d", action: "deny", from: [{ service: "web" }], to: "echo" },
          { name: "a", action: "allow", from: [{ principal: "spiffe://mesh.local/service/web" }], to: "echo" },
          { name: "d", action: "deny", from: [], to: "db" }
        ]
      },
      resilience: [{ service: "echo" }, { service: "echo" }]
    })
    expect(issues).toEqual([
      `policies.traffic[1].service (policy "again"): service "echo" already has a traffic policy (policies.traffic[0]); merge their routes into one`,
      `policies.security.authorization[1] (policy "a"): conflicts with deny rule at policies.security.authorization[0]: same callers, target and conditions, so it never allows anything`,
      `policies.security.authorization[2].name (policy "d"): duplicate rule name (first defined at policies.security.authorization[0])`,
      `policies.resilience[1].service (policy "resilience of echo"): service "echo" already has a resilience policy; merge them into one`
    ])
  })

  it("bad conditions: glob with an inner *, unknown method", () => {
    const issues = issuesOf({
      ...good,
      security: {
        ...good.security,
        authorization: [{
          name: "w",
          action: "deny",
          from: [],
          to: "echo",
          when: { paths: ["/a/*/b"], methods: ["FETCH"] }
        }]
      }
    })
    expect(issues).toEqual([
      `policies.security.authorization[0].when.methods[0] (policy "w"): unknown HTTP method "FETCH"`,
      `policies.security.authorization[0].when.paths[0] (policy "w"): "/a/*/b": "*" may only stand alone, end a prefix ("/admin/*") or start a suffix ("*.html")`
    ])
  })

  it("a rule for a tcp service may name callers and ports only", () => {
    const services = [{ name: "db", protocol: "tcp", port: 5432 }, { name: "web", port: 80 }]
    const authorization = [
      { name: "web-db", action: "allow", from: [{ service: "web" }], to: "db", when: { ports: [5432] } },
      { name: "db-get", action: "deny", to: "db", when: { methods: ["GET"] } }
    ]
    // The config decoder rejects it at validate/reload time…
    const decoded = decodeConfig({ mesh: { name: "t" }, services, policies: { security: { authorization } } }, "t")
    assert.isTrue(
      Either.isLeft(decoded) &&
        decoded.left.message.includes(`policies.security.authorization[1].when: service "db" speaks tcp`)
    )
    // …and so does the compiler, given such policies some other way.
    const ok = configWith(services, { security: { authorization: authorization.slice(0, 1) } })
    const result = compileConfig({
      ...ok,
      policies: {
        ...ok.policies,
        security: {
          ...ok.policies.security,
          authorization: [...ok.policies.security.authorization, {
            name: "db-get",
            action: "deny",
            from: [],
            to: "db",
            when: { methods: ["GET"] }
          }]
        }
      }
    })
    assert.isTrue(Either.isLeft(result))
    expect(Either.isLeft(result) ? result.left.issues.map(String) : []).toEqual([
      `policies.security.authorization[1].when (policy "db-get"): service "db" speaks tcp: a rule for it can only name callers (from) and ports`
    ])
  })

  it("shadowed routes are warnings, and the policy still compiles", () => {
    const policy = compiled(traffic([
      route({ match: { path: { prefix: "/api/" } } }),
      route({ match: { path: { exact: "/api/users" } } }),
      route({ match: { grpc: { service: "echo.Echo" } } }),
      route({ match: { grpc: { service: "echo.Echo", method: "Say" } } }),
      route({ match: { path: { prefix: "/api/" }, headers: [{ name: "x-canary", exact: "1" }] } }),
      route({}),
      route({ match: { path: { prefix: "/late" } } })
    ]))
    expect(policy.warnings.map(String)).toEqual([
      `policies.traffic[0].routes[1] (policy "p"): never used: routes[0] comes first and takes every request this route would match`,
      `policies.traffic[0].routes[3] (policy "p"): never used: routes[2] comes first and takes every request this route would match`,
      `policies.traffic[0].routes[4] (policy "p"): never used: routes[0] comes first and takes every request this route would match`,
      `policies.traffic[0].routes[6] (policy "p"): never used: routes[5] comes first and takes every request this route would match`
    ])
  })

  it("the config decoder rejects the same problems at validate/reload time", () => {
    const decoded = decodeConfig({
      mesh: { name: "t" },
      services: [{ name: "echo", port: 1 }],
      policies: {
        traffic: [{
          name: "p",
          service: "echo",
          routes: [{ destinations: [{ service: "echo" }], match: { path: { regex: "(?<=a)b" } } }]
        }],
        resilience: [{ service: "nope" }]
      }
    }, "t")
    assert.isTrue(Either.isLeft(decoded))
    if (Either.isLeft(decoded)) {
      expect(decoded.left.message).toContain(
        "policies.traffic[0].routes[0].match.path.regex: expected an RE2 regular expression"
      )
    }
    const unknown = decodeConfig({
      mesh: { name: "t" },
      services: [{ name: "echo", port: 1 }],
      policies: { resilience: [{ service: "nope" }] }
    }, "t")
    assert.isTrue(
      Either.isLeft(unknown) && unknown.left.message.includes(`policies.resilience[0].service: unknown service "nope"`)
    )
  })
})

// ---------------------------------------------------------------------------------------------
// The Policy layer
// ---------------------------------------------------------------------------------------------

describe("Policy layer", () => {
  const allowGateway = {
    security: { authorization: [{ name: "gw", action: "allow", from: [{ service: "gateway" }], to: "echo" }] }
  }

  it.scoped("recompiles on config changes and keeps the last good policy when one does not compile", () =>
    Effect.gen(function*() {
      const cfg = yield* LiveConfig
      const policy = yield* Policy
      assert.isFalse((yield* policy.authorize("web", "echo")).allowed)

      // A valid change: web is allowed too.
      const next = config({
        security: {
          authorization: [...allowGateway.security.authorization, {
            name: "web",
            action: "allow",
            from: [{ service: "web" }],
            to: "echo"
          }]
        }
      })
      yield* cfg.apply(next, "memory:2")
      yield* waitFor(policy.changes, (p) => p.policy.ruleCount === 2)
      assert.deepStrictEqual(yield* policy.authorize("web", "echo"), {
        allowed: true,
        rule: "web",
        reason: "allow-rule"
      })

      // A config that bypassed decoding with a policy naming an unknown service: rejected, and kept.
      const bad: MeshConfig = {
        ...next,
        policies: {
          ...next.policies,
          security: {
            ...next.policies.security,
            authorization: [{ name: "x", action: "allow", from: [], to: "ghost" }]
          }
        }
      }
      yield* cfg.apply(bad, "memory:3")
      const status = yield* waitForStatus(policy, (s) => s.lastRejected !== null)
      expect(status.lastRejected?.issues).toEqual([
        `policies.security.authorization[0].to (policy "x"): unknown service "ghost"`
      ])
      assert.strictEqual(status.authorizationRules, 2)
      assert.isTrue((yield* policy.authorize("web", "echo")).allowed)
    }).pipe(Effect.provide(Policy.layer.pipe(Layer.provideMerge(LiveConfig.layerMemory(config(allowGateway)))))))

  it.effect("a config whose policy does not compile fails the layer at startup", () =>
    Effect.gen(function*() {
      const good = config(allowGateway)
      const bad: MeshConfig = { ...good, policies: { ...good.policies, resilience: [{ service: "ghost" }] } }
      const exit = yield* Effect.exit(Effect.scoped(Layer.build(Policy.layerMemory(bad))))
      const error = failureOf(exit)
      assert.instanceOf(error, PolicyInvalid)
      expect(error?.message).toContain(
        `policies.resilience[0].service (policy "resilience of ghost"): unknown service "ghost"`
      )
    }))
})

const waitFor = <A>(changes: Stream.Stream<A>, ok: (a: A) => boolean) =>
  changes.pipe(
    Stream.filter(ok),
    Stream.take(1),
    Stream.runDrain,
    Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new Error("condition not reached") })
  )

const waitForStatus = (policy: Policy["Type"], ok: (s: Effect.Effect.Success<Policy["Type"]["status"]>) => boolean) =>
  Effect.gen(function*() {
    for (let i = 0; i < 200; i++) {
      const status = yield* policy.status
      if (ok(status)) return status
      yield* TestClock.adjust("50 millis")
      yield* Effect.yieldNow()
    }
    return yield* Effect.fail(new Error("status condition not reached"))
  })

// ---------------------------------------------------------------------------------------------
// policy check
// ---------------------------------------------------------------------------------------------

describe("policy check", () => {
  const yaml = `
mesh: { name: lab }
services:
  - { name: echo, port: 50051 }
  - { name: gateway, port: 8080 }
policies:
  security:
    authorization:
      - { name: gw-to-echo, action: allow, from: [ { service: gateway } ], to: echo }
      - { name: no-admin, action: deny, from: [ { service: gateway } ], to: echo, when: { paths: ["/admin/*"], methods: [POST] } }
`
  const file = () => {
    const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "policy-check-"))
    const path = NodePath.join(dir, "mesh.yaml")
    NodeFs.writeFileSync(path, yaml)
    return path
  }
  it("the mesh-controller process prints the deny and the rule that decided, and exits 3", async () => {
    const path = file()
    const denied = await runCli([
      "policy",
      "check",
      "--config",
      path,
      "--from",
      "gateway",
      "--to",
      "echo",
      "--method",
      "POST",
      "--path",
      "/admin/users"
    ])
    expect(denied.code).toBe(3)
    expect(denied.stdout).toBe(
      `deny: rule "no-admin"\n  from spiffe://mesh.local/service/gateway to echo: POST /admin/users\n`
    )

    const allowed = await runCli([
      "policy",
      "check",
      "--config",
      path,
      "--from",
      "gateway",
      "--to",
      "echo",
      "--method",
      "GET",
      "--path",
      "/",
      "--header",
      "x-a=1"
    ])
    expect(allowed.code).toBe(0)
    expect(allowed.stdout).toBe(
      `allow: rule "gw-to-echo"\n  from spiffe://mesh.local/service/gateway to echo: GET / [x-a=1]\n`
    )

    const unknown = await runCli(["policy", "check", "--config", path, "--from", "gateway", "--to", "nope"])
    expect(unknown.code).toBe(1)
    expect(unknown.stderr).toBe(`error: --to: unknown service "nope"\n`)
  }, 90_000)

  it.effect("the command fails with PolicyDenied (exit code 3) on a deny", () =>
    Effect.gen(function*() {
      const root = Command.make("mesh-controller").pipe(
        Command.withSubcommands([makePolicyCommand(Options.file("config", { exists: "yes" }))])
      )
      const args = [
        "node",
        "mesh-controller",
        "policy",
        "check",
        "--config",
        file(),
        "--from",
        "gateway",
        "--to",
        "echo",
        "--method",
        "POST",
        "--path",
        "/admin/x"
      ]
      const lines: Array<string> = []
      const original = console.log
      console.log = (...xs: Array<unknown>) => void lines.push(xs.join(" "))
      const exit = yield* Effect.exit(Command.run(root, { name: "mesh-controller", version: "0" })(args)).pipe(
        Effect.provide(NodeContext.layer),
        Effect.ensuring(Effect.sync(() => (console.log = original)))
      )
      const failure = failureOf(exit)
      assert.instanceOf(failure, PolicyDenied)
      assert.strictEqual((failure as PolicyDenied).exitCode, 3)
      expect(lines.join("\n")).toContain(`deny: rule "no-admin"`)
    }))

  it("checkConfig: unknown services are user errors", () => {
    const cfg = config()
    const result = checkConfig(cfg, { from: "echo", to: "nope", request: {} })
    assert.isTrue(Either.isLeft(result) && result.left.message === `--to: unknown service "nope"`)
    const allowed = checkConfig(cfg, { from: "spiffe://x.org/a", to: "echo", request: {} })
    assert.isTrue(Either.isRight(allowed) && allowed.right.decision.allowed)
  })
})

const failureOf = <E>(exit: Exit.Exit<unknown, E>): E | undefined =>
  Exit.isFailure(exit) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined
