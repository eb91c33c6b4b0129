import { assert, describe, it } from "@effect/vitest"
import * as grpc from "@grpc/grpc-js"
import { Context, Effect, Either, Layer, Option, Stream, SubscriptionRef } from "effect"
import * as NodeTls from "node:tls"
import { Certificates, secretsOf, type WorkloadIdentity } from "../layers/Certificates.js"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { Snapshot, SnapshotSecrets } from "../layers/Snapshot.js"
import { Xds } from "../layers/Xds.js"
import { createRoot, issueWorkload, loadAuthority } from "../src/certs/Authority.js"
import { ROOT_CA_SECRET } from "../src/certs/Sds.js"
import { controllerId, serviceId } from "../src/certs/Spiffe.js"
import {
  callPeer,
  checkServerSpiffeId,
  IdentityProvider,
  mtlsChannelCredentials,
  mtlsServerCredentials,
  mtlsServerOptions,
  secureContextOptions,
  socketPeer,
  type TlsIdentity
} from "../src/certs/Tls.js"
import { decode, Types, TypeUrls } from "../src/xds/Protos.js"
import { certConfig, ephemeralLayer, service as meshService } from "./support/certs.js"

const TD = "mesh.local"

/** A mesh with its own in-memory CA and identities for echo and gateway. */
const mesh = () =>
  Effect.map(
    Layer.build(ephemeralLayer(certConfig({}, ["echo", "gateway"]))),
    (context) => Context.get(context, Certificates)
  )

interface HandshakeResult {
  /** What the server told the client: the client's SPIFFE ID as the server read it. */
  readonly received: string | undefined
  /** Why the server refused the client, if it did. */
  readonly serverError: string | undefined
}

/**
 * A real node:tls server (mTLS, requiring a client certificate chaining to `serverBundle`) and a
 * client; the server answers each authorized client with the SPIFFE ID it read from its certificate.
 */
const handshake = (
  server: { identity: TlsIdentity; bundle: string },
  client: { identity: TlsIdentity; bundle: string }
) =>
  Effect.acquireUseRelease(
    Effect.async<{ tls: NodeTls.Server; port: number; refused: Promise<string> }>((resume) => {
      let refuse: (reason: string) => void = () => {}
      const refused = new Promise<string>((resolve) => (refuse = resolve))
      const tls = NodeTls.createServer(mtlsServerOptions(server.identity, server.bundle), (socket) => {
        const peer = socketPeer(socket, TD)
        socket.end(Either.match(peer, { onLeft: (e) => `rejected: ${e.message}`, onRight: (p) => p.id.uri }))
      })
      // A refused client certificate shows as the socket's authorizationError (the error itself is a bare hang-up).
      tls.on("tlsClientError", (error, socket) => refuse(socket.authorizationError?.toString() ?? error.message))
      tls.listen(0, "127.0.0.1", () =>
        resume(Effect.succeed({ tls, port: (tls.address() as { port: number }).port, refused })))
    }),
    ({ port, refused }) =>
      Effect.promise(
        () =>
          new Promise<HandshakeResult>((resolve) => {
            let data = ""
            let serverError: string | undefined
            void refused.then((reason) => (serverError = reason))
            const socket = NodeTls.connect({
              host: "127.0.0.1",
              port,
              ...secureContextOptions(client.identity, client.bundle),
              checkServerIdentity: checkServerSpiffeId(TD, server.identity.spiffeId)
            })
            socket.setEncoding("utf8")
            socket.on("data", (chunk: string) => (data += chunk))
            socket.on("error", () => {})
            socket.on("close", () => {
              // The server's refusal event precedes the alert the client sees; give it a turn to land.
              setImmediate(() =>
                resolve({ received: data === "" ? undefined : data, serverError })
              )
            })
          })
      ),
    ({ tls }) =>
      Effect.async<void>((resume) => void tls.close(() => resume(Effect.void))).pipe(Effect.timeoutOption("5 seconds"))
  )

