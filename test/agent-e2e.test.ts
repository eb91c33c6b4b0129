/**
 * Controller and agent as separate processes on 127.0.0.1 (issue 13): join tokens, the signing
 * service, the agent's files, renewal under live mTLS traffic, a controller outage, root rotation,
 * and every refusal the agent must turn into one line and exit 1.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as grpc from "@grpc/grpc-js"
import { Effect, Either } from "effect"
import { mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { requestCertificate } from "../layers/internal/SigningClient.js"
import { generateKeyPair, splitPem } from "../src/certs/Authority.js"
import { checkServerSpiffeId } from "../src/certs/Tls.js"
import { makeCsr } from "../src/signing/Csr.js"
import { parseToken } from "../src/tokens/Token.js"
import { type AgentProcess, EchoClient, echoDefinition, freePort, startAgent } from "./support/agent.js"
import { openssl } from "./support/certs.js"
import { type Daemon, runCli, startDaemon } from "./support/daemon.js"
import { waitFor } from "./support/eventually.js"

const base = mkdtempSync(join(tmpdir(), "mesh-agent-"))
const stateDir = join(base, "controller-state")
const configPath = join(base, "mesh.yaml")
let signingPort = 0
let controller: Daemon | undefined
const agents: Array<AgentProcess> = []

const startController = async () => {
  controller = await startDaemon(configPath)
  return controller
}
const stopController = async () => {
  const c = controller!
  c.child.kill("SIGTERM")
  await c.exited
  controller = undefined
}

const tokenFor = async (service: string, extra: ReadonlyArray<string> = []) => {
  const result = await runCli(["token", "create", "--config", configPath, "--service", service, ...extra])
  expect(result.code, result.stderr).toBe(0)
  const lines = result.stdout.trim().split("\n")
  expect(lines).toHaveLength(1)
  const file = join(mkdtempSync(join(base, "token-")), "token")
  writeFileSync(file, lines[0]! + "\n", { mode: 0o600 })
  return { file, text: lines[0]!, id: lines[0]!.split(".")[1]! }
}

const agentArgs = (token: string | undefined, dir: string, more: ReadonlyArray<string> = []) => [
  "--controller",
  `127.0.0.1:${signingPort}`,
  ...(token === undefined ? [] : ["--token-file", token]),
  "--dir",
  dir,
  "--retry-max",
  "1s",
  "--bundle-interval",
  "1s",
  ...more
]

const health = async (agent: AgentProcess) => {
  const response = await fetch(`${agent.adminUrl}/healthz`)
  return { code: response.status, body: await response.json() as Record<string, any> }
}

/** Runs an agent that must fail at once: exit 1 and one line on stderr. */
const refusedAgent = async (token: string, more: ReadonlyArray<string> = []) => {
  const dir = mkdtempSync(join(base, "refused-"))
  const result = await runCli(["agent", "--admin", "127.0.0.1:0", ...agentArgs(token, join(dir, "id"), more)])
  expect(result.code, result.stdout + result.stderr).toBe(1)
  const errors = result.stderr.split("\n").filter((line) => line.startsWith("error: "))
  expect(errors, result.stderr).toHaveLength(1)
  return errors[0]!
}

beforeAll(async () => {
  signingPort = await freePort()
  writeFileSync(
    configPath,
    `mesh: { name: lab, trustDomain: mesh.local }
controller:
  xds: { host: 127.0.0.1, port: 0 }
  admin: { host: 127.0.0.1, port: 0 }
  signing: { host: 127.0.0.1, port: ${signingPort} }
  shutdownTimeout: 5s
services:
  - { name: web, port: 8080 }
  - { name: echo, port: 8081 }
certificates: { dir: ${JSON.stringify(stateDir)}, workloadTtl: 90s, checkInterval: 1s }
`
  )
  await startController()
}, 90_000)

afterAll(async () => {
  for (const agent of agents) agent.child.kill("SIGTERM")
  await Promise.all(agents.map((a) => a.exited))
  if (controller !== undefined) await stopController()
}, 30_000)

