/**
 * The mesh certificate authority: the root(s) on disk (or operator-provided files, or in memory),
 * a workload identity per known service plus one for the controller, and their rotation.
 *
 * Disk layout under `certificates.dir` (0700; keys 0600; written atomically and never overwritten
 * except by an explicit `ca rotate --activate`):
 *
 *   ca.pem, ca-key.pem                         the active root: signs every workload certificate
 *   next/ca.pem, next/ca-key.pem               a root introduced by `ca rotate`: trusted, not yet signing
 *   previous/<retiredAt>-<fp>.pem (+ -key.pem)  roots replaced by `ca rotate --activate`: trusted until
 *                                              every certificate they signed has expired
 *   workloads/<service>/{cert,key,ca}.pem      the local sidecar's identity (sidecar.envoy.service),
 *                                              rewritten on every renewal; also what `certs issue` writes
 *
 * Root rotation: (1) `ca rotate` creates next/; within one check interval the running controller
 * adds it to the trust bundle and pushes the bundle (SDS `ROOTCA`) to every workload. (2) Once
 * every workload has the new bundle (wait at least a few check intervals), `ca rotate --activate`
 * makes it the signer; the controller notices on its next check and re-issues every identity at
 * once. (3) The old root stays in the bundle for one workload TTL after activation, then drops out
 * by itself; its files stay in previous/ for the record.
 */
import type * as grpc from "@grpc/grpc-js"
import {
  Clock,
  Context,
  Duration,
  Effect,
  Either,
  Layer,
  Option,
  Ref,
  Schedule,
  type Scope,
  Stream,
  SubscriptionRef
} from "effect"
import type { X509Certificate } from "node:crypto"
import type { PeerCertificate } from "node:tls"
import type { Certificates as CertificateSettings, MeshConfig } from "../schemas/Config.js"
import {
  type Authority,
  fingerprint,
  type IssuedCertificate,
  issueWorkload,
  type SignedCertificate,
  signWorkload
} from "../src/certs/Authority.js"
import {
  type CaInvalid,
  CaInvalid as CaInvalidError,
  type CertificateStoreError,
  SigningFailed
} from "../src/certs/Errors.js"
import { identityFiles } from "../src/certs/IdentityFiles.js"
import { type RenewalPolicy, renewalReason, renewalTime } from "../src/certs/Rotation.js"
import { secretMap } from "../src/certs/Sds.js"
import {
  certificateSpiffeId,
  controllerId,
  type MeshPrincipal,
  serviceId,
  type SpiffeIdInvalid
} from "../src/certs/Spiffe.js"
import { IdentityProvider, mtlsServerCredentials } from "../src/certs/Tls.js"
import { ConsulClient } from "./ConsulClient.js"
import { Discovery } from "./Discovery.js"
import {
  bundleOf,
  caLabel,
  type CaMaterial,
  type CaSource,
  caSourceOf,
  loadCa,
  type StoreOptions,
  type StoreSettings,
  type TrustBundle,
  writeIdentityFiles
} from "./internal/CaStore.js"
import { expirySeconds, failures, renewals } from "./internal/CertificatesMetrics.js"
import { type ConsulCaStatus, type ConsulCaStore, makeConsulCaStore } from "./internal/ConsulCaStore.js"
import { LiveConfig } from "./LiveConfig.js"

export { CaInvalid, CaOperationRefused, CertificateStoreError, SigningFailed } from "../src/certs/Errors.js"
export type { CaSource, RootState, StoreSettings, TrustBundle } from "./internal/CaStore.js"

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

/** A live workload (or controller) certificate with its key and when it will be renewed. */
export interface WorkloadIdentity extends IssuedCertificate {
  /** The service name, or `CONTROLLER` for the controller's own identity. */
  readonly name: string
  readonly renewAt: Date
}

/** The name the controller's own identity is kept under (not a valid service name, so no clash). */
export const CONTROLLER = "<controller>"

/** Everything the snapshot (SDS) and the TLS servers need, as one value that changes as a whole. */
export interface CertificateState {
  readonly trustDomain: string
  readonly bundle: TrustBundle
  readonly controller: WorkloadIdentity
  /** By service name. */
  readonly services: ReadonlyMap<string, WorkloadIdentity>
}

export interface IdentityStatus {
  readonly spiffeId: string
  readonly serial: string
  readonly notBefore: string
  readonly notAfter: string
  readonly renewAt: string
}