const identityOf = (state: { services: ReadonlyMap<string, WorkloadIdentity> }, name: string) =>
  state.services.get(name)!

describe("TLS between mesh identities", () => {
  it.scopedLive("two mesh identities complete a handshake and the server reads the client's SPIFFE ID", () =>
    Effect.gen(function*() {
      const certs = yield* mesh()
      const state = yield* certs.state
      const result = yield* handshake(
        { identity: identityOf(state, "echo"), bundle: state.bundle.pem },
        { identity: identityOf(state, "gateway"), bundle: state.bundle.pem }
      )
      assert.strictEqual(result.received, serviceId(TD, "gateway"))
      assert.isUndefined(result.serverError)
    }))

  it.scopedLive("a client certificate from a foreign CA is refused", () =>
    Effect.gen(function*() {
      const ours = yield* (yield* mesh()).state
      const foreign = yield* (yield* mesh()).state
      const result = yield* handshake(
        { identity: identityOf(ours, "echo"), bundle: ours.bundle.pem },
        // The client trusts both CAs, so only the server's check can stop it.
        { identity: identityOf(foreign, "gateway"), bundle: ours.bundle.pem + foreign.bundle.pem }
      )
      assert.isUndefined(result.received)
      // The client sends its foreign root along (OpenSSL completes the chain from its trust store).
      assert.strictEqual(result.serverError, "SELF_SIGNED_CERT_IN_CHAIN")
    }))

  it.scopedLive("an expired certificate is refused", () =>
    Effect.gen(function*() {
      const now = Date.now()
      const root = yield* createRoot({
        meshName: "home-lab",
        trustDomain: TD,
        keyAlgorithm: "ecdsa-p256",
        now: new Date(now - 10 * 86_400_000),
        validityMillis: 3650 * 86_400_000
      })
      const authority = yield* loadAuthority({
        certPem: root.certPem,
        certFile: "<memory>",
        keyPem: root.keyPem,
        keyFile: "<memory>"
      })
      const request = {
        commonName: "x",
        organization: "home-lab",
        keyAlgorithm: "ecdsa-p256" as const,
        ttlMillis: 86_400_000
      }
      const server = yield* issueWorkload(authority, {
        ...request,
        spiffeId: serviceId(TD, "echo"),
        dnsNames: ["echo"],
        now: new Date(now)
      })
      const expired = yield* issueWorkload(authority, {
        ...request,
        spiffeId: serviceId(TD, "gateway"),
        dnsNames: ["gateway"],
        now: new Date(now - 3 * 86_400_000)
      })
      assert.isTrue(expired.notAfter.getTime() < now)
      const result = yield* handshake({ identity: server, bundle: root.certPem }, {
        identity: expired,
        bundle: root.certPem
      })
      assert.isUndefined(result.received)
      assert.strictEqual(result.serverError, "CERT_HAS_EXPIRED")
    }))
})

// ---------------------------------------------------------------------------------------------
// grpc-js with the xDS server's mTLS credentials
// ---------------------------------------------------------------------------------------------

const WHO = "/mesh.test.Who/Ask"
const identity = (b: Buffer) => b
const whoService: grpc.ServiceDefinition = {
  Ask: {
    path: WHO,
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity
  }
}

/** A grpc-js server answering with the caller's SPIFFE ID (as `callPeer` reads it). */
const whoServer = (credentials: grpc.ServerCredentials) =>
  Effect.acquireRelease(
    Effect.async<{ server: grpc.Server; port: number }>((resume) => {
      const server = new grpc.Server()
      server.addService(whoService, {
        Ask: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) =>
          callback(
            null,
            Buffer.from(
              Either.match(callPeer(call, TD), { onLeft: (e) => `none: ${e.message}`, onRight: (p) => p.id.uri })
            )
          )
      })
      server.bindAsync("127.0.0.1:0", credentials, (error, port) =>
        resume(error ? Effect.die(error) : Effect.succeed({ server, port })))
    }),
    ({ server }) =>
      Effect.sync(() =>
        server.forceShutdown()
      )
  )

