import {
  Cause,
  Clock,
  Context,
  DefaultServices,
  Duration,
  Effect,
  FiberMap,
  Layer,
  RcMap,
  Ref,
  type Scope,
  Stream,
  SubscriptionRef
} from "effect"
import type { HealthCheck } from "../schemas/Config.js"
import { formatDuration } from "../schemas/Duration.js"
import { type EndpointState, initialState, type ProbeResult, step, type Transition } from "../src/health/HealthState.js"
import { availability, type HealthView, routing, sameView } from "../src/health/Routing.js"
import { type EndpointHealth, endpointKey, type Service } from "../src/MeshState.js"
import { Discovery } from "./Discovery.js"
import {
  failingProbe,
  grpcProbeStart,
  httpProbeStart,
  makeGrpcPool,
  type ProbeStart,
  type ProbeTarget,
  tcpProbeStart
} from "./HealthProbes.js"
import * as Coalesce from "./internal/Coalesce.js"
import {
  endpointsByState,
  metricsOfType,
  probeLag,
  probesMissed,
  servicePanic,
  transitions
} from "./internal/HealthMetrics.js"
import { ProbeSlots } from "./internal/ProbeSlots.js"
import { layerUp } from "./Metrics.js"

export type { HealthView } from "../src/health/Routing.js"

/** One endpoint as `/status` shows it. */
export interface EndpointStatus {
  readonly endpoint: string
  readonly health: EndpointHealth
  /** When `health` took its current value (ISO 8601). */
  readonly since: string
  readonly consecutiveSuccesses: number
  readonly consecutiveFailures: number
  /** Probes skipped because no slot of the global bound freed up before the next one was due. */
  readonly missedProbes: number
  /** When probing began (ISO 8601): the window `unhealthyMs` covers. */
  readonly trackedSince: string
  /** Milliseconds spent unhealthy since `trackedSince`, the current spell included. */
  readonly unhealthyMs: number
  /** The last transitions (at most `MAX_FLIPS`), oldest first: a history longer than `history`'s probes. */
  readonly transitions: ReadonlyArray<
    { readonly at: string; readonly from: EndpointHealth; readonly to: EndpointHealth }
  >
  /** The last `historySize` results, oldest first. */
  readonly history: ReadonlyArray<{
    readonly at: string
    readonly ok: boolean
    readonly latencyMs: number
    readonly lagMs: number
    readonly error?: string
  }>
}

export interface ServiceStatus {
  readonly name: string
  readonly failMode: "open" | "closed"
  readonly check: Readonly<Record<string, unknown>>
  readonly available: boolean
  /** Every endpoint unhealthy: routed to all (failMode open) or none (closed). */
  readonly panic: boolean
  readonly endpoints: ReadonlyArray<EndpointStatus>
}

export interface HealthStatus {
  readonly checks: "on" | "off"
  readonly maxConcurrentProbes?: number
  /** Probe fibers running (one per checked endpoint). */
  readonly probes?: number
  readonly probesInFlight?: number
  /** Probes waiting for a slot of the global bound (at most one per endpoint). */
  readonly probesWaiting?: number
  /** Probes skipped since start: no slot freed up before the endpoint's next probe was due. */
  readonly probesMissed?: number
  /** Open gRPC health-check channels (one per gRPC target). */
  readonly grpcChannels?: number
  readonly services: ReadonlyArray<ServiceStatus>
}

/**
 * Active health checking of every endpoint whose service has a `healthCheck`.
 *
 * Endpoints start "unknown" and are routed to until a threshold decides (see
 * src/health/HealthState.ts). Availability of a service (what grpc.health.v1 on the controller
 * reports): at least one endpoint is healthy or unknown; a service with no endpoints, or whose
 * endpoints are all unhealthy (panic), is unavailable.
 */
export class Health extends Context.Tag("mesh-controller/Health")<
  Health,
  {
    readonly view: Effect.Effect<HealthView>
    /** The current view first, then every change (transitions, endpoints added or removed). */
    readonly changes: Stream.Stream<HealthView>
    /** service name → available, for every service Discovery knows. */
    readonly availability: Effect.Effect<ReadonlyMap<string, boolean>>
    readonly status: Effect.Effect<HealthStatus>
  }
