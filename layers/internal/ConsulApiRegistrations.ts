/**
 * The registration API's write-through to Consul's catalog: with Consul configured, an endpoint
 * registered through the API is registered with the agent (service register), so every controller
 * watching the catalog serves it, and it outlives this controller's memory. The instance names its
 * controller in meta (`mesh-controller-id`), so a restarted controller reads its own registrations
 * back, and another controller's anti-entropy leaves it alone.
 *
 * A change Consul did not take is refused (`RegistrationRefused`, reason `consul`: the API answers
 * 503 with Consul's reason) and nothing changes in the controller either: an accepted registration
 * is in the catalog, a refused one is nowhere, so nothing is lost silently.
 */
import { Duration, Effect, Ref, Schedule } from "effect"
import {
  type AgentServices,
  apiRegisterOptions,
  apiRegistrationId,
  consulLabelProblem,
  ownApiRegistrations
} from "../../src/discovery/Consul.js"
import type { ApiRegistration } from "../../src/discovery/Merge.js"
import {
  type RegistrationLimits,
  RegistrationRefused,
  type RegistrationStore
} from "../../src/discovery/RegistrationStore.js"
import { endpointKey, type Service } from "../../src/MeshState.js"
import { type ConsulConnection, type ConsulUnavailable, retrySchedule } from "../ConsulClient.js"

export interface ConsulApiRegistrations {
  /** Registers (or replaces) the endpoint with the agent. */
  readonly register: (registration: ApiRegistration, protocol: string) => Effect.Effect<void, RegistrationRefused>
  /** Deregisters this controller's instance of the endpoint; false when the agent had none. */
  readonly deregister: (service: string, address: string, port: number) => Effect.Effect<boolean, RegistrationRefused>
  /** This controller's API registrations the agent holds, retried until the agent answers. */
  readonly load: Effect.Effect<ReadonlyArray<ApiRegistration>>
}

/** An API request waits this long for Consul at most, over a few attempts, before it is refused. */
const REQUEST_DEADLINE = Duration.seconds(5)

const statusOf = (error: ConsulUnavailable): number | undefined => {
  const cause = error.cause as { statusCode?: number; response?: { statusCode?: number } } | undefined
  return cause?.response?.statusCode ?? cause?.statusCode
}

export const make = (
  client: ConsulConnection,
  owner: Effect.Effect<{ readonly mesh: string; readonly controllerId: string }>
): ConsulApiRegistrations => {
  // A refusal by Consul (an ACL without service:write: 403) is not retried; an outage is, briefly.
  const attempts = Schedule.intersect(
    retrySchedule({ base: Duration.millis(100), cap: Duration.seconds(1) }),
    Schedule.recurs(3)
  )
  const bounded = <A>(what: string, call: Effect.Effect<A, ConsulUnavailable>) =>
    call.pipe(
      Effect.retry({ schedule: attempts, while: (e) => (statusOf(e) ?? 500) >= 500 }),
      Effect.timeoutFail({
        duration: REQUEST_DEADLINE,
        onTimeout: () => `no answer from Consul within ${Duration.format(REQUEST_DEADLINE)}`
      }),
      Effect.mapError((e) =>
        new RegistrationRefused({
          reason: "consul",
          message: `${what}: Consul at ${client.address} did not take it (${
            typeof e === "string" ? e : e.reason
          }); nothing was changed`
        })
      )
    )

  return {
    register: (registration, protocol) =>
      Effect.flatMap(owner, (o) => {
        const body = apiRegisterOptions(registration, o, protocol)
        return bounded(
          `registering ${registration.address}:${registration.port} of "${registration.service}" in Consul's catalog`,
          client.call(`agent.service.register ${body.id}`, (ctx) =>
            client.consul.agent.service.register({ ...body, ctx } as { name: string }))
        )
      }),
    deregister: (service, address, port) =>
      Effect.flatMap(owner, (o) => {
        const id = apiRegistrationId(o.controllerId, service, address, port)
        return bounded(
          `removing ${address}:${port} of "${service}" from Consul's catalog`,
          client.call(`agent.service.deregister ${id}`, (ctx) =>
            client.consul.agent.service.deregister({ id, ctx } as { id: string })).pipe(
              Effect.as(true),
              // The agent answers 404 for an ID it does not hold: nothing to remove there.
              Effect.catchIf((e) =>
                statusOf(e) === 404, () => Effect.succeed(false))
            )
        )
      }),
    load: Effect.gen(function*() {
      const o = yield* owner
      const agent = yield* client.call<AgentServices>(
        "agent.service.list",
        (ctx) => client.consul.agent.service.list({ ctx } as object)
      ).pipe(
        Effect.tapError((e) => Effect.logWarning("cannot read this controller's API registrations yet", e.reason)),
        Effect.retry(retrySchedule()),
        Effect.orDie
      )
      return ownApiRegistrations(agent, o)
    })
  }
}

