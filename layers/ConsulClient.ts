/**
 * The `consul` npm client, wrapped once for every layer that talks to Consul: construction from
 * the config (address, datacenter, TLS, the ACL token from the environment), interruption that
 * aborts the HTTP request, a typed error, and the retry schedule every call uses.
 */
import type Consul from "consul"
import {
  Clock,
  Config as EffectConfig,
  Context,
  Data,
  Duration,
  Effect,
  Either,
  Layer,
  Option,
  Redacted,
  Ref,
  Schedule,
  type Scope,
  Stream
} from "effect"
import { EventEmitter } from "node:events"
import * as NodeFs from "node:fs"
import * as Http from "node:http"
import * as Https from "node:https"
import * as NodePath from "node:path"
import type { ConsulSettings } from "../schemas/Config.js"
import { advance, parseIndex, rateLimitDelay } from "../src/discovery/ConsulIndex.js"
import { loadOrCreateControllerId } from "./internal/ControllerId.js"
import { consulErrors, consulUp } from "./internal/DiscoveryMetrics.js"
import { LiveConfig } from "./LiveConfig.js"

export class ConsulUnavailable extends Data.TaggedError("ConsulUnavailable")<{
  readonly operation: string
  readonly cause: unknown
}> {
  /** The reason without anything from the request (headers carry the token). */
  get reason(): string {
    const cause = this.cause as {
      message?: unknown
      code?: unknown
      statusCode?: unknown
      response?: { statusCode?: number }
    }
    const status = cause?.response?.statusCode ?? cause?.statusCode
    const text = typeof cause?.message === "string" ? cause.message.split("\n")[0] : String(this.cause)
    return `${this.operation}: ${status !== undefined ? `HTTP ${status}: ` : ""}${text}`
  }
}

/** The ACL token: from the environment only, never the config file, and never logged. */
export const consulToken = EffectConfig.option(
  EffectConfig.redacted("CONSUL_HTTP_TOKEN").pipe(
    EffectConfig.withDescription("Consul ACL token sent with every request")
  )
)

export interface RetryOptions {
  /** First delay after a failure. */
  readonly base?: Duration.DurationInput
  /** Longest delay between two attempts. */
  readonly cap?: Duration.DurationInput
}

/** Capped, jittered exponential backoff; never gives up (callers bound it where they must). */
export const retrySchedule = (options: RetryOptions = {}): Schedule.Schedule<unknown, unknown> =>
  Schedule.exponential(options.base ?? Duration.millis(200), 2).pipe(
    Schedule.union(Schedule.spaced(options.cap ?? Duration.seconds(10))),
    Schedule.jittered
  )

/** The response half of a call made with `includeResponse`. */
export interface ConsulResponse {
  readonly statusCode?: number
  readonly headers: Readonly<Record<string, string | ReadonlyArray<string> | undefined>>
}

/** papi aborts a request when its `ctx` emitter fires `cancel`; `includeResponse` returns `[res, body]`. */
type CallContext = EventEmitter & { includeResponse: true }

export interface ConsulConnection {
  readonly consul: Consul
  readonly address: string
  /** Runs one request; interrupting the fiber aborts it. */
  readonly call: <A>(
    operation: string,
    request: (ctx: CallContext) => Promise<A>
  ) => Effect.Effect<A, ConsulUnavailable>
  /** Like `call`, with the response (for `X-Consul-Index`). */
  readonly callWithResponse: <A>(
    operation: string,
    request: (ctx: CallContext) => Promise<unknown>
  ) => Effect.Effect<readonly [ConsulResponse, A], ConsulUnavailable>
}

const readPem = (path: string | undefined, what: string) =>
  path === undefined
    ? Effect.succeed(undefined)
    : Effect.try({
      try: () => NodeFs.readFileSync(path),
      catch: (cause) => new ConsulUnavailable({ operation: `read TLS ${what} ${path}`, cause })
    })

