import { Effect, Either, Layer } from "effect"
import { NodeRuntime } from "@effect/platform-node"
import { decodeConfig } from "./src/ConfigDocument.js"
import { startAdmin } from "./test/support/admin.js"
const cfg = Either.getOrThrow(decodeConfig({ mesh: { name: "unit" }, services: [{ name: "echo", port: 1 }] }, "t"))
Effect.gen(function*() {
  const a = yield* startAdmin(cfg)
  console.log(a.base, a.token)
  yield* Effect.never
}).pipe(Effect.scoped, NodeRuntime.runMain)