export interface CertificatesStatus {
  readonly trustDomain: string
  /** `dir:<path>`, `files` (operator-provided CA) or `ephemeral`. */
  readonly ca: string
  readonly roots: TrustBundle["roots"]
  readonly identities: ReadonlyArray<IdentityStatus>
  readonly renewals: number
  readonly failures: number
  readonly lastError: string | null
  /** Why CA files found in the directory were not adopted (a root changes only through `ca rotate`), while they are there. */
  readonly caRefused: string | null
  /** `file` or `consul` (`certificates.store`). */
  readonly store: "file" | "consul"
  /** With `store: consul`: the prefix, who holds the creation lock, and Consul trouble. */
  readonly consul: ConsulCaStatus | null
}

// ---------------------------------------------------------------------------------------------
// The tag
// ---------------------------------------------------------------------------------------------

export class Certificates extends Context.Tag("mesh-controller/Certificates")<
  Certificates,
  {
    readonly trustDomain: string
    /** The current state; renews first if the wall clock says something is due (a host back from sleep). */
    readonly state: Effect.Effect<CertificateState>
    /** The current state first, then every renewal, new or removed service, and bundle change. */
    readonly changes: Stream.Stream<CertificateState>
    readonly bundle: Effect.Effect<TrustBundle>
    /** A service's current identity (fresh, as `state`). */
    readonly identity: (service: string) => Effect.Effect<Option.Option<WorkloadIdentity>>
    /** A one-off certificate for a service, not tracked or renewed (for `certs issue`). */
    readonly issue: (service: string) => Effect.Effect<WorkloadIdentity, SigningFailed>
    /**
     * Certifies a public key made elsewhere (DER SubjectPublicKeyInfo, e.g. from an agent's CSR) as
     * `service`, with the same SANs, usages and lifetime as `issue`; not tracked or renewed. The
     * caller decides who may ask for which service.
     */
    readonly signPublicKey: (service: string, publicKey: Uint8Array) => Effect.Effect<SignedIdentity, SigningFailed>
    /** SDS resources for the current state, in `MeshState.secrets` form (names: src/certs/Sds.ts). */
    readonly secrets: Effect.Effect<ReadonlyMap<string, Readonly<Record<string, unknown>>>>
    /** The controller's identity as a grpc-js certificate provider: follows every renewal. */
    readonly controllerProvider: IdentityProvider
    /** For `controller.xds.tls: mtls`: the controller's identity, a client certificate from the mesh CA required. */
    readonly xdsServerCredentials: grpc.ServerCredentials
    /** The mesh principal a peer certificate names (chain already verified by the TLS handshake). */
    readonly verifyPeer: (
      certificate: PeerCertificate | X509Certificate
    ) => Either.Either<MeshPrincipal, SpiffeIdInvalid>
    readonly status: Effect.Effect<CertificatesStatus>
  }
>() {
  /** The CA from `certificates.dir` (created on first start) or `certificates.ca`; identities for Discovery's services. */
  static readonly layer: Layer.Layer<
    Certificates,
    CaInvalid | CertificateStoreError | SigningFailed,
    LiveConfig | Discovery | ConsulClient
  > = Layer.scoped(
    Certificates,
    Effect.gen(function*() {
      const { config } = yield* (yield* LiveConfig).get
      const source = caSourceOf(config.certificates)
      const consul = source._tag === "Consul" ? Option.some(yield* openConsulStore(config)) : Option.none()
      return yield* fromConfig(() => source, consul)
    })
  )

  /** A root made in memory at start and never written: tests, and programs that want a throwaway mesh. */
  static readonly layerEphemeral: Layer.Layer<Certificates, SigningFailed, LiveConfig | Discovery> = Layer.scoped(
    Certificates,
    fromConfig(() => ({ _tag: "Ephemeral" })).pipe(Effect.catchTag("CaInvalid", "CertificateStoreError", Effect.die))
  )
}

