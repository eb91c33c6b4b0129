import type { EndpointHealth } from "../MeshState.js"

/**
 * The health state machine of one endpoint, as pure functions of explicit inputs (no clock, no
 * I/O): the Health layer feeds it probe results and publishes what it returns.
 *
 * Initial state: "unknown". An endpoint nobody has probed yet, or that has not yet produced
 * `healthyThreshold` consecutive successes or `unhealthyThreshold` consecutive failures, is
 * "unknown" — and "unknown" endpoints are routed to (see `routing`), so adding a health check to
 * a running service never takes its endpoints out of rotation before the evidence is in. The
 * first threshold reached decides: from "unknown", `healthyThreshold` successes in a row make it
 * "healthy", `unhealthyThreshold` failures in a row make it "unhealthy". After that it moves only
 * when the opposite threshold is reached (one success resets the failure streak and vice versa).
 */

/** One probe result, as kept in an endpoint's history. */
export interface ProbeResult {
  /** When the probe started (epoch milliseconds). */
  readonly at: number
  readonly ok: boolean
  /** How long the probe took, in milliseconds. */
  readonly latencyMs: number
  /** How late the probe started against its schedule (waiting for a probe slot included), in ms. */
  readonly lagMs: number
  /** Why it failed: "connection refused", "timed out after 1s", "status 503", "NOT_SERVING"… */
  readonly error?: string
}

export interface Thresholds {
  /** Consecutive successes that make an endpoint healthy. */
  readonly healthyThreshold: number
  /** Consecutive failures that make an endpoint unhealthy. */
  readonly unhealthyThreshold: number
}

export interface EndpointState {
  readonly health: EndpointHealth
  /** When `health` took its current value (epoch milliseconds). */
  readonly since: number
  readonly successes: number
  readonly failures: number
  /** The most recent results, newest last, at most `historySize` of them. */
  readonly history: ReadonlyArray<ProbeResult>
}

export interface Transition {
  readonly from: EndpointHealth
  readonly to: EndpointHealth
}

export const initialState = (now: number): EndpointState => ({
  health: "unknown",
  since: now,
  successes: 0,
  failures: 0,
  history: []
})

/** Appends to a bounded history, dropping the oldest entries beyond `limit`. */
export const appendBounded = <A>(history: ReadonlyArray<A>, item: A, limit: number): ReadonlyArray<A> => {
  if (limit <= 0) return []
  // One new array per call (this runs for every probe): the kept tail is copied straight into it.
  const from = Math.max(0, history.length - limit + 1)
  const next = new Array<A>(history.length - from + 1)
  for (let i = from; i < history.length; i++) next[i - from] = history[i]!
  next[next.length - 1] = item
  return next
}

const nextHealth = (
  current: EndpointHealth,
  successes: number,
  failures: number,
  thresholds: Thresholds
): EndpointHealth => {
  if (current !== "healthy" && successes >= thresholds.healthyThreshold) return "healthy"
  if (current !== "unhealthy" && failures >= thresholds.unhealthyThreshold) return "unhealthy"
  return current
}

/** Applies one probe result; `transition` is set when the endpoint's health changed. */
export const step = (
  state: EndpointState,
  result: ProbeResult,
  thresholds: Thresholds,
  historySize: number
): { readonly state: EndpointState; readonly transition: Transition | undefined } => {
  const successes = result.ok ? state.successes + 1 : 0
  const failures = result.ok ? 0 : state.failures + 1
  const health = nextHealth(state.health, successes, failures, thresholds)
  const changed = health !== state.health
  return {
    state: {
      health,
      since: changed ? result.at : state.since,
      successes,
      failures,
      history: appendBounded(state.history, result, historySize)
    },
    transition: changed ? { from: state.health, to: health } : undefined
  }
}
