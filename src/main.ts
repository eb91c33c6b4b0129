#!/usr/bin/env node
// First, before anything else loads: a SIGHUP while `run` starts must not kill it.
import "./SighupGuard.js"
import * as ValidationError from "@effect/cli/ValidationError"
// Subpath imports: the package's index would also load its HTTP client (undici), which no command uses.
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Cause, Config, Effect, Exit, Layer, Logger, LogLevel, Option } from "effect"
import { cli } from "./Cli.js"

/** JSON lines when stdout is not a terminal (or LOG_FORMAT=json), readable text on a terminal. */
const LoggingLive = Layer.unwrapEffect(
  Effect.gen(function*() {
    const format = yield* Config.literal("json", "text")("LOG_FORMAT").pipe(
      Config.withDescription("Log format: json or text (default: text on a terminal, json otherwise)."),
      Config.option
    )
    const level = yield* Config.logLevel("LOG_LEVEL").pipe(
      Config.withDescription("Minimum log level: All, Trace, Debug, Info, Warning, Error, Fatal, None."),
      Config.withDefault(LogLevel.Info)
    )
    const json = Option.getOrElse(format, () => (process.stdout.isTTY ? "text" : "json")) === "json"
    return Layer.mergeAll(json ? Logger.json : Logger.pretty, Logger.minimumLogLevel(level))
  })
)

/** Exit codes: 0 success, 1 a user error (printed as its message, no stack), 2 a usage error. */
class ExitCode {
  constructor(readonly code: number) {}
}

const program = cli(process.argv).pipe(
  Effect.catchAll((error: unknown) => {
    if (ValidationError.isValidationError(error)) {
      // @effect/cli has already printed the usage problem; --help and --version are not errors.
      return Effect.fail(new ExitCode(ValidationError.isHelpRequested(error) ? 0 : 2))
    }
    const { exitCode, message } = error as { exitCode?: unknown; message?: unknown }
    if (typeof exitCode === "number") {
      // An outcome the command has already printed (a denied `policy check`), told by its exit code.
      return Effect.fail(new ExitCode(exitCode))
    }
    return Effect.zipRight(
      Effect.sync(() => process.stderr.write(`error: ${typeof message === "string" ? message : String(error)}\n`)),
      Effect.fail(new ExitCode(1))
    )
  }),
  Effect.provide(Layer.mergeAll(NodeContext.layer, LoggingLive))
)

NodeRuntime.runMain(program, {
  disableErrorReporting: true,
  // The logger is chosen by LoggingLive (JSON or text); runMain's own pretty logger would print twice.
  disablePrettyLogger: true,
  teardown: (exit, onExit) => {
    if (Exit.isSuccess(exit) || Cause.isInterruptedOnly(exit.cause)) return onExit(0)
    const failure = Cause.failureOption(exit.cause)
    if (Option.isSome(failure) && failure.value instanceof ExitCode) return onExit(failure.value.code)
    process.stderr.write(`${Cause.pretty(exit.cause)}\n`)
    onExit(1)
  }
})
