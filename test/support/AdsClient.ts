/**
 * A raw ADS client for protocol tests: speaks SotW or Delta over a real gRPC stream and hands
 * back every response decoded with Envoy's protos, in arrival order.
 */
import * as grpc from "@grpc/grpc-js"
import type { Option } from "effect"
import { Deferred, Duration, Effect, Queue, type Scope } from "effect"
import { decode, Types } from "../../src/xds/Protos.js"
import { adsService } from "../../src/xds/Wire.js"

export interface AdsResponse {
  readonly typeUrl: string
  readonly nonce: string
  /** SotW `version_info`, Delta `system_version_info`. */
  readonly version: string
  /** Decoded resources (Any expanded: `@type` plus the resource's fields). */
  readonly resources: ReadonlyArray<Record<string, any>>
  readonly names: ReadonlyArray<string>
  /** Delta: name → version of each resource sent. */
  readonly versions: Readonly<Record<string, string>>
  /** Delta: removed_resources. */
  readonly removed: ReadonlyArray<string>
}

export interface AdsConnection {
  readonly send: (request: Record<string, unknown>) => Effect.Effect<void>
  /** The next response (of `typeUrl` if given; others are skipped); dies after 15 s. */
  readonly next: (typeUrl?: string) => Effect.Effect<AdsResponse>
  /** A response arriving within `within`, if any (for "nothing is pushed" checks). */
  readonly poll: (within: Duration.DurationInput) => Effect.Effect<Option.Option<AdsResponse>>
  /** The status the server ended the stream with (waits for it; dies after 15 s). */
  readonly ended: Effect.Effect<{ readonly code: grpc.status; readonly details: string }>
}

const nameOf = (resource: Record<string, any>): string => (resource["name"] ?? resource["cluster_name"] ?? "") as string

const toResponse = (bytes: Buffer, delta: boolean): AdsResponse => {
  if (!delta) {
    const m = decode(Types.DiscoveryResponse, bytes) as Record<string, any>
    const resources = (m["resources"] ?? []) as Array<Record<string, any>>
    return {
      typeUrl: m["type_url"],
      nonce: m["nonce"],
      version: m["version_info"] ?? "",
      resources,
      names: resources.map(nameOf),
      versions: {},
      removed: []
    }
  }
  const m = decode(Types.DeltaDiscoveryResponse, bytes) as Record<string, any>
  const wrapped = (m["resources"] ?? []) as Array<Record<string, any>>
  return {
    typeUrl: m["type_url"],
    nonce: m["nonce"],
    version: m["system_version_info"] ?? "",
    resources: wrapped.map((r) => r["resource"]),
    names: wrapped.map((r) => r["name"]),
    versions: Object.fromEntries(wrapped.map((r) => [r["name"], r["version"]])),
    removed: m["removed_resources"] ?? []
  }
}

const connect = (
  address: string,
  delta: boolean,
  credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure()
): Effect.Effect<AdsConnection, never, Scope.Scope> =>
  Effect.gen(function*() {
    const responses = yield* Queue.unbounded<AdsResponse>()
    const status = yield* Deferred.make<{ readonly code: grpc.status; readonly details: string }>()
    const { call } = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const client = new grpc.Client(address, credentials)
        const method = delta ? adsService.DeltaAggregatedResources : adsService.StreamAggregatedResources
        const call = client.makeBidiStreamRequest(
          method.path,
          method.requestSerialize as unknown as (value: Record<string, unknown>) => Buffer,
          (b: Buffer) => b
        )
        call.on("data", (bytes: Buffer) => Queue.unsafeOffer(responses, toResponse(bytes, delta)))
        call.on("error", () => {})
        call.on("status", (s: grpc.StatusObject) =>
          Deferred.unsafeDone(status, Effect.succeed({ code: s.code, details: s.details })))
        return { client, call }
      }),
      ({ call, client }) =>
        Effect.sync(() => {
          call.cancel()
          client.close()
        })
    )
    const next = (typeUrl?: string): Effect.Effect<AdsResponse> =>
      Queue.take(responses).pipe(
        Effect.flatMap((r) => (typeUrl === undefined || r.typeUrl === typeUrl ? Effect.succeed(r) : next(typeUrl))),
        Effect.timeoutFail({
          duration: Duration.seconds(15),
          onTimeout: () =>
            new Error(`no ADS response${typeUrl ? ` of ${typeUrl}` : ""} within 15s`)
        }),
        Effect.orDie
      )
    return {
      send: (request) => Effect.sync(() => void call.write(request)),
      next,
      poll: (within) => Queue.take(responses).pipe(Effect.timeoutOption(within)),
      ended: Deferred.await(status).pipe(
        Effect.timeoutFail({
          duration: Duration.seconds(15),
          onTimeout: () => new Error("the stream did not end within 15s")
        }),
        Effect.orDie
      )
    }
  })

/** Plaintext unless `credentials` are given (say, mTLS with a mesh identity). */
export const AdsClient = {
  sotw: (address: string, credentials?: grpc.ChannelCredentials) => connect(address, false, credentials),
  delta: (address: string, credentials?: grpc.ChannelCredentials) => connect(address, true, credentials)
}

/** A node as Envoy sends it; `id` follows the sidecar convention `<service>~<instance>`. */
export const envoyNode = (id: string) => ({
  id,
  cluster: "mesh",
  user_agent_name: "envoy",
  user_agent_version: "1.31.0"
})
export const grpcNode = (id: string) => ({
  id,
  user_agent_name: "gRPC Node Pure JS",
  user_agent_version: "1.14.1",
  locality: {}
})
