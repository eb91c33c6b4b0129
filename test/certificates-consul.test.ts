/**
 * `certificates.store: consul` in-process, with the real `consul` npm client over HTTP: creation
 * exactly once under the session lock and CAS, sealed keys, waiting for Consul, a dead lock holder,
 * and `ca rotate` seen by every controller through the prefix watch.
 *
 * By default the target is the Consul stand-in (test/support/ConsulStandIn.ts). With
 * CONSUL_HTTP_ADDR set the behaviour tests run against that real agent (a prefix unique to the
 * run), and those needing the stand-in's fault injection are skipped.
 */
import { assert, describe, it } from "@effect/vitest"
import Consul from "consul"
import { Context, Duration, Effect, Fiber, Layer, Option, SubscriptionRef } from "effect"
import * as NodeFs from "node:fs/promises"
import * as NodePath from "node:path"
import { Certificates } from "../layers/Certificates.js"
import { ConsulClient, makeConsulConnection } from "../layers/ConsulClient.js"
import { Discovery } from "../layers/Discovery.js"
import { makeConsulCaStore, readKek } from "../layers/internal/ConsulCaStore.js"
import { consulTokenStore } from "../layers/internal/ConsulTokenStore.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { fingerprint } from "../src/certs/Authority.js"
import type { Service } from "../src/MeshState.js"
import { checkRecord, hashSecret, newTokenSecrets } from "../src/tokens/Token.js"
import { certConfig, tempDir } from "./support/certs.js"
import { ConsulStandIn } from "./support/ConsulStandIn.js"
import { eventually } from "./support/eventually.js"

const REAL_AGENT = process.env["CONSUL_HTTP_ADDR"]
const TARGET = REAL_AGENT
  ? `a real Consul agent at ${REAL_AGENT}`
  : "the Consul stand-in (set CONSUL_HTTP_ADDR for a real agent)"
const run = Math.random().toString(36).slice(2, 7)
let prefixes = 0
const newPrefix = () => `mesh-controller-test/${run}-${++prefixes}/ca`

/** The target address, and the stand-in when there is one. */
const target = REAL_AGENT
  ? Effect.succeed({ address: REAL_AGENT, standIn: undefined as ConsulStandIn | undefined })
  : Effect.map(
    ConsulStandIn.make,
    (standIn) => ({ address: standIn.address, standIn: standIn as ConsulStandIn | undefined })
  )

const writeKek = (dir: string, name = "kek") =>
  Effect.promise(async () => {
    const file = NodePath.join(dir, name)
    await NodeFs.writeFile(file, `${Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64")}\n`, {
      mode: 0o600
    })
    return file
  })

const storeSettings = (dir: string) => ({
  settings: certConfig({ dir }).certificates,
  meshName: "home-lab",
  trustDomain: "mesh.local"
})

const fast = { retry: { base: Duration.millis(20), cap: Duration.millis(200) } }

const openStore = (address: string, prefix: string, kekFile: string, dir: string, holder: string) =>
  Effect.gen(function*() {
    const client = yield* makeConsulConnection(
      certConfig({}, [], { discovery: { consul: { address } } }).discovery.consul!
    )
    return yield* makeConsulCaStore({
      client,
      settings: { prefix, keyEncryptionKeyFile: kekFile, sessionTtl: Duration.seconds(10) },
      store: storeSettings(dir),
      holder,
      ...fast
    })
  })

/** The `<prefix>/ca` document as a reader of KV alone sees it. */
const readKv = (address: string, key: string) =>
  Effect.promise(async () => {
    const url = new URL(address)
    const consul = new Consul({ host: url.hostname, port: Number(url.port), secure: url.protocol === "https:" })
    const entry = (await consul.kv.get(key)) as { Value?: string } | null | undefined
    return entry?.Value ?? undefined
  })

describe(`ConsulCaStore against ${TARGET}`, () => {
  it.scopedLive("three controllers starting at once agree on one root; KV alone holds no usable key", () =>
    Effect.gen(function*() {
      const { address } = yield* target
      const dir = yield* tempDir
      const kek = yield* writeKek(dir)
      const prefix = newPrefix()
      const stores = yield* Effect.all([0, 1, 2].map((i) => openStore(address, prefix, kek, dir, `controller-${i}`)))
      const materials = yield* Effect.all(stores.map((s) => s.open), { concurrency: "unbounded" })
      const fingerprints = new Set(materials.map((m) => m.authority.fingerprint))
      assert.strictEqual(fingerprints.size, 1)
      const text = yield* readKv(address, `${prefix}/ca`)
      assert.isDefined(text)
      assert.notInclude(text!, "PRIVATE KEY")
      const doc = JSON.parse(text!) as { active: { cert: string; key: { alg: string } } }
      assert.strictEqual(fingerprint(doc.active.cert), [...fingerprints][0])
      assert.strictEqual(doc.active.key.alg, "A256GCM")
      // The lock went with its session once creation was done.
      assert.isUndefined(yield* readKv(address, `${prefix}/lock`))
    }))

  it.scopedLive("a different key-encryption key cannot open the stored root: a clear error, nothing written", () =>
    Effect.gen(function*() {
      const { address } = yield* target
      const dir = yield* tempDir
      const prefix = newPrefix()
      const a = yield* openStore(address, prefix, yield* writeKek(dir, "kek-a"), dir, "a")
      yield* a.open
      const before = yield* readKv(address, `${prefix}/ca`)
      const b = yield* openStore(address, prefix, yield* writeKek(dir, "kek-b"), dir, "b")
      const error = yield* Effect.flip(b.open)
      assert.strictEqual(error._tag, "CaInvalid")
      assert.include(error.message, "key-encryption key")
      assert.strictEqual(yield* readKv(address, `${prefix}/ca`), before)
    }))

  it.scopedLive("a KEK file others can read is refused", () =>
    Effect.gen(function*() {
      const { address } = yield* target
      const dir = yield* tempDir
      const kek = yield* writeKek(dir)
      yield* Effect.promise(() => NodeFs.chmod(kek, 0o644))
      const error = yield* Effect.flip(openStore(address, newPrefix(), kek, dir, "a"))
      assert.include(error.message, "chmod 600")
    }))
})

