/**
 * When to renew, decided from the wall clock alone: a host that slept through a renewal (a
 * suspended Raspberry Pi, a powered-off laptop) sees `now` past the renewal time on its first
 * check and renews at once; nothing depends on a timer having fired.
 */
import { Option } from "effect"

export interface RenewalPolicy {
  /** Renew once this fraction of the lifetime has passed (0 < renewAt < 1)… */
  readonly renewAt: number
  /** …minus up to this fraction of that point, fixed per certificate (0 ≤ jitter < 1). */
  readonly jitter: number
}

export interface Lifetime {
  readonly serial: string
  readonly issuedAt: Date
  readonly notAfter: Date
  /** Fingerprint of the authority that signed it. */
  readonly issuer: string
}

/**
 * A number in [0, 1) derived from the serial: the jitter is random across certificates (serials are
 * random) yet stable for one certificate, so the renewal time shown in /status is the one used.
 */
export const serialFraction = (serial: string): number => {
  const head = serial.replace(/[^0-9a-f]/gi, "").slice(-8).padStart(8, "0")
  return Number.parseInt(head, 16) / 0x1_0000_0000
}

/** The moment a certificate should be renewed. */
export const renewalTime = (cert: Lifetime, policy: RenewalPolicy): Date => {
  const lifetime = cert.notAfter.getTime() - cert.issuedAt.getTime()
  const fraction = policy.renewAt * (1 - policy.jitter * serialFraction(cert.serial))
  return new Date(cert.issuedAt.getTime() + Math.max(0, lifetime * fraction))
}

export type RenewalReason = "missing" | "due" | "expired" | "issuer-changed"

/** Why a certificate must be (re)issued now, or none when it can stay. */
export const renewalReason = (
  cert: Lifetime | undefined,
  now: number,
  policy: RenewalPolicy,
  activeIssuer: string
): Option.Option<RenewalReason> => {
  if (cert === undefined) return Option.some("missing")
  if (now >= cert.notAfter.getTime()) return Option.some("expired")
  if (cert.issuer !== activeIssuer) return Option.some("issuer-changed")
  if (now >= renewalTime(cert, policy).getTime()) return Option.some("due")
  return Option.none()
}

/** A root the controller no longer signs with, and since when. */
export interface RetiredRoot {
  readonly pem: string
  readonly retiredAt: Date
}

/**
 * Whether a retired root still belongs in the trust bundle: certificates it signed were issued
 * before `retiredAt` and live at most `workloadTtl` (+ the backdate allowance), so after that no
 * valid certificate can need it.
 */
export const retiredRootNeeded = (
  root: RetiredRoot,
  now: number,
  workloadTtlMillis: number,
  graceMillis: number
): boolean => now < root.retiredAt.getTime() + workloadTtlMillis + graceMillis
