import { Context, Duration, Effect, Layer, Option, Ref, Schedule, Stream } from "effect"
import {
  checkId,
  isRegistered,
  registerOptions,
  type Registration,
  registrationsOf,
  removableByAntiEntropy
} from "../src/discovery/Consul.js"
import { type EndpointHealth, endpointKey } from "../src/MeshState.js"
import { ConsulClient, type RetryOptions, retrySchedule } from "./ConsulClient.js"
import { Health, type HealthView } from "./Health.js"
import { registered, restoredTotal } from "./internal/DiscoveryMetrics.js"
import { LiveConfig } from "./LiveConfig.js"

/**
 * Registers the services marked `register` (they run on this host) with the local Consul agent,
 * keeps them there, and removes them on shutdown.
 *
 * - Checks: `consul` mode hands the service's healthCheck to the agent; `ttl` mode registers a TTL
 *   check and reports the controller's own probe results (Health.changes) to it.
 * - Anti-entropy: every `discovery.consul.antiEntropyInterval` the agent's services are compared
 *   with what the config asks for; missing ones are registered again (an agent restart forgets
 *   them), stale ones this controller registered from its config are removed (never another
 *   controller's, never an API registration: see `removableByAntiEntropy`), and TTL checks are
 *   refreshed.
 *
 * A separate layer from Discovery because it needs Health, and Health needs Discovery.
 * Without a `discovery.consul` section it does nothing.
 */
export class ConsulRegistration extends Context.Tag("mesh-controller/ConsulRegistration")<
  ConsulRegistration,
  {
    /** Runs one anti-entropy round now. */
    readonly sync: Effect.Effect<void>
    readonly status: Effect.Effect<RegistrationStatus>
  }
>() {
  static readonly layer = (
    options: RegistrationOptions = {}
  ): Layer.Layer<ConsulRegistration, never, LiveConfig | Health | ConsulClient> =>
    Layer.scoped(ConsulRegistration, make(options).pipe(Effect.annotateLogs({ module: "consul" })))
}

/** What `/status` shows under `consulRegistration`. */
export type RegistrationStatus =
  | { readonly enabled: false }
  | {
    readonly enabled: true
    readonly address: string
    readonly antiEntropyInterval: string
    readonly lastSyncAt: string | null
    readonly lastError: string | null
    readonly registrations: ReadonlyArray<{
      readonly id: string
      readonly service: string
      readonly address: string
      readonly port: number
      // The check the agent runs (http, tcp, grpc), a TTL the controller reports to, or none.
      readonly check: "http" | "tcp" | "grpc" | "ttl" | "none"
      readonly registered: boolean
      readonly registeredAt: string | null
      readonly restored: number
      readonly reported: EndpointHealth | null
      readonly lastError: string | null
    }>
  }

export interface RegistrationOptions {
  readonly retry?: RetryOptions
  /** Upper bound of deregistration at shutdown (default 5s). */
  readonly shutdownTimeout?: Duration.DurationInput
}

interface Entry {
  readonly registered: boolean
  readonly registeredAt: Date | null
  readonly restored: number
  /** The TTL status last reported (null: nothing reported since the last registration). */
  readonly reported: EndpointHealth | null
  readonly lastError: string | null
}

const blank: Entry = { registered: false, registeredAt: null, restored: 0, reported: null, lastError: null }

type AgentServices = Record<
  string,
  {
    readonly Service?: string
    readonly Address?: string
    readonly Port?: number
    readonly Meta?: Record<string, string>
  }
>

const healthOf = (view: HealthView, registration: Registration): EndpointHealth =>
  view.get(registration.service)?.get(endpointKey(registration)) ?? "unknown"

