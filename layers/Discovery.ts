import {
  Clock,
  Context,
  Duration,
  Effect,
  Either,
  FiberMap,
  Layer,
  Option,
  Ref,
  Schedule,
  type Scope,
  Stream,
  SubscriptionRef
} from "effect"
import * as NodeDns from "node:dns"
import type { ConsulSettings } from "../schemas/Config.js"
import {
  type CatalogServices,
  decodeCatalogServices,
  decodeHealthService,
  SOURCE_META
} from "../src/discovery/Consul.js"
import { HostExpansion, isConsulName } from "../src/discovery/Dns.js"
import {
  type ApiRegistration,
  type ConsulService,
  mergeRegistry,
  RegistryMerger,
  sameServices
} from "../src/discovery/Merge.js"
import {
  type RegistrationLimits,
  type RegistrationRefused,
  RegistrationStore
} from "../src/discovery/RegistrationStore.js"
import {
  changedSince,
  endpointKey,
  findByName,
  type RegistrySource,
  type Service,
  servicesFromConfig
} from "../src/MeshState.js"
import {
  type BlockingQuery,
  blockingWatch,
  ConsulClient,
  type ConsulConnection,
  type ConsulUnavailable,
  type RetryOptions,
  retrySchedule
} from "./ConsulClient.js"
import * as Coalesce from "./internal/Coalesce.js"
import * as ConsulApiRegistrations from "./internal/ConsulApiRegistrations.js"
import { dnsFailures, servicesBySource, syncLag, watchUpdates } from "./internal/DiscoveryMetrics.js"
import { LiveConfig } from "./LiveConfig.js"

export type { ApiRegistration } from "../src/discovery/Merge.js"
export { type RegistrationLimits, RegistrationRefused } from "../src/discovery/RegistrationStore.js"

/**
 * The one place that knows the mesh's services and their endpoints. Everything downstream (health
 * checks, the snapshot) reads services from here, never from the config directly.
 *
 * Sources, merged with the precedence **config file > registration API > Consul** (see
 * `mergeRegistry` in src/discovery/Merge.ts): a service's attributes come from the highest source
 * that defines it, its endpoints are the union of all sources (a duplicate `address:port` takes the
 * higher source's entry). Host-name addresses are resolved before they reach `changes`.
 */
export class Discovery extends Context.Tag("mesh-controller/Discovery")<
  Discovery,
  {
    readonly services: Effect.Effect<ReadonlyArray<Service>>
    /** The current services first, then every change. */
    readonly changes: Stream.Stream<ReadonlyArray<Service>>
    readonly status: Effect.Effect<DiscoveryStatus>
    /**
     * Adds (or replaces) an endpoint registered at run time; kept across config reloads. With
     * `limits`, a registration that would break one is refused and changes nothing. With Consul,
     * it is written through to the catalog first (see internal/ConsulApiRegistrations.ts): what
     * Consul does not take is refused, and what it takes outlives this controller. The change
     * reaches `services` and `changes` shortly after (publishes are coalesced, so a burst of
     * registrations costs a few merges, not one per registration).
     */
    readonly register: (
      registration: ApiRegistration,
      limits?: RegistrationLimits
    ) => Effect.Effect<void, RegistrationRefused>
    /**
     * Removes a runtime registration; false when there was none. LiveConfig and Consul entries are
     * untouched. With Consul, the registration leaves the catalog too (refused, with nothing
     * changed, when Consul does not take it).
     */
    readonly deregister: (
      service: string,
      address: string,
      port: number
    ) => Effect.Effect<boolean, RegistrationRefused>
    readonly registrations: Effect.Effect<ReadonlyArray<ApiRegistration>>
  }
