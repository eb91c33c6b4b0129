import "reflect-metadata"
import * as x509 from "@peculiar/x509"
import { Effect } from "effect"
import { webcrypto } from "node:crypto"

/** A throwaway CA and a server certificate for 127.0.0.1 (and `dnsName`), for HTTPS health targets. */
export interface TestTls {
  readonly caPem: string
  readonly certPem: string
  readonly keyPem: string
}

const algorithm = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const

export const makeTestTls = (dnsName = "echo.mesh.local"): Effect.Effect<TestTls> =>
  Effect.promise(async () => {
    const crypto = webcrypto
    x509.cryptoProvider.set(crypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0])
    const notBefore = new Date(Date.now() - 60_000)
    const notAfter = new Date(Date.now() + 86_400_000)
    const caKeys = await crypto.subtle.generateKey(algorithm, true, ["sign", "verify"])
    const ca = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: "01",
      name: "CN=health test CA",
      notBefore,
      notAfter,
      keys: caKeys,
      signingAlgorithm: algorithm,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true)
      ]
    })
    const leafKeys = await crypto.subtle.generateKey(algorithm, true, ["sign", "verify"])
    const leaf = await x509.X509CertificateGenerator.create({
      serialNumber: "02",
      subject: "CN=health target",
      issuer: ca.subject,
      notBefore,
      notAfter,
      signingKey: caKeys.privateKey,
      publicKey: leafKeys.publicKey,
      signingAlgorithm: algorithm,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        new x509.SubjectAlternativeNameExtension([{ type: "ip", value: "127.0.0.1" }, { type: "dns", value: dnsName }])
      ]
    })
    const pkcs8 = await crypto.subtle.exportKey("pkcs8", leafKeys.privateKey)
    return {
      caPem: ca.toString("pem"),
      certPem: leaf.toString("pem"),
      keyPem: x509.PemConverter.encode(pkcs8, "PRIVATE KEY")
    }
  })
