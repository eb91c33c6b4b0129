/**
 * The runtime registration API, mounted on the admin HTTP server:
 *
 *   POST   /v1/services/:name/endpoints                 body {address, port, weight?, labels?, protocol?}
 *          → 201 {service, endpoint}; adds (or replaces) an endpoint of `name`
 *   DELETE /v1/services/:name/endpoints/:address/:port  → 204, or 404 when the API registered no such endpoint
 *   GET    /v1/services                                 → 200 {services: [...]} as Discovery merged them
 *
 * Without Consul, registrations live in the controller's memory: they survive config reloads, not
 * restarts. With `discovery.consul`, they are written through to Consul's catalog (Discovery, see
 * internal/ConsulApiRegistrations.ts): every controller serves them, they survive restarts, and a
 * change Consul does not take gets 503 with Consul's reason and changes nothing; a label Consul
 * cannot carry as meta gets 400. A config-file entry with the same `address:port` takes precedence
 * over them (see Discovery). Bad requests get 400 with a message that names the field.
 *
 * POST and DELETE need the admin token and a JSON body (see admin/AdminAccess.ts, admin/JsonBody.ts);
 * GET follows the read rule. What a caller may add is bounded by `controller.admin.registration`
 * (read at each request, so a reload changes it): the body size (413), labels (count, key and value
 * length: 400), endpoints and bytes per service, and whether and how many services the API may create
 * (409, or 404 for a service the config does not define while creating services is off).
 */
import { HttpRouter, HttpServerResponse } from "@effect/platform"
import type { ParseResult } from "effect"
import { Effect, Schema } from "effect"
import { isIP } from "node:net"
import { type AdminRegistration, Port, Protocol, ServiceName } from "../schemas/Config.js"
import { endpointKey } from "../src/MeshState.js"
import { requireRead, requireWrite } from "./admin/AdminAccess.js"
import { formatParseError, jsonBody, refused, refusedResponse, type RequestRefused } from "./admin/JsonBody.js"
import { Discovery, type RegistrationRefused } from "./Discovery.js"
import { LiveConfig } from "./LiveConfig.js"

const HOST_NAME =
  /^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*\.?$/

const Address = Schema.String.pipe(
  Schema.filter((s) =>
    isIP(s) !== 0 || HOST_NAME.test(s) || `expected an IP address or a host name, got ${JSON.stringify(s)}`
  )
)

const Weight = Schema.Number.pipe(
  Schema.filter((n) =>
    (Number.isInteger(n) && n >= 1 && n <= 1_000_000) || `expected a whole number from 1 to 1000000, got ${n}`
  )
)

/** The body of POST /v1/services/:name/endpoints. Unknown fields are errors. */
export const EndpointBody = Schema.Struct({
  address: Address,
  port: Port,
  weight: Schema.optionalWith(Weight, { default: () => 1, exact: true }),
  labels: Schema.optionalWith(Schema.Record({ key: Schema.String, value: Schema.String }), {
    default: () => ({}),
    exact: true
  }),
  /** Used only when no config entry defines the service. */
  protocol: Schema.optionalWith(Protocol, { exact: true })
})

const NamePath = Schema.Struct({ name: ServiceName })
const EndpointPath = Schema.Struct({
  name: ServiceName,
  address: Address,
  port: Schema.NumberFromString.pipe(Schema.compose(Port))
})

const pathRefused = (error: ParseResult.ParseError) =>
  refused(400, "BadRequest", "bad_request", formatParseError("path", error))

