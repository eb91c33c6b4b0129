/**
 * The building blocks of Envoy configuration as plain objects in proto field names, shared by
 * every module that writes some (xDS resources, policy translation, the sidecar bootstrap).
 * Neutral ground: it imports nothing of theirs, so policy does not depend on the xDS server's
 * modules to speak Envoy. Pure; the proto check itself is `src/xds/Protos.ts`, and proto3 JSON
 * (the bootstrap's form) is `Proto3Json.ts`.
 */
import { Duration } from "effect"

/** An Envoy message as a plain object (proto field names), before it is checked and encoded. */
export type PlainObject = Record<string, unknown>

export const TYPE_URL_PREFIX = "type.googleapis.com/"

/** `type.googleapis.com/<full name>`, the form xDS uses in `type_url` and `@type`. */
export const typeUrl = (fullName: string): string => TYPE_URL_PREFIX + fullName

/** A `google.protobuf.Duration` object from an Effect Duration. */
export const durationProto = (duration: Duration.DurationInput): { seconds: number; nanos: number } => {
  const nanos = Duration.toNanos(Duration.decode(duration))
  const total = nanos._tag === "Some" ? nanos.value : BigInt(Number.MAX_SAFE_INTEGER) * 1_000_000_000n
  return { seconds: Number(total / 1_000_000_000n), nanos: Number(total % 1_000_000_000n) }
}

/** An `envoy.config.core.v3.Address` of a host and port. */
export const socketAddress = (address: string, port: number): PlainObject => ({
  socket_address: { address, port_value: port }
})
