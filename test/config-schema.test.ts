import { describe, expect, it } from "@effect/vitest"
import { Duration, Either } from "effect"
import { readFileSync } from "node:fs"
import { parseDurationMillis } from "../schemas/Duration.js"
import { parseConfig } from "../src/ConfigDocument.js"
import { aliasBomb } from "./support/aliasBomb.js"

const base = `
mesh: { name: lab }
services:
  - name: echo
    protocol: grpc
    port: 50051
    endpoints: [ { address: 127.0.0.1, port: 50061 } ]
  - name: echo-v2
    port: 50051
`

const problems = (yaml: string): ReadonlyArray<string> => {
  const result = parseConfig(yaml, "mesh.yaml")
  if (Either.isRight(result)) throw new Error("expected the config to be rejected")
  return result.left.issues.map((issue) => issue.toString())
}

/** Each case: a config, and one problem the user must see, exactly as it is printed. */
const invalid: ReadonlyArray<readonly [string, string, string]> = [
  ["missing mesh", "services: []", "mesh: is missing"],
  [
    "unknown top-level key",
    `${base}\nservises: []`,
    `servises: is unexpected, expected: "mesh" | "controller" | "discovery" | "services" | "policies" | "certificates" | "sidecar"`
  ],
  [
    "typo in a nested key",
    `mesh: { name: lab, trustDomian: x }`,
    `mesh.trustDomian: is unexpected, expected: "name" | "trustDomain"`
  ],
  [
    "bad duration",
    `${base}    healthCheck: { type: http, interval: 10 parsecs }`,
    `services[1].healthCheck.interval: expected a duration such as "10s", got "10 parsecs"`
  ],
  [
    "duration without unit",
    `mesh: { name: lab }\ncontroller: { shutdownTimeout: "10" }`,
    `controller.shutdownTimeout: expected a duration such as "10s", got "10"`
  ],
  [
    "zero duration",
    `mesh: { name: lab }\ncontroller: { shutdownTimeout: 0s }`,
    "controller.shutdownTimeout: expected a duration greater than zero"
  ],
  [
    "port out of range",
    `mesh: { name: lab }\nservices: [ { name: a, port: 70000 } ]`,
    "services[0].port: expected a port number from 1 to 65535, got 70000"
  ],
  [
    "port is a string",
    `mesh: { name: lab }\nservices: [ { name: a, port: http } ]`,
    `services[0].port: expected a port number from 1 to 65535, got "http"`
  ],
  [
    "unknown protocol",
    `mesh: { name: lab }\nservices: [ { name: a, port: 80, protocol: htp } ]`,
    `services[0].protocol: expected one of "http", "grpc", "tcp", got "htp"`
  ],
  [
    "bad service name",
    `mesh: { name: lab }\nservices: [ { name: Echo_1, port: 80 } ]`,
    `services[0].name: expected a service name (lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit), got "Echo_1"`
  ],
  [
    "duplicate service",
    `${base}  - name: echo\n    port: 1`,
    `services[2].name: duplicate service name "echo" (first defined at services[0])`
  ],
  [
    "unknown destination",
    `${base}policies:\n  traffic:\n    - name: canary\n      service: echo\n      routes:\n        - destinations: [ { service: echo }, { service: echo-v3 } ]`,
    `policies.traffic[0].routes[0].destinations[1].service: unknown service "echo-v3"`
  ],
  [
    "zero weight",
    `${base}policies:\n  traffic:\n    - name: canary\n      service: echo\n      routes:\n        - destinations: [ { service: echo, weight: 0 } ]`,
    "policies.traffic[0].routes[0].destinations[0].weight: expected a whole number greater than zero, got 0"
  ],
  [
    "no destinations",
    `${base}policies:\n  traffic:\n    - name: canary\n      service: echo\n      routes:\n        - destinations: []`,
    "policies.traffic[0].routes[0].destinations: expected at least one destination"
  ],
  [
    "unknown health check type",
    `${base}    healthCheck: { type: icmp }`,
    `services[1].healthCheck.type: Expected "http" | "tcp" | "grpc", actual "icmp"`
  ],
  [
    "bad endpoint weight",
    `mesh: { name: lab }\nservices: [ { name: a, port: 80, endpoints: [ { address: 10.0.0.1, weight: -1 } ] } ]`,
    "services[0].endpoints[0].weight: expected a whole number greater than zero, got -1"
  ],
  [
    "empty endpoint address",
    `mesh: { name: lab }\nservices: [ { name: a, port: 80, endpoints: [ { address: "" } ] } ]`,
    "services[0].endpoints[0].address: expected a non-empty string"
  ],
  [
    "duplicate endpoint",
    `mesh: { name: lab }\nservices: [ { name: a, port: 80, endpoints: [ { address: 10.0.0.1 }, { address: 10.0.0.1, port: 80 } ] } ]`,
    "services[0].endpoints[1]: duplicate endpoint 10.0.0.1:80"
  ],
  [
    "unknown authorization target",
    `${base}policies:\n  security:\n    authorization:\n      - { name: r, action: allow, from: [ { service: echo } ], to: web }`,
    `policies.security.authorization[0].to: unknown service "web"`
  ],
  [
    "bad authorization action",
    `${base}policies:\n  security:\n    authorization:\n      - { name: r, action: permit, to: echo }`,
    `policies.security.authorization[0].action: expected one of "allow", "deny", got "permit"`
  ],
  [
    "bad mtls mode",
    `${base}policies:\n  security: { mtls: required }`,
    `policies.security.mtls: expected one of "strict", "permissive", got "required"`
  ],
  [
    "retries out of range",
    `${base}policies:\n  traffic:\n    - name: c\n      service: echo\n      routes:\n        - destinations: [ { service: echo } ]\n          retries: { attempts: 50 }`,
    "policies.traffic[0].routes[0].retries.attempts: expected a number of attempts from 1 to 10, got 50"
  ],
  [
    "unknown retry condition",
    `${base}policies:\n  traffic:\n    - name: c\n      service: echo\n      routes:\n        - destinations: [ { service: echo } ]\n          retries: { attempts: 2, on: [sometimes] }`,
    `policies.traffic[0].routes[0].retries.on[0]: expected one of "unavailable", "reset", "cancelled", "deadline-exceeded", "resource-exhausted", "internal", "connect-failure", "refused-stream", "5xx", "gateway-error", "retriable-4xx", got "sometimes"`
  ],
  [
    "debounce quiet longer than max",
    `mesh: { name: lab }\ncontroller: { debounce: { quiet: 2s, max: 1s } }`,
    "controller.debounce.quiet: the quiet window must not be longer than debounce.max"
  ],
  [
    "http check path without slash",
    `${base}    healthCheck: { type: http, path: healthz }`,
    `services[1].healthCheck.path: expected a path starting with "/", got "healthz"`
  ],
  [
    "YAML syntax error",
    "mesh: { name: lab\nservices: [",
    "line 2, column 1: YAML syntax error: Flow map in block collection must be sufficiently indented and end with a }"
  ],
  [
    "duplicate YAML key",
    "mesh: { name: a }\nmesh: { name: b }",
    "line 2, column 1: YAML syntax error: Map keys must be unique"
  ],
  ["empty file", "", "the file is empty"],
  ["YAML alias bomb", aliasBomb(), "YAML cannot be read: Excessive alias count indicates a resource exhaustion attack"]
]

