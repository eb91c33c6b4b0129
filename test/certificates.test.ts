import { assert, describe, it } from "@effect/vitest"
import {
  Cause,
  Context,
  Duration,
  Effect,
  Either,
  Exit,
  Layer,
  Option,
  Redacted,
  Stream,
  SubscriptionRef,
  TestClock
} from "effect"
import { execFileSync } from "node:child_process"
import { X509Certificate } from "node:crypto"
import * as NodeFs from "node:fs/promises"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { Certificates, type CertificateState, workloadFilesDir } from "../layers/Certificates.js"
import { caPaths } from "../layers/internal/CaStore.js"
import { registry, registry as registry_ } from "../layers/Metrics.js"
import { activateRoot, introduceRoot } from "../src/commands/ca.js"
import "reflect-metadata"
import * as x509 from "@peculiar/x509"
import * as NodeCrypto from "node:crypto"
import { createRoot, issueWorkload, keyIdentifier, loadAuthority, signWorkload } from "../src/certs/Authority.js"
import { renewalTime, serialFraction } from "../src/certs/Rotation.js"
import { mayReadSecret, ROOT_CA_SECRET, secretResources } from "../src/certs/Sds.js"
import { parseMeshPrincipal, parseSpiffeId } from "../src/certs/Spiffe.js"
import type { Service } from "../src/MeshState.js"
import { check, Types } from "../src/xds/Protos.js"
import { certConfig, ephemeralLayer, openssl, persistentLayer, service, tempDir, writeFiles } from "./support/certs.js"

const START = Date.parse("2026-03-01T00:00:00Z")
const HOUR = 3_600_000

const build = <A, E>(layer: Layer.Layer<A, E>) => Effect.map(Layer.build(layer), (context) => context)

const startPersistent = (
  dir: string,
  services: ReadonlyArray<string>,
  certificates: Record<string, unknown> = {},
  more: Record<string, unknown> = {}
) =>
  Effect.gen(function*() {
    const registry = yield* SubscriptionRef.make<ReadonlyArray<Service>>(services.map(service))
    const context = yield* build(persistentLayer(certConfig({ dir, ...certificates }, services, more), registry))
    return { registry, certs: Context.get(context, Certificates) }
  })

/** Waits (on the state stream, not on time) for a state that satisfies `predicate`. */
const awaitState = (certs: Certificates["Type"], predicate: (state: CertificateState) => boolean) =>
  certs.changes.pipe(Stream.filter(predicate), Stream.runHead, Effect.map(Option.getOrThrow))

/** The state as the background loop left it (no freshness check, unlike `state`). */
const peek = (certs: Certificates["Type"]) => certs.changes.pipe(Stream.runHead, Effect.map(Option.getOrThrow))

const mode = (path: string) => Effect.promise(() => NodeFs.stat(path)).pipe(Effect.map((s) => s.mode & 0o777))

describe("SPIFFE IDs", () => {
  it("parses mesh IDs and rejects malformed ones with a reason", () => {
    const ok = parseMeshPrincipal("spiffe://mesh.local/service/echo", "mesh.local")
    assert.deepStrictEqual(Either.map(ok, (p) => p._tag === "Service" && p.name), Either.right("echo"))
    assert.isTrue(Either.isRight(parseMeshPrincipal("spiffe://mesh.local/controller", "mesh.local")))
    for (
      const bad of [
        "https://mesh.local/service/echo",
        "spiffe://Mesh.local/service/echo",
        "spiffe://mesh.local:8443/service/echo",
        "spiffe://mesh.local/service//echo",
        "spiffe://mesh.local/service/../admin",
        "spiffe://mesh.local/service/echo?x=1",
        "spiffe:///service/echo"
      ]
    ) {
      assert.isTrue(Either.isLeft(parseSpiffeId(bad)), bad)
    }
    const foreign = parseMeshPrincipal("spiffe://other.example/service/echo", "mesh.local")
    assert.include(Either.getLeft(foreign).pipe(Option.getOrThrow).message, "trust domain")
  })
})