/**
 * Discovery's `register`/`deregister` with Consul: bounds and labels are checked, the catalog is written, and
 * only then the controller's own store changes (so A serves the endpoint at once, as an API
 * registration, and every controller serves it through its catalog watch). One change at a time,
 * so two requests cannot both pass a bound that only one fits. At start, the registrations this
 * controller made before (found by its controller ID) are read back into the store.
 */
export const writeThrough = (
  catalog: ConsulApiRegistrations,
  local: {
    readonly api: RegistrationStore
    readonly known: Effect.Effect<(name: string) => boolean>
    readonly configServices: Ref.Ref<ReadonlyArray<Service>>
    readonly publish: Effect.Effect<unknown>
  }
) =>
  Effect.gen(function*() {
    const { api } = local
    const one = (yield* Effect.makeSemaphore(1)).withPermits(1)
    // Keys changed through the API before the read-back lands: the read-back is older, so it skips them
    // (a DELETE meanwhile must not be undone by it). Touched only inside `one`.
    let readBack = false
    const touched = new Set<string>()
    const touch = (service: string, key: string) => {
      if (!readBack) touched.add(`${service} ${key}`)
    }

    const register = (registration: ApiRegistration, limits?: RegistrationLimits) =>
      one(Effect.gen(function*() {
        const problem = consulLabelProblem(registration.labels)
        if (problem !== undefined) {
          return yield* new RegistrationRefused({ reason: "labels", message: `body: ${problem}` })
        }
        const known = yield* local.known
        const refused = api.check(registration, limits, known)
        if (refused) {
          return yield* refused
        }
        const configured = (yield* Ref.get(local.configServices)).find((s) => s.name === registration.service)
        yield* catalog.register(registration, configured?.protocol ?? registration.protocol ?? "http")
        api.add(registration, undefined, known)
        touch(registration.service, endpointKey(registration))
        yield* local.publish
      }))

    const deregister = (service: string, address: string, port: number) =>
      one(Effect.gen(function*() {
        const inCatalog = yield* catalog.deregister(service, address, port)
        const removed = api.remove(service, endpointKey({ address, port }))
        touch(service, endpointKey({ address, port }))
        if (removed || inCatalog) yield* local.publish
        return removed || inCatalog
      }))

    // Read outside `one`: while Consul is down at start, API requests still get their 503 in time.
    yield* catalog.load.pipe(
      Effect.flatMap((own) =>
        one(Effect.gen(function*() {
          readBack = true
          let added = 0
          for (const registration of own) {
            const key = endpointKey(registration)
            if (touched.has(`${registration.service} ${key}`) || api.has(registration.service, key)) continue
            api.add(registration, undefined, () => true)
            added++
          }
          touched.clear()
          if (added > 0) {
            yield* Effect.logInfo(`read back ${added} registration(s) this controller made through the API`)
            yield* local.publish
          }
        }))
      ),
      Effect.forkScoped
    )

    return { register, deregister }
  })
