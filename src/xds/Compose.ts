import type { MeshConfig } from "../../schemas/Config.js"
import { type HealthView, withHealth } from "../health/Routing.js"
import { changedSince, markDerived, type MeshState, type Service, sortedByName } from "../MeshState.js"
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
  services: servicesWithHealth(sortedByName(services), health),
  ...(secrets !== undefined && secrets.size > 0 ? { secrets } : {}),
  ...(config.controller.xds.tls === "mtls" || config.controller.xds.insecureNodeIdentity ? { sidecarKeys: true } : {})
})

/** The last composition: the next one, with the same view, differs where its services do. */
let last:
  | { readonly input: ReadonlyArray<Service>; readonly view: HealthView; readonly output: ReadonlyArray<Service> }
  | undefined

/**
 * `withHealth` of the sorted services (it keeps the order, and the array when the view changes
 * nothing). With the view of the last composition, a service the registry kept gets the very object
 * it got last time (withHealth keeps one per service and health map), so the result differs from
 * the last one where the services did: it is marked so (`markDerived`), and the snapshot builder
 * looks at those services alone.
 */
const servicesWithHealth = (services: ReadonlyArray<Service>, view: HealthView): ReadonlyArray<Service> => {
  const output = withHealth(services, view)
  if (output !== services && last !== undefined && last.view === view && last.output !== output) {
    const changed = changedSince(last.input, services)
    if (changed !== undefined) markDerived(output, last.output, changed)
  }
  last = { input: services, view, output }
  return output
}