/** `make` with the settings of the config in force at start (certificate settings apply at start). */
// A function declaration: the static layers above use it while the class is being defined.
function fromConfig(source: (config: MeshConfig) => CaSource, consul: Option.Option<ConsulCaStore> = Option.none()) {
  return Effect.gen(function*() {
    const { config } = yield* (yield* LiveConfig).get
    const sidecar = config.sidecar.envoy
    return yield* make({
      settings: config.certificates,
      meshName: config.mesh.name,
      trustDomain: config.mesh.trustDomain,
      ca: source(config),
      writeFilesFor: source(config)._tag !== "Ephemeral" && sidecar.enabled && sidecar.service !== undefined
        ? [sidecar.service]
        : [],
      ...(Option.isSome(consul) ? { consul: consul.value } : {})
    })
  })
}

/** `store: consul` needs the shared Consul client and the KEK; each missing piece is named. */
function openConsulStore(config: MeshConfig) {
  return Effect.gen(function*() {
    const client = yield* ConsulClient
    const settings = config.certificates.consul
    if (Option.isNone(client.connection)) {
      return yield* new CaInvalidError({
        file: "certificates.store",
        reason: "`consul` needs a `discovery.consul` section"
      })
    }
    if (settings === undefined) {
      return yield* new CaInvalidError({
        file: "certificates.consul",
        reason: "`store: consul` needs `certificates.consul.keyEncryptionKeyFile`"
      })
    }
    return yield* makeConsulCaStore({
      client: client.connection.value,
      settings,
      store: { settings: config.certificates, meshName: config.mesh.name, trustDomain: config.mesh.trustDomain }
    })
  })
}

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

export interface MakeOptions {
  readonly settings: CertificateSettings
  readonly meshName: string
  readonly trustDomain: string
  readonly ca: CaSource
  /**
   * Services whose identity is also kept as files under `<dir>/workloads/<service>/`, rewritten on
   * every renewal and bundle change (the local Envoy sidecar's bootstrap reads them).
   */
  readonly writeFilesFor?: ReadonlyArray<string>
  /** With `ca: Consul`: the store the CA is read from, created in, and watched. */
  readonly consul?: ConsulCaStore
}

const LOG = { module: "certificates" } as const

/** Identities issued at once: enough to keep the thread pool's key generation ahead of the signing. */
const ISSUE_CONCURRENCY = 8

/**
 * Why a re-read CA directory may not replace the CA in force, or undefined when it may. The active
 * root may change only to the root that was waiting in next/ (what `ca rotate --activate` does):
 * every workload already trusts that one. Any other new active root (a pair copied in) would
 * drop the old root from the bundle at once and re-issue every identity under a root no workload
 * trusts yet.
 */
const foreignRoot = (inForce: CaMaterial, found: CaMaterial): string | undefined => {
  if (inForce.external || found.authority.fingerprint === inForce.authority.fingerprint) return undefined
  if (Option.isSome(inForce.next) && fingerprint(inForce.next.value) === found.authority.fingerprint) return undefined
  return `the active root in the CA directory changed to ${found.authority.fingerprint} without \`ca rotate\` ` +
    `(it was not the waiting next root); keeping ${inForce.authority.fingerprint}. ` +
    `Restore the CA files, or introduce the new root with \`ca rotate\` and activate it once workloads trust it`
}

/** Issues the identity of a service (or of the controller, `CONTROLLER`) at `now`. */
export const issueIdentity = (
  authority: Authority,
  options: StoreSettings,
  name: string,
  now: number
): Effect.Effect<WorkloadIdentity, SigningFailed> =>
  Effect.map(
    issueWorkload(authority, { ...identityRequest(options, name, now), keyAlgorithm: options.settings.keyAlgorithm }),
    (issued): WorkloadIdentity => ({
      ...issued,
      name,
      renewAt: renewalTime(issued, { renewAt: options.settings.renewAt, jitter: options.settings.renewJitter })
    })
  )

/** A certificate for a key the CA did not make (`signPublicKey`). */
export interface SignedIdentity extends SignedCertificate {
  readonly renewAt: Date
}

/** The request `issueIdentity` and `signPublicKey` share: who the certificate names, and for how long. */
const identityRequest = (options: StoreSettings, name: string, now: number) => ({
  spiffeId: name === CONTROLLER ? controllerId(options.trustDomain) : serviceId(options.trustDomain, name),
  commonName: name === CONTROLLER ? "mesh-controller" : name,
  organization: options.meshName,
  // The controller's certificate also serves the admin server over HTTPS (controller.admin.tls), where
  // clients such as curl check a host name: "localhost" is the one name every host has for it.
  dnsNames: name === CONTROLLER ? ["localhost"] : [name],
  now: new Date(now),
  ttlMillis: Duration.toMillis(options.settings.workloadTtl)
})