describe.skipIf(REAL_AGENT !== undefined)("ConsulCaStore faults (the stand-in)", () => {
  it.scopedLive("a controller that cannot reach Consul waits and never creates a root; it adopts the peers' root", () =>
    Effect.gen(function*() {
      const standIn = yield* ConsulStandIn.make
      const dir = yield* tempDir
      const kek = yield* writeKek(dir)
      const prefix = newPrefix()
      const peer = yield* openStore(standIn.address, prefix, kek, dir, "peer")
      const root = (yield* peer.open).authority.fingerprint
      const before = standIn.kvEntry(`${prefix}/ca`)!.modifyIndex
      yield* Effect.promise(() => standIn.refuseConnections())
      const late = yield* openStore(standIn.address, prefix, kek, dir, "late")
      const opening = yield* Effect.fork(late.open)
      // It reports the trouble while it waits.
      yield* eventually(
        Effect.flatMap(late.status, (s) => (s.consulError !== null ? Effect.void : Effect.fail("no error yet")))
      )
      assert.isTrue(Option.isNone(yield* Fiber.poll(opening)))
      yield* Effect.promise(() => standIn.acceptConnections())
      const material = yield* Fiber.join(opening)
      assert.strictEqual(material.authority.fingerprint, root)
      assert.strictEqual(standIn.kvEntry(`${prefix}/ca`)!.modifyIndex, before)
      assert.isNull((yield* late.status).consulError)
    }))

  it.scopedLive(
    "a creator that died holding the lock loses it with its session (TTL); another finishes with one root",
    () =>
      Effect.gen(function*() {
        const standIn = yield* ConsulStandIn.make
        const dir = yield* tempDir
        const kek = yield* writeKek(dir)
        const prefix = newPrefix()
        // What a controller killed inside the lock leaves: a session nobody renews, holding the lock.
        const consul = new Consul({ host: "127.0.0.1", port: standIn.port })
        const dead = (yield* Effect.promise(() =>
          consul.session.create({ ttl: "10s", behavior: "delete", lockdelay: "0s" })
        )) as { ID: string }
        const took = yield* Effect.promise(() =>
          consul.kv.set({ key: `${prefix}/lock`, value: JSON.stringify({ holder: "dead" }), acquire: dead.ID })
        )
        assert.isTrue(took)
        const other = yield* openStore(standIn.address, prefix, kek, dir, "other")
        const opening = yield* Effect.fork(other.open)
        yield* eventually(Effect.flatMap(other.status, (s) => (s.lockHolder === "dead" ? Effect.void : Effect.fail(s))))
        assert.isTrue(Option.isNone(yield* Fiber.poll(opening)))
        const material = yield* Fiber.join(opening)
        const stored = JSON.parse(standIn.kvEntry(`${prefix}/ca`)!.value.toString()) as { active: { cert: string } }
        assert.strictEqual(fingerprint(stored.active.cert), material.authority.fingerprint)
        assert.deepStrictEqual(standIn.liveSessions(), [])
      }),
    { timeout: 60_000 }
  )
})