/** A connection to the configured agent; its keep-alive sockets close with the scope. */
export const makeConsulConnection = (
  settings: ConsulSettings
): Effect.Effect<ConsulConnection, ConsulUnavailable, Scope.Scope> =>
  Effect.gen(function*() {
    const token = yield* Effect.orDie(consulToken)
    const url = new URL(settings.address)
    const secure = url.protocol === "https:"
    const tls = settings.tls
    const ca = yield* readPem(tls?.caFile, "CA")
    const cert = yield* readPem(tls?.certFile, "certificate")
    const key = yield* readPem(tls?.keyFile, "key")
    const agent = secure
      ? new Https.Agent({
        keepAlive: true,
        ...(ca ? { ca } : {}),
        ...(cert ? { cert } : {}),
        ...(key ? { key } : {}),
        ...(tls?.serverName ? { servername: tls.serverName } : {}),
        rejectUnauthorized: !(tls?.insecureSkipVerify ?? false)
      })
      : new Http.Agent({ keepAlive: true })
    // Loaded here, not with the module: a mesh without `discovery.consul` never pays for the client.
    const { default: ConsulAgentClient } = yield* Effect.promise(() => import("consul"))
    const consul = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new ConsulAgentClient({
          host: url.hostname,
          port: Number(url.port || (secure ? 443 : 80)),
          secure,
          agent,
          defaults: {
            ...(settings.datacenter ? { dc: settings.datacenter } : {}),
            ...(Option.isSome(token) ? { token: Redacted.value(token.value) } : {})
          }
        })
      ),
      (consul) => Effect.sync(() => consul.destroy())
    )
    const run = <A>(operation: string, request: (ctx: CallContext) => Promise<A>) =>
      Effect.tryPromise({
        try: (signal) => {
          const ctx = Object.assign(new EventEmitter(), { includeResponse: true as const })
          signal.addEventListener("abort", () => ctx.emit("cancel"), { once: true })
          return request(ctx)
        },
        catch: (cause) => new ConsulUnavailable({ operation, cause })
      }).pipe(
        Effect.tapBoth({
          onFailure: () =>
            Effect.sync(() => {
              consulErrors.inc({ operation })
              consulUp.set(0)
            }),
          onSuccess: () => Effect.sync(() => consulUp.set(1))
        })
      )
    return {
      consul,
      address: settings.address,
      // With `includeResponse` the client resolves `[res, body]`; `call` returns the body only.
      call: <A>(operation: string, request: (ctx: CallContext) => Promise<A>) =>
        Effect.map(run(operation, request as (ctx: CallContext) => Promise<unknown>), (result) =>
          (result as readonly [unknown, A])[1]),
      callWithResponse: <A>(operation: string, request: (ctx: CallContext) => Promise<unknown>) =>
        run(operation, request) as Effect.Effect<readonly [ConsulResponse, A], ConsulUnavailable>
    }
  })

/** What a blocking query adds to a client call: the index rules' `index`, the `wait`, and a client-side deadline. */
export interface BlockingQuery {
  readonly index: string
  readonly wait: string
  /** Milliseconds; the client gives up a little after the server should have answered. */
  readonly timeout: number
}

export interface BlockingWatchOptions<A> {
  readonly name: string
  readonly wait: Duration.Duration
  /** Consul's rate-limit rule: queries start at most this often. */
  readonly minInterval: Duration.DurationInput
  /** Retries of a failed query (never ending). */
  readonly schedule: Schedule.Schedule<unknown, unknown>
  readonly query: (blocking: BlockingQuery) => (ctx: unknown) => Promise<unknown>
  readonly decode: (body: unknown) => Either.Either<A, string>
  /** Called with each answer that carries a new index. */
  readonly onChange: (value: A) => Effect.Effect<void>
  readonly onError: (error: ConsulUnavailable) => Effect.Effect<void>
  readonly onSuccess: Effect.Effect<void>
}

/**
 * One blocking-query watch, for ever: the index rules of src/discovery/ConsulIndex.ts, failed
 * queries retried on `schedule`, and an answer that does not decode reported and asked again
 * (keeping the index, so that state is not skipped).
 */
export const blockingWatch = <A>(client: ConsulConnection, options: BlockingWatchOptions<A>): Effect.Effect<never> =>
  Effect.gen(function*() {
    const wait = Duration.toMillis(options.wait)
    const minInterval = Duration.toMillis(options.minInterval)
    const timeout = Math.ceil(wait + wait / 16 + 5_000)
    let index = 0n
    let lastStart = 0
    for (;;) {
      const delay = rateLimitDelay(lastStart, yield* Clock.currentTimeMillis, minInterval)
      if (delay > 0) yield* Effect.sleep(Duration.millis(delay))
      lastStart = yield* Clock.currentTimeMillis
      const blocking: BlockingQuery = { index: index.toString(), wait: `${wait}ms`, timeout }
      // The schedule never ends, so the retried call cannot fail (orDie only fixes the type).
      const [response, body] = yield* client.callWithResponse<unknown>(
        options.name,
        (ctx) => options.query(blocking)(ctx)
      ).pipe(
        Effect.tapError(options.onError),
        Effect.retry(options.schedule),
        Effect.orDie
      )
      yield* options.onSuccess
      const step = advance(index, parseIndex(response.headers["x-consul-index"]))
      if (!step.changed) {
        index = step.next
        continue
      }
      const decoded = options.decode(body)
      if (Either.isLeft(decoded)) {
        yield* options.onError(
          new ConsulUnavailable({ operation: options.name, cause: new Error(`unexpected answer: ${decoded.left}`) })
        )
        yield* Effect.sleep(Duration.seconds(1))
        continue
      }
      index = step.next
      yield* options.onChange(decoded.right)
    }
  })

