/**
 * `token create | list | revoke`: join tokens for new hosts (src/tokens/Token.ts). They act on the
 * token store of the config's state (`<certificates.dir>/tokens`), which the running controller
 * reads on every redemption, so no restart is needed. The command line itself (options, help) is
 * in tokenCommand.ts, which loads this module when a command runs.
 */
import { Clock, Console, Effect, Logger, LogLevel, Option, Schema } from "effect"
import type { ConsulUnavailable } from "../../layers/ConsulClient.js"
import { openCa } from "../../layers/internal/CaStore.js"
import type { ConsulCaStore } from "../../layers/internal/ConsulCaStore.js"
import { consulTokenStore } from "../../layers/internal/ConsulTokenStore.js"
import { fileTokenStore, tokenDirectory, type TokenStore } from "../../layers/internal/TokenStore.js"
import { loadFile } from "../../layers/LiveConfig.js"
import type { MeshConfig } from "../../schemas/Config.js"
import { parseDurationMillis } from "../../schemas/Duration.js"
import type { CaInvalid, CaOperationRefused } from "../certs/Errors.js"
import {
  formatToken,
  hashSecret,
  newTokenSecrets,
  recordState,
  rootFingerprintHex,
  type TokenRecord
} from "../tokens/Token.js"
import { withConsulStore } from "./ca.js"
import { serviceArg } from "./ServiceArg.js"

/** Bad command-line input: one line, exit 1. */
export class TokenUsageError
  extends Schema.TaggedError<TokenUsageError>()("TokenUsageError", { reason: Schema.String })
{
  override get message(): string {
    return this.reason
  }
}

const INSTANCE = /^[A-Za-z0-9._-]{1,63}$/

const configOf = (path: string) => Effect.map(loadFile(path), ({ config }) => config)

/**
 * The token store the config names, with whatever `more` reads from the CA: the files under
 * `certificates.dir`, or Consul's KV beside the shared CA with `certificates.store: consul`.
 */
const stores = <A, E>(
  mesh: MeshConfig,
  inConsul: (store: ConsulCaStore) => Effect.Effect<A, E | ConsulUnavailable>,
  onDisk: () => Effect.Effect<A, E>
): Effect.Effect<A & { readonly store: TokenStore }, E | CaInvalid | CaOperationRefused> =>
  mesh.certificates.store === "consul" && mesh.certificates.ca === undefined
    ? withConsulStore(
      mesh,
      (ca, client) =>
        Effect.map(inConsul(ca), (more) => ({ ...more, store: consulTokenStore(client, ca.keys.prefix, ca.kek) }))
    )
    : Effect.map(onDisk(), (more) => ({ ...more, store: fileTokenStore(tokenDirectory(mesh.certificates.dir)) }))

export const formatRecords = (records: ReadonlyArray<TokenRecord>, now: number): string =>
  records.length === 0
    ? "no tokens"
    : [
      ["ID", "SERVICE", "INSTANCE", "EXPIRES", "USES LEFT", "STATE"].join("\t"),
      ...records.map((r) =>
        [r.id, r.service, r.instance ?? "-", r.expiresAt, String(Math.max(0, r.uses - r.used)), recordState(r, now)]
          .join("\t")
      )
    ].join("\n")

/**
 * A new join token for one host of `service`, recorded in the config's token store (which the
 * running controller reads on every redemption). The CA is made here on first use, as `certs
 * issue` does: the token must pin a root. `token create` prints it; `demo` hands it to its agents.
 */
export const issueJoinToken = (
  mesh: MeshConfig,
  request: {
    readonly service: string
    readonly instance?: string | undefined
    readonly ttlMillis: number
    readonly uses: number
  }
) =>
  Effect.gen(function*() {
    const { ca, store } = yield* stores(mesh, (store) => Effect.map(store.read, (ca) => ({ ca })), () =>
      Effect.map(
        // Its log line is kept off stdout, which holds the token alone (`token create ... > token`).
        openCa({
          settings: mesh.certificates,
          meshName: mesh.mesh.name,
          trustDomain: mesh.mesh.trustDomain,
          create: true
        }).pipe(Logger.withMinimumLogLevel(LogLevel.Warning)),
        (ca) => ({ ca })
      ))
    const now = yield* Clock.currentTimeMillis
    const { id, secret } = newTokenSecrets()
    yield* store.create({
      id,
      service: request.service,
      instance: request.instance,
      createdAt: new Date(now).toISOString(),
      expiresAt: new Date(now + request.ttlMillis).toISOString(),
      uses: request.uses,
      used: 0,
      secretHash: hashSecret(secret)
    })
    return formatToken(yield* store.macKey, { id, secret, rootFingerprint: rootFingerprintHex(ca.authority.rootPem) })
  })

/** What `token create` is given on the command line. */
export interface CreateArgs {
  readonly config: string
  readonly service: string
  readonly ttl: string
  readonly uses: number
  readonly instance: Option.Option<string>
}

/** `token create`: checks the flags, records a new token and prints it (alone on stdout). */
export const createCommand = ({ config, instance, service, ttl, uses }: CreateArgs) =>
  Effect.gen(function*() {
    const name = yield* serviceArg(service, (reason) => new TokenUsageError({ reason }))
    const ttlMillis = Option.getOrUndefined(parseDurationMillis(ttl))
    if (ttlMillis === undefined || ttlMillis <= 0) {
      return yield* new TokenUsageError({
        reason: `--ttl: expected a duration such as 30m or 1h, got ${JSON.stringify(ttl)}`
      })
    }
    if (!Number.isInteger(uses) || uses < 1) {
      return yield* new TokenUsageError({ reason: `--uses: expected a whole number of at least 1, got ${uses}` })
    }
    const inst = Option.getOrUndefined(instance)
    if (inst !== undefined && !INSTANCE.test(inst)) {
      return yield* new TokenUsageError({
        reason: `--instance: expected 1-63 of [A-Za-z0-9._-], got ${JSON.stringify(inst)}`
      })
    }
    const mesh = yield* configOf(config)
    // stdout holds the token alone, so `token create ... > token` works.
    yield* Console.log(yield* issueJoinToken(mesh, { service: name, instance: inst, ttlMillis, uses }))
  })

/** `token list`: every token of the config's store, never a secret. */
export const listCommand = (config: string) =>
  Effect.gen(function*() {
    const mesh = yield* configOf(config)
    const records = yield* stores(mesh, () => Effect.succeed({}), () => Effect.succeed({})).pipe(
      Effect.flatMap(({ store }) => store.list)
    )
    yield* Console.log(formatRecords(records, yield* Clock.currentTimeMillis))
  })

/** `token revoke ID`. */
export const revokeCommand = (config: string, id: string) =>
  Effect.gen(function*() {
    const mesh = yield* configOf(config)
    const { store } = yield* stores(mesh, () => Effect.succeed({}), () => Effect.succeed({}))
    const record = yield* store.revoke(id, new Date(yield* Clock.currentTimeMillis))
    yield* Console.log(`revoked token ${record.id} (service ${record.service})`)
  })
