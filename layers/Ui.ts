/**
 * The status page, served by the admin server at `/ui`: services with each endpoint's health
 * history, connected data planes with their ACK/NACK state, certificates, and policy with a form
 * that decides a request as `policy check` does. Read-only.
 *
 *   GET /ui                        the page (HTML; its script and style are /ui/app.js, /ui/app.css)
 *   GET /ui/vendor/preact-htm.js   Preact + htm, served from the installed `htm` package (no CDN)
 *   GET /ui/api/overview           phase, layers still starting, counts
 *   GET /ui/api/services           services, endpoints, health, history (see src/ui/View.ts)
 *   GET /ui/api/dataplanes         connected xDS clients and per-type ACK/NACK state
 *   GET /ui/api/certificates       roots and workload identities, with how each stands
 *   GET /ui/api/policy             compiled rules, warnings, last reload and its errors
 *   GET /ui/api/policy/check?from=&to=&method=&path=&port=&header=k=v
 *                                  the decision `policy check` prints, for the config in force
 *
 * The page's files are open; the API answers under the same rule as /status (when that asks for the
 * admin token, the page asks for it and sends it as `Authorization: Bearer`).
 *
 * The page polls the endpoint of the section on screen, and only while it is visible: nothing runs
 * on the controller for the page between requests, and nothing at all when nobody has it open.
 *
 * The admin server starts before the layers the page reads (so /readyz can answer during start),
 * so the page reads them through a cell the composition root fills once they are built
 * (`Ui.layerSources`); until then the API answers 503 with the layers still starting.
 */
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Clock, Context, Data, Effect, Either, Layer, Option, Ref } from "effect"
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join, sep } from "node:path"
import { fileURLToPath } from "node:url"
import { checkConfig } from "../src/commands/policy.js"
import { findPackage } from "../src/PackageVersion.js"
import type { AuthzRequest } from "../src/policy/Authorize.js"
import { certificatesView, dataPlanesView, rulesView, servicesView } from "../src/ui/View.js"
import { Certificates } from "./Certificates.js"
import { Discovery } from "./Discovery.js"
import { Health } from "./Health.js"
import { Lifecycle } from "./Lifecycle.js"
import { LiveConfig } from "./LiveConfig.js"
import { Policy } from "./Policy.js"
import { Xds } from "./Xds.js"

/** The services the page reads, once they are built. */
export interface UiSources {
  readonly discovery: Context.Tag.Service<Discovery>
  readonly health: Context.Tag.Service<Health>
  readonly xds: Context.Tag.Service<Xds>
  readonly certificates: Context.Tag.Service<Certificates>
  readonly policy: Context.Tag.Service<Policy>
  readonly config: Context.Tag.Service<LiveConfig>
}

export interface UiOptions {
  /** The package version shown in the page's header. */
  readonly version: string
}

/** A file the page needs is not where the package puts it: a packaging bug, reported at start. */
export class UiAssetMissing
  extends Data.TaggedError("UiAssetMissing")<{ readonly path: string; readonly cause: unknown }>
{
  override get message(): string {
    return `ui: cannot read ${this.path} (is the package built and complete?)`
  }
}

export class Ui extends Context.Tag("mesh-controller/Ui")<
  Ui,
  {
    /**
     * Mount on the admin server (`AdminOptions.ui`). `page` is the page's own files: they hold
     * nothing of the mesh, so a browser can load them without a credential (a navigation cannot
     * carry a bearer token). `api` is everything the page shows: the same access rule as /status.
     */
    readonly routes: {
      readonly page: HttpRouter.HttpRouter<never, never>
      readonly api: HttpRouter.HttpRouter<never, never>
    }
    /** Makes the built layers readable by the page (and unreadable again when they stop). */
    readonly bind: (sources: UiSources) => Effect.Effect<void>
    readonly unbind: Effect.Effect<void>
  }
