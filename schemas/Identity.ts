/**
 * The mesh's identities as SPIFFE IDs: `spiffe://<trustDomain>/service/<name>` for a service (the
 * URI SAN of its certificates, the principal in its policies), `spiffe://<trustDomain>/controller`
 * for the controller. The one place these strings are built; parsing and certificate checks are
 * `src/certs/Spiffe.ts`. Pure.
 */

/** The identity of a mesh service. */
export const serviceId = (trustDomain: string, service: string): string => `spiffe://${trustDomain}/service/${service}`

/** The identity of the controller itself (its xDS server certificate). */
export const controllerId = (trustDomain: string): string => `spiffe://${trustDomain}/controller`

/** The service an ID names in `trustDomain`, if it is a mesh service identity there. */
export const serviceOfId = (trustDomain: string, id: string): string | undefined => {
  const prefix = serviceId(trustDomain, "")
  if (!id.startsWith(prefix)) return undefined
  const name = id.slice(prefix.length)
  return name.length > 0 && !name.includes("/") ? name : undefined
}
