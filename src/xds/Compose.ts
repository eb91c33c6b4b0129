import type { MeshConfig } from "../../schemas/Config.js"
import { type HealthView, withHealth } from "../health/Routing.js"
import { type MeshState, type Service, sortedByName } from "../MeshState.js"
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
  // Sorting by name first: withHealth keeps the order (and the array, when the view changes nothing).
  services: withHealth(sortedByName(services), health),
  ...(secrets !== undefined && secrets.size > 0 ? { secrets } : {}),
  ...(config.controller.xds.tls === "mtls" || config.controller.xds.insecureNodeIdentity ? { sidecarKeys: true } : {})
})