/** One unary call with an empty request to a fresh channel; the raw response or the error. */
const unary = (port: number, credentials: grpc.ChannelCredentials, path: string) =>
  Effect.acquireUseRelease(
    Effect.sync(() => new grpc.Client(`127.0.0.1:${port}`, credentials)),
    (client) =>
      Effect.async<Either.Either<Buffer, grpc.ServiceError>>((resume) => {
        client.makeUnaryRequest(
          path,
          identity,
          identity,
          Buffer.alloc(0),
          { deadline: Date.now() + 10_000 },
          (error, value) => resume(Effect.succeed(error ? Either.left(error) : Either.right(value!)))
        )
      }),
    (client) => Effect.sync(() => client.close())
  )

const ask = (port: number, credentials: grpc.ChannelCredentials) =>
  Effect.map(unary(port, credentials, WHO), Either.map((value) => value.toString()))

describe("gRPC with controller.xds.tls: mtls credentials", () => {
  it.scopedLive("a mesh client connects and is known by its SPIFFE ID; a client without a certificate is refused", () =>
    Effect.gen(function*() {
      const service = yield* mesh()
      const state = yield* service.state
      const { port } = yield* whoServer(service.xdsServerCredentials)

      const member = mtlsChannelCredentials(
        new IdentityProvider(identityOf(state, "gateway"), state.bundle.pem),
        TD,
        controllerId(TD)
      )
      const answer = yield* ask(port, member)
      assert.deepStrictEqual(answer, Either.right(serviceId(TD, "gateway")))

      const anonymous = grpc.credentials.createSsl(Buffer.from(state.bundle.pem), null, null, {
        checkServerIdentity: checkServerSpiffeId(TD)
      })
      const refused = yield* ask(port, anonymous)
      assert.isTrue(Either.isLeft(refused))
      assert.strictEqual(Either.getLeft(refused).pipe(Option.getOrThrow).code, grpc.status.UNAVAILABLE)
    }))

  it.scopedLive("a renewed identity is served to new connections without restarting the server", () =>
    Effect.gen(function*() {
      const service = yield* mesh()
      const state = yield* service.state
      const provider = new IdentityProvider(state.controller, state.bundle.pem)
      const { port } = yield* whoServer(mtlsServerCredentials(provider))
      // Records the serial of the certificate each new connection's server presented.
      const seen: Array<string> = []

      const serverSerial = (credentials: grpc.ChannelCredentials) =>
        Effect.map(ask(port, credentials), () => seen[seen.length - 1])
      const gateway = new IdentityProvider(identityOf(state, "gateway"), state.bundle.pem)
      const watching = (expected: string) =>
        grpc.experimental.createCertificateProviderChannelCredentials(gateway, gateway, {
          checkServerIdentity: (host, cert) => {
            seen.push(cert.serialNumber.toLowerCase())
            return checkServerSpiffeId(TD, expected)(host, cert)
          }
        })
      assert.strictEqual(yield* serverSerial(watching(controllerId(TD))), state.controller.serial)

      const renewed = yield* service.issue("echo")
      provider.update(renewed, state.bundle.pem)
      assert.strictEqual(yield* serverSerial(watching(serviceId(TD, "echo"))), renewed.serial)
    }))
})

