import { Effect, Layer, Schema, SubscriptionRef } from "effect"
import { execFileSync } from "node:child_process"
import * as NodeFs from "node:fs/promises"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { Certificates } from "../../layers/Certificates.js"
import { Discovery } from "../../layers/Discovery.js"
import { LiveConfig } from "../../layers/LiveConfig.js"
import { type MeshConfig, MeshConfig as MeshConfigSchema } from "../../schemas/Config.js"
import type { Service } from "../../src/MeshState.js"

/** A mesh config for certificate tests: `home-lab` in trust domain `mesh.local`. */
export const certConfig = (
  certificates: Record<string, unknown> = {},
  services: ReadonlyArray<string> = ["echo", "gateway"],
  more: Record<string, unknown> = {}
): MeshConfig =>
  Schema.decodeUnknownSync(MeshConfigSchema)({
    mesh: { name: "home-lab", trustDomain: "mesh.local" },
    services: services.map((name) => ({ name, port: 8080 })),
    certificates,
    ...more
  })

export const service = (name: string): Service => ({
  name,
  protocol: "http",
  port: 8080,
  failMode: "open",
  tags: [],
  metadata: {},
  source: "config",
  endpoints: []
})

/** A fresh temporary directory, removed when the scope closes. */
export const tempDir = Effect.acquireRelease(
  Effect.promise(() => NodeFs.mkdtemp(NodePath.join(NodeOs.tmpdir(), "mesh-certs-"))),
  (dir) => Effect.promise(() => NodeFs.rm(dir, { recursive: true, force: true }))
)

/** The persistent layer over a memory config and a memory registry the test can change. */
export const persistentLayer = (
  config: MeshConfig,
  registry: SubscriptionRef.SubscriptionRef<ReadonlyArray<Service>>
) =>
  Certificates.layer.pipe(Layer.provide(Discovery.layerMemory(registry)), Layer.provide(LiveConfig.layerMemory(config)))

/**
 * The in-memory CA over a memory registry holding the config's services (the embedded registry
 * would work too, but its periodic DNS re-resolution makes TestClock jumps slow).
 */
export const ephemeralLayer = (config: MeshConfig) =>
  Layer.unwrapEffect(
    Effect.map(
      SubscriptionRef.make<ReadonlyArray<Service>>(config.services.map((s) => service(s.name))),
      (registry) =>
        Certificates.layerEphemeral.pipe(
          Layer.provide(Discovery.layerMemory(registry)),
          Layer.provide(LiveConfig.layerMemory(config))
        )
    )
  )

/** Runs openssl; returns stdout+stderr and the exit status (no throw). */
export const openssl = (args: ReadonlyArray<string>): { readonly status: number; readonly output: string } => {
  try {
    const output = execFileSync("openssl", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] })
    return { status: 0, output }
  } catch (error) {
    const e = error as { status?: number; stdout?: string; stderr?: string }
    return { status: e.status ?? 1, output: `${e.stdout ?? ""}${e.stderr ?? ""}` }
  }
}

export const writeFiles = (dir: string, files: Record<string, string>) =>
  Effect.promise(async () => {
    for (const [name, content] of Object.entries(files)) await NodeFs.writeFile(NodePath.join(dir, name), content)
    return Object.fromEntries(Object.keys(files).map((name) => [name, NodePath.join(dir, name)]))
  })
