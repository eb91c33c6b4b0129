/**
 * `mesh-controller agent`: a host's mesh identity, made on that host. The agent makes its key
 * (never sent anywhere), trades a join token for its first certificate at the controller's
 * signing service (layers/SigningService.ts), then renews at half life over mTLS with the
 * certificate it holds. It keeps `cert.pem`, `key.pem` and `ca.pem` in `--dir`, swapped as one
 * (layers/internal/AtomicWriter.ts), writes a gRPC xDS bootstrap for proxyless apps beside them,
 * and serves /healthz and /metrics on a small loopback admin port.
 *
 * First contact, as `kubeadm join`: the public trust bundle is fetched without verifying the
 * server, and accepted only if it holds the root whose SHA-256 the token pins; the token itself is
 * then sent over TLS verified against that root, so a man in the middle learns nothing.
 */
import {
  Clock,
  Context,
  Data,
  Duration,
  Effect,
  Either,
  Layer,
  Option,
  Redacted,
  Ref,
  Runtime,
  Schedule,
  Schema
} from "effect"
import type { Scope } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs/promises"
import { createServer } from "node:http"
import * as NodePath from "node:path"
import { grpcBootstrap } from "../src/agent/GrpcBootstrap.js"
import { generateKeyPair, splitPem, WORKLOAD_BACKDATE_MILLIS } from "../src/certs/Authority.js"
import { filesIn, type IdentityFiles } from "../src/certs/IdentityFiles.js"
import { parseSpiffeId, uriSans } from "../src/certs/Spiffe.js"
import { describeErrno, errnoCode } from "../src/Errno.js"
import { makeCsr } from "../src/signing/Csr.js"
import { parseToken, rootFingerprintHex, type TokenParts } from "../src/tokens/Token.js"
import { writeAtomic } from "./internal/AtomicFile.js"
import { writeDirectoryAtomic } from "./internal/AtomicWriter.js"
import { type Credentials, fetchBundle, requestCertificate, SigningCallFailed } from "./internal/SigningClient.js"
import { collectProcessMetrics, counter, gauge, registry } from "./Metrics.js"

const expiry = gauge(
  "mesh_agent_certificate_expiry_seconds",
  "Seconds until the agent's certificate expires (negative: expired)."
)
const renewals = counter("mesh_agent_certificates_total", "Certificates the agent obtained (reason: join, renewal).", [
  "reason"
])
const failures = counter(
  "mesh_agent_failures_total",
  "Failed calls to the signing service (what: join, renewal, bundle).",
  ["what"]
)

export interface AgentOptions {
  /** host:port of the controller's signing service. */
  readonly controller: string
  readonly tokenFile?: string | undefined
  readonly dir: string
  /** Expected service: the token or the certificate held must name it. */
  readonly service?: string | undefined
  readonly instance: string
  readonly admin: { readonly host: string; readonly port: number }
  /** host:port of the controller's xDS server, for the gRPC bootstrap. */
  readonly xdsServer: string
  readonly xdsChannel: "insecure" | "tls"
  readonly bootstrapFile: string
  /** Fraction of the lifetime after which to renew. */
  readonly renewAt: number
  readonly retryInitial: Duration.Duration
  readonly retryMax: Duration.Duration
  /** How often the trust bundle is re-read from the controller (root rotation). */
  readonly bundleInterval: Duration.Duration
}

/** Input the agent cannot work with, or a controller it must not trust: one line, exit 1. */
export class AgentRefused extends Schema.TaggedError<AgentRefused>()("AgentRefused", { reason: Schema.String }) {
  override get message(): string {
    return this.reason
  }
}

class FilesFailed extends Data.TaggedError("FilesFailed")<{ readonly reason: string }> {
  override get message(): string {
    return this.reason
  }
}

/** The identity the agent holds. */
interface Held {
  readonly chainPem: string
  readonly keyPem: Redacted.Redacted<string>
  readonly bundlePem: string
  readonly spiffeId: string
  readonly service: string
  readonly serial: string
  readonly notBefore: number
  readonly notAfter: number
}

