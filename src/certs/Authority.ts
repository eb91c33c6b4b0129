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

const keyGenParams = (algorithm: KeyAlgorithm): NodeCrypto.webcrypto.RsaHashedKeyGenParams | NodeCrypto.webcrypto.EcKeyGenParams => {
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
  attempt(`generating a ${algorithm} key`, () =>
    webcrypto.subtle.generateKey(keyGenParams(algorithm), true, ["sign", "verify"]) as Promise<CryptoKeyPair>
  )

// Key exports go through KeyObject, synchronously: WebCrypto's exportKey is a thread-pool round
// trip each time, which on a busy Raspberry Pi costs more than the conversion itself.
const exportKeyPem = (key: CryptoKey): Effect.Effect<Redacted.Redacted<string>, SigningFailed> =>
  Effect.try({
    try: () => Redacted.make(NodeCrypto.KeyObject.from(key).export({ format: "pem", type: "pkcs8" }).toString()),
    catch: (cause) => new SigningFailed({ what: "exporting a private key", cause })
  })

/** WebCrypto import parameters for a private key, from what Node can tell about it. */
const importParams = (key: NodeCrypto.KeyObject): NodeCrypto.webcrypto.RsaHashedImportParams | NodeCrypto.webcrypto.EcKeyImportParams | string => {
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
      )
    )
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
        reason: certs.length === 0 ? "no PEM certificate found (corrupt or empty file?)" : `expected one certificate, found ${certs.length}`
      })
    }
    const cert = yield* parseCertificate(certs[0]!, certFile)
    if (!cert.ca) return yield* new CaInvalid({ file: certFile, reason: "the certificate is not a CA (basicConstraints CA:FALSE)" })
    const privateKey = yield* Effect.try({
      try: () => NodeCrypto.createPrivateKey(Redacted.value(source.keyPem)),
      catch: () => new CaInvalid({ file: keyFile, reason: "not a valid PEM private key (corrupt or truncated, or encrypted?)" })
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
        return yield* new CaInvalid({ file: chainFile, reason: `${next.subject} did not issue ${top.subject}; list the chain from the issuer up to the root` })
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
        webcrypto.subtle.importKey("pkcs8", privateKey.export({ format: "der", type: "pkcs8" }), params, false, ["sign"]),
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

/** DER: a tag, its length, then the content. */
const derTlv = (tag: number, content: Uint8Array): Uint8Array => {
  const n = content.length
  const length = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff]
  return Uint8Array.from([tag, ...length, ...content])
}

/**
 * subjectAltName with the URI and DNS names, encoded directly: @peculiar/x509's JSON-to-ASN.1 path
 * for this one extension costs more than the CA signature (see bench/certs.ts).
 */
const subjectAltName = (uri: string, dnsNames: ReadonlyArray<string>): x509.Extension => {
  const ascii = (text: string) => Uint8Array.from(Buffer.from(text, "ascii"))
  const names = [derTlv(0x86, ascii(uri)), ...dnsNames.map((name) => derTlv(0x82, ascii(name)))]
  return new x509.Extension("2.5.29.17", false, derTlv(0x30, Uint8Array.from(names.flatMap((n) => [...n]))))
}

/** The extensions every workload certificate shares, built once (they are immutable values). */
const workloadConstants = (() => {
  const common = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth], false)
  ]
  const ec = new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true)
  const rsa = new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true)
  return (algorithm: KeyAlgorithm): ReadonlyArray<x509.Extension> => [common[0]!, algorithm === "ecdsa-p256" ? ec : rsa, common[1]!]
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
  issuer.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId ?? keyIdentifier(new Uint8Array(issuer.publicKey.rawData))

/**
 * An X.509-SVID: the SPIFFE ID as the only URI SAN, DNS SANs, CA:FALSE, digitalSignature
 * (+ keyEncipherment for RSA), serverAuth + clientAuth. Its lifetime never outlasts the authority.
 */
export const issueWorkload = (authority: Authority, request: WorkloadRequest): Effect.Effect<IssuedCertificate, SigningFailed> =>
  Effect.gen(function*() {
    const keys = yield* generateKeyPair(request.keyAlgorithm)
    // The public key as SPKI bytes, converted here synchronously (the library would export it again).
    const spki = NodeCrypto.KeyObject.from(keys.publicKey).export({ format: "der", type: "spki" })
    const signed = yield* signWorkloadKey(authority, request, spki)
    return { ...signed, keyPem: yield* exportKeyPem(keys.privateKey) }
  })

/**
 * The certificate of `issueWorkload` for a public key made elsewhere (SPKI DER): the signing
 * service signs keys that agents make on their own hosts. `request.keyAlgorithm` picks the key
 * usage (keyEncipherment for RSA).
 */
export const signWorkloadKey = (
  authority: Authority,
  request: WorkloadRequest,
  spki: Uint8Array
): Effect.Effect<Omit<IssuedCertificate, "keyPem">, SigningFailed> =>
  Effect.gen(function*() {
    const notBefore = new Date(request.now.getTime() - WORKLOAD_BACKDATE_MILLIS)
    const notAfter = new Date(Math.min(request.now.getTime() + request.ttlMillis, authority.certificate.notAfter.getTime()))
    const certificate = yield* attempt(`signing the certificate of ${request.spiffeId}`, async () =>
      x509.X509CertificateGenerator.create(
        {
          serialNumber: randomSerial(),
          subject: `CN=${request.commonName}, O=${request.organization}`,
          issuer: authority.certificate.subjectName,
          notBefore,
          notAfter,
          publicKey: spki,
          signingKey: authority.key,
          signingAlgorithm: signingAlgorithm(authority.key),
          extensions: [
            ...workloadConstants(request.keyAlgorithm),
            subjectAltName(request.spiffeId, request.dnsNames),
            new x509.SubjectKeyIdentifierExtension(keyIdentifier(spki), false),
            new x509.AuthorityKeyIdentifierExtension(authority.keyId, false)
          ]
        },
        webcrypto
      )
    )
    const certPem = certificate.toString("pem") + "\n"
    return {
      spiffeId: request.spiffeId,
      certPem,
      chainPem: joinPem([certPem, ...issuerChain(authority)]),
      serial: certificate.serialNumber.toLowerCase(),
      notBefore,
      notAfter,
      issuedAt: request.now,
      issuer: authority.fingerprint
    }
  })

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
