import { Either } from "effect"
import type { MeshConfig } from "../../schemas/Config.js"
import { decodeConfig } from "../../src/ConfigDocument.js"
import { compileConfig, type CompiledPolicy } from "../../src/policy/Compile.js"

/** A config of `services` with `policies`, decoded as a file would be (a problem fails the test). */
export const configWith = (
  services: ReadonlyArray<Record<string, unknown>>,
  policies: Record<string, unknown>,
  extra: Record<string, unknown> = {}
): MeshConfig => {
  const decoded = decodeConfig(
    { mesh: { name: "test", trustDomain: "mesh.local" }, services, policies, ...extra },
    "test"
  )
  if (Either.isLeft(decoded)) throw new Error(decoded.left.message)
  return decoded.right
}

/** The config's policies compiled (a compile error fails the test). */
export const compiledOf = (config: MeshConfig): CompiledPolicy => {
  const result = compileConfig(config)
  if (Either.isLeft(result)) throw new Error(result.left.message)
  return result.right
}