/** Signs an outside public key as service `name` at `now` (the agent's CSR signing). */
export const signIdentity = (
  authority: Authority,
  options: StoreSettings,
  name: string,
  publicKey: Uint8Array,
  now: number
): Effect.Effect<SignedIdentity, SigningFailed> =>
  Effect.map(
    signWorkload(authority, { ...identityRequest(options, name, now), publicKey }),
    (signed): SignedIdentity => ({
      ...signed,
      renewAt: renewalTime(signed, { renewAt: options.settings.renewAt, jitter: options.settings.renewJitter })
    })
  )

/** The sidecar's convention: `<certificates.dir>/workloads/<service>/` (src/certs/IdentityFiles.ts). */
export const workloadFilesDir = (certificatesDir: string, service: string): string =>
  identityFiles(certificatesDir, service).directory

/** SDS secrets of a state, in `MeshState.secrets` form: feed `changes` through this into the snapshot. */
export const secretsOf = (state: CertificateState): ReadonlyMap<string, Readonly<Record<string, unknown>>> =>
  secretMap({ trustDomain: state.trustDomain, bundlePem: state.bundle.pem, identities: state.services.values() })

const identityStatus = (identity: WorkloadIdentity): IdentityStatus => ({
  spiffeId: identity.spiffeId,
  serial: identity.serial,
  notBefore: identity.notBefore.toISOString(),
  notAfter: identity.notAfter.toISOString(),
  renewAt: identity.renewAt.toISOString()
})

/**
 * The Certificates service: loads the CA, issues an identity for the controller and each service
 * Discovery knows, then checks the wall clock every `checkInterval` (and on every Discovery
 * change), renewing what is due and re-reading the CA files (rotation, replaced operator files).
 */
