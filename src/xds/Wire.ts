/**
 * The gRPC wire for xDS: service definitions whose response serializer is the identity (responses
 * are assembled from pre-encoded resource bytes), request decoding through the loaded protos, and
 * grpc.health.v1 (two one-field messages, encoded by hand rather than shipping a .proto file).
 */
import type * as grpc from "@grpc/grpc-js"
import protobuf from "protobufjs"
import { lookupType, Types } from "./Protos.js"
import type { XdsResource } from "./XdsSnapshot.js"

export interface NodeInfo {
  readonly id: string
  readonly cluster: string
  readonly user_agent_name: string
  readonly user_agent_version: string
}

export interface RequestError {
  readonly code: number
  readonly message: string
}

export interface SotwRequest {
  readonly version_info: string
  readonly node: NodeInfo | undefined
  readonly resource_names: ReadonlyArray<string>
  /** The encoded `resource_names` fields, in order: equal bytes, equal names (`encodeResourceNames`). */
  readonly resourceNames?: Buffer
  readonly type_url: string
  readonly response_nonce: string
  readonly error_detail: RequestError | undefined
}

export interface DeltaRequest {
  readonly node: NodeInfo | undefined
  readonly type_url: string
  readonly resource_names_subscribe: ReadonlyArray<string>
  /** The encoded `resource_names_subscribe` fields, in order (`encodeResourceNames`). */
  readonly subscribeNames?: Buffer
  readonly resource_names_unsubscribe: ReadonlyArray<string>
  readonly initial_resource_versions: Readonly<Record<string, string>>
  readonly response_nonce: string
  readonly error_detail: RequestError | undefined
}

const nodeOf = (node: unknown): NodeInfo | undefined => {
  if (node === null || node === undefined) return undefined
  const n = node as Partial<Record<keyof NodeInfo, unknown>> & { user_agent_version_type?: string }
  return {
    id: typeof n.id === "string" ? n.id : "",
    cluster: typeof n.cluster === "string" ? n.cluster : "",
    user_agent_name: typeof n.user_agent_name === "string" ? n.user_agent_name : "",
    user_agent_version: typeof n.user_agent_version === "string" ? n.user_agent_version : ""
  }
}

const errorOf = (status: unknown): RequestError | undefined => {
  if (status === null || status === undefined) return undefined
  const s = status as { code?: number; message?: string }
  return { code: s.code ?? 0, message: s.message ?? "" }
}

/**
 * A request's field 3 (SotW `resource_names`, Delta `resource_names_subscribe`) apart from the
 * rest: an ACK repeats the whole SotW subscription (a thousand names from a sidecar), and a
 * thousand sidecars ask for the same thousand names, so those fields' bytes, in order, are kept to
 * be recognised (`encodeResourceNames`) and the names are decoded only when read.
 */
const splitNames = (bytes: Buffer): { readonly names: Buffer; readonly rest: Buffer } => {
  const reader = protobuf.Reader.create(bytes)
  // [start, end) ranges of the name fields and of the others; consecutive fields share one range.
  const names: Array<number> = []
  const rest: Array<number> = []
  while (reader.pos < reader.len) {
    const start = reader.pos
    const tag = reader.uint32()
    reader.skipType(tag & 7)
    const ranges = tag === 26 ? names : rest
    if (ranges.length > 0 && ranges[ranges.length - 1] === start) ranges[ranges.length - 1] = reader.pos
    else ranges.push(start, reader.pos)
  }
  return { names: slices(bytes, names), rest: slices(bytes, rest) }
}

/** A DiscoveryRequest, its `resource_names` decoded only when read (see `splitNames`). */
export const decodeSotwRequest = (bytes: Buffer): SotwRequest => {
  const { names, rest } = splitNames(bytes)
  const m = lookupType(Types.DiscoveryRequest).decode(rest) as unknown as Record<string, unknown>
  let decoded: ReadonlyArray<string> | undefined
  return {
    version_info: (m["version_info"] as string | undefined) ?? "",
    node: nodeOf(m["node"]),
    get resource_names() {
      return decoded ??= decodeResourceNames(names)
    },
    resourceNames: names,
    type_url: (m["type_url"] as string | undefined) ?? "",
    response_nonce: (m["response_nonce"] as string | undefined) ?? "",
    error_detail: errorOf(m["error_detail"])
  }
}