export interface AgentStatus {
  readonly state: "enrolling" | "ok" | "expired"
  readonly spiffeId: string | null
  readonly serial: string | null
  readonly notAfter: string | null
  readonly expiresInSeconds: number | null
  readonly renewAt: string | null
  readonly renewals: number
  readonly failures: number
  readonly lastError: string | null
}

export class Agent extends Context.Tag("mesh-controller/Agent")<
  Agent,
  {
    readonly status: Effect.Effect<AgentStatus>
    readonly files: IdentityFiles
    readonly admin: { readonly host: string; readonly port: number }
    /**
     * Adds a section to /healthz's JSON (the agent's Envoy: `envoy`) for as long as the scope
     * lasts. It informs; the status code stays the identity's.
     */
    readonly report: (name: string, status: Effect.Effect<unknown>) => Effect.Effect<void, never, Scope.Scope>
  }
>() {
  static readonly layer = (options: AgentOptions): Layer.Layer<Agent, AgentRefused> =>
    Layer.scoped(Agent, make(options))
}

const parseHeld = (chainPem: string, keyPem: string, bundlePem: string): Either.Either<Held, string> => {
  try {
    const leaf = new NodeCrypto.X509Certificate(splitPem(chainPem)[0] ?? "")
    const key = NodeCrypto.createPrivateKey(keyPem)
    const spki = (k: NodeCrypto.KeyObject) => k.export({ format: "der", type: "spki" })
    if (!spki(NodeCrypto.createPublicKey(key)).equals(spki(leaf.publicKey))) {
      return Either.left("key.pem does not match cert.pem")
    }
    const uri = uriSans(leaf.subjectAltName)[0] ?? ""
    const id = parseSpiffeId(uri)
    if (Either.isLeft(id)) return Either.left(id.left.message)
    const [kind, service] = id.right.segments
    if (kind !== "service" || service === undefined) return Either.left(`${uri} is not a service identity`)
    if (splitPem(bundlePem).length === 0) return Either.left("ca.pem holds no certificate")
    return Either.right({
      chainPem,
      keyPem: Redacted.make(keyPem),
      bundlePem,
      spiffeId: uri,
      service,
      serial: leaf.serialNumber.toLowerCase(),
      notBefore: Date.parse(leaf.validFrom),
      notAfter: Date.parse(leaf.validTo)
    })
  } catch (cause) {
    return Either.left(`unreadable: ${cause instanceof Error ? cause.message : String(cause)}`)
  }
}

/** When to renew: `renewAt` of the lifetime, counted from issuance (notBefore is backdated for clock skew). */
export const renewalTime = (
  held: { readonly notBefore: number; readonly notAfter: number },
  renewAt: number
): number => {
  const start = Math.min(held.notBefore + WORKLOAD_BACKDATE_MILLIS, held.notAfter)
  return start + (held.notAfter - start) * renewAt
}

const readText = (path: string) =>
  Effect.tryPromise({ try: () => NodeFs.readFile(path, "utf8"), catch: (cause) => cause }).pipe(
    Effect.map(Option.some),
    Effect.catchAll((cause) =>
      Effect.succeed(errnoCode(cause) === "ENOENT" ? Option.none<string>() : Option.none<string>())
    )
  )

