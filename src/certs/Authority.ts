/**
 * Certificate building for the mesh CA: roots, workload certificates, and loading a CA from PEM.
 * No file I/O here (layers/Certificates.ts owns the disk); WebCrypto does the key work.
 */
import "reflect-metadata"
import * as x509 from "@peculiar/x509"
import { Effect, Redacted } from "effect"
import * as NodeCrypto from "node:crypto"
import type { KeyAlgorithm } from "../../schemas/Config.js"
import { CaInvalid, SigningFailed } from "./Errors.js"

type CryptoKey = NodeCrypto.webcrypto.CryptoKey
type CryptoKeyPair = NodeCrypto.webcrypto.CryptoKeyPair
const webcrypto = NodeCrypto.webcrypto

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

const keyGenParams = (
  algorithm: KeyAlgorithm
): NodeCrypto.webcrypto.RsaHashedKeyGenParams | NodeCrypto.webcrypto.EcKeyGenParams => {
  switch (algorithm) {
    case "ecdsa-p256":
      return { name: "ECDSA", namedCurve: "P-256" }
    case "rsa-2048":
    case "rsa-3072":
      return {
        name: "RSASSA-PKCS1-v1_5",
        modulusLength: algorithm === "rsa-2048" ? 2048 : 3072,
        publicExponent: new Uint8Array([1, 0, 1]),
        hash: "SHA-256"
      }
  }
}

/** The signature algorithm a CA key signs with. */
const signingAlgorithm = (key: CryptoKey): NodeCrypto.webcrypto.Algorithm | NodeCrypto.webcrypto.EcdsaParams => {
  if (key.algorithm.name === "ECDSA") {
    const curve = (key.algorithm as NodeCrypto.webcrypto.EcKeyAlgorithm).namedCurve
    return { name: "ECDSA", hash: curve === "P-384" ? "SHA-384" : "SHA-256" } as NodeCrypto.webcrypto.EcdsaParams
  }
  return key.algorithm
}

const attempt = <A>(what: string, f: () => Promise<A>): Effect.Effect<A, SigningFailed> =>
  Effect.tryPromise({ try: f, catch: (cause) => new SigningFailed({ what, cause }) })

/** A fresh extractable key pair (extractable so the PEM can be handed to the workload). */
export const generateKeyPair = (algorithm: KeyAlgorithm): Effect.Effect<CryptoKeyPair, SigningFailed> =>
  attempt(
    `generating a ${algorithm} key`,
    () => webcrypto.subtle.generateKey(keyGenParams(algorithm), true, ["sign", "verify"]) as Promise<CryptoKeyPair>
  )

// Key exports go through KeyObject, synchronously: WebCrypto's exportKey is a thread-pool round
// trip each time, which on a busy Raspberry Pi costs more than the conversion itself.
const exportKeyPem = (key: CryptoKey): Effect.Effect<Redacted.Redacted<string>, SigningFailed> =>
  Effect.try({
    try: () => Redacted.make(NodeCrypto.KeyObject.from(key).export({ format: "pem", type: "pkcs8" }).toString()),
    catch: (cause) => new SigningFailed({ what: "exporting a private key", cause })
  })

/** WebCrypto import parameters for a private key, from what Node can tell about it. */
const importParams = (
  key: NodeCrypto.KeyObject
): NodeCrypto.webcrypto.RsaHashedImportParams | NodeCrypto.webcrypto.EcKeyImportParams | string => {
  if (key.asymmetricKeyType === "rsa") return { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }
  if (key.asymmetricKeyType === "ec") {
    const curve = key.asymmetricKeyDetails?.namedCurve
    if (curve === "prime256v1") return { name: "ECDSA", namedCurve: "P-256" }
    if (curve === "secp384r1") return { name: "ECDSA", namedCurve: "P-384" }
    return `an EC key on curve ${curve ?? "unknown"} (supported: P-256, P-384)`
  }
  return `a ${key.asymmetricKeyType ?? "secret"} key (supported: RSA, ECDSA P-256/P-384)`
}

// ---------------------------------------------------------------------------------------------
// PEM
// ---------------------------------------------------------------------------------------------

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g

/** The PEM certificates in a text, in order (the text may also hold comments). */
export const splitPem = (text: string): ReadonlyArray<string> => (text.match(PEM_CERT) ?? []).map((pem) => `${pem}\n`)

