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
import * as grpc from "@grpc/grpc-js"
import { Clock, Context, Duration, Effect, Either, Layer, Option, Redacted, Ref, Schedule, type Scope, Stream, SubscriptionRef } from "effect"
import { createHash, randomBytes } from "node:crypto"
import type { X509Certificate } from "node:crypto"
import * as NodeFs from "node:fs/promises"
import * as NodePath from "node:path"
import type { PeerCertificate } from "node:tls"
import type { Certificates as CertificateSettings, KeyAlgorithm, MeshConfig } from "../schemas/Config.js"
import {
  type Authority,
  type CaPem,
  createRoot,
  issueWorkload,
  type IssuedCertificate,
  signWorkloadKey,
  joinPem,
  loadAuthority,
  type RootSummary,
  splitPem,
  summarizeRoot,
  WORKLOAD_BACKDATE_MILLIS
} from "../src/certs/Authority.js"
import { CaInvalid, CaOperationRefused, CertificateStoreError, SigningFailed } from "../src/certs/Errors.js"
import { type RenewalPolicy, renewalReason, renewalTime, retiredRootNeeded } from "../src/certs/Rotation.js"
import { secretMap } from "../src/certs/Sds.js"
import { certificateSpiffeId, controllerId, type MeshPrincipal, serviceId, type SpiffeIdInvalid } from "../src/certs/Spiffe.js"
import { IdentityProvider, mtlsServerCredentials } from "../src/certs/Tls.js"
import { filesIn, identityFiles } from "../src/certs/IdentityFiles.js"
import { describeErrno, errnoCode } from "../src/Errno.js"
import { LiveConfig } from "./LiveConfig.js"
import { Discovery } from "./Discovery.js"
import { counter, gauge } from "./Metrics.js"

export { CaInvalid, CaOperationRefused, CertificateStoreError, SigningFailed } from "../src/certs/Errors.js"

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

export type RootState = "active" | "next" | "previous" | "external"

export interface TrustBundle {
  /** Every trusted root, PEM, concatenated: what peers verify against. */
  readonly pem: string
  readonly roots: ReadonlyArray<RootSummary & { readonly state: RootState }>
}

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
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

const expirySeconds = gauge(
  "mesh_controller_certificate_expiry_seconds",
  "Seconds until the workload certificate expires, per SPIFFE ID.",
  ["identity"]
)
const renewals = counter("mesh_controller_certificate_renewals_total", "Workload certificates issued or renewed.", ["identity"])
const failures = counter(
  "mesh_controller_certificate_failures_total",
  "Failed certificate issuances, CA reloads and identity file writes (what: issue, ca, files).",
  ["what"]
)

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
     * Signs a public key made on another host (SPKI DER) as `service`'s identity, not tracked or
     * renewed here, and returns it with the current trust bundle (the signing service's answer).
     */
    readonly signPublicKey: (
      service: string,
      spki: Uint8Array,
      keyAlgorithm: KeyAlgorithm
    ) => Effect.Effect<{ readonly certificate: Omit<IssuedCertificate, "keyPem">; readonly bundle: TrustBundle }, SigningFailed>
    /** SDS resources for the current state, in `MeshState.secrets` form (names: src/certs/Sds.ts). */
    readonly secrets: Effect.Effect<ReadonlyMap<string, Readonly<Record<string, unknown>>>>
    /** The controller's identity as a grpc-js certificate provider: follows every renewal. */
    readonly controllerProvider: IdentityProvider
    /** For `controller.xds.tls: mtls`: the controller's identity, a client certificate from the mesh CA required. */
    readonly xdsServerCredentials: grpc.ServerCredentials
    /** The mesh principal a peer certificate names (chain already verified by the TLS handshake). */
    readonly verifyPeer: (certificate: PeerCertificate | X509Certificate) => Either.Either<MeshPrincipal, SpiffeIdInvalid>
    readonly status: Effect.Effect<CertificatesStatus>
  }
