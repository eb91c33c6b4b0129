/**
 * The file token store across processes (issue 13): `token revoke` in the CLI, and redemptions in
 * one or more controllers, change the same token's record. Real processes race on the real store
 * (dist/), started together; each outcome is checked against the final records, so the test does
 * not depend on how the race falls out, only on the store never losing a change.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import { spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { fileTokenStore } from "../layers/internal/TokenStore.js"
import { hashSecret, newTokenSecrets, type TokenRecord } from "../src/tokens/Token.js"
import { requireBuild, runCli } from "./support/daemon.js"

const WORKER = join(import.meta.dirname, "support", "token-race-worker.mjs")
const base = mkdtempSync(join(tmpdir(), "mesh-token-race-"))
const secret = newTokenSecrets().secret

interface Outcome {
  readonly successes: Record<string, number>
  readonly refusals: Record<string, number>
}

/** Starts a worker; resolves `ready` when it waits for the go file, `done` with its outcome. */
const worker = (
  dir: string,
  mode: "redeem" | "revoke" | "redeem-until-revoked",
  ids: ReadonlyArray<string>,
  rounds: number,
  go: string
) => {
  const child = spawn(process.execPath, [WORKER, dir, mode, ids.join(","), secret, String(rounds), go], {
    stdio: ["ignore", "pipe", "pipe"]
  })
  let stderr = ""
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
  const lines: Array<string> = []
  let onLine = () => {}
  createInterface({ input: child.stdout }).on("line", (line) => {
    lines.push(line)
    onLine()
  })
  const ready = new Promise<void>((resolve) => {
    onLine = () => lines.includes("ready") && resolve()
  })
  const done = new Promise<Outcome>((resolve, reject) =>
    child.on(
      "exit",
      (code) =>
        code === 0 ? resolve(JSON.parse(lines[lines.length - 1]!)) : reject(new Error(`worker exit ${code}: ${stderr}`))
    )
  )
  return { ready, done }
}

/** Runs the workers together: each waits for the go file, made once all are ready. */
const race = async (run: (go: string) => Array<ReturnType<typeof worker>>) => {
  const go = join(mkdtempSync(join(base, "go-")), "go")
  const workers = run(go)
  await Promise.all(workers.map((w) => w.ready))
  writeFileSync(go, "")
  return Promise.all(workers.map((w) => w.done))
}

const makeTokens = async (dir: string, count: number, uses: number) => {
  const store = fileTokenStore(dir)
  const ids = Array.from({ length: count }, (_, i) => i.toString(16).padStart(12, "0"))
  for (const id of ids) {
    const record: TokenRecord = {
      id,
      service: "web",
      createdAt: new Date().toISOString(),
      expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
      uses,
      used: 0,
      secretHash: hashSecret(secret)
    }
    await Effect.runPromise(store.create(record))
  }
  return { store, ids }
}

const recordOf = (dir: string, id: string) =>
  Effect.runPromise(fileTokenStore(dir).get(id)).then((found) => Option.getOrThrow(found))

beforeAll(() => requireBuild())
afterAll(() => rmSync(base, { recursive: true, force: true }))

describe("the file token store, two processes at once", () => {
  it("spends: every success is counted in the record (no lost update), and a single use is spent once", async () => {
    const many = join(base, "many")
    const { ids } = await makeTokens(many, 12, 1000)
    const [a, b] = await race((go) => [worker(many, "redeem", ids, 8, go), worker(many, "redeem", ids, 8, go)])
    for (const id of ids) {
      expect({ id, used: (await recordOf(many, id)).used }).toEqual({ id, used: a!.successes[id]! + b!.successes[id]! })
      expect(a!.successes[id]! + b!.successes[id]!).toBe(16)
    }

    const single = join(base, "single")
    const once = await makeTokens(single, 24, 1)
    const outcomes = await race((go) => [
      worker(single, "redeem", once.ids, 1, go),
      worker(single, "redeem", once.ids, 1, go)
    ])
    for (const id of once.ids) {
      expect({ id, spent: outcomes[0]!.successes[id]! + outcomes[1]!.successes[id]! }).toEqual({ id, spent: 1 })
      expect((await recordOf(single, id)).used).toBe(1)
    }
  }, 180_000)

  it("a revocation racing redemptions is never lost, and no spend after it is lost either", async () => {
    const dir = join(base, "revoke")
    const { ids } = await makeTokens(dir, 12, 1000)
    const [redeemed] = await race((go) => [worker(dir, "redeem", ids, 10, go), worker(dir, "revoke", ids, 1, go)])
    for (const id of ids) {
      const record = await recordOf(dir, id)
      expect({ id, revoked: record.revokedAt !== undefined }).toEqual({ id, revoked: true })
      expect({ id, used: record.used }).toEqual({ id, used: redeemed!.successes[id] })
    }
    expect(redeemed!.refusals["Revoked"] ?? 0).toBe(
      ids.length * 10 - Object.values(redeemed!.successes).reduce((x, y) => x + y)
    )
  }, 180_000)

  it("`token revoke` from the CLI while a controller-side process keeps redeeming: revoked, and stays so", async () => {
    const stateDir = join(base, "cli-state")
    const config = join(base, "mesh.yaml")
    writeFileSync(
      config,
      `mesh: { name: lab, trustDomain: mesh.local }\ncertificates: { dir: ${
        JSON.stringify(join(stateDir, "certs"))
      } }\n`
    )
    const dir = join(stateDir, "certs", "tokens")
    const { ids } = await makeTokens(dir, 1, 100_000)
    const go = join(mkdtempSync(join(base, "go-")), "go")
    // Redeems until it is refused as revoked, so it is still redeeming when the CLI revokes.
    const redeemer = worker(dir, "redeem-until-revoked", ids, 0, go)
    await redeemer.ready
    writeFileSync(go, "")
    const revoked = await runCli(["token", "revoke", "--config", config, ids[0]!])
    expect(revoked.code, revoked.stderr).toBe(0)
    const outcome = await redeemer.done
    const record = await recordOf(dir, ids[0]!)
    expect(record.revokedAt).toBeDefined()
    expect(record.used).toBe(outcome.successes[ids[0]!])
    expect(outcome.refusals).toEqual({ Revoked: 1 })
    expect(outcome.successes[ids[0]!]).toBeGreaterThan(0)
  }, 180_000)
})