>() {
  /** Probes the endpoints Discovery reports; probes start and stop as endpoints come and go. */
  static readonly layer = (options: HealthOptions = {}): Layer.Layer<Health, never, Discovery> =>
    Layer.scoped(Health, make(options).pipe(Effect.annotateLogs({ module: "health" })))

  /** A fixed view for tests; `SubscriptionRef.set` on the ref changes it. */
  static readonly layerMemory = (ref: SubscriptionRef.SubscriptionRef<HealthView>): Layer.Layer<Health> =>
    Layer.succeed(
      Health,
      Health.of({
        view: SubscriptionRef.get(ref),
        changes: ref.changes,
        availability: Effect.map(
          SubscriptionRef.get(ref),
          (view) =>
            new Map(
              [...view].map(([service, endpoints]) => [service, [...endpoints.values()].some((h) => h !== "unhealthy")])
            )
        ),
        status: Effect.succeed({ checks: "off", services: [] })
      })
    )

  /** No checks: every endpoint stays "unknown" (and is routed to). */
  static readonly layerNoop: Layer.Layer<Health> = Layer.succeed(
    Health,
    Health.of({
      view: Effect.succeed(new Map()),
      changes: Stream.make(new Map()),
      availability: Effect.succeed(new Map()),
      status: Effect.succeed({ checks: "off", services: [] })
    })
  )
}

export interface HealthOptions {
  /** Probes in flight at once, across all endpoints (default 64). */
  readonly maxConcurrentProbes?: number
  /** Results kept per endpoint (default 10). */
  readonly historySize?: number
  /** Each interval is varied by up to ± this fraction, so probes spread out (default 0.1). */
  readonly jitter?: number
  /** Start each endpoint's first probe at a random point within its first interval (default true). */
  readonly spreadStart?: boolean
  /**
   * The mesh CA (PEM) for `https` checks with `trustMeshCa`; an effect is read at every probe so a
   * rotated CA is picked up. Without it such checks fail with a reason saying so.
   */
  readonly meshCa?: string | Effect.Effect<string>
  /** The cap on grpc-js reconnect backoff for health-check channels (default 1s). */
  readonly grpcMaxReconnectBackoff?: Duration.DurationInput
}

// ---------------------------------------------------------------------------------------------
// the live layer
// ---------------------------------------------------------------------------------------------

interface Entry {
  readonly service: string
  readonly endpoint: string
  state: EndpointState
  missed: number
  readonly trackedSince: number
  /** Time spent unhealthy in spells that ended (the current one is added when read). */
  unhealthyMs: number
  readonly flips: Array<{ readonly at: number; readonly from: EndpointHealth; readonly to: EndpointHealth }>
}

/** Transitions kept per endpoint for the status page's timeline (a flapping endpoint stays bounded). */
const MAX_FLIPS = 20

interface Probe {
  readonly key: string
  readonly service: Service
  readonly target: ProbeTarget
  readonly check: HealthCheck
}

/** The least time between two publishes of transitions (see the publisher in `make`). */
const PUBLISH_SPACING = Duration.millis(50)

const checkJson = (check: HealthCheck): Readonly<Record<string, unknown>> =>
  Object.fromEntries(
    Object.entries(check).map(([k, v]) => [k, Duration.isDuration(v) ? formatDuration(v) : v])
  )

/** A changed check definition is a different key, so its probe restarts with the new settings. */
const probeKey = (service: string, endpoint: string, check: HealthCheck): string =>
  `${service} ${endpoint} ${JSON.stringify(checkJson(check))}`

const desiredProbes = (services: ReadonlyArray<Service>): Map<string, Probe> => {
  const probes = new Map<string, Probe>()
  for (const service of services) {
    const check = service.healthCheck
    if (check === undefined) continue
    for (const endpoint of service.endpoints) {
      const key = probeKey(service.name, endpointKey(endpoint), check)
      probes.set(key, { key, service, target: { address: endpoint.address, port: endpoint.port }, check })
    }
  }
  return probes
}