>() {
  static readonly layer = (options: UiOptions): Layer.Layer<Ui, UiAssetMissing, Lifecycle> =>
    Layer.effect(Ui, make(options))

  /** Binds the built layers to the page for as long as they live; place it where all are built. */
  static readonly layerSources: Layer.Layer<
    never,
    never,
    Ui | Discovery | Health | Xds | Certificates | Policy | LiveConfig
  > = Layer.scopedDiscard(
    Effect.gen(function*() {
      const ui = yield* Ui
      const sources: UiSources = {
        discovery: yield* Discovery,
        health: yield* Health,
        xds: yield* Xds,
        certificates: yield* Certificates,
        policy: yield* Policy,
        config: yield* LiveConfig
      }
      yield* Effect.acquireRelease(ui.bind(sources), () => ui.unbind)
    })
  )
}

interface Asset {
  readonly body: string
  readonly contentType: string
}

/**
 * The page's files: src/ui/static beside the sources, dist/src/ui/static in a build. Found from the
 * package's root because the executable is a bundle (dist/bin/, code split into chunks) whose
 * modules do not sit where layers/Ui.ts does.
 */
const staticDir = (): string => {
  const here = fileURLToPath(import.meta.url)
  const root = findPackage(here)?.dir ?? dirname(dirname(here))
  const built = here.startsWith(join(root, "dist") + sep)
  return built ? join(root, "dist", "src", "ui", "static") : join(root, "src", "ui", "static")
}

/**
 * htm's browser bundle of Preact (with hooks) and htm as one ES module, found from where the `htm`
 * package resolves (its `exports` offer no require path to the bundle itself).
 */
const vendorPath = (): string =>
  join(dirname(createRequire(import.meta.url).resolve("htm")), "..", "preact", "standalone.module.js")

const readAsset = (path: string, contentType: string) =>
  Effect.try({
    try: (): Asset => ({ body: readFileSync(path, "utf8"), contentType }),
    catch: (cause) => new UiAssetMissing({ path, cause })
  })

/**
 * Nothing but the page's own files may run or load; no framing (clickjacking). Preact sets styles
 * through the DOM, which `style-src 'self'` allows.
 */
const PAGE_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-cache"
}

const serve = (asset: Asset) =>
  Effect.succeed(HttpServerResponse.text(asset.body, { contentType: asset.contentType, headers: PAGE_HEADERS }))

const json = (body: unknown, status = 200) =>
  HttpServerResponse.unsafeJson(body, {
    status,
    headers: { "cache-control": "no-store", "x-content-type-options": "nosniff" }
  })

const badRequest = (message: string) => json({ error: "BadRequest", message }, 400)

/** The query of /ui/api/policy/check, read as `policy check` reads its options. */
const checkInput = (url: URL): Either.Either<{ from: string; to: string; request: AuthzRequest }, string> => {
  const q = url.searchParams
  const from = q.get("from")?.trim() ?? ""
  const to = q.get("to")?.trim() ?? ""
  if (from === "") return Either.left("from: required (a service name or a spiffe:// ID)")
  if (to === "") return Either.left("to: required (the service called)")
  const text = (name: string) => {
    const value = q.get(name)?.trim()
    return value === undefined || value === "" ? undefined : value
  }
  const portText = text("port")
  const port = portText === undefined ? undefined : Number(portText)
  if (port !== undefined && !(Number.isInteger(port) && port >= 1 && port <= 65535)) {
    return Either.left(`port: expected a whole number from 1 to 65535, got ${JSON.stringify(portText)}`)
  }
  const headers: Record<string, string> = {}
  for (const header of q.getAll("header")) {
    if (header.trim() === "") continue
    const i = header.indexOf("=")
    if (i <= 0) return Either.left(`header: expected k=v, got ${JSON.stringify(header)}`)
    headers[header.slice(0, i).trim()] = header.slice(i + 1)
  }
  return Either.right({
    from,
    to,
    request: {
      method: text("method"),
      path: text("path"),
      port,
      headers: Object.keys(headers).length > 0 ? headers : undefined
    }
  })
}

