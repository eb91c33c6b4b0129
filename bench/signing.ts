/**
 * Issuances per second through the signing service, and the agent's idle memory.
 *
 *   npx tsx bench/signing.ts                  # 100 concurrent callers, 5 s of renewals
 *   npx tsx bench/signing.ts --agents 100 --seconds 10
 *
 * The controller's Certificates (an ephemeral CA) and SigningService layers run in this process on
 * 127.0.0.1; the load is `--agents` callers in this same process, each with its own key:
 * - joins: every caller sends a CSR with its own single-use token, all at once;
 * - renewals: every caller renews over mTLS with the certificate it got, back to back, for `--seconds`.
 * Baseline, measured in the same run: `signPublicKey` called directly (no gRPC, TLS, token or
 * CSR check), with the same concurrency. The ratio is what the service costs on top of signing.
 *
 * Idle RSS: `mesh-controller agent` joined and left idle for 5 s, as the executable (dist/bin, the
 * bundle the package's bin and the image run) and from the per-module build (dist/src), against a
 * bare `node` process idling, all read from /proc (run `npm run build` first). Figures, not a test.
 */
import { Duration, Effect, Layer, Logger, LogLevel, Redacted, Schema, SubscriptionRef } from "effect"
import { spawn } from "node:child_process"
import * as NodeCrypto from "node:crypto"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Certificates } from "../layers/Certificates.js"
import { Discovery } from "../layers/Discovery.js"
import { requestCertificate } from "../layers/internal/SigningClient.js"
import { fileTokenStore } from "../layers/internal/TokenStore.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { SigningService } from "../layers/SigningService.js"
import { MeshConfig } from "../schemas/Config.js"
import { generateKeyPair, splitPem } from "../src/certs/Authority.js"
import type { Service } from "../src/MeshState.js"
import { makeCsr } from "../src/signing/Csr.js"
import { formatToken, hashSecret, newTokenSecrets, rootFingerprintHex } from "../src/tokens/Token.js"

const argument = (name: string, fallback: string) => {
  const index = process.argv.indexOf(`--${name}`)
  return index === -1 ? fallback : (process.argv[index + 1] ?? fallback)
}
const agents = Number(argument("agents", "100"))
const seconds = Number(argument("seconds", "5"))

const config = Schema.decodeUnknownSync(MeshConfig)({
  mesh: { name: "bench", trustDomain: "mesh.local" },
  services: [{ name: "web", port: 8080 }],
  certificates: { workloadTtl: "1h" }
})
const dir = mkdtempSync(join(tmpdir(), "bench-signing-"))
const tokens = fileTokenStore(join(dir, "tokens"))
const loose = { burst: 1_000_000, perSecond: 1_000_000 }

const program = Effect.gen(function*() {
  const certificates = yield* Certificates
  const signing = yield* SigningService
  const address = `127.0.0.1:${signing.address!.port}`
  const bundle = (yield* certificates.bundle).pem
  const root = splitPem(bundle)[0]!
  const key = yield* tokens.macKey

  // Each caller: a key and CSR made up front (the agents' work, not the service's).
  const callers = yield* Effect.forEach(Array.from({ length: agents }), () =>
    Effect.gen(function*() {
      const keys = yield* generateKeyPair("ecdsa-p256")
      const csr = yield* makeCsr(keys, { service: "web" })
      const { id, secret } = newTokenSecrets()
      yield* tokens.create({
        id,
        service: "web",
        createdAt: new Date().toISOString(),
        expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
        uses: 1,
        used: 0,
        secretHash: hashSecret(secret)
      })
      const keyPem = NodeCrypto.KeyObject.from(keys.privateKey).export({ format: "pem", type: "pkcs8" }).toString()
      return { csr, keyPem, token: formatToken(key, { id, secret, rootFingerprint: rootFingerprintHex(root) }) }
    }))

  const joinStart = performance.now()
  const joined = yield* Effect.forEach(callers, (c) =>
    Effect.map(
      requestCertificate(address, { _tag: "Verified", roots: root }, {
        csr_pem: c.csr,
        token: c.token,
        service: "web",
        instance: ""
      }, 120_000),
      (answer) => ({ ...c, chainPem: answer.certificate_chain_pem })
    ), { concurrency: "unbounded" })
  const joinRate = agents / ((performance.now() - joinStart) / 1000)

  const timed = (once: (i: number) => Effect.Effect<unknown, unknown>) =>
    Effect.gen(function*() {
      const end = performance.now() + seconds * 1000
      let count = 0
      const start = performance.now()
      yield* Effect.forEach(Array.from({ length: agents }, (_, i) => i), (i) =>
        Effect.gen(function*() {
          while (performance.now() < end) {
            yield* once(i)
            count++
          }
        }), { concurrency: "unbounded", discard: true })
      return count / ((performance.now() - start) / 1000)
    })

  const spki = joined.map((c) =>
    new Uint8Array(NodeCrypto.createPublicKey(c.keyPem).export({ format: "der", type: "spki" }))
  )
  const renewal = (i: number) =>
    requestCertificate(
      address,
      {
        _tag: "Verified",
        roots: bundle,
        identity: { chainPem: joined[i]!.chainPem, keyPem: Redacted.make(joined[i]!.keyPem) }
      },
      { csr_pem: joined[i]!.csr, token: "", service: "", instance: "" },
      120_000
    )
  const direct = (i: number) => certificates.signPublicKey("web", spki[i]!)
  // Two interleaved rounds, so a burst of load from elsewhere lands on both sides.
  const baseline1 = yield* timed(direct)
  const service1 = yield* timed(renewal)
  const baseline2 = yield* timed(direct)
  const service2 = yield* timed(renewal)
  const baseline = (baseline1 + baseline2) / 2
  const service = (service1 + service2) / 2
  console.log(`joins: ${agents} concurrent token+CSR calls, ${joinRate.toFixed(1)} issuances/s`)
  console.log(
    `renewals over mTLS, ${agents} concurrent callers: ${service.toFixed(1)} issuances/s (rounds ${
      service1.toFixed(1)
    }, ${service2.toFixed(1)})`
  )
  console.log(
    `baseline signPublicKey in-process, same concurrency: ${baseline.toFixed(1)}/s (rounds ${baseline1.toFixed(1)}, ${
      baseline2.toFixed(1)
    })`
  )
  console.log(`ratio service/baseline: ${(service / baseline).toFixed(3)}`)
  return {
    port: signing.address!.port,
    token: (yield* Effect.promise(async () => {
      const { id, secret } = newTokenSecrets()
      await Effect.runPromise(tokens.create({
        id,
        service: "web",
        createdAt: new Date().toISOString(),
        expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
        // One join for each of the two agents measured below.
        uses: 2,
        used: 0,
        secretHash: hashSecret(secret)
      }))
      return formatToken(key, { id, secret, rootFingerprint: rootFingerprintHex(root) })
    }))
  }
})

