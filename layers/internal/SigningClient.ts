/**
 * The agent's side of the signing service: one call at a time over a fresh channel (calls are
 * rare: once at join, then at half life), as Effects with a deadline. Refusals keep their gRPC
 * code so the agent can tell "retry" (unreachable, rate-limited) from "stop" (a spent token).
 */
import * as grpc from "@grpc/grpc-js"
import { Data, Effect, Redacted } from "effect"
import type { PeerCertificate } from "node:tls"
import { uriSans } from "../../src/certs/Spiffe.js"
import { newSigningClient, type SignRequest, type SignResponse } from "../../src/signing/SigningProto.js"

export class SigningCallFailed extends Data.TaggedError("SigningCallFailed")<{
  readonly code: grpc.status
  readonly details: string
}> {
  /** Worth retrying: the controller is unreachable, busy or restarting. */
  get transient(): boolean {
    return [
      grpc.status.UNAVAILABLE,
      grpc.status.DEADLINE_EXCEEDED,
      grpc.status.RESOURCE_EXHAUSTED,
      grpc.status.INTERNAL,
      grpc.status.UNKNOWN,
      grpc.status.CANCELLED
    ]
      .includes(this.code)
  }
  override get message(): string {
    return `${grpc.status[this.code] ?? this.code}: ${this.details}`
  }
}

/** The controller is named by its SPIFFE ID (`spiffe://<td>/controller`), not by the address dialled. */
const checkController = (_host: string, cert: PeerCertificate): Error | undefined =>
  uriSans(cert.subjectaltname).some((uri) => /^spiffe:\/\/[^/]+\/controller$/.test(uri))
    ? undefined
    : new Error(
      `the server at this address is not the mesh controller (its certificate names ${
        cert.subjectaltname ?? "nothing"
      })`
    )

export type Credentials =
  /** Before the first certificate: no verification at all, only for fetching the public bundle. */
  | { readonly _tag: "Unverified" }
  /** The controller verified against `roots`; a client certificate when `identity` is given (renewal). */
  | {
    readonly _tag: "Verified"
    readonly roots: string
    readonly identity?: { readonly chainPem: string; readonly keyPem: Redacted.Redacted<string> }
  }

const channelCredentials = (credentials: Credentials): grpc.ChannelCredentials =>
  credentials._tag === "Unverified"
    ? grpc.credentials.createSsl(null, null, null, { rejectUnauthorized: false, checkServerIdentity: () => undefined })
    : grpc.credentials.createSsl(
      Buffer.from(credentials.roots),
      credentials.identity === undefined ? null : Buffer.from(Redacted.value(credentials.identity.keyPem)),
      credentials.identity === undefined ? null : Buffer.from(credentials.identity.chainPem),
      { checkServerIdentity: checkController }
    )

const unary = <A>(
  address: string,
  credentials: Credentials,
  deadlineMillis: number,
  call: (
    client: ReturnType<typeof newSigningClient>,
    options: grpc.CallOptions,
    done: (error: grpc.ServiceError | null, value?: A) => void
  ) => void
): Effect.Effect<A, SigningCallFailed> =>
  Effect.async<A, SigningCallFailed>((resume) => {
    // The controller is checked by its SPIFFE ID (checkController), not by name; a fixed name
    // also keeps Node from warning about an IP address as TLS server name (RFC 6066).
    const client = newSigningClient(address, channelCredentials(credentials), {
      "grpc.ssl_target_name_override": "mesh-controller"
    })
    call(client, { deadline: Date.now() + deadlineMillis }, (error, value) => {
      client.close()
      if (error !== null || value === undefined) {
        resume(
          Effect.fail(
            new SigningCallFailed({ code: error?.code ?? grpc.status.UNKNOWN, details: error?.details ?? "no answer" })
          )
        )
      } else resume(Effect.succeed(value))
    })
    return Effect.sync(() => client.close())
  })

export const fetchBundle = (
  address: string,
  credentials: Credentials,
  deadlineMillis = 10_000
): Effect.Effect<string, SigningCallFailed> =>
  Effect.map(
    unary<{ readonly pem: string }>(
      address,
      credentials,
      deadlineMillis,
      (c, o, done) => c.GetTrustBundle({}, o, done)
    ),
    (r) => r.pem
  )

export const requestCertificate = (
  address: string,
  credentials: Credentials,
  request: SignRequest,
  deadlineMillis = 10_000
): Effect.Effect<SignResponse, SigningCallFailed> =>
  unary<SignResponse>(address, credentials, deadlineMillis, (c, o, done) => c.Sign(request, o, done))
