/**
 * The certificate signing service: agents on other hosts send a CSR for a key they made and keep,
 * and prove who they are with a join token (first certificate) or their current mesh certificate
 * over mTLS (renewal). gRPC on a TLS listener presenting the controller's own mesh certificate
 * (client certificates asked for, not required: a joining host has none yet), so a token never
 * crosses a plaintext connection. Protocol: src/signing/SigningProto.ts.
 *
 * Every refusal carries a reason the agent prints; every issuance is logged (identity, serial,
 * token id, peer address; never the token) and counted.
 */
import * as grpc from "@grpc/grpc-js"
import { Clock, Context, Data, Effect, Either, Layer, Option, Ref, Runtime } from "effect"
import type { SigningListen } from "../schemas/Config.js"
import { serviceId } from "../src/certs/Spiffe.js"
import { callPeer } from "../src/certs/Tls.js"
import { checkCsr } from "../src/signing/Csr.js"
import { RateLimiter, type RateSettings } from "../src/signing/RateLimit.js"
import { signingServiceDefinition, type SignRequest, type SignResponse } from "../src/signing/SigningProto.js"
import { checkRecord, describeRefusal, macValid, parseToken } from "../src/tokens/Token.js"
import { Certificates } from "./Certificates.js"
import { fileTokenStore, tokenDirectory, type TokenStore } from "./internal/TokenStore.js"
import { LiveConfig } from "./LiveConfig.js"
import { counter } from "./Metrics.js"

const issued = counter(
  "mesh_controller_signing_issued_total",
  "Certificates issued by the signing service (method: token, renewal).",
  ["method"]
)
const refused = counter("mesh_controller_signing_refused_total", "Signing requests refused, by reason.", ["reason"])

export interface SigningOptions {
  readonly host: string
  readonly port: number
  readonly perPeer: RateSettings
  readonly perToken: RateSettings
  readonly tokens: TokenStore
}

export interface SigningStatus {
  readonly address: string | null
  readonly issued: { readonly token: number; readonly renewal: number }
  readonly refused: number
  readonly lastRefusal: string | null
}

export class SigningListenError
  extends Data.TaggedError("SigningListenError")<{ readonly address: string; readonly cause: unknown }>
{
  override get message(): string {
    return `signing service: cannot listen on ${this.address}: ${
      this.cause instanceof Error ? this.cause.message : String(this.cause)
    }`
  }
}

/** A request turned down: the gRPC code, the sentence the caller sees, and a metric label. */
class Refusal
  extends Data.TaggedError("Refusal")<{ readonly code: grpc.status; readonly reason: string; readonly label: string }>
{}

export class SigningService extends Context.Tag("mesh-controller/SigningService")<
  SigningService,
  {
    /** Where it listens; null when `controller.signing` is absent. */
    readonly address: { readonly host: string; readonly port: number } | null
    readonly status: Effect.Effect<SigningStatus>
  }
>() {
  static readonly layer = (options: SigningOptions): Layer.Layer<SigningService, SigningListenError, Certificates> =>
    Layer.scoped(SigningService, make(options))

  /** From `controller.signing` (tokens in `<certificates.dir>/tokens`); not served when the setting is absent. */
  static readonly layerConfig: Layer.Layer<SigningService, SigningListenError, LiveConfig | Certificates> = Layer
    .unwrapEffect(
      Effect.gen(function*() {
        const { config } = yield* (yield* LiveConfig).get
        const settings: SigningListen | undefined = config.controller.signing
        if (settings === undefined) {
          return Layer.succeed(SigningService, {
            address: null,
            status: Effect.succeed({ address: null, issued: { token: 0, renewal: 0 }, refused: 0, lastRefusal: null })
          })
        }
        return SigningService.layer({ ...settings, tokens: fileTokenStore(tokenDirectory(config.certificates.dir)) })
      })
    )
}

/** `call.getPeer()` is `host:port` (IPv6 hosts unbracketed): the host is what rate limits key on. */
const peerHost = (peer: string): string => peer.replace(/^ipv[46]:/, "").replace(/:\d+$/, "").replace(/^\[|\]$/g, "")

