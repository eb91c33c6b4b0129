import { Duration } from "effect"

/** How the supervisor reacts to Envoy exits (from `sidecar.envoy.restart`). */
export interface RestartPolicy {
  readonly initialBackoff: Duration.Duration
  readonly maxBackoff: Duration.Duration
  /** This many crashes within `window` is a crash loop. */
  readonly maxCrashes: number
  readonly window: Duration.Duration
}

/** One unexpected exit of Envoy. */
export interface Crash {
  /** Epoch millis. */
  readonly at: number
  /** The process never answered 200 on /ready (a crash "at start"). */
  readonly beforeReady: boolean
  readonly code: number | null
  readonly signal: string | null
}

export type RestartDecision =
  | { readonly _tag: "Restart"; readonly delay: Duration.Duration; readonly recentCrashes: number }
  | { readonly _tag: "CrashLoop"; readonly recentCrashes: number }

/** The crashes that still count: those inside the window ending now. */
export const recentCrashes = (
  history: ReadonlyArray<Crash>,
  now: number,
  policy: RestartPolicy
): ReadonlyArray<Crash> => {
  const since = now - Duration.toMillis(policy.window)
  return history.filter((crash) => crash.at > since)
}

/**
 * What to do after a crash, given every crash so far (the new one included). The backoff doubles
 * with each crash inside the window and is capped; a quiet window resets it. No jitter: there is
 * one Envoy per controller, so there is no herd to spread.
 */
export const decide = (history: ReadonlyArray<Crash>, now: number, policy: RestartPolicy): RestartDecision => {
  const recent = recentCrashes(history, now, policy).length
  if (recent >= policy.maxCrashes) return { _tag: "CrashLoop", recentCrashes: recent }
  const initial = Duration.toMillis(policy.initialBackoff)
  const exponent = Math.max(0, recent - 1)
  const millis = Math.min(Duration.toMillis(policy.maxBackoff), initial * 2 ** Math.min(exponent, 30))
  return { _tag: "Restart", delay: Duration.millis(millis), recentCrashes: recent }
}

/** How a process ended, for logs and /status: "exit code 1", "signal SIGSEGV". */
export const describeExit = (code: number | null, signal: string | null): string =>
  signal !== null ? `signal ${signal}` : `exit code ${code ?? "unknown"}`

// ---------------------------------------------------------------------------------------------
// Envoy's log lines
// ---------------------------------------------------------------------------------------------

export type EnvoyLogLevel = "trace" | "debug" | "info" | "warning" | "error" | "critical"

export interface EnvoyLogLine {
  readonly level: EnvoyLogLevel | undefined
  /** The message without Envoy's timestamp/thread/level prefix (the whole line when it has none). */
  readonly message: string
  /** Envoy's logger name (`main`, `config`, `upstream` …). */
  readonly logger: string | undefined
}

// Envoy's default format: "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v"
const ENVOY_LINE = /^\[[^\]]*\]\[\d+\]\[(trace|debug|info|warning|error|critical)\]\[([^\]]*)\]\s?(.*)$/

/** Splits one line of Envoy's output into its level, logger and message. */
export const parseEnvoyLogLine = (line: string): EnvoyLogLine => {
  const match = ENVOY_LINE.exec(line)
  if (match === null) return { level: undefined, message: line, logger: undefined }
  // Drop the "[source/file.cc:123] " that precedes the message.
  return {
    level: match[1] as EnvoyLogLevel,
    logger: match[2],
    message: (match[3] ?? "").replace(/^\[[^\]\s]+:\d+\]\s?/, "")
  }
}

// ---------------------------------------------------------------------------------------------
// Envoy's command line
// ---------------------------------------------------------------------------------------------

export interface EnvoyCommand {
  readonly bootstrapPath: string
  readonly adminAddressPath: string
  readonly baseId: number
  readonly concurrency: number
  readonly drainTime: Duration.Duration
  readonly args: ReadonlyArray<string>
}

/** Envoy takes whole seconds; a sub-second drain time still gets one. */
export const drainSeconds = (drainTime: Duration.Duration): number =>
  Math.max(1, Math.ceil(Duration.toSeconds(drainTime)))

/**
 * The arguments for one Envoy process. On a hot restart the child terminates its parent after
 * `--parent-shutdown-time-s`, which must leave the parent its whole drain time (Envoy's default is 900 s).
 */
export const envoyArgs = (command: EnvoyCommand, epoch: number): ReadonlyArray<string> => {
  const drain = drainSeconds(command.drainTime)
  return [
    "-c",
    command.bootstrapPath,
    "--restart-epoch",
    String(epoch),
    "--base-id",
    String(command.baseId),
    "--concurrency",
    String(command.concurrency),
    "--drain-time-s",
    String(drain),
    "--parent-shutdown-time-s",
    String(drain + 1),
    "--admin-address-path",
    command.adminAddressPath,
    ...command.args
  ]
}
