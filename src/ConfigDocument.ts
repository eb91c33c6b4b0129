import { Either, ParseResult, Schema } from "effect"
import * as YAML from "yaml"
import { crossFieldIssues, MeshConfig, type Policies } from "../schemas/Config.js"
import { ConfigInvalid, ConfigIssue } from "../schemas/Errors.js"
import { compileConfig, type CompiledPolicy, compilePolicies, type PolicyIssue } from "./policy/Compile.js"

/** `["services", 2, "healthCheck"]` → `services[2].healthCheck` */
export const formatPath = (path: ReadonlyArray<PropertyKey>): string =>
  path.reduce<string>((text, key) => {
    if (typeof key === "number") return `${text}[${key}]`
    const name = String(key)
    const plain = /^[A-Za-z_$][\w$-]*$/.test(name)
    if (!plain) return `${text}[${JSON.stringify(name)}]`
    return text === "" ? name : `${text}.${name}`
  }, "")

const decode = Schema.decodeUnknownEither(MeshConfig, { errors: "all", onExcessProperty: "error" })

const issuesOf = (error: ParseResult.ParseError): ReadonlyArray<ConfigIssue> => {
  const seen = new Set<string>()
  const issues: Array<ConfigIssue> = []
  for (const issue of ParseResult.ArrayFormatter.formatErrorSync(error)) {
    const entry = new ConfigIssue({ path: formatPath(issue.path), message: issue.message })
    const key = entry.toString()
    if (!seen.has(key)) {
      seen.add(key)
      issues.push(entry)
    }
  }
  return issues
}

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === "object" && value !== null

const recordsOf = (value: unknown): Array<Record<string, unknown>> =>
  Array.isArray(value) ? value.map((item) => (isRecord(item) ? item : {})) : []

const textOf = (value: unknown): string => (typeof value === "string" ? value : "")

/** A compiler issue as the config document reports it (see `PolicyIssue.kind`). */
const configIssueOf = (issue: PolicyIssue): ConfigIssue =>
  new ConfigIssue({
    path: issue.field,
    message: issue.kind === "catalogue" ? issue.message : `${issue.message} (policy "${issue.policy}")`
  })

/**
 * When the structure does not decode, the cross-field rules (unique names, references; the
 * policies' from their compiler) still run on what can be read, so one pass reports every problem
 * in the file.
 */
const rawCrossFieldIssues = (value: unknown): ReadonlyArray<ConfigIssue> => {
  if (!isRecord(value)) return []
  const policies = isRecord(value.policies) ? value.policies : {}
  const security = isRecord(policies.security) ? policies.security : {}
  const services = recordsOf(value.services).map((service) => ({
    name: textOf(service.name),
    port: service.port,
    endpoints: recordsOf(service.endpoints).map((e) => ({ address: textOf(e.address), port: e.port }))
  }))
  const lenientPolicies = {
    traffic: recordsOf(policies.traffic).map((policy) => ({
      name: textOf(policy.name),
      service: textOf(policy.service),
      routes: recordsOf(policy.routes).map((route) => ({
        destinations: recordsOf(route.destinations).map((d) => ({ service: textOf(d.service) })),
        ...(isRecord(route.mirror) ? { mirror: { service: textOf(route.mirror.service) } } : {})
      }))
    })),
    security: {
      mtls: "permissive",
      defaultAction: "allow",
      authorization: recordsOf(security.authorization).map((rule) => ({
        name: textOf(rule.name),
        action: rule.action === "deny" ? "deny" : "allow",
        to: textOf(rule.to),
        // A `{ principal }` peer names no service.
        from: recordsOf(rule.from).map((peer) =>
          "principal" in peer ? { principal: textOf(peer.principal) } : { service: textOf(peer.service) }
        )
      }))
    },
    resilience: recordsOf(policies.resilience).map((policy) => ({ service: textOf(policy.service) })),
    observability: {}
  }
  const serviceIssues = crossFieldIssues({ services } as unknown as Parameters<typeof crossFieldIssues>[0], {
    partial: true
  })
    .map((issue) => new ConfigIssue({ path: formatPath(issue.path), message: issue.message }))
  const compiled = compilePolicies(lenientPolicies as unknown as Policies, {
    trustDomain: "",
    services: services.map((s) => s.name),
    tcpServices: []
  })
  return [...serviceIssues, ...(Either.isLeft(compiled) ? compiled.left.issues.map(configIssueOf) : [])]
}

