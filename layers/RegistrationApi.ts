/**
 * The runtime registration API, mounted on the admin HTTP server:
 *
 *   POST   /v1/services/:name/endpoints                 body {address, port, weight?, labels?, protocol?}
 *          → 201 {service, endpoint}; adds (or replaces) an endpoint of `name`
 *   DELETE /v1/services/:name/endpoints/:address/:port  → 204, or 404 when the API registered no such endpoint
 *   GET    /v1/services                                 → 200 {services: [...]} as Discovery merged them
 *
 * Registrations live in the controller's memory: they survive config reloads, not restarts, and are
 * not written to Consul (each controller serves its own). A config-file entry with the same
 * `address:port` takes precedence over them (see Discovery). Bad requests get 400 with a message
 * that names the field.
 */
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, ParseResult, Schema } from "effect"
import { isIP } from "node:net"
import { Port, Protocol, ServiceName } from "../schemas/Config.js"
import { endpointKey } from "../src/MeshState.js"
import { Discovery } from "./Discovery.js"
import { formatPath } from "../src/ConfigDocument.js"

const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*\.?$/

const Address = Schema.String.pipe(
  Schema.filter((s) => isIP(s) !== 0 || HOST_NAME.test(s) || `expected an IP address or a host name, got ${JSON.stringify(s)}`)
)

const Weight = Schema.Number.pipe(
  Schema.filter((n) => (Number.isInteger(n) && n >= 1 && n <= 1_000_000) || `expected a whole number from 1 to 1000000, got ${n}`)
)

/** The body of POST /v1/services/:name/endpoints. Unknown fields are errors. */
export const EndpointBody = Schema.Struct({
  address: Address,
  port: Port,
  weight: Schema.optionalWith(Weight, { default: () => 1, exact: true }),
  labels: Schema.optionalWith(Schema.Record({ key: Schema.String, value: Schema.String }), { default: () => ({}), exact: true }),
  /** Used only when no config entry defines the service. */
  protocol: Schema.optionalWith(Protocol, { exact: true })
})

const NamePath = Schema.Struct({ name: ServiceName })
const EndpointPath = Schema.Struct({
  name: ServiceName,
  address: Address,
  port: Schema.NumberFromString.pipe(Schema.compose(Port))
})

/** A request the API refuses, with the reason a person can act on. */
export class RegistrationRejected extends Schema.TaggedError<RegistrationRejected>()("RegistrationRejected", {
  message: Schema.String
}) {}

const rejected = (where: string) => (error: ParseResult.ParseError | { readonly _tag: string; readonly message?: string }) =>
  new RegistrationRejected({
    message: ParseResult.isParseError(error)
      ? `${where}: ${ParseResult.ArrayFormatter.formatErrorSync(error).map((i) => (i.path.length > 0 ? `${formatPath(i.path)}: ${i.message}` : i.message)).join("; ")}`
      : `${where}: ${error.message ?? error._tag}`
  })

const badRequest = (error: RegistrationRejected) =>
  Effect.succeed(HttpServerResponse.unsafeJson({ error: error._tag, message: error.message }, { status: 400 }))

const register = Effect.gen(function*() {
  const { name } = yield* HttpRouter.schemaPathParams(NamePath).pipe(Effect.mapError(rejected("path")))
  const body = yield* HttpServerRequest.schemaBodyJson(EndpointBody, { onExcessProperty: "error" }).pipe(Effect.mapError(rejected("body")))
  const discovery = yield* Discovery
  yield* discovery.register({
    service: name,
    address: body.address,
    port: body.port,
    weight: body.weight,
    labels: body.labels,
    ...(body.protocol ? { protocol: body.protocol } : {})
  })
  return HttpServerResponse.unsafeJson({ service: name, endpoint: endpointKey(body), weight: body.weight, labels: body.labels }, { status: 201 })
}).pipe(Effect.catchTag("RegistrationRejected", badRequest))

const deregister = Effect.gen(function*() {
  const path = yield* HttpRouter.schemaPathParams(EndpointPath).pipe(Effect.mapError(rejected("path")))
  const discovery = yield* Discovery
  const removed = yield* discovery.deregister(path.name, path.address, path.port)
  return removed
    ? HttpServerResponse.empty({ status: 204 })
    : HttpServerResponse.unsafeJson({
      error: "NotFound",
      message: `no endpoint ${endpointKey(path)} of service "${path.name}" was registered through this API`
    }, { status: 404 })
}).pipe(Effect.catchTag("RegistrationRejected", badRequest))

const list = Effect.gen(function*() {
  const discovery = yield* Discovery
  const services = yield* discovery.services
  return HttpServerResponse.unsafeJson({
    services: services.map((s) => ({
      name: s.name,
      source: s.source,
      protocol: s.protocol,
      port: s.port,
      endpoints: s.endpoints.map((e) => ({ address: e.address, port: e.port, weight: e.weight, labels: e.labels, health: e.health, source: e.source }))
    }))
  })
})

/** Mount into the admin server (`HttpRouter.concat`); needs the Discovery service. */
export const RegistrationApi: HttpRouter.HttpRouter<never, Discovery> = HttpRouter.empty.pipe(
  HttpRouter.post("/v1/services/:name/endpoints", register),
  HttpRouter.del("/v1/services/:name/endpoints/:address/:port", deregister),
  HttpRouter.get("/v1/services", list)
)