/** The bytes of `ranges` ([start, end) pairs): a slice of `bytes` (no copy) when there is one range. */
const slices = (bytes: Buffer, ranges: ReadonlyArray<number>): Buffer => {
  if (ranges.length === 2) return bytes.subarray(ranges[0], ranges[1])
  const parts: Array<Buffer> = []
  for (let i = 0; i < ranges.length; i += 2) parts.push(bytes.subarray(ranges[i], ranges[i + 1]))
  return concat(parts)
}

const decodeResourceNames = (fields: Buffer): ReadonlyArray<string> => {
  const reader = protobuf.Reader.create(fields)
  const out: Array<string> = []
  while (reader.pos < reader.len) {
    reader.uint32()
    out.push(reader.string())
  }
  return out
}

/** `names` as a request's field 3 (`resource_names`, `resource_names_subscribe`): what `splitNames` keeps of them. */
export const encodeResourceNames = (names: ReadonlyArray<string>): Buffer => concat(names.map((n) => stringField(3, n)))

/** A DeltaDiscoveryRequest, its `resource_names_subscribe` decoded only when read (see `splitNames`). */
export const decodeDeltaRequest = (bytes: Buffer): DeltaRequest => {
  const { names, rest } = splitNames(bytes)
  const m = lookupType(Types.DeltaDiscoveryRequest).decode(rest) as unknown as Record<string, unknown>
  let decoded: ReadonlyArray<string> | undefined
  return {
    node: nodeOf(m["node"]),
    type_url: (m["type_url"] as string | undefined) ?? "",
    get resource_names_subscribe() {
      return decoded ??= decodeResourceNames(names)
    },
    subscribeNames: names,
    resource_names_unsubscribe: (m["resource_names_unsubscribe"] as Array<string> | undefined) ?? [],
    initial_resource_versions: (m["initial_resource_versions"] as Record<string, string> | undefined) ?? {},
    response_nonce: (m["response_nonce"] as string | undefined) ?? "",
    error_detail: errorOf(m["error_detail"])
  }
}

const CONTROL_PLANE = "mesh-controller"

/** A length-delimited field (tag, length, bytes), as protobuf.js writes it: an empty string too. */
const stringField = (field: number, value: string): Buffer =>
  Buffer.from(protobuf.Writer.create().uint32((field << 3) | 2).string(value).finish())

/** `control_plane` {identifier}: the same bytes on every response of a protocol. */
const SOTW_CONTROL_PLANE = Buffer.from(
  protobuf.Writer.create().uint32(50).fork().uint32(10).string(CONTROL_PLANE).ldelim().finish()
)
const DELTA_CONTROL_PLANE = Buffer.from(
  protobuf.Writer.create().uint32(58).fork().uint32(10).string(CONTROL_PLANE).ldelim().finish()
)

/**
 * A resource as a response's `resources` entry, encoded once per resource and shared by every
 * response that carries it: SotW's is the Any itself, Delta's a `Resource{version=1, resource=2,
 * name=3}` around it. A response is then the concatenation of these (protobuf's repeated fields
 * are their entries one after the other), not a message encoded again for each stream.
 */
const entryCache = (encode: (r: XdsResource) => Uint8Array) => {
  const entries = new WeakMap<XdsResource, Buffer>()
  return (r: XdsResource): Buffer => {
    let entry = entries.get(r)
    if (entry === undefined) entries.set(r, entry = Buffer.from(encode(r)))
    return entry
  }
}
const sotwEntry = entryCache((r) => protobuf.Writer.create().uint32(18).bytes(r.any).finish())
const deltaEntry = entryCache((r) =>
  protobuf.Writer.create().uint32(18).fork().uint32(10).string(r.version).uint32(18).bytes(r.any).uint32(26)
    .string(r.name).ldelim().finish()
)

const concat = (parts: ReadonlyArray<Uint8Array>): Buffer => Buffer.concat(parts as Array<Uint8Array>)

/**
 * DiscoveryResponse {version_info=1, resources=2, type_url=4, nonce=5, control_plane=6{identifier=1}},
 * from the resources' shared entries: one copy of them into the response.
 */
export const encodeSotwResponse = (
  version: string,
  resources: Iterable<XdsResource>,
  typeUrl: string,
  nonce: string
): Buffer => {
  const parts: Array<Uint8Array> = [stringField(1, version)]
  for (const r of resources) parts.push(sotwEntry(r))
  parts.push(stringField(4, typeUrl), stringField(5, nonce), SOTW_CONTROL_PLANE)
  return concat(parts)
}

