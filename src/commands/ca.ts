/**
 * `ca show` and `ca rotate [--activate]`: the mesh root from the command line, acting on the same
 * CA directory the daemon uses (layers/internal/CaStore.ts). The running controller notices what
 * these commands write on its next check. The command line itself (options, help) is in
 * certsCommands.ts, which loads this module when a command runs.
 */
import { Clock, Console, Duration, Effect, Option } from "effect"
import * as NodeFs from "node:fs/promises"
import * as NodePath from "node:path"
import { type ConsulConnection, ConsulUnavailable, makeConsulConnection } from "../../layers/ConsulClient.js"
import {
  bundleOf,
  caPaths,
  compactTime,
  ensurePrivateDir,
  fsyncDir,
  loadCaDir,
  newRoot,
  openCa,
  readRequired,
  type StoreSettings,
  type TrustBundle,
  writeAtomic,
  writeRoot
} from "../../layers/internal/CaStore.js"
import { type ConsulCaStore, makeConsulCaStore } from "../../layers/internal/ConsulCaStore.js"
import { loadFile } from "../../layers/LiveConfig.js"
import type { MeshConfig } from "../../schemas/Config.js"
import { fingerprint, type RootSummary, summarizeRoot } from "../certs/Authority.js"
import { CaInvalid, CaOperationRefused, CertificateStoreError, type SigningFailed } from "../certs/Errors.js"
import { describeErrno } from "../Errno.js"

const storeError = (path: string) => (cause: unknown) =>
  new CertificateStoreError({ path, reason: describeErrno(cause) })

/** The CA settings of the config file the command names (the same file `run` reads). */
export const settingsFrom = (configPath: string) =>
  loadFile(configPath).pipe(Effect.map(({ config }) => storeSettingsOf(config)))

export const storeSettingsOf = (config: MeshConfig): StoreSettings => ({
  settings: config.certificates,
  meshName: config.mesh.name,
  trustDomain: config.mesh.trustDomain
})

/** The CA directory, for rotation: refused when the CA is the operator's files. */
const ownCa = (options: StoreSettings) =>
  Effect.gen(function*() {
    if (options.settings.ca !== undefined) {
      return yield* new CaOperationRefused({
        reason: "the CA is operator-provided (certificates.ca); rotate it by replacing those files"
      })
    }
    return { material: yield* loadCaDir({ ...options, create: false }), paths: caPaths(options.settings.dir) }
  })

/** Step 1: create next/ (a new root, trusted but not yet signing). */
export const introduceRoot = (
  options: StoreSettings
): Effect.Effect<RootSummary, CaInvalid | CaOperationRefused | CertificateStoreError | SigningFailed> =>
  Effect.gen(function*() {
    const { material, paths } = yield* ownCa(options)
    if (Option.isSome(material.next)) {
      return yield* new CaOperationRefused({
        reason:
          `a new root is already waiting in ${paths.nextDir}; run \`ca rotate --activate\` once every workload trusts it`
      })
    }
    // Written whole in a staging directory, then one rename: next/ never holds half a pair.
    yield* Effect.tryPromise({
      try: () => NodeFs.rm(paths.nextStaging, { recursive: true, force: true }),
      catch: storeError(paths.nextStaging)
    })
    yield* ensurePrivateDir(paths.nextStaging)
    const root = yield* newRoot(options)
    yield* writeRoot(NodePath.join(paths.nextStaging, "ca.pem"), NodePath.join(paths.nextStaging, "ca-key.pem"), root)
    yield* Effect.tryPromise({
      try: async () => {
        await NodeFs.rename(paths.nextStaging, paths.nextDir)
        await fsyncDir(paths.dir)
      },
      catch: storeError(paths.nextDir)
    })
    return summarizeRoot(root.certPem)
  })

/** Step 2: next/ becomes the active root; the old one moves to previous/ (kept, and trusted for one workload TTL). */
export const activateRoot = (
  options: StoreSettings
): Effect.Effect<RootSummary, CaInvalid | CaOperationRefused | CertificateStoreError | SigningFailed> =>
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

/**
 * With `certificates.store: consul`: the shared CA in Consul's KV (layers/internal/ConsulCaStore.ts),
 * reached with the config's `discovery.consul` and the KEK file. Every controller sees the change
 * through its watch of the prefix.
 */
