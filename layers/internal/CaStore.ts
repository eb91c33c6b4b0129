/**
 * The CA's disk store under `certificates.dir` (layout: layers/Certificates.ts), operator CA files
 * (`certificates.ca`), and the in-memory root: loading, first-start creation, the trust bundle
 * they make, and writing an identity's files. Root rotation (`ca rotate`) lives in
 * src/commands/ca.ts over the primitives here.
 */
import { Clock, Duration, Effect, Option, Redacted } from "effect"
import * as NodeCrypto from "node:crypto"
import { createHash } from "node:crypto"
import * as NodeFs from "node:fs/promises"
import * as NodePath from "node:path"
import type { Certificates as CertificateSettings } from "../../schemas/Config.js"
import {
  type Authority,
  type CaPem,
  createRoot,
  type IssuedCertificate,
  joinPem,
  loadAuthority,
  type RootSummary,
  splitPem,
  summarizeRoot,
  WORKLOAD_BACKDATE_MILLIS
} from "../../src/certs/Authority.js"
import { CaInvalid, CertificateStoreError, type SigningFailed } from "../../src/certs/Errors.js"
import { filesIn } from "../../src/certs/IdentityFiles.js"
import { retiredRootNeeded } from "../../src/certs/Rotation.js"
import { describeErrno, errnoCode } from "../../src/Errno.js"
import * as AtomicFile from "./AtomicFile.js"

export type RootState = "active" | "next" | "previous" | "external"

export interface TrustBundle {
  /** Every trusted root, PEM, concatenated: what peers verify against. */
  readonly pem: string
  readonly roots: ReadonlyArray<RootSummary & { readonly state: RootState }>
}

const storeError = (path: string) => (cause: unknown) =>
  new CertificateStoreError({ path, reason: describeErrno(cause) })

/** The atomic writer's failure, as the store reports it. */
const asStoreError = (error: AtomicFile.FileWriteError) =>
  new CertificateStoreError({ path: error.path, reason: error.reason })

export const ensurePrivateDir = (dir: string): Effect.Effect<void, CertificateStoreError> =>
  Effect.mapError(AtomicFile.ensurePrivateDir(dir), asStoreError)

export const writeAtomic = (
  path: string,
  content: string,
  options: { readonly mode: number; readonly replace: boolean }
): Effect.Effect<void, CertificateStoreError> =>
  Effect.mapError(AtomicFile.writeAtomic(path, content, options), asStoreError)

export const fsyncDir = AtomicFile.fsyncDir

/** The file's text, or none when it does not exist; any other failure names the file. */
const readOptional = (path: string): Effect.Effect<Option.Option<string>, CaInvalid> =>
  Effect.tryPromise({
    try: () => NodeFs.readFile(path, "utf8"),
    catch: (cause) => cause
  }).pipe(
    Effect.map(Option.some),
    Effect.catchAll((cause) =>
      // ENOTDIR: a part of the path is a file, so this file cannot exist either.
      errnoCode(cause) === "ENOENT" || errnoCode(cause) === "ENOTDIR"
        ? Effect.succeed(Option.none())
        : Effect.fail(new CaInvalid({ file: path, reason: `cannot read: ${describeErrno(cause)}` }))
    )
  )

export const readRequired = (path: string): Effect.Effect<string, CaInvalid> =>
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
  /** A new root is written here whole before it is published (first start): see `publishFirstRoot`. */
  readonly staging: string
  /** `ca rotate` writes next/ here, then renames the directory into place. */
  readonly nextStaging: string
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
    previousDir: NodePath.join(root, "previous"),
    staging: NodePath.join(root, ".ca-staging"),
    nextStaging: NodePath.join(root, ".next-staging")
  }
}

/** Where the CA comes from. */
export type CaSource =
  | { readonly _tag: "Dir" }
  | { readonly _tag: "Files" }
  | { readonly _tag: "Ephemeral" }

/** The one place that says where a configured CA lives: operator files when `certificates.ca` is set, else the dir. */
export const caSourceOf = (settings: CertificateSettings): CaSource =>
  settings.ca === undefined ? { _tag: "Dir" } : { _tag: "Files" }

