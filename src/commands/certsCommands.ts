/**
 * The command line of `certs issue`, `ca show` and `ca rotate [--activate]`: their options and
 * help, and nothing of the CA. The code runs from certs.ts and ca.ts, imported when a command runs,
 * so `--help` does not load the x509 stack, Consul's client or the config loader.
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { Effect } from "effect"

const certsCode = () => import("./certs.js")
const caCode = () => import("./ca.js")

/** `ca show` and `ca rotate`, around the CLI's `--config` option. */
export const makeCaCommand = (configOption: Options.Options<string>) => {
  const show = Command.make(
    "show",
    { config: configOption },
    ({ config }) => Effect.flatMap(Effect.promise(caCode), ({ showCommand }) => showCommand(config))
  ).pipe(
    Command.withDescription("Print every root in the trust bundle: subject, SHA-256 fingerprint, validity.")
  )

  const rotate = Command.make(
    "rotate",
    {
      config: configOption,
      activate: Options.boolean("activate").pipe(
        Options.withDescription("Step 2: make the new root the signer (run once every workload trusts it).")
      )
    },
    ({ activate, config }) =>
      Effect.flatMap(Effect.promise(caCode), ({ rotateCommand }) => rotateCommand(config, activate))
  ).pipe(Command.withDescription("Rotate the mesh root in two steps: introduce a new root, then --activate it."))

  return Command.make("ca").pipe(
    Command.withDescription("The mesh certificate authority."),
    Command.withSubcommands([show, rotate])
  )
}

/**
 * The `certs` and `ca` commands, built around the CLI's own `--config` option (so they share its
 * alias and $MESH_CONFIG fallback without importing the CLI module).
 */
export const makeCertsCommands = (configOption: Options.Options<string>) => {
  const issue = Command.make(
    "issue",
    {
      config: configOption,
      service: Options.text("service").pipe(
        Options.withDescription(
          "The service the certificate is for (its SPIFFE ID is spiffe://<trustDomain>/service/<NAME>)."
        )
      ),
      out: Options.directory("out", { exists: "either" }).pipe(
        Options.withDescription("Where to write cert.pem, key.pem (0600) and ca.pem.")
      ),
      allowUnknown: Options.boolean("allow-unknown-service").pipe(
        Options.withDescription(
          "Issue even when the config does not list the service (e.g. one registered only in Consul)."
        )
      )
    },
    (args) => Effect.flatMap(Effect.promise(certsCode), ({ issueCommand }) => issueCommand(args))
  ).pipe(
    Command.withDescription(
      "Issue a workload certificate into files (for a workload that reads them, e.g. a proxyless gRPC client)."
    )
  )

  return {
    certs: Command.make("certs").pipe(
      Command.withDescription("Workload certificates."),
      Command.withSubcommands([issue])
    ),
    ca: makeCaCommand(configOption)
  }
}