describe("issued certificates", () => {
  for (const keyAlgorithm of ["ecdsa-p256", "rsa-2048"] as const) {
    it.scopedLive(`openssl verifies the chain and shows the SPIFFE SAN and usages (${keyAlgorithm})`, () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const context = yield* build(ephemeralLayer(certConfig({ keyAlgorithm })))
        const certs = Context.get(context, Certificates)
        const state = yield* certs.state
        const echo = state.services.get("echo")!
        const files = yield* writeFiles(dir, { "bundle.pem": state.bundle.pem, "echo.pem": echo.chainPem })
        const verify = openssl(["verify", "-CAfile", files["bundle.pem"]!, "-purpose", "sslclient", files["echo.pem"]!])
        assert.strictEqual(verify.status, 0, verify.output)
        assert.include(verify.output, "OK")
        const text = openssl(["x509", "-in", files["echo.pem"]!, "-noout", "-text"]).output
        assert.include(text, "URI:spiffe://mesh.local/service/echo")
        assert.include(text, "DNS:echo")
        assert.include(text, "TLS Web Server Authentication, TLS Web Client Authentication")
        assert.match(text, /Key Usage: critical\s+Digital Signature/)
        assert.match(text, /Basic Constraints: critical\s+CA:FALSE/)
        assert.include(text, keyAlgorithm === "ecdsa-p256" ? "prime256v1" : "Public-Key: (2048 bit)")
        // A public key made elsewhere (an agent's CSR) is certified as the service, with the same SANs.
        const outside = NodeCrypto.generateKeyPairSync("ec", { namedCurve: "prime256v1" })
        const signed = yield* certs.signPublicKey("echo", outside.publicKey.export({ format: "der", type: "spki" }))
        const signedFile = (yield* writeFiles(dir, { "signed.pem": signed.chainPem }))["signed.pem"]!
        assert.strictEqual(openssl(["verify", "-CAfile", files["bundle.pem"]!, signedFile]).status, 0)
        assert.strictEqual(
          new X509Certificate(signed.certPem).publicKey.export({ format: "pem", type: "spki" }),
          outside.publicKey.export({ format: "pem", type: "spki" })
        )
        assert.strictEqual(
          new X509Certificate(signed.certPem).subjectAltName,
          "URI:spiffe://mesh.local/service/echo, DNS:echo"
        )
        // A one-off certificate (`certs issue`) verifies the same way.
        const oneOff = yield* certs.issue("batch")
        const oneOffFile = (yield* writeFiles(dir, { "batch.pem": oneOff.chainPem }))["batch.pem"]!
        assert.strictEqual(openssl(["verify", "-CAfile", files["bundle.pem"]!, oneOffFile]).status, 0)
      }))
  }

  it.scoped("the controller has its own identity; SDS secrets pass Envoy's Secret schema and are named by SPIFFE ID", () =>
    Effect.gen(function*() {
      const context = yield* build(ephemeralLayer(certConfig()))
      const certs = Context.get(context, Certificates)
      const state = yield* certs.state
      assert.strictEqual(state.controller.spiffeId, "spiffe://mesh.local/controller")
      const secrets = secretResources({
        trustDomain: "mesh.local",
        bundlePem: state.bundle.pem,
        identities: state.services.values()
      })
      assert.deepStrictEqual(secrets.map((s) => s.name), [
        ROOT_CA_SECRET,
        "spiffe://mesh.local/service/echo",
        "spiffe://mesh.local/service/gateway"
      ])
      for (const secret of secrets) assert.deepStrictEqual(check(Types.Secret, secret), [], secret.name)
      const map = yield* certs.secrets
      assert.deepStrictEqual([...map.keys()], secrets.map((s) => s.name))
      assert.isFalse("name" in map.get(ROOT_CA_SECRET)!)
      assert.isTrue(mayReadSecret(undefined, ROOT_CA_SECRET))
      assert.isTrue(mayReadSecret("spiffe://mesh.local/service/echo", "spiffe://mesh.local/service/echo"))
      assert.isFalse(mayReadSecret("spiffe://mesh.local/service/gateway", "spiffe://mesh.local/service/echo"))
      const expiry = yield* Effect.promise(() =>
        registry.getSingleMetricAsString("mesh_controller_certificate_expiry_seconds")
      )
      assert.match(
        expiry,
        /mesh_controller_certificate_expiry_seconds\{identity="spiffe:\/\/mesh\.local\/service\/echo"\} \d+/
      )
      // Key material stays out of status.
      const status = JSON.stringify(yield* certs.status)
      assert.notInclude(status, "PRIVATE KEY")
      assert.include(status, state.services.get("echo")!.serial)
    }))
})

