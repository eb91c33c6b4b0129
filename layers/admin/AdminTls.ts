/**
 * HTTPS for the admin server (`controller.admin.tls`): the controller's own mesh certificate, and
 * the client certificate as an admin credential.
 *
 * The server listens before Certificates has loaded the CA (Admin starts early so /readyz can say
 * what the daemon waits for), so it is created without a certificate and gets one when the
 * controller's identity arrives; until then handshakes fail. From then on it follows the same
 * `IdentityProvider` the mTLS xDS server uses: every renewal and every trust-bundle change (a
 * `ca rotate`) becomes the secure context of the next connection, without a restart.
 *
 * A client certificate is asked for, not required: the bearer token and /healthz work without
 * one. One that does not chain to the live bundle (a foreign CA) counts as none.
 */
import type { HttpServerRequest } from "@effect/platform"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import type * as grpc from "@grpc/grpc-js"
import { Context, Deferred, Effect, Either, Layer } from "effect"
import type * as Http from "node:http"
import * as Https from "node:https"
import { TLSSocket } from "node:tls"
import { socketPeer } from "../../src/certs/Tls.js"

export interface AdminTlsOptions {
  readonly trustDomain: string
  /** The controller's identity; may wait until the CA has loaded. */
  readonly identity: Effect.Effect<grpc.experimental.CertificateProvider>
}

/** An HTTPS server that takes the controller's certificate (and every renewal) once it is there. */
export const makeTlsServer = (options: AdminTlsOptions) =>
  Effect.gen(function*() {
    const server = Https.createServer({ requestCert: true, rejectUnauthorized: false, minVersion: "TLSv1.2" })
    yield* followIdentity(server, options.identity).pipe(Effect.forkScoped)
    // NodeHttpServer serves an http.Server; an https.Server emits the same events.
    return server as unknown as Http.Server
  })

const followIdentity = (server: Https.Server, identity: AdminTlsOptions["identity"]) =>
  Effect.gen(function*() {
    const provider = yield* identity
    let ca: Buffer | undefined
    let own: grpc.experimental.IdentityCertificateUpdate | undefined
    const apply = () => {
      if (ca === undefined || own === undefined) return
      server.setSecureContext({ cert: own.certificate, key: own.privateKey, ca, minVersion: "TLSv1.2" })
    }
    const onCa: grpc.experimental.CaCertificateUpdateListener = (update) => {
      if (update === null) return
      ca = update.caCertificate
      apply()
    }
    const onIdentity: grpc.experimental.IdentityCertificateUpdateListener = (update) => {
      if (update === null) return
      own = update
      apply()
    }
    yield* Effect.acquireRelease(
      Effect.sync(() => {
        provider.addCaCertificateListener(onCa)
        provider.addIdentityCertificateListener(onIdentity)
      }),
      () =>
        Effect.sync(() => {
          provider.removeCaCertificateListener(onCa)
          provider.removeIdentityCertificateListener(onIdentity)
        })
    )
    yield* Effect.logInfo("admin: serving HTTPS with the controller's mesh certificate")
  })

/**
 * The SPIFFE ID of the request's client certificate, when the handshake verified it against the
 * trust bundle and it names an identity of `trustDomain`; undefined otherwise (no certificate, a
 * foreign CA, a plain HTTP connection).
 */
export const clientIdentity =
  (trustDomain: string) => (request: HttpServerRequest.HttpServerRequest): string | undefined => {
    const socket = NodeHttpServerRequest.toIncomingMessage(request).socket
    if (!(socket instanceof TLSSocket)) return undefined
    return Either.getOrUndefined(Either.map(socketPeer(socket, trustDomain), (principal) => principal.id.uri))
  }

/**
 * Where the daemon hands the controller's identity to its admin server: Admin is built before
 * Certificates (src/program.ts), so it waits on this, and a layer built after Certificates fills it.
 */
export class ControllerIdentity extends Context.Tag("mesh-controller/admin/ControllerIdentity")<
  ControllerIdentity,
  Deferred.Deferred<grpc.experimental.CertificateProvider>
>() {
  static readonly layer: Layer.Layer<ControllerIdentity> = Layer.effect(
    ControllerIdentity,
    Deferred.make<grpc.experimental.CertificateProvider>()
  )
}