describe(`Certificates with store: consul against ${TARGET}`, () => {
  it.scopedLive(
    "`ca rotate` through one controller reaches every controller's trust bundle, and activation its signer",
    () =>
      Effect.gen(function*() {
        const { address } = yield* target
        const dir = yield* tempDir
        const kek = yield* writeKek(dir)
        const prefix = newPrefix()
        const controller = (name: string) =>
          Effect.gen(function*() {
            const config = certConfig(
              {
                dir: NodePath.join(dir, name),
                store: "consul",
                consul: { prefix, keyEncryptionKeyFile: kek, sessionTtl: "10s" }
              },
              [],
              { discovery: { consul: { address } } }
            )
            const registry = yield* SubscriptionRef.make<ReadonlyArray<Service>>([])
            const configLayer = LiveConfig.layerMemory(config)
            const layer = Certificates.layer.pipe(
              Layer.provide(Discovery.layerMemory(registry)),
              Layer.provide(ConsulClient.layer),
              Layer.provide(configLayer)
            )
            return Context.get(yield* Layer.build(layer), Certificates)
          })
        const [a, b] = yield* Effect.all([controller("a"), controller("b")], { concurrency: "unbounded" })
        const rootsOf = (c: Certificates["Type"]) =>
          Effect.map(c.bundle, (bundle) => bundle.roots.map((r) => `${r.state}:${r.fingerprint}`))
        assert.deepStrictEqual(yield* rootsOf(a), yield* rootsOf(b))
        const status = yield* a.status
        assert.strictEqual(status.store, "consul")
        assert.strictEqual(status.ca, `consul:${prefix}`)
        assert.strictEqual(status.consul?.prefix, prefix)
        // The operator's `ca rotate`, run anywhere.
        const operator = yield* openStore(address, prefix, kek, dir, "operator")
        const next = yield* operator.rotate
        for (const c of [a, b]) {
          yield* eventually(
            Effect.flatMap(rootsOf(c), (roots) => (roots.includes(`next:${next}`) ? Effect.void : Effect.fail(roots)))
          )
        }
        yield* operator.activate
        for (const c of [a, b]) {
          yield* eventually(Effect.flatMap(c.state, (s) =>
            s.controller.chainPem.length > 0 && s.bundle.roots.find((r) =>
                  r.state === "active"
                )?.fingerprint === next
              ? Effect.void
              : Effect.fail("not activated yet")))
        }
        assert.deepStrictEqual(yield* rootsOf(a), yield* rootsOf(b))

        // The document deleted by mistake: reported, and the CA in force keeps signing.
        const url = new URL(address)
        yield* Effect.promise(() =>
          new Consul({ host: url.hostname, port: Number(url.port) }).kv.del(`${prefix}/ca`)
        )
        yield* eventually(
          Effect.flatMap(a.status, (s) => (s.consul?.invalid?.includes("missing") ? Effect.void : Effect.fail(s)))
        )
        assert.strictEqual(
          (yield* a.bundle).roots.find((r) => r.state === "active")?.fingerprint,
          next
        )
      }),
    { timeout: 60_000 }
  )
})

describe(`join tokens in Consul against ${TARGET}`, () => {
  it.scopedLive("a token made at A is accepted once at B, then nowhere; two controllers racing for its last use: one wins", () =>
    Effect.gen(function*() {
      const { address } = yield* target
      const dir = yield* tempDir
      const kekFile = yield* writeKek(dir)
      const prefix = newPrefix()
      const connect = makeConsulConnection(certConfig({}, [], { discovery: { consul: { address } } }).discovery.consul!)
      const a = consulTokenStore(yield* connect, prefix, yield* readKek(kekFile))
      const b = consulTokenStore(yield* connect, prefix, yield* readKek(kekFile))
      // One MAC key for every controller, stored sealed.
      const [keyA, keyB] = yield* Effect.all([a.macKey, b.macKey], { concurrency: "unbounded" })
      assert.deepStrictEqual(keyA, keyB)
      assert.deepStrictEqual(yield* a.macKey, keyA)
      const stored = yield* readKv(address, `${prefix}/token-mac-key`)
      assert.notInclude(stored!, Buffer.from(keyA).toString("hex"))

      const now = Date.now()
      const make = (uses: number) =>
        Effect.gen(function*() {
          const { id, secret } = newTokenSecrets()
          yield* a.create({
            id,
            service: "echo",
            createdAt: new Date(now).toISOString(),
            expiresAt: new Date(now + 3_600_000).toISOString(),
            uses,
            used: 0,
            secretHash: hashSecret(secret)
          })
          return { id, secret }
        })
      const once = yield* make(1)
      const redeem = (store: typeof a, token: { id: string; secret: string }) =>
        store.redeem(token.id, (record) => checkRecord(record, { secret: token.secret, now: Date.now() }))
      const atB = yield* redeem(b, once)
      assert.isTrue(atB._tag === "Right")
      const again = yield* redeem(a, once)
      assert.deepStrictEqual(again._tag === "Left" ? again.left._tag : "accepted", "Spent")
      assert.deepStrictEqual((yield* redeem(b, once))._tag, "Left")

      // Both controllers spend the last use at the same moment: CAS lets exactly one through.
      const raced = yield* make(1)
      const outcomes = yield* Effect.all([redeem(a, raced), redeem(b, raced), redeem(a, raced), redeem(b, raced)], {
        concurrency: "unbounded"
      })
      assert.strictEqual(outcomes.filter((o) => o._tag === "Right").length, 1)

      // A revocation at B is seen at A.
      const revoked = yield* make(3)
      yield* b.revoke(revoked.id, new Date())
      const refused = yield* redeem(a, revoked)
      assert.strictEqual(refused._tag === "Left" ? refused.left._tag : "accepted", "Revoked")
      assert.sameMembers((yield* a.list).map((r) => r.id), [once.id, raced.id, revoked.id])
    }))
})
