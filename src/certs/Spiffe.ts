/**
 * SPIFFE IDs (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md) as the mesh uses
 * them: `spiffe://<trustDomain>/service/<name>` for a workload, `spiffe://<trustDomain>/controller`
 * for the controller itself. Pure: parsing, formatting, and reading the ID out of a certificate.
 */
import { Data, Either } from "effect"
import type { X509Certificate } from "node:crypto"
import type { PeerCertificate } from "node:tls"

export interface SpiffeId {
  readonly trustDomain: string
  /** The path without its leading "/", split into segments. */
  readonly segments: ReadonlyArray<string>
  /** The whole URI, `spiffe://…`. */
  readonly uri: string
}

/** Why a string, or a certificate, does not carry an acceptable SPIFFE ID. */
export class SpiffeIdInvalid
  extends Data.TaggedError("SpiffeIdInvalid")<{ readonly input: string; readonly reason: string }>
{
  override get message(): string {
    return `${JSON.stringify(this.input)} is not an acceptable SPIFFE ID: ${this.reason}`
  }
}

const TRUST_DOMAIN = /^[a-z0-9._-]+$/
const SEGMENT = /^[A-Za-z0-9._-]+$/
const PREFIX = "spiffe://"

/** Parses a SPIFFE ID strictly: lowercase trust domain, no port, user info, query or fragment, no empty, "." or ".." segments. */
export const parseSpiffeId = (input: string): Either.Either<SpiffeId, SpiffeIdInvalid> => {
  const fail = (reason: string) => Either.left(new SpiffeIdInvalid({ input, reason }))
  if (input.length > 2048) return fail("longer than 2048 bytes")
  if (!input.startsWith(PREFIX)) return fail(`the scheme must be "spiffe"`)
  const rest = input.slice(PREFIX.length)
  if (/[?#]/.test(rest)) return fail("a query or fragment is not allowed")
  const slash = rest.indexOf("/")
  const trustDomain = slash === -1 ? rest : rest.slice(0, slash)
  if (trustDomain === "") return fail("the trust domain is empty")
  if (!TRUST_DOMAIN.test(trustDomain)) {
    return fail("the trust domain may hold only lowercase letters, digits, '.', '-' and '_' (no port or user info)")
  }
  if (slash === -1) return Either.right({ trustDomain, segments: [], uri: input })
  const segments = rest.slice(slash + 1).split("/")
  for (const segment of segments) {
    if (segment === "") return fail("the path has an empty segment (or a trailing '/')")
    if (segment === "." || segment === "..") return fail("the path has a '.' or '..' segment")
    if (!SEGMENT.test(segment)) {
      return fail(`the path segment ${JSON.stringify(segment)} has characters outside [A-Za-z0-9._-]`)
    }
  }
  return Either.right({ trustDomain, segments, uri: input })
}

// Built in one place, schemas/Identity.ts; re-exported for the certificate code that reads them here.
export { controllerId, serviceId } from "../../schemas/Identity.js"

/** Who an ID names, in mesh terms. */
export type MeshPrincipal =
  | { readonly _tag: "Service"; readonly name: string; readonly id: SpiffeId }
  | { readonly _tag: "Controller"; readonly id: SpiffeId }

/** Parses an ID and checks it belongs to `trustDomain` and has one of the mesh's two shapes. */
export const parseMeshPrincipal = (input: string, trustDomain: string): Either.Either<MeshPrincipal, SpiffeIdInvalid> =>
  Either.flatMap(parseSpiffeId(input), (id): Either.Either<MeshPrincipal, SpiffeIdInvalid> => {
    if (id.trustDomain !== trustDomain) {
      return Either.left(
        new SpiffeIdInvalid({ input, reason: `the trust domain is not ${JSON.stringify(trustDomain)}` })
      )
    }
    const [kind, name, ...more] = id.segments
    if (kind === "service" && name !== undefined && more.length === 0) {
      return Either.right({ _tag: "Service", name, id })
    }
    if (kind === "controller" && name === undefined) return Either.right({ _tag: "Controller", id })
    return Either.left(new SpiffeIdInvalid({ input, reason: "expected /service/<name> or /controller" }))
  })

/**
 * The URI SANs of a certificate. Node renders SANs as `URI:a, DNS:b`; a value with a comma or quote
 * is rendered JSON-quoted, and such a value can never be a SPIFFE ID, so it is kept verbatim and
 * fails parsing later.
 */
export const uriSans = (subjectAltName: string | undefined): ReadonlyArray<string> =>
  (subjectAltName ?? "")
    .split(/, (?=[A-Za-z ]+:)/)
    .filter((entry) => entry.startsWith("URI:"))
    .map((entry) => entry.slice("URI:".length))

/**
 * The SPIFFE ID of a certificate: exactly one URI SAN, well formed, in `trustDomain`. Accepts a
 * node:crypto X509Certificate or what `tls.TLSSocket.getPeerCertificate()` returns (also what
 * grpc-js gives as `call.getAuthContext().sslPeerCertificate`).
 */
export const certificateSpiffeId = (
  certificate: X509Certificate | PeerCertificate,
  trustDomain: string
): Either.Either<MeshPrincipal, SpiffeIdInvalid> => {
  const san = "subjectAltName" in certificate ? certificate.subjectAltName : certificate.subjectaltname
  const uris = uriSans(san)
  if (uris.length !== 1) {
    return Either.left(
      new SpiffeIdInvalid({
        input: san ?? "",
        reason: `a certificate must carry exactly one URI SAN, found ${uris.length}`
      })
    )
  }
  return parseMeshPrincipal(uris[0]!, trustDomain)
}