>() {
  /** The CA from `certificates.dir` (created on first start) or `certificates.ca`; identities for Discovery's services. */
  static readonly layer: Layer.Layer<Certificates, CaInvalid | CertificateStoreError | SigningFailed, LiveConfig | Discovery> =
    Layer.scoped(Certificates, fromConfig((config) => (config.certificates.ca === undefined ? { _tag: "Dir" } : { _tag: "Files" })))

  /** A root made in memory at start and never written: tests, and programs that want a throwaway mesh. */
  static readonly layerEphemeral: Layer.Layer<Certificates, SigningFailed, LiveConfig | Discovery> = Layer.scoped(
    Certificates,
    fromConfig(() => ({ _tag: "Ephemeral" })).pipe(Effect.catchTag("CaInvalid", "CertificateStoreError", Effect.die))
  )
}

/** `make` with the settings of the config in force at start (certificate settings apply at start). */
// A function declaration: the static layers above use it while the class is being defined.
function fromConfig(source: (config: MeshConfig) => CaSource) {
  return Effect.gen(function*() {
    const { config } = yield* (yield* LiveConfig).get
    const sidecar = config.sidecar.envoy
    return yield* make({
      settings: config.certificates,
      meshName: config.mesh.name,
      trustDomain: config.mesh.trustDomain,
      ca: source(config),
      writeFilesFor: source(config)._tag !== "Ephemeral" && sidecar.enabled && sidecar.service !== undefined ? [sidecar.service] : []
    })
  })
}

// ---------------------------------------------------------------------------------------------
// Files: atomic, never clobbering, modes 0700/0600
// ---------------------------------------------------------------------------------------------

const storeError = (path: string) => (cause: unknown) => new CertificateStoreError({ path, reason: describeErrno(cause) })

/** Creates the directory if needed and makes it 0700 (it holds keys). */
export const ensurePrivateDir = (dir: string): Effect.Effect<void, CertificateStoreError> =>
  Effect.tryPromise({
    try: async () => {
      await NodeFs.mkdir(dir, { recursive: true, mode: 0o700 })
      await NodeFs.chmod(dir, 0o700)
    },
    catch: storeError(dir)
  })

const fsyncDir = async (dir: string) => {
  const handle = await NodeFs.open(dir, "r")
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}

/**
 * Writes a file atomically: a temporary file in the same directory (created with `mode`), fsync,
 * then `link` (fails if the target exists: nothing is overwritten) or `rename` (replace: for files
 * the user asked to replace), then fsync the directory.
 */
export const writeAtomic = (
  path: string,
  content: string,
  options: { readonly mode: number; readonly replace: boolean }
): Effect.Effect<void, CertificateStoreError> =>
  Effect.tryPromise({
    try: async () => {
      const temp = `${path}.tmp-${randomBytes(6).toString("hex")}`
      const handle = await NodeFs.open(temp, "wx", options.mode)
      try {
        await handle.writeFile(content)
        await handle.sync()
      } finally {
        await handle.close()
      }
      try {
        if (options.replace) await NodeFs.rename(temp, path)
        else await NodeFs.link(temp, path)
      } finally {
        await NodeFs.rm(temp, { force: true })
      }
      await fsyncDir(NodePath.dirname(path))
    },
    catch: storeError(path)
  })

/** The file's text, or none when it does not exist; any other failure names the file. */
const readOptional = (path: string): Effect.Effect<Option.Option<string>, CaInvalid> =>
  Effect.tryPromise({
    try: () => NodeFs.readFile(path, "utf8"),
    catch: (cause) => cause
  }).pipe(
    Effect.map(Option.some),
    Effect.catchAll((cause) =>
      errnoCode(cause) === "ENOENT"
        ? Effect.succeed(Option.none())
        : Effect.fail(new CaInvalid({ file: path, reason: `cannot read: ${describeErrno(cause)}` }))
    )
  )

const readRequired = (path: string): Effect.Effect<string, CaInvalid> =>
  Effect.flatMap(
    readOptional(path),
    Option.match({
      onNone: () => Effect.fail(new CaInvalid({ file: path, reason: "no such file" })),
      onSome: Effect.succeed
    })
  )

// ---------------------------------------------------------------------------------------------
// The CA store
// ---------------------------------------------------------------------------------------------

export interface CaPaths {
  readonly dir: string
  readonly cert: string
  readonly key: string
  readonly nextDir: string
  readonly nextCert: string
  readonly nextKey: string
  readonly previousDir: string
}

