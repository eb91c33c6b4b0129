/** The metrics of the health area (layers/Health.ts and its probes), declared together. */
import { counter, gauge, histogram } from "../Metrics.js"

export const probeResults = counter(
  "mesh_controller_health_probes_total",
  "Health probes by check type and result (success, failure).",
  [
    "type",
    "result"
  ]
)
export const probeLatency = histogram(
  "mesh_controller_health_probe_duration_seconds",
  "Health probe latency by check type.",
  ["type"]
)
export const probeLag = histogram(
  "mesh_controller_health_probe_lag_seconds",
  "How late health probes start against their schedule (waiting for a probe slot included)."
)
export const probesMissed = counter(
  "mesh_controller_health_probes_missed_total",
  "Health probes skipped because no probe slot (maxConcurrentProbes) freed up before the endpoint's next probe was due."
)
export const endpointsByState = gauge("mesh_controller_health_endpoints", "Checked endpoints by health state.", [
  "state"
])
export const transitions = counter("mesh_controller_health_transitions_total", "Endpoint health transitions.", [
  "from",
  "to"
])
export const servicePanic = gauge(
  "mesh_controller_health_service_panic",
  "1 while every endpoint of the service is unhealthy (routed to all when failMode is open, none when closed).",
  ["service", "fail_mode"]
)

/** The per-type children of the probe metrics (label lookup once, not per probe). */
export const metricsOfType = (type: string) => ({
  success: probeResults.labels({ type, result: "success" }),
  failure: probeResults.labels({ type, result: "failure" }),
  latency: probeLatency.labels({ type })
})
