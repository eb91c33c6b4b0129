import { Either, ParseResult, Schema } from "effect"
import * as YAML from "yaml"
import { MeshConfig } from "../schemas/Config.js"
import { ConfigInvalid, ConfigIssue } from "../schemas/Errors.js"

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

/** Decodes an already-parsed value (JSON, a KV entry, a test fixture) as the config. */
export const decodeConfig = (value: unknown, source: string): Either.Either<MeshConfig, ConfigInvalid> =>
  Either.mapLeft(decode(value), (error) => new ConfigInvalid({ source, issues: issuesOf(error) }))

/**
 * Parses YAML text and decodes it as the config. Every problem is reported at once: YAML syntax
 * errors with line and column, schema errors with the path of the offending value.
 */
export const parseConfig = (text: string, source: string): Either.Either<MeshConfig, ConfigInvalid> => {
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
  const value = document.toJS({ maxAliasCount: 100 }) as unknown
  if (value === null || value === undefined) {
    return Either.left(new ConfigInvalid({ source, issues: [new ConfigIssue({ path: "", message: "the file is empty" })] }))
  }
  return decodeConfig(value, source)
}

const firstLine = (message: string): string => message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "")
