/**
 * The admin server over HTTPS (`controller.admin.tls`) on the real daemon process, with real TLS
 * handshakes: its certificate is the controller's mesh identity, and a client certificate of an
 * admin identity (issued by `certs issue`, as the README shows for curl) is a credential like the
 * bearer token. Needs `npm run build` (the daemon, `certs issue` and the HEALTHCHECK bundle).
 */
import { it as effectIt } from "@effect/vitest"
import { Context, Deferred, Effect, Layer } from "effect"
import { execFileSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import * as Https from "node:https"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as NodeTls from "node:tls"
import { afterAll, describe, expect, it } from "vitest"
import { Admin } from "../layers/Admin.js"
import { Certificates } from "../layers/Certificates.js"
import { Lifecycle } from "../layers/Lifecycle.js"
import { checkServerSpiffeId, IdentityProvider } from "../src/certs/Tls.js"
import { certConfig, ephemeralLayer } from "./support/certs.js"
import { type Daemon, runCli, startDaemon } from "./support/daemon.js"
import { waitFor } from "./support/eventually.js"

const root = mkdtempSync(join(tmpdir(), "mesh-admin-tls-"))
const started: Array<Daemon> = []
afterAll(() => {
  for (const daemon of started) daemon.child.kill("SIGKILL")
  rmSync(root, { recursive: true, force: true })
})

const configFile = (name: string, state: string) => {
  const path = join(root, `${name}.yaml`)
  writeFileSync(
    path,
    `
mesh: { name: ${name}, trustDomain: mesh.local }
controller:
  xds: { host: 127.0.0.1, port: 0 }
  admin: { host: 127.0.0.1, port: 0, tls: true, adminIdentities: [ops] }
  shutdownTimeout: 5s
services: [ { name: echo, port: 50051, endpoints: [ { address: 127.0.0.1, port: 50061 } ] } ]
certificates: { dir: ${JSON.stringify(state)} }
`
  )
  return path
}

interface ClientCert {
  readonly cert: string
  readonly key: string
}

const readIdentity = (dir: string): ClientCert & { readonly ca: string } => ({
  cert: readFileSync(join(dir, "cert.pem"), "utf8"),
  key: readFileSync(join(dir, "key.pem"), "utf8"),
  ca: readFileSync(join(dir, "ca.pem"), "utf8")
})

/** One HTTPS request that trusts only the mesh CA and expects the controller's SPIFFE ID as the server. */
const call = (
  url: string,
  options: {
    readonly ca: string
    readonly method?: string
    readonly body?: unknown
    readonly token?: string
    readonly client?: ClientCert
    /** Check the host name as curl does, instead of the SPIFFE ID. */
    readonly hostName?: boolean
  }
) =>
  new Promise<{ status: number; text: string }>((resolve, reject) => {
    const body = options.body === undefined ? undefined : JSON.stringify(options.body)
    const request = Https.request(url, {
      method: options.method ?? "GET",
      ca: options.ca,
      ...(options.client === undefined ? {} : { cert: options.client.cert, key: options.client.key }),
      // A fresh connection per request: each one is a new handshake with the certificate it names.
      agent: false,
      ...(options.hostName === true
        ? {}
        : { checkServerIdentity: checkServerSpiffeId("mesh.local", "spiffe://mesh.local/controller") }),
      headers: {
        ...(body === undefined ? {} : { "content-type": "application/json" }),
        ...(options.token === undefined ? {} : { authorization: `Bearer ${options.token}` })
      }
    }, (response) => {
      let text = ""
      response.setEncoding("utf8")
      response.on("data", (chunk: string) => (text += chunk))
      response.on("end", () => resolve({ status: response.statusCode ?? 0, text }))
    })
    request.on("error", (error) => reject(new Error(`${options.method ?? "GET"} ${url}: ${error.message}`)))
    request.end(body)
  })

const failures = (metrics: string, result: string) => {
  const series = `mesh_controller_admin_auth_failures_total{result="${result}"}`
  const line = metrics.split("\n").find((l) => l.startsWith(`${series} `))
  return line === undefined ? 0 : Number(line.slice(series.length + 1))
}

describe("the admin server over HTTPS with mesh client certificates", () => {
  it(
    "admin identity: 201; other mesh identity: 403; foreign CA or nothing: 401; the token still works; all counted",
    async () => {
      const state = join(root, "state")
      const config = configFile("tls", state)
      const daemon = await startDaemon(config, {
        // The CA is created at start; until its root is on disk there is nothing to trust yet.
        readyz: (url) => call(url, { ca: readFileSync(join(state, "ca.pem"), "utf8") })
      })
      started.push(daemon)
      expect(daemon.adminUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/)
      const token = readFileSync(join(state, "admin-token"), "utf8").trim()

      // `certs issue` knows an admin identity without --allow-unknown-service.
      const issue = async (service: string, configPath: string) => {
        const out = join(root, `${service}-${configPath === config ? "mesh" : "foreign"}`)
        const issued = await runCli(["certs", "issue", "--config", configPath, "--service", service, "--out", out])
        expect({ code: issued.code, stderr: issued.stderr }).toEqual({ code: 0, stderr: "" })
        return readIdentity(out)
      }
      const ops = await issue("ops", config)
      const echo = await issue("echo", config)
      // Same SPIFFE ID as the admin identity, from another CA.
      const foreign = await issue("ops", configFile("foreign", join(root, "foreign-state")))
      const ca = ops.ca
      expect(foreign.ca).not.toBe(ca)

      const endpoints = `${daemon.adminUrl}/v1/services/echo/endpoints`
      const before = (await call(`${daemon.adminUrl}/metrics`, { ca })).text
      const post = (port: number, extra: { token?: string; client?: ClientCert }) =>
        call(endpoints, { ca, method: "POST", body: { address: "127.0.0.1", port }, ...extra })

      expect((await post(50071, { client: ops })).status).toBe(201)
      expect((await post(50072, { token })).status).toBe(201)
      expect((await post(50073, {})).status).toBe(401)
      const other = await post(50074, { client: echo })
      expect(other.status).toBe(403)
      expect(other.text).toContain("spiffe://mesh.local/service/echo is not an admin identity")
      expect((await post(50075, { client: foreign })).status).toBe(401)
      // A wrong token with a non-admin certificate is still 403; the right token with one is a credential.
      expect((await post(50076, { client: echo, token: `${token}x` })).status).toBe(403)
      expect((await post(50077, { client: echo, token })).status).toBe(201)

      // Open routes need no certificate; reads on loopback stay open.
      expect((await call(`${daemon.adminUrl}/healthz`, { ca })).status).toBe(200)
      // GET lists what Discovery merged; registrations are published shortly after their 201 (coalesced).
      await waitFor(async () => {
        const services = JSON.parse((await call(`${daemon.adminUrl}/v1/services`, { ca })).text) as unknown
        const ports = JSON.stringify(services).match(/5007\d/g)?.sort()
        expect(ports).toEqual(["50071", "50072", "50077"])
      })

      const after = (await call(`${daemon.adminUrl}/metrics`, { ca })).text
      expect(failures(after, "missing") - failures(before, "missing")).toBe(2)
      expect(failures(after, "identity") - failures(before, "identity")).toBe(1)
      expect(failures(after, "invalid") - failures(before, "invalid")).toBe(1)

      // curl's way: the CA file and the host name localhost, which the controller's certificate names.
      const port = new URL(daemon.adminUrl).port
      const curlLike = await call(`https://localhost:${port}/v1/services/echo/endpoints`, {
        ca,
        client: ops,
        hostName: true,
        method: "POST",
        body: { address: "127.0.0.1", port: 50078 }
      })
      expect(curlLike.status).toBe(201)

      // The image's HEALTHCHECK names an http URL; it passes against the HTTPS server too, and fails
      // when nothing answers.
      const healthcheck = join(process.cwd(), "dist", "bin", "healthcheck.mjs")
      for (const url of [`http://127.0.0.1:${port}/healthz`, `https://127.0.0.1:${port}/healthz`]) {
        expect(execFileSync(process.execPath, [healthcheck, url], { stdio: "pipe" }).toString()).toBe("")
      }

      daemon.child.kill("SIGTERM")
      expect(await daemon.exited).toEqual({ code: 0, signal: null })
      expect(() => execFileSync(process.execPath, [healthcheck, `http://127.0.0.1:${port}/healthz`], { stdio: "pipe" }))
        .toThrow()
    },
    120_000
  )
})

/** The SPIFFE ID the server presents in a fresh handshake (verified against `ca`), or the handshake's error. */
const presented = (port: number, ca: string) =>
  new Promise<string>((resolve) => {
    const socket = NodeTls.connect({ host: "127.0.0.1", port, ca, checkServerIdentity: () => undefined }, () => {
      const san = socket.getPeerCertificate().subjectaltname ?? ""
      socket.destroy()
      resolve(/URI:(spiffe:\/\/[^,\s]+)/.exec(san)?.[1] ?? san)
    })
    socket.on("error", (error: Error) => resolve(`error: ${error.message}`))
  })

describe("the HTTPS admin server's own certificate", () => {
  effectIt.scopedLive(
    "handshakes fail until the identity arrives, then follow every renewal without a restart",
    () =>
      Effect.gen(function*() {
        const certificates = Context.get(yield* Layer.build(ephemeralLayer(certConfig())), Certificates)
        const bundle = (yield* certificates.bundle).pem
        const first = yield* certificates.issue("echo")
        const second = yield* certificates.issue("gateway")
        const provider = new IdentityProvider(first, bundle)
        const arrived = yield* Deferred.make<IdentityProvider>()
        const admin = Context.get(
          yield* Layer.build(
            Admin.layer({
              host: "127.0.0.1",
              port: 0,
              version: "0.0.0-test",
              tls: { trustDomain: "mesh.local", identity: Deferred.await(arrived) }
            }).pipe(Layer.provide(Lifecycle.layer([])))
          ),
          Admin
        )
        const port = admin.address.port
        expect((yield* admin.status).tls).toBe(true)

        // Listening, but no certificate yet (the CA is still loading): no handshake succeeds.
        expect(yield* Effect.promise(() => presented(port, bundle))).toMatch(/^error: /)
        yield* Deferred.succeed(arrived, provider)
        yield* Effect.promise(() =>
          waitFor(async () => expect(await presented(port, bundle)).toBe("spiffe://mesh.local/service/echo"))
        )
        // A renewal (here: another identity, to tell them apart) is what the next connection gets.
        provider.update(second, bundle)
        yield* Effect.promise(() =>
          waitFor(async () => expect(await presented(port, bundle)).toBe("spiffe://mesh.local/service/gateway"))
        )
      })
  )
})
