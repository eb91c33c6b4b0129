/**
 * The admin server's metrics, declared together (as cluster's ClusterMetrics.ts). Label values
 * come from fixed sets only, never from a request, so no caller can add series.
 */
import { counter } from "../Metrics.js"

/**
 * 401 (no credential) and 403 (a wrong one), by `result`: "missing", "invalid" (a wrong token) or
 * "identity" (a valid mesh client certificate of an identity that is not an admin).
 */
export const authFailures = counter(
  "mesh_controller_admin_auth_failures_total",
  "Admin requests refused for their credential: missing (401), invalid token or non-admin identity (403).",
  ["result"]
)

export type RejectReason =
  | "host"
  | "media_type"
  | "body_too_large"
  | "bad_request"
  | "unknown_service"
  | "limit"
  /** Not for what the request carries: Consul is configured and did not take the change (503). */
  | "consul_unavailable"

/** Requests refused for what they carry, by `reason` (see RejectReason). */
export const requestsRejected = counter(
  "mesh_controller_admin_requests_rejected_total",
  "Admin requests refused: host, media_type, body_too_large, bad_request, unknown_service, limit, consul_unavailable.",
  ["reason"]
)

export const countAuthFailure = (result: "missing" | "invalid" | "identity"): void => authFailures.inc({ result })
export const countRejected = (reason: RejectReason): void => requestsRejected.inc({ reason })