const make = (options: RegistrationOptions) =>
  Effect.gen(function*() {
    const config = yield* LiveConfig
    const health = yield* Health
    const consulClient = yield* ConsulClient
    const loaded = yield* config.get
    if (Option.isNone(consulClient.settings) || Option.isNone(consulClient.connection)) {
      return ConsulRegistration.of({ sync: Effect.void, status: Effect.succeed({ enabled: false }) })
    }
    const settings = consulClient.settings.value
    const client = consulClient.connection.value
    const controllerId = Option.getOrUndefined(consulClient.controllerId)
    const schedule = retrySchedule(options.retry)
    // `schedule` never ends, so a call retried on it cannot fail (orDie only fixes the type).
    const persist = <A, E>(effect: Effect.Effect<A, E>) => effect.pipe(Effect.retry(schedule), Effect.orDie)
    const attempts = Schedule.intersect(schedule, Schedule.recurs(3))
    const desired = yield* Ref.make(registrationsOf(loaded.config, settings.antiEntropyInterval, controllerId))
    const meshName = yield* Ref.make(loaded.config.mesh.name)
    const entries = yield* Ref.make<ReadonlyMap<string, Entry>>(new Map())
    const view = yield* Ref.make<HealthView>(new Map())
    const lastSync = yield* Ref.make<{ readonly at: Date | null; readonly error: string | null }>({
      at: null,
      error: null
    })
    const lock = yield* Effect.makeSemaphore(1)

    const setEntry = (id: string, f: (entry: Entry) => Entry) =>
      Ref.update(entries, (all) => new Map(all).set(id, f(all.get(id) ?? blank)))
    const noteError = (id: string) => (error: { readonly reason: string }) =>
      setEntry(id, (e) => ({ ...e, lastError: error.reason }))

    const listAgent = client.call<AgentServices>("agent.service.list", (ctx) =>
      client.consul.agent.service.list({ ctx } as object))
    const registerOne = (registration: Registration) =>
      client.call(`agent.service.register ${registration.id}`, (ctx) =>
        client.consul.agent.service.register({ ...registerOptions(registration), ctx } as { name: string }))
    const deregisterOne = (id: string) =>
      client.call(`agent.service.deregister ${id}`, (ctx) =>
        client.consul.agent.service.deregister({ id, ctx } as { id: string }))

    const report = (registration: Registration, status: EndpointHealth) => {
      const id = checkId(registration)
      const note = `mesh-controller probe: ${status}`
      const call = status === "healthy"
        ? client.call(`agent.check.pass ${id}`, (ctx) =>
          client.consul.agent.check.pass({ id, note, ctx } as { id: string }))
        : status === "unhealthy"
        ? client.call(`agent.check.fail ${id}`, (ctx) =>
          client.consul.agent.check.fail({ id, note, ctx } as { id: string }))
        : client.call(`agent.check.warn ${id}`, (ctx) =>
          client.consul.agent.check.warn({ id, note, ctx } as { id: string }))
      return call.pipe(
        Effect.tapError(noteError(registration.id)),
        Effect.retry(Schedule.intersect(schedule, Schedule.recurs(2))),
        Effect.zipRight(setEntry(registration.id, (e) => ({ ...e, reported: status, lastError: null }))),
        Effect.catchAll((error) =>
          Effect.logWarning("cannot report a TTL check to Consul", error.reason)
        )
      )
    }

    /** Reports TTL checks whose status changed (or all of them, to refresh their TTL). */
    const reportTtl = (all: boolean) =>
      Effect.gen(function*() {
        const current = yield* Ref.get(view)
        const known = yield* Ref.get(entries)
        for (const registration of yield* Ref.get(desired)) {
          if (registration.check?.kind !== "ttl") {
            continue
          }
          const entry = known.get(registration.id)
          if (!entry?.registered) {
            continue
          }
          const status = healthOf(current, registration)
          if (all || entry.reported !== status) {
            yield* report(registration, status)
          }
        }
      })

    const sync = lock.withPermits(1)(
      Effect.gen(function*() {
        const wanted = yield* Ref.get(desired)
        const owner = yield* Ref.get(meshName)
        let failures = 0
        const present = yield* persist(listAgent.pipe(
          Effect.tapError((error) =>
            Ref.update(lastSync, (s) => ({ ...s, error: error.reason }))
          )
        ))
        for (const registration of wanted) {
          if (isRegistered(registration, present)) {
            yield* setEntry(
              registration.id,
              (e) => (e.registered ? e : { ...e, registered: true, registeredAt: new Date() })
            )
            continue
          }
          const before = (yield* Ref.get(entries)).get(registration.id)
          // A refusal (an ACL, a definition the agent rejects) must not hold up the others: a few
          // attempts now, then the next round.
          const done = yield* registerOne(registration).pipe(
            Effect.tapError(noteError(registration.id)),
            Effect.retry(attempts),
            Effect.as(true),
            Effect.catchAll((error) =>
              Effect.as(Effect.logWarning("cannot register with Consul; trying again next round", error.reason), false)
            )
          )
          if (!done) {
            failures++
            continue
          }
          const restored = before?.registered === true
          if (restored) {
            restoredTotal.inc()
            yield* Effect.logWarning("Consul had lost a registration; registered it again").pipe(
              Effect.annotateLogs({ id: registration.id })
            )
          }
          yield* setEntry(registration.id, (e) => ({
            ...e,
            registered: true,
            registeredAt: new Date(),
            restored: e.restored + (restored ? 1 : 0),
            reported: null,
            lastError: null
          }))
        }
        const wantedIds = new Set(wanted.map((r) =>
          r.id
        ))
        for (const [id, service] of Object.entries(present)) {
          if (!removableByAntiEntropy(service.Meta, { mesh: owner, controllerId }) || wantedIds.has(id)) {
            continue
          }
          const removed = yield* deregisterOne(id).pipe(
            Effect.retry(attempts),
            Effect.as(true),
            Effect.orElseSucceed(() =>
              false
            )
          )
          if (!removed) {
            failures++
          } else {yield* Ref.update(entries, (all) =>
              new Map([...all].filter(([key]) =>
                key !== id
              )))}
        }
        yield* reportTtl(true)
        yield* Ref.set(lastSync, {
          at: new Date(),
          error: failures === 0 ? null : `${failures} registration change(s) failed; see registrations`
        })
        registered.set([...(yield* Ref.get(entries)).values()].filter((e) => e.registered).length)
      })
    )

    // Deregistration on shutdown, bounded; added before the fibers start so it runs after they stop.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        const ids = [...(yield* Ref.get(entries))].filter(([, e]) => e.registered).map(([id]) => id)
        yield* Effect.forEach(ids, (id) =>
          deregisterOne(id).pipe(
            Effect.retry(
              Schedule.intersect(
                retrySchedule({ base: Duration.millis(100), cap: Duration.millis(500) }),
                Schedule.recurs(2)
              )
            ),
            Effect.catchAll((error) => Effect.logWarning("cannot deregister from Consul at shutdown", error.reason))
          ), { concurrency: 8, discard: true })
        registered.set(0)
      }).pipe(Effect.timeoutOption(options.shutdownTimeout ?? Duration.seconds(5)))
    )

    const interval = settings.antiEntropyInterval
    yield* sync.pipe(
      Effect.zipRight(Effect.sleep(interval)),
      Effect.forever,
      Effect.forkScoped
    )
    yield* config.changes.pipe(
      Stream.drop(1),
      Stream.runForEach((next) =>
        Effect.gen(function*() {
          // TTLs follow the interval the rounds run at, which is fixed at start.
          yield* Ref.set(desired, registrationsOf(next.config, interval, controllerId))
          yield* Ref.set(meshName, next.config.mesh.name)
          yield* sync
        })
      ),
      Effect.forkScoped
    )
    // Only the latest view matters: while Consul is slow, older ones are dropped, not queued.
    yield* health.changes.pipe(
      Stream.buffer({ capacity: 1, strategy: "sliding" }),
      Stream.runForEach((next) => Ref.set(view, next).pipe(Effect.zipRight(lock.withPermits(1)(reportTtl(false))))),
      Effect.forkScoped
    )

    return ConsulRegistration.of({
      sync,
      status: Effect.gen(function*() {
        const known = yield* Ref.get(entries)
        const last = yield* Ref.get(lastSync)
        return {
          enabled: true as const,
          address: settings.address,
          antiEntropyInterval: Duration.format(interval),
          lastSyncAt: last.at?.toISOString() ?? null,
          lastError: last.error,
          registrations: (yield* Ref.get(desired)).map((r) => {
            const entry = known.get(r.id) ?? blank
            return {
              id: r.id,
              service: r.service,
              address: r.address,
              port: r.port,
              check: r.check?.kind ?? "none",
              registered: entry.registered,
              registeredAt: entry.registeredAt?.toISOString() ?? null,
              restored: entry.restored,
              reported: entry.reported,
              lastError: entry.lastError
            }
          })
        }
      })
    })
  })
