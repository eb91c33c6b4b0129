import { Schema } from "effect"
import { RE2JS } from "re2js"

/**
 * Why RE2 (the engine behind Envoy's `safe_regex` and gRPC's regex matchers) rejects `pattern`, or
 * undefined when it compiles. JavaScript's RegExp accepts things RE2 refuses (backreferences,
 * lookaround), so a pattern is checked with a port of RE2 itself.
 */
export const re2Problem = (pattern: string): string | undefined => {
  try {
    RE2JS.compile(pattern)
    return undefined
  } catch (error) {
    return error instanceof Error ? error.message : String(error)
  }
}

/** A regular expression in RE2 syntax, matched against the whole value. */
export const Re2Regex = Schema.String.pipe(
  Schema.filter((pattern) => {
    const problem = re2Problem(pattern)
    return problem === undefined || `expected an RE2 regular expression, got ${JSON.stringify(pattern)}: ${problem}`
  })
).annotations({ description: "An RE2 regular expression (Envoy's safe_regex); it must match the whole value." })
