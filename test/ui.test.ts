/**
 * The status page in a real browser (Debian's chromium, driven by playwright-core) against a real
 * controller: the live layers on 127.0.0.1:0 in this process, composed as program.ts does
 * (Admin serves the page from the start; `Ui.layerSources` binds the built layers).
 *
 * CHROMIUM_PATH overrides /usr/bin/chromium; UI_SCREENSHOT_DIR, when set, receives a wide and a
 * phone-width screenshot of the page.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Context, Effect, Either, Layer, ManagedRuntime } from "effect"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { type Browser, chromium, type Page } from "playwright-core"
import { Admin } from "../layers/Admin.js"
import { loadOrCreateToken } from "../layers/admin/AdminToken.js"
import { Certificates } from "../layers/Certificates.js"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { Lifecycle } from "../layers/Lifecycle.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { Policy } from "../layers/Policy.js"
import { Snapshot } from "../layers/Snapshot.js"
import { Ui } from "../layers/Ui.js"
import { Xds } from "../layers/Xds.js"
import type { MeshConfig } from "../schemas/Config.js"
import { checkConfig } from "../src/commands/policy.js"
import { parseConfig } from "../src/ConfigDocument.js"
import { TypeUrls } from "../src/xds/Protos.js"
import { AdsClient, grpcNode } from "./support/AdsClient.js"
import { runCli } from "./support/daemon.js"
import { closedPort, type TcpTarget, tcpTarget } from "./support/healthTargets.js"

const CHROMIUM = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium"
const SCREENSHOTS = process.env["UI_SCREENSHOT_DIR"]

const configYaml = (a: number, b: number, gateway: number) => `
mesh: { name: ui-test, trustDomain: mesh.local }
services:
  - name: web
    protocol: http
    port: 8080
    endpoints:
      - { address: 127.0.0.1, port: ${a} }
      - { address: 127.0.0.1, port: ${b}, weight: 3 }
    healthCheck: { type: tcp, interval: 200ms, timeout: 1s, healthyThreshold: 1, unhealthyThreshold: 2 }
  - name: gateway
    protocol: http
    port: 8081
    endpoints: [ { address: 127.0.0.1, port: ${gateway} } ]
policies:
  security:
    authorization:
      - { name: gw-to-web, action: allow, from: [ { service: gateway } ], to: web }
      - { name: no-admin, action: deny, from: [ { service: gateway } ], to: web, when: { paths: ["/admin/*"], methods: [POST] } }
`

interface Fixture {
  readonly a: TcpTarget
  readonly b: TcpTarget
  readonly configPath: string
  readonly config: MeshConfig
}
class FixtureTag extends Context.Tag("test/ui/Fixture")<FixtureTag, Fixture>() {}

/** Two TCP health targets (stoppable), and a config file naming them. */
const FixtureLive = Layer.scoped(
  FixtureTag,
  Effect.gen(function*() {
    const a = yield* tcpTarget
    const b = yield* tcpTarget
    const text = configYaml(a.port, b.port, yield* closedPort)
    const configPath = join(mkdtempSync(join(tmpdir(), "mesh-ui-")), "mesh.yaml")
    writeFileSync(configPath, text)
    const config = parseConfig(text, configPath)
    if (Either.isLeft(config)) return yield* Effect.die(config.left)
    return { a, b, configPath, config: config.right }
  })
)