describe("persistence", () => {
  it.scoped("a restart reuses the CA; the directory is 0700 and the key 0600", () =>
    Effect.gen(function*() {
      const dir = NodePath.join(yield* tempDir, "certs")
      const first = yield* Effect.scoped(Effect.flatMap(startPersistent(dir, ["echo"]), ({ certs }) => certs.bundle))
      const paths = caPaths(dir)
      assert.strictEqual(yield* mode(dir), 0o700)
      assert.strictEqual(yield* mode(paths.key), 0o600)
      const keyBefore = yield* Effect.promise(() => NodeFs.readFile(paths.key))
      const second = yield* Effect.scoped(Effect.flatMap(startPersistent(dir, ["echo"]), ({ certs }) => certs.bundle))
      assert.deepStrictEqual(second.roots.map((r) => r.fingerprint), first.roots.map((r) => r.fingerprint))
      assert.isTrue(keyBefore.equals(yield* Effect.promise(() => NodeFs.readFile(paths.key))))
      const leftovers = (yield* Effect.promise(() => NodeFs.readdir(dir))).filter((name) => name.includes(".tmp-"))
      assert.deepStrictEqual(leftovers, [])
    }))

  it.scoped("a corrupt CA file stops the start with the file and reason, and is left byte-for-byte unchanged", () =>
    Effect.gen(function*() {
      const dir = NodePath.join(yield* tempDir, "certs")
      yield* Effect.scoped(startPersistent(dir, ["echo"]))
      const paths = caPaths(dir)
      const original = yield* Effect.promise(() => NodeFs.readFile(paths.cert, "utf8"))
      const corrupt = original.slice(0, 200) + "!!garbage!!" + original.slice(211)
      yield* Effect.promise(() => NodeFs.writeFile(paths.cert, corrupt))
      const exit = yield* Effect.exit(Effect.scoped(startPersistent(dir, ["echo"])))
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? Cause.failureOption(exit.cause).pipe(Option.getOrThrow) : undefined
      assert.strictEqual(error?._tag, "CaInvalid")
      assert.strictEqual(error?.message, `${paths.cert}: not a valid PEM certificate (corrupt or truncated?)`)
      assert.strictEqual(yield* Effect.promise(() => NodeFs.readFile(paths.cert, "utf8")), corrupt)
    }))

  it.scoped("a key that does not match the certificate is refused, naming the key file", () =>
    Effect.gen(function*() {
      const dir = NodePath.join(yield* tempDir, "certs")
      yield* Effect.scoped(startPersistent(dir, []))
      const paths = caPaths(dir)
      const other = yield* createRoot({
        meshName: "x",
        trustDomain: "mesh.local",
        keyAlgorithm: "ecdsa-p256",
        now: new Date(),
        validityMillis: HOUR
      })
      yield* Effect.promise(() => NodeFs.writeFile(paths.key, Redacted.value(other.keyPem)))
      const error = yield* Effect.flip(Effect.scoped(startPersistent(dir, [])))
      assert.strictEqual(error._tag, "CaInvalid")
      assert.strictEqual(error.message, `${paths.key}: the key does not match the certificate in ${paths.cert}`)
      assert.notInclude(error.message, "PRIVATE")
    }))

  it.effect("loading checks the chain of an operator-provided CA", () =>
    Effect.gen(function*() {
      const root = yield* createRoot({
        meshName: "x",
        trustDomain: "mesh.local",
        keyAlgorithm: "ecdsa-p256",
        now: new Date(),
        validityMillis: HOUR
      })
      const stranger = yield* createRoot({
        meshName: "y",
        trustDomain: "mesh.local",
        keyAlgorithm: "ecdsa-p256",
        now: new Date(),
        validityMillis: HOUR
      })
      const error = yield* Effect.flip(
        loadAuthority({
          certPem: root.certPem,
          certFile: "ca.pem",
          keyPem: root.keyPem,
          keyFile: "key.pem",
          chainPem: stranger.certPem,
          chainFile: "chain.pem"
        })
      )
      assert.strictEqual(error.file, "chain.pem")
      assert.include(error.reason, "did not issue")
    }))
})

describe("bring your own CA", () => {
  it.scopedLive("an operator's intermediate (SEC1 key) signs; the bundle holds the operator root; nothing is written", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const at = (name: string) => NodePath.join(dir, name)
      const run = (...args: Array<string>) => {
        const result = openssl(args)
        assert.strictEqual(result.status, 0, `openssl ${args.join(" ")}: ${result.output}`)
      }
      yield* writeFiles(dir, {
        "int.ext":
          "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
      })
      run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", at("root.key"))
      run(
        "req",
        "-x509",
        "-new",
        "-key",
        at("root.key"),
        "-subj",
        "/CN=Operator Root",
        "-days",
        "30",
        "-out",
        at("root.pem"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign"
      )
      run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", at("int.key"))
      run("req", "-new", "-key", at("int.key"), "-subj", "/CN=Operator Intermediate", "-out", at("int.csr"))
      run(
        "x509",
        "-req",
        "-in",
        at("int.csr"),
        "-CA",
        at("root.pem"),
        "-CAkey",
        at("root.key"),
        "-CAcreateserial",
        "-days",
        "30",
        "-out",
        at("int.pem"),
        "-extfile",
        at("int.ext")
      )

      const stateDir = at("never-written")
      const { certs } = yield* startPersistent(stateDir, ["echo"], {
        ca: { cert: at("int.pem"), key: at("int.key"), chain: at("root.pem") }
      })
      const state = yield* certs.state
      assert.deepStrictEqual(state.bundle.roots.map((r) => [r.state, r.subject]), [["external", "CN=Operator Root"]])
      const files = yield* writeFiles(dir, {
        "echo.pem": state.services.get("echo")!.chainPem,
        "bundle.pem": state.bundle.pem
      })
      // The chain a peer receives (leaf + intermediate) verifies against the operator's root alone.
      const verify = openssl([
        "verify",
        "-CAfile",
        files["bundle.pem"]!,
        "-untrusted",
        files["echo.pem"]!,
        files["echo.pem"]!
      ])
      assert.strictEqual(verify.status, 0, verify.output)
      assert.isTrue(Exit.isFailure(yield* Effect.exit(Effect.promise(() => NodeFs.stat(stateDir)))))
      assert.strictEqual((yield* certs.status).ca, "files")
    }))
})

