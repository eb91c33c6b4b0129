/**
 * The client side of bench/xds.ts, in its own process so the server's CPU time is its own: opens
 * N streams (raw ADS SotW or Delta, or the floor's bare stream), ACKs every response at once, and
 * reports over IPC when every stream has received the response that follows an "arm" message.
 *
 * argv: <address> <mode: sotw|delta|floor> <streams> <services>
 */
import * as grpc from "@grpc/grpc-js"
import protobuf from "protobufjs"
import { TypeUrls } from "../src/xds/Protos.js"
import { adsService } from "../src/xds/Wire.js"

const [address = "", mode = "delta", streamsArg = "10", servicesArg = "1000"] = process.argv.slice(2)
const streams = Number(streamsArg)
const names = Array.from({ length: Number(servicesArg) }, (_, i) => `svc-${i}`)
const send = (message: unknown) => process.send!(message)

/** nonce (field 5) and version (field 1) of a (Delta)DiscoveryResponse, without decoding resources. */
const header = (bytes: Buffer) => {
  const reader = protobuf.Reader.create(bytes)
  let nonce = ""
  let version = ""
  while (reader.pos < reader.len) {
    const tag = reader.uint32()
    if (tag === 42) nonce = reader.string()
    else if (tag === 10) version = reader.string()
    else reader.skipType(tag & 7)
  }
  return { nonce, version }
}

const PER_CHANNEL = 50
const channels: Array<grpc.Client> = []
const channelFor = (i: number) => {
  const index = Math.floor(i / PER_CHANNEL)
  channels[index] ??= new grpc.Client(address, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 256 * 1024 * 1024
  })
  return channels[index]!
}

let ready = 0
let armed = new Set<number>()
let lastAt = 0
let bytesSeen = 0

const onResponse = (i: number, size: number) => {
  if (armed.has(i)) {
    armed.delete(i)
    lastAt = Date.now()
    bytesSeen = size
    if (armed.size === 0) send({ type: "done", at: lastAt, bytes: bytesSeen })
  }
}

for (let i = 0; i < streams; i++) {
  const client = channelFor(i)
  let first = true
  const markReady = () => {
    if (first) {
      first = false
      if (++ready === streams) send({ type: "ready" })
    }
  }
  if (mode === "floor") {
    const call = client.makeBidiStreamRequest("/bench.Floor/Stream", (b: Buffer) => b, (b: Buffer) => b)
    call.on("data", (bytes: Buffer) => {
      markReady()
      onResponse(i, bytes.length)
    })
    call.write(Buffer.from([1]))
    continue
  }
  const method = mode === "sotw" ? adsService.StreamAggregatedResources : adsService.DeltaAggregatedResources
  const call = client.makeBidiStreamRequest(
    method.path,
    method.requestSerialize as unknown as (value: Record<string, unknown>) => Buffer,
    (b: Buffer) => b
  )
  const node = { id: `bench~${i}`, user_agent_name: "envoy" }
  call.on("data", (bytes: Buffer) => {
    const { nonce, version } = header(bytes)
    call.write(
      mode === "sotw"
        ? {
          type_url: TypeUrls.ClusterLoadAssignment,
          resource_names: names,
          version_info: version,
          response_nonce: nonce
        }
        : { type_url: TypeUrls.ClusterLoadAssignment, response_nonce: nonce }
    )
    markReady()
    onResponse(i, bytes.length)
  })
  call.write(
    mode === "sotw"
      ? { node, type_url: TypeUrls.ClusterLoadAssignment, resource_names: names }
      : { node, type_url: TypeUrls.ClusterLoadAssignment, resource_names_subscribe: names }
  )
}

process.on("message", (message: { type: string }) => {
  if (message.type === "arm") {
    armed = new Set(Array.from({ length: streams }, (_, i) => i))
    send({ type: "armed" })
  } else if (message.type === "exit") {
    for (const c of channels) c.close()
    process.exit(0)
  }
})