export const make = (
  options: HealthOptions
): Effect.Effect<Context.Tag.Service<Health>, never, Discovery | Scope.Scope> =>
  Effect.gen(function*() {
    const discovery = yield* Discovery
    const maxConcurrent = Math.max(1, options.maxConcurrentProbes ?? 64)
    const historySize = Math.max(0, options.historySize ?? 10)
    const jitter = Math.min(0.5, Math.max(0, options.jitter ?? 0.1))
    const spreadStart = options.spreadStart ?? true
    const meshCa: Effect.Effect<string | undefined> = options.meshCa === undefined
      ? Effect.succeed(undefined)
      : typeof options.meshCa === "string"
      ? Effect.succeed(options.meshCa)
      : options.meshCa

    const clock = yield* Effect.clock
    // The live clock sleeps with setTimeout: a probe cycle may then wait for its due time with a
    // timer of its own (see `cycle`); any other clock (a TestClock) is slept on as a service.
    const liveClock = clock === Context.get(DefaultServices.liveServices, Clock.Clock)
    const slots = new ProbeSlots(maxConcurrent, () => clock.unsafeCurrentTimeMillis())
    let missedTotal = 0
    const grpcPool = yield* makeGrpcPool({
      maxReconnectBackoff: Duration.decode(options.grpcMaxReconnectBackoff ?? Duration.seconds(1))
    })
    const fibers = yield* FiberMap.make<string>()
    const services = yield* Ref.make<ReadonlyArray<Service>>([])
    const view = yield* SubscriptionRef.make<HealthView>(new Map())
    // Every probe result updates its entry; with a thousand endpoints probed each second, copying
    // an immutable map per result would cost more than the probes. The map is only touched inside
    // Effect.sync, so each update is atomic.
    const entries = new Map<string, Entry>()
    let panicking = new Set<string>()

    const computeView = (): HealthView => {
      const next = new Map<string, Map<string, EndpointHealth>>()
      for (const entry of entries.values()) {
        let endpoints = next.get(entry.service)
        if (endpoints === undefined) next.set(entry.service, endpoints = new Map())
        endpoints.set(entry.endpoint, entry.state.health)
      }
      return next
    }

    /** Publishes the view if it changed; refreshes gauges and logs panic changes. */
    const publish = Effect.gen(function*() {
      const next = computeView()
      const current = yield* SubscriptionRef.get(view)
      if (!sameView(current, next)) yield* SubscriptionRef.set(view, next)
      const counts: Record<EndpointHealth, number> = { healthy: 0, unhealthy: 0, unknown: 0 }
      for (const entry of entries.values()) counts[entry.state.health]++
      for (const [state, n] of Object.entries(counts)) endpointsByState.set({ state }, n)
      const known = yield* Ref.get(services)
      const nowPanicking = new Set<string>()
      servicePanic.reset()
      for (const service of known) {
        if (service.healthCheck === undefined) continue
        const decision = routing(service, next)
        servicePanic.set({ service: service.name, fail_mode: service.failMode }, decision.panic ? 1 : 0)
        if (decision.panic) nowPanicking.add(service.name)
      }
      for (const name of nowPanicking) {
        if (!panicking.has(name)) {
          const failMode = known.find((s) => s.name === name)?.failMode ?? "open"
          yield* Effect.logWarning(
            failMode === "open"
              ? "every endpoint is unhealthy; failing open (routing to all of them)"
              : "every endpoint is unhealthy; failing closed (routing to none)"
          ).pipe(Effect.annotateLogs({ service: name, failMode }))
        }
      }
      for (const name of panicking) {
        if (!nowPanicking.has(name)) {
          yield* Effect.logInfo("service has a routable endpoint again").pipe(Effect.annotateLogs({ service: name }))
        }
      }
      panicking = nowPanicking
    })

    const missed = (probe: Probe) => {
      missedTotal++
      probesMissed.inc()
      const entry = entries.get(probe.key)
      if (entry !== undefined) entry.missed++
    }

    // The state step is synchronous; only a transition (rare) needs the logging effects of `announce`.
    const record = (probe: Probe, result: ProbeResult): Effect.Effect<void> | undefined => {
      const entry = entries.get(probe.key)
      if (entry === undefined) return undefined
      const before = entry.state
      const { state, transition } = step(before, result, probe.check, historySize)
      entry.state = state
      if (transition === undefined) return undefined
      if (transition.from === "unhealthy") entry.unhealthyMs += Math.max(0, result.at - before.since)
      entry.flips.push({ at: result.at, from: transition.from, to: transition.to })
      if (entry.flips.length > MAX_FLIPS) entry.flips.shift()
      return announce(probe, entry, result, transition)
    }

    const announce = (probe: Probe, entry: Entry, result: ProbeResult, transition: Transition) =>
      Effect.gen(function*() {
        transitions.inc({ from: transition.from, to: transition.to })
        const log = transition.to === "unhealthy" ? Effect.logWarning : Effect.logInfo
        yield* log("endpoint health changed").pipe(
          Effect.annotateLogs({
            service: probe.service.name,
            endpoint: entry.endpoint,
            from: transition.from,
            to: transition.to,
            ...(result.error !== undefined ? { error: result.error } : {})
          })
        )
        yield* publisher.signal
      })

    /**
     * The probe of one endpoint, ready to start: the same ProbeStart every time, or (an https check
     * that trusts the mesh CA) an effect that reads the CA at every probe, so a rotated CA is picked
     * up. A gRPC probe takes its target's pooled channel here, once, in the probe loop's scope: the
     * channel lives as long as some probe uses it.
     */
    const prepare = (probe: Probe): Effect.Effect<ProbeStart | Effect.Effect<ProbeStart>, never, Scope.Scope> => {
      const check = probe.check
      switch (check.type) {
        case "tcp":
          return Effect.succeed(tcpProbeStart(probe.target, check.timeout))
        case "http":
          return Effect.succeed(
            check.https && check.trustMeshCa
              ? Effect.map(meshCa, (ca) =>
                ca === undefined
                  ? failingProbe("trustMeshCa is set but no mesh CA is available to the health checker")
                  : httpProbeStart(probe.target, check, ca))
              : httpProbeStart(probe.target, check, undefined)
          )
        case "grpc":
          return Effect.map(RcMap.get(grpcPool, endpointKey(probe.target)), (client) => grpcProbeStart(client, check))
      }
    }

    // The metric children of each check type, looked up once.
    const typeMetrics = new Map<HealthCheck["type"], ReturnType<typeof metricsOfType>>()
    const metricsOf = (type: HealthCheck["type"]) => {
      let found = typeMetrics.get(type)
      if (found === undefined) typeMetrics.set(type, found = metricsOfType(type))
      return found
    }

    const RECORDED = Effect.succeed(true)
    const MISSED = Effect.succeed(false)

    /**
     * One probe of the global bound's slots, from waiting for a slot to the recorded result, as a
     * single async step: `true` once the result is recorded, `false` when no slot freed up before
     * `deadline` (the endpoint's next probe is due by then; counted as missed). This runs a
     * thousand times a second: a slot, a probe, its timing and the state step are plain callbacks
     * here (each Effect step allocates, and what a fiber holds across its wait is promoted to the
     * old generation). Interrupted, it withdraws from the queue, or closes its probe's socket or
     * call and gives its slot back.
     */
    const cycle = (probe: Probe, start: ProbeStart, scheduledAt: number, deadline: number) =>
      Effect.async<boolean>((resume) => {
        let held = false
        let close: (() => void) | undefined
        let withdraw: (() => void) | undefined
        let timer: ReturnType<typeof setTimeout> | undefined
        const take = () => {
          timer = undefined
          withdraw = slots.request(deadline, onGrant)
        }
        const onGrant = (granted: boolean) => {
          if (!granted) {
            missed(probe)
            return resume(MISSED)
          }
          held = true
          const startNanos = clock.unsafeCurrentTimeNanos()
          const at = clock.unsafeCurrentTimeMillis()
          const lagMs = Math.max(0, at - scheduledAt)
          const closeProbe = start((failure) => {
            held = false
            close = undefined
            slots.release()
            const latencyMs = Number(clock.unsafeCurrentTimeNanos() - startNanos) / 1e6
            const metrics = metricsOf(probe.check.type)
            ;(failure === undefined ? metrics.success : metrics.failure).inc()
            metrics.latency.observe(latencyMs / 1000)
            probeLag.observe(lagMs / 1000)
            const announced = record(
              probe,
              failure === undefined
                ? { at, ok: true, latencyMs, lagMs }
                : { at, ok: false, latencyMs, lagMs, error: failure.reason }
            )
            resume(announced === undefined ? RECORDED : Effect.as(announced, true))
          })
          // A probe may settle before `start` returns (a check that cannot run).
          if (held) close = closeProbe
        }
        // On the live clock the wait for the due time is this step's own timer (the live clock's
        // sleep is the same setTimeout): one fiber resumption per probe instead of two.
        const wait = scheduledAt - clock.unsafeCurrentTimeMillis()
        if (wait > 0) timer = setTimeout(take, wait)
        else take()
        return Effect.sync(() => {
          if (timer !== undefined) clearTimeout(timer)
          withdraw?.()
          if (held) {
            held = false
            close?.()
            close = undefined
            slots.release()
          }
        })
      })

    /**
     * The probe loop of one endpoint, at a fixed rate: the next probe is due one (jittered)
     * interval after the previous was due, not after it finished, so slow probes do not drift the
     * schedule; a probe that overran its slot is followed at once by the next. A probe still
     * waiting for a slot of the global bound when the next one falls due is skipped (counted as
     * missed), so an overloaded controller drops ticks rather than queue them.
     */
    const probeLoop = (probe: Probe): Effect.Effect<never> =>
      Effect.gen(function*() {
        const prepared = yield* prepare(probe)
        // The same probe every time (not one that reads the mesh CA each time): on the live clock
        // `cycle` waits for the due time itself.
        const fixed = !Effect.isEffect(prepared)
        const random = yield* Effect.random
        const interval = Duration.toMillis(probe.check.interval)
        let due = clock.unsafeCurrentTimeMillis() + (spreadStart ? yield* random.nextRange(0, interval) : 0)
        while (true) {
          const now = clock.unsafeCurrentTimeMillis()
          // The layer's clock, not Effect.sleep: the same clock (a TestClock in tests) with fewer
          // effects held across the wait, which outlive young-generation GCs at this rate.
          if (due > now && !(fixed && liveClock)) yield* clock.sleep(Duration.millis(due - now))
          const next = due + (jitter === 0 ? interval : interval * (yield* random.nextRange(1 - jitter, 1 + jitter)))
          const recorded = yield* cycle(probe, fixed ? prepared : yield* prepared, due, next)
          due = recorded ? Math.max(next, clock.unsafeCurrentTimeMillis()) : next
        }
      }).pipe(
        Effect.scoped,
        Effect.tapErrorCause((cause) =>
          Cause.isInterruptedOnly(cause)
            ? Effect.void
            : Effect.logError("health probe loop died", cause).pipe(Effect.annotateLogs({ probe: probe.key }))
        )
      )

    /** Starts probes for new endpoints and stops those of endpoints (or checks) that went away. */
    const reconcile = (next: ReadonlyArray<Service>) =>
      Effect.gen(function*() {
        yield* Ref.set(services, next)
        const desired = desiredProbes(next)
        const stale = [...entries.keys()].filter((key) => !desired.has(key))
        // Interrupting waits for each probe to finish its cleanup (socket destroyed, call cancelled).
        yield* Effect.forEach(stale, (key) => FiberMap.remove(fibers, key), { discard: true, concurrency: "unbounded" })
        for (const key of stale) entries.delete(key)
        const now = yield* Clock.currentTimeMillis
        const started: Array<Probe> = []
        for (const [key, probe] of desired) {
          if (entries.has(key)) continue
          entries.set(key, {
            service: probe.service.name,
            endpoint: endpointKey(probe.target),
            state: initialState(now),
            missed: 0,
            trackedSince: now,
            unhealthyMs: 0,
            flips: []
          })
          started.push(probe)
        }
        yield* Effect.forEach(started, (probe) => FiberMap.run(fibers, probe.key, probeLoop(probe)), { discard: true })
        yield* publish
      })

    // Transitions come in bursts (a thousand endpoints turn healthy within one interval at start,
    // a shared dependency fails): they are coalesced, and after each publish the publisher rests
    // PUBLISH_SPACING, so a burst costs a few O(endpoints) rebuilds (and a few view changes for
    // subscribers) instead of one per transition: at 1,000 endpoints one rebuild per transition
    // held the event loop long enough to delay probes by a whole interval. A lone transition is
    // still published at once. The rest is wall-clock time (it bounds CPU, not anything on the
    // probe schedule), so it does not wait for a TestClock.
    const publisher = yield* Coalesce.make(publish, { rest: PUBLISH_SPACING, clock: Clock.make() })

    yield* Effect.acquireRelease(
      Effect.sync(() => layerUp.set({ layer: "health" }, 1)),
      () => Effect.sync(() => layerUp.set({ layer: "health" }, 0))
    )
    // The first reconcile happens before the layer is ready, so `view` is complete from the start.
    // The watch then sees the current services again (reconciling is idempotent): dropping that
    // first element would lose a change made between the read above and the subscription.
    yield* reconcile(yield* discovery.services)
    yield* discovery.changes.pipe(Stream.runForEach(reconcile), Effect.forkScoped)

    const serviceStatus = (service: Service, check: HealthCheck, current: HealthView, now: number): ServiceStatus => {
      const decision = routing(service, current)
      const byEndpoint = new Map<string, Entry>()
      for (const [key, entry] of entries) {
        if (entry.service === service.name && key === probeKey(service.name, entry.endpoint, check)) {
          byEndpoint.set(entry.endpoint, entry)
        }
      }
      return {
        name: service.name,
        failMode: service.failMode,
        check: checkJson(check),
        available: decision.available,
        panic: decision.panic,
        endpoints: service.endpoints.flatMap((endpoint) => {
          const entry = byEndpoint.get(endpointKey(endpoint))
          if (entry === undefined) return []
          return [{
            endpoint: entry.endpoint,
            health: entry.state.health,
            since: new Date(entry.state.since).toISOString(),
            consecutiveSuccesses: entry.state.successes,
            consecutiveFailures: entry.state.failures,
            missedProbes: entry.missed,
            trackedSince: new Date(entry.trackedSince).toISOString(),
            unhealthyMs: entry.unhealthyMs +
              (entry.state.health === "unhealthy" ? Math.max(0, now - entry.state.since) : 0),
            transitions: entry.flips.map((f) => ({ at: new Date(f.at).toISOString(), from: f.from, to: f.to })),
            history: entry.state.history.map((r) => ({
              at: new Date(r.at).toISOString(),
              ok: r.ok,
              latencyMs: Math.round(r.latencyMs * 1000) / 1000,
              lagMs: Math.round(r.lagMs),
              ...(r.error !== undefined ? { error: r.error } : {})
            }))
          }]
        })
      }
    }

    const status: Effect.Effect<HealthStatus> = Effect.gen(function*() {
      const known = yield* Ref.get(services)
      const current = yield* SubscriptionRef.get(view)
      const now = yield* Clock.currentTimeMillis
      return {
        checks: "on" as const,
        maxConcurrentProbes: maxConcurrent,
        probes: yield* FiberMap.size(fibers),
        probesInFlight: slots.inFlight,
        probesWaiting: slots.waiting,
        probesMissed: missedTotal,
        grpcChannels: (yield* RcMap.keys(grpcPool)).length,
        services: known.flatMap((service) =>
          service.healthCheck === undefined ? [] : [serviceStatus(service, service.healthCheck, current, now)]
        )
      }
    })

    return Health.of({
      view: SubscriptionRef.get(view),
      changes: view.changes,
      availability: Effect.zipWith(Ref.get(services), SubscriptionRef.get(view), availability),
      status
    })
  })