export const make = (options: AgentOptions) =>
  Effect.gen(function*() {
    const files = filesIn(options.dir)
    const status = yield* Ref.make({
      held: null as Held | null,
      renewals: 0,
      failures: 0,
      lastError: null as string | null
    })

    const statusNow = Effect.gen(function*() {
      const s = yield* Ref.get(status)
      const now = yield* Clock.currentTimeMillis
      const held = s.held
      return {
        state: held === null ? "enrolling" : held.notAfter > now ? "ok" : "expired",
        spiffeId: held?.spiffeId ?? null,
        serial: held?.serial ?? null,
        notAfter: held === null ? null : new Date(held.notAfter).toISOString(),
        expiresInSeconds: held === null ? null : Math.round((held.notAfter - now) / 1000),
        renewAt: held === null ? null : new Date(renewalTime(held, options.renewAt)).toISOString(),
        renewals: s.renewals,
        failures: s.failures,
        lastError: s.lastError
      } satisfies AgentStatus
    })

    const sections = yield* Ref.make<ReadonlyMap<string, Effect.Effect<unknown>>>(new Map())
    const report = (name: string, section: Effect.Effect<unknown>) =>
      Effect.acquireRelease(
        Ref.update(sections, (m) => new Map([...m, [name, section]])),
        () =>
          Ref.update(sections, (m) => {
            const next = new Map(m)
            next.delete(name)
            return next
          })
      )
    const healthNow = Effect.gen(function*() {
      const s = yield* statusNow
      const extra: Record<string, unknown> = {}
      for (const [name, section] of yield* Ref.get(sections)) extra[name] = yield* section
      return { status: s, body: { ...s, ...extra } }
    })

    const admin = yield* serveAdmin(options.admin, statusNow, healthNow)

    const fail = (what: "join" | "renewal" | "bundle", error: { readonly message: string }) =>
      Effect.gen(function*() {
        failures.inc({ what })
        // /healthz counts what threatens the identity (join, renewal); a missed bundle poll is logged and counted only.
        if (what !== "bundle") {
          yield* Ref.update(status, (s) => ({ ...s, failures: s.failures + 1, lastError: `${what}: ${error.message}` }))
        }
        yield* Effect.logWarning(`${what} failed; retrying`).pipe(Effect.annotateLogs({ error: error.message }))
      })

    /** Exponential from `retryInitial`, jittered, capped at `retryMax`, for calls that may succeed later. */
    const retrying = <A, E extends { readonly message: string }>(
      what: "join" | "renewal" | "bundle",
      effect: Effect.Effect<A, E>,
      forever: boolean
    ) =>
      effect.pipe(
        Effect.tapError((error) => fail(what, error)),
        Effect.retry(
          Schedule.exponential(options.retryInitial).pipe(
            Schedule.union(Schedule.spaced(options.retryMax)),
            Schedule.jittered,
            Schedule.whileInput((error: E) => forever || (error instanceof SigningCallFailed && error.transient))
          )
        )
      )

    const write = (held: Held) =>
      Effect.gen(function*() {
        yield* writeDirectoryAtomic(files.directory, [
          { name: "cert.pem", content: held.chainPem, mode: 0o644 },
          { name: "key.pem", content: Redacted.value(held.keyPem), mode: 0o600 },
          { name: "ca.pem", content: held.bundlePem, mode: 0o644 }
        ])
        const bootstrap = grpcBootstrap({
          xdsServer: options.xdsServer,
          xdsChannel: options.xdsChannel,
          service: held.service,
          instance: options.instance,
          files
        })
        yield* writeAtomic(options.bootstrapFile, JSON.stringify(bootstrap, null, 2) + "\n", {
          mode: 0o644,
          replace: true
        })
        yield* Ref.update(status, (s) => ({ ...s, held }))
        expiry.set(Math.round((held.notAfter - (yield* Clock.currentTimeMillis)) / 1000))
      }).pipe(
        Effect.mapError((error) => new FilesFailed({ reason: `cannot write ${files.directory}: ${error.message}` }))
      )

    /** A new key, a CSR for it, and the controller's answer, checked before anything is written. */
    const obtain = (credentials: Credentials, token: string, service: string | undefined) =>
      Effect.gen(function*() {
        const keys = yield* generateKeyPair("ecdsa-p256")
        const keyPem = NodeCrypto.KeyObject.from(keys.privateKey).export({ format: "pem", type: "pkcs8" }).toString()
        const csr = yield* makeCsr(keys, service === undefined ? {} : { service })
        const answer = yield* requestCertificate(options.controller, credentials, {
          csr_pem: csr,
          token,
          service: service ?? "",
          instance: options.instance
        })
        return yield* Either.match(parseHeld(answer.certificate_chain_pem, keyPem, answer.trust_bundle_pem), {
          onLeft: (reason) =>
            Effect.fail(new AgentRefused({ reason: `the controller's answer is unusable: ${reason}` })),
          onRight: Effect.succeed
        })
      })

    const join = (token: TokenParts, tokenText: string) =>
      Effect.gen(function*() {
        const bundle = yield* retrying("join", fetchBundle(options.controller, { _tag: "Unverified" }), false)
        const pinned = splitPem(bundle).find((pem) => rootFingerprintHex(pem) === token.rootFingerprint)
        if (pinned === undefined) {
          return yield* new AgentRefused({
            reason:
              `the controller at ${options.controller} does not hold the root the token pins (sha256 ${token.rootFingerprint}); ` +
              "refusing to send the token (a man in the middle, or a token from another mesh)"
          })
        }
        const held = yield* retrying(
          "join",
          obtain({ _tag: "Verified", roots: pinned }, tokenText, options.service),
          false
        )
        yield* Effect.logInfo("joined the mesh").pipe(
          Effect.annotateLogs({ identity: held.spiffeId, serial: held.serial, token: token.id })
        )
        return held
      }).pipe(
        Effect.catchTag(
          "SigningCallFailed",
          (error) =>
            Effect.fail(new AgentRefused({ reason: `the controller refused the join token: ${error.details}` }))
        )
      )

    const existing = Effect.gen(function*() {
      const [chain, key, bundle] = yield* Effect.all([
        readText(files.certificateChain),
        readText(files.privateKey),
        readText(files.trustedCa)
      ])
      if (Option.isNone(chain) || Option.isNone(key) || Option.isNone(bundle)) return Option.none<Held>()
      const held = parseHeld(chain.value, key.value, bundle.value)
      if (Either.isLeft(held)) {
        yield* Effect.logWarning("ignoring the files in the directory").pipe(
          Effect.annotateLogs({ dir: files.directory, reason: held.left })
        )
        return Option.none<Held>()
      }
      if (held.right.notAfter <= (yield* Clock.currentTimeMillis)) {
        yield* Effect.logWarning("the certificate in the directory has expired; a join token is needed").pipe(
          Effect.annotateLogs({ notAfter: new Date(held.right.notAfter).toISOString() })
        )
        return Option.none<Held>()
      }
      return Option.some(held.right)
    })

    const readToken = Effect.gen(function*() {
      if (options.tokenFile === undefined) {
        return yield* new AgentRefused({
          reason: `no valid certificate in ${files.directory} and no --token-file to join with`
        })
      }
      const text = yield* Effect.tryPromise({
        try: () => NodeFs.readFile(options.tokenFile!, "utf8"),
        catch: (cause) =>
          new AgentRefused({ reason: `--token-file ${options.tokenFile}: cannot read: ${describeErrno(cause)}` })
      })
      const parts = yield* Either.match(parseToken(text), {
        onLeft: (error) =>
          Effect.fail(new AgentRefused({ reason: `--token-file ${options.tokenFile}: ${error.message}` })),
        onRight: Effect.succeed
      })
      return { parts, text: text.trim() }
    })

    // Start: the files held (a restart), else join with the token.
    const found = yield* existing
    if (Option.isSome(found) && options.service !== undefined && found.value.service !== options.service) {
      return yield* new AgentRefused({
        reason:
          `${files.certificateChain} is service "${found.value.service}", not --service ${options.service}; use another --dir`
      })
    }
    const initial = Option.isSome(found)
      ? found.value
      : yield* Effect.flatMap(readToken, ({ parts, text }) => join(parts, text)).pipe(
        Effect.catchTags({
          SigningFailed: (e) => Effect.fail(new AgentRefused({ reason: e.message })),
          CsrRefused: (e) => Effect.fail(new AgentRefused({ reason: e.message }))
        })
      )
    yield* write(initial).pipe(
      Effect.catchTag("FilesFailed", (e) => Effect.fail(new AgentRefused({ reason: e.reason })))
    )
    if (Option.isNone(found)) renewals.inc({ reason: "join" })
    yield* Effect.logInfo(Option.isSome(found) ? "reusing the certificate held" : "certificate written").pipe(
      Effect.annotateLogs({
        identity: initial.spiffeId,
        serial: initial.serial,
        notAfter: new Date(initial.notAfter).toISOString()
      })
    )

    const held = Effect.map(Ref.get(status), (s) => s.held!)
    const mtls = (h: Held): Credentials => ({
      _tag: "Verified",
      roots: h.bundlePem,
      identity: { chainPem: h.chainPem, keyPem: h.keyPem }
    })

    // Renewal: sleep to half life, then renew over mTLS until it works; the files stay meanwhile.
    const renewOnce = Effect.gen(function*() {
      const current = yield* held
      const next = yield* obtain(mtls(current), "", current.service)
      yield* write(next)
      renewals.inc({ reason: "renewal" })
      yield* Ref.update(status, (s) => ({ ...s, renewals: s.renewals + 1, lastError: null }))
      yield* Effect.logInfo("certificate renewed").pipe(
        Effect.annotateLogs({
          identity: next.spiffeId,
          serial: next.serial,
          notAfter: new Date(next.notAfter).toISOString()
        })
      )
    })
    yield* Effect.gen(function*() {
      const current = yield* held
      const wait = renewalTime(current, options.renewAt) - (yield* Clock.currentTimeMillis)
      if (wait > 0) yield* Effect.sleep(Duration.millis(wait))
      yield* retrying("renewal", renewOnce, true)
    }).pipe(Effect.forever, Effect.annotateLogs({ module: "agent" }), Effect.forkScoped)

    // Root rotation: a new root appears in the controller's bundle before it signs anything; write it at once.
    yield* Effect.gen(function*() {
      const current = yield* held
      const bundle = yield* fetchBundle(options.controller, mtls(current))
      if (bundle !== current.bundlePem && splitPem(bundle).length > 0) {
        yield* write({ ...current, bundlePem: bundle })
        yield* Effect.logInfo("trust bundle changed; ca.pem rewritten").pipe(
          Effect.annotateLogs({ roots: splitPem(bundle).length })
        )
      }
    }).pipe(
      Effect.catchAll((error) => fail("bundle", error)),
      Effect.repeat(Schedule.spaced(options.bundleInterval)),
      Effect.delay(options.bundleInterval),
      Effect.annotateLogs({ module: "agent" }),
      Effect.forkScoped
    )

    return Agent.of({ status: statusNow, files, admin, report })
  }).pipe(Effect.annotateLogs({ module: "agent" }))

