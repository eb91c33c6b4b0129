/**
 * Join tokens (pure): their text form, the record the controller keeps, and the checks a token
 * must pass before it buys a certificate. No I/O here; the store is layers/internal/TokenStore.ts.
 *
 * Text form, one line, dot-separated (base64url and hex never contain a dot):
 *
 *   mct1.<id>.<secret>.<root sha256 hex>.<mac>
 *
 * - `id` names the token in `token list` / `token revoke` (not secret);
 * - `secret` is 32 random bytes; the controller keeps only its SHA-256;
 * - the root fingerprint is the SHA-256 of the mesh root's DER (kubeadm's discovery hash): the
 *   agent trusts a controller on first contact only if its bundle holds that root;
 * - `mac` is HMAC-SHA256 over everything before it, with a key the controller keeps next to the
 *   tokens, so a token the controller never made is refused before any lookup.
 */
import { Data, Either } from "effect"
import * as NodeCrypto from "node:crypto"

export const TOKEN_VERSION = "mct1"

export interface TokenParts {
  readonly id: string
  readonly secret: string
  readonly rootFingerprint: string
  readonly mac: string
}

/** What the controller stores for a token: never the secret, only its hash. */
export interface TokenRecord {
  readonly id: string
  readonly service: string
  readonly instance?: string | undefined
  readonly createdAt: string
  readonly expiresAt: string
  /** How many certificates the token may buy in all. */
  readonly uses: number
  readonly used: number
  readonly revokedAt?: string | undefined
  /** SHA-256 of the secret, hex. */
  readonly secretHash: string
}

/** A string that is not a join token (or one this controller did not sign). */
export class TokenMalformed extends Data.TaggedError("TokenMalformed")<{ readonly reason: string }> {
  override get message(): string {
    return `not a valid join token: ${this.reason}`
  }
}

const ID = /^[0-9a-f]{12}$/
const SECRET = /^[A-Za-z0-9_-]{43}$/
const HEX64 = /^[0-9a-f]{64}$/
const MAC = /^[A-Za-z0-9_-]{43}$/

/** SHA-256 of a certificate's DER, lowercase hex (what the token pins). */
export const rootFingerprintHex = (pem: string): string =>
  NodeCrypto.createHash("sha256").update(new NodeCrypto.X509Certificate(pem).raw).digest("hex")

export const hashSecret = (secret: string): string => NodeCrypto.createHash("sha256").update(secret).digest("hex")

const macOf = (key: Uint8Array, body: string): string =>
  NodeCrypto.createHmac("sha256", key).update(body).digest("base64url")

/** Fresh id and secret (the caller stores the record and hands out `formatToken`). */
export const newTokenSecrets = (): { readonly id: string; readonly secret: string } => ({
  id: NodeCrypto.randomBytes(6).toString("hex"),
  secret: NodeCrypto.randomBytes(32).toString("base64url")
})

export const formatToken = (key: Uint8Array, parts: Omit<TokenParts, "mac">): string => {
  const body = [TOKEN_VERSION, parts.id, parts.secret, parts.rootFingerprint].join(".")
  return `${body}.${macOf(key, body)}`
}

/** Splits a token's text; checks the shape only (the agent has no MAC key). */
export const parseToken = (text: string): Either.Either<TokenParts, TokenMalformed> => {
  const fields = text.trim().split(".")
  const fail = (reason: string) => Either.left(new TokenMalformed({ reason }))
  if (fields.length !== 5 || fields[0] !== TOKEN_VERSION) {
    return fail(`expected ${TOKEN_VERSION}.<id>.<secret>.<root>.<mac>`)
  }
  const [, id, secret, rootFingerprint, mac] = fields as [string, string, string, string, string]
  if (!ID.test(id)) return fail("the id is not 12 hex digits")
  if (!SECRET.test(secret)) return fail("the secret is not 32 base64url bytes")
  if (!HEX64.test(rootFingerprint)) return fail("the root fingerprint is not 64 hex digits")
  if (!MAC.test(mac)) return fail("the signature is not 32 base64url bytes")
  return Either.right({ id, secret, rootFingerprint, mac })
}

const equalText = (a: string, b: string): boolean => {
  const x = Buffer.from(a)
  const y = Buffer.from(b)
  return x.length === y.length && NodeCrypto.timingSafeEqual(x, y)
}

/** True when this controller's key signed the token (constant-time). */
export const macValid = (key: Uint8Array, parts: TokenParts): boolean =>
  equalText(macOf(key, [TOKEN_VERSION, parts.id, parts.secret, parts.rootFingerprint].join(".")), parts.mac)

/** Why a well-formed token buys nothing; each reason is printed by the agent as is. */
export type TokenRefusal =
  | { readonly _tag: "Unknown" }
  | { readonly _tag: "Revoked"; readonly at: string }
  | { readonly _tag: "Expired"; readonly at: string }
  | { readonly _tag: "Spent"; readonly uses: number }
  | { readonly _tag: "WrongSecret" }
  | { readonly _tag: "WrongService"; readonly token: string; readonly asked: string }
  | { readonly _tag: "WrongInstance"; readonly token: string; readonly asked: string }

export const describeRefusal = (id: string, refusal: TokenRefusal): string => {
  switch (refusal._tag) {
    case "Unknown":
      return `token ${id} is not known to this controller (never made here, or signed by another key)`
    case "Revoked":
      return `token ${id} was revoked at ${refusal.at}`
    case "Expired":
      return `token ${id} expired at ${refusal.at}`
    case "Spent":
      return `token ${id} is spent (all ${refusal.uses} use${refusal.uses === 1 ? "" : "s"} taken)`
    case "WrongSecret":
      return `token ${id}: the secret does not match`
    case "WrongService":
      return `token ${id} is for service "${refusal.token}", not "${refusal.asked}"`
    case "WrongInstance":
      return `token ${id} is for instance "${refusal.token}", not "${refusal.asked}"`
  }
}

export interface Redemption {
  readonly secret: string
  /** What the caller asked for; absent means "what the token says". */
  readonly service?: string | undefined
  readonly instance?: string | undefined
  readonly now: number
}

/** Checks a stored record against a presented token; order matters (a revoked token says so before "spent"). */
export const checkRecord = (record: TokenRecord, redemption: Redemption): Either.Either<TokenRecord, TokenRefusal> => {
  if (!equalText(hashSecret(redemption.secret), record.secretHash)) return Either.left({ _tag: "WrongSecret" })
  if (record.revokedAt !== undefined) return Either.left({ _tag: "Revoked", at: record.revokedAt })
  if (Date.parse(record.expiresAt) <= redemption.now) return Either.left({ _tag: "Expired", at: record.expiresAt })
  if (record.used >= record.uses) return Either.left({ _tag: "Spent", uses: record.uses })
  if (redemption.service !== undefined && redemption.service !== record.service) {
    return Either.left({ _tag: "WrongService", token: record.service, asked: redemption.service })
  }
  if (redemption.instance !== undefined && record.instance !== undefined && redemption.instance !== record.instance) {
    return Either.left({ _tag: "WrongInstance", token: record.instance, asked: redemption.instance })
  }
  return Either.right({ ...record, used: record.used + 1 })
}

/** `token list` status of a record at `now`. */
export const recordState = (record: TokenRecord, now: number): string =>
  record.revokedAt !== undefined
    ? "revoked"
    : Date.parse(record.expiresAt) <= now
    ? "expired"
    : record.used >= record.uses
    ? "spent"
    : "valid"