>() {
  /**
   * Services from the config file and the registration API, plus Consul when the shared
   * ConsulClient has a connection (built from `discovery.consul` at start; see ConsulClient).
   */
  static readonly layer = (options: DiscoveryOptions = {}): Layer.Layer<Discovery, never, LiveConfig | ConsulClient> =>
    Layer.scoped(
      Discovery,
      Effect.flatMap(ConsulClient, (client) => make(options, client)).pipe(Effect.annotateLogs({ module: "discovery" }))
    )

  /** The embedded registry only (config file + registration API), whatever the config says about Consul. */
  static readonly layerEmbedded: Layer.Layer<Discovery, never, LiveConfig> = Layer.scoped(
    Discovery,
    Effect.suspend(() => make({}, undefined)).pipe(Effect.annotateLogs({ module: "discovery" }))
  )

  /** A fixed registry for tests; `SubscriptionRef.set` on the returned ref changes it. */
  static readonly layerMemory = (
    ref: SubscriptionRef.SubscriptionRef<ReadonlyArray<Service>>
  ): Layer.Layer<Discovery> =>
    Layer.succeed(
      Discovery,
      Discovery.of({
        services: SubscriptionRef.get(ref),
        changes: ref.changes,
        status: Effect.succeed({ source: "memory" }),
        register: (registration) =>
          SubscriptionRef.update(ref, (services) => mergeRegistry(services, [registration], new Map())),
        deregister: (service, address, port) =>
          SubscriptionRef.modify(ref, (services) => {
            const key = endpointKey({ address, port })
            let found = false
            const next = services.map((s) =>
              s.name !== service ? s : {
                ...s,
                endpoints: s.endpoints.filter((e) => {
                  const match = e.source === "api" && endpointKey(e) === key
                  found ||= match
                  return !match
                })
              }
            )
            return [found, next] as const
          }),
        registrations: Effect.map(SubscriptionRef.get(ref), (services) =>
          services.flatMap((s) =>
            s.endpoints.filter((e) =>
              e.source === "api"
            ).map((e) => ({ service: s.name, address: e.address, port: e.port, weight: e.weight, labels: e.labels }))
          ))
      })
    )
}

/** The Consul watches as `/status` shows them. */
export interface ConsulWatchStatus {
  readonly address: string
  readonly datacenter: string | null
  readonly connected: boolean
  readonly lastSuccessAt: string | null
  readonly lastError: string | null
  readonly lastErrorAt: string | null
  readonly watchedServices: number
  /** Consul service names that cannot be mesh services. */
  readonly ignoredServices: ReadonlyArray<string>
  /** Every listed service has been answered at least once. */
  readonly synced: boolean
}

/** What `/status` shows under `discovery` (the memory variant shows only `source`). */
export interface DiscoveryStatus {
  readonly source: "memory" | "config+api" | "config+api+consul"
  readonly precedence?: ReadonlyArray<RegistrySource>
  readonly services?: ReadonlyArray<{
    readonly name: string
    readonly source: RegistrySource
    readonly endpoints: number
    readonly endpointsBySource: Readonly<Record<RegistrySource, number>>
  }>
  readonly apiRegistrations?: number
  /** `restartRequired`: the config's `discovery.consul` differs from the one in force (see ConsulClient). */
  readonly consul?:
    | (ConsulWatchStatus & {
      readonly restartRequired: boolean
      /** What this controller's registrations in Consul name it; null: none (see ConsulClient). */
      readonly controllerId: string | null
    })
    | null
  readonly dns?: {
    readonly refreshInterval: string
    readonly names: ReadonlyArray<{
      readonly host: string
      readonly addresses: ReadonlyArray<string>
      readonly resolvedAt: string | null
      readonly error: string | null
    }>
  }
}

export interface DiscoveryOptions {
  /** Backoff of failed Consul calls (default 200ms doubling, capped at 10s, jittered). */
  readonly retry?: RetryOptions
  /** Consul's rate-limit rule: a watch issues queries at most this often (default 50ms). */
  readonly minQueryInterval?: Duration.DurationInput
  /** While Consul answers keep coming, the merged view is published at most this often (default 50ms). */
  readonly consulPublishInterval?: Duration.DurationInput
  /** Deadline of one DNS resolution (default 5s). */
  readonly dnsTimeout?: Duration.DurationInput
}

// ---------------------------------------------------------------------------------------------
// DNS
// ---------------------------------------------------------------------------------------------

