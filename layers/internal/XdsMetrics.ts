/**
 * The xDS area's metrics, declared together: the snapshot builder's and the server's. Labels take
 * only values the server chooses (protocol, client kind, a known type or `other`), never a string
 * a client sent, so the number of series is bounded whatever clients send.
 */
import { counter, gauge, histogram } from "../Metrics.js"

// Snapshot (layers/Snapshot.ts)
export const snapshotBuilds = counter(
  "mesh_controller_snapshot_builds_total",
  "Snapshot rebuilds, by whether the content changed.",
  ["changed"]
)
export const snapshotBuildSeconds = histogram(
  "mesh_controller_snapshot_build_seconds",
  "Time to rebuild the xDS snapshot."
)
export const snapshotServiceErrors = gauge(
  "mesh_controller_snapshot_service_errors",
  "Services whose resources could not be built."
)
export const snapshotResources = gauge("mesh_controller_snapshot_resources", "Resources in the snapshot, by type.", [
  "type"
])

// Server (layers/Xds.ts)
export const xdsStreams = gauge(
  "mesh_controller_xds_streams",
  "Open xDS streams, by protocol and client kind.",
  ["protocol", "kind"]
)
export const xdsPushes = counter(
  "mesh_controller_xds_pushes_total",
  "xDS responses sent, by protocol and resource type.",
  ["protocol", "type"]
)
export const xdsPushLatency = histogram(
  "mesh_controller_xds_push_latency_seconds",
  "Time from a snapshot's publication to its push on a stream, by resource type.",
  ["type"]
)
export const xdsAckLatency = histogram(
  "mesh_controller_xds_ack_latency_seconds",
  "Time from a push to its ACK, by resource type.",
  ["type"]
)
export const xdsSecretsDenied = counter(
  "mesh_controller_xds_secrets_denied_total",
  "SDS secrets a client asked for and may not read (answered as not found), by how its identity was known.",
  ["identity_source"]
)
export const xdsNacks = counter(
  "mesh_controller_xds_nacks_total",
  "xDS responses a client rejected, by resource type.",
  ["type"]
)
export const xdsRequests = counter(
  "mesh_controller_xds_requests_total",
  "xDS requests received, by protocol, resource type (`other` for a type the server does not serve) and outcome " +
    "(Subscribe, Ack, Nack, Stale, UnknownType, Rejected).",
  ["protocol", "type", "outcome"]
)