/** The controller's layers, wired as program.ts wires them (Admin first, the page bound last). */
const controller = Layer.unwrapEffect(
  Effect.map(FixtureTag, (fixture) => {
    const configLayer = LiveConfig.layer({ path: fixture.configPath })
    const discovery = Discovery.layerEmbedded.pipe(Layer.provideMerge(configLayer))
    const inputs = Layer.mergeAll(Health.layer({ spreadStart: false }), Certificates.layerEphemeral, Policy.layer).pipe(
      Layer.provideMerge(discovery)
    )
    const snapshot = Snapshot.layer.pipe(Layer.provideMerge(inputs))
    const xds = Xds.layer({ host: "127.0.0.1", port: 0 }).pipe(Layer.provideMerge(snapshot))
    const admin = Layer.unwrapEffect(
      Effect.map(Ui, (ui) => Admin.layer({ host: "127.0.0.1", port: 0, version: "test", ui: ui.routes }))
    )
    // What program.ts's Ready does once every layer is built.
    const ready = Layer.effectDiscard(Effect.flatMap(Lifecycle, (lifecycle) => lifecycle.setPhase("ready")))
    return Layer.mergeAll(Ui.layerSources, ready).pipe(
      Layer.provideMerge(xds),
      Layer.provideMerge(admin),
      Layer.provideMerge(Ui.layer({ version: "test" })),
      Layer.provideMerge(Lifecycle.layer([]))
    )
  })
).pipe(Layer.provideMerge(FixtureLive))

const runtime = ManagedRuntime.make(controller)
let browser: Browser
let adminUrl: string
let xdsAddress: string
let fixture: Fixture

beforeAll(async () => {
  const context = await runtime.runtime()
  fixture = Context.get(context.context, FixtureTag)
  adminUrl = `http://127.0.0.1:${Context.get(context.context, Admin).address.port}`
  xdsAddress = `127.0.0.1:${Context.get(context.context, Xds).address.port}`
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] })
}, 60_000)

afterAll(async () => {
  await browser?.close()
  await runtime.dispose()
})

/** A page on the status page, collecting everything the browser reports as an error. */
const openPage = async (hash: string, viewport = { width: 1280, height: 900 }) => {
  const page = await browser.newPage({ viewport })
  // The machine may be loaded: a slow wait is still a pass, only a missing state fails.
  page.setDefaultTimeout(60_000)
  const errors: Array<string> = []
  page.on("console", (message) => {
    if (message.type() === "error" || message.type() === "warning") {
      errors.push(`console ${message.type()}: ${message.text()}`)
    }
  })
  page.on("pageerror", (error) => errors.push(`page error: ${error.message}`))
  page.on(
    "requestfailed",
    (request) => errors.push(`request failed: ${request.url()} ${request.failure()?.errorText ?? ""}`)
  )
  page.on("response", (response) => {
    if (response.status() >= 400) errors.push(`HTTP ${response.status()} for ${response.url()}`)
  })
  await page.goto(`${adminUrl}/ui#${hash}`)
  // A marker a reload would lose: proves updates arrive without one.
  await page.evaluate("window.marker = 42")
  return { page, errors }
}

const stillSamePage = async (page: Page) => assert.strictEqual(await page.evaluate("window.marker"), 42)

const endpointOf = (page: Page, target: TcpTarget) => page.locator(`[data-endpoint="127.0.0.1:${target.port}"]`)