export const caPaths = (dir: string): CaPaths => {
  const root = NodePath.resolve(dir)
  return {
    dir: root,
    cert: NodePath.join(root, "ca.pem"),
    key: NodePath.join(root, "ca-key.pem"),
    nextDir: NodePath.join(root, "next"),
    nextCert: NodePath.join(root, "next", "ca.pem"),
    nextKey: NodePath.join(root, "next", "ca-key.pem"),
    previousDir: NodePath.join(root, "previous")
  }
}

/** Where the CA comes from. */
export type CaSource =
  | { readonly _tag: "Dir" }
  | { readonly _tag: "Files" }
  | { readonly _tag: "Ephemeral" }

/** The CA as loaded: the signer, the trust bundle, and a digest of the files it came from. */
export interface CaMaterial {
  readonly authority: Authority
  readonly active: string
  readonly next: Option.Option<string>
  readonly previous: ReadonlyArray<{ readonly pem: string; readonly retiredAt: Date }>
  readonly external: boolean
  readonly digest: string
}

const digestOf = (parts: ReadonlyArray<string>) => {
  const hash = createHash("sha256")
  for (const part of parts) hash.update(part).update("\0")
  return hash.digest("hex")
}

/** A pair of files that must both exist or both be absent. */
const readPair = (
  certFile: string,
  keyFile: string
): Effect.Effect<Option.Option<{ readonly cert: string; readonly key: Redacted.Redacted<string> }>, CaInvalid> =>
  Effect.gen(function*() {
    const cert = yield* readOptional(certFile)
    const key = yield* readOptional(keyFile)
    if (Option.isNone(cert) && Option.isNone(key)) return Option.none()
    if (Option.isNone(cert)) {
      return yield* new CaInvalid({ file: certFile, reason: `missing, but its key ${keyFile} exists; restore it or move both aside` })
    }
    if (Option.isNone(key)) {
      return yield* new CaInvalid({ file: keyFile, reason: `missing, but its certificate ${certFile} exists; restore it or move both aside` })
    }
    return Option.some({ cert: cert.value, key: Redacted.make(key.value) })
  })

const RETIRED_NAME = /^(\d{8}T\d{6}Z)-([0-9a-f]+)\.pem$/

const compactTime = (date: Date) => date.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z")
const parseCompactTime = (text: string) =>
  new Date(`${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6, 8)}T${text.slice(9, 11)}:${text.slice(11, 13)}:${text.slice(13, 15)}Z`)

const readPrevious = (paths: CaPaths) =>
  Effect.gen(function*() {
    const names = yield* Effect.tryPromise({ try: () => NodeFs.readdir(paths.previousDir), catch: (cause) => cause }).pipe(
      Effect.catchAll((cause) =>
        errnoCode(cause) === "ENOENT"
          ? Effect.succeed([] as Array<string>)
          : Effect.fail(new CaInvalid({ file: paths.previousDir, reason: `cannot read: ${describeErrno(cause)}` }))
      )
    )
    const out: Array<{ pem: string; retiredAt: Date }> = []
    for (const name of names.sort()) {
      const match = RETIRED_NAME.exec(name)
      if (match === null) continue
      const file = NodePath.join(paths.previousDir, name)
      const pems = splitPem(yield* readRequired(file))
      if (pems.length !== 1) return yield* new CaInvalid({ file, reason: "expected one PEM certificate (corrupt file?)" })
      yield* Effect.try({ try: () => summarizeRoot(pems[0]!), catch: () => new CaInvalid({ file, reason: "not a valid PEM certificate" }) })
      out.push({ pem: pems[0]!, retiredAt: parseCompactTime(match[1]!) })
    }
    return out
  })

export interface StoreSettings {
  readonly settings: CertificateSettings
  readonly meshName: string
  readonly trustDomain: string
}

export interface StoreOptions extends StoreSettings {
  /** Create the root when the directory holds none (start, `certs issue`); `ca show` does not. */
  readonly create: boolean
}

const newRoot = (options: StoreSettings): Effect.Effect<CaPem, SigningFailed> =>
  Effect.flatMap(Clock.currentTimeMillis, (now) =>
    createRoot({
      meshName: options.meshName,
      trustDomain: options.trustDomain,
      keyAlgorithm: options.settings.keyAlgorithm,
      now: new Date(now),
      validityMillis: Duration.toMillis(options.settings.caValidity)
    })
  )

