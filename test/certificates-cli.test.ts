import { Command, Options } from "@effect/cli"
import { NodeContext } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import * as NodeFs from "node:fs/promises"
import * as NodePath from "node:path"
import { caPaths } from "../layers/internal/CaStore.js"
import { formatRoots, showRoots } from "../src/commands/ca.js"
import { makeCertsCommands } from "../src/commands/certsCommands.js"
import { certConfig, openssl, tempDir } from "./support/certs.js"
import { runCli } from "./support/daemon.js"

/** The commands as the CLI mounts them, run in-process (the CLI module is the lead's; this avoids depending on its wiring). */
const { ca, certs } = makeCertsCommands(Options.file("config", { exists: "yes" }))
const root = Command.make("mesh-controller").pipe(Command.withSubcommands([certs, ca]))
const run = (args: ReadonlyArray<string>) =>
  Command.run(root, { name: "mesh-controller", version: "test" })(["node", "mesh-controller", ...args]).pipe(
    Effect.provide(NodeContext.layer),
    Effect.exit
  )

const writeConfig = (dir: string) =>
  Effect.promise(async () => {
    const path = NodePath.join(dir, "mesh.yaml")
    await NodeFs.writeFile(
      path,
      `mesh: { name: home-lab, trustDomain: mesh.local }\nservices: [ { name: echo, port: 8080 } ]\ncertificates: { dir: ${
        NodePath.join(dir, "ca")
      } }\n`
    )
    return path
  })

describe("certs and ca commands", () => {
  it.scopedLive("certs issue writes cert.pem, key.pem (0600) and ca.pem that openssl accepts", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const config = yield* writeConfig(dir)
      const out = NodePath.join(dir, "out")
      const exit = yield* run(["certs", "issue", "--config", config, "--service", "echo", "--out", out])
      assert.isTrue(Exit.isSuccess(exit), String(exit))
      const stat = yield* Effect.promise(() => NodeFs.stat(NodePath.join(out, "key.pem")))
      assert.strictEqual(stat.mode & 0o777, 0o600)
      const verify = openssl(["verify", "-CAfile", NodePath.join(out, "ca.pem"), NodePath.join(out, "cert.pem")])
      assert.strictEqual(verify.status, 0, verify.output)
      assert.include(
        openssl(["x509", "-in", NodePath.join(out, "cert.pem"), "-noout", "-ext", "subjectAltName"]).output,
        "URI:spiffe://mesh.local/service/echo"
      )
      // The key matches the certificate.
      const keyPub = openssl(["pkey", "-in", NodePath.join(out, "key.pem"), "-pubout"]).output
      const certPub = openssl(["x509", "-in", NodePath.join(out, "cert.pem"), "-noout", "-pubkey"]).output
      assert.strictEqual(keyPub, certPub)

      const bad = yield* run(["certs", "issue", "--config", config, "--service", "Not_A_Name", "--out", out])
      assert.isTrue(Exit.isFailure(bad))
    }))

  it.scopedLive("ca rotate introduces a second root, --activate makes it active; ca show lists both", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const config = yield* writeConfig(dir)
      const refused = yield* run(["ca", "show", "--config", config])
      assert.isTrue(Exit.isFailure(refused), "no CA yet: ca show does not create one")
      assert.isTrue(
        Exit.isSuccess(
          yield* run(["certs", "issue", "--config", config, "--service", "echo", "--out", NodePath.join(dir, "out")])
        )
      )
      const settings = {
        settings: certConfig({ dir: NodePath.join(dir, "ca") }).certificates,
        meshName: "home-lab",
        trustDomain: "mesh.local"
      }
      const [first] = (yield* showRoots(settings)).roots

      assert.isTrue(Exit.isSuccess(yield* run(["ca", "rotate", "--config", config])))
      const introduced = yield* showRoots(settings)
      assert.deepStrictEqual(introduced.roots.map((r) => r.state), ["active", "next"])
      assert.strictEqual(introduced.roots[0]!.fingerprint, first!.fingerprint)

      assert.isTrue(Exit.isSuccess(yield* run(["ca", "rotate", "--activate", "--config", config])))
      const activated = yield* showRoots(settings)
      assert.deepStrictEqual(activated.roots.map((r) => [r.state, r.fingerprint]), [
        ["active", introduced.roots[1]!.fingerprint],
        ["previous", first!.fingerprint]
      ])
      const text = formatRoots(activated)
      assert.include(text, `active root: CN=home-lab mesh root`)
      assert.include(text, `fingerprint (SHA-256): ${first!.fingerprint}`)
      const keyMode = (yield* Effect.promise(() => NodeFs.stat(caPaths(NodePath.join(dir, "ca")).key))).mode & 0o777
      assert.strictEqual(keyMode, 0o600)
    }))

  it.scopedLive(
    "certs issue (the built CLI): a service the config does not list exits 1 naming it, unless --allow-unknown-service",
    () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const config = yield* writeConfig(dir)
        const out = NodePath.join(dir, "out")
        const refused = yield* Effect.promise(() =>
          runCli(["certs", "issue", "--config", config, "--service", "ecko", "--out", out])
        )
        assert.strictEqual(refused.code, 1, refused.stderr)
        assert.strictEqual(
          refused.stderr.trim(),
          `error: --service ecko: ${config} lists no such service (it lists: echo); add it to services, or pass --allow-unknown-service to issue anyway`
        )
        assert.isFalse(yield* Effect.promise(() => NodeFs.stat(out).then(() => true, () => false)), "nothing written")
        const allowed = yield* Effect.promise(() =>
          runCli(["certs", "issue", "--config", config, "--service", "ecko", "--allow-unknown-service", "--out", out])
        )
        assert.strictEqual(allowed.code, 0, allowed.stderr)
        assert.include(allowed.stdout, "issued spiffe://mesh.local/service/ecko")
        assert.strictEqual(
          openssl(["verify", "-CAfile", NodePath.join(out, "ca.pem"), NodePath.join(out, "cert.pem")]).status,
          0
        )
      }),
    // Two runs of the built CLI: a process start takes seconds on a loaded 2-core machine.
    120_000
  )

  it.scopedLive(
    "certs issue (the built CLI) into a world-writable directory warns, and still issues",
    () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const config = yield* writeConfig(dir)
        const open = NodePath.join(dir, "open")
        const own = NodePath.join(dir, "own")
        yield* Effect.promise(async () => {
          await NodeFs.mkdir(open)
          await NodeFs.chmod(open, 0o1777)
        })
        const warned = yield* Effect.promise(() =>
          runCli(["certs", "issue", "--config", config, "--service", "echo", "--out", open])
        )
        assert.strictEqual(warned.code, 0, warned.stderr)
        assert.include(warned.stderr, `warning: ${open} is world-writable (mode 01777)`)
        assert.include(warned.stderr, `chmod o-w ${open}`)
        assert.include(warned.stdout, "issued spiffe://mesh.local/service/echo")
        const quiet = yield* Effect.promise(() =>
          runCli(["certs", "issue", "--config", config, "--service", "echo", "--out", own])
        )
        assert.strictEqual(quiet.code, 0, quiet.stderr)
        assert.notInclude(quiet.stderr, "warning")
      }),
    // Two runs of the built CLI: a process start takes seconds on a loaded 2-core machine.
    120_000
  )
})