describe("rotation", () => {
  it("the renewal time sits at the fraction, minus a per-certificate jitter", () => {
    const cert = {
      serial: "7f00000000000000000000000000ffff",
      issuedAt: new Date(0),
      notAfter: new Date(24 * HOUR),
      issuer: "x"
    }
    assert.strictEqual(renewalTime(cert, { renewAt: 0.5, jitter: 0 }).getTime(), 12 * HOUR)
    const jittered = renewalTime(cert, { renewAt: 0.5, jitter: 0.1 }).getTime()
    assert.strictEqual(jittered, Math.round(12 * HOUR * (1 - 0.1 * serialFraction(cert.serial))))
    assert.isTrue(jittered <= 12 * HOUR && jittered >= 10.8 * HOUR)
  })

  it.scoped("renews at the configured fraction of the lifetime (TestClock)", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(START)
      const dir = NodePath.join(yield* tempDir, "certs")
      // With a local Envoy for echo, echo's identity is also kept as files for its bootstrap.
      const { certs } = yield* startPersistent(dir, ["echo"], {
        workloadTtl: "24h",
        renewAt: 0.5,
        renewJitter: 0.1,
        checkInterval: "1m"
      }, {
        sidecar: { envoy: { enabled: true, service: "echo" } }
      })
      const first = (yield* certs.state).services.get("echo")!
      const files = workloadFilesDir(dir, "echo")
      const fileSerial = Effect.promise(() => NodeFs.readFile(NodePath.join(files, "cert.pem"), "utf8")).pipe(
        Effect.map((pem) => new X509Certificate(pem).serialNumber.toLowerCase())
      )
      assert.strictEqual(yield* fileSerial, first.serial)
      assert.strictEqual(yield* mode(NodePath.join(files, "key.pem")), 0o600)
      const renewAt = first.renewAt.getTime()
      assert.isTrue(renewAt >= START + 10.8 * HOUR && renewAt <= START + 12 * HOUR)
      const status = yield* certs.status
      assert.strictEqual(
        status.identities.find((i) => i.spiffeId.endsWith("/echo"))!.renewAt,
        first.renewAt.toISOString()
      )

      yield* TestClock.adjust(Duration.millis(renewAt - START - 2 * 60_000))
      assert.strictEqual((yield* peek(certs)).services.get("echo")!.serial, first.serial)

      yield* TestClock.adjust(Duration.minutes(3))
      // Read through `state`: the check loop does real file I/O, so whether its last wake-up lands
      // inside this adjust is up to the machine; the wall-clock decision is what is under test.
      yield* certs.state
      const renewed = yield* awaitState(certs, (s) => s.services.get("echo")!.serial !== first.serial)
      const echo = renewed.services.get("echo")!
      assert.isTrue(echo.issuedAt.getTime() >= renewAt)
      assert.strictEqual(echo.notAfter.getTime(), echo.issuedAt.getTime() + 24 * HOUR)
      assert.strictEqual(renewed.bundle.pem, (yield* certs.bundle).pem)
      assert.strictEqual(yield* fileSerial, echo.serial)
    }))

  it.scoped("a wall-clock jump past expiry (a host back from a week asleep) renews at once", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(START)
      // A check interval longer than the sleep: no timer fires, so only the wall clock can tell.
      const context = yield* build(ephemeralLayer(certConfig({ checkInterval: "30d" })))
      const certs = Context.get(context, Certificates)
      const before = yield* certs.state
      yield* TestClock.adjust(Duration.days(7))
      assert.strictEqual((yield* peek(certs)).services.get("echo")!.serial, before.services.get("echo")!.serial)
      const after = yield* certs.state
      const now = START + 7 * 24 * HOUR
      for (const name of ["echo", "gateway"]) {
        const identity = after.services.get(name)!
        assert.notStrictEqual(identity.serial, before.services.get(name)!.serial)
        assert.isTrue(identity.notBefore.getTime() < now && identity.notAfter.getTime() > now, name)
      }
      assert.isTrue(after.controller.notAfter.getTime() > now)
      // …and the renewal was published to watchers (SDS, the controller's TLS servers).
      assert.strictEqual((yield* peek(certs)).services.get("echo")!.serial, after.services.get("echo")!.serial)
    }))

  it.scoped("identities follow Discovery: a new service gets one, a removed service loses it", () =>
    Effect.gen(function*() {
      const dir = NodePath.join(yield* tempDir, "certs")
      const { certs, registry } = yield* startPersistent(dir, ["echo"])
      yield* SubscriptionRef.set(registry, [service("echo"), service("billing")])
      const added = yield* awaitState(certs, (s) => s.services.has("billing"))
      assert.strictEqual(added.services.get("billing")!.spiffeId, "spiffe://mesh.local/service/billing")
      yield* SubscriptionRef.set(registry, [service("billing")])
      const removed = yield* awaitState(certs, (s) => !s.services.has("echo"))
      assert.deepStrictEqual([...removed.services.keys()], ["billing"])
    }))

  it.scoped("root rotation: introduce (trusted, not signing), activate (re-issue at once), old root drops after one TTL", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(START)
      const dir = NodePath.join(yield* tempDir, "certs")
      const certificates = { workloadTtl: "24h", checkInterval: "1m" }
      const { certs } = yield* startPersistent(dir, ["echo"], certificates)
      const config = certConfig({ dir, ...certificates }, ["echo"])
      const store = { settings: config.certificates, meshName: "home-lab", trustDomain: "mesh.local" }
      const initial = yield* certs.state
      const oldRoot = initial.bundle.roots[0]!

      const next = yield* introduceRoot(store)
      const refused = yield* Effect.flip(introduceRoot(store))
      assert.include(refused.message, "already waiting")
      yield* TestClock.adjust(Duration.minutes(1))
      const introduced = yield* awaitState(certs, (s) => s.bundle.roots.length === 2)
      assert.deepStrictEqual(introduced.bundle.roots.map((r) => [r.fingerprint, r.state]), [
        [oldRoot.fingerprint, "active"],
        [next.fingerprint, "next"]
      ])
      assert.strictEqual(introduced.services.get("echo")!.serial, initial.services.get("echo")!.serial)

      yield* activateRoot(store)
      yield* TestClock.adjust(Duration.minutes(1))
      const activated = yield* awaitState(certs, (s) => s.bundle.roots[0]!.fingerprint === next.fingerprint)
      assert.deepStrictEqual(activated.bundle.roots.map((r) => r.state), ["active", "previous"])
      const echo = yield* awaitState(certs, (s) => s.services.get("echo")!.issuer === next.fingerprint)
      assert.notStrictEqual(echo.services.get("echo")!.serial, initial.services.get("echo")!.serial)
      assert.strictEqual(echo.controller.issuer, next.fingerprint)

      yield* TestClock.adjust(Duration.hours(25))
      const pruned = yield* awaitState(certs, (s) => s.bundle.roots.length === 1)
      assert.strictEqual(pruned.bundle.roots[0]!.fingerprint, next.fingerprint)
      // The retired root is kept on disk.
      const kept = yield* Effect.promise(() => NodeFs.readdir(caPaths(dir).previousDir))
      assert.strictEqual(kept.length, 2)
    }))
})

