/**
 * proto3 JSON, the form Envoy reads its YAML/JSON config in (durations as "10s", wrappers as
 * plain values, Struct as a plain object, `Any` with "@type"), converted to the object form
 * protobufjs encodes and checks. Generic over any loaded protobufjs root: it knows the
 * well-known types, nothing about Envoy's messages or this project's resources.
 */
import { Duration } from "effect"
import type protobuf from "protobufjs"

/** proto3 JSON duration: "10s", "0.250s". */
export const durationJson = (duration: Duration.Duration): string => {
  const millis = Math.round(Duration.toMillis(duration))
  return millis % 1000 === 0 ? `${millis / 1000}s` : `${(millis / 1000).toFixed(3)}s`
}

type ProtoType = protobuf.Type

const WRAPPERS = new Set(
  [
    "DoubleValue",
    "FloatValue",
    "Int64Value",
    "UInt64Value",
    "Int32Value",
    "UInt32Value",
    "BoolValue",
    "StringValue",
    "BytesValue"
  ]
    .map((name) => `.google.protobuf.${name}`)
)

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

const structValue = (value: unknown): unknown => {
  if (value === null) return { nullValue: "NULL_VALUE" }
  if (typeof value === "number") return { numberValue: value }
  if (typeof value === "string") return { stringValue: value }
  if (typeof value === "boolean") return { boolValue: value }
  if (Array.isArray(value)) return { listValue: { values: value.map(structValue) } }
  if (isObject(value)) return { structValue: struct(value) }
  return value
}
const struct = (value: Record<string, unknown>) => ({
  fields: Object.fromEntries(Object.entries(value).map(([k, v]) => [k, structValue(v)]))
})

const DURATION = /^(-?\d+)(?:\.(\d{1,9}))?s$/

/**
 * proto3 JSON (Envoy's YAML form) → the object form src/xds/Protos.ts checks: durations to
 * `{ seconds, nanos }`, wrappers to `{ value }`, Struct to `{ fields }`, recursing through `Any`.
 * What it does not recognise it leaves alone, for the checker to report.
 */
export const fromProto3Json = (type: ProtoType, value: unknown): unknown => {
  const name = type.fullName
  if (name === ".google.protobuf.Duration" && typeof value === "string") {
    const match = DURATION.exec(value)
    if (match === null) return value
    return { seconds: Number(match[1]), nanos: Number((match[2] ?? "").padEnd(9, "0")) }
  }
  if (WRAPPERS.has(name) && !isObject(value)) return { value }
  if (name === ".google.protobuf.Struct" && isObject(value)) return struct(value)
  if (!isObject(value)) return value
  if (name === ".google.protobuf.Any") {
    const url = value["@type"]
    if (typeof url !== "string") return value
    let inner: ProtoType
    try {
      inner = type.root.lookupType(url.slice(url.lastIndexOf("/") + 1))
    } catch {
      return value
    }
    const { ["@type"]: _, ...rest } = value
    return { "@type": url, ...(fromProto3Json(inner, rest) as Record<string, unknown>) }
  }
  const out: Record<string, unknown> = {}
  for (const [key, fieldValue] of Object.entries(value)) {
    const field = type.fields[key]
    const resolved = field?.resolvedType
    if (field === undefined || resolved === null || resolved === undefined || !("fields" in resolved)) {
      out[key] = fieldValue
      continue
    }
    const inner = resolved as ProtoType
    if (field.map && isObject(fieldValue)) {
      out[key] = Object.fromEntries(Object.entries(fieldValue).map(([k, v]) => [k, fromProto3Json(inner, v)]))
    } else if (field.repeated && Array.isArray(fieldValue)) {
      out[key] = fieldValue.map((item) => fromProto3Json(inner, item))
    } else {
      out[key] = fromProto3Json(inner, fieldValue)
    }
  }
  return out
}
