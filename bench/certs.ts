/**
 * Workload certificates issued per second, against the floor of the same work done bare.
 *
 *   npx tsx bench/certs.ts                          # short: 2 s per measurement, ECDSA P-256
 *   npx tsx bench/certs.ts --seconds 10 --alg rsa-2048
 *
 * Measured: `issueWorkload` (key generation, the certificate's DER built directly by
 * `signWorkload` with SAN/usages/key ids, CA signature, PEM and PKCS#8 export), one after another. Floor: WebCrypto generating the same kind
 * of key and signing the same certificate bytes with the CA key, in a plain loop. Both run in this
 * process, interleaved in two rounds, and it prints both rates and their ratio. Figures, not a test.
 */
import { Effect } from "effect"
import * as NodeCrypto from "node:crypto"
import type { KeyAlgorithm } from "../schemas/Config.js"
import { createRoot, issueWorkload, loadAuthority } from "../src/certs/Authority.js"

const argument = (name: string, fallback: string) => {
  const index = process.argv.indexOf(`--${name}`)
  return index === -1 ? fallback : (process.argv[index + 1] ?? fallback)
}
const seconds = Number(argument("seconds", "2"))
const algorithm = argument("alg", "ecdsa-p256") as KeyAlgorithm

const subtle = NodeCrypto.webcrypto.subtle
const keyParams = algorithm === "ecdsa-p256"
  ? { name: "ECDSA", namedCurve: "P-256" }
  : {
    name: "RSASSA-PKCS1-v1_5",
    modulusLength: algorithm === "rsa-2048" ? 2048 : 3072,
    publicExponent: new Uint8Array([1, 0, 1]),
    hash: "SHA-256"
  }
const signParams = algorithm === "ecdsa-p256" ? { name: "ECDSA", hash: "SHA-256" } : { name: "RSASSA-PKCS1-v1_5" }

/** Runs `once` back to back for `seconds`; returns operations per second. */
const rate = async (once: () => Promise<unknown>): Promise<number> => {
  const end = performance.now() + seconds * 1000
  let count = 0
  const start = performance.now()
  while (performance.now() < end) {
    await once()
    count++
  }
  return count / ((performance.now() - start) / 1000)
}

const main = async () => {
  const root = await Effect.runPromise(
    createRoot({
      meshName: "bench",
      trustDomain: "mesh.local",
      keyAlgorithm: algorithm,
      now: new Date(),
      validityMillis: 86_400_000 * 365
    })
  )
  const authority = await Effect.runPromise(
    loadAuthority({ certPem: root.certPem, certFile: "<memory>", keyPem: root.keyPem, keyFile: "<memory>" })
  )
  let n = 0
  const issue = () =>
    Effect.runPromise(
      issueWorkload(authority, {
        spiffeId: `spiffe://mesh.local/service/svc-${n}`,
        commonName: `svc-${n++}`,
        organization: "bench",
        dnsNames: ["svc"],
        keyAlgorithm: algorithm,
        now: new Date(),
        ttlMillis: 86_400_000
      })
    )
  // The bytes the floor signs: a real certificate of the same shape.
  const sample = new NodeCrypto.X509Certificate((await issue()).certPem).raw
  const floor = async () => {
    const keys = (await subtle.generateKey(keyParams, true, ["sign", "verify"])) as NodeCrypto.webcrypto.CryptoKeyPair
    await subtle.exportKey("spki", keys.publicKey)
    await subtle.sign(signParams, authority.key, sample)
  }
  await rate(issue) // warm-up
  const results = { issued: [] as Array<number>, floor: [] as Array<number> }
  for (let round = 0; round < 2; round++) {
    results.floor.push(await rate(floor))
    results.issued.push(await rate(issue))
  }
  const best = (xs: ReadonlyArray<number>) => Math.max(...xs)
  const issued = best(results.issued)
  const bare = best(results.floor)
  console.log(`algorithm: ${algorithm}, ${seconds} s per measurement, best of 2 rounds`)
  console.log(`workload certificates issued: ${issued.toFixed(1)}/s`)
  console.log(`floor (WebCrypto keygen + sign of the same certificate bytes): ${bare.toFixed(1)}/s`)
  console.log(`ratio issued/floor: ${(issued / bare).toFixed(2)}`)
}

void main()