export const make = (options: SigningOptions) =>
  Effect.gen(function*() {
    const certificates = yield* Certificates
    const trustDomain = certificates.trustDomain
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const perPeer = new RateLimiter(options.perPeer)
    const perToken = new RateLimiter(options.perToken)
    const counts = yield* Ref.make({ token: 0, renewal: 0, refused: 0, lastRefusal: null as string | null })

    const refuse = (code: grpc.status, label: string, reason: string) =>
      Effect.fail(new Refusal({ code, label, reason }))

    const limitPeer = (peer: string) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        perPeer.take(peer, now)
          ? Effect.void
          : refuse(grpc.status.RESOURCE_EXHAUSTED, "rate_peer", `too many calls from ${peer}; retry later`))

    /** Who the caller is, and which token (if any) it spends; the token is spent only after the CSR passed. */
    const grantByToken = (request: SignRequest) =>
      Effect.gen(function*() {
        const parts = yield* Either.match(parseToken(request.token), {
          onLeft: (error) => refuse(grpc.status.INVALID_ARGUMENT, "malformed_token", error.message),
          onRight: Effect.succeed
        })
        if (!perToken.take(parts.id, yield* Clock.currentTimeMillis)) {
          return yield* refuse(
            grpc.status.RESOURCE_EXHAUSTED,
            "rate_token",
            `too many attempts with token ${parts.id}; retry later`
          )
        }
        const key = yield* options.tokens.macKey
        if (!macValid(key, parts)) {
          return yield* refuse(grpc.status.PERMISSION_DENIED, "unknown", describeRefusal(parts.id, { _tag: "Unknown" }))
        }
        const record = yield* options.tokens.get(parts.id)
        if (Option.isNone(record)) {
          return yield* refuse(grpc.status.PERMISSION_DENIED, "unknown", describeRefusal(parts.id, { _tag: "Unknown" }))
        }
        const redemption = {
          secret: parts.secret,
          service: request.service === "" ? undefined : request.service,
          instance: request.instance === "" ? undefined : request.instance,
          now: yield* Clock.currentTimeMillis
        }
        const precheck = checkRecord(record.value, redemption)
        if (Either.isLeft(precheck)) {
          return yield* refuse(
            grpc.status.PERMISSION_DENIED,
            precheck.left._tag.toLowerCase(),
            describeRefusal(parts.id, precheck.left)
          )
        }
        const spend = Effect.flatMap(
          options.tokens.redeem(parts.id, (current) => checkRecord(current, redemption)),
          (outcome) =>
            Either.isLeft(outcome)
              ? refuse(
                grpc.status.PERMISSION_DENIED,
                outcome.left._tag.toLowerCase(),
                describeRefusal(parts.id, outcome.left)
              )
              : Effect.void
        )
        return { service: record.value.service, tokenId: parts.id as string | null, method: "token" as const, spend }
      })

    const grantByCertificate = (call: grpc.ServerUnaryCall<SignRequest, SignResponse>) =>
      Effect.gen(function*() {
        const principal = callPeer(call, trustDomain)
        if (Either.isLeft(principal)) {
          return yield* refuse(
            grpc.status.UNAUTHENTICATED,
            "no_credential",
            `no join token, and no valid mesh certificate presented (${principal.left.reason})`
          )
        }
        if (principal.right._tag !== "Service") {
          return yield* refuse(
            grpc.status.PERMISSION_DENIED,
            "not_a_service",
            "only a service's certificate can renew a service's certificate"
          )
        }
        const service = principal.right.name
        if (call.request.service !== "" && call.request.service !== service) {
          return yield* refuse(
            grpc.status.PERMISSION_DENIED,
            "wrongservice",
            `the presented certificate is service "${service}"; it cannot renew as "${call.request.service}"`
          )
        }
        return { service, tokenId: null as string | null, method: "renewal" as const, spend: Effect.void }
      })

    const sign = (call: grpc.ServerUnaryCall<SignRequest, SignResponse>) =>
      Effect.gen(function*() {
        const peer = peerHost(call.getPeer())
        yield* limitPeer(peer)
        const request = call.request
        const grant = request.token !== "" ? yield* grantByToken(request) : yield* grantByCertificate(call)
        const spiffeId = serviceId(trustDomain, grant.service)
        const key = yield* checkCsr(request.csr_pem, { service: grant.service, spiffeId }).pipe(
          Effect.catchTag("CsrRefused", (error) => refuse(grpc.status.INVALID_ARGUMENT, "csr", error.message))
        )
        yield* grant.spend
        const certificate = yield* certificates.signPublicKey(grant.service, key.spki)
        const bundle = yield* certificates.bundle
        issued.inc({ method: grant.method })
        yield* Ref.update(counts, (c) => ({ ...c, [grant.method]: c[grant.method] + 1 }))
        yield* Effect.logInfo("certificate issued to a remote workload").pipe(
          Effect.annotateLogs({
            identity: spiffeId,
            serial: certificate.serial,
            method: grant.method,
            token: grant.tokenId ?? "-",
            instance: request.instance === "" ? "-" : request.instance,
            peer
          })
        )
        return {
          spiffe_id: spiffeId,
          certificate_chain_pem: certificate.chainPem,
          trust_bundle_pem: bundle.pem,
          serial: certificate.serial,
          not_before: certificate.notBefore.toISOString(),
          not_after: certificate.notAfter.toISOString()
        } satisfies SignResponse
      })

    /** Runs a handler's effect and answers the call; refusals become gRPC statuses with their reason. */
    const answer = <Req, Res>(
      handler: (
        call: grpc.ServerUnaryCall<Req, Res>
      ) => Effect.Effect<Res, Refusal | { readonly _tag: string; readonly message: string }>
    ) =>
    (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>) => {
      runFork(
        handler(call).pipe(
          Effect.matchEffect({
            onSuccess: (response) => Effect.sync(() => callback(null, response)),
            onFailure: (error) => {
              const refusal = error instanceof Refusal
                ? error
                : new Refusal({
                  code: grpc.status.INTERNAL,
                  label: "internal",
                  reason: `the controller could not sign: ${error.message}`
                })
              return Effect.gen(function*() {
                refused.inc({ reason: refusal.label })
                yield* Ref.update(counts, (c) => ({ ...c, refused: c.refused + 1, lastRefusal: refusal.reason }))
                yield* Effect.logWarning("signing request refused").pipe(
                  Effect.annotateLogs({ reason: refusal.reason, peer: peerHost(call.getPeer()) })
                )
                callback({ code: refusal.code, details: refusal.reason } as grpc.ServiceError)
              })
            }
          }),
          Effect.annotateLogs({ module: "signing" })
        )
      )
    }

    const server = new grpc.Server()
    server.addService(signingServiceDefinition(), {
      GetTrustBundle: answer((call: grpc.ServerUnaryCall<unknown, { pem: string }>) =>
        Effect.zipRight(
          limitPeer(peerHost(call.getPeer())),
          Effect.map(certificates.bundle, (bundle) => ({ pem: bundle.pem }))
        )
      ),
      Sign: answer(sign)
    })
    const credentials = grpc.experimental.createCertificateProviderServerCredentials(
      certificates.controllerProvider,
      certificates.controllerProvider,
      false
    )
    const target = `${options.host.includes(":") ? `[${options.host}]` : options.host}:${options.port}`
    const port = yield* Effect.acquireRelease(
      Effect.async<number, SigningListenError>((resume) => {
        server.bindAsync(target, credentials, (error, port) =>
          resume(
            error === null
              ? Effect.succeed(port)
              : Effect.fail(new SigningListenError({ address: target, cause: error }))
          ))
      }),
      () =>
        Effect.async<void>((resume) => server.tryShutdown(() => resume(Effect.void))).pipe(
          Effect.timeoutOption("2 seconds"),
          Effect.zipRight(Effect.sync(() => server.forceShutdown()))
        )
    )
    const address = { host: options.host, port }
    yield* Effect.logInfo(`signing: listening on ${options.host}:${port} (TLS)`).pipe(
      Effect.annotateLogs({ module: "signing" })
    )
    return SigningService.of({
      address,
      status: Effect.map(Ref.get(counts), (c) => ({
        address: `${options.host}:${port}`,
        issued: { token: c.token, renewal: c.renewal },
        refused: c.refused,
        lastRefusal: c.lastRefusal
      }))
    })
  })