/** `dir:<path>`, `files` or `ephemeral`: how /status names the source. */
export const caLabel = (source: CaSource, settings: CertificateSettings): string =>
  source._tag === "Dir" ? `dir:${caPaths(settings.dir).dir}` : source._tag === "Files" ? "files" : "ephemeral"

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
      return yield* new CaInvalid({
        file: certFile,
        reason: `missing, but its key ${keyFile} exists; restore it or move both aside`
      })
    }
    if (Option.isNone(key)) {
      return yield* new CaInvalid({
        file: keyFile,
        reason: `missing, but its certificate ${certFile} exists; restore it or move both aside`
      })
    }
    return Option.some({ cert: cert.value, key: Redacted.make(key.value) })
  })

const RETIRED_NAME = /^(\d{8}T\d{6}Z)-([0-9a-f]+)\.pem$/

export const compactTime = (date: Date) => date.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z")
const parseCompactTime = (text: string) =>
  new Date(
    `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6, 8)}T${text.slice(9, 11)}:${text.slice(11, 13)}:${
      text.slice(13, 15)
    }Z`
  )

const readPrevious = (paths: CaPaths) =>
  Effect.gen(function*() {
    const names = yield* Effect.tryPromise({ try: () => NodeFs.readdir(paths.previousDir), catch: (cause) => cause })
      .pipe(
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
      if (pems.length !== 1) {
        return yield* new CaInvalid({ file, reason: "expected one PEM certificate (corrupt file?)" })
      }
      yield* Effect.try({
        try: () => summarizeRoot(pems[0]!),
        catch: () => new CaInvalid({ file, reason: "not a valid PEM certificate" })
      })
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

export const newRoot = (options: StoreSettings): Effect.Effect<CaPem, SigningFailed> =>
  Effect.flatMap(Clock.currentTimeMillis, (now) =>
    createRoot({
      meshName: options.meshName,
      trustDomain: options.trustDomain,
      keyAlgorithm: options.settings.keyAlgorithm,
      now: new Date(now),
      validityMillis: Duration.toMillis(options.settings.caValidity)
    }))

/** Writes a new root pair, key first; neither file may exist yet. */
export const writeRoot = (certFile: string, keyFile: string, root: CaPem) =>
  Effect.zipRight(
    writeAtomic(keyFile, Redacted.value(root.keyPem), { mode: 0o600, replace: false }),
    writeAtomic(certFile, root.certPem, { mode: 0o644, replace: false })
  )

// ---------------------------------------------------------------------------------------------
// Crash safety: at every instant the directory holds no CA or a complete one
// ---------------------------------------------------------------------------------------------

const exists = (path: string) => NodeFs.stat(path).then(() => true, () => false)
const readIfExists = (path: string) =>
  NodeFs.readFile(path, "utf8").catch((error: unknown) => {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return undefined
    throw error
  })

/** Links a staged file into place (never over an existing file); a link already there with the same bytes is fine. */
const linkInto = async (from: string, to: string) => {
  try {
    await NodeFs.link(from, to)
  } catch (error) {
    if (errnoCode(error) !== "EEXIST" || (await readIfExists(to)) !== (await NodeFs.readFile(from, "utf8"))) throw error
  }
}

/**
 * First start: the root is written whole into `.ca-staging/` (key, then certificate), and only
 * then linked into place, key first, certificate last. A crash before the staging pair is
 * complete leaves no CA (the staging directory is discarded); a crash after it leaves a staged
 * pair that `recoverInterrupted` publishes. No root is published that a later start replaces.
 */
const publishFirstRoot = (paths: CaPaths, root: CaPem) =>
  Effect.gen(function*() {
    yield* Effect.tryPromise({
      try: () => NodeFs.rm(paths.staging, { recursive: true, force: true }),
      catch: storeError(paths.staging)
    })
    yield* ensurePrivateDir(paths.staging)
    yield* writeRoot(NodePath.join(paths.staging, "ca.pem"), NodePath.join(paths.staging, "ca-key.pem"), root)
    yield* publishStaged(paths)
  })

const publishStaged = (paths: CaPaths) =>
  Effect.tryPromise({ try: () => publishStagedFiles(paths), catch: storeError(paths.dir) })

/** Key first, certificate last: the certificate in place is what makes the CA exist. */
const publishStagedFiles = async (paths: CaPaths) => {
  await linkInto(NodePath.join(paths.staging, "ca-key.pem"), paths.key)
  await linkInto(NodePath.join(paths.staging, "ca.pem"), paths.cert)
  await AtomicFile.fsyncDir(paths.dir)
  await NodeFs.rm(paths.staging, { recursive: true, force: true })
  await AtomicFile.fsyncDir(paths.dir)
}

const samePublicKey = (keyPem: string, certPem: string): boolean => {
  try {
    const spki = (key: NodeCrypto.KeyObject) => key.export({ format: "der", type: "spki" })
    return spki(NodeCrypto.createPublicKey(keyPem)).equals(spki(new NodeCrypto.X509Certificate(certPem).publicKey))
  } catch {
    return false
  }
}

/**
 * Finishes or discards what an interrupted write left, so no start needs a person to delete a
 * file: temporary files go; a complete staged first root is published (an incomplete one was
 * never published and goes); an unfinished `ca rotate` staging directory goes (next/ appears by
 * one rename); an `ca rotate --activate` stopped between its two renames is completed (the new
 * root was already in next/, so every workload trusts it). Anything else is left as it is, for
 * loading to judge. Returns what it did, for the log.
 */
export const recoverInterrupted = (paths: CaPaths): Effect.Effect<ReadonlyArray<string>, CertificateStoreError> =>
  Effect.gen(function*() {
    const done: Array<string> = []
    for (const dir of [paths.dir, paths.nextDir, paths.previousDir]) {
      const removed = yield* Effect.mapError(AtomicFile.removeTempFiles(dir), asStoreError)
      for (const name of removed) done.push(`removed the temporary file ${NodePath.join(dir, name)}`)
    }
    yield* Effect.tryPromise({
      try: async () => {
        if (await exists(paths.nextStaging)) {
          await NodeFs.rm(paths.nextStaging, { recursive: true, force: true })
          done.push(`removed the unfinished new root ${paths.nextStaging}`)
        }
        if (await exists(paths.staging)) {
          const stagedKey = await readIfExists(NodePath.join(paths.staging, "ca-key.pem"))
          const stagedCert = await readIfExists(NodePath.join(paths.staging, "ca.pem"))
          const key = await readIfExists(paths.key)
          const cert = await readIfExists(paths.cert)
          const complete = stagedKey !== undefined && stagedCert !== undefined && samePublicKey(stagedKey, stagedCert)
          if (!complete) {
            // Publishing starts only once both staged files are whole: nothing of this root is out.
            if (cert === undefined && (key === undefined || key !== stagedKey)) {
              await NodeFs.rm(paths.staging, { recursive: true, force: true })
              done.push(`discarded the unfinished root ${paths.staging} (never published)`)
            }
          } else if ((key === undefined || key === stagedKey) && (cert === undefined || cert === stagedCert)) {
            await publishStagedFiles(paths)
            done.push(`published the root a first start had written whole to ${paths.staging}`)
          }
        }
        const nextCert = await readIfExists(paths.nextCert)
        const key = await readIfExists(paths.key)
        if (
          nextCert !== undefined && !(await exists(paths.nextKey)) && key !== undefined && samePublicKey(key, nextCert)
        ) {
          await NodeFs.rename(paths.nextCert, paths.cert)
          await AtomicFile.fsyncDir(paths.dir)
          await NodeFs.rmdir(paths.nextDir).catch(() => undefined)
          done.push(`completed an interrupted \`ca rotate --activate\` (${paths.cert})`)
        }
      },
      catch: storeError(paths.dir)
    })
    return done
  })

/** An existing CA key others can read is refused, as ssh refuses such a private key. */
const checkKeyMode = (file: string): Effect.Effect<void, CaInvalid> =>
  Effect.tryPromise({ try: () => NodeFs.stat(file), catch: (cause) => cause }).pipe(
    Effect.catchAll((cause) => Effect.fail(new CaInvalid({ file, reason: `cannot read: ${describeErrno(cause)}` }))),
    Effect.flatMap((stat) => {
      const mode = stat.mode & 0o777
      if ((mode & 0o077) === 0) return Effect.void
      return Effect.fail(
        new CaInvalid({
          file,
          reason:
            `permissions 0${mode.toString(8)} are too open: the CA key must not be accessible by group or others; ` +
            `run \`chmod 600 ${file}\``
        })
      )
    })
  )

/** Loads (and on first start creates) the CA under `settings.dir`. */
export const loadCaDir = (
  options: StoreOptions
): Effect.Effect<CaMaterial, CaInvalid | CertificateStoreError | SigningFailed> =>
  Effect.gen(function*() {
    const paths = caPaths(options.settings.dir)
    if (options.create) {
      for (const done of yield* recoverInterrupted(paths)) yield* Effect.logWarning(`CA directory: ${done}`)
    }
    const existing = yield* readPair(paths.cert, paths.key)
    const { cert, key } = Option.isSome(existing) ? existing.value : yield* Effect.gen(function*() {
      if (!options.create) {
        return yield* new CaInvalid({ file: paths.cert, reason: "no CA yet (it is created on the first start)" })
      }
      yield* ensurePrivateDir(paths.dir)
      const root = yield* newRoot(options)
      yield* publishFirstRoot(paths, root)
      yield* Effect.logInfo("created the mesh root CA").pipe(Effect.annotateLogs({ file: paths.cert }))
      return { cert: root.certPem, key: root.keyPem }
    })
    yield* checkKeyMode(paths.key)
    const authority = yield* loadAuthority({ certPem: cert, certFile: paths.cert, keyPem: key, keyFile: paths.key })
    if (authority.rootPem !== authority.certPem) {
      return yield* new CaInvalid({
        file: paths.cert,
        reason: "expected a self-signed root (use certificates.ca for an intermediate)"
      })
    }
    const nextPair = yield* readPair(paths.nextCert, paths.nextKey)
    if (Option.isSome(nextPair)) yield* checkKeyMode(paths.nextKey)
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
      digest: digestOf([
        cert,
        Redacted.value(key),
        ...Option.toArray(next),
        ...previous.map((p) => `${p.retiredAt.toISOString()}${p.pem}`)
      ])
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
export const openCa = (
  options: StoreOptions
): Effect.Effect<CaMaterial, CaInvalid | CertificateStoreError | SigningFailed> =>
  loadCa(caSourceOf(options.settings), options)

export const loadCa = (source: CaSource, options: StoreOptions) => {
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
        const authority = yield* loadAuthority({
          certPem: root.certPem,
          certFile: "<memory>",
          keyPem: root.keyPem,
          keyFile: "<memory>"
        })
        return {
          authority,
          active: root.certPem,
          next: Option.none(),
          previous: [],
          external: false,
          digest: "ephemeral"
        }
      })
  }
}

/** Roots to trust now: active, next, and retired roots whose certificates may still be alive. */
export const bundleOf = (material: CaMaterial, now: number, workloadTtlMillis: number): TrustBundle => {
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

/** Where `writeIdentityFiles` put an identity. */
export interface IdentityFilePaths {
  readonly cert: string
  readonly key: string
  readonly ca: string
}

/** Writes cert.pem (chain), key.pem (0600) and ca.pem (bundle) into `out`, each atomically (rename), key first. */
export const writeIdentityFiles = (
  out: string,
  identity: IssuedCertificate,
  bundlePem: string
): Effect.Effect<IdentityFilePaths, CertificateStoreError> =>
  Effect.gen(function*() {
    const paths = filesIn(out)
    const dir = paths.directory
    yield* Effect.mapError(AtomicFile.createDir(dir, 0o700), asStoreError)
    const files = { cert: paths.certificateChain, key: paths.privateKey, ca: paths.trustedCa }
    yield* writeAtomic(files.key, Redacted.value(identity.keyPem), { mode: 0o600, replace: true })
    yield* writeAtomic(files.cert, identity.chainPem, { mode: 0o644, replace: true })
    yield* writeAtomic(files.ca, bundlePem, { mode: 0o644, replace: true })
    return files
  })