/** Writes a new root pair, key first; neither file may exist yet. */
const writeRoot = (certFile: string, keyFile: string, root: CaPem) =>
  Effect.zipRight(
    writeAtomic(keyFile, Redacted.value(root.keyPem), { mode: 0o600, replace: false }),
    writeAtomic(certFile, root.certPem, { mode: 0o644, replace: false })
  )

/** Loads (and on first start creates) the CA under `settings.dir`. */
export const loadCaDir = (options: StoreOptions): Effect.Effect<CaMaterial, CaInvalid | CertificateStoreError | SigningFailed> =>
  Effect.gen(function*() {
    const paths = caPaths(options.settings.dir)
    const existing = yield* readPair(paths.cert, paths.key)
    const { cert, key } = Option.isSome(existing) ? existing.value : yield* Effect.gen(function*() {
      if (!options.create) return yield* new CaInvalid({ file: paths.cert, reason: "no CA yet (it is created on the first start)" })
      yield* ensurePrivateDir(paths.dir)
      const root = yield* newRoot(options)
      yield* writeRoot(paths.cert, paths.key, root)
      yield* Effect.logInfo("created the mesh root CA").pipe(Effect.annotateLogs({ file: paths.cert }))
      return { cert: root.certPem, key: root.keyPem }
    })
    const authority = yield* loadAuthority({ certPem: cert, certFile: paths.cert, keyPem: key, keyFile: paths.key })
    if (authority.rootPem !== authority.certPem) {
      return yield* new CaInvalid({ file: paths.cert, reason: "expected a self-signed root (use certificates.ca for an intermediate)" })
    }
    const nextPair = yield* readPair(paths.nextCert, paths.nextKey)
    const next = yield* Option.match(nextPair, {
      onNone: () => Effect.succeedNone,
      onSome: (p) =>
        Effect.map(
          loadAuthority({ certPem: p.cert, certFile: paths.nextCert, keyPem: p.key, keyFile: paths.nextKey }),
          (a) => Option.some(a.certPem)
        )
    })
    const previous = yield* readPrevious(paths)
    return {
      authority,
      active: authority.certPem,
      next,
      previous,
      external: false,
      digest: digestOf([cert, Redacted.value(key), ...Option.toArray(next), ...previous.map((p) => `${p.retiredAt.toISOString()}${p.pem}`)])
    }
  })

/** Loads an operator-provided CA (`certificates.ca`); nothing is ever written. */
export const loadCaFiles = (files: NonNullable<CertificateSettings["ca"]>): Effect.Effect<CaMaterial, CaInvalid> =>
  Effect.gen(function*() {
    const certPem = yield* readRequired(files.cert)
    const keyPem = Redacted.make(yield* readRequired(files.key))
    const chainPem = files.chain === undefined ? undefined : yield* readRequired(files.chain)
    const authority = yield* loadAuthority({
      certPem,
      certFile: files.cert,
      keyPem,
      keyFile: files.key,
      ...(chainPem === undefined || files.chain === undefined ? {} : { chainPem, chainFile: files.chain })
    })
    return {
      authority,
      active: authority.rootPem,
      next: Option.none(),
      previous: [],
      external: true,
      digest: digestOf([certPem, Redacted.value(keyPem), chainPem ?? ""])
    }
  })

/** The CA the settings name: operator files when `certificates.ca` is set, else the directory. */
export const openCa = (options: StoreOptions): Effect.Effect<CaMaterial, CaInvalid | CertificateStoreError | SigningFailed> =>
  loadCa(options.settings.ca === undefined ? { _tag: "Dir" } : { _tag: "Files" }, options)

const loadCa = (source: CaSource, options: StoreOptions) => {
  switch (source._tag) {
    case "Dir":
      return loadCaDir(options)
    case "Files":
      return options.settings.ca === undefined
        ? Effect.fail(new CaInvalid({ file: "certificates.ca", reason: "not configured" }))
        : loadCaFiles(options.settings.ca)
    case "Ephemeral":
      return Effect.gen(function*() {
        const root = yield* newRoot(options)
        const authority = yield* loadAuthority({ certPem: root.certPem, certFile: "<memory>", keyPem: root.keyPem, keyFile: "<memory>" })
        return { authority, active: root.certPem, next: Option.none(), previous: [], external: false, digest: "ephemeral" }
      })
  }
}