/** Polls in real time (the check loop does real file I/O), for tests whose clock is live. */
const until = <A>(check: Effect.Effect<A | undefined>) =>
  Effect.gen(function*() {
    const deadline = Date.now() + 15_000
    for (;;) {
      const value = yield* check
      if (value !== undefined) return value
      if (Date.now() > deadline) return yield* Effect.die("condition not met within 15 s")
      yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 25)))
    }
  })

const exists = (path: string) => Effect.promise(() => NodeFs.stat(path).then(() => true, () => false))
const newPair = createRoot({
  meshName: "x",
  trustDomain: "mesh.local",
  keyAlgorithm: "ecdsa-p256",
  now: new Date(),
  validityMillis: 24 * HOUR
})
const fingerprintOf = (pem: string) => new X509Certificate(pem).fingerprint256

/** Whether this process may mount a read-only tmpfs (root with CAP_SYS_ADMIN, as in this CI container). */
const canMountReadOnly = (() => {
  const dir = NodePath.join(NodeOs.tmpdir(), `mesh-ro-probe-${process.pid}`)
  try {
    execFileSync("mkdir", ["-p", dir])
    execFileSync("mount", ["-t", "tmpfs", "-o", "ro", "tmpfs", dir], { stdio: "ignore" })
    execFileSync("umount", [dir], { stdio: "ignore" })
    return true
  } catch {
    return false
  } finally {
    execFileSync("rm", ["-rf", dir])
  }
})()