/** The agent's admin: /healthz (200 with a valid certificate, else 503; JSON with time to expiry) and /metrics. */
const serveAdmin = (
  address: { readonly host: string; readonly port: number },
  status: Effect.Effect<AgentStatus>,
  health: Effect.Effect<{ readonly status: AgentStatus; readonly body: Record<string, unknown> }>
) =>
  Effect.gen(function*() {
    collectProcessMetrics()
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const server = createServer((request, response) => {
      const path = (request.url ?? "/").split("?")[0]
      if (path === "/healthz") {
        runFork(Effect.flatMap(health, (h) =>
          Effect.sync(() => {
            response.writeHead(h.status.state === "ok" ? 200 : 503, { "content-type": "application/json" })
            response.end(JSON.stringify(h.body) + "\n")
          })))
      } else if (path === "/metrics") {
        runFork(Effect.gen(function*() {
          const s = yield* status
          if (s.expiresInSeconds !== null) expiry.set(s.expiresInSeconds)
          const body = yield* Effect.promise(() => registry.metrics())
          response.writeHead(200, { "content-type": registry.contentType })
          response.end(body)
        }))
      } else {
        response.writeHead(404).end("not found\n")
      }
    })
    const bound = yield* Effect.acquireRelease(
      Effect.async<{ host: string; port: number }, AgentRefused>((resume) => {
        server.once(
          "error",
          (cause) =>
            resume(
              Effect.fail(
                new AgentRefused({
                  reason: `--admin ${address.host}:${address.port}: cannot listen: ${describeErrno(cause)}`
                })
              )
            )
        )
        server.listen(address.port, address.host, () => {
          const a = server.address()
          resume(
            Effect.succeed({ host: address.host, port: typeof a === "object" && a !== null ? a.port : address.port })
          )
        })
      }),
      () =>
        Effect.async<void>((resume) => {
          server.close(() => resume(Effect.void))
          server.closeAllConnections()
        }).pipe(Effect.timeoutOption("2 seconds"))
    )
    yield* Effect.logInfo(`agent admin: listening on http://${bound.host}:${bound.port}`)
    return bound
  })

/** Where the gRPC xDS bootstrap goes by default: beside the identity files. */
export const defaultBootstrapFile = (dir: string): string => NodePath.join(NodePath.resolve(dir), "grpc-bootstrap.json")
