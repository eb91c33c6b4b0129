import { assert, describe, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import * as NodeFs from "node:fs/promises"
import * as NodePath from "node:path"
import { fileTokenStore } from "../layers/internal/TokenStore.js"
import {
  checkRecord,
  formatToken,
  hashSecret,
  macValid,
  newTokenSecrets,
  parseToken,
  type TokenRecord
} from "../src/tokens/Token.js"
import { tempDir } from "./support/certs.js"

const FP = "ab".repeat(32)
const record = (over: Partial<TokenRecord> & { secret: string }): TokenRecord => ({
  id: over.id ?? "0123456789ab",
  service: over.service ?? "web",
  instance: over.instance,
  createdAt: "2026-01-01T00:00:00.000Z",
  expiresAt: over.expiresAt ?? "2026-01-01T01:00:00.000Z",
  uses: over.uses ?? 1,
  used: over.used ?? 0,
  revokedAt: over.revokedAt,
  secretHash: hashSecret(over.secret)
})
const NOW = Date.parse("2026-01-01T00:30:00.000Z")

describe("join tokens", () => {
  it("round-trip: the MAC holds for the key that made it and fails for another or an edited token", () => {
    const key = new Uint8Array(32).fill(7)
    const { id, secret } = newTokenSecrets()
    const text = formatToken(key, { id, secret, rootFingerprint: FP })
    assert.strictEqual(text.split("\n").length, 1)
    const parts = Either.getOrThrow(parseToken(text))
    assert.deepStrictEqual([parts.id, parts.secret, parts.rootFingerprint], [id, secret, FP])
    assert.isTrue(macValid(key, parts))
    assert.isFalse(macValid(new Uint8Array(32).fill(8), parts))
    assert.isFalse(macValid(key, { ...parts, rootFingerprint: "cd".repeat(32) }))
    assert.isTrue(Either.isLeft(parseToken("mct1.x.y")))
    assert.isTrue(Either.isLeft(parseToken(text.replace(FP, "zz".repeat(32)))))
  })

  it("checks refuse with the reason: wrong secret, revoked, expired, spent, wrong service, wrong instance", () => {
    const secret = "s".repeat(43)
    const reason = (r: TokenRecord, asked: { service?: string; instance?: string; secret?: string } = {}) =>
      Either.match(
        checkRecord(r, { secret: asked.secret ?? secret, service: asked.service, instance: asked.instance, now: NOW }),
        {
          onLeft: (refusal) => refusal._tag,
          onRight: (next) => `ok:${next.used}`
        }
      )
    assert.strictEqual(reason(record({ secret })), "ok:1")
    assert.strictEqual(reason(record({ secret }), { secret: "t".repeat(43) }), "WrongSecret")
    assert.strictEqual(reason(record({ secret, revokedAt: "2026-01-01T00:10:00.000Z" })), "Revoked")
    assert.strictEqual(reason(record({ secret, expiresAt: "2026-01-01T00:29:59.000Z" })), "Expired")
    assert.strictEqual(reason(record({ secret, used: 1 })), "Spent")
    assert.strictEqual(reason(record({ secret, uses: 3, used: 2 })), "ok:3")
    assert.strictEqual(reason(record({ secret }), { service: "echo" }), "WrongService")
    assert.strictEqual(reason(record({ secret, instance: "pi-3" }), { instance: "pi-4" }), "WrongInstance")
  })

  it.scoped("the file store keeps hashes only, 0600 files, and spends a single-use token once under concurrency", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const store = fileTokenStore(NodePath.join(dir, "tokens"))
      const secret = newTokenSecrets().secret
      yield* store.create(record({ secret }))
      const key = yield* store.macKey
      assert.deepStrictEqual(yield* store.macKey, key)
      const files = yield* Effect.promise(() => NodeFs.readdir(NodePath.join(dir, "tokens")))
      for (const name of files) {
        const stat = yield* Effect.promise(() => NodeFs.stat(NodePath.join(dir, "tokens", name)))
        assert.strictEqual(stat.mode & 0o777, 0o600, name)
        const text = yield* Effect.promise(() => NodeFs.readFile(NodePath.join(dir, "tokens", name), "utf8"))
        assert.notInclude(text, secret)
      }
      const outcomes = yield* Effect.forEach(
        Array.from({ length: 8 }, () => store.redeem("0123456789ab", (r) => checkRecord(r, { secret, now: NOW }))),
        (e) => e,
        { concurrency: "unbounded" }
      )
      assert.strictEqual(outcomes.filter(Either.isRight).length, 1)
      assert.strictEqual((yield* store.list)[0]!.used, 1)
      const revoked = yield* store.revoke("0123456789ab", new Date(NOW))
      assert.isDefined(revoked.revokedAt)
      const missing = yield* Effect.flip(store.revoke("ffffffffffff", new Date(NOW)))
      assert.strictEqual(missing._tag, "TokenNotFound")
    }))
})
