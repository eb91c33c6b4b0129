/**
 * SDS access control and sidecar mTLS through the real xDS server: the Certificates layer's
 * secrets served by Snapshot.layerWithSecrets, read with the raw ADS client.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Either, Layer, Stream, SubscriptionRef } from "effect"
import * as NodeTls from "node:tls"
import { Certificates, secretsOf } from "../layers/Certificates.js"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { Snapshot, SnapshotSecrets } from "../layers/Snapshot.js"
import { Xds } from "../layers/Xds.js"
import { ROOT_CA_SECRET } from "../src/certs/Sds.js"
import { controllerId, serviceId } from "../src/certs/Spiffe.js"
import { IdentityProvider, mtlsChannelCredentials, socketPeer } from "../src/certs/Tls.js"
import { emptyView } from "../src/health/Routing.js"
import type { Service } from "../src/MeshState.js"
import { compileUnchecked } from "../src/policy/Compile.js"
import { composeMeshState } from "../src/xds/Compose.js"
import { check, decode, Types, TypeUrls } from "../src/xds/Protos.js"
import { OWN_SECRET, TRUST_BUNDLE } from "../src/xds/Resources.js"
import { buildSnapshot } from "../src/xds/XdsSnapshot.js"
import { deltaPush, newStream, onDeltaRequest } from "../src/xds/XdsStream.js"
import { AdsClient, envoyNode } from "./support/AdsClient.js"
import { certConfig, service as meshService } from "./support/certs.js"
import { eventually } from "./support/eventually.js"

const TD = "mesh.local"
const ECHO = serviceId(TD, "echo")
const GATEWAY = serviceId(TD, "gateway")

/** How sidecars prove who they are to the xDS server (`controller.xds`). */
type XdsIdentity = "plaintext" | "node-id" | "mtls"
const xdsSettings = (xds: XdsIdentity) => ({
  xds: { tls: xds === "mtls" ? "mtls" : "off", insecureNodeIdentity: xds === "node-id" }
})

/** Certificates (in memory) → Snapshot with secrets → Xds on 127.0.0.1:0, for echo and gateway. */
const meshServer = (mtls: "strict" | "permissive", xds: XdsIdentity) =>
  Effect.gen(function*() {
    const config = certConfig({}, ["echo", "gateway"], {
      policies: { security: { mtls } },
      controller: xdsSettings(xds)
    })
    const registry = yield* SubscriptionRef.make<ReadonlyArray<Service>>(
      config.services.map((s) => meshService(s.name))
    )
    const base = Layer.mergeAll(LiveConfig.layerMemory(config), Discovery.layerMemory(registry), Health.layerNoop)
    const certs = Context.get(yield* Layer.build(Certificates.layerEphemeral.pipe(Layer.provide(base))), Certificates)
    const secrets = Layer.succeed(SnapshotSecrets, { changes: certs.changes.pipe(Stream.map(secretsOf)) })
    const snapshotLayer = Snapshot.layerWithSecrets.pipe(Layer.provide(secrets), Layer.provide(base))
    const credentials = xds === "mtls" ? { credentials: certs.xdsServerCredentials } : {}
    const context = yield* Layer.build(
      Xds.layer({ host: "127.0.0.1", port: 0, ...credentials }).pipe(
        Layer.provideMerge(snapshotLayer),
        Layer.provide(base)
      )
    )
    // Serve only once the secrets (and the mTLS resources built from them) are in the snapshot.
    yield* Context.get(context, Snapshot).changes.pipe(
      Stream.filter((p) => p.snapshot.resources.get(TypeUrls.Secret)?.has(ROOT_CA_SECRET) === true),
      Stream.runHead
    )
    const server = Context.get(context, Xds)
    return { certs, server, address: `127.0.0.1:${server.address.port}`, state: yield* certs.state }
  })

type Resource = Record<string, any>
const chainOf = (secret: Resource | undefined): string | undefined =>
  secret?.["tls_certificate"]?.certificate_chain?.inline_string
const keyOf = (secret: Resource | undefined): string | undefined =>
  secret?.["tls_certificate"]?.private_key?.inline_string
const byName = (resources: ReadonlyArray<Resource>, name: string) => resources.find((r) => r["name"] === name)
const secretsRequest = (names: ReadonlyArray<string>, node?: ReturnType<typeof envoyNode>) => ({
  ...(node ? { node } : {}),
  type_url: TypeUrls.Secret,
  resource_names: names
})
const clientsOf = (server: Xds["Type"]) => Effect.map(server.status, (s) => s.clients)