/** Label bounds, checked after decoding so the message names the label. */
const checkLabels = (
  labels: Readonly<Record<string, string>>,
  limits: AdminRegistration
): RequestRefused | undefined => {
  const keys = Object.keys(labels)
  if (keys.length > limits.maxLabels) {
    return refused(
      400,
      "BadRequest",
      "limit",
      `body: labels: ${keys.length} labels, at most ${limits.maxLabels} allowed`
    )
  }
  for (const key of keys) {
    const at = `body: labels[${JSON.stringify(key.slice(0, 64))}]`
    if (key.length === 0 || key.length > limits.maxLabelKeyLength) {
      return refused(400, "BadRequest", "limit", `${at}: a label key has 1 to ${limits.maxLabelKeyLength} characters`)
    }
    if (labels[key]!.length > limits.maxLabelValueLength) {
      return refused(400, "BadRequest", "limit", `${at}: value longer than ${limits.maxLabelValueLength} characters`)
    }
  }
  return undefined
}

const fromRefusal = (e: RegistrationRefused): RequestRefused => {
  switch (e.reason) {
    case "unknown-service":
      return refused(404, "UnknownService", "unknown_service", e.message)
    case "labels":
      return refused(400, "BadRequest", "bad_request", e.message)
    case "consul":
      return refused(503, "ConsulUnavailable", "consul_unavailable", e.message)
    default:
      return refused(409, "LimitReached", "limit", e.message)
  }
}

const register = <R>(settings: Effect.Effect<AdminRegistration, never, R>) =>
  Effect.gen(function*() {
    const limits = yield* settings
    const { name } = yield* HttpRouter.schemaPathParams(NamePath).pipe(Effect.mapError(pathRefused))
    const body = yield* jsonBody(EndpointBody, limits.maxBodyBytes)
    const labelsRefused = checkLabels(body.labels, limits)
    if (labelsRefused) return yield* labelsRefused
    const discovery = yield* Discovery
    yield* discovery.register({
      service: name,
      address: body.address,
      port: body.port,
      weight: body.weight,
      labels: body.labels,
      ...(body.protocol ? { protocol: body.protocol } : {})
    }, limits).pipe(Effect.mapError(fromRefusal))
    return HttpServerResponse.unsafeJson(
      { service: name, endpoint: endpointKey(body), weight: body.weight, labels: body.labels },
      { status: 201 }
    )
  }).pipe(Effect.catchTag("RequestRefused", refusedResponse))

const deregister = Effect.gen(function*() {
  const path = yield* HttpRouter.schemaPathParams(EndpointPath).pipe(Effect.mapError(pathRefused))
  const discovery = yield* Discovery
  const removed = yield* discovery.deregister(path.name, path.address, path.port).pipe(Effect.mapError(fromRefusal))
  return removed
    ? HttpServerResponse.empty({ status: 204 })
    : HttpServerResponse.unsafeJson({
      error: "NotFound",
      message: `no endpoint ${endpointKey(path)} of service "${path.name}" was registered through this API`
    }, { status: 404 })
}).pipe(Effect.catchTag("RequestRefused", refusedResponse))

const list = Effect.gen(function*() {
  const discovery = yield* Discovery
  const services = yield* discovery.services
  return HttpServerResponse.unsafeJson({
    services: services.map((s) => ({
      name: s.name,
      source: s.source,
      protocol: s.protocol,
      port: s.port,
      endpoints: s.endpoints.map((e) => ({
        address: e.address,
        port: e.port,
        weight: e.weight,
        labels: e.labels,
        health: e.health,
        source: e.source
      }))
    }))
  })
})

/**
 * The routes, with the bounds `settings` gives at each request. Mount into the admin server
 * (`Admin.layer({ routes })`), which provides the access rule the routes apply.
 */
export const makeRegistrationApi = <R = never>(settings: Effect.Effect<AdminRegistration, never, R>) =>
  HttpRouter.empty.pipe(
    HttpRouter.post("/v1/services/:name/endpoints", requireWrite(register(settings))),
    HttpRouter.del("/v1/services/:name/endpoints/:address/:port", requireWrite(deregister)),
    HttpRouter.get("/v1/services", requireRead(list))
  )

/** The registration API with the bounds of the live config (`controller.admin.registration`). */
export const RegistrationApi = makeRegistrationApi(
  Effect.flatMap(
    LiveConfig,
    (config) => Effect.map(config.get, (loaded) => loaded.config.controller.admin.registration)
  )
)
