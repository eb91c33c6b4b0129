/**
 * `mesh-controller agent --envoy` (issue 13): controller, agent and the Envoy stand-in as separate
 * processes on 127.0.0.1. Once the agent holds its certificate it runs Envoy with a bootstrap that
 * passes Envoy's Bootstrap proto and reaches the controller's mTLS xDS through file-based SDS on the
 * agent's files; those files really open an mTLS ADS stream there; Envoy goes when the agent goes,
 * by SIGTERM (drained, exit 0) or by SIGKILL (parent-death signal).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as grpc from "@grpc/grpc-js"
import { Effect, Either } from "effect"
import { spawn } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as YAML from "yaml"
import { checkServerSpiffeId } from "../src/certs/Tls.js"
import { checkBootstrap, checkSdsFile } from "../src/sidecar/Bootstrap.js"
import * as Protos from "../src/xds/Protos.js"
import { AdsClient, envoyNode } from "./support/AdsClient.js"
import { type AgentProcess, freePort, startAgent } from "./support/agent.js"
import { type Daemon, processAlive as alive, runCli, startDaemon } from "./support/daemon.js"
import { waitFor } from "./support/eventually.js"

const STANDIN = join(import.meta.dirname, "support", "envoy-standin.mjs")
const base = mkdtempSync(join(tmpdir(), "mesh-agent-envoy-"))
const configPath = join(base, "mesh.yaml")
const identityDir = join(base, "host", "identity")
let signingPort = 0
let xdsPort = 0
let controller: Daemon | undefined
const agents: Array<AgentProcess> = []

/** dist/bin/healthcheck.mjs, the image's HEALTHCHECK program, with only the given environment. */
const healthcheck = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [join("dist", "bin", "healthcheck.mjs"), ...args], {
      env: { PATH: process.env["PATH"] ?? "", ...env },
      stdio: ["ignore", "ignore", "pipe"]
    })
    let stderr = ""
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    child.on("exit", (code) => resolve({ code, stderr }))
  })

const health = async (agent: AgentProcess) => {
  const response = await fetch(`${agent.adminUrl}/healthz`)
  return { code: response.status, body: await response.json() as Record<string, any> }
}

const agentArgs = (token: ReadonlyArray<string>) => [
  "--controller",
  `127.0.0.1:${signingPort}`,
  ...token,
  "--dir",
  identityDir,
  "--instance",
  "pi-9",
  "--xds",
  `127.0.0.1:${xdsPort}`,
  "--xds-tls",
  "--envoy",
  "--envoy-path",
  STANDIN,
  "--envoy-admin",
  "127.0.0.1:0",
  "--retry-max",
  "1s"
]

/** Waits until the agent's /healthz shows its Envoy ready; returns the agent's status. */
const envoyReady = (agent: AgentProcess) =>
  waitFor(async () => {
    const h = await health(agent)
    if (h.code !== 200 || h.body.envoy?.state !== "ready") throw new Error(JSON.stringify(h))
    return h.body
  }, 60_000)

beforeAll(async () => {
  signingPort = await freePort()
  xdsPort = await freePort()
  writeFileSync(
    configPath,
    `mesh: { name: lab, trustDomain: mesh.local }
controller:
  xds: { host: 127.0.0.1, port: ${xdsPort}, tls: mtls }
  admin: { host: 127.0.0.1, port: 0 }
  signing: { host: 127.0.0.1, port: ${signingPort} }
  shutdownTimeout: 5s
services:
  - { name: web, port: 8080 }
certificates: { dir: ${JSON.stringify(join(base, "controller-state"))}, workloadTtl: 1h }
`
  )
  controller = await startDaemon(configPath)
}, 90_000)

afterAll(async () => {
  for (const agent of agents) agent.child.kill("SIGKILL")
  await Promise.all(agents.map((a) => a.exited))
  if (controller !== undefined) {
    controller.child.kill("SIGTERM")
    await controller.exited
  }
}, 30_000)

