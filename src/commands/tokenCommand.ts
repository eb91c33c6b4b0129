/**
 * The command line of `token create | list | revoke`: options and help. The code (the token
 * stores, the CA they pin) is token.ts, imported when a command runs, so `--help` does not load it.
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { Effect } from "effect"

const code = () => import("./token.js")

export const makeTokenCommand = (configOption: Options.Options<string>) => {
  const create = Command.make(
    "create",
    {
      config: configOption,
      service: Options.text("service").pipe(
        Options.withDescription("The service the new host will be (its certificate names it).")
      ),
      ttl: Options.text("ttl").pipe(
        Options.withDefault("1h"),
        Options.withDescription("How long the token is valid (e.g. 30m, 1h).")
      ),
      uses: Options.integer("uses").pipe(
        Options.withDefault(1),
        Options.withDescription("How many hosts may join with it.")
      ),
      instance: Options.text("instance").pipe(
        Options.optional,
        Options.withDescription("Bind the token to one instance name.")
      )
    },
    (args) => Effect.flatMap(Effect.promise(code), ({ createCommand }) => createCommand(args))
  ).pipe(
    Command.withDescription("Print a join token for one new host of a service (single-use and expiring by default).")
  )

  const list = Command.make(
    "list",
    { config: configOption },
    ({ config }) => Effect.flatMap(Effect.promise(code), ({ listCommand }) => listCommand(config))
  ).pipe(Command.withDescription("List join tokens: id, service, expiry, uses left (never the secret)."))

  const revoke = Command.make(
    "revoke",
    {
      config: configOption,
      id: Args.text({ name: "ID" }).pipe(Args.withDescription("The token's id (from `token list`)."))
    },
    ({ config, id }) => Effect.flatMap(Effect.promise(code), ({ revokeCommand }) => revokeCommand(config, id))
  ).pipe(Command.withDescription("Revoke a join token: it buys no further certificate."))

  return Command.make("token").pipe(
    Command.withDescription("Join tokens: how a new host gets its first certificate (see `agent`)."),
    Command.withSubcommands([create, list, revoke])
  )
}