/** Roots to trust now: active, next, and retired roots whose certificates may still be alive. */
const bundleOf = (material: CaMaterial, now: number, workloadTtlMillis: number): TrustBundle => {
  const entries: Array<{ pem: string; state: RootState }> = [
    { pem: material.active, state: material.external ? "external" : "active" },
    ...Option.toArray(material.next).map((pem) => ({ pem, state: "next" as const })),
    ...material.previous
      .filter((root) => retiredRootNeeded(root, now, workloadTtlMillis, WORKLOAD_BACKDATE_MILLIS))
      .map((root) => ({ pem: root.pem, state: "previous" as const }))
  ]
  const seen = new Set<string>()
  const roots: Array<RootSummary & { state: RootState }> = []
  const pems: Array<string> = []
  for (const entry of entries) {
    const summary = summarizeRoot(entry.pem)
    if (seen.has(summary.fingerprint)) continue
    seen.add(summary.fingerprint)
    roots.push({ ...summary, state: entry.state })
    pems.push(entry.pem)
  }
  return { pem: joinPem(pems), roots }
}

// ---------------------------------------------------------------------------------------------
// Root rotation (the CLI's `ca rotate`)
// ---------------------------------------------------------------------------------------------

/** The CA directory, for rotation: refused when the CA is the operator's files. */
const ownCa = (options: StoreSettings) =>
  Effect.gen(function*() {
    if (options.settings.ca !== undefined) {
      return yield* new CaOperationRefused({ reason: "the CA is operator-provided (certificates.ca); rotate it by replacing those files" })
    }
    return { material: yield* loadCaDir({ ...options, create: false }), paths: caPaths(options.settings.dir) }
  })

/** Step 1: create next/ (a new root, trusted but not yet signing). */
export const introduceRoot = (options: StoreSettings): Effect.Effect<RootSummary, CaInvalid | CaOperationRefused | CertificateStoreError | SigningFailed> =>
  Effect.gen(function*() {
    const { material, paths } = yield* ownCa(options)
    if (Option.isSome(material.next)) {
      return yield* new CaOperationRefused({
        reason: `a new root is already waiting in ${paths.nextDir}; run \`ca rotate --activate\` once every workload trusts it`
      })
    }
    yield* ensurePrivateDir(paths.nextDir)
    const root = yield* newRoot(options)
    yield* writeRoot(paths.nextCert, paths.nextKey, root)
    return summarizeRoot(root.certPem)
  })

/** Step 2: next/ becomes the active root; the old one moves to previous/ (kept, and trusted for one workload TTL). */
export const activateRoot = (options: StoreSettings): Effect.Effect<RootSummary, CaInvalid | CaOperationRefused | CertificateStoreError | SigningFailed> =>
  Effect.gen(function*() {
    const { material, paths } = yield* ownCa(options)
    if (Option.isNone(material.next)) {
      return yield* new CaOperationRefused({ reason: `no new root in ${paths.nextDir}; run \`ca rotate\` first` })
    }
    const oldKey = yield* readRequired(paths.key)
    const now = yield* Clock.currentTimeMillis
    const base = NodePath.join(
      paths.previousDir,
      `${compactTime(new Date(now))}-${material.authority.fingerprint.replace(/:/g, "").slice(0, 16).toLowerCase()}`
    )
    yield* ensurePrivateDir(paths.previousDir)
    // Copies first, then the renames: a crash part-way leaves every root on disk.
    yield* writeAtomic(`${base}-key.pem`, oldKey, { mode: 0o600, replace: false })
    yield* writeAtomic(`${base}.pem`, material.active, { mode: 0o644, replace: false })
    yield* Effect.tryPromise({
      try: async () => {
        await NodeFs.rename(paths.nextKey, paths.key)
        await NodeFs.rename(paths.nextCert, paths.cert)
        await fsyncDir(paths.dir)
        await NodeFs.rmdir(paths.nextDir)
      },
      catch: storeError(paths.dir)
    })
    return summarizeRoot(material.next.value)
  })

/** What `ca show` prints: every root in the bundle now. */
export const showRoots = (options: StoreSettings): Effect.Effect<TrustBundle, CaInvalid | CertificateStoreError | SigningFailed> =>
  Effect.gen(function*() {
    const material = yield* openCa({ ...options, create: false })
    return bundleOf(material, yield* Clock.currentTimeMillis, Duration.toMillis(options.settings.workloadTtl))
  })

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
}

