/**
 * Envoy's v3 protobuf definitions, loaded at run time from the `.proto` files that
 * `@grpc/grpc-js-xds` ships (we keep no copies), plus a strict validator: protobufjs `fromObject`
 * silently drops fields it does not know, so a misspelled `conect_timeout` would vanish without a
 * word. `check` rejects unknown field names, wrong JSON types, two members of one oneof, unknown
 * enum names and the commonest protoc-gen-validate rules (required messages and oneofs, non-empty
 * strings, minimum repeated sizes), naming the exact path.
 *
 * Field names are the proto names (snake_case, `keepCase`), as in Envoy's docs and YAML configs.
 * One exception comes from protobufjs itself: its built-in `google/protobuf/struct.proto` names
 * `Value`'s fields in camelCase (`stringValue`, `numberValue`), and `check` enforces that too.
 * Wrapper types (`google.protobuf.UInt32Value` and friends) are objects here: `{ value: 3 }`, not
 * the bare `3` of Envoy's JSON/YAML form.
 * Inside an `Any`, the JSON form `{ "@type": "type.googleapis.com/<full name>", ...fields }` is
 * accepted and checked against the named type.
 */
import { Either, Schema } from "effect"
import * as NodeFs from "node:fs"
import { createRequire } from "node:module"
import * as NodePath from "node:path"
import protobuf from "protobufjs"
import { durationProto } from "../envoy/Messages.js"
import { ENVOY_PROTOS } from "./EnvoyProtos.js"
import { typeUrl } from "./TypeUrls.js"

/** The `.proto` files we load; everything they import comes along. */
const PROTO_FILES: ReadonlyArray<string> = [
  "envoy/service/discovery/v3/ads.proto",
  "envoy/service/secret/v3/sds.proto",
  "envoy/config/bootstrap/v3/bootstrap.proto",
  "envoy/config/listener/v3/listener.proto",
  "envoy/config/route/v3/route.proto",
  "envoy/config/cluster/v3/cluster.proto",
  "envoy/config/endpoint/v3/endpoint.proto",
  "envoy/config/rbac/v3/rbac.proto",
  "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
  "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
  "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
  "envoy/extensions/filters/network/rbac/v3/rbac.proto",
  "envoy/extensions/filters/http/router/v3/router.proto",
  "envoy/extensions/filters/http/rbac/v3/rbac.proto",
  "envoy/extensions/filters/http/fault/v3/fault.proto",
  "envoy/extensions/transport_sockets/tls/v3/tls.proto",
  "envoy/extensions/transport_sockets/tls/v3/secret.proto",
  "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
  "envoy/extensions/access_loggers/stream/v3/stream.proto",
  // Policy enforcement (src/policy/Envoy.ts): the local rate limit filter and the OpenTelemetry tracer.
  "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto",
  "envoy/config/trace/v3/opentelemetry.proto",
  // Sidecar bootstraps (src/sidecar/Bootstrap.ts): the overload manager's resource monitors.
  "envoy/extensions/resource_monitors/fixed_heap/v3/fixed_heap.proto",
  "envoy/extensions/resource_monitors/downstream_connections/v3/downstream_connections.proto"
]

/** Fully-qualified names of the types the mesh uses most. */
export const Types = {
  Listener: "envoy.config.listener.v3.Listener",
  RouteConfiguration: "envoy.config.route.v3.RouteConfiguration",
  Cluster: "envoy.config.cluster.v3.Cluster",
  ClusterLoadAssignment: "envoy.config.endpoint.v3.ClusterLoadAssignment",
  Secret: "envoy.extensions.transport_sockets.tls.v3.Secret",
  HttpConnectionManager: "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
  Router: "envoy.extensions.filters.http.router.v3.Router",
  HttpRbac: "envoy.extensions.filters.http.rbac.v3.RBAC",
  NetworkRbac: "envoy.extensions.filters.network.rbac.v3.RBAC",
  TcpProxy: "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
  TlsInspector: "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
  UpstreamTlsContext: "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
  DownstreamTlsContext: "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
  HttpProtocolOptions: "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
  StdoutAccessLog: "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
  Bootstrap: "envoy.config.bootstrap.v3.Bootstrap",
  DiscoveryRequest: "envoy.service.discovery.v3.DiscoveryRequest",
  DiscoveryResponse: "envoy.service.discovery.v3.DiscoveryResponse",
  DeltaDiscoveryRequest: "envoy.service.discovery.v3.DeltaDiscoveryRequest",
  DeltaDiscoveryResponse: "envoy.service.discovery.v3.DeltaDiscoveryResponse",
  Any: "google.protobuf.Any"
} as const

