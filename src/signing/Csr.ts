/**
 * What the signing service takes from a CSR: its public key, and nothing else. The CSR's subject
 * and SANs are checked, never copied: the identity comes from the token or the caller's
 * certificate, and a CSR that names something else is refused (a confused or hostile caller).
 */
import "reflect-metadata"
import * as x509 from "@peculiar/x509"
import { Data, Effect } from "effect"
import * as NodeCrypto from "node:crypto"
import type { KeyAlgorithm } from "../../schemas/Config.js"

export class CsrRefused extends Data.TaggedError("CsrRefused")<{ readonly reason: string }> {
  override get message(): string {
    return `CSR refused: ${this.reason}`
  }
}

export interface CsrKey {
  /** SubjectPublicKeyInfo, DER. */
  readonly spki: Uint8Array
  /** For the key usage of the certificate (RSA keys also get keyEncipherment). */
  readonly keyAlgorithm: KeyAlgorithm
}

export interface Grant {
  readonly service: string
  readonly spiffeId: string
}

const refuse = (reason: string) => Effect.fail(new CsrRefused({ reason }))

const keyOf = (spki: Uint8Array): Effect.Effect<KeyAlgorithm, CsrRefused> => {
  const key = NodeCrypto.createPublicKey({ key: Buffer.from(spki), format: "der", type: "spki" })
  const details = key.asymmetricKeyDetails
  if (key.asymmetricKeyType === "ec" && (details?.namedCurve === "prime256v1" || details?.namedCurve === "secp384r1")) {
    return Effect.succeed("ecdsa-p256")
  }
  if (key.asymmetricKeyType === "rsa" && (details?.modulusLength ?? 0) >= 2048) return Effect.succeed("rsa-2048")
  return refuse(
    `unsupported key ${key.asymmetricKeyType ?? "?"} ${
      details?.namedCurve ?? details?.modulusLength ?? ""
    } (use ECDSA P-256/P-384 or RSA >= 2048)`
  )
}

/** Parses and verifies a PEM CSR for `grant`; its signature proves the caller holds the key. */
export const checkCsr = (pem: string, grant: Grant): Effect.Effect<CsrKey, CsrRefused> =>
  Effect.gen(function*() {
    const csr = yield* Effect.try({
      try: () => new x509.Pkcs10CertificateRequest(pem),
      catch: () => new CsrRefused({ reason: "not a PEM PKCS#10 certificate request" })
    })
    const valid = yield* Effect.tryPromise({
      try: () => csr.verify(NodeCrypto.webcrypto),
      catch: () => new CsrRefused({ reason: "its signature cannot be checked" })
    })
    if (!valid) return yield* refuse("its signature does not match its key")
    for (const attribute of csr.subjectName.toJSON().flatMap((rdn) => Object.entries(rdn))) {
      const [type, values] = attribute
      if (type !== "CN" || values.some((v) => v !== grant.service && v !== grant.spiffeId)) {
        return yield* refuse(`its subject ${csr.subject} names something other than service "${grant.service}"`)
      }
    }
    const sanExtension = csr.getExtension("2.5.29.17")
    const san = sanExtension === null ? undefined : new x509.SubjectAlternativeNameExtension(sanExtension.rawData)
    for (const name of san?.names.items ?? []) {
      const allowed = (name.type === "url" && name.value === grant.spiffeId) ||
        (name.type === "dns" && name.value === grant.service)
      if (!allowed) {
        return yield* refuse(`it asks for the SAN ${name.type}:${name.value}; the caller may only be ${grant.spiffeId}`)
      }
    }
    const spki = new Uint8Array(csr.publicKey.rawData)
    return { spki, keyAlgorithm: yield* keyOf(spki) }
  })

/** A CSR for `key` (agent side): CN and the SANs of the identity it expects, so a reader of it sees what it is for. */
export const makeCsr = (
  keys: NodeCrypto.webcrypto.CryptoKeyPair,
  grant: Partial<Grant>
): Effect.Effect<string, CsrRefused> =>
  Effect.tryPromise({
    try: async () => {
      const extensions: Array<x509.Extension> = []
      const names: Array<x509.JsonGeneralName> = []
      if (grant.spiffeId !== undefined) names.push({ type: "url", value: grant.spiffeId })
      if (grant.service !== undefined) names.push({ type: "dns", value: grant.service })
      if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names))
      const csr = await x509.Pkcs10CertificateRequestGenerator.create(
        {
          ...(grant.service === undefined ? {} : { name: `CN=${grant.service}` }),
          keys,
          signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
          extensions
        },
        NodeCrypto.webcrypto
      )
      return csr.toString("pem")
    },
    catch: (cause) => new CsrRefused({ reason: `cannot make a CSR: ${String(cause)}` })
  })
