import * as Prometheus from "prom-client"

/**
 * The controller's Prometheus registry. Every layer declares its metrics here, at module load, so
 * a layer used on its own (as a library) still counts; `/metrics` exposes this registry.
 */
export const registry = new Prometheus.Registry()

let processMetricsOn = false
/** Adds Node's process metrics (CPU, memory, event loop lag, handles) once per process. */
export const collectProcessMetrics = (): void => {
  if (processMetricsOn) return
  processMetricsOn = true
  Prometheus.collectDefaultMetrics({ register: registry, prefix: "mesh_controller_" })
}

const existing = <T>(name: string): T | undefined => registry.getSingleMetric(name) as T | undefined

export const counter = <L extends string>(name: string, help: string, labelNames: ReadonlyArray<L> = []) =>
  existing<Prometheus.Counter<L>>(name) ?? new Prometheus.Counter<L>({ name, help, labelNames, registers: [registry] })

export const gauge = <L extends string>(name: string, help: string, labelNames: ReadonlyArray<L> = []) =>
  existing<Prometheus.Gauge<L>>(name) ?? new Prometheus.Gauge<L>({ name, help, labelNames, registers: [registry] })

export const histogram = <L extends string>(
  name: string,
  help: string,
  labelNames: ReadonlyArray<L> = [],
  buckets: Array<number> = Prometheus.exponentialBuckets(0.0005, 2, 16)
) =>
  existing<Prometheus.Histogram<L>>(name) ??
    new Prometheus.Histogram<L>({ name, help, labelNames, buckets, registers: [registry] })

export const configReloads = counter("mesh_controller_config_reloads_total", "Config reloads by result (ok, failed).", [
  "result"
])
export const layerUp = gauge("mesh_controller_layer_up", "1 when the layer has started and is running.", ["layer"])
