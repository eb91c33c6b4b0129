/**
 * Reads a JSON request body the way every admin route that takes one must: only
 * `Content-Type: application/json` (415 otherwise: a cross-origin `text/plain` form post is the
 * classic way a web page reaches a local API without a preflight), at most `maxBytes` (413, decided
 * from Content-Length before reading when there is one, else while reading), then decoded with the
 * schema (400 naming the field).
 */
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import { Data, Effect, ParseResult, Schema } from "effect"
import type { IncomingMessage } from "node:http"
import { formatPath } from "../../src/ConfigDocument.js"
import { countRejected, type RejectReason } from "./AdminMetrics.js"

/** A request refused for what it carries: its HTTP status and a message that names the reason. */
export class RequestRefused extends Data.TaggedError("RequestRefused")<{
  readonly status: number
  readonly error: string
  readonly message: string
  readonly reason: RejectReason
}> {}

export const refused = (status: number, error: string, reason: RejectReason, message: string) =>
  new RequestRefused({ status, error, message, reason })

/** The answer for a refused request; counts it. */
export const refusedResponse = (e: RequestRefused) =>
  Effect.sync(() => {
    countRejected(e.reason)
    return HttpServerResponse.unsafeJson({ error: e.error, message: e.message }, { status: e.status })
  })

/** "path: message; path: message" for a schema failure, prefixed by where it happened. */
export const formatParseError = (where: string, error: ParseResult.ParseError): string =>
  `${where}: ${
    ParseResult.ArrayFormatter.formatErrorSync(error)
      .map((i) => (i.path.length > 0 ? `${formatPath(i.path)}: ${i.message}` : i.message))
      .join("; ")
  }`

/**
 * An oversized body is read to its end and thrown away, so the client (still sending) gets the 413
 * instead of a reset connection. Past DRAIN_FACTOR × the cap the connection is cut instead.
 */
const DRAIN_FACTOR = 256

const discard = (incoming: IncomingMessage, maxBytes: number) =>
  Effect.async<void>((resume) => {
    let seen = 0
    const done = () => resume(Effect.void)
    incoming.on("data", (chunk: Buffer) => {
      seen += chunk.length
      if (seen > maxBytes * DRAIN_FACTOR) {
        incoming.destroy()
        done()
      }
    })
    incoming.once("end", done)
    incoming.once("error", done)
    incoming.once("close", done)
  })

/** The body as text, or 413 once it passes `maxBytes` (then drained as `discard` does). */
const readCapped = (incoming: IncomingMessage, maxBytes: number) =>
  Effect.async<string, RequestRefused>((resume) => {
    const chunks: Array<Buffer> = []
    let size = 0
    let over = false
    let finished = false
    // Lazy: "close" follows every "end", and building an unused error costs a stack trace per request.
    const finish = (result: () => Effect.Effect<string, RequestRefused>) => {
      if (finished) return
      finished = true
      resume(result())
    }
    incoming.on("data", (chunk: Buffer) => {
      size += chunk.length
      if (size > maxBytes) {
        over = true
        chunks.length = 0
        if (size > maxBytes * DRAIN_FACTOR) {
          incoming.destroy()
          finish(() => tooLarge(maxBytes))
        }
      } else chunks.push(chunk)
    })
    incoming.once("end", () =>
      finish(() => (over ? tooLarge(maxBytes) : Effect.succeed(Buffer.concat(chunks).toString("utf8")))))
    incoming.once("error", () =>
      finish(() => refused(400, "BadRequest", "bad_request", "body: could not be read")))
    incoming.once("close", () =>
      finish(() =>
        over ? tooLarge(maxBytes) : refused(400, "BadRequest", "bad_request", "body: the connection closed")
      ))
  })

const tooLarge = (maxBytes: number) =>
  refused(413, "PayloadTooLarge", "body_too_large", `body: larger than ${maxBytes} bytes`)

export const jsonBody = <A, I>(schema: Schema.Schema<A, I>, maxBytes: number) =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const mediaType = (request.headers["content-type"] ?? "").split(";")[0]!.trim().toLowerCase()
    if (mediaType !== "application/json") {
      const got = JSON.stringify(mediaType || "none")
      const message = `body: expected Content-Type: application/json, got ${got}`
      return yield* refused(415, "UnsupportedMediaType", "media_type", message)
    }
    const declared = Number(request.headers["content-length"] ?? Number.NaN)
    if (declared > maxBytes) {
      yield* discard(NodeHttpServerRequest.toIncomingMessage(request), maxBytes)
      return yield* tooLarge(maxBytes)
    }
    const text = yield* readCapped(NodeHttpServerRequest.toIncomingMessage(request), maxBytes)
    const json = yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: (cause) => refused(400, "BadRequest", "bad_request", `body: not JSON: ${(cause as Error).message}`)
    })
    return yield* Schema.decodeUnknown(schema, { onExcessProperty: "error", errors: "all" })(json).pipe(
      Effect.mapError((error) => refused(400, "BadRequest", "bad_request", formatParseError("body", error)))
    )
  })