export const make = (
  options: MakeOptions
): Effect.Effect<Certificates["Type"], CaInvalid | CertificateStoreError | SigningFailed, Discovery | Scope.Scope> =>
  Effect.gen(function*() {
    const discovery = yield* Discovery
    const { settings, trustDomain, meshName } = options
    const store: StoreOptions = { settings, meshName, trustDomain, create: true }
    const policy: RenewalPolicy = { renewAt: settings.renewAt, jitter: settings.renewJitter }
    const ttlMillis = Duration.toMillis(settings.workloadTtl)

    const consul = options.ca._tag === "Consul" ? options.consul : undefined
    if (options.ca._tag === "Consul" && consul === undefined) {
      return yield* new CaInvalidError({
        file: "certificates.store",
        reason: "the CA is in Consul but no Consul store was given"
      })
    }
    const material = yield* Ref.make(yield* (consul !== undefined ? consul.open : loadCa(options.ca, store)))
    const wanted = yield* Ref.make<ReadonlyArray<string>>((yield* discovery.services).map((s) => s.name))
    const counts = yield* Ref.make({ renewals: 0, failures: 0, lastError: null as string | null })
    const refused = yield* Ref.make<string | null>(null)

    const issueFor = (name: string, authority: Authority, now: number) => issueIdentity(authority, options, name, now)

    const recordFailure = (what: "issue" | "ca" | "files", error: { readonly message: string }) =>
      Effect.zipRight(
        Ref.update(counts, (c) => ({ ...c, failures: c.failures + 1, lastError: error.message })),
        Effect.sync(() => failures.inc({ what }))
      )

    /** Re-reads the CA files; a bad file is reported and the CA in force stays. */
    const refreshCa = Effect.gen(function*() {
      if (options.ca._tag === "Ephemeral") return
      const before = yield* Ref.get(material)
      const loaded = yield* Effect.either(
        consul !== undefined ? consul.current : loadCa(options.ca, { ...store, create: false })
      )
      if (Either.isLeft(loaded)) {
        yield* Effect.logError("cannot re-read the CA; keeping the one in force").pipe(
          Effect.annotateLogs({ error: loaded.left.message })
        )
        return yield* recordFailure("ca", loaded.left)
      }
      if (loaded.right.digest === before.digest) return yield* Ref.set(refused, null)
      const why = foreignRoot(before, loaded.right)
      if (why !== undefined) {
        // Reported once per set of files, and the CA in force keeps signing.
        if ((yield* Ref.getAndSet(refused, why)) !== why) {
          yield* Effect.logError("refusing CA files that appeared in the directory; keeping the CA in force").pipe(
            Effect.annotateLogs({ reason: why, active: before.authority.fingerprint })
          )
          yield* recordFailure("ca", { message: why })
        }
        return
      }
      yield* Ref.set(refused, null)
      yield* Ref.set(material, loaded.right)
      yield* Effect.logInfo("CA files changed; trust bundle updated").pipe(
        Effect.annotateLogs({ active: loaded.right.authority.fingerprint })
      )
    })

    /** Issues what is missing or due; returns the new state (or the old one when nothing changed). */
    const renewDue = (previous: CertificateState | undefined) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const { authority } = yield* Ref.get(material)
        const names = [CONTROLLER, ...new Set(yield* Ref.get(wanted))]
        const current = new Map<string, WorkloadIdentity>(
          previous === undefined ? [] : [[CONTROLLER, previous.controller], ...previous.services]
        )
        let changed = previous === undefined
        const next = new Map<string, WorkloadIdentity>()
        const reasons = names.map((name) => renewalReason(current.get(name), now, policy, authority.fingerprint))
        // Issued a few at a time: key generation runs on Node's thread pool, and the main thread
        // builds and signs one certificate while the next keys are made (5,000 services at start).
        const issuedAll = yield* Effect.forEach(
          names.flatMap((name, i) => Option.isSome(reasons[i]!) ? [name] : []),
          (name) => Effect.either(issueFor(name, authority, now)),
          { concurrency: ISSUE_CONCURRENCY }
        )
        let nextIssued = 0
        for (const [i, name] of names.entries()) {
          const existing = current.get(name)
          const reason = reasons[i]!
          if (Option.isNone(reason)) {
            next.set(name, existing!)
            continue
          }
          const issued = issuedAll[nextIssued++]!
          if (Either.isLeft(issued)) {
            yield* Effect.logError("certificate issuance failed; will retry").pipe(
              Effect.annotateLogs({ identity: name, error: issued.left.message })
            )
            yield* recordFailure("issue", issued.left)
            if (existing !== undefined) next.set(name, existing)
            continue
          }
          changed = true
          next.set(name, issued.right)
          renewals.inc({ identity: issued.right.spiffeId })
          yield* Ref.update(counts, (c) => ({ ...c, renewals: c.renewals + 1 }))
          yield* Effect.logInfo("certificate issued").pipe(
            Effect.annotateLogs({ identity: issued.right.spiffeId, serial: issued.right.serial, reason: reason.value })
          )
        }
        const removed = [...current.keys()].filter((name) => !next.has(name))
        for (const name of removed) expirySeconds.remove({ identity: current.get(name)!.spiffeId })
        const bundle = bundleOf(yield* Ref.get(material), now, ttlMillis)
        for (const identity of next.values()) {
          expirySeconds.set({ identity: identity.spiffeId }, Math.round((identity.notAfter.getTime() - now) / 1000))
        }
        if (
          !changed && removed.length === 0 && previous !== undefined && previous.bundle.pem === bundle.pem
        ) {
          return previous
        }
        const controller = next.get(CONTROLLER)
        if (controller === undefined) {
          return yield* new SigningFailed({
            what: "issuing the controller's certificate",
            cause: (yield* Ref.get(counts)).lastError
          })
        }
        next.delete(CONTROLLER)
        return { trustDomain, bundle, controller, services: next } satisfies CertificateState
      })

    const initial = yield* renewDue(undefined)
    const state = yield* SubscriptionRef.make(initial)
    const provider = new IdentityProvider(initial.controller, initial.bundle.pem)

    /** Keeps the files of `writeFilesFor` in step with the state; a failed write is reported and retried on the next check. */
    const written = new Map<string, { readonly serial: string; readonly bundle: string }>()
    const syncFiles = (current: CertificateState) =>
      Effect.forEach(options.writeFilesFor ?? [], (service) => {
        const identity = current.services.get(service)
        const last = written.get(service)
        if (
          identity === undefined || (last?.serial === identity.serial && last.bundle === current.bundle.pem)
        ) return Effect.void
        return writeIdentityFiles(workloadFilesDir(settings.dir, service), identity, current.bundle.pem).pipe(
          Effect.tap(() =>
            Effect.sync(() => written.set(service, { serial: identity.serial, bundle: current.bundle.pem }))
          ),
          Effect.catchAll((error) =>
            Effect.zipRight(
              Effect.logError("cannot write identity files; will retry").pipe(
                Effect.annotateLogs({ service, error: error.message })
              ),
              recordFailure("files", error)
            )
          )
        )
      }, { discard: true })
    yield* syncFiles(initial)

    // One reconciliation at a time: the tick, Discovery changes and freshness checks all land here.
    const lock = yield* Effect.makeSemaphore(1)
    /** `rereadCa` on the periodic check only: Discovery changes and readers need no file reads. */
    const reconcile = (rereadCa: boolean) =>
      lock.withPermits(1)(
        Effect.gen(function*() {
          if (rereadCa) yield* refreshCa
          const before = yield* SubscriptionRef.get(state)
          const after = yield* renewDue(before).pipe(
            Effect.catchAll((error) => Effect.as(recordFailure("issue", error), before))
          )
          yield* syncFiles(after)
          if (after !== before) {
            yield* SubscriptionRef.set(state, after)
            if (after.controller !== before.controller || after.bundle.pem !== before.bundle.pem) {
              provider.update(after.controller, after.bundle.pem)
            }
          }
        })
      ).pipe(Effect.annotateLogs(LOG))

    yield* reconcile(true).pipe(
      // A defect in one check must not end the checking (and with it every renewal).
      Effect.catchAllCause((cause) => Effect.logError("certificate check failed; retrying at the next check", cause)),
      Effect.repeat(Schedule.spaced(settings.checkInterval)),
      Effect.delay(settings.checkInterval),
      Effect.forkScoped
    )
    // A change in Consul (`ca rotate` at any controller) is applied at once, not at the next check.
    if (consul !== undefined) {
      yield* consul.watch(reconcile(true)).pipe(Effect.annotateLogs(LOG), Effect.forkScoped)
    }
    yield* discovery.changes.pipe(
      Stream.map((services) => services.map((s) => s.name)),
      // Endpoint and health churn does not change which identities exist.
      Stream.changesWith((a, b) => a.length === b.length && a.every((name, i) => name === b[i])),
      Stream.runForEach((names) => Effect.zipRight(Ref.set(wanted, names), reconcile(false))),
      Effect.forkScoped
    )

    /** The state, after renewing anything the wall clock says is due (a host just back from sleep). */
    const fresh = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const current = yield* SubscriptionRef.get(state)
      const { authority } = yield* Ref.get(material)
      const stale = [current.controller, ...current.services.values()].some((identity) =>
        Option.isSome(renewalReason(identity, now, policy, authority.fingerprint))
      )
      if (stale) yield* reconcile(false)
      return yield* SubscriptionRef.get(state)
    })

    return Certificates.of({
      trustDomain,
      state: fresh,
      changes: state.changes,
      bundle: Effect.map(fresh, (s) => s.bundle),
      identity: (service) => Effect.map(fresh, (s) => Option.fromNullable(s.services.get(service))),
      issue: (service) =>
        Effect.gen(function*() {
          const { authority } = yield* Ref.get(material)
          return yield* issueFor(service, authority, yield* Clock.currentTimeMillis)
        }),
      signPublicKey: (service, publicKey) =>
        Effect.gen(function*() {
          const { authority } = yield* Ref.get(material)
          return yield* signIdentity(authority, options, service, publicKey, yield* Clock.currentTimeMillis)
        }),
      secrets: Effect.map(fresh, secretsOf),
      controllerProvider: provider,
      xdsServerCredentials: mtlsServerCredentials(provider),
      verifyPeer: (certificate) => certificateSpiffeId(certificate, trustDomain),
      status: Effect.gen(function*() {
        const s = yield* SubscriptionRef.get(state)
        const c = yield* Ref.get(counts)
        return {
          trustDomain,
          ca: caLabel(options.ca, settings),
          roots: s.bundle.roots,
          identities: [s.controller, ...s.services.values()].map(identityStatus),
          renewals: c.renewals,
          failures: c.failures,
          lastError: c.lastError,
          caRefused: yield* Ref.get(refused),
          store: consul !== undefined ? "consul" as const : "file" as const,
          consul: consul !== undefined ? yield* consul.status : null
        }
      })
    })
  }).pipe(
    // Forked fibers inherit the annotation; `reconcile` carries it too, for callers' fibers.
    Effect.annotateLogs(LOG)
  )