describe("faults at the worst moment", () => {
  it.scoped("a first start stopped after the key was published finishes publishing the staged root, and cleans up", () =>
    Effect.gen(function*() {
      const dir = NodePath.join(yield* tempDir, "certs")
      const paths = caPaths(dir)
      const root = yield* newPair
      // What a crash between the two links leaves: the whole pair staged, the key in place, a temp file.
      yield* Effect.promise(async () => {
        await NodeFs.mkdir(paths.staging, { recursive: true, mode: 0o700 })
        await NodeFs.writeFile(NodePath.join(paths.staging, "ca-key.pem"), Redacted.value(root.keyPem), { mode: 0o600 })
        await NodeFs.writeFile(NodePath.join(paths.staging, "ca.pem"), root.certPem)
        await NodeFs.writeFile(paths.key, Redacted.value(root.keyPem), { mode: 0o600 })
        await NodeFs.writeFile(`${paths.cert}.tmp-0123456789ab`, root.certPem.slice(0, 100))
      })
      const { certs } = yield* startPersistent(dir, ["echo"])
      const bundle = yield* certs.bundle
      // The staged root is the one published: never replaced by a new one.
      assert.deepStrictEqual(bundle.roots.map((r) => r.fingerprint), [fingerprintOf(root.certPem)])
      assert.strictEqual(yield* Effect.promise(() => NodeFs.readFile(paths.cert, "utf8")), root.certPem)
      assert.deepStrictEqual((yield* Effect.promise(() => NodeFs.readdir(dir))).sort(), ["ca-key.pem", "ca.pem"])
    }))

  it.scoped("a first start stopped before the staged pair was whole leaves no CA: the next start makes one and removes the debris", () =>
    Effect.gen(function*() {
      const dir = NodePath.join(yield* tempDir, "certs")
      const paths = caPaths(dir)
      const root = yield* newPair
      yield* Effect.promise(async () => {
        await NodeFs.mkdir(paths.staging, { recursive: true, mode: 0o700 })
        await NodeFs.writeFile(NodePath.join(paths.staging, "ca-key.pem"), Redacted.value(root.keyPem), { mode: 0o600 })
        await NodeFs.writeFile(NodePath.join(paths.staging, `ca.pem.tmp-0123456789ab`), "half a cert")
        await NodeFs.writeFile(`${paths.key}.tmp-ba9876543210`, "half a key")
      })
      const { certs } = yield* startPersistent(dir, ["echo"])
      const bundle = yield* certs.bundle
      assert.strictEqual(bundle.roots.length, 1)
      assert.deepStrictEqual((yield* Effect.promise(() => NodeFs.readdir(dir))).sort(), ["ca-key.pem", "ca.pem"])
      assert.strictEqual(yield* mode(paths.key), 0o600)
    }))

  it.scoped("`ca rotate --activate` stopped between its renames is completed at the next start; a half-written next/ is discarded", () =>
    Effect.gen(function*() {
      const dir = NodePath.join(yield* tempDir, "certs")
      const paths = caPaths(dir)
      const config = certConfig({ dir }, ["echo"])
      const store = { settings: config.certificates, meshName: "home-lab", trustDomain: "mesh.local" }
      yield* Effect.scoped(startPersistent(dir, ["echo"]))
      const next = yield* introduceRoot(store)
      // The first of activation's two renames happened (old root already copied to previous/ by then).
      yield* Effect.promise(async () => {
        await NodeFs.mkdir(paths.previousDir, { mode: 0o700 })
        await NodeFs.copyFile(paths.cert, NodePath.join(paths.previousDir, "20260301T000000Z-0000000000000000.pem"))
        await NodeFs.rename(paths.nextKey, paths.key)
        await NodeFs.mkdir(paths.nextStaging, { mode: 0o700 })
        await NodeFs.writeFile(NodePath.join(paths.nextStaging, "ca-key.pem"), "half", { mode: 0o600 })
      })
      const { certs } = yield* startPersistent(dir, ["echo"])
      const bundle = yield* certs.bundle
      assert.strictEqual(bundle.roots[0]!.fingerprint, next.fingerprint)
      assert.strictEqual(bundle.roots[0]!.state, "active")
      assert.isFalse(yield* exists(paths.nextDir))
      assert.isFalse(yield* exists(paths.nextStaging))
    }))

  it.scopedLive("a different CA pair copied into the directory while running is refused and reported; the CA in force keeps signing", () =>
    Effect.gen(function*() {
      const dir = NodePath.join(yield* tempDir, "certs")
      const paths = caPaths(dir)
      const { certs, registry } = yield* startPersistent(dir, ["echo"], { checkInterval: "50ms" })
      const before = yield* certs.state
      const original = before.bundle.roots[0]!.fingerprint
      const foreign = yield* newPair
      yield* Effect.promise(async () => {
        await NodeFs.writeFile(paths.key, Redacted.value(foreign.keyPem), { mode: 0o600 })
        await NodeFs.writeFile(paths.cert, foreign.certPem)
      })
      const status = yield* until(Effect.map(certs.status, (s) => (s.caRefused === null ? undefined : s)))
      assert.include(status.caRefused!, fingerprintOf(foreign.certPem))
      assert.include(status.caRefused!, "ca rotate")
      assert.include(status.lastError!, "without `ca rotate`")
      // New identities are still signed by the root in force, and the bundle did not change.
      yield* SubscriptionRef.set(registry, [service("echo"), service("billing")])
      const after = yield* awaitState(certs, (s) => s.services.has("billing"))
      assert.deepStrictEqual(after.bundle.roots.map((r) => r.fingerprint), [original])
      assert.strictEqual(after.services.get("billing")!.issuer, original)
      assert.strictEqual(after.services.get("echo")!.serial, before.services.get("echo")!.serial)
      const failures = yield* Effect.promise(() =>
        registry_.getSingleMetricAsString("mesh_controller_certificate_failures_total")
      )
      assert.match(failures, /what="ca"\} [1-9]/)
    }))

  it.scoped("an existing CA key readable by others is refused at start, naming the fix", () =>
    Effect.gen(function*() {
      const dir = NodePath.join(yield* tempDir, "certs")
      const paths = caPaths(dir)
      yield* Effect.scoped(startPersistent(dir, []))
      yield* Effect.promise(() => NodeFs.chmod(paths.key, 0o644))
      const error = yield* Effect.flip(Effect.scoped(startPersistent(dir, [])))
      assert.strictEqual(error._tag, "CaInvalid")
      assert.strictEqual(
        error.message,
        `${paths.key}: permissions 0644 are too open: the CA key must not be accessible by group or others; run \`chmod 600 ${paths.key}\``
      )
      assert.strictEqual(yield* mode(paths.key), 0o644, "left as it was")
    }))

  it.scoped.skipIf(!canMountReadOnly)(
    "creating the state dir on a read-only file system says so (needs root with CAP_SYS_ADMIN for a ro tmpfs mount)",
    () =>
      Effect.gen(function*() {
        const mount = yield* Effect.acquireRelease(
          Effect.map(tempDir, (dir) => {
            execFileSync("mount", ["-t", "tmpfs", "-o", "ro", "tmpfs", dir])
            return dir
          }),
          (dir) => Effect.sync(() => execFileSync("umount", [dir]))
        )
        const error = yield* Effect.flip(Effect.scoped(startPersistent(NodePath.join(mount, "state", "certs"), [])))
        assert.strictEqual(error._tag, "CertificateStoreError")
        assert.strictEqual(
          error.message,
          `${NodePath.join(mount, "state", "certs")}: cannot create the directory in ${mount}: read-only file system`
        )
      })
  )

  it.scoped("a file where the state dir's parent should be is named as such", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      yield* Effect.promise(() => NodeFs.writeFile(NodePath.join(dir, "state"), "not a directory"))
      const target = NodePath.join(dir, "state", "certs")
      const error = yield* Effect.flip(Effect.scoped(startPersistent(target, [])))
      assert.strictEqual(
        error.message,
        `${target}: cannot create the directory: a part of the path is a file, not a directory`
      )
    }))
})