/**
 * DeltaDiscoveryResponse {system_version_info=1, resources=2 (Resource{version=1, resource=2,
 * name=3}), type_url=4, nonce=5, removed_resources=6, control_plane=7}, from the resources' shared
 * entries.
 */
export const encodeDeltaResponse = (
  systemVersion: string,
  resources: Iterable<XdsResource>,
  removed: Iterable<string>,
  typeUrl: string,
  nonce: string
): Buffer => {
  const parts: Array<Uint8Array> = [stringField(1, systemVersion)]
  for (const r of resources) parts.push(deltaEntry(r))
  parts.push(stringField(4, typeUrl), stringField(5, nonce))
  for (const name of removed) parts.push(stringField(6, name))
  parts.push(DELTA_CONTROL_PLANE)
  return concat(parts)
}

const identity = (b: Buffer) => b

const bidi = <Req>(path: string, typeName: string, decode: (b: Buffer) => Req): grpc.MethodDefinition<Req, Buffer> => ({
  path,
  requestStream: true,
  responseStream: true,
  requestSerialize: (request) => {
    const type = lookupType(typeName)
    return Buffer.from(type.encode(type.fromObject(request as Record<string, unknown>)).finish())
  },
  requestDeserialize: decode,
  responseSerialize: identity,
  responseDeserialize: identity
})

const ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService"
const SDS = "/envoy.service.secret.v3.SecretDiscoveryService"

export const adsService = {
  StreamAggregatedResources: bidi(`${ADS}/StreamAggregatedResources`, Types.DiscoveryRequest, decodeSotwRequest),
  DeltaAggregatedResources: bidi(`${ADS}/DeltaAggregatedResources`, Types.DeltaDiscoveryRequest, decodeDeltaRequest)
} satisfies grpc.ServiceDefinition

/** SDS is the same protocol restricted to Secrets; Envoy uses it when a config source names SDS. */
export const sdsService = {
  StreamSecrets: bidi(`${SDS}/StreamSecrets`, Types.DiscoveryRequest, decodeSotwRequest),
  DeltaSecrets: bidi(`${SDS}/DeltaSecrets`, Types.DeltaDiscoveryRequest, decodeDeltaRequest)
} satisfies grpc.ServiceDefinition

// ---------------------------------------------------------------------------------------------
// grpc.health.v1
// ---------------------------------------------------------------------------------------------

export const ServingStatus = { UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2, SERVICE_UNKNOWN: 3 } as const
export type ServingStatus = (typeof ServingStatus)[keyof typeof ServingStatus]

/** HealthCheckRequest {service=1}. An object, not a bare string: grpc-js takes "" for "no message". */
export interface HealthCheckRequest {
  readonly service: string
}

export const decodeHealthRequest = (bytes: Buffer): HealthCheckRequest => {
  const reader = protobuf.Reader.create(bytes)
  let service = ""
  while (reader.pos < reader.len) {
    const tag = reader.uint32()
    if (tag >>> 3 === 1 && (tag & 7) === 2) service = reader.string()
    else reader.skipType(tag & 7)
  }
  return { service }
}

/** HealthCheckResponse {status=1}. */
export const encodeHealthResponse = (status: ServingStatus): Buffer =>
  Buffer.from(protobuf.Writer.create().uint32(8).uint32(status).finish())

export const decodeHealthResponse = (bytes: Buffer): ServingStatus => {
  const reader = protobuf.Reader.create(bytes)
  let status = 0
  while (reader.pos < reader.len) {
    const tag = reader.uint32()
    if (tag >>> 3 === 1 && (tag & 7) === 0) status = reader.uint32()
    else reader.skipType(tag & 7)
  }
  return status as ServingStatus
}

export const encodeHealthRequest = (request: HealthCheckRequest): Buffer =>
  Buffer.from(protobuf.Writer.create().uint32(10).string(request.service).finish())

const HEALTH = "/grpc.health.v1.Health"

export const healthService = {
  Check: {
    path: `${HEALTH}/Check`,
    requestStream: false,
    responseStream: false,
    requestSerialize: encodeHealthRequest,
    requestDeserialize: decodeHealthRequest,
    responseSerialize: encodeHealthResponse,
    responseDeserialize: decodeHealthResponse
  },
  Watch: {
    path: `${HEALTH}/Watch`,
    requestStream: false,
    responseStream: true,
    requestSerialize: encodeHealthRequest,
    requestDeserialize: decodeHealthRequest,
    responseSerialize: encodeHealthResponse,
    responseDeserialize: decodeHealthResponse
  }
} satisfies grpc.ServiceDefinition