describe("SDS access control", () => {
  it.scopedLive("plaintext by default: the trust bundle only, no private key even for the node's own service, and no sidecar mTLS", () =>
    Effect.gen(function*() {
      const { address, server } = yield* meshServer("permissive", "plaintext")
      const ads = yield* AdsClient.sotw(address)
      yield* ads.send(secretsRequest([ROOT_CA_SECRET, TRUST_BUNDLE, ECHO, OWN_SECRET], envoyNode("echo~a")))
      const sds = yield* ads.next(TypeUrls.Secret)
      assert.deepStrictEqual(sds.names, [ROOT_CA_SECRET, TRUST_BUNDLE])
      const [client] = yield* eventually(
        Effect.filterOrFail(clientsOf(server), (c) => c.length === 1 && c[0]!.deniedSecrets.length === 2)
      )
      assert.strictEqual(client!.identity, null)
      assert.strictEqual(client!.identitySource, "none")
      assert.sameMembers([...client!.deniedSecrets], [ECHO, OWN_SECRET])
      // No sidecar can get its key, so none is told to use one: sidecar traffic stays plaintext.
      const { inbound, outbound } = yield* sidecarView(address)
      assert.isUndefined(inbound["filter_chains"][0].transport_socket)
      assert.isUndefined(outbound["transport_socket"])
    }))

  it.scopedLive("with insecureNodeIdentity, a sidecar gets its own secret and ROOTCA, never another service's", () =>
    Effect.gen(function*() {
      const { address, server, state } = yield* meshServer("permissive", "node-id")
      const ads = yield* AdsClient.sotw(address)
      yield* ads.send(secretsRequest([ROOT_CA_SECRET, ECHO, GATEWAY, OWN_SECRET], envoyNode("echo~a")))
      const sds = yield* ads.next(TypeUrls.Secret)
      assert.deepStrictEqual([...sds.names].sort(), [OWN_SECRET, ROOT_CA_SECRET, ECHO].sort())
      assert.strictEqual(chainOf(byName(sds.resources, ECHO)), state.services.get("echo")!.chainPem)
      // The alias is the node's own certificate under the name the shared outbound clusters use.
      assert.strictEqual(chainOf(byName(sds.resources, OWN_SECRET)), state.services.get("echo")!.chainPem)
      assert.notInclude(JSON.stringify(sds.resources), JSON.stringify(state.services.get("gateway")!.chainPem))

      const [client] = yield* eventually(
        Effect.filterOrFail(clientsOf(server), (c) => c.length === 1 && c[0]!.deniedSecrets.length === 1)
      )
      assert.strictEqual(client!.identity, ECHO)
      assert.strictEqual(client!.identitySource, "node-id")
      assert.deepStrictEqual(client!.deniedSecrets, [GATEWAY])
    }))

  it.scopedLive("Delta: a refused secret is answered in removed_resources", () =>
    Effect.gen(function*() {
      const { address } = yield* meshServer("permissive", "node-id")
      const ads = yield* AdsClient.delta(address)
      yield* ads.send({
        node: envoyNode("echo~a"),
        type_url: TypeUrls.Secret,
        resource_names_subscribe: [ROOT_CA_SECRET, ECHO, GATEWAY]
      })
      const sds = yield* ads.next(TypeUrls.Secret)
      assert.sameMembers([...sds.names], [ROOT_CA_SECRET, ECHO])
      assert.deepStrictEqual(sds.removed, [GATEWAY])
    }))

  it.scopedLive("over mTLS the verified certificate decides, whatever node id the client claims", () =>
    Effect.gen(function*() {
      const { address, server, state } = yield* meshServer("strict", "mtls")
      const gateway = mtlsChannelCredentials(
        new IdentityProvider(state.services.get("gateway")!, state.bundle.pem),
        TD,
        controllerId(TD)
      )
      const ads = yield* AdsClient.sotw(address, gateway)
      // Claims to be echo's sidecar; the certificate says gateway.
      yield* ads.send(secretsRequest([ROOT_CA_SECRET, ECHO, GATEWAY, OWN_SECRET], envoyNode("echo~a")))
      const sds = yield* ads.next(TypeUrls.Secret)
      assert.sameMembers([...sds.names], [ROOT_CA_SECRET, GATEWAY, OWN_SECRET])
      assert.strictEqual(keyOf(byName(sds.resources, OWN_SECRET)), keyOf(byName(sds.resources, GATEWAY)))
      const [client] = yield* eventually(
        Effect.filterOrFail(clientsOf(server), (c) => c.length === 1 && c[0]!.deniedSecrets.length === 1)
      )
      assert.strictEqual(client!.identity, GATEWAY)
      assert.strictEqual(client!.identitySource, "tls")
      assert.deepStrictEqual(client!.deniedSecrets, [ECHO])
    }))
})

