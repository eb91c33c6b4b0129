import type { MeshConfig } from "../../schemas/Config.js"
import { type HealthView, withHealth } from "../health/Routing.js"
import type { MeshState, Service } from "../MeshState.js"
import type { CompiledPolicy } from "../policy/Compile.js"

/**
 * The one value the snapshot is built from: the config's mesh, the compiled policy in force, Discovery's services
 * with each endpoint's health from the Health view, and the Certificates layer's SDS secrets.
 */
export const composeMeshState = (
  config: MeshConfig,
  policy: CompiledPolicy,
  services: ReadonlyArray<Service>,
  health: HealthView,
  secrets?: MeshState["secrets"]
): MeshState => ({
  mesh: config.mesh,
  policy,
  services: sortedByName(withHealth(services, health)),
  ...(secrets !== undefined && secrets.size > 0 ? { secrets } : {}),
  ...(config.controller.xds.tls === "mtls" || config.controller.xds.insecureNodeIdentity ? { sidecarKeys: true } : {})
})

/** Discovery publishes its services sorted: then they are kept as they are (the same array, no copy). */
const sortedByName = (services: ReadonlyArray<Service>): ReadonlyArray<Service> => {
  for (let i = 1; i < services.length; i++) {
    if (services[i - 1]!.name > services[i]!.name) {
      return [...services].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    }
  }
  return services
}
