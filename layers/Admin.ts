import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Context, Data, Effect, Layer, type Scope } from "effect"
import { createServer } from "node:http"
import { describeErrno, errnoCode } from "../src/Errno.js"
import { Lifecycle } from "./Lifecycle.js"
import { collectProcessMetrics, registry } from "./Metrics.js"

export interface AdminOptions<R> {
  readonly host: string
  readonly port: number
  /** The package version shown in /status. */
  readonly version: string
  /** More routes to serve (the registration API, for instance). */
  readonly routes?: HttpRouter.HttpRouter<never, R>
  /**
   * The status page (`Ui.routes`): its files (`page`, open: no mesh data in them) and the JSON it
   * reads (`api`: read-only, so under the same rule as /status).
   */
  readonly ui?: { readonly page: HttpRouter.HttpRouter<never, R>; readonly api: HttpRouter.HttpRouter<never, R> }
}

/** The admin server could not listen. */
export class AdminListenError extends Data.TaggedError("AdminListenError")<{
  readonly host: string
  readonly port: number
  readonly cause: unknown
}> {
  override get message(): string {
    return `admin: cannot listen on ${this.host}:${this.port}: ${listenReason(this.cause)}`
  }
}

/** Turns a Node listen error into the words a person expects ("address already in use"). */
export const listenReason = (cause: unknown): string =>
  errnoCode(cause) === "EACCES" ? "permission denied (ports below 1024 need privileges)" : describeErrno(cause)

/** What extra routes need once the server has provided the request and its scope. */
export type RoutesNeed<R> = Exclude<Exclude<Exclude<R, HttpRouter.RouteContext>, HttpServerRequest.HttpServerRequest>, Scope.Scope>

/** The admin HTTP server: /healthz, /readyz, /status, /metrics. */
export class Admin extends Context.Tag("mesh-controller/Admin")<
  Admin,
  { readonly address: { readonly host: string; readonly port: number } }
>() {
  static readonly layer = <R = never>(
    options: AdminOptions<R>
  ): Layer.Layer<Admin, AdminListenError, Lifecycle | RoutesNeed<R>> =>
    Layer.scoped(Admin, make(options))
}

const json = (status: number, body: unknown) => HttpServerResponse.unsafeJson(body, { status })

export const make = <R>(options: AdminOptions<R>) =>
  Effect.gen(function*() {
    const lifecycle = yield* Lifecycle
    collectProcessMetrics()
    const startedAt = new Date()

    const router = HttpRouter.empty.pipe(
      HttpRouter.get("/healthz", Effect.succeed(HttpServerResponse.text("ok\n"))),
      HttpRouter.get(
        "/readyz",
        Effect.gen(function*() {
          const phase = yield* lifecycle.phase
          if (phase === "ready") return HttpServerResponse.text("ready\n")
          const waiting = yield* lifecycle.waiting
          return HttpServerResponse.text(`${phase}${waiting.length > 0 ? `: waiting for ${waiting.join(", ")}` : ""}\n`, {
            status: 503
          })
        })
      ),
      HttpRouter.get(
        "/status",
        Effect.gen(function*() {
          return json(200, {
            version: options.version,
            phase: yield* lifecycle.phase,
            startedAt: startedAt.toISOString(),
            uptimeSeconds: Math.round((Date.now() - startedAt.getTime()) / 1000),
            layers: yield* lifecycle.layers
          })
        })
      ),
      (base) => (options.ui ? HttpRouter.concatAll(base, options.ui.page, options.ui.api) : base),
      HttpRouter.get(
        "/metrics",
        Effect.promise(() => registry.metrics()).pipe(
          Effect.map((body) => HttpServerResponse.text(body, { contentType: registry.contentType }))
        )
      ),
      (base) => (options.routes ? HttpRouter.concat(base, options.routes) : base)
    )

    const app = router.pipe(
      Effect.catchTag("RouteNotFound", () => Effect.succeed(json(404, { error: "not found" })))
    )

    const server = yield* NodeHttpServer.make(() => createServer(), { host: options.host, port: options.port }).pipe(
      Effect.mapError((error) => new AdminListenError({ host: options.host, port: options.port, cause: error.cause }))
    )
    yield* server.serve(app)
    const address = server.address._tag === "TcpAddress"
      ? { host: server.address.hostname, port: server.address.port }
      : { host: options.host, port: options.port }
    yield* Effect.logInfo(`admin: listening on http://${address.host}:${address.port}`)
    return Admin.of({ address })
  })