describe("the status page's JSON and headers", () => {
  it("the check endpoint refuses bad input with the reason, as `policy check` words it", async () => {
    const get = async (query: string) => {
      const response = await fetch(`${adminUrl}/ui/api/policy/check?${query}`)
      return { status: response.status, body: (await response.json()) as { message: string } }
    }
    const unknown = await get("from=gateway&to=nowhere")
    assert.strictEqual(unknown.status, 400)
    assert.strictEqual(unknown.body.message, `--to: unknown service "nowhere"`)
    const port = await get("from=gateway&to=web&port=99999")
    assert.strictEqual(port.status, 400)
    assert.include(port.body.message, "port: expected a whole number from 1 to 65535")
    assert.strictEqual((await get("to=web")).body.message, "from: required (a service name or a spiffe:// ID)")
  })

  it("before the layers are built the API answers 503 naming what it waits for, and the page still loads", async () => {
    const starting = Layer.unwrapEffect(
      Effect.map(Ui, (ui) => Admin.layer({ host: "127.0.0.1", port: 0, version: "test", ui: ui.routes }))
    ).pipe(Layer.provideMerge(Ui.layer({ version: "test" })), Layer.provideMerge(Lifecycle.layer(["policy", "xds"])))
    await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const context = yield* Layer.build(starting)
      const url = `http://127.0.0.1:${Context.get(context, Admin).address.port}`
      const api = yield* Effect.promise(() => fetch(`${url}/ui/api/services`))
      assert.strictEqual(api.status, 503)
      assert.deepStrictEqual(yield* Effect.promise(() => api.json()), {
        error: "NotReady",
        phase: "starting",
        waiting: ["policy", "xds"]
      })
      assert.strictEqual((yield* Effect.promise(() => fetch(`${url}/ui`))).status, 200)
      assert.strictEqual((yield* Effect.promise(() => fetch(`${url}/ui/api/overview`))).status, 200)
    })))
  })

  it("the page's data follows the /status read rule: with readAccess token, /ui/api needs the token; the page's files do not", async () => {
    const tokenFile = join(mkdtempSync(join(tmpdir(), "mesh-ui-token-")), "admin-token")
    const guarded = Layer.unwrapEffect(
      Effect.gen(function*() {
        const ui = yield* Ui
        const token = yield* loadOrCreateToken(tokenFile)
        return Admin.layer({
          host: "127.0.0.1",
          port: 0,
          version: "test",
          ui: ui.routes,
          tokenFile,
          access: { verifyToken: token.verify, readAccess: "token" }
        })
      })
    ).pipe(Layer.provideMerge(Ui.layer({ version: "test" })), Layer.provideMerge(Lifecycle.layer([])))
    await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const context = yield* Layer.build(guarded)
      const url = `http://127.0.0.1:${Context.get(context, Admin).address.port}`
      const token = readFileSync(tokenFile, "utf8").trim()
      const status = (path: string, headers: Record<string, string> = {}) =>
        Effect.promise(() => fetch(`${url}${path}`, { headers }).then((r) => r.status))
      assert.strictEqual(yield* status("/ui/api/overview"), 401)
      assert.strictEqual(yield* status("/ui/api/overview", { authorization: "Bearer wrong" }), 403)
      assert.strictEqual(yield* status("/ui/api/overview", { authorization: `Bearer ${token}` }), 200)
      assert.strictEqual(yield* status("/status"), 401)
      assert.strictEqual(yield* status("/ui"), 200)
    })))
  })

  it("the page loads nothing but its own files, and cannot be framed", async () => {
    const response = await fetch(`${adminUrl}/ui`)
    assert.strictEqual(response.status, 200)
    const csp = response.headers.get("content-security-policy") ?? ""
    assert.include(csp, "default-src 'none'")
    assert.include(csp, "script-src 'self'")
    assert.include(csp, "frame-ancestors 'none'")
    assert.notMatch(await response.text(), /https?:\/\//)
  })
})