/**
 * Decodes an already-parsed value (JSON, a KV entry, a test fixture) as the config. A config
 * decodes only if its policies also compile, so everything downstream (the snapshot, the Policy
 * layer) sees policies that mean what they say: a rule the compiler would drop never reaches Envoy.
 * The schema checks structure and the services; the policy compiler is the one policy checker.
 */
export const decodeConfig = (value: unknown, source: string): Either.Either<MeshConfig, ConfigInvalid> =>
  Either.map(decodeConfigWithPolicy(value, source), (checked) => checked.config)

/** A decoded config with its policies compiled: compiled once, where the config is read. */
export interface CheckedConfig {
  readonly config: MeshConfig
  readonly policy: CompiledPolicy
}

/** `decodeConfig`, keeping the compiled policy that decoding had to produce anyway. */
export const decodeConfigWithPolicy = (value: unknown, source: string): Either.Either<CheckedConfig, ConfigInvalid> =>
  Either.flatMap(decodeStructure(value, source), (config) =>
    Either.match(compileConfig(config), {
      onLeft: (error) => Either.left(new ConfigInvalid({ source, issues: error.issues.map(configIssueOf) })),
      onRight: (policy) => Either.right({ config, policy })
    }))

const decodeStructure = (value: unknown, source: string): Either.Either<MeshConfig, ConfigInvalid> =>
  Either.mapLeft(decode(value), (error) => {
    const issues = [...issuesOf(error)]
    const known = new Set(issues.map(String))
    for (const issue of rawCrossFieldIssues(value)) {
      if (!known.has(issue.toString())) issues.push(issue)
    }
    return new ConfigInvalid({ source, issues })
  })

/**
 * Parses YAML text and decodes it as the config. Every problem is reported at once: YAML syntax
 * errors with line and column, schema errors with the path of the offending value.
 */
export const parseConfig = (text: string, source: string): Either.Either<MeshConfig, ConfigInvalid> =>
  Either.map(parseConfigWithPolicy(text, source), (checked) => checked.config)

/** `parseConfig`, keeping the compiled policy. */
export const parseConfigWithPolicy = (text: string, source: string): Either.Either<CheckedConfig, ConfigInvalid> =>
  Either.flatMap(parseYaml(text, source), (value) => decodeConfigWithPolicy(value, source))

/** How many alias expansions a document may make (yaml's own bound against exponential expansion). */
const MAX_ALIAS_COUNT = 100

/**
 * YAML text to a plain value, the way every config document is read (the file, a Consul KV
 * value): duplicate keys are errors, merge keys work, syntax errors give line and column.
 */
export const parseYaml = (text: string, source: string): Either.Either<unknown, ConfigInvalid> => {
  const document = YAML.parseDocument(text, { prettyErrors: true, uniqueKeys: true, merge: true })
  if (document.errors.length > 0) {
    return Either.left(
      new ConfigInvalid({
        source,
        issues: document.errors.map((error) => {
          const position = error.linePos?.[0]
          const where = position ? `line ${position.line}, column ${position.col}` : ""
          return new ConfigIssue({ path: where, message: `YAML syntax error: ${firstLine(error.message)}` })
        })
      })
    )
  }
  // `maxAliasCount` makes yaml throw (a ReferenceError) on an alias bomb ("billion laughs") instead
  // of expanding it: that is bad input like any other, reported as one issue, never a defect.
  const converted = Either.try({
    try: () => document.toJS({ maxAliasCount: MAX_ALIAS_COUNT }) as unknown,
    catch: (error) =>
      new ConfigInvalid({
        source,
        issues: [
          new ConfigIssue({
            path: "",
            message: `YAML cannot be read: ${firstLine(error instanceof Error ? error.message : String(error))}`
          })
        ]
      })
  })
  if (Either.isLeft(converted)) return converted
  const value = converted.right
  if (value === null || value === undefined) {
    return Either.left(
      new ConfigInvalid({ source, issues: [new ConfigIssue({ path: "", message: "the file is empty" })] })
    )
  }
  return Either.right(value)
}

const firstLine = (message: string): string => message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "")
