import { Schema } from "effect"
import { createRequire } from "node:module"
import type * as Re2 from "re2js"

// re2js builds its Unicode tables when it loads (about 20 ms of CPU and 3 MB at start-up): it is
// loaded by the first pattern checked, and most configs have none.
const require = createRequire(import.meta.url)
let engine: typeof Re2.RE2JS | undefined
const re2 = (): typeof Re2.RE2JS => (engine ??= (require("re2js") as typeof Re2).RE2JS)

/**
 * Why RE2 (the engine behind Envoy's `safe_regex` and gRPC's regex matchers) rejects `pattern`, or
 * undefined when it compiles. JavaScript's RegExp accepts things RE2 refuses (backreferences,
 * lookaround), so a pattern is checked with a port of RE2 itself.
 */
export const re2Problem = (pattern: string): string | undefined => {
  try {
    re2().compile(pattern)
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