describe("the direct DER path (issue 16)", () => {
  const rootAuthority = (keyAlgorithm: "ecdsa-p256" | "rsa-2048") =>
    Effect.gen(function*() {
      const root = yield* createRoot({
        meshName: "home lab",
        trustDomain: "mesh.local",
        keyAlgorithm,
        now: new Date(START),
        validityMillis: 365 * 24 * HOUR
      })
      const authority = yield* loadAuthority({
        certPem: root.certPem,
        certFile: "ca.pem",
        keyPem: root.keyPem,
        keyFile: "ca-key.pem"
      })
      return { root, authority }
    })
  for (const keyAlgorithm of ["ecdsa-p256", "rsa-2048"] as const) {
    it.scopedLive(`issueWorkload's key is the PKCS#8 OpenSSL writes, and is the certificate's (${keyAlgorithm})`, () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const { authority } = yield* rootAuthority(keyAlgorithm)
        // Several P-256 keys: a component with leading zero bytes must still be encoded at full length.
        for (let i = 0; i < (keyAlgorithm === "ecdsa-p256" ? 50 : 2); i++) {
          const issued = yield* issueWorkload(authority, {
            spiffeId: "spiffe://mesh.local/service/echo",
            commonName: "echo",
            organization: "home lab",
            dnsNames: ["echo"],
            keyAlgorithm,
            now: new Date(START + 1234),
            ttlMillis: 24 * HOUR
          })
          const keyPem = Redacted.value(issued.keyPem)
          const key = NodeCrypto.createPrivateKey(keyPem)
          assert.strictEqual(key.asymmetricKeyType, keyAlgorithm === "ecdsa-p256" ? "ec" : "rsa")
          assert.strictEqual(key.export({ format: "pem", type: "pkcs8" }), keyPem)
          assert.isTrue(new X509Certificate(issued.certPem).checkPrivateKey(key))
          if (i > 0) continue
          const files = yield* writeFiles(dir, { "key.pem": keyPem, "leaf.pem": issued.certPem })
          // OpenSSL reads the key and re-writes it to the same bytes; its public half is the certificate's.
          assert.strictEqual(openssl(["pkey", "-in", files["key.pem"]!]).output, keyPem)
          assert.strictEqual(
            openssl(["pkey", "-in", files["key.pem"]!, "-pubout"]).output,
            openssl(["x509", "-in", files["leaf.pem"]!, "-noout", "-pubkey"]).output
          )
        }
      }))
    it.scopedLive(`signWorkload's certificate equals @peculiar/x509's for the same key, and openssl verifies it (${keyAlgorithm})`, () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const { authority, root } = yield* rootAuthority(keyAlgorithm)
        // An externally made key (as the agent's CSR brings): the CA signs its public half only.
        const pair = keyAlgorithm === "ecdsa-p256"
          ? NodeCrypto.generateKeyPairSync("ec", { namedCurve: "prime256v1" })
          : NodeCrypto.generateKeyPairSync("rsa", { modulusLength: 2048 })
        const publicKey = pair.publicKey.export({ format: "der", type: "spki" })
        const now = new Date(START + 1234)
        const request = {
          spiffeId: "spiffe://mesh.local/service/echo",
          commonName: "echo",
          organization: "home lab",
          dnsNames: ["echo", "echo-v2"],
          now,
          ttlMillis: 24 * HOUR
        }
        const fast = yield* signWorkload(authority, { ...request, publicKey })
        // The way every certificate was built before: @peculiar/x509 from the same inputs.
        const reference = yield* Effect.promise(() =>
          x509.X509CertificateGenerator.create({
            serialNumber: fast.serial,
            subject: "CN=echo, O=home lab",
            issuer: authority.certificate.subjectName,
            notBefore: fast.notBefore,
            notAfter: fast.notAfter,
            publicKey: new Uint8Array(publicKey),
            signingKey: authority.key,
            signingAlgorithm: keyAlgorithm === "ecdsa-p256"
              ? { name: "ECDSA", hash: "SHA-256" }
              : authority.key.algorithm,
            extensions: [
              new x509.BasicConstraintsExtension(false, undefined, true),
              new x509.KeyUsagesExtension(
                keyAlgorithm === "ecdsa-p256"
                  ? x509.KeyUsageFlags.digitalSignature
                  : x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
                true
              ),
              new x509.ExtendedKeyUsageExtension(
                [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
                false
              ),
              new x509.SubjectAlternativeNameExtension([
                { type: "url", value: request.spiffeId },
                { type: "dns", value: "echo" },
                { type: "dns", value: "echo-v2" }
              ]),
              new x509.SubjectKeyIdentifierExtension(keyIdentifier(new Uint8Array(publicKey)), false),
              new x509.AuthorityKeyIdentifierExtension(authority.keyId, false)
            ]
          }, NodeCrypto.webcrypto)
        )
        const parsed = new x509.X509Certificate(fast.certPem)
        const tbsOf = (der: ArrayBuffer) => {
          // Everything but the signature (ECDSA signatures differ run to run).
          const cert = new X509Certificate(Buffer.from(der))
          return {
            subject: cert.subject,
            issuer: cert.issuer,
            validFrom: cert.validFrom,
            validTo: cert.validTo,
            serial: cert.serialNumber
          }
        }
        assert.deepStrictEqual(tbsOf(parsed.rawData), tbsOf(reference.rawData))
        assert.deepStrictEqual(
          parsed.extensions.map((e) => [e.type, e.critical, Buffer.from(e.value).toString("hex")]),
          reference.extensions.map((e) => [e.type, e.critical, Buffer.from(e.value).toString("hex")])
        )
        assert.deepStrictEqual(parsed.signatureAlgorithm, reference.signatureAlgorithm)
        assert.isTrue(
          yield* Effect.promise(() =>
            parsed.verify({ publicKey: authority.certificate.publicKey, signatureOnly: true }, NodeCrypto.webcrypto)
          )
        )
        assert.strictEqual(parsed.notAfter.getTime(), Math.floor((START + 1234 + 24 * HOUR) / 1000) * 1000)
        const files = yield* writeFiles(dir, { "ca.pem": root.certPem, "leaf.pem": fast.certPem })
        const verify = openssl([
          "verify",
          "-attime",
          String((START + HOUR) / 1000),
          "-CAfile",
          files["ca.pem"]!,
          "-purpose",
          "sslserver",
          files["leaf.pem"]!
        ])
        assert.strictEqual(verify.status, 0, verify.output)
        // Strict DER: openssl re-encodes it to the same bytes.
        const reencoded = openssl(["x509", "-in", files["leaf.pem"]!, "-outform", "PEM"]).output
        assert.strictEqual(reencoded, fast.certPem)
        const text = openssl(["x509", "-in", files["leaf.pem"]!, "-noout", "-text"]).output
        assert.include(text, "URI:spiffe://mesh.local/service/echo, DNS:echo, DNS:echo-v2")
        assert.include(
          text,
          keyAlgorithm === "ecdsa-p256" ? "Digital Signature\n" : "Digital Signature, Key Encipherment"
        )
      }))
  }
})