// Built in src/envoy/Messages.ts (neutral ground for every module that writes Envoy config).
export { durationProto }
// The type URLs live in their own module (naming a type needs no protos); re-exported for callers of this one.
export { TYPE_URL_PREFIX, typeUrl, TypeUrls } from "./TypeUrls.js"

const require = createRequire(import.meta.url)

/** Where the `.proto` files live: grpc-js-xds's deps, and protobufjs's own google/protobuf. */
const includeDirs = (): ReadonlyArray<string> => {
  const xds = NodePath.dirname(require.resolve("@grpc/grpc-js-xds/package.json"))
  const pbjs = NodePath.dirname(require.resolve("protobufjs/package.json"))
  return [
    ...["envoy-api", "xds", "googleapis", "protoc-gen-validate"].map((dir) => NodePath.join(xds, "deps", dir)),
    pbjs
  ]
}

let loaded: protobuf.Root | undefined

/**
 * Parses the `.proto` files themselves (about 0.5 s of CPU and hundreds of files read): what
 * `npm run protos` does to write the descriptor `root()` loads, and what the test that keeps the
 * descriptor true to the installed `.proto` files compares it with. A missing or broken proto file
 * is a packaging bug, so it throws rather than returning an error.
 */
export const loadProtoFiles = (): protobuf.Root => {
  const dirs = includeDirs()
  const r = new protobuf.Root()
  r.resolvePath = (_origin, target) => {
    for (const dir of dirs) {
      const candidate = NodePath.join(dir, target)
      if (NodeFs.existsSync(candidate)) return candidate
    }
    return target
  }
  r.loadSync([...PROTO_FILES], { keepCase: true })
  r.resolveAll()
  return r
}

/** The descriptor `npm run protos` writes: `loadProtoFiles().toJSON()`, as the text of EnvoyProtos.ts. */
export const protoDescriptor = (r: protobuf.Root = loadProtoFiles()): string => JSON.stringify(r.toJSON())

/**
 * The protobufjs Root of every type above, from the descriptor generated at build time
 * (src/xds/EnvoyProtos.ts, `npm run protos`): the same types `loadProtoFiles` parses (the strict
 * checker's options included), in half its CPU and without reading the `.proto` files at start-up.
 * Cached for the process.
 */
export const root = (): protobuf.Root => {
  if (loaded !== undefined) return loaded
  const r = protobuf.Root.fromJSON(JSON.parse(ENVOY_PROTOS))
  r.resolveAll()
  loaded = r
  return r
}

/** Looks up a message type by full name (with or without a leading dot). */
const typeCache = new Map<string, protobuf.Type>()
export const lookupType = (fullName: string): protobuf.Type => {
  let type = typeCache.get(fullName)
  if (type === undefined) {
    type = root().lookupType(fullName.replace(/^\./, ""))
    typeCache.set(fullName, type)
  }
  return type
}

// ---------------------------------------------------------------------------------------------
// Strict validation
// ---------------------------------------------------------------------------------------------

/** A plain object that does not fit an Envoy proto type, with every problem found in it. */
export class ProtoInvalid extends Schema.TaggedError<ProtoInvalid>()("ProtoInvalid", {
  type: Schema.String,
  issues: Schema.Array(Schema.String)
}) {
  override get message(): string {
    return `not a valid ${this.type}:\n${this.issues.map((issue) => `  ${issue}`).join("\n")}`
  }
}

