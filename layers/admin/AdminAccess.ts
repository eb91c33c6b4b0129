/**
 * Who may use the admin server, as one reusable rule that routes opt into:
 *
 * - every request except /healthz and /readyz must carry a `Host` the server is bound to (or one of
 *   `allowedHosts`), else 421: a page on evil.example that rebinds its name to 127.0.0.1 sends
 *   `Host: evil.example` and gets nothing;
 * - `requireWrite(handler)`: the route changes state; it needs a credential: the bearer token, or
 *   (on an HTTPS server) a client certificate of one of `adminIdentities`. 401 without a credential,
 *   403 with a wrong token or a mesh certificate of another identity, each counted in
 *   mesh_controller_admin_auth_failures_total;
 * - `requireRead(handler)`: the route shows the topology (/status, /metrics, GET /v1/services, /ui);
 *   open when the read rule is open (a loopback-bound server by default), else like requireWrite.
 *
 * The Admin server provides the `AdminAccess` service to every route, so a route of another module
 * applies the rule by wrapping its handler: `HttpRouter.get("/ui", requireRead(page))`.
 */
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Context, Effect, Option } from "effect"
import { isIP } from "node:net"
import * as NodeOs from "node:os"
import { countAuthFailure, countRejected } from "./AdminMetrics.js"

export type ReadAccess = "auto" | "open" | "token"

export interface AccessOptions {
  /** Checks a presented bearer token; absent, no request carries a valid credential. */
  readonly verifyToken?: ((presented: string) => boolean) | undefined
  /** Default "auto": open when the server is bound to a loopback address. */
  readonly readAccess?: ReadAccess | undefined
  /** Host names accepted besides the bound address. */
  readonly allowedHosts?: ReadonlyArray<string> | undefined
  /**
   * The mesh identity (SPIFFE ID) of the request's client certificate, when it presented one that
   * the handshake verified against the trust bundle; absent on a plain HTTP server.
   */
  readonly clientIdentity?: ((request: Request) => string | undefined) | undefined
  /** SPIFFE IDs whose verified client certificate is an admin credential. */
  readonly adminIdentities?: ReadonlyArray<string> | undefined
}

type Request = HttpServerRequest.HttpServerRequest
type Response = HttpServerResponse.HttpServerResponse

export interface AccessRule {
  /** Whether read-only routes are open to anyone who reaches the port. */
  readonly readOpen: boolean
  /** The answer to send instead of the route, or none when the request may go on. */
  readonly checkHost: (request: Request) => Option.Option<Response>
  readonly checkWrite: (request: Request) => Option.Option<Response>
  readonly checkRead: (request: Request) => Option.Option<Response>
}

export class AdminAccess extends Context.Tag("mesh-controller/AdminAccess")<AdminAccess, AccessRule>() {}

const refuse = (status: number, error: string, message: string, headers: Record<string, string> = {}) =>
  HttpServerResponse.unsafeJson({ error, message }, { status, headers })

/** 127.0.0.0/8, ::1 (and its IPv4-mapped form), "localhost". */
export const isLoopback = (host: string): boolean => {
  const h = host.toLowerCase().replace(/^\[|\]$/g, "")
  if (h === "localhost" || h.endsWith(".localhost") || h === "::1") return true
  const v4 = h.startsWith("::ffff:") ? h.slice(7) : h
  return isIP(v4) === 4 && v4.startsWith("127.")
}

const isWildcard = (host: string) => host === "0.0.0.0" || host === "::" || host === "[::]"

/** The host part of a Host header, lowercased: "[::1]:15014" → "::1", "Example.org.:80" → "example.org". */
export const hostOfHeader = (header: string): string => {
  const value = header.trim().toLowerCase()
  const name = value.startsWith("[")
    ? value.slice(1, value.indexOf("]") >= 0 ? value.indexOf("]") : undefined)
    : value.includes(":") && value.indexOf(":") === value.lastIndexOf(":")
    ? value.slice(0, value.indexOf(":"))
    : value
  return name.endsWith(".") ? name.slice(0, -1) : name
}

