/**
 * The metrics of the discovery area, declared together: the registry (layers/Discovery.ts) and
 * everything that talks to Consul (ConsulClient, ConsulRegistration, ConsulPolicies).
 */
import { counter, gauge } from "../Metrics.js"

// Discovery
export const watchUpdates = counter(
  "mesh_controller_discovery_watch_updates_total",
  "Blocking-query answers from Consul that carried a new index, by watch (catalog, service).",
  ["watch"]
)
export const syncLag = gauge(
  "mesh_controller_discovery_consul_sync_lag_seconds",
  "Seconds since Consul last answered, while a watch is failing (0 while every watch is answered)."
)
export const servicesBySource = gauge(
  "mesh_controller_discovery_services",
  "Services known, by the source that defines them.",
  ["source"]
)
export const dnsFailures = counter(
  "mesh_controller_discovery_dns_failures_total",
  "Failed resolutions of endpoint host names.",
  ["resolver"]
)

// The Consul client
export const consulUp = gauge(
  "mesh_controller_consul_up",
  "1 while the last call to Consul succeeded, 0 while Consul is unreachable or failing."
)
export const consulErrors = counter("mesh_controller_consul_errors_total", "Failed calls to Consul, by operation.", [
  "operation"
])

// ConsulRegistration
export const registered = gauge(
  "mesh_controller_consul_registrations",
  "Service instances this controller keeps registered in Consul."
)
export const restoredTotal = counter(
  "mesh_controller_consul_registrations_restored_total",
  "Registrations found missing from the agent by anti-entropy and registered again."
)

// ConsulPolicies
export const policiesResults = counter(
  "mesh_controller_consul_policies_total",
  "Values of the policies KV key, by result (applied, rejected, absent).",
  ["result"]
)