describe("config schema", () => {
  it.each(invalid)("rejects %s", (_name, yaml, expected) => {
    expect(problems(yaml)).toContain(expected)
  })

  it("lists every problem in the file at once", () => {
    const found = problems(`
mesh: { name: lab }
services:
  - name: echo
    port: 70000
    protocol: htp
    healthCheck: { type: grpc, interval: soon }
policies:
  traffic:
    - name: c
      service: echo
      routes: [ { destinations: [ { service: echo, weight: 0 } ] } ]
`)
    expect(found).toEqual([
      `services[0].protocol: expected one of "http", "grpc", "tcp", got "htp"`,
      "services[0].port: expected a port number from 1 to 65535, got 70000",
      `services[0].healthCheck.interval: expected a duration such as "10s", got "soon"`,
      "policies.traffic[0].routes[0].destinations[0].weight: expected a whole number greater than zero, got 0"
    ])
  })

  it("rejects a config whose policies do not compile, so no rule is silently dropped downstream", () => {
    const found = problems(
      `${base}policies:\n  security:\n    authorization:\n      - { name: no-admin, action: deny, to: echo, when: { paths: ["/ad*min"] } }`
    )
    expect(found).toEqual([
      `policies.security.authorization[0].when.paths[0]: "/ad*min": "*" may only stand alone, end a prefix ("/admin/*") or start a suffix ("*.html") (policy "no-admin")`
    ])
  })

  it("one checker for policies: a rule naming a caller by service or by its SPIFFE ID is the same rule", () => {
    // The schema used to compare peers as written and let this pass; the compiler compares identities.
    const found = problems(`${base}policies:
  security:
    authorization:
      - { name: no-gw, action: deny, from: [ { service: echo-v2 } ], to: echo }
      - { name: gw, action: allow, from: [ { principal: "spiffe://mesh.local/service/echo-v2" } ], to: echo }`)
    expect(found).toEqual([
      `policies.security.authorization[1]: conflicts with deny rule at policies.security.authorization[0]: same callers, target and conditions, so it never allows anything (policy "gw")`
    ])
  })

  it("reports policy references together with service problems and structural ones", () => {
    const found = problems(`${base}  - name: echo
    port: 1
  - name: bad
    port: 0
policies:
  traffic:
    - { name: c, service: ghost, routes: [ { destinations: [ { service: echo } ] } ] }
    - { name: c, service: echo, routes: [ { destinations: [ { service: echo } ] } ] }
  resilience: [ { service: gone } ]`)
    expect(found).toEqual([
      "services[3].port: expected a port number from 1 to 65535, got 0",
      `services[2].name: duplicate service name "echo" (first defined at services[0])`,
      `policies.traffic[0].service: unknown service "ghost"`,
      `policies.traffic[1].name: duplicate traffic policy name (first defined at policies.traffic[0]) (policy "c")`,
      `policies.resilience[0].service: unknown service "gone"`
    ])
  })

  it("keeps IPv6 endpoints apart that would collide unbracketed", () => {
    const result = parseConfig(
      "mesh: { name: lab }\nservices: [ { name: a, port: 80, endpoints: [ { address: \"::1\", port: 880 }, { address: \"::1:8\" } ] } ]",
      "x"
    )
    expect(Either.isRight(result) ? "ok" : result.left.message).toBe("ok")
  })

  it("fills in defaults for everything optional", () => {
    const config = Either.getOrThrow(
      parseConfig("mesh: { name: lab }\nservices: [ { name: a, port: 80, endpoints: [ { address: 10.0.0.1 } ] } ]", "x")
    )
    expect(config.mesh.trustDomain).toBe("mesh.local")
    expect(config.controller.xds).toMatchObject({ host: "0.0.0.0", port: 15010 })
    expect(config.controller.admin).toMatchObject({
      host: "127.0.0.1",
      port: 15014,
      readAccess: "auto",
      allowedHosts: []
    })
    expect(config.controller.admin.registration).toMatchObject({ maxBodyBytes: 65536, createServices: false })
    expect(Duration.toMillis(config.controller.shutdownTimeout)).toBe(10_000)
    expect(Duration.toMillis(config.controller.debounce.quiet)).toBe(100)
    expect(Duration.toMillis(config.controller.debounce.max)).toBe(1_000)
    expect(config.services[0]!.protocol).toBe("http")
    expect(config.services[0]!.endpoints[0]).toEqual({ address: "10.0.0.1", labels: {}, weight: 1 })
    expect(config.policies.security.mtls).toBe("permissive")
    expect(config.sidecar.envoy.enabled).toBe(false)
    expect(Duration.toMillis(config.certificates.workloadTtl)).toBe(86_400_000)
  })

  it("decodes the example config", () => {
    const config = Either.getOrThrow(parseConfig(readFileSync("examples/mesh.yaml", "utf8"), "examples/mesh.yaml"))
    expect(config.mesh.name).toBe("home-lab")
    expect(config.services.map((s) => s.name)).toEqual(["echo", "echo-v2", "web", "gateway"])
    const retries = config.policies.traffic[0]!.routes[0]!.retries!
    expect(Duration.toMillis(retries.perTryTimeout!)).toBe(500)
  })

  it.each(["examples/container.yaml", "examples/policies.yaml"])("decodes %s", (path) => {
    const result = parseConfig(readFileSync(path, "utf8"), path)
    expect(Either.isRight(result) ? "ok" : result.left.message).toBe("ok")
  })

  it("parses durations the way operators write them", () => {
    expect(parseDurationMillis("500ms")._tag).toBe("Some")
    expect(parseDurationMillis("1h30m")).toEqual(parseDurationMillis("90m"))
    expect(parseDurationMillis("1.5s")).toEqual(parseDurationMillis("1500ms"))
    expect(parseDurationMillis("7d")).toEqual(parseDurationMillis("168h"))
    expect(parseDurationMillis("10 parsecs")._tag).toBe("None")
    expect(parseDurationMillis("-1s")._tag).toBe("None")
  })
})