const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array)

const INT64 = new Set(["int64", "uint64", "sint64", "fixed64", "sfixed64"])
const INT32 = new Set(["int32", "uint32", "sint32", "fixed32", "sfixed32"])

const closest = (name: string, candidates: ReadonlyArray<string>): string | undefined => {
  let best: string | undefined
  let bestDistance = Math.max(2, Math.floor(name.length / 3)) + 1
  for (const candidate of candidates) {
    const d = editDistance(name, candidate)
    if (d < bestDistance) {
      best = candidate
      bestDistance = d
    }
  }
  return best
}

const editDistance = (a: string, b: string): number => {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i)
  for (let i = 1; i <= a.length; i++) {
    let previous = row[0]!
    row[0] = i
    for (let j = 1; j <= b.length; j++) {
      const current = row[j]!
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, previous + (a[i - 1] === b[j - 1] ? 0 : 1))
      previous = current
    }
  }
  return row[b.length]!
}

const show = (value: unknown): string => {
  const text = JSON.stringify(value)
  return text === undefined ? String(value) : text.length > 60 ? `${text.slice(0, 57)}...` : text
}

type Issues = Array<string>

/**
 * Where the checker is, as a stack of segments (kind, value) rendered only when an issue is
 * reported: building a path string for every field of every resource was most of the check's cost
 * (a 5,000-service snapshot checks some 100,000 fields, and nearly all of them fit).
 */
type Path = Array<string | number>
const FIELD = 0
const INDEX = 1
const KEY = 2

const render = (path: Path): string => {
  let text = ""
  for (let i = 0; i < path.length; i += 2) {
    const kind = path[i]
    const value = path[i + 1]!
    if (kind === FIELD) text = text === "" ? String(value) : `${text}.${value}`
    else if (kind === INDEX) text = `${text}[${value}]`
    else text = `${text}[${show(value)}]`
  }
  return text
}

const at = (path: Path, key: string): string => {
  const text = render(path)
  return text === "" ? key : `${text}.${key}`
}

const where = (path: Path): string => render(path) || "(root)"

const checkScalar = (type: string, value: unknown, path: Path, issues: Issues): void => {
  const fail = (expected: string) => issues.push(`${render(path)}: expected ${expected}, got ${show(value)}`)
  switch (type) {
    case "string":
      if (typeof value !== "string") fail("a string")
      return
    case "bool":
      if (typeof value !== "boolean") fail("true or false")
      return
    case "bytes":
      if (!(value instanceof Uint8Array) && typeof value !== "string") fail("bytes (Uint8Array or base64 string)")
      return
    case "double":
    case "float":
      if (typeof value !== "number") fail("a number")
      return
    default:
      if (INT32.has(type)) {
        if (typeof value !== "number" || !Number.isInteger(value)) fail(`an integer (${type})`)
        else if (type.startsWith("u") || type === "fixed32") {
          if (value < 0) fail(`a non-negative integer (${type})`)
        }
        return
      }
      if (INT64.has(type)) {
        const ok = (typeof value === "number" && Number.isInteger(value)) ||
          (typeof value === "string" && /^-?\d+$/.test(value)) ||
          typeof value === "bigint"
        if (!ok) fail(`an integer (${type})`)
        return
      }
      issues.push(`${render(path)}: unsupported scalar type ${type}`)
  }
}

interface Rules {
  readonly required: boolean
  readonly minLen: number | undefined
  readonly minItems: number | undefined
}

/** What the checker needs of a type, computed once per type (protobufjs getters are not cheap). */
interface TypeInfo {
  readonly name: string
  readonly isAny: boolean
  readonly rules: ReadonlyMap<string, Rules>
  readonly required: ReadonlyArray<string>
  readonly oneofs: ReadonlyArray<
    { readonly name: string; readonly members: ReadonlyArray<string>; readonly required: boolean }
  >
}

