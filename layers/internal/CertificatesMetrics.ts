/** The Certificates layer's metrics, declared together (as `cluster`'s ClusterMetrics.ts). */
import { counter, gauge } from "../Metrics.js"

export const expirySeconds = gauge(
  "mesh_controller_certificate_expiry_seconds",
  "Seconds until the workload certificate expires, per SPIFFE ID.",
  ["identity"]
)

export const renewals = counter(
  "mesh_controller_certificate_renewals_total",
  "Workload certificates issued or renewed.",
  ["identity"]
)

export const failures = counter(
  "mesh_controller_certificate_failures_total",
  "Failed certificate issuances, CA reloads and identity file writes (what: issue, ca, files).",
  ["what"]
)