/** One PEM block per certificate, concatenated. */
export const joinPem = (pems: ReadonlyArray<string>): string => pems.map((pem) => pem.trim() + "\n").join("")

/** SHA-256 fingerprint, colon-separated hex (as `openssl x509 -fingerprint -sha256` prints it). */
export const fingerprint = (pem: string): string => new NodeCrypto.X509Certificate(pem).fingerprint256

const randomSerial = (): string => {
  const bytes = NodeCrypto.randomBytes(16)
  bytes[0] = (bytes[0]! & 0x7f) | 0x01 // positive and without a leading zero byte
  return bytes.toString("hex")
}

// ---------------------------------------------------------------------------------------------
// The signing authority
// ---------------------------------------------------------------------------------------------

/** A certificate and key that sign workload certificates, and the chain up to its root. */
export interface Authority {
  readonly certPem: string
  readonly certificate: x509.X509Certificate
  /** Non-extractable: the CA key never leaves WebCrypto once loaded. */
  readonly key: CryptoKey
  /** Certificates between `certPem` and the root, in order (empty when `certPem` is the root). */
  readonly intermediates: ReadonlyArray<string>
  /** The self-signed root this authority chains to. */
  readonly rootPem: string
  readonly fingerprint: string
  /** Its key identifier, copied into the authorityKeyIdentifier of what it signs. */
  readonly keyId: string
}

export interface CaPem {
  readonly certPem: string
  readonly keyPem: Redacted.Redacted<string>
}

export interface RootOptions {
  readonly meshName: string
  readonly trustDomain: string
  readonly keyAlgorithm: KeyAlgorithm
  readonly now: Date
  readonly validityMillis: number
}

/** Clocks drift: certificates are valid from a little before the moment they are made. */
const ROOT_BACKDATE_MILLIS = 60 * 60 * 1000
export const WORKLOAD_BACKDATE_MILLIS = 5 * 60 * 1000

/** A new self-signed root: CA, keyCertSign + cRLSign, SPIFFE trust domain as URI SAN. */
export const createRoot = (options: RootOptions): Effect.Effect<CaPem, SigningFailed> =>
  Effect.gen(function*() {
    const keys = yield* generateKeyPair(options.keyAlgorithm)
    const serialNumber = randomSerial()
    const certificate = yield* attempt("signing the root certificate", async () =>
      x509.X509CertificateGenerator.createSelfSigned(
        {
          serialNumber,
          // A distinct name per root, so two roots in one bundle are never confused by name.
          name: `CN=${options.meshName} mesh root ${serialNumber.slice(0, 8)}, O=${options.meshName}`,
          notBefore: new Date(options.now.getTime() - ROOT_BACKDATE_MILLIS),
          notAfter: new Date(options.now.getTime() + options.validityMillis),
          keys,
          signingAlgorithm: signingAlgorithm(keys.privateKey),
          extensions: [
            new x509.BasicConstraintsExtension(true, undefined, true),
            new x509.KeyUsagesExtension(
              x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
              true
            ),
            new x509.SubjectAlternativeNameExtension([{ type: "url", value: `spiffe://${options.trustDomain}` }]),
            new x509.SubjectKeyIdentifierExtension(cryptoKeyIdentifier(keys.publicKey), false)
          ]
        },
        webcrypto
      ))
    return { certPem: certificate.toString("pem") + "\n", keyPem: yield* exportKeyPem(keys.privateKey) }
  })

export interface CaSource {
  readonly certPem: string
  readonly certFile: string
  readonly keyPem: Redacted.Redacted<string>
  readonly keyFile: string
  /** Intermediates up to and including the root, for a CA whose certificate is not itself the root. */
  readonly chainPem?: string
  readonly chainFile?: string
}

const parseCertificate = (pem: string, file: string): Effect.Effect<NodeCrypto.X509Certificate, CaInvalid> =>
  Effect.try({
    try: () => new NodeCrypto.X509Certificate(pem),
    catch: () => new CaInvalid({ file, reason: "not a valid PEM certificate (corrupt or truncated?)" })
  })

const signs = (child: NodeCrypto.X509Certificate, parent: NodeCrypto.X509Certificate): boolean =>
  child.checkIssued(parent) && child.verify(parent.publicKey)

