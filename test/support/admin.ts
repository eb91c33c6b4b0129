/**
 * The real admin server (layers/Admin.ts) with the registration API, on 127.0.0.1:0, over the
 * embedded registry and a memory config; its token is a real file in a temporary directory.
 */
import { Context, Effect, Layer } from "effect"
import { mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Admin } from "../../layers/Admin.js"
import type { ReadAccess } from "../../layers/admin/AdminAccess.js"
import { loadOrCreateToken } from "../../layers/admin/AdminToken.js"
import { Discovery } from "../../layers/Discovery.js"
import { Lifecycle } from "../../layers/Lifecycle.js"
import { LiveConfig } from "../../layers/LiveConfig.js"
import { RegistrationApi } from "../../layers/RegistrationApi.js"
import type { MeshConfig } from "../../schemas/Config.js"

export interface AdminUnderTest {
  readonly base: string
  readonly token: string
  readonly tokenFile: string
  readonly discovery: Context.Tag.Service<Discovery>
  readonly config: Context.Tag.Service<LiveConfig>
}

export const startAdmin = (
  config: MeshConfig,
  options: { readonly readAccess?: ReadAccess; readonly allowedHosts?: ReadonlyArray<string> } = {}
) =>
  Effect.gen(function*() {
    const tokenFile = join(mkdtempSync(join(tmpdir(), "mesh-admin-")), "state", "admin-token")
    const token = yield* loadOrCreateToken(tokenFile)
    const AdminLive = Admin.layer({
      host: "127.0.0.1",
      port: 0,
      version: "0.0.0-test",
      routes: RegistrationApi,
      tokenFile,
      access: { verifyToken: token.verify, readAccess: options.readAccess, allowedHosts: options.allowedHosts }
    })
    const context = yield* Layer.build(
      AdminLive.pipe(
        Layer.provideMerge(Discovery.layerEmbedded),
        Layer.provideMerge(LiveConfig.layerMemory(config)),
        Layer.provideMerge(Lifecycle.layer([]))
      )
    )
    const { port } = Context.get(context, Admin).address
    return {
      base: `http://127.0.0.1:${port}`,
      token: readFileSync(tokenFile, "utf8").trim(),
      tokenFile,
      discovery: Context.get(context, Discovery),
      config: Context.get(context, LiveConfig)
    } satisfies AdminUnderTest
  })

export interface Answer {
  readonly status: number
  readonly headers: Headers
  readonly body: Record<string, unknown> | null
  readonly text: string
}

/** A request with Node's fetch; the body is parsed as JSON when it is JSON. */
export const request = (url: string, init?: RequestInit) =>
  Effect.promise(async (): Promise<Answer> => {
    const response = await fetch(url, init)
    const text = await response.text()
    let body: Record<string, unknown> | null
    try {
      body = text === "" ? null : (JSON.parse(text) as Record<string, unknown>)
    } catch {
      body = null
    }
    return { status: response.status, headers: response.headers, body, text }
  })

/** A JSON POST with the token. */
export const post = (url: string, body: unknown, token: string, headers: Record<string, string> = {}) =>
  request(url, {
    method: "POST",
    body: JSON.stringify(body),
    headers: { "content-type": "application/json", authorization: `Bearer ${token}`, ...headers }
  })

export const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