describe("the real xDS server with controller.xds.tls: mtls", () => {
  const HEALTH_CHECK = "/grpc.health.v1.Health/Check"
  /** grpc.health.v1 Check for the server as a whole (an empty request). */
  const check = (port: number, credentials: grpc.ChannelCredentials) => unary(port, credentials, HEALTH_CHECK)

  it.scopedLive("a mesh member reads from the xDS server; a client without a mesh certificate is refused", () =>
    Effect.gen(function*() {
      const config = certConfig({}, ["echo", "gateway"])
      const registry = yield* SubscriptionRef.make<ReadonlyArray<ReturnType<typeof meshService>>>(
        config.services.map((s) => meshService(s.name))
      )
      const base = Layer.mergeAll(LiveConfig.layerMemory(config), Discovery.layerMemory(registry), Health.layerNoop)
      const certs = Context.get(yield* Layer.build(Certificates.layerEphemeral.pipe(Layer.provide(base))), Certificates)
      const xdsLayer = Xds.layer({ host: "127.0.0.1", port: 0, credentials: certs.xdsServerCredentials }).pipe(
        Layer.provide(Snapshot.layer),
        Layer.provide(base)
      )
      const { port } = Context.get(yield* Layer.build(xdsLayer), Xds).address
      const state = yield* certs.state

      const member = mtlsChannelCredentials(
        new IdentityProvider(identityOf(state, "gateway"), state.bundle.pem),
        TD,
        controllerId(TD)
      )
      const answer = yield* check(port, member)
      assert.isTrue(
        Either.isRight(answer),
        String(Either.getLeft(answer).pipe(Option.map((e) => e.message), Option.getOrElse(() => "")))
      )

      const anonymous = grpc.credentials.createSsl(Buffer.from(state.bundle.pem), null, null, {
        checkServerIdentity: checkServerSpiffeId(TD)
      })
      const refused = yield* check(port, anonymous)
      assert.strictEqual(Either.getLeft(refused).pipe(Option.getOrThrow).code, grpc.status.UNAVAILABLE)

      const plaintext = yield* check(port, grpc.credentials.createInsecure())
      assert.isTrue(Either.isLeft(plaintext))
    }))
})

describe("SDS through the snapshot", () => {
  it.scopedLive("each service's certificate and the trust bundle become Secret resources, and follow Discovery", () =>
    Effect.gen(function*() {
      const config = certConfig({}, ["echo", "gateway"])
      const registry = yield* SubscriptionRef.make<ReadonlyArray<ReturnType<typeof meshService>>>(
        config.services.map((s) => meshService(s.name))
      )
      const base = Layer.mergeAll(LiveConfig.layerMemory(config), Discovery.layerMemory(registry), Health.layerNoop)
      const certs = Context.get(yield* Layer.build(Certificates.layerEphemeral.pipe(Layer.provide(base))), Certificates)
      // The wiring program.ts uses: the Certificates layer's changes, as MeshState secrets.
      const secrets = Layer.succeed(SnapshotSecrets, { changes: certs.changes.pipe(Stream.map(secretsOf)) })
      const snapshot = Context.get(
        yield* Layer.build(Snapshot.layerWithSecrets.pipe(Layer.provide(secrets), Layer.provide(base))),
        Snapshot
      )
      const secretsIn = (names: ReadonlyArray<string>) =>
        snapshot.changes.pipe(
          Stream.map((p) => p.snapshot.resources.get(TypeUrls.Secret) ?? new Map()),
          Stream.filter((resources) => names.every((name) => resources.has(name))),
          Stream.runHead,
          Effect.map(Option.getOrThrow)
        )
      const echoId = serviceId(TD, "echo")
      const resources = yield* secretsIn([ROOT_CA_SECRET, echoId, serviceId(TD, "gateway")])
      const echo = decode(Types.Any, resources.get(echoId)!.any)
      const state = yield* certs.state
      assert.deepStrictEqual(
        (echo as { tls_certificate: { certificate_chain: { inline_string: string } } }).tls_certificate
          .certificate_chain.inline_string,
        state.services.get("echo")!.chainPem
      )
      const root = decode(Types.Any, resources.get(ROOT_CA_SECRET)!.any)
      assert.strictEqual(
        (root as { validation_context: { trusted_ca: { inline_string: string } } }).validation_context.trusted_ca
          .inline_string,
        state.bundle.pem
      )

      yield* SubscriptionRef.update(registry, (services) => [...services, meshService("billing")])
      yield* secretsIn([serviceId(TD, "billing")])
    }))
})