interface DnsEntry {
  readonly addresses: ReadonlyArray<string>
  readonly resolvedAt: Date | null
  readonly error: string | null
}

/** `*.consul` through Consul's DNS interface; everything else through the system resolver (getaddrinfo, /etc/hosts). */
const resolveHost = (host: string, consulServer: string, timeout: Duration.DurationInput) =>
  Effect.tryPromise({
    try: async (): Promise<ReadonlyArray<string>> => {
      if (isConsulName(host)) {
        const resolver = new NodeDns.promises.Resolver({ timeout: 1000, tries: 2 })
        resolver.setServers([consulServer])
        return (await resolver.resolve4(host)).sort()
      }
      const found = await NodeDns.promises.lookup(host, { all: true })
      return [...new Set(found.map((a) => a.address))].sort()
    },
    catch: (cause) => (cause as { code?: string }).code ?? String(cause)
  }).pipe(
    Effect.timeoutFail({ duration: timeout, onTimeout: () => "timed out" }),
    Effect.tapError(() => Effect.sync(() => dnsFailures.inc({ resolver: isConsulName(host) ? "consul" : "system" })))
  )

// ---------------------------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------------------------

interface ConsulState {
  readonly connected: boolean
  readonly lastSuccessAt: Date | null
  readonly lastError: string | null
  readonly lastErrorAt: Date | null
}