describe("join tokens, the signing service and the agent", () => {
  let web: AgentProcess
  const webDir = join(base, "web-identity")
  let webToken: { file: string; text: string; id: string }

  it(
    "token -> agent -> files: openssl verifies them against the bundle, the SAN is the token's service, the key stays on the host",
    async () => {
      webToken = await tokenFor("web", ["--instance", "pi-3"])
      const list = await runCli(["token", "list", "--config", configPath])
      expect(list.stdout).toContain(webToken.id)
      expect(list.stdout).not.toContain(webToken.text.split(".")[2]!)
      web = await startAgent(agentArgs(webToken.file, webDir, ["--service", "web", "--instance", "pi-3"]))
      agents.push(web)
      const status = await waitFor(async () => {
        const h = await health(web)
        if (h.code !== 200) throw new Error(JSON.stringify(h))
        return h.body
      }, 180_000)
      expect(status.spiffeId).toBe("spiffe://mesh.local/service/web")
      expect(status.expiresInSeconds).toBeGreaterThan(0)
      const verify = openssl(["verify", "-CAfile", join(webDir, "ca.pem"), join(webDir, "cert.pem")])
      expect(verify.status, verify.output).toBe(0)
      const san = openssl(["x509", "-in", join(webDir, "cert.pem"), "-noout", "-ext", "subjectAltName"]).output
      expect(san).toContain("URI:spiffe://mesh.local/service/web")
      expect(san).not.toContain("echo")
      expect(statSync(join(webDir, "key.pem")).mode & 0o777).toBe(0o600)
      // The key in the agent's directory appears nowhere in the controller's state.
      const key = readFileSync(join(webDir, "key.pem"), "utf8").trim()
      const walk = (dir: string): Array<string> =>
        readdirSync(dir, { withFileTypes: true }).flatMap((
          e
        ) => (e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)]))
      for (const file of walk(stateDir)) expect(readFileSync(file, "utf8").includes(key), file).toBe(false)
      // The gRPC xDS bootstrap for proxyless apps on this host.
      const bootstrap = JSON.parse(readFileSync(join(webDir, "grpc-bootstrap.json"), "utf8"))
      expect(bootstrap.node.id).toBe("web~pi-3")
      expect(bootstrap.certificate_providers.mesh.config.certificate_file).toBe(join(webDir, "cert.pem"))
      expect(bootstrap.server_listener_resource_name_template).toBe("grpc/server?xds.resource.listening_address=%s")
      const metrics = await (await fetch(`${web.adminUrl}/metrics`)).text()
      expect(metrics).toMatch(/mesh_agent_certificate_expiry_seconds \d+/)
    },
    120_000
  )

  it("the same token a second time is refused with the reason", async () => {
    const line = await refusedAgent(webToken.file)
    expect(line).toContain("spent")
  }, 180_000)

  it("a token for web cannot get echo", async () => {
    const token = await tokenFor("web")
    const line = await refusedAgent(token.file, ["--service", "echo"])
    expect(line).toContain(`is for service "web", not "echo"`)
  }, 180_000)

  it("a revoked token is refused", async () => {
    const token = await tokenFor("web")
    const revoked = await runCli(["token", "revoke", "--config", configPath, token.id])
    expect(revoked.code, revoked.stderr).toBe(0)
    const line = await refusedAgent(token.file)
    expect(line).toContain("revoked")
  }, 180_000)

  it("a forged root fingerprint makes the agent refuse the controller before sending the token", async () => {
    const token = await tokenFor("web")
    const parts = token.text.split(".")
    parts[3] = "0".repeat(64)
    const forged = join(base, "forged-token")
    writeFileSync(forged, parts.join("."))
    const line = await refusedAgent(forged)
    expect(line).toContain("does not hold the root the token pins")
    // The token was never presented, so it still buys a certificate.
    const list = await runCli(["token", "list", "--config", configPath])
    expect(list.stdout.split("\n").find((l) => l.startsWith(token.id))).toMatch(/\t1\tvalid$/)
  }, 180_000)

  it("a CSR that names another identity is refused, and the token is not spent by it", async () => {
    const token = await tokenFor("web")
    const parts = Either.getOrThrow(parseToken(token.text))
    const root = splitPem(readFileSync(join(stateDir, "ca.pem"), "utf8"))[0]!
    const outcome = await Effect.runPromise(
      Effect.gen(function*() {
        const keys = yield* generateKeyPair("ecdsa-p256")
        const csr = yield* makeCsr(keys, { service: "echo", spiffeId: "spiffe://mesh.local/service/echo" })
        return yield* Effect.either(
          requestCertificate(`127.0.0.1:${signingPort}`, { _tag: "Verified", roots: root }, {
            csr_pem: csr,
            token: token.text,
            service: "",
            instance: ""
          })
        )
      })
    )
    expect(Either.isLeft(outcome)).toBe(true)
    const error = Either.getLeft(outcome).pipe((o) => (o._tag === "Some" ? o.value : undefined))!
    expect(error.code).toBe(grpc.status.INVALID_ARGUMENT)
    expect(error.details).toContain("CSR refused")
    expect(error.details).toContain("echo")
    const list = await runCli(["token", "list", "--config", configPath])
    expect(list.stdout.split("\n").find((l) => l.startsWith(parts.id))).toMatch(/\t1\tvalid$/)
  }, 180_000)

  it("renewal keeps a real grpc-js mTLS server and client on the agent's files talking", async () => {
    const provider = new grpc.experimental.FileWatcherCertificateProvider({
      certificateFile: join(webDir, "cert.pem"),
      privateKeyFile: join(webDir, "key.pem"),
      caCertificateFile: join(webDir, "ca.pem"),
      refreshIntervalMs: 200
    })
    const server = new grpc.Server()
    server.addService(echoDefinition, {
      Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, call.request)
    })
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(
        "127.0.0.1:0",
        grpc.experimental.createCertificateProviderServerCredentials(provider, provider, true),
        (e, p) => e ? reject(e) : resolve(p)
      )
    )
    const seen: Array<string> = []
    const newClient = () =>
      new EchoClient(
        `127.0.0.1:${port}`,
        grpc.experimental.createCertificateProviderChannelCredentials(provider, provider, {
          checkServerIdentity: (host, cert) => {
            seen.push(cert.serialNumber.toLowerCase())
            return checkServerSpiffeId("mesh.local", "spiffe://mesh.local/service/web")(host, cert)
          }
        }),
        { "grpc.ssl_target_name_override": "web" }
      )
    const call = (client: grpc.Client) =>
      new Promise<void>((resolve, reject) =>
        (client as any).Echo(
          Buffer.from("ping"),
          { deadline: Date.now() + 10_000 },
          (e: Error | null) => (e ? reject(e) : resolve())
        )
      )
    const client = newClient()
    try {
      const before = (await health(web)).body.serial as string
      let calls = 0
      // Calls on one channel all through the renewal window: none fails.
      const after = await waitFor(
        async () => {
          await call(client)
          calls++
          const serial = (await health(web)).body.serial as string
          if (serial === before) throw new Error("not renewed yet")
          return serial
        },
        90_000,
        250
      )
      expect(calls).toBeGreaterThan(0)
      await call(client)
      // A new connection after the renewal: the server presents the renewed certificate.
      await waitFor(
        async () => {
          const fresh = newClient()
          try {
            await call(fresh)
          } finally {
            fresh.close()
          }
          if (seen[seen.length - 1] !== after) throw new Error(`server still presents ${seen[seen.length - 1]}`)
        },
        30_000,
        250
      )
      expect(openssl(["verify", "-CAfile", join(webDir, "ca.pem"), join(webDir, "cert.pem")]).status).toBe(0)
    } finally {
      client.close()
      server.forceShutdown()
    }
  }, 240_000)

  it("ca rotate: the agent writes the new root into ca.pem while the old one still signs", async () => {
    const rotate = await runCli(["ca", "rotate", "--config", configPath])
    expect(rotate.code, rotate.stderr).toBe(0)
    const next = readFileSync(join(stateDir, "next", "ca.pem"), "utf8").trim()
    await waitFor(
      async () => {
        if (!readFileSync(join(webDir, "ca.pem"), "utf8").includes(next)) throw new Error("new root not in ca.pem yet")
      },
      60_000,
      250
    )
    expect(splitPem(readFileSync(join(webDir, "ca.pem"), "utf8"))).toHaveLength(2)
  }, 90_000)

  it(
    "controller stopped during a renewal window: the agent keeps its files, retries, and renews when it is back",
    async () => {
      await stopController()
      const held = readFileSync(join(webDir, "cert.pem"), "utf8")
      const serial = (await health(web)).body.serial as string
      const failing = await waitFor(
        async () => {
          const h = await health(web)
          if (h.body.failures === 0 || !String(h.body.lastError).startsWith("renewal")) {
            throw new Error(
              JSON.stringify(h.body)
            )
          }
          return h
        },
        90_000,
        250
      )
      expect(failing.code).toBe(200)
      expect(failing.body.serial).toBe(serial)
      expect(readFileSync(join(webDir, "cert.pem"), "utf8")).toBe(held)
      expect(openssl(["verify", "-CAfile", join(webDir, "ca.pem"), join(webDir, "cert.pem")]).status).toBe(0)
      await startController()
      const renewed = await waitFor(
        async () => {
          const h = await health(web)
          if (h.body.serial === serial) throw new Error("not renewed yet")
          return h
        },
        90_000,
        250
      )
      expect(renewed.code).toBe(200)
      expect(renewed.body.state).toBe("ok")
    },
    240_000
  )

  it("an agent restart reuses its key and certificate without the token", async () => {
    web.child.kill("SIGTERM")
    expect(await web.exited).toBe(0)
    const key = readFileSync(join(webDir, "key.pem"), "utf8")
    web = await startAgent(agentArgs(undefined, webDir, ["--service", "web", "--instance", "pi-3"]))
    agents.push(web)
    const h = await waitFor(async () => {
      const r = await health(web)
      if (r.code !== 200) throw new Error(JSON.stringify(r))
      return r
    }, 30_000)
    expect(h.body.state).toBe("ok")
    expect(web.lines.join("\n")).toContain("reusing the certificate held")
    expect(readFileSync(join(webDir, "key.pem"), "utf8")).toBe(key)
  }, 180_000)
})
