/**
 * `certs issue`, `ca show`, `ca rotate [--activate]`: the mesh CA from the command line. Each reads
 * the same `--config FILE` as `run` and acts on the same CA (directory or operator files).
 */
import { Command, Options } from "@effect/cli"
import { Console, Effect, Either, Schema } from "effect"
import type { StoreSettings, TrustBundle } from "../../layers/Certificates.js"
import { ServiceName } from "../../schemas/Config.js"
import { CaOperationRefused } from "../certs/Errors.js"

// The CA and the config loader are imported when a command runs, not when the CLI starts (start-up).
const certificates = Effect.promise(() => import("../../layers/Certificates.js"))

const settingsFrom = (configPath: string) =>
  Effect.promise(() => import("../../layers/LiveConfig.js")).pipe(
    Effect.flatMap(({ loadFile }) => loadFile(configPath)),
    Effect.map(({ config }): StoreSettings => ({ settings: config.certificates, meshName: config.mesh.name, trustDomain: config.mesh.trustDomain }))
  )

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

/**
 * The `certs` and `ca` commands, built around the CLI's own `--config` option (so they share its
 * alias and $MESH_CONFIG fallback without importing the CLI module).
 */
export const makeCertsCommands = (configOption: Options.Options<string>) => {
  const issue = Command.make(
    "issue",
    {
      config: configOption,
      service: Options.text("service").pipe(Options.withDescription("The service the certificate is for (its SPIFFE ID is spiffe://<trustDomain>/service/<NAME>).")),
      out: Options.directory("out", { exists: "either" }).pipe(Options.withDescription("Where to write cert.pem, key.pem (0600) and ca.pem."))
    },
    ({ config, out, service }) =>
      Effect.gen(function*() {
        const name = yield* Either.match(Schema.decodeEither(ServiceName)(service), {
          onLeft: () =>
            Effect.fail(new CaOperationRefused({ reason: `--service: expected a service name (lowercase letters, digits and '-'), got ${JSON.stringify(service)}` })),
          onRight: Effect.succeed
        })
        const { issueToFiles } = yield* certificates
        const issued = yield* issueToFiles(yield* settingsFrom(config), name, out)
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
  ).pipe(Command.withDescription("Issue a workload certificate into files (for a workload that reads them, e.g. a proxyless gRPC client)."))

  const show = Command.make("show", { config: configOption }, ({ config }) =>
    Effect.flatMap(settingsFrom(config), (settings) => Effect.flatMap(certificates, (ca) => ca.showRoots(settings))).pipe(Effect.flatMap((bundle) => Console.log(formatRoots(bundle))))
  ).pipe(Command.withDescription("Print every root in the trust bundle: subject, SHA-256 fingerprint, validity."))

  const rotate = Command.make(
    "rotate",
    {
      config: configOption,
      activate: Options.boolean("activate").pipe(
        Options.withDescription("Step 2: make the new root the signer (run once every workload trusts it).")
      )
    },
    ({ activate, config }) =>
      Effect.gen(function*() {
        const settings = yield* settingsFrom(config)
        const { activateRoot, introduceRoot } = yield* certificates
        if (activate) {
          const root = yield* activateRoot(settings)
          yield* Console.log(
            `activated ${root.subject} (${root.fingerprint}).\nThe running controller re-issues every workload certificate on its next check; the previous root stays trusted for one workload TTL.`
          )
        } else {
          const root = yield* introduceRoot(settings)
          yield* Console.log(
            `introduced ${root.subject} (${root.fingerprint}): trusted, not yet signing.\nOnce every workload has the new trust bundle (a few check intervals), run \`ca rotate --activate\`.`
          )
        }
      })
  ).pipe(Command.withDescription("Rotate the mesh root in two steps: introduce a new root, then --activate it."))

  return {
    certs: Command.make("certs").pipe(Command.withDescription("Workload certificates."), Command.withSubcommands([issue])),
    ca: Command.make("ca").pipe(Command.withDescription("The mesh certificate authority."), Command.withSubcommands([show, rotate]))
  }
}
