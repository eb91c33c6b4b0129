/**
 * Consul change → ADS streams. A Consul (the stand-in, over real HTTP with the real `consul`
 * client) holds N services; the controller (Discovery with Consul, Snapshot, Xds) serves M SotW ADS
 * streams that watch one service's endpoints. Each round registers a new endpoint of that service
 * in Consul and times its arrival on every stream.
 *
 * Baseline, same run and same streams: the same kind of change made in-process through the
 * registration API (Discovery.register), which skips Consul and the watch. The ratio is the cost
 * of the Consul path. Both include the snapshot debounce window, printed beside them.
 *
 *   npx tsx bench/discovery.ts [--services 1000] [--streams 100] [--rounds 5]
 */
import { NodeRuntime } from "@effect/platform-node"
import Consul from "consul"
import { Context, Duration, Effect, Either, Layer, Logger, LogLevel } from "effect"
import { ConsulClient } from "../layers/ConsulClient.js"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { Snapshot } from "../layers/Snapshot.js"
import { Xds } from "../layers/Xds.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import { TypeUrls } from "../src/xds/Protos.js"
import { AdsClient, type AdsConnection, grpcNode } from "../test/support/AdsClient.js"
import { ConsulStandIn } from "../test/support/ConsulStandIn.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? Number(process.argv[i + 1]) : fallback
}
const SERVICES = arg("services", 1000)
const STREAMS = arg("streams", 100)
const ROUNDS = arg("rounds", 5)
const TARGET = `svc-${String(Math.floor(SERVICES / 2)).padStart(4, "0")}`

const ports = (resource: Record<string, any>): ReadonlyArray<number> =>
  (resource["endpoints"] ?? []).flatMap((l: any) =>
    l.lb_endpoints.map((e: any) => e.endpoint.address.socket_address.port_value)
  )

const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
const ms = (n: number) => `${n.toFixed(1)} ms`

/** Waits on every stream for an EDS push containing `port`, ACKing what it reads; times from `start`. */
const arrival = (streams: ReadonlyArray<AdsConnection>, port: number, start: number) =>
  Effect.forEach(streams, (ads) =>
    Effect.gen(function*() {
      for (;;) {
        const eds = yield* ads.next(TypeUrls.ClusterLoadAssignment)
        yield* ads.send({
          type_url: TypeUrls.ClusterLoadAssignment,
          resource_names: [TARGET],
          version_info: eds.version,
          response_nonce: eds.nonce
        })
        if (eds.resources.some((r) => ports(r).includes(port))) return performance.now() - start
      }
    }), { concurrency: "unbounded" })

const summary = (label: string, rounds: ReadonlyArray<ReadonlyArray<number>>) => {
  const all = rounds.flat().sort((a, b) => a - b)
  const lastPerRound = rounds.map((r) => Math.max(...r)).sort((a, b) => a - b)
  console.log(
    `${label.padEnd(34)} first ${ms(all[0]!)}  median ${ms(percentile(all, 50))}  p99 ${ms(percentile(all, 99))}  ` +
      `all ${STREAMS} streams (median round) ${ms(percentile(lastPerRound, 50))}`
  )
  return percentile(lastPerRound, 50)
}