/** The names a request may carry for a server bound to `host` (plus `extra`). */
const hostNames = (host: string, extra: ReadonlyArray<string>): Set<string> => {
  const names = new Set(extra.map(hostOfHeader))
  names.add(hostOfHeader(host.includes(":") && !host.startsWith("[") ? `[${host}]` : host))
  if (isWildcard(host)) {
    // Bound to every address: any address of this host, and its own name.
    for (const addresses of Object.values(NodeOs.networkInterfaces())) {
      for (const a of addresses ?? []) names.add(a.address.toLowerCase().replace(/%.*$/, ""))
    }
    names.add(NodeOs.hostname().toLowerCase())
  }
  if (isWildcard(host) || isLoopback(host)) { for (const name of ["localhost", "127.0.0.1", "::1"]) names.add(name) }
  return names
}

const BEARER = /^bearer\s+(\S+)\s*$/i

/** The rule for a server bound to `host`. */
export const makeAccessRule = (host: string, options: AccessOptions = {}): AccessRule => {
  const extra = options.allowedHosts ?? []
  let allowed = hostNames(host, extra)
  const readAccess = options.readAccess ?? "auto"
  const readOpen = readAccess === "open" || (readAccess === "auto" && isLoopback(host))

  const hostOk = (header: string | undefined) => {
    if (header === undefined || header.trim() === "") return false
    const name = hostOfHeader(header)
    if (allowed.has(name)) return true
    // Addresses can be added while running (DHCP, a new interface): look once more before refusing.
    if (isWildcard(host)) allowed = hostNames(host, extra)
    return allowed.has(name)
  }

  const admins = new Set(options.adminIdentities ?? [])

  const checkWrite: AccessRule["checkWrite"] = (request) => {
    // Either credential is enough: an admin's certificate, or the token (whatever certificate comes with it).
    const identity = options.clientIdentity?.(request)
    if (identity !== undefined && admins.has(identity)) return Option.none()
    const match = BEARER.exec(request.headers["authorization"] ?? "")
    if (!match && identity !== undefined) {
      countAuthFailure("identity")
      const message = `the client certificate's identity ${identity} is not an admin identity`
      return Option.some(refuse(403, "Forbidden", message))
    }
    if (!match) {
      countAuthFailure("missing")
      const message = "this request needs the admin token: Authorization: Bearer <token>"
      return Option.some(refuse(401, "Unauthorized", message, { "www-authenticate": `Bearer realm="mesh-controller"` }))
    }
    if (options.verifyToken?.(match[1]!) === true) return Option.none()
    countAuthFailure("invalid")
    return Option.some(refuse(403, "Forbidden", "the admin token is not valid", {
      "www-authenticate": `Bearer realm="mesh-controller", error="invalid_token"`
    }))
  }

  return {
    readOpen,
    checkHost: (request) => {
      if (hostOk(request.headers["host"])) return Option.none()
      countRejected("host")
      const message = `this server does not answer for host ${JSON.stringify(request.headers["host"] ?? "")}`
      return Option.some(refuse(421, "MisdirectedRequest", message))
    },
    checkWrite,
    checkRead: (request) => (readOpen ? Option.none() : checkWrite(request))
  }
}

const guard =
  (check: (rule: AccessRule, request: Request) => Option.Option<Response>) =>
  <A, E, R>(handler: Effect.Effect<A, E, R>): Effect.Effect<A | Response, E, R | AdminAccess | Request> =>
    Effect.flatMap(Effect.zip(AdminAccess, HttpServerRequest.HttpServerRequest), ([rule, request]) => {
      const refused = check(rule, request)
      return Option.isSome(refused) ? Effect.succeed<A | Response>(refused.value) : handler
    })

/** Wraps a route that changes state: it runs only with a valid credential. */
export const requireWrite = guard((rule, request) => rule.checkWrite(request))

/** Wraps a read-only route that shows the mesh: open or credentialed, as the read rule says. */
export const requireRead = guard((rule, request) => rule.checkRead(request))