const make = (options: DiscoveryOptions, consulClient: Context.Tag.Service<ConsulClient> | undefined) =>
  Effect.gen(function*() {
    const config = yield* LiveConfig
    const initial = yield* config.get
    const dnsTimeout = options.dnsTimeout ?? Duration.seconds(5)

    const configServices = yield* Ref.make(servicesFromConfig(initial.config))
    const dnsSettings = yield* Ref.make(initial.config.discovery.dns)
    // Touched only inside Effect.sync, so each change is one atomic step (see RegistrationStore).
    const api = new RegistrationStore()
    const consulView = yield* Ref.make<ReadonlyMap<string, ConsulService>>(new Map())
    const dns = yield* SubscriptionRef.make<ReadonlyMap<string, DnsEntry>>(new Map())
    const output = yield* SubscriptionRef.make<ReadonlyArray<Service>>([])

    const resolveInto = (hosts: ReadonlyArray<string>) =>
      Effect.gen(function*() {
        const { consulServer } = yield* Ref.get(dnsSettings)
        yield* Effect.forEach(hosts, (host) =>
          Effect.either(resolveHost(host, consulServer, dnsTimeout)).pipe(
            Effect.flatMap((result) =>
              Ref.update(dns, (entries) => {
                const before = entries.get(host)
                const entry: DnsEntry = Either.match(result, {
                  // A failed refresh keeps the addresses last resolved: a DNS hiccup never empties a service.
                  onLeft: (error) => ({
                    addresses: before?.addresses ?? [],
                    resolvedAt: before?.resolvedAt ?? null,
                    error
                  }),
                  onRight: (addresses) => ({ addresses, resolvedAt: new Date(), error: null })
                })
                return new Map(entries).set(host, entry)
              })
            )
          ), { concurrency: 16, discard: true })
      })

    // One publisher at a time, so two sources changing together cannot publish out of order.
    const lock = yield* Effect.makeSemaphore(1)
    // Merging and host expansion keep the objects of services that did not change, so a one-endpoint
    // change costs one service's work here and downstream (the snapshot builder compares by identity).
    const merger = new RegistryMerger()
    const hostExpansion = new HostExpansion()
    // Services per source, for the gauge: kept up to date from the services the merger replaced,
    // so a one-endpoint publish does not count every service again.
    const counts = { config: 0, api: 0, consul: 0 }
    let counted: ReadonlyArray<Service> | undefined
    const countSources = (services: ReadonlyArray<Service>) => {
      const names = counted === undefined ? undefined : changedSince(counted, services)
      if (names === undefined) {
        counts.config = counts.api = counts.consul = 0
        for (const service of services) counts[service.source]++
      } else {
        for (const name of names) {
          const before = findByName(counted!, name)
          const now = findByName(services, name)
          if (before !== undefined) counts[before.source]--
          if (now !== undefined) counts[now.source]++
        }
      }
      counted = services
    }
    const publish = lock.withPermits(1)(
      Effect.gen(function*() {
        const configured = yield* Ref.get(configServices)
        const consulNow = yield* Ref.get(consulView)
        const merged = yield* Effect.sync(() =>
          merger.merge(configured, (s) => api.forService(s), api.serviceNames(), api.takeChanged(), consulNow)
        )
        hostExpansion.update(merged, merger.changed)
        const hosts = hostExpansion.hostNames()
        const known = yield* Ref.get(dns)
        const fresh = hosts.filter((host) => !known.has(host))
        if (fresh.length > 0) yield* resolveInto(fresh)
        // Forget names no source uses any more.
        const inUse = new Set(hosts)
        const cached = yield* Ref.get(dns)
        if ([...cached.keys()].some((host) => !inUse.has(host))) {
          yield* Ref.set(dns, new Map([...cached].filter(([host]) => inUse.has(host))))
        }
        const entries = yield* Ref.get(dns)
        const resolved = hostExpansion.expand(merged, (host) => entries.get(host)?.addresses ?? [])
        const same = sameServices(yield* SubscriptionRef.get(output), resolved)
        if (same && counted !== undefined) return
        if (!same) yield* SubscriptionRef.set(output, resolved)
        countSources(resolved)
        for (const source of ["config", "api", "consul"] as const) servicesBySource.set({ source }, counts[source])
      })
    )
    yield* publish

    yield* config.changes.pipe(
      Stream.drop(1),
      Stream.runForEach((loaded) =>
        Effect.gen(function*() {
          yield* Ref.set(configServices, servicesFromConfig(loaded.config))
          yield* Ref.set(dnsSettings, loaded.config.discovery.dns)
          yield* publish
        })
      ),
      Effect.forkScoped
    )

    // DNS refresh: names are resolved again every `discovery.dns.refreshInterval` (read each round,
    // so a reload changes it). With no host names it sleeps on the cache instead of a timer, so a
    // registry of IP addresses costs nothing (and TestClock jumps in other tests stay cheap).
    yield* Effect.gen(function*() {
      yield* dns.changes.pipe(Stream.filter((entries) => entries.size > 0), Stream.runHead)
      const { refreshInterval } = yield* Ref.get(dnsSettings)
      yield* Effect.sleep(refreshInterval)
      const hosts = [...(yield* Ref.get(dns)).keys()]
      if (hosts.length > 0) {
        yield* resolveInto(hosts)
        yield* publish
      }
    }).pipe(Effect.forever, Effect.forkScoped)

    // Consul answers arrive in bursts (a thousand watches answer at start, or after an outage):
    // they only mark the view dirty, and one fiber publishes at once, then at most once per
    // `consulPublishInterval` while answers keep coming (the sliding queue of one keeps at most
    // one publish pending). A lone change is published without delay; a burst costs a few dozen
    // merges instead of one per answer.
    const dirty = yield* Coalesce.make(publish, { rest: options.consulPublishInterval ?? Duration.millis(50) })
    const consulSettings = consulClient && Option.getOrUndefined(consulClient.settings)
    const connection = consulClient && Option.getOrUndefined(consulClient.connection)
    const consul = consulSettings && connection
      ? yield* startConsulWatch(consulSettings, connection, options, consulView, dirty.signal)
      : undefined

    // A registration changes the store at once (O(1)) and asks for a coalesced publish: publishing
    // merges every source, which per request made n registrations cost O(n²).
    const requestPublish = dirty.signal
    const knownNow = Effect.gen(function*() {
      const configured = yield* Ref.get(configServices)
      const consulNames = yield* Ref.get(consulView)
      // A service in Consul only through API registrations (this or another controller's) is still
      // one the API created: it counts against createServices and maxServices.
      return (name: string) =>
        findByName(configured, name) !== undefined ||
        consulNames.get(name)?.instances.some((i) => i.meta[SOURCE_META] !== "api") === true
    })
    const register = (registration: ApiRegistration, limits?: RegistrationLimits) =>
      Effect.gen(function*() {
        const known = yield* knownNow
        const refused = api.add(registration, limits, known)
        if (refused) return yield* refused
        yield* requestPublish
      })

    const deregister = (service: string, address: string, port: number) =>
      Effect.sync(() => api.remove(service, endpointKey({ address, port }))).pipe(
        Effect.tap((removed) => (removed ? requestPublish : Effect.void))
      )

    const controllerId = consulClient && Option.getOrUndefined(consulClient.controllerId)
    const catalog = consul && connection && controllerId !== undefined
      ? yield* ConsulApiRegistrations.writeThrough(
        ConsulApiRegistrations.make(
          connection,
          Effect.map(config.get, (loaded) => ({ mesh: loaded.config.mesh.name, controllerId }))
        ),
        { api, known: knownNow, configServices, publish: requestPublish }
      )
      : undefined

    const status: Effect.Effect<DiscoveryStatus> = Effect.gen(function*() {
      const services = yield* SubscriptionRef.get(output)
      const entries = yield* Ref.get(dns)
      const count = (s: Service, source: RegistrySource) => s.endpoints.filter((e) => e.source === source).length
      return {
        source: consul ? "config+api+consul" as const : "config+api" as const,
        precedence: ["config", "api", "consul"] as const,
        services: services.map((s) => ({
          name: s.name,
          source: s.source,
          endpoints: s.endpoints.length,
          endpointsBySource: { config: count(s, "config"), api: count(s, "api"), consul: count(s, "consul") }
        })),
        apiRegistrations: api.size,
        consul: consul && consulClient
          ? {
            ...(yield* consul.status),
            restartRequired: (yield* consulClient.status).restartRequired,
            controllerId: Option.getOrNull(consulClient.controllerId)
          }
          : null,
        dns: {
          refreshInterval: Duration.format((yield* Ref.get(dnsSettings)).refreshInterval),
          names: [...entries].map(([host, entry]) => ({
            host,
            addresses: entry.addresses,
            resolvedAt: entry.resolvedAt?.toISOString() ?? null,
            error: entry.error
          }))
        }
      }
    })

    return Discovery.of({
      services: SubscriptionRef.get(output),
      changes: output.changes,
      status,
      register: catalog?.register ?? register,
      deregister: catalog?.deregister ?? deregister,
      registrations: Effect.sync(() => api.all())
    })
  })