/** LDS and CDS as echo's sidecar sees them (wildcard). */
const sidecarView = (address: string) =>
  Effect.gen(function*() {
    const ads = yield* AdsClient.sotw(address)
    yield* ads.send({ node: envoyNode("echo~a"), type_url: TypeUrls.Listener, resource_names: [] })
    const lds = yield* ads.next(TypeUrls.Listener)
    yield* ads.send({ type_url: TypeUrls.Cluster, resource_names: [] })
    const cds = yield* ads.next(TypeUrls.Cluster)
    return { inbound: byName(lds.resources, "inbound|echo")!, outbound: byName(cds.resources, "outbound|gateway")! }
  })

const strictlyValid = (type: string, resource: Resource) => {
  const { ["@type"]: _, ...fields } = resource
  assert.deepStrictEqual(check(type, fields), [])
}

describe("sidecar mTLS", () => {
  it.scopedLive("strict: the inbound listener requires a mesh client certificate; outbound clusters present the caller's own", () =>
    Effect.gen(function*() {
      const { address } = yield* meshServer("strict", "node-id")
      const { inbound, outbound } = yield* sidecarView(address)
      strictlyValid(Types.Listener, inbound)
      strictlyValid(Types.Cluster, outbound)
      assert.strictEqual(inbound["filter_chains"].length, 1)
      assert.isUndefined(inbound["listener_filters"]?.[0])
      const downstream = inbound["filter_chains"][0].transport_socket.typed_config
      assert.strictEqual(downstream["@type"], `type.googleapis.com/${Types.DownstreamTlsContext}`)
      assert.deepStrictEqual(downstream.require_client_certificate, { value: true })
      assert.strictEqual(downstream.common_tls_context.tls_certificate_sds_secret_configs[0].name, ECHO)
      assert.strictEqual(downstream.common_tls_context.validation_context_sds_secret_config.name, ROOT_CA_SECRET)
      assert.deepStrictEqual(downstream.common_tls_context.validation_context_sds_secret_config.sds_config, {
        ads: {},
        resource_api_version: "V3"
      })

      const upstream = outbound["transport_socket"].typed_config
      assert.strictEqual(upstream["@type"], `type.googleapis.com/${Types.UpstreamTlsContext}`)
      assert.strictEqual(upstream.common_tls_context.tls_certificate_sds_secret_configs[0].name, OWN_SECRET)
      // The destination's exact identity, over the bare bundle (ROOTCA's trust-domain matcher would widen it).
      const validation = upstream.common_tls_context.combined_validation_context
      assert.deepStrictEqual(validation.default_validation_context.match_typed_subject_alt_names, [{
        san_type: "URI",
        matcher: { exact: GATEWAY }
      }])
      assert.strictEqual(validation.validation_context_sds_secret_config.name, TRUST_BUNDLE)
    }))

  it.scopedLive("permissive: a TLS inspector picks a TLS chain or a plaintext chain, with the same filters", () =>
    Effect.gen(function*() {
      const { address } = yield* meshServer("permissive", "node-id")
      const { inbound, outbound } = yield* sidecarView(address)
      strictlyValid(Types.Listener, inbound)
      assert.strictEqual(inbound["listener_filters"][0].name, "envoy.filters.listener.tls_inspector")
      const [tls, raw] = inbound["filter_chains"]
      assert.strictEqual(tls.filter_chain_match.transport_protocol, "tls")
      assert.strictEqual(
        tls.transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name,
        ECHO
      )
      assert.strictEqual(raw.filter_chain_match.transport_protocol, "raw_buffer")
      assert.isUndefined(raw.transport_socket)
      assert.deepStrictEqual(raw.filters, tls.filters)
      assert.strictEqual(
        outbound["transport_socket"].typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name,
        OWN_SECRET
      )
    }))

  it.scopedLive("the secrets each sidecar reads over SDS complete a real mTLS handshake between them", () =>
    Effect.gen(function*() {
      const { address } = yield* meshServer("strict", "node-id")
      const secretsFor = (node: string, names: ReadonlyArray<string>) =>
        Effect.gen(function*() {
          const ads = yield* AdsClient.sotw(address)
          yield* ads.send(secretsRequest(names, envoyNode(node)))
          return (yield* ads.next(TypeUrls.Secret)).resources
        })
      // What echo's inbound listener names, and what gateway's outbound cluster names.
      const echo = yield* secretsFor("echo~a", [ECHO, ROOT_CA_SECRET])
      const gateway = yield* secretsFor("gateway~b", [OWN_SECRET, TRUST_BUNDLE])
      const bundle = (rs: ReadonlyArray<Resource>, name: string) =>
        byName(rs, name)!["validation_context"].trusted_ca.inline_string as string

      const seen = yield* Effect.acquireUseRelease(
        Effect.async<{ server: NodeTls.Server; port: number }>((resume) => {
          const server = NodeTls.createServer(
            {
              cert: chainOf(byName(echo, ECHO)),
              key: keyOf(byName(echo, ECHO)),
              ca: bundle(echo, ROOT_CA_SECRET),
              requestCert: true,
              rejectUnauthorized: true
            },
            (socket) =>
              socket.end(Either.match(socketPeer(socket, TD), { onLeft: (e) => e.message, onRight: (p) => p.id.uri }))
          )
          server.listen(
            0,
            "127.0.0.1",
            () => resume(Effect.succeed({ server, port: (server.address() as { port: number }).port }))
          )
        }),
        ({ port }) =>
          Effect.async<{ fromServer: string; serverId: string | undefined }>((resume) => {
            let data = ""
            const socket = NodeTls.connect({
              host: "127.0.0.1",
              port,
              cert: chainOf(byName(gateway, OWN_SECRET)),
              key: keyOf(byName(gateway, OWN_SECRET)),
              ca: bundle(gateway, TRUST_BUNDLE),
              servername: "echo",
              // What gateway's outbound cluster checks: the destination's exact SPIFFE ID.
              checkServerIdentity: (_host, cert) =>
                cert.subjectaltname?.split(", ").includes(`URI:${ECHO}`)
                  ? undefined
                  : new Error(`not ${ECHO}: ${cert.subjectaltname}`)
            })
            let serverId: string | undefined
            socket.on("secureConnect", () => (serverId = socket.getPeerCertificate().subjectaltname))
            socket.setEncoding("utf8")
            socket.on("data", (chunk: string) => (data += chunk))
            socket.on("error", (error) => resume(Effect.succeed({ fromServer: `error: ${error.message}`, serverId })))
            socket.on("close", () => resume(Effect.succeed({ fromServer: data, serverId })))
          }),
        ({ server }) =>
          Effect.async<void>((resume) => void server.close(() => resume(Effect.void))).pipe(
            Effect.timeoutOption("5 seconds")
          )
      )
      assert.strictEqual(seen.fromServer, GATEWAY)
      assert.include(seen.serverId ?? "", ECHO)
    }))
})