const program = Effect.gen(function*() {
  const standIn = yield* ConsulStandIn.make
  const consul = new Consul({ host: "127.0.0.1", port: standIn.port })
  yield* Effect.addFinalizer(() => Effect.sync(() => consul.destroy()))
  const t0 = performance.now()
  yield* Effect.forEach(
    Array.from({ length: SERVICES }, (_, i) => i),
    (i) =>
      Effect.promise(() =>
        consul.agent.service.register({
          name: `svc-${String(i).padStart(4, "0")}`,
          id: `svc-${i}`,
          address: "10.0.0.1",
          port: 20000 + i
        })
      ),
    { concurrency: 32, discard: true }
  )
  console.log(`registered ${SERVICES} services in Consul (stand-in) in ${ms(performance.now() - t0)}`)

  const config = Either.getOrThrow(decodeConfig({
    mesh: { name: "bench" },
    discovery: { consul: { address: standIn.address, watchWait: "5m" } }
  }, "bench"))
  const inputs = Layer.mergeAll(LiveConfig.layerMemory(config), Health.layerNoop)
  const discovery = Discovery.layer().pipe(Layer.provide(ConsulClient.layer), Layer.provide(inputs))
  const snapshot = Snapshot.layer.pipe(Layer.provide(Layer.merge(inputs, discovery)))
  const t1 = performance.now()
  const context = yield* Layer.build(
    Layer.mergeAll(
      Xds.layer({ host: "127.0.0.1", port: 0 }).pipe(Layer.provide(Layer.merge(snapshot, inputs))),
      discovery
    )
  )
  const registry = Context.get(context, Discovery)
  const xds = `127.0.0.1:${Context.get(context, Xds).address.port}`
  for (;;) {
    if ((yield* registry.services).length >= SERVICES) break
    yield* Effect.sleep(Duration.millis(20))
  }
  console.log(`controller synced ${SERVICES} services from Consul in ${ms(performance.now() - t1)}`)

  const streams = yield* Effect.forEach(Array.from({ length: STREAMS }, (_, i) => i), (i) =>
    Effect.gen(function*() {
      const ads = yield* AdsClient.sotw(xds)
      yield* ads.send({
        node: grpcNode(`bench-${i}`),
        type_url: TypeUrls.ClusterLoadAssignment,
        resource_names: [TARGET]
      })
      const first = yield* ads.next(TypeUrls.ClusterLoadAssignment)
      yield* ads.send({
        type_url: TypeUrls.ClusterLoadAssignment,
        resource_names: [TARGET],
        version_info: first.version,
        response_nonce: first.nonce
      })
      return ads
    }), { concurrency: 10 })
  console.log(`${STREAMS} ADS streams watching ${TARGET}`)

  const viaConsul: Array<ReadonlyArray<number>> = []
  const viaApi: Array<ReadonlyArray<number>> = []
  for (let round = 0; round < ROUNDS; round++) {
    // Quiet period, so each change meets an idle debounce window.
    yield* Effect.sleep(Duration.millis(300))
    const consulPort = 30000 + round
    const start = performance.now()
    const waiting = yield* Effect.fork(arrival(streams, consulPort, start))
    yield* Effect.promise(() =>
      consul.agent.service.register({ name: TARGET, id: `bench-${round}`, address: "10.0.0.2", port: consulPort })
    )
    viaConsul.push(yield* waiting.await.pipe(Effect.flatten))

    yield* Effect.sleep(Duration.millis(300))
    const apiPort = 40000 + round
    const apiStart = performance.now()
    const apiWaiting = yield* Effect.fork(arrival(streams, apiPort, apiStart))
    yield* registry.register({ service: TARGET, address: "10.0.0.3", port: apiPort, weight: 1, labels: {} })
    viaApi.push(yield* apiWaiting.await.pipe(Effect.flatten))
  }

  const debounce = config.controller.debounce
  console.log(
    `\n${ROUNDS} rounds, ${SERVICES} services, ${STREAMS} SotW ADS streams; debounce window quiet ${
      Duration.format(debounce.quiet)
    } (max ${Duration.format(debounce.max)})`
  )
  const consulMedian = summary("Consul change → ADS streams", viaConsul)
  const apiMedian = summary("baseline: in-process registration", viaApi)
  console.log(`ratio Consul / baseline (all streams, median round): ${(consulMedian / apiMedian).toFixed(2)}x`)
  console.log(`Consul path beyond the debounce quiet window: ${ms(consulMedian - Duration.toMillis(debounce.quiet))}`)
})

NodeRuntime.runMain(Effect.scoped(program).pipe(Logger.withMinimumLogLevel(LogLevel.Warning)))