// ---------------------------------------------------------------------------------------------
// Consul watches
// ---------------------------------------------------------------------------------------------

/**
 * Watches the catalog's service list, and each listed service's instances and checks, with blocking
 * queries. An unreachable Consul is retried for ever; the view (and so the mesh) keeps the last
 * answer Consul gave, until Consul gives another.
 */
const startConsulWatch = (
  settings: ConsulSettings,
  client: ConsulConnection,
  options: DiscoveryOptions,
  view: Ref.Ref<ReadonlyMap<string, ConsulService>>,
  /** Asks for the view to be merged and published (coalesced). */
  publish: Effect.Effect<unknown>
): Effect.Effect<{ readonly status: Effect.Effect<ConsulWatchStatus> }, never, Scope.Scope> =>
  Effect.gen(function*() {
    const state = yield* Ref.make<ConsulState>({
      connected: false,
      lastSuccessAt: null,
      lastError: null,
      lastErrorAt: null
    })
    const startedAt = new Date()
    const answered = yield* Ref.make<ReadonlySet<string>>(new Set())
    const watched = yield* Ref.make<ReadonlySet<string>>(new Set())
    const ignoredNames = yield* Ref.make<ReadonlyArray<string>>([])
    const schedule = retrySchedule(options.retry)

    const failed = (error: ConsulUnavailable) =>
      Effect.gen(function*() {
        const before = yield* Ref.getAndUpdate(
          state,
          (s) => ({ ...s, connected: false, lastError: error.reason, lastErrorAt: new Date() })
        )
        if (before.connected || before.lastError === null) {
          yield* Effect.logWarning("Consul unreachable; serving the last known services", error.reason)
        }
      })
    const succeeded = Effect.gen(function*() {
      const before = yield* Ref.getAndUpdate(state, (s) => ({ ...s, connected: true, lastSuccessAt: new Date() }))
      if (!before.connected && before.lastError !== null) yield* Effect.logInfo("Consul reachable again")
    })

    const watch = <A>(
      name: string,
      query: (blocking: BlockingQuery) => (ctx: unknown) => Promise<unknown>,
      decode: (body: unknown) => Either.Either<A, string>,
      onChange: (value: A) => Effect.Effect<void>
    ) =>
      blockingWatch(client, {
        name,
        wait: settings.watchWait,
        minInterval: options.minQueryInterval ?? Duration.millis(50),
        schedule,
        query,
        decode,
        onChange: (value: A) =>
          Effect.zipRight(
            Effect.sync(() => watchUpdates.inc({ watch: name.startsWith("health") ? "service" : "catalog" })),
            onChange(value)
          ),
        onError: failed,
        onSuccess: succeeded
      })

    const services = yield* FiberMap.make<string>()
    const watchService = (service: string) =>
      watch(
        `health.service ${service}`,
        (blocking) => (ctx) => client.consul.health.service({ service, ...blocking, ctx } as { service: string }),
        (body) => decodeHealthService(service, body),
        (discovered) =>
          Effect.gen(function*() {
            yield* Ref.update(view, (all) => new Map(all).set(service, discovered))
            yield* Ref.update(answered, (all) => new Set(all).add(service))
            yield* publish
          })
      )

    const onCatalog = ({ ignored, names }: CatalogServices) =>
      Effect.gen(function*() {
        const ignoredBefore = yield* Ref.getAndSet(ignoredNames, ignored)
        if (ignored.some((name) => !ignoredBefore.includes(name))) {
          yield* Effect.logWarning("Consul services with names that cannot be mesh services are ignored").pipe(
            Effect.annotateLogs({ ignored })
          )
        }
        const before = yield* Ref.get(watched)
        const listed = new Set(names)
        const removed = [...before].filter((name) => !listed.has(name))
        const gone = new Set(removed)
        for (const name of names) if (!before.has(name)) yield* FiberMap.run(services, name, watchService(name))
        for (const name of removed) yield* FiberMap.remove(services, name)
        yield* Ref.set(watched, new Set(names))
        if (removed.length > 0) {
          // Consul says these services are gone: that, unlike an outage, does remove their endpoints.
          yield* Ref.update(view, (all) => new Map([...all].filter(([name]) => !gone.has(name))))
          yield* Ref.update(answered, (all) => new Set([...all].filter((name) => !gone.has(name))))
          yield* publish
        }
      })

    yield* Effect.forkScoped(
      watch(
        "catalog.services",
        (blocking) => (ctx) => client.consul.catalog.service.list({ ...blocking, ctx } as object),
        decodeCatalogServices,
        onCatalog
      )
    )

    yield* Effect.gen(function*() {
      const s = yield* Ref.get(state)
      const since = s.lastSuccessAt ?? startedAt
      const now = yield* Clock.currentTimeMillis
      syncLag.set(s.connected ? 0 : (now - since.getTime()) / 1000)
    }).pipe(Effect.repeat(Schedule.spaced(Duration.seconds(1))), Effect.forkScoped)

    return {
      status: Effect.gen(function*() {
        const s = yield* Ref.get(state)
        const names = yield* Ref.get(watched)
        const done = yield* Ref.get(answered)
        return {
          address: settings.address,
          datacenter: settings.datacenter ?? null,
          connected: s.connected,
          lastSuccessAt: s.lastSuccessAt?.toISOString() ?? null,
          lastError: s.lastError,
          lastErrorAt: s.lastErrorAt?.toISOString() ?? null,
          watchedServices: names.size,
          ignoredServices: yield* Ref.get(ignoredNames),
          synced: s.lastSuccessAt !== null && [...names].every((name) => done.has(name))
        }
      })
    }
  })
