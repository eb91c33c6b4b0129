/**
 * `certs issue`, `ca show`, `ca rotate [--activate]`: the mesh CA from the command line. Each reads
 * the same `--config FILE` as `run` and acts on the same CA (directory or operator files). The
 * command line itself (options, help) is in certsCommands.ts, which loads this module when a
 * command runs.
 */
import { Clock, Console, Duration, Effect } from "effect"
import * as NodeFs from "node:fs/promises"
import { issueIdentity, type WorkloadIdentity } from "../../layers/Certificates.js"
import {
  bundleOf,
  type IdentityFilePaths,
  openCa,
  type StoreSettings,
  writeIdentityFiles
} from "../../layers/internal/CaStore.js"
import { loadFile } from "../../layers/LiveConfig.js"
import { type CaInvalid, CaOperationRefused, type CertificateStoreError, type SigningFailed } from "../certs/Errors.js"
import { storeSettingsOf } from "./ca.js"
import { serviceArg } from "./ServiceArg.js"

export { formatRoots } from "./ca.js"

/** The files `certs issue` writes. */
export interface IssuedFiles extends IdentityFilePaths {
  readonly identity: WorkloadIdentity
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

/**
 * A warning when others may write into `out`: whoever can replace cert.pem or ca.pem there
 * decides what the workload trusts (a sticky bit does not help against a file planted first).
 */
const worldWritable = (out: string): Effect.Effect<string | undefined> =>
  Effect.promise(() => NodeFs.stat(out).then((stat) => stat.mode, () => 0)).pipe(
    Effect.map((mode) =>
      (mode & 0o002) === 0
        ? undefined
        : `warning: ${out} is world-writable (mode 0${(mode & 0o7777).toString(8)}): anyone on this host can replace ` +
          `the certificate or the trust bundle there; use a directory only the workload's user can write (chmod o-w ${out})`
    )
  )

/** What `certs issue` is given on the command line. */
export interface IssueArgs {
  readonly config: string
  readonly service: string
  readonly out: string
  readonly allowUnknown: boolean
}

/** `certs issue`: checks the service name against the config, issues into `out`, prints what it wrote. */
export const issueCommand = ({ allowUnknown, config, out, service }: IssueArgs) =>
  Effect.gen(function*() {
    const name = yield* serviceArg(service, (reason) => new CaOperationRefused({ reason }))
    const { config: mesh } = yield* loadFile(config)
    // A typo would otherwise mint a valid identity nobody expects (and the CA cannot take it back).
    // An admin identity (controller.admin.adminIdentities) is known too: its certificate is for curl.
    const known = mesh.services.some((s) => s.name === name) || mesh.controller.admin.adminIdentities.includes(name)
    if (!allowUnknown && !known) {
      const listed = mesh.services.map((s) => s.name)
      return yield* new CaOperationRefused({
        reason: `--service ${name}: ${config} lists no such service` +
          (listed.length === 0 ? "" : ` (it lists: ${listed.join(", ")})`) +
          `; add it to services, or pass --allow-unknown-service to issue anyway`
      })
    }
    const issued = yield* issueToFiles(storeSettingsOf(mesh), name, out)
    const warning = yield* worldWritable(out)
    if (warning !== undefined) yield* Console.error(warning)
    yield* Console.log(
      [
        `issued ${issued.identity.spiffeId}`,
        `  serial: ${issued.identity.serial}`,
        `  valid until: ${issued.identity.notAfter.toISOString()} (renew by ${issued.identity.renewAt.toISOString()})`,
        `  ${issued.cert}`,
        `  ${issued.key} (0600)`,
        `  ${issued.ca}`
      ].join("\n")
    )
  })