const spki = (key: NodeCrypto.KeyObject): Buffer => key.export({ format: "der", type: "spki" })

/**
 * Loads and checks a CA: the certificate is one well-formed CA certificate, currently or later
 * valid, the key parses and matches it, and the chain leads to a self-signed root. Every failure
 * names the file at fault.
 */
export const loadAuthority = (source: CaSource): Effect.Effect<Authority, CaInvalid> =>
  Effect.gen(function*() {
    const { certFile, keyFile } = source
    const certs = splitPem(source.certPem)
    if (certs.length !== 1) {
      return yield* new CaInvalid({
        file: certFile,
        reason: certs.length === 0
          ? "no PEM certificate found (corrupt or empty file?)"
          : `expected one certificate, found ${certs.length}`
      })
    }
    const cert = yield* parseCertificate(certs[0]!, certFile)
    if (!cert.ca) {
      return yield* new CaInvalid({ file: certFile, reason: "the certificate is not a CA (basicConstraints CA:FALSE)" })
    }
    const privateKey = yield* Effect.try({
      try: () => NodeCrypto.createPrivateKey(Redacted.value(source.keyPem)),
      catch: () =>
        new CaInvalid({ file: keyFile, reason: "not a valid PEM private key (corrupt or truncated, or encrypted?)" })
    })
    if (!spki(NodeCrypto.createPublicKey(privateKey)).equals(spki(cert.publicKey))) {
      return yield* new CaInvalid({ file: keyFile, reason: `the key does not match the certificate in ${certFile}` })
    }
    const params = importParams(privateKey)
    if (typeof params === "string") return yield* new CaInvalid({ file: keyFile, reason: `unsupported key: ${params}` })

    const chainFile = source.chainFile ?? certFile
    const chain: Array<NodeCrypto.X509Certificate> = []
    for (const pem of splitPem(source.chainPem ?? "")) chain.push(yield* parseCertificate(pem, chainFile))
    if (source.chainPem !== undefined && chain.length === 0) {
      return yield* new CaInvalid({ file: chainFile, reason: "no PEM certificate found (corrupt or empty file?)" })
    }
    let top = cert
    for (const next of chain) {
      if (!signs(top, next)) {
        return yield* new CaInvalid({
          file: chainFile,
          reason: `${next.subject} did not issue ${top.subject}; list the chain from the issuer up to the root`
        })
      }
      top = next
    }
    if (!signs(top, top)) {
      return yield* new CaInvalid({
        file: chainFile,
        reason: `the chain ends at ${top.subject}, which is not a self-signed root; add the root to the chain`
      })
    }
    const key = yield* Effect.tryPromise({
      try: () =>
        webcrypto.subtle.importKey("pkcs8", privateKey.export({ format: "der", type: "pkcs8" }), params, false, [
          "sign"
        ]),
      catch: () => new CaInvalid({ file: keyFile, reason: "WebCrypto cannot use this key" })
    })
    const pems = chain.map((c) => c.toString())
    const certificate = new x509.X509Certificate(cert.raw)
    return {
      certPem: cert.toString(),
      certificate,
      keyId: issuerKeyId(certificate),
      key,
      intermediates: pems.slice(0, Math.max(0, pems.length - 1)),
      rootPem: pems.length === 0 ? cert.toString() : pems[pems.length - 1]!,
      fingerprint: cert.fingerprint256
    }
  })

// ---------------------------------------------------------------------------------------------
// Workload certificates
// ---------------------------------------------------------------------------------------------

export interface WorkloadRequest {
  readonly spiffeId: string
  readonly commonName: string
  readonly organization: string
  readonly dnsNames: ReadonlyArray<string>
  readonly keyAlgorithm: KeyAlgorithm
  readonly now: Date
  readonly ttlMillis: number
}

/** A signed workload certificate and its key. */
export interface IssuedCertificate {
  readonly spiffeId: string
  /** The leaf alone. */
  readonly certPem: string
  /** The leaf followed by the intermediates (never the root): what a TLS peer presents. */
  readonly chainPem: string
  readonly keyPem: Redacted.Redacted<string>
  readonly serial: string
  readonly notBefore: Date
  readonly notAfter: Date
  /** When it was made (notBefore is a little earlier, for clock skew). */
  readonly issuedAt: Date
  /** Fingerprint of the authority that signed it. */
  readonly issuer: string
}