describe("the status page (/ui) in chromium", () => {
  it("loads with no console errors and shows every section, wide and at a phone's width", async () => {
    const { page, errors } = await openPage("services")
    await page.locator("[data-service=web] [data-health=healthy]").first().waitFor()
    await page.locator("[data-testid=live].on").waitFor()
    assert.strictEqual(await page.locator("[data-service]").count(), 2)
    // weight and source are shown per endpoint
    assert.include(await endpointOf(page, fixture.b).innerText(), "weight 3 · config")
    for (
      const [tab, ready] of [
        ["dataplanes", "p.meta"],
        ["certificates", "[data-identity='spiffe://mesh.local/service/web']"],
        ["policy", "[data-testid=check-form]"],
        ["services", "[data-service=web]"]
      ] as const
    ) {
      await page.click(`[data-tab=${tab}]`)
      await page.locator(`main[data-section=${tab}] ${ready}`).first().waitFor()
    }
    await page.click("[data-tab=certificates]")
    const root = page.locator("main[data-section=certificates] .cert[data-tone]").first()
    await root.waitFor()
    assert.match(await root.innerText(), /SHA-256\s+([0-9A-F]{2}:){31}[0-9A-F]{2}/)
    assert.strictEqual(
      await page.locator("[data-identity='spiffe://mesh.local/service/web']").getAttribute("data-tone"),
      "ok"
    )
    await page.click("[data-tab=services]")
    await page.locator("[data-service=web]").waitFor()

    // At a phone's width nothing is wider than the screen.
    await page.setViewportSize({ width: 390, height: 844 })
    for (const tab of ["services", "dataplanes", "certificates", "policy"]) {
      await page.click(`[data-tab=${tab}]`)
      await page.locator(`main[data-section=${tab}] .card, main[data-section=${tab}] p`).first().waitFor()
      const overflow = await page.evaluate<number>(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
      )
      assert.strictEqual(overflow, 0, `${tab} overflows a 390px screen by ${overflow}px`)
    }
    await page.click("[data-tab=services]")
    await page.locator("[data-service=web]").waitFor()
    if (SCREENSHOTS !== undefined) {
      await page.screenshot({ path: join(SCREENSHOTS, "ui-screenshot-phone.png"), fullPage: true })
    }
    await stillSamePage(page)
    assert.deepStrictEqual(errors, [])
    await page.close()
  }, 120_000)

  it("an endpoint that goes down turns red without a reload, and its history shows the flip", async () => {
    const { page, errors } = await openPage("services")
    const row = endpointOf(page, fixture.a)
    await page.locator(`[data-endpoint="127.0.0.1:${fixture.a.port}"][data-health=healthy]`).waitFor()

    await runtime.runPromise(fixture.a.setUp(false))
    await page.locator(`[data-endpoint="127.0.0.1:${fixture.a.port}"][data-health=unhealthy]`).waitFor()
    const red = await row.locator(".dot").evaluate((dot) =>
      (globalThis as any).getComputedStyle(dot).backgroundColor as string
    )
    assert.strictEqual(red, "rgb(207, 34, 46)")
    await row.locator("[data-testid=flips] li", { hasText: "healthy → unhealthy" }).waitFor()
    assert.include(await row.innerText(), "down for")
    if (SCREENSHOTS !== undefined) {
      await page.screenshot({ path: join(SCREENSHOTS, "ui-screenshot.png"), fullPage: true })
    }
    // the timeline has a red band (the outage) and failed probes
    await row.locator("svg.timeline rect.seg.unhealthy").first().waitFor()
    await row.locator("svg.timeline rect.probe.failed").first().waitFor()

    await runtime.runPromise(fixture.a.setUp(true))
    await page.locator(`[data-endpoint="127.0.0.1:${fixture.a.port}"][data-health=healthy]`).waitFor()
    await row.locator("[data-testid=flips] li", { hasText: "unhealthy → healthy" }).waitFor()
    assert.include(await row.innerText(), "in total")
    const availability = await row.locator("[data-testid=availability]").innerText()
    assert.match(availability, /^\d+\.\d%$/)
    assert.isBelow(Number.parseFloat(availability), 100)
    // the other endpoint never flipped
    assert.strictEqual(await endpointOf(page, fixture.b).getAttribute("data-health"), "healthy")

    await stillSamePage(page)
    assert.deepStrictEqual(errors, [])
    await page.close()
  }, 120_000)

  it("a NACK from an xDS client appears with its reason", async () => {
    const { page, errors } = await openPage("dataplanes")
    const reason = "listener web: the test client refuses this version"
    await runtime.runPromise(
      Effect.scoped(
        Effect.gen(function*() {
          const ads = yield* AdsClient.sotw(xdsAddress)
          yield* ads.send({ node: grpcNode("ui-test-client"), type_url: TypeUrls.Listener, resource_names: ["web"] })
          const first = yield* ads.next(TypeUrls.Listener)
          yield* ads.send({
            type_url: TypeUrls.Listener,
            resource_names: ["web"],
            response_nonce: first.nonce,
            error_detail: { code: 3, message: reason }
          })
          const card = page.locator("[data-node=ui-test-client]")
          yield* Effect.promise(() => card.locator("[data-testid=nack-reason]", { hasText: reason }).waitFor())
          const text = yield* Effect.promise(() => card.innerText())
          assert.include(text, "SotW")
          assert.include(text, "service web")
          assert.include(text, `version ${first.version}`)
          yield* Effect.promise(() => card.locator(".pill", { hasText: "NACK" }).waitFor())
          if (SCREENSHOTS !== undefined) {
            yield* Effect.promise(() =>
              page.screenshot({ path: join(SCREENSHOTS, "ui-screenshot-dataplanes.png"), fullPage: true })
            )
          }
        })
      )
    )
    // The client went away: its card goes too, without a reload.
    await page.locator("[data-node=ui-test-client]").waitFor({ state: "detached" })
    await stillSamePage(page)
    assert.deepStrictEqual(errors, [])
    await page.close()
  }, 120_000)

  it("the policy form answers as `policy check` does", async () => {
    const { page, errors } = await openPage("policy")
    await page.locator("[data-testid=check-form]").waitFor()
    const cases = [
      { from: "gateway", to: "web", method: "GET", path: "/api/items" },
      { from: "gateway", to: "web", method: "POST", path: "/admin/users" },
      { from: "web", to: "web", method: "GET", path: "/" },
      { from: "spiffe://mesh.local/service/gateway", to: "web", method: "POST", path: "/admin/x?y=1" },
      { from: "web", to: "gateway", method: "", path: "" }
    ]
    // The real CLI on the same file, all cases at once (each is a process start).
    const cliResults = await Promise.all(cases.map((input) => {
      const args = ["policy", "check", "--config", fixture.configPath, "--from", input.from, "--to", input.to]
      if (input.method !== "") args.push("--method", input.method)
      if (input.path !== "") args.push("--path", input.path)
      return runCli(args)
    }))
    for (const [i, input] of cases.entries()) {
      await page.fill("[name=from]", input.from)
      await page.selectOption("[name=to]", input.to)
      await page.selectOption("[name=method]", input.method)
      await page.fill("[name=path]", input.path)
      const previous = await page.locator("[data-testid=verdict-text]").count() > 0
        ? await page.locator("[data-testid=verdict-text]").innerText()
        : ""
      await page.click("[data-testid=check-form] button[type=submit]")
      const cli = cliResults[i]!
      const expected = checkConfig(fixture.config, {
        from: input.from,
        to: input.to,
        request: { method: input.method || undefined, path: input.path || undefined }
      })
      if (Either.isLeft(expected)) throw expected.left
      const verdict = page.locator("[data-testid=verdict]")
      // Wait for this case's answer (consecutive cases have different texts).
      await page.waitForFunction(
        (before) => {
          const el = (globalThis as any).document.querySelector("[data-testid=verdict-text]")
          return el !== null && el.textContent !== before
        },
        previous
      )
      assert.strictEqual(await verdict.getAttribute("data-allowed"), String(expected.right.decision.allowed))
      assert.strictEqual(await verdict.getAttribute("data-rule"), expected.right.decision.rule ?? "")
      assert.strictEqual(await verdict.getAttribute("data-reason"), expected.right.decision.reason)
      assert.strictEqual(await page.locator("[data-testid=verdict-text]").innerText(), cli.stdout.trimEnd())
      assert.strictEqual(cli.code, expected.right.decision.allowed ? 0 : 3)
    }
    await stillSamePage(page)
    assert.deepStrictEqual(errors, [])
    await page.close()
  }, 120_000)
})