const rssOf = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024

const idleRss = (args: ReadonlyArray<string>, ready: (line: string) => boolean) =>
  Effect.async<number>((resume) => {
    const child = spawn(process.execPath, [...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, LOG_FORMAT: "json" }
    })
    let seen = false
    const onLine = (chunk: Buffer) => {
      if (seen || !ready(chunk.toString())) return
      seen = true
      setTimeout(() => {
        const rss = rssOf(child.pid!)
        child.kill("SIGTERM")
        resume(Effect.succeed(rss))
      }, 5000)
    }
    child.stdout.on("data", onLine)
    child.stderr.on("data", onLine)
  })

const registry = SubscriptionRef.make<ReadonlyArray<Service>>([])
const layer = Layer.unwrapEffect(
  Effect.map(
    registry,
    (r) =>
      SigningService.layer({ host: "127.0.0.1", port: 0, perPeer: loose, perToken: loose, tokens }).pipe(
        Layer.provideMerge(Certificates.layerEphemeral),
        Layer.provide(Discovery.layerMemory(r)),
        Layer.provide(LiveConfig.layerMemory(config))
      )
  )
)

Effect.runPromise(
  Effect.scoped(Effect.gen(function*() {
    const { port, token } = yield* Effect.provide(program, yield* Layer.build(layer))
    // The executable (the package's bin and the image: a tree-shaken bundle) and the per-module
    // build (dist/src, what library users import), each joining with the two-use token.
    const tokenFile = join(dir, "token")
    writeFileSync(tokenFile, token)
    const agentRss = (entry: string, name: string) =>
      Effect.gen(function*() {
        return yield* idleRss(
          [
            entry,
            "agent",
            "--controller",
            `127.0.0.1:${port}`,
            "--token-file",
            tokenFile,
            "--dir",
            join(dir, `agent-${name}`),
            "--admin",
            "127.0.0.1:0"
          ],
          (line) => line.includes("certificate written")
        )
      })
    const agent = yield* agentRss("dist/bin/mesh-controller.mjs", "bundle")
    const perModule = yield* agentRss("dist/src/main.js", "modules")
    const bare = yield* idleRss(
      ["-e", "console.log('ready'); setInterval(() => {}, 1000)"],
      (line) => line.includes("ready")
    )
    console.log(
      `agent idle RSS: ${agent.toFixed(1)} MiB (executable, dist/bin), ${
        perModule.toFixed(1)
      } MiB (per-module dist/src); bare node idle: ${bare.toFixed(1)} MiB; ratio ${(agent / bare).toFixed(2)} / ${
        (perModule / bare).toFixed(2)
      }`
    )
    yield* Effect.sleep(Duration.millis(100))
  })).pipe(Logger.withMinimumLogLevel(LogLevel.Warning))
).then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