const infoCache = new WeakMap<protobuf.Type, TypeInfo>()
const infoOf = (type: protobuf.Type): TypeInfo => {
  let info = infoCache.get(type)
  if (info === undefined) {
    const rules = new Map(type.fieldsArray.map((field) => [field.name, rulesOf(field.options)]))
    info = {
      name: type.fullName.slice(1),
      isAny: type.fullName === ".google.protobuf.Any",
      rules,
      // A rule on a oneof member applies only when that member is the one chosen.
      required: type.fieldsArray.filter((f) => f.partOf === null && rules.get(f.name)!.required).map((f) => f.name),
      oneofs: type.oneofsArray.map((o) => ({
        name: o.name,
        members: o.oneof,
        required: o.options?.["(validate.required)"] === true
      }))
    }
    infoCache.set(type, info)
  }
  return info
}

const rulesOf = (options: Record<string, unknown> | undefined): Rules => ({
  required: options?.["(validate.rules).message.required"] === true,
  minLen: typeof options?.["(validate.rules).string.min_len"] === "number"
    ? (options["(validate.rules).string.min_len"] as number)
    : undefined,
  minItems: typeof options?.["(validate.rules).repeated.min_items"] === "number"
    ? (options["(validate.rules).repeated.min_items"] as number)
    : undefined
})

const checkValue = (field: protobuf.Field, value: unknown, path: Path, issues: Issues): void => {
  const resolved = field.resolvedType
  if (resolved instanceof protobuf.Type) {
    checkMessage(resolved, value, path, issues, false)
  } else if (resolved instanceof protobuf.Enum) {
    if (typeof value === "string") {
      if (!(value in resolved.values)) {
        issues.push(
          `${render(path)}: unknown ${resolved.name} value ${show(value)} (one of ${
            Object.keys(resolved.values).join(", ")
          })`
        )
      }
    } else if (typeof value !== "number" || !Number.isInteger(value)) {
      issues.push(`${render(path)}: expected a ${resolved.name} name, got ${show(value)}`)
    }
  } else {
    checkScalar(field.type, value, path, issues)
  }
}

const checkAny = (value: Record<string, unknown>, path: Path, issues: Issues): void => {
  const url = value["@type"]
  if (url === undefined) {
    for (const key of Object.keys(value)) {
      if (key !== "type_url" && key !== "value") {
        issues.push(`${render(path)}.${key}: unknown field in google.protobuf.Any (use "@type")`)
      }
    }
    if (typeof value["type_url"] !== "string") issues.push(`${render(path)}.type_url: expected a string`)
    return
  }
  if (typeof url !== "string") {
    issues.push(`${render(path)}["@type"]: expected a type URL string, got ${show(url)}`)
    return
  }
  const name = url.slice(url.lastIndexOf("/") + 1)
  let inner: protobuf.Type
  try {
    inner = lookupType(name)
  } catch {
    issues.push(`${render(path)}["@type"]: unknown type ${show(url)} (not among the loaded Envoy protos)`)
    return
  }
  // The inner message is the Any's other keys: checked in place, "@type" skipped (no copy).
  checkMessage(inner, value, path, issues, true)
}