/** The extensions every workload certificate shares, built once (they are immutable values). */
const workloadConstants = (() => {
  const common = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth], false)
  ]
  const ec = new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true)
  const rsa = new x509.KeyUsagesExtension(
    x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
    true
  )
  return (
    algorithm: KeyAlgorithm
  ): ReadonlyArray<x509.Extension> => [common[0]!, algorithm === "ecdsa-p256" ? ec : rsa, common[1]!]
})()

/** What a peer needs between a leaf and the root: the authority itself unless it is the root, then its intermediates. */
const issuerChain = (authority: Authority): ReadonlyArray<string> =>
  authority.certPem === authority.rootPem ? [] : [authority.certPem, ...authority.intermediates]

/** Reads a DER length at `offset`; returns [length, offset of the content]. */
const derLength = (der: Uint8Array, offset: number): readonly [number, number] => {
  const first = der[offset]!
  if (first < 0x80) return [first, offset + 1]
  const bytes = first & 0x7f
  let length = 0
  for (let i = 1; i <= bytes; i++) length = length * 256 + der[offset + i]!
  return [length, offset + 1 + bytes]
}

/**
 * RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING of an SPKI. Computed here
 * because @peculiar/x509's helper costs more than the rest of an issuance together.
 */
export const keyIdentifier = (spki: Uint8Array): string => {
  const [, outer] = derLength(spki, 1) // SEQUENCE SubjectPublicKeyInfo
  const [algorithmLength, algorithm] = derLength(spki, outer + 1) // SEQUENCE AlgorithmIdentifier
  const bitString = algorithm + algorithmLength
  const [length, content] = derLength(spki, bitString + 1)
  // Skip the "unused bits" octet.
  return NodeCrypto.createHash("sha1").update(spki.subarray(content + 1, content + length)).digest("hex")
}

const cryptoKeyIdentifier = (key: CryptoKey): string =>
  keyIdentifier(NodeCrypto.KeyObject.from(key).export({ format: "der", type: "spki" }))

/** The issuer's own key identifier (a CA we did not make may hash differently), or one computed from its key. */
const issuerKeyId = (issuer: x509.X509Certificate): string =>
  issuer.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId ??
    keyIdentifier(new Uint8Array(issuer.publicKey.rawData))

// ---------------------------------------------------------------------------------------------
// The fast path: a workload certificate's DER, built directly
// ---------------------------------------------------------------------------------------------
// @peculiar/x509 builds every certificate through asn1js from JSON-like objects; profiling
// (`node --cpu-prof` over bench/certs.ts) put ~85% of an issuance's CPU there. A workload
// certificate has a fixed shape, so it is written here as DER: the issuer's parts (its Name, the
// signature algorithm, the authority key identifier) once per authority, the constant
// extensions once per process, and per certificate only the serial, validity, subject, key,
// SAN and key identifier. The CA signs with Node's synchronous `crypto.sign` (DER signature).

/** DER length octets. */
const lengthOctets = (n: number): Buffer =>
  n < 0x80
    ? Buffer.from([n])
    : n < 0x100
    ? Buffer.from([0x81, n])
    : n < 0x10000
    ? Buffer.from([0x82, n >> 8, n & 0xff])
    : Buffer.from([0x83, n >> 16, (n >> 8) & 0xff, n & 0xff])

/** One DER element: tag, length, content. */
const tlv = (tag: number, ...content: ReadonlyArray<Uint8Array>): Buffer => {
  const body = Buffer.concat(content)
  return Buffer.concat([Buffer.from([tag]), lengthOctets(body.length), body])
}

const OID = {
  commonName: Buffer.from("0603550403", "hex"),
  organization: Buffer.from("060355040a", "hex"),
  subjectAltName: Buffer.from("0603551d11", "hex"),
  subjectKeyIdentifier: Buffer.from("0603551d0e", "hex"),
  authorityKeyIdentifier: Buffer.from("0603551d23", "hex")
}

