import type { MeshConfig } from "../../schemas/Config.js"

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`

/** One line that says what a valid config holds. */
export const summarize = (source: string, config: MeshConfig): string => {
  const endpoints = config.services.reduce((sum, s) => sum + s.endpoints.length, 0)
  return `${source}: ok: mesh "${config.mesh.name}" (trust domain ${config.mesh.trustDomain}), ${
    plural(config.services.length, "service")
  }, ${plural(endpoints, "endpoint")}, ${
    plural(config.policies.traffic.length, "traffic policy").replace("policys", "policies")
  }, ${plural(config.policies.security.authorization.length, "authorization rule")}`
}