/** Issues the identity of a service (or of the controller, `CONTROLLER`) at `now`. */
export const issueIdentity = (
  authority: Authority,
  options: StoreSettings,
  name: string,
  now: number
): Effect.Effect<WorkloadIdentity, SigningFailed> =>
  Effect.map(
    issueWorkload(authority, {
      spiffeId: name === CONTROLLER ? controllerId(options.trustDomain) : serviceId(options.trustDomain, name),
      commonName: name === CONTROLLER ? "mesh-controller" : name,
      organization: options.meshName,
      dnsNames: name === CONTROLLER ? [] : [name],
      keyAlgorithm: options.settings.keyAlgorithm,
      now: new Date(now),
      ttlMillis: Duration.toMillis(options.settings.workloadTtl)
    }),
    (issued): WorkloadIdentity => ({
      ...issued,
      name,
      renewAt: renewalTime(issued, { renewAt: options.settings.renewAt, jitter: options.settings.renewJitter })
    })
  )

/** The files `certs issue` writes. */
export interface IssuedFiles {
  readonly identity: WorkloadIdentity
  readonly cert: string
  readonly key: string
  readonly ca: string
}

/**
 * `certs issue`: opens the CA (creating it under `dir` on first use, as the daemon would), issues
 * a certificate for `service`, and writes `cert.pem` (leaf + intermediates), `key.pem` (0600) and
 * `ca.pem` (the trust bundle) into `out`, each atomically; re-running replaces them (renewal).
 */
export const issueToFiles = (
  options: StoreSettings,
  service: string,
  out: string
): Effect.Effect<IssuedFiles, CaInvalid | CertificateStoreError | SigningFailed> =>
  Effect.gen(function*() {
    const material = yield* openCa({ ...options, create: true })
    const now = yield* Clock.currentTimeMillis
    const identity = yield* issueIdentity(material.authority, options, service, now)
    const bundle = bundleOf(material, now, Duration.toMillis(options.settings.workloadTtl))
    return { identity, ...(yield* writeIdentityFiles(out, identity, bundle.pem)) }
  })

/** The sidecar's convention: `<certificates.dir>/workloads/<service>/` (src/certs/IdentityFiles.ts). */
export const workloadFilesDir = (certificatesDir: string, service: string): string =>
  identityFiles(certificatesDir, service).directory

