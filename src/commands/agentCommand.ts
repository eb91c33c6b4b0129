/**
 * The command line of `agent`: its options and help. The code (layers/Agent.ts: the signing
 * client, the certificate files, the gRPC bootstrap) is agent.ts, imported when the command runs,
 * so `--help` does not load it.
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { Effect } from "effect"
import * as NodeOs from "node:os"

export const agentCommand = Command.make(
  "agent",
  {
    controller: Options.text("controller").pipe(
      Options.withDescription("HOST:PORT of the controller's signing service (port 15012 by default there).")
    ),
    tokenFile: Options.file("token-file").pipe(
      Options.optional,
      Options.withDescription("The join token (needed once: later starts reuse the certificate in --dir).")
    ),
    dir: Options.directory("dir", { exists: "either" }).pipe(
      Options.withDescription("Where cert.pem, key.pem (0600) and ca.pem are kept.")
    ),
    service: Options.text("service").pipe(
      Options.optional,
      Options.withDescription("The service this host is (checked against the token).")
    ),
    instance: Options.text("instance").pipe(
      Options.withDefault(NodeOs.hostname()),
      Options.withDescription("This host's instance name (node id <service>~<instance>).")
    ),
    admin: Options.text("admin").pipe(
      Options.withDefault("127.0.0.1:15021"),
      Options.withDescription("The agent's /healthz and /metrics (HOST:PORT; port 0 picks one).")
    ),
    xds: Options.text("xds").pipe(
      Options.optional,
      Options.withDescription(
        "HOST:PORT of the controller's xDS server for the gRPC bootstrap (default: the controller's host, port 15010)."
      )
    ),
    xdsTls: Options.boolean("xds-tls").pipe(
      Options.withDescription("Proxyless apps dial xDS over mTLS with these files (controller.xds.tls: mtls).")
    ),
    bootstrap: Options.text("grpc-bootstrap").pipe(
      Options.optional,
      Options.withDescription("Where to write the gRPC xDS bootstrap (default: DIR/grpc-bootstrap.json).")
    ),
    envoy: Options.boolean("envoy").pipe(
      Options.withDescription(
        "Also run the local Envoy once the certificate is held: its bootstrap reaches --xds over mTLS with these " +
          "files (file-based SDS, so renewals need no restart); needs --xds-tls. Envoy stops when the agent stops."
      )
    ),
    envoyPath: Options.text("envoy-path").pipe(
      Options.withDefault("envoy"),
      Options.withDescription("The Envoy binary (with --envoy).")
    ),
    envoyAdmin: Options.text("envoy-admin").pipe(
      Options.withDefault("127.0.0.1:15000"),
      Options.withDescription("Envoy's admin address (HOST:PORT; port 0 picks one).")
    ),
    envoyDir: Options.text("envoy-dir").pipe(
      Options.optional,
      Options.withDescription("Where Envoy's bootstrap and SDS files go (default: envoy/ beside --dir).")
    ),
    retryMax: Options.text("retry-max").pipe(
      Options.withDefault("30s"),
      Options.withDescription("The longest wait between retries when the controller is unreachable.")
    ),
    bundleInterval: Options.text("bundle-interval").pipe(
      Options.withDefault("30s"),
      Options.withDescription("How often the trust bundle is re-read (root rotation).")
    )
  },
  (flags) => Effect.flatMap(Effect.promise(() => import("./agent.js")), ({ runAgent }) => runAgent(flags))
).pipe(Command.withDescription("Keep this host's mesh identity: join with a token, then renew at half life over mTLS."))
