#!/usr/bin/env node
// One process of a token store race (test/token-race.test.ts): the real file store from dist/,
// driven as the controller (redeem) or `token revoke` (revoke) drive it.
//
//   token-race-worker.mjs DIR redeem|revoke|redeem-until-revoked IDS(comma) SECRET ROUNDS GO_FILE
//
// redeem-until-revoked ignores ROUNDS: it redeems the first id until it is refused as revoked.
// Prints "ready", waits until GO_FILE exists (so both processes start together), then for ROUNDS
// rounds goes through every id once; prints one JSON line: { successes: { id: n }, refusals: { tag: n } }.
import { Effect, Either } from "effect"
import * as fs from "node:fs"
import { fileTokenStore } from "../../dist/layers/internal/TokenStore.js"
import { checkRecord } from "../../dist/src/tokens/Token.js"

const [dir, mode, idList, secret, rounds, goFile] = process.argv.slice(2)
const ids = idList.split(",")
const store = fileTokenStore(dir)
const successes = Object.fromEntries(ids.map((id) => [id, 0]))
const refusals = {}

process.stdout.write("ready\n")
while (!fs.existsSync(goFile)) await new Promise((resolve) => setTimeout(resolve, 5))

if (mode === "redeem-until-revoked") {
  while (refusals["Revoked"] === undefined) {
    const outcome = await Effect.runPromise(store.redeem(ids[0], (r) => checkRecord(r, { secret, now: Date.now() })))
    if (Either.isRight(outcome)) successes[ids[0]] += 1
    else refusals[outcome.left._tag] = (refusals[outcome.left._tag] ?? 0) + 1
  }
}
for (let round = 0; mode !== "redeem-until-revoked" && round < Number(rounds); round++) {
  for (const id of ids) {
    if (mode === "revoke") {
      await Effect.runPromise(store.revoke(id, new Date()))
      successes[id] += 1
    } else {
      const outcome = await Effect.runPromise(store.redeem(id, (r) => checkRecord(r, { secret, now: Date.now() })))
      if (Either.isRight(outcome)) successes[id] += 1
      else refusals[outcome.left._tag] = (refusals[outcome.left._tag] ?? 0) + 1
    }
  }
}
process.stdout.write(JSON.stringify({ successes, refusals }) + "\n")