/** Writes cert.pem (chain), key.pem (0600) and ca.pem (bundle) into `out`, each atomically (rename), key first. */
export const writeIdentityFiles = (
  out: string,
  identity: WorkloadIdentity,
  bundlePem: string
): Effect.Effect<Omit<IssuedFiles, "identity">, CertificateStoreError> =>
  Effect.gen(function*() {
    const paths = filesIn(out)
    const dir = paths.directory
    yield* Effect.tryPromise({ try: () => NodeFs.mkdir(dir, { recursive: true, mode: 0o700 }), catch: storeError(dir) })
    const files = { cert: paths.certificateChain, key: paths.privateKey, ca: paths.trustedCa }
    yield* writeAtomic(files.key, Redacted.value(identity.keyPem), { mode: 0o600, replace: true })
    yield* writeAtomic(files.cert, identity.chainPem, { mode: 0o644, replace: true })
    yield* writeAtomic(files.ca, bundlePem, { mode: 0o644, replace: true })
    return files
  })

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
    const caLabel = options.ca._tag === "Dir" ? `dir:${caPaths(settings.dir).dir}` : options.ca._tag === "Files" ? "files" : "ephemeral"

    const material = yield* Ref.make(yield* loadCa(options.ca, store))
    const wanted = yield* Ref.make<ReadonlyArray<string>>((yield* discovery.services).map((s) => s.name))
    const counts = yield* Ref.make({ renewals: 0, failures: 0, lastError: null as string | null })

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
      const loaded = yield* Effect.either(loadCa(options.ca, { ...store, create: false }))
      if (Either.isLeft(loaded)) {
        yield* Effect.logError("cannot re-read the CA; keeping the one in force").pipe(Effect.annotateLogs({ error: loaded.left.message }))
        return yield* recordFailure("ca", loaded.left)
      }
      if (loaded.right.digest !== before.digest) {
        yield* Ref.set(material, loaded.right)
        yield* Effect.logInfo("CA files changed; trust bundle updated").pipe(Effect.annotateLogs({ active: loaded.right.authority.fingerprint }))
      }
    })

    /** Issues what is missing or due; returns the new state (or the old one when nothing changed). */
    const renewDue = (previous: CertificateState | undefined) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const { authority } = yield* Ref.get(material)
        const names = [CONTROLLER, ...new Set(yield* Ref.get(wanted))]
        const current = new Map<string, WorkloadIdentity>(previous === undefined ? [] : [[CONTROLLER, previous.controller], ...previous.services])
        let changed = previous === undefined
        const next = new Map<string, WorkloadIdentity>()
        for (const name of names) {
          const existing = current.get(name)
          const reason = renewalReason(existing, now, policy, authority.fingerprint)
          if (Option.isNone(reason)) {
            next.set(name, existing!)
            continue
          }
          const issued = yield* Effect.either(issueFor(name, authority, now))
          if (Either.isLeft(issued)) {
            yield* Effect.logError("certificate issuance failed; will retry").pipe(Effect.annotateLogs({ identity: name, error: issued.left.message }))
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
        for (const identity of next.values()) expirySeconds.set({ identity: identity.spiffeId }, Math.round((identity.notAfter.getTime() - now) / 1000))
        if (!changed && removed.length === 0 && previous !== undefined && previous.bundle.pem === bundle.pem) return previous
        const controller = next.get(CONTROLLER)
        if (controller === undefined) {
          return yield* new SigningFailed({ what: "issuing the controller's certificate", cause: (yield* Ref.get(counts)).lastError })
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
        if (identity === undefined || (last?.serial === identity.serial && last.bundle === current.bundle.pem)) return Effect.void
        return writeIdentityFiles(workloadFilesDir(settings.dir, service), identity, current.bundle.pem).pipe(
          Effect.tap(() => Effect.sync(() => written.set(service, { serial: identity.serial, bundle: current.bundle.pem }))),
          Effect.catchAll((error) =>
            Effect.zipRight(
              Effect.logError("cannot write identity files; will retry").pipe(Effect.annotateLogs({ service, error: error.message })),
              recordFailure("files", error)
            )
          )
        )
      }, { discard: true })
    yield* syncFiles(initial)

    // One reconciliation at a time: the tick, Discovery changes and freshness checks all land here.
    const lock = yield* Effect.makeSemaphore(1)
    /** `rereadCa` on the periodic check only: Discovery changes and readers need no file reads. */
    const reconcile = (rereadCa: boolean) => lock.withPermits(1)(
      Effect.gen(function*() {
        if (rereadCa) yield* refreshCa
        const before = yield* SubscriptionRef.get(state)
        const after = yield* renewDue(before).pipe(
          Effect.catchAll((error) => Effect.as(recordFailure("issue", error), before))
        )
        yield* syncFiles(after)
        if (after !== before) {
          yield* SubscriptionRef.set(state, after)
          if (after.controller !== before.controller || after.bundle.pem !== before.bundle.pem) provider.update(after.controller, after.bundle.pem)
        }
      })
    )

    yield* reconcile(true).pipe(
      // A defect in one check must not end the checking (and with it every renewal).
      Effect.catchAllCause((cause) => Effect.logError("certificate check failed; retrying at the next check", cause)),
      Effect.repeat(Schedule.spaced(settings.checkInterval)),
      Effect.delay(settings.checkInterval),
      Effect.forkScoped
    )
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
      signPublicKey: (service, spki, keyAlgorithm) =>
        Effect.gen(function*() {
          const { authority } = yield* Ref.get(material)
          const now = yield* Clock.currentTimeMillis
          const request = {
            spiffeId: serviceId(trustDomain, service),
            commonName: service,
            organization: meshName,
            dnsNames: [service],
            keyAlgorithm,
            now: new Date(now),
            ttlMillis
          }
          const certificate = yield* signWorkloadKey(authority, request, spki)
          return { certificate, bundle: (yield* SubscriptionRef.get(state)).bundle }
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
          ca: caLabel,
          roots: s.bundle.roots,
          identities: [s.controller, ...s.services.values()].map(identityStatus),
          renewals: c.renewals,
          failures: c.failures,
          lastError: c.lastError
        }
      })
    })
  })
