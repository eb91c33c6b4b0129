import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Context, Data, Effect, Layer, Option, type Scope } from "effect"
import { createServer } from "node:http"
import { describeErrno, errnoCode } from "../src/Errno.js"
import { type AccessOptions, AdminAccess, makeAccessRule, requireRead } from "./admin/AdminAccess.js"
import { type AdminTlsOptions, clientIdentity, makeTlsServer } from "./admin/AdminTls.js"
import { Lifecycle } from "./Lifecycle.js"
import { collectProcessMetrics, registry } from "./Metrics.js"

export interface AdminOptions<R> {
  readonly host: string
  readonly port: number
  /** The package version shown in /status. */
  readonly version: string
  /**
   * More routes to serve (the registration API, for instance). They may use `AdminAccess` (the
   * server provides it): wrap a handler in `requireWrite` or `requireRead` to apply the access rule.
   */
  readonly routes?: HttpRouter.HttpRouter<never, R>
  /**
   * Who may do what (see admin/AdminAccess.ts). Without `verifyToken` no request carries a valid
   * credential, so state-changing routes always answer 401/403.
   */
  readonly access?: AccessOptions
  /**
   * Serve HTTPS with the controller's mesh certificate (admin/AdminTls.ts); the verified client
   * certificate's identity then reaches the access rule (`access.adminIdentities`).
   */
  readonly tls?: AdminTlsOptions | undefined
  /** Shown in /status: where the token is (never the token). */
  readonly tokenFile?: string
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
export type RoutesNeed<R> = Exclude<
  Exclude<Exclude<Exclude<R, HttpRouter.RouteContext>, AdminAccess>, HttpServerRequest.HttpServerRequest>,
  Scope.Scope
>

/** /healthz and /readyz answer whatever the Host: orchestrators probe by IP, and they reveal nothing. */
const OPEN_PATHS: ReadonlySet<string> = new Set(["/healthz", "/readyz"])

/** The admin HTTP server: /healthz, /readyz, /status, /metrics. */
export class Admin extends Context.Tag("mesh-controller/Admin")<
  Admin,
  {
    readonly address: { readonly host: string; readonly port: number }
    /** What /status shows of the access rule. */
    readonly status: Effect.Effect<AdminStatus>
  }
>() {
  static readonly layer = <R = never>(
    options: AdminOptions<R>
  ): Layer.Layer<Admin, AdminListenError, Lifecycle | RoutesNeed<R>> => Layer.scoped(Admin, make(options))
}

const json = (status: number, body: unknown) => HttpServerResponse.unsafeJson(body, { status })

export interface AdminStatus {
  readonly address: { readonly host: string; readonly port: number }
  /** "open": /status, /metrics and GET /v1/services answer anyone who reaches the port; "token": only with it. */
  readonly readAccess: "open" | "token"
  readonly tokenFile: string | null
  /** HTTPS with the controller's mesh certificate. */
  readonly tls: boolean
  /** SPIFFE IDs whose client certificate is an admin credential. */
  readonly adminIdentities: ReadonlyArray<string>
}

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
          return HttpServerResponse.text(
            `${phase}${waiting.length > 0 ? `: waiting for ${waiting.join(", ")}` : ""}\n`,
            {
              status: 503
            }
          )
        })
      ),
      HttpRouter.get(
        "/status",
        requireRead(Effect.gen(function*() {
          return json(200, {
            version: options.version,
            phase: yield* lifecycle.phase,
            startedAt: startedAt.toISOString(),
            uptimeSeconds: Math.round((Date.now() - startedAt.getTime()) / 1000),
            layers: yield* lifecycle.layers
          })
        }))
      ),
      (
        base
      ) => (options.ui
        ? HttpRouter.concatAll(base, options.ui.page, HttpRouter.use(options.ui.api, requireRead))
        : base),
      HttpRouter.get(
        "/metrics",
        requireRead(
          Effect.promise(() => registry.metrics()).pipe(
            Effect.map((body) => HttpServerResponse.text(body, { contentType: registry.contentType }))
          )
        )
      ),
      (base) => (options.routes ? HttpRouter.concat(base, options.routes) : base)
    )

    const tls = options.tls
    const access = makeAccessRule(options.host, {
      ...options.access,
      clientIdentity: tls === undefined ? undefined : clientIdentity(tls.trustDomain)
    })
    // The Host check runs before any route (and before a 404), so a rebound name learns nothing.
    const app = Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
      const path = request.url.split("?")[0]!
      const misdirected = OPEN_PATHS.has(path) ? Option.none() : access.checkHost(request)
      return Option.isSome(misdirected)
        ? Effect.succeed(misdirected.value)
        : router.pipe(Effect.catchTag("RouteNotFound", () => Effect.succeed(json(404, { error: "not found" }))))
    }).pipe(Effect.provideService(AdminAccess, access))

    const node = tls === undefined ? createServer() : yield* makeTlsServer(tls)
    const server = yield* NodeHttpServer.make(() => node, { host: options.host, port: options.port }).pipe(
      Effect.mapError((error) => new AdminListenError({ host: options.host, port: options.port, cause: error.cause }))
    )
    yield* server.serve(app)
    const address = server.address._tag === "TcpAddress"
      ? { host: server.address.hostname, port: server.address.port }
      : { host: options.host, port: options.port }
    yield* Effect.logInfo(`admin: listening on ${tls ? "https" : "http"}://${address.host}:${address.port}`).pipe(
      Effect.annotateLogs({ readAccess: access.readOpen ? "open" : "token", tokenFile: options.tokenFile ?? null })
    )
    const status: AdminStatus = {
      address,
      readAccess: access.readOpen ? "open" : "token",
      tokenFile: options.tokenFile ?? null,
      tls: tls !== undefined,
      adminIdentities: tls === undefined ? [] : options.access?.adminIdentities ?? []
    }
    return Admin.of({ address, status: Effect.succeed(status) })
  }).pipe(Effect.annotateLogs({ module: "admin" }))