/** What `/status` shows about the Consul client. */
export interface ConsulClientStatus {
  readonly enabled: boolean
  readonly address: string | null
  /** `discovery.consul` in the config now differs from the settings the client was built with. */
  readonly restartRequired: boolean
  /** What this controller's Consul registrations name it (`mesh-controller-id` meta); null: none. */
  readonly controllerId: string | null
}

const sameSettings = (a: ConsulSettings | undefined, b: ConsulSettings | undefined) =>
  JSON.stringify(a) === JSON.stringify(b)

/**
 * The one Consul client of the process, shared by Discovery, ConsulRegistration and
 * ConsulPolicies (one keep-alive agent, one read of the TLS files). It is built once from
 * `discovery.consul` at start, so this is also the one place that knows a reload changing that
 * section takes effect only at the next restart: it says so in the log and in `status`.
 */
export class ConsulClient extends Context.Tag("mesh-controller/ConsulClient")<
  ConsulClient,
  {
    /** The settings the connection was built with; None without a `discovery.consul` section. */
    readonly settings: Option.Option<ConsulSettings>
    readonly connection: Option.Option<ConsulConnection>
    /**
     * This controller's ID (see internal/ControllerId.ts), with a connection from
     * `layerWithControllerId` only: Discovery and ConsulRegistration mark what they register with
     * it, so it is read once, here.
     */
    readonly controllerId: Option.Option<string>
    readonly status: Effect.Effect<ConsulClientStatus>
  }
>() {
  /**
   * From `discovery.consul` of the config at start, without a controller ID: the registration API
   * stays in this process's memory and anti-entropy removes only unattributed instances (what a
   * library user or a test composing a few layers gets; nothing is written to disk).
   */
  static readonly layer: Layer.Layer<ConsulClient, never, LiveConfig> = Layer.scoped(
    ConsulClient,
    Effect.suspend(() => make(false))
  )

  /**
   * The daemon's: as `layer`, with the controller ID kept in the state dir (`controller-id` in
   * `certificates.dir`, made on first start). With it, registration API changes are written
   * through to Consul's catalog and what this controller registers names it.
   */
  static readonly layerWithControllerId: Layer.Layer<ConsulClient, never, LiveConfig> = Layer.scoped(
    ConsulClient,
    Effect.suspend(() => make(true))
  )

  /** No Consul, whatever the config says. */
  static readonly layerNone: Layer.Layer<ConsulClient> = Layer.succeed(
    ConsulClient,
    ConsulClient.of({
      settings: Option.none(),
      connection: Option.none(),
      controllerId: Option.none(),
      status: Effect.succeed({ enabled: false, address: null, restartRequired: false, controllerId: null })
    })
  )
}

const make = (withControllerId: boolean) =>
  Effect.gen(function*() {
    const config = yield* LiveConfig
    const loaded = (yield* config.get).config
    const settings = loaded.discovery.consul
    const connection = settings === undefined ? undefined : yield* makeConsulConnection(settings).pipe(
      Effect.tapError((error) => Effect.logError("cannot create the Consul client", error.reason)),
      Effect.orDie
    )
    const controllerId = connection === undefined || !withControllerId
      ? undefined
      : yield* loadOrCreateControllerId(NodePath.resolve(loaded.certificates.dir)).pipe(
        Effect.tapError((error) => Effect.logError("cannot read or make the controller ID", error.message)),
        Effect.orDie
      )
    const restartRequired = yield* Ref.make(false)
    // Every value is compared with the settings in force (not "every value after the first"), so
    // a reload that lands before this fiber subscribes is not lost.
    yield* config.changes.pipe(
      Stream.runForEach((loaded) =>
        Effect.gen(function*() {
          const changed = !sameSettings(loaded.config.discovery.consul, settings)
          const before = yield* Ref.getAndSet(restartRequired, changed)
          if (changed && !before) {
            yield* Effect.logWarning("discovery.consul changed in the config; it takes effect at the next restart")
          } else if (!changed && before) {
            yield* Effect.logInfo("discovery.consul is back to the settings in force; no restart needed")
          }
        })
      ),
      Effect.annotateLogs({ module: "consul" }),
      Effect.forkScoped
    )
    return ConsulClient.of({
      settings: Option.fromNullable(settings),
      connection: Option.fromNullable(connection),
      controllerId: Option.fromNullable(controllerId),
      status: Effect.map(Ref.get(restartRequired), (restart) => ({
        enabled: settings !== undefined,
        address: settings?.address ?? null,
        restartRequired: restart,
        controllerId: controllerId ?? null
      }))
    })
  }).pipe(Effect.annotateLogs({ module: "consul" }))