describe("agent --envoy", () => {
  let envoyPid = 0

  it(
    "starts Envoy once the certificate is held, with a bootstrap to the controller's mTLS xDS on the agent's files",
    async () => {
      const created = await runCli(["token", "create", "--config", configPath, "--service", "web"])
      expect(created.code, created.stderr).toBe(0)
      const tokenFile = join(base, "web.token")
      writeFileSync(tokenFile, created.stdout.trim() + "\n", { mode: 0o600 })
      const agent = await startAgent(agentArgs(["--token-file", tokenFile]))
      agents.push(agent)
      const status = await envoyReady(agent)
      envoyPid = status.envoy.pid
      expect(alive(envoyPid)).toBe(true)
      expect(status.envoy.nodeId).toBe("web~pi-9")

      // The bootstrap: Envoy's own proto accepts it; its xDS cluster is the controller's mTLS xDS address.
      const bootstrap = YAML.parse(readFileSync(status.envoy.bootstrap.path, "utf8"))
      expect(Either.isRight(checkBootstrap(bootstrap)), JSON.stringify(checkBootstrap(bootstrap))).toBe(true)
      expect(bootstrap.node).toMatchObject({ id: "web~pi-9", cluster: "web" })
      const cluster = bootstrap.static_resources.clusters[0]
      expect(cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address).toEqual({
        address: "127.0.0.1",
        port_value: xdsPort
      })
      const tls = cluster.transport_socket.typed_config.common_tls_context
      expect(tls.combined_validation_context.default_validation_context.match_typed_subject_alt_names).toEqual([
        { san_type: "URI", matcher: { exact: "spiffe://mesh.local/controller" } }
      ])

      // File-based SDS: each source watches the identity directory (where ..data is renamed) and
      // holds one Secret naming the agent's files, which also watches that directory.
      const certSource = tls.tls_certificate_sds_secret_configs[0].sds_config.path_config_source
      const trustSource = tls.combined_validation_context.validation_context_sds_secret_config.sds_config
        .path_config_source
      const secretOf = (source: { path: string; watched_directory: { path: string } }) => {
        expect(source.watched_directory.path).toBe(identityDir)
        const file = YAML.parse(readFileSync(source.path, "utf8"))
        expect(Either.isRight(checkSdsFile(file)), JSON.stringify(checkSdsFile(file))).toBe(true)
        expect(file.resources).toHaveLength(1)
        expect(file.resources[0]["@type"]).toBe(Protos.typeUrl(Protos.Types.Secret))
        return file.resources[0]
      }
      const certificate = secretOf(certSource).tls_certificate
      expect(certificate).toEqual({
        certificate_chain: { filename: join(identityDir, "cert.pem") },
        private_key: { filename: join(identityDir, "key.pem") },
        watched_directory: { path: identityDir }
      })
      const trust = secretOf(trustSource).validation_context
      expect(trust.trusted_ca.filename).toBe(join(identityDir, "ca.pem"))

      // Envoy (the stand-in) reads the certificate the agent holds through those sources.
      const certs = await (await fetch(`http://${status.envoy.admin}/certs`)).json() as any
      expect(certs.certificates[0].cert_chain[0].serial_number).toBe(status.serial)
      expect(certs.certificates[0].cert_chain[0].subject_alt_names).toEqual([{
        uri: "spiffe://mesh.local/service/web"
      }])
      expect(certs.certificates[0].ca_cert[0].path).toBe(join(identityDir, "ca.pem"))

      // Those files open a real mTLS ADS stream at the bootstrap's xDS address, and the controller answers.
      const credentials = grpc.credentials.createSsl(
        readFileSync(trust.trusted_ca.filename),
        readFileSync(certificate.private_key.filename),
        readFileSync(certificate.certificate_chain.filename),
        { checkServerIdentity: checkServerSpiffeId("mesh.local", "spiffe://mesh.local/controller") }
      )
      const response = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
        const ads = yield* AdsClient.delta(`127.0.0.1:${xdsPort}`, credentials)
        yield* ads.send({ node: envoyNode("web~pi-9"), type_url: Protos.typeUrl(Protos.Types.Cluster) })
        return yield* ads.next(Protos.typeUrl(Protos.Types.Cluster))
      })))
      expect(response.typeUrl).toBe(Protos.typeUrl(Protos.Types.Cluster))
    },
    150_000
  )

  it(
    "the image's health check program passes against the agent's admin, chosen by argument or MESH_HEALTHCHECK",
    async () => {
      const agent = agents[agents.length - 1]!
      const port = new URL(agent.adminUrl).port
      expect(await healthcheck([port])).toEqual({ code: 0, stderr: "" })
      expect(await healthcheck([], { MESH_HEALTHCHECK: port })).toEqual({ code: 0, stderr: "" })
      expect(await healthcheck([`${agent.adminUrl}/healthz`], { MESH_HEALTHCHECK: "1" })).toEqual({
        code: 0,
        stderr: ""
      })
      const bad = await healthcheck([], { MESH_HEALTHCHECK: "agent" })
      expect(bad.code).toBe(1)
      expect(bad.stderr).toContain("MESH_HEALTHCHECK: expected a URL")
    },
    60_000
  )

  it("SIGTERM: the agent drains and stops Envoy, then exits 0", async () => {
    const agent = agents.pop()!
    agent.child.kill("SIGTERM")
    expect(await agent.exited).toBe(0)
    expect(alive(envoyPid)).toBe(false)
    // Nothing answers on its admin port now: the health check says so.
    expect((await healthcheck([new URL(agent.adminUrl).port])).code).toBe(1)
    expect(agent.lines.some((line) => line.includes("Envoy started"))).toBe(true)
  }, 60_000)

  it(
    "a restart reuses the files (no token) and starts Envoy again; SIGKILL of the agent takes Envoy along",
    async () => {
      const agent = await startAgent(agentArgs([]))
      agents.push(agent)
      const status = await envoyReady(agent)
      expect(status.envoy.parentDeathSignal).toBe(existsSync("/usr/bin/setpriv") || existsSync("/bin/setpriv"))
      const pid = status.envoy.pid as number
      expect(alive(pid)).toBe(true)
      agent.child.kill("SIGKILL")
      await agent.exited
      agents.pop()
      if (status.envoy.parentDeathSignal) await waitFor(async () => expect(alive(pid)).toBe(false), 20_000)
    },
    120_000
  )

  it("--envoy without --xds-tls is refused with one line, exit 1", async () => {
    const args = agentArgs([]).filter((arg) => arg !== "--xds-tls")
    const result = await runCli(["agent", "--admin", "127.0.0.1:0", ...args])
    expect(result.code, result.stderr).toBe(1)
    expect(result.stderr).toContain("--envoy: Envoy reaches the controller's xDS over mTLS")
  }, 60_000)
})