export const make = (options: UiOptions) =>
  Effect.gen(function*() {
    const dir = staticDir()
    const lifecycle = yield* Lifecycle
    const page = yield* readAsset(join(dir, "index.html"), "text/html; charset=utf-8")
    const script = yield* readAsset(join(dir, "app.js"), "text/javascript; charset=utf-8")
    const style = yield* readAsset(join(dir, "app.css"), "text/css; charset=utf-8")
    const vendor = yield* Effect.try({ try: vendorPath, catch: (cause) => new UiAssetMissing({ path: "htm", cause }) })
      .pipe(Effect.flatMap((path) => readAsset(path, "text/javascript; charset=utf-8")))
    const cell = yield* Ref.make(Option.none<UiSources>())

    /** Runs `f` with the built layers, or answers 503 naming the layers still starting. */
    const withSources = <E, R>(
      f: (sources: UiSources, now: number) => Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>
    ) =>
      Effect.gen(function*() {
        const sources = yield* Ref.get(cell)
        if (Option.isNone(sources)) {
          return json({ error: "NotReady", phase: yield* lifecycle.phase, waiting: yield* lifecycle.waiting }, 503)
        }
        return yield* f(sources.value, yield* Clock.currentTimeMillis)
      })

    const overview = Effect.gen(function*() {
      const sources = yield* Ref.get(cell)
      const base = { version: options.version, phase: yield* lifecycle.phase, waiting: yield* lifecycle.waiting }
      if (Option.isNone(sources)) return json({ ...base, mesh: null })
      const { config } = yield* sources.value.config.get
      return json({ ...base, mesh: { name: config.mesh.name, trustDomain: config.mesh.trustDomain } })
    })

    const services = withSources((s, now) =>
      Effect.gen(function*() {
        const known = yield* s.discovery.services
        return json({
          now: new Date(now).toISOString(),
          services: servicesView(known, yield* s.health.view, yield* s.health.status, now)
        })
      })
    )

    const dataplanes = withSources((s, now) =>
      Effect.map(s.xds.status, (status) =>
        json({
          now: new Date(now).toISOString(),
          snapshotVersion: status.snapshotVersion,
          clients: dataPlanesView(status.clients)
        }))
    )

    const certificates = withSources((s, now) =>
      Effect.map(s.certificates.status, (status) =>
        json({ now: new Date(now).toISOString(), ...certificatesView(status, now) }))
    )

    const policy = withSources((s) =>
      Effect.gen(function*() {
        const inForce = yield* s.policy.current
        const status = yield* s.policy.status
        const config = yield* s.config.status
        const { config: current } = yield* s.config.get
        return json({
          ...rulesView(inForce.policy),
          compiledAt: status.compiledAt,
          configHash: status.configHash,
          lastRejected: status.lastRejected,
          config: { source: config.source, loadedAt: config.loadedAt, lastReload: config.lastReload },
          services: current.services.map((service) =>
            service.name
          )
        })
      })
    )

    // The same function as `policy check --config <file>`, given the config in force: the same
    // compile, the same name checks, the same decision and the same words.
    const check = withSources((s) =>
      Effect.gen(function*() {
        const request = yield* HttpServerRequest.HttpServerRequest
        const input = checkInput(new URL(request.url, "http://ui.invalid"))
        if (Either.isLeft(input)) {
          return badRequest(input.left)
        }
        const { config } = yield* s.config.get
        return Either.match(checkConfig(config, input.right), {
          onLeft: (error) => json({ error: error._tag, message: error.message }, 400),
          onRight: (result) => json({ ...result.decision, text: result.text, warnings: result.warnings })
        })
      })
    )

    const pageRoutes = HttpRouter.empty.pipe(
      HttpRouter.get("/ui", serve(page)),
      HttpRouter.get("/ui/app.js", serve(script)),
      HttpRouter.get("/ui/app.css", serve(style)),
      HttpRouter.get("/ui/vendor/preact-htm.js", serve(vendor))
    )
    const api = HttpRouter.empty.pipe(
      HttpRouter.get("/ui/api/overview", overview),
      HttpRouter.get("/ui/api/services", services),
      HttpRouter.get("/ui/api/dataplanes", dataplanes),
      HttpRouter.get("/ui/api/certificates", certificates),
      HttpRouter.get("/ui/api/policy", policy),
      HttpRouter.get("/ui/api/policy/check", check)
    )

    return Ui.of({
      routes: { page: pageRoutes, api },
      bind: (sources) => Ref.set(cell, Option.some(sources)),
      unbind: Ref.set(cell, Option.none())
    })
  })