/** PrintableString when the text allows it (as @peculiar/x509 chose), else UTF8String. */
const directoryString = (text: string): Buffer =>
  /^[A-Za-z0-9 '()+,\-./:=?]*$/.test(text)
    ? tlv(0x13, Buffer.from(text, "ascii"))
    : tlv(0x0c, Buffer.from(text, "utf8"))

/** UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5), whole seconds. */
const derTime = (date: Date): Buffer => {
  const iso = date.toISOString() // 2026-03-01T00:00:00.000Z
  const digits = iso.slice(0, 19).replace(/[-T:]/g, "") + "Z"
  return date.getUTCFullYear() < 2050
    ? tlv(0x17, Buffer.from(digits.slice(2), "ascii"))
    : tlv(0x18, Buffer.from(digits, "ascii"))
}

/** The elements of a DER SEQUENCE's content, as [tag, whole element] slices. */
const derElements = (der: Uint8Array, offset: number): ReadonlyArray<Uint8Array> => {
  const [length, start] = derLength(der, offset + 1)
  const out: Array<Uint8Array> = []
  for (let at = start; at < start + length;) {
    const [inner, content] = derLength(der, at + 1)
    out.push(der.subarray(at, content + inner))
    at = content + inner
  }
  return out
}

interface IssuerParts {
  /** The issuer's subject Name, byte for byte (so chain building matches it exactly). */
  readonly name: Uint8Array
  readonly signatureAlgorithm: Buffer
  readonly authorityKeyIdentifier: Buffer
  readonly signingKey: NodeCrypto.KeyObject
  readonly hash: "sha256" | "sha384"
}

const issuerParts = new WeakMap<Authority, IssuerParts>()

const partsOf = (authority: Authority): IssuerParts => {
  const cached = issuerParts.get(authority)
  if (cached !== undefined) return cached
  const der = new Uint8Array(authority.certificate.rawData)
  const tbs = derElements(derElements(der, 0)[0]!, 0)
  // version [0] is present in every v3 certificate; subject follows serial, signature, issuer, validity.
  const subject = tbs[tbs[0]![0] === 0xa0 ? 5 : 4]!
  const algorithm = signingAlgorithm(authority.key) as { name: string; hash?: string }
  const hash = algorithm.hash === "SHA-384" ? "sha384" : "sha256"
  const signatureAlgorithm = algorithm.name === "ECDSA"
    // ecdsa-with-SHA256 / -SHA384, no parameters (RFC 5758 §3.2).
    ? tlv(0x30, Buffer.from(hash === "sha384" ? "06082a8648ce3d040303" : "06082a8648ce3d040302", "hex"))
    // sha256WithRSAEncryption with NULL parameters (RFC 4055 §5).
    : tlv(0x30, Buffer.from("06092a864886f70d01010b0500", "hex"))
  const parts: IssuerParts = {
    name: subject,
    signatureAlgorithm,
    authorityKeyIdentifier: tlv(
      0x30,
      OID.authorityKeyIdentifier,
      tlv(0x04, tlv(0x30, tlv(0x80, Buffer.from(authority.keyId, "hex"))))
    ),
    signingKey: NodeCrypto.KeyObject.from(authority.key),
    hash
  }
  issuerParts.set(authority, parts)
  return parts
}

/** The constant extensions (basicConstraints, keyUsage, extendedKeyUsage) as DER, per key kind. */
const constantExtensions = (() => {
  const der = (algorithm: KeyAlgorithm) =>
    Buffer.concat(workloadConstants(algorithm).map((e) => Buffer.from(e.rawData)))
  const ec = der("ecdsa-p256")
  const rsa = der("rsa-2048")
  return (algorithm: KeyAlgorithm): Buffer => (algorithm === "ecdsa-p256" ? ec : rsa)
})()

/** The key kind of a public key, for the key usages it gets (keyEncipherment only for RSA). */
const keyKindOf = (spki: Uint8Array): KeyAlgorithm =>
  NodeCrypto.createPublicKey({ key: Buffer.from(spki), format: "der", type: "spki" }).asymmetricKeyType === "rsa"
    ? "rsa-2048"
    : "ecdsa-p256"

/** What the CA needs to certify a public key it did not make (the agent's CSR signing). */
export interface SigningRequest {
  readonly spiffeId: string
  readonly commonName: string
  readonly organization: string
  readonly dnsNames: ReadonlyArray<string>
  readonly now: Date
  readonly ttlMillis: number
  /** The subject's public key, DER SubjectPublicKeyInfo (from a CSR, or `KeyObject.export({ type: "spki" })`). */
  readonly publicKey: Uint8Array
}

/** A signed certificate for a key the CA never saw the private half of. */
export type SignedCertificate = Omit<IssuedCertificate, "keyPem">

/**
 * An X.509-SVID for a given public key: the SPIFFE ID as the only URI SAN, DNS SANs, CA:FALSE,
 * digitalSignature (+ keyEncipherment for RSA), serverAuth + clientAuth. Its lifetime never
 * outlasts the authority. `issueWorkload` is this plus a fresh key pair.
 */
export const signWorkload = (
  authority: Authority,
  request: SigningRequest
): Effect.Effect<SignedCertificate, SigningFailed> => signCertificate(authority, request, undefined)

/**
 * `signWorkload`, told the key's kind when the caller made the key (`issueWorkload`): parsing the
 * SPKI back into a key object only to read its type cost a tenth of an issuance.
 */
const signCertificate = (
  authority: Authority,
  request: SigningRequest,
  knownKind: KeyAlgorithm | undefined
): Effect.Effect<SignedCertificate, SigningFailed> =>
  Effect.try({
    try: () => {
      const issuer = partsOf(authority)
      // Encoded to the second (truncated, as before); the values returned keep the millisecond.
      const notBefore = new Date(request.now.getTime() - WORKLOAD_BACKDATE_MILLIS)
      const notAfter = new Date(
        Math.min(request.now.getTime() + request.ttlMillis, authority.certificate.notAfter.getTime())
      )
      const serial = randomSerial()
      const spki = Buffer.from(request.publicKey)
      const ascii = (text: string) => Buffer.from(text, "ascii")
      const san = tlv(
        0x30,
        tlv(0x86, ascii(request.spiffeId)),
        ...request.dnsNames.map((name) => tlv(0x82, ascii(name)))
      )
      const extensions = tlv(
        0xa3,
        tlv(
          0x30,
          constantExtensions(knownKind ?? keyKindOf(spki)),
          tlv(0x30, OID.subjectAltName, tlv(0x04, san)),
          tlv(0x30, OID.subjectKeyIdentifier, tlv(0x04, tlv(0x04, Buffer.from(keyIdentifier(spki), "hex")))),
          issuer.authorityKeyIdentifier
        )
      )
      const tbs = tlv(
        0x30,
        Buffer.from([0xa0, 0x03, 0x02, 0x01, 0x02]), // version v3
        tlv(0x02, Buffer.from(serial, "hex")),
        issuer.signatureAlgorithm,
        issuer.name,
        tlv(0x30, derTime(notBefore), derTime(notAfter)),
        tlv(
          0x30,
          tlv(0x31, tlv(0x30, OID.commonName, directoryString(request.commonName))),
          tlv(0x31, tlv(0x30, OID.organization, directoryString(request.organization)))
        ),
        spki,
        extensions
      )
      const signature = NodeCrypto.sign(issuer.hash, tbs, { key: issuer.signingKey, dsaEncoding: "der" })
      const der = tlv(0x30, tbs, issuer.signatureAlgorithm, tlv(0x03, Buffer.from([0]), signature))
      const certPem = pemBlock("CERTIFICATE", der)
      return {
        spiffeId: request.spiffeId,
        certPem,
        chainPem: joinPem([certPem, ...issuerChain(authority)]),
        serial,
        notBefore,
        notAfter,
        issuedAt: request.now,
        issuer: authority.fingerprint
      }
    },
    catch: (cause) => new SigningFailed({ what: `signing the certificate of ${request.spiffeId}`, cause })
  })

/** A fresh key pair and its certificate (`signWorkload`): what the controller issues to each service. */
export const issueWorkload = (
  authority: Authority,
  request: WorkloadRequest
): Effect.Effect<IssuedCertificate, SigningFailed> =>
  Effect.flatMap(generateEncodedKeyPair(request.keyAlgorithm), ({ keyPem, publicKey }) =>
    Effect.map(
      signCertificate(authority, { ...request, publicKey }, request.keyAlgorithm),
      (signed): IssuedCertificate => ({ ...signed, keyPem: Redacted.make(keyPem) })
    ))

/**
 * A workload's key pair, encoded as it is used: the public half as DER SPKI (for the certificate),
 * the private half as PKCS#8 PEM (for the workload). Generating WebCrypto keys and exporting them
 * through KeyObject spent most of an issuance in OpenSSL's encoders (an SPKI export alone costs
 * about three key generations). A P-256 key is made synchronously (tens of microseconds) and its
 * fixed-shape encodings are written from its JWK form; RSA keys take milliseconds to make, so
 * they are made on Node's thread pool, which encodes them there.
 */
const generateEncodedKeyPair = (
  algorithm: KeyAlgorithm
): Effect.Effect<{ readonly publicKey: Buffer; readonly keyPem: string }, SigningFailed> =>
  algorithm === "ecdsa-p256"
    ? Effect.try({
      try: () => encodeP256(NodeCrypto.generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey),
      catch: (cause) => new SigningFailed({ what: `generating a ${algorithm} key`, cause })
    })
    : Effect.async((resume) => {
      NodeCrypto.generateKeyPair(
        "rsa",
        {
          modulusLength: algorithm === "rsa-2048" ? 2048 : 3072,
          publicExponent: 0x10001,
          publicKeyEncoding: { type: "spki", format: "der" },
          privateKeyEncoding: { type: "pkcs8", format: "pem" }
        },
        (error, publicKey, keyPem) =>
          resume(
            error === null
              ? Effect.succeed({ publicKey, keyPem })
              : Effect.fail(new SigningFailed({ what: `generating a ${algorithm} key`, cause: error }))
          )
      )
    })

// The DER around a P-256 key, byte for byte as OpenSSL writes it (test/certificates.test.ts
// compares): AlgorithmIdentifier id-ecPublicKey with the named curve prime256v1, then
// SubjectPublicKeyInfo = SEQUENCE { that, BIT STRING 04 || X || Y }, and PKCS#8 = SEQUENCE
// { INTEGER 0, that, OCTET STRING ECPrivateKey { INTEGER 1, OCTET STRING d, [1] public key } }.
const P256_ALGORITHM = "301306072a8648ce3d020106082a8648ce3d030107"
const P256_SPKI_PREFIX = Buffer.from(`3059${P256_ALGORITHM}03420004`, "hex")
const P256_PKCS8_PREFIX = Buffer.from(`308187020100${P256_ALGORITHM}046d306b0201010420`, "hex")
const P256_PKCS8_PUBLIC = Buffer.from("a14403420004", "hex")

const coordinate = (base64url: string | undefined): Buffer => {
  const bytes = Buffer.from(base64url ?? "", "base64url")
  if (bytes.length !== 32) throw new Error(`a P-256 key component of ${bytes.length} bytes`)
  return bytes
}

const encodeP256 = (privateKey: NodeCrypto.KeyObject): { readonly publicKey: Buffer; readonly keyPem: string } => {
  const jwk = privateKey.export({ format: "jwk" })
  const point = Buffer.concat([coordinate(jwk.x), coordinate(jwk.y)])
  const pkcs8 = Buffer.concat([P256_PKCS8_PREFIX, coordinate(jwk.d), P256_PKCS8_PUBLIC, point])
  return { publicKey: Buffer.concat([P256_SPKI_PREFIX, point]), keyPem: pemBlock("PRIVATE KEY", pkcs8) }
}

/** A PEM block: base64 in lines of 64, newline-terminated (as OpenSSL writes it). */
const pemBlock = (label: string, der: Uint8Array): string =>
  `-----BEGIN ${label}-----\n${
    Buffer.from(der).toString("base64").replace(/.{64}/g, "$&\n").replace(/\n$/, "")
  }\n-----END ${label}-----\n`

/** What `ca show` and /status say about a root (never anything about its key). */
export interface RootSummary {
  readonly subject: string
  readonly fingerprint: string
  readonly serial: string
  readonly notBefore: string
  readonly notAfter: string
}

export const summarizeRoot = (pem: string): RootSummary => {
  const cert = new NodeCrypto.X509Certificate(pem)
  return {
    subject: cert.subject.replace(/\n/g, ", "),
    fingerprint: cert.fingerprint256,
    serial: cert.serialNumber.toLowerCase(),
    notBefore: new Date(cert.validFrom).toISOString(),
    notAfter: new Date(cert.validTo).toISOString()
  }
}
