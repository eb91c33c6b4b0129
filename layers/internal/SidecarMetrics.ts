/** The metrics of the sidecar area (layers/Sidecar.ts: the local Envoy), declared together. */
import { counter, gauge } from "../Metrics.js"

export const restartsTotal = counter(
  "mesh_controller_sidecar_restarts_total",
  "Envoy restarts, by reason (crash, hot-restart).",
  [
    "reason"
  ]
)
export const readyGauge = gauge("mesh_controller_sidecar_ready", "1 while the local Envoy answers 200 on /ready.")
export const crashLoopGauge = gauge(
  "mesh_controller_sidecar_crash_loop",
  "1 while Envoy restarts are stopped by a crash loop."
)