export const withConsulStore = <A, E>(
  config: MeshConfig,
  use: (store: ConsulCaStore, client: ConsulConnection) => Effect.Effect<A, E | ConsulUnavailable>
) =>
  Effect.gen(function*() {
    const consul = config.discovery.consul
    const settings = config.certificates.consul
    if (consul === undefined) {
      return yield* new CaInvalid({ file: "certificates.store", reason: "`consul` needs a `discovery.consul` section" })
    }
    if (settings === undefined) {
      return yield* new CaInvalid({
        file: "certificates.consul",
        reason: "`store: consul` needs `certificates.consul.keyEncryptionKeyFile`"
      })
    }
    const client = yield* makeConsulConnection(consul)
    const store = yield* makeConsulCaStore({ client, settings, store: storeSettingsOf(config) })
    return yield* use(store, client)
  }).pipe(
    Effect.catchIf(
      (error): error is ConsulUnavailable => error instanceof ConsulUnavailable,
      (error) => Effect.fail(new CaOperationRefused({ reason: `cannot reach Consul: ${error.reason}` }))
    ),
    Effect.scoped
  )

/** `ca rotate [--activate]` on whichever store the config names; returns the root's summary. */
const rotateIn = (configPath: string, activate: boolean) =>
  Effect.gen(function*() {
    const { config } = yield* loadFile(configPath)
    const settings = storeSettingsOf(config)
    if (config.certificates.store === "consul" && config.certificates.ca === undefined) {
      const pem = yield* withConsulStore(config, (store) =>
        Effect.flatMap(activate ? store.activate : store.rotate, (fp) =>
          // The root just written, as the store now holds it.
          Effect.map(store.read, (m) =>
            [m.active, ...Option.toArray(m.next)].find((p) =>
              fingerprint(p) === fp
            ) ?? m.active)))
      return summarizeRoot(pem)
    }
    return yield* (activate ? activateRoot(settings) : introduceRoot(settings))
  })

/** What `ca show` prints: every root in the bundle now. */
export const showRoots = (
  options: StoreSettings
): Effect.Effect<TrustBundle, CaInvalid | CertificateStoreError | SigningFailed> =>
  Effect.gen(function*() {
    const material = yield* openCa({ ...options, create: false })
    return bundleOf(material, yield* Clock.currentTimeMillis, Duration.toMillis(options.settings.workloadTtl))
  })

/** `ca show` output: one block per root, in bundle order (active first). */
export const formatRoots = (bundle: TrustBundle): string =>
  bundle.roots
    .map((root) =>
      [
        `${root.state} root: ${root.subject}`,
        `  fingerprint (SHA-256): ${root.fingerprint}`,
        `  serial: ${root.serial}`,
        `  valid: ${root.notBefore} to ${root.notAfter}`
      ].join("\n")
    )
    .join("\n")

/** `ca show`: every root of the config's store (its directory, or Consul's KV with `store: consul`). */
export const showCommand = (configPath: string) =>
  Effect.gen(function*() {
    const { config: mesh } = yield* loadFile(configPath)
    if (mesh.certificates.store === "consul" && mesh.certificates.ca === undefined) {
      const material = yield* withConsulStore(mesh, (store) => store.read)
      return bundleOf(material, yield* Clock.currentTimeMillis, Duration.toMillis(mesh.certificates.workloadTtl))
    }
    return yield* showRoots(storeSettingsOf(mesh))
  }).pipe(Effect.flatMap((bundle) => Console.log(formatRoots(bundle))))

/** `ca rotate [--activate]`: one step of the rotation, and what to do next. */
export const rotateCommand = (configPath: string, activate: boolean) =>
  Effect.gen(function*() {
    if (activate) {
      const root = yield* rotateIn(configPath, true)
      yield* Console.log(
        `activated ${root.subject} (${root.fingerprint}).\nThe running controller re-issues every workload certificate on its next check; the previous root stays trusted for one workload TTL.`
      )
    } else {
      const root = yield* rotateIn(configPath, false)
      yield* Console.log(
        `introduced ${root.subject} (${root.fingerprint}): trusted, not yet signing.\nOnce every workload has the new trust bundle (a few check intervals), run \`ca rotate --activate\`.`
      )
    }
  })