const checkMessage = (type: protobuf.Type, value: unknown, path: Path, issues: Issues, inAny: boolean): void => {
  const info = infoOf(type)
  if (!isPlainObject(value)) {
    issues.push(`${where(path)}: expected a ${info.name} object, got ${show(value)}`)
    return
  }
  if (info.isAny) return checkAny(value, path, issues)
  const fields = type.fields
  for (const key in value) {
    const fieldValue = value[key]
    if (fieldValue === undefined || (inAny && key === "@type")) continue
    const field = fields[key]
    if (field === undefined) {
      const hint = closest(key, Object.keys(fields))
      issues.push(`${at(path, key)}: unknown field in ${info.name}${hint ? ` (did you mean "${hint}"?)` : ""}`)
      continue
    }
    if (fieldValue === null) {
      issues.push(`${at(path, key)}: null is not a value (leave the field out instead)`)
      continue
    }
    const rules = info.rules.get(key)!
    path.push(FIELD, key)
    if (field.map) {
      if (!isPlainObject(fieldValue)) {
        issues.push(`${render(path)}: expected a map object, got ${show(fieldValue)}`)
      } else {
        for (const mapKey in fieldValue) {
          path.push(KEY, mapKey)
          checkValue(field, fieldValue[mapKey], path, issues)
          path.length -= 2
        }
      }
    } else if (field.repeated) {
      if (!Array.isArray(fieldValue)) {
        issues.push(`${render(path)}: expected a list, got ${show(fieldValue)}`)
      } else {
        if (rules.minItems !== undefined && fieldValue.length < rules.minItems) {
          issues.push(`${render(path)}: needs at least ${rules.minItems} item(s)`)
        }
        for (let i = 0; i < fieldValue.length; i++) {
          path.push(INDEX, i)
          checkValue(field, fieldValue[i], path, issues)
          path.length -= 2
        }
      }
    } else {
      checkValue(field, fieldValue, path, issues)
      if (rules.minLen !== undefined && typeof fieldValue === "string" && fieldValue.length < rules.minLen) {
        issues.push(`${render(path)}: must not be empty`)
      }
    }
    path.length -= 2
  }
  // Present: set to anything but undefined (null was reported above, and still counts as set).
  const present = (name: string) => value[name] !== undefined && fields[name] !== undefined
  for (const name of info.required) if (!present(name)) issues.push(`${at(path, name)}: required`)
  for (const oneof of info.oneofs) {
    let set = 0
    for (const member of oneof.members) if (present(member)) set++
    if (set > 1) {
      issues.push(
        `${where(path)}: only one of ${oneof.members.filter(present).join(", ")} may be set (oneof ${oneof.name})`
      )
    }
    if (set === 0 && oneof.required) issues.push(`${where(path)}: one of ${oneof.members.join(", ")} is required`)
  }
}

/** Every problem with `value` as a `typeName` (a full name like "envoy.config.cluster.v3.Cluster"); empty when it fits. */
export const check = (typeName: string, value: unknown): ReadonlyArray<string> => {
  const issues: Issues = []
  checkMessage(lookupType(typeName), value, [], issues, false)
  return issues
}

/** Checks strictly, then builds the protobufjs message. */
export const validate = (typeName: string, value: unknown): Either.Either<protobuf.Message, ProtoInvalid> => {
  const issues = check(typeName, value)
  if (issues.length > 0) return Either.left(new ProtoInvalid({ type: typeName, issues }))
  return Either.right(lookupType(typeName).fromObject(value as Record<string, unknown>))
}

/** Checks strictly and encodes to protobuf bytes. */
export const encode = (typeName: string, value: unknown): Either.Either<Uint8Array, ProtoInvalid> =>
  Either.map(validate(typeName, value), (message) => lookupType(typeName).encode(message).finish())

/** An encoded `google.protobuf.Any`: what xDS responses carry. */
export interface EncodedAny {
  readonly type_url: string
  readonly value: Uint8Array
}

/** Checks strictly and encodes as an `Any` whose `type_url` names `typeName`. */
export const encodeAny = (typeName: string, value: unknown): Either.Either<EncodedAny, ProtoInvalid> =>
  Either.map(encode(typeName, value), (bytes) => ({ type_url: typeUrl(typeName), value: bytes }))

/** Decodes bytes to a plain object in the proto's own field names (enums as names, 64-bit ints as strings, Anys expanded). */
export const decode = (typeName: string, bytes: Uint8Array): Record<string, unknown> => {
  const type = lookupType(typeName)
  // json: nested Anys come out in their `@type` form, readable in tests and status output.
  return type.toObject(type.decode(bytes), { enums: String, longs: String, bytes: String, json: true })
}

/** Decodes an `Any` into its inner type (when loaded), in the same plain form as `decode`. */
export const decodeAny = (any: { readonly type_url: string; readonly value: Uint8Array }): Record<string, unknown> =>
  decode(any.type_url.slice(any.type_url.lastIndexOf("/") + 1), any.value)
