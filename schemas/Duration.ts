import { Duration, Option, ParseResult, Schema } from "effect"

const UNIT_MILLIS: Record<string, number> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000
}

const DURATION_PATTERN = /^(\d+(?:\.\d+)?(?:ms|s|m|h|d))+$/
const PART_PATTERN = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/g

/** Parses `"10s"`, `"500ms"`, `"1h30m"`, `"24h"`, `"7d"` into milliseconds. */
export const parseDurationMillis = (input: string): Option.Option<number> => {
  const text = input.trim()
  if (!DURATION_PATTERN.test(text)) return Option.none()
  let total = 0
  for (const [, amount, unit] of text.matchAll(PART_PATTERN)) {
    total += Number(amount) * (UNIT_MILLIS[unit!] ?? Number.NaN)
  }
  return Number.isFinite(total) ? Option.some(total) : Option.none()
}

/** Formats a duration back into the shortest string the parser accepts. */
export const formatDuration = (duration: Duration.Duration): string => {
  let millis = Math.round(Duration.toMillis(duration))
  if (millis === 0) return "0s"
  const parts: Array<string> = []
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1_000], ["ms", 1]] as const) {
    if (millis >= size) {
      parts.push(`${Math.floor(millis / size)}${unit}`)
      millis %= size
    }
  }
  return parts.join("")
}

/**
 * A duration written as a string in the config file (`"10s"`, `"500ms"`, `"24h"`), decoded to a
 * `Duration`. The error names what was expected and what was found, so a person can fix it.
 */
export const DurationString: Schema.Schema<Duration.Duration, string> = Schema.transformOrFail(
  Schema.String.annotations({
    message: (issue) => `expected a duration such as "10s", got ${JSON.stringify(issue.actual)}`
  }),
  Schema.DurationFromSelf,
  {
    strict: true,
    decode: (input, _options, ast) =>
      Option.match(parseDurationMillis(input), {
        onNone: () =>
          ParseResult.fail(
            new ParseResult.Type(ast, input, `expected a duration such as "10s", got ${JSON.stringify(input)}`)
          ),
        onSome: (millis) => ParseResult.succeed(Duration.millis(millis))
      }),
    encode: (duration) => ParseResult.succeed(formatDuration(duration))
  }
).annotations({
  identifier: "Duration",
  jsonSchema: {
    type: "string",
    pattern: DURATION_PATTERN.source,
    description: "A duration such as \"500ms\", \"10s\", \"5m\", \"1h30m\" or \"24h\"."
  }
})

/** A duration that must be greater than zero. */
export const PositiveDuration = DurationString.pipe(
  Schema.filter((d) => Duration.greaterThan(d, Duration.zero) || "expected a duration greater than zero")
)
