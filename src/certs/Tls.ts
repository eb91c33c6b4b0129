/**
 * TLS plumbing for mesh identities: Node secure contexts, grpc-js credentials that follow
 * renewals, and the SPIFFE checks that replace host-name checks between mesh members.
 */
import * as grpc from "@grpc/grpc-js"
import { Either, Redacted } from "effect"
import type { PeerCertificate, SecureContext, SecureContextOptions } from "node:tls"
import * as NodeTls from "node:tls"
import { certificateSpiffeId, type MeshPrincipal, SpiffeIdInvalid } from "./Spiffe.js"

/** The parts of an identity TLS needs. */
export interface TlsIdentity {
  readonly spiffeId: string
  /** Leaf first, then intermediates. */
  readonly chainPem: string
  readonly keyPem: Redacted.Redacted<string>
}

/** Options for `tls.createSecureContext`, `tls.createServer`, `tls.connect`, `server.setSecureContext`. */
export const secureContextOptions = (identity: TlsIdentity, bundlePem: string): SecureContextOptions => ({
  cert: identity.chainPem,
  key: Redacted.value(identity.keyPem),
  ca: bundlePem,
  minVersion: "TLSv1.2"
})

export const secureContext = (identity: TlsIdentity, bundlePem: string): SecureContext =>
  NodeTls.createSecureContext(secureContextOptions(identity, bundlePem))

/** Server options for mTLS: a client certificate chaining to the bundle is required. */
export const mtlsServerOptions = (identity: TlsIdentity, bundlePem: string): NodeTls.TlsOptions => ({
  ...secureContextOptions(identity, bundlePem),
  requestCert: true,
  rejectUnauthorized: true
})

/**
 * A `checkServerIdentity` for mesh clients: the server is named by its SPIFFE ID, not the host it
 * was dialled at. With `expected` the ID must be exactly that; otherwise any ID in the trust domain.
 */
export const checkServerSpiffeId =
  (trustDomain: string, expected?: string) => (_host: string, cert: PeerCertificate): Error | undefined =>
    Either.match(certificateSpiffeId(cert, trustDomain), {
      onLeft: (error) => error,
      onRight: (principal) =>
        expected === undefined || principal.id.uri === expected
          ? undefined
          : new SpiffeIdInvalid({ input: principal.id.uri, reason: `expected the server ${expected}` })
    })

/** The verified peer of a TLS socket (the chain was already verified by the handshake). */
export const socketPeer = (
  socket: NodeTls.TLSSocket,
  trustDomain: string
): Either.Either<MeshPrincipal, SpiffeIdInvalid> => {
  if (!socket.authorized) {
    return Either.left(
      new SpiffeIdInvalid({
        input: "",
        reason: `the peer is not authorized: ${String(socket.authorizationError ?? "no certificate")}`
      })
    )
  }
  return certificateSpiffeId(socket.getPeerCertificate(), trustDomain)
}

/** The minimum of a grpc-js server call that carries the peer's certificate. */
export interface CallWithAuthContext {
  getAuthContext(): { readonly sslPeerCertificate?: PeerCertificate } | null
}

/**
 * The peer of a grpc-js server call on mTLS credentials from this module. grpc-js fills
 * `sslPeerCertificate` only after the handshake verified the chain against the bundle.
 */
export const callPeer = (
  call: CallWithAuthContext,
  trustDomain: string
): Either.Either<MeshPrincipal, SpiffeIdInvalid> => {
  const cert = call.getAuthContext()?.sslPeerCertificate
  if (cert === undefined || cert.raw === undefined) {
    return Either.left(new SpiffeIdInvalid({ input: "", reason: "the call carries no client certificate" }))
  }
  return certificateSpiffeId(cert, trustDomain)
}

/**
 * A grpc-js CertificateProvider fed by the Certificates layer: it hands the latest identity and
 * bundle to every listener at once and on every renewal, so servers and channels built on it
 * change certificates without a restart.
 */
export class IdentityProvider implements grpc.experimental.CertificateProvider {
  private ca: grpc.experimental.CaCertificateUpdate
  private identity: grpc.experimental.IdentityCertificateUpdate
  private readonly caListeners = new Set<grpc.experimental.CaCertificateUpdateListener>()
  private readonly identityListeners = new Set<grpc.experimental.IdentityCertificateUpdateListener>()

  constructor(identity: TlsIdentity, bundlePem: string) {
    this.ca = { caCertificate: Buffer.from(bundlePem) }
    this.identity = IdentityProvider.toUpdate(identity)
  }

  private static toUpdate(identity: TlsIdentity): grpc.experimental.IdentityCertificateUpdate {
    return { certificate: Buffer.from(identity.chainPem), privateKey: Buffer.from(Redacted.value(identity.keyPem)) }
  }

  /** Publishes a renewal (or a new bundle) to every server and channel using this provider. */
  update(identity: TlsIdentity, bundlePem: string): void {
    this.ca = { caCertificate: Buffer.from(bundlePem) }
    this.identity = IdentityProvider.toUpdate(identity)
    for (const listener of this.caListeners) listener(this.ca)
    for (const listener of this.identityListeners) listener(this.identity)
  }

  // The first value is delivered on the next microtask, not inside `add…Listener`: grpc-js's
  // server registers its own watcher only after adding these listeners, so a synchronous first
  // update would be lost and the server would drop every connection until the first renewal.
  addCaCertificateListener(listener: grpc.experimental.CaCertificateUpdateListener): void {
    this.caListeners.add(listener)
    queueMicrotask(() => {
      if (this.caListeners.has(listener)) listener(this.ca)
    })
  }
  removeCaCertificateListener(listener: grpc.experimental.CaCertificateUpdateListener): void {
    this.caListeners.delete(listener)
  }
  addIdentityCertificateListener(listener: grpc.experimental.IdentityCertificateUpdateListener): void {
    this.identityListeners.add(listener)
    queueMicrotask(() => {
      if (this.identityListeners.has(listener)) listener(this.identity)
    })
  }
  removeIdentityCertificateListener(listener: grpc.experimental.IdentityCertificateUpdateListener): void {
    this.identityListeners.delete(listener)
  }
}

/**
 * Server credentials that require a client certificate from the mesh CA. (The same provider is
 * passed for both roles: grpc-js 1.14's factory swaps its two provider arguments internally, and
 * one provider serving both makes that harmless.)
 */
export const mtlsServerCredentials = (provider: IdentityProvider): grpc.ServerCredentials =>
  grpc.experimental.createCertificateProviderServerCredentials(provider, provider, true)

/** Channel credentials presenting the provider's identity and checking the server's SPIFFE ID. */
export const mtlsChannelCredentials = (
  provider: IdentityProvider,
  trustDomain: string,
  expectedServer?: string
): grpc.ChannelCredentials =>
  grpc.experimental.createCertificateProviderChannelCredentials(provider, provider, {
    checkServerIdentity: checkServerSpiffeId(trustDomain, expectedServer)
  })