describe("the own-secret alias", () => {
  it("follows a renewal of the stream's identity on a Delta stream in step with the snapshot", () => {
    const config = certConfig({}, ["echo", "gateway"], { controller: xdsSettings("mtls") })
    const services = config.services.map((s) => meshService(s.name))
    const secrets = (echoChain: string) =>
      new Map<string, Record<string, unknown>>([
        [ROOT_CA_SECRET, { validation_context: { trusted_ca: { inline_string: "bundle" } } }],
        [ECHO, {
          tls_certificate: { certificate_chain: { inline_string: echoChain }, private_key: { inline_string: "key" } }
        }],
        [GATEWAY, {
          tls_certificate: { certificate_chain: { inline_string: "gateway" }, private_key: { inline_string: "key" } }
        }]
      ])
    const first = buildSnapshot(
      composeMeshState(config, compileUnchecked(config), services, emptyView, secrets("echo-1"))
    )
    const stream = newStream(1, "delta", "test", 0, {
      source: "tls",
      spiffeId: ECHO,
      trustDomain: TD,
      reason: undefined,
      denied: new Set()
    })
    onDeltaRequest(stream, {
      node: envoyNode("echo~a"),
      type_url: TypeUrls.Secret,
      resource_names_subscribe: [OWN_SECRET, GATEWAY],
      resource_names_unsubscribe: [],
      initial_resource_versions: {},
      response_nonce: "",
      error_detail: undefined
    }, 0)
    const push1 = deltaPush(stream, TypeUrls.Secret, first, 0)!
    assert.strictEqual(push1.resources, 1)
    assert.strictEqual(push1.removed, 1)
    onDeltaRequest(stream, {
      node: undefined,
      type_url: TypeUrls.Secret,
      resource_names_subscribe: [],
      resource_names_unsubscribe: [],
      initial_resource_versions: {},
      response_nonce: String(stream.nonce),
      error_detail: undefined
    }, 1)

    const renewed = buildSnapshot(
      composeMeshState(config, compileUnchecked(config), services, emptyView, secrets("echo-2")),
      first
    )
    assert.isTrue(renewed.changes?.names.get(TypeUrls.Secret)?.has(OWN_SECRET))
    const push2 = deltaPush(stream, TypeUrls.Secret, renewed, 2)!
    assert.deepStrictEqual([push2.resources, push2.removed], [1, 0])
    // A renewal changes no cluster: they name the alias, not a certificate.
    assert.isFalse(renewed.changes?.names.get(TypeUrls.Cluster)?.has("outbound|gateway"))
    assert.isDefined(
      decode(Types.Any, renewed.resources.get(TypeUrls.Cluster)!.get("outbound|gateway")!.any)["transport_socket"]
    )
  })
})
