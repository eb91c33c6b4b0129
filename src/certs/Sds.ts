/**
 * Envoy SDS resources (`envoy.extensions.transport_sockets.tls.v3.Secret`) from the mesh's
 * identities and trust bundle. Field names are proto names (snake_case), as src/xds/Protos.ts checks.
 *
 * Names:
 *   - `spiffe://<trustDomain>/service/<name>`: that service's certificate chain and key
 *     (`tls_certificate`); a sidecar's listeners and clusters name their own service's ID in
 *     `tls_certificate_sds_secret_configs`.
 *   - `ROOTCA`: the trust bundle (`validation_context`), accepting only peers whose URI SAN is in
 *     this trust domain; named by `validation_context_sds_secret_config` (or as the default
 *     validation context of a `combined_validation_context` that adds per-route SAN matchers).
 */
import { Redacted } from "effect"
import { serviceId } from "./Spiffe.js"

export const ROOT_CA_SECRET = "ROOTCA"

/** The SDS name of a service's certificate. */
export const identitySecretName = (trustDomain: string, service: string): string => serviceId(trustDomain, service)

export interface SecretIdentity {
  readonly spiffeId: string
  readonly chainPem: string
  readonly keyPem: Redacted.Redacted<string>
}

export interface TlsCertificateSecret {
  readonly name: string
  readonly tls_certificate: {
    readonly certificate_chain: { readonly inline_string: string }
    readonly private_key: { readonly inline_string: string }
  }
}

export interface ValidationContextSecret {
  readonly name: string
  readonly validation_context: {
    readonly trusted_ca: { readonly inline_string: string }
    readonly match_typed_subject_alt_names: ReadonlyArray<{
      readonly san_type: "URI"
      readonly matcher: { readonly prefix: string }
    }>
  }
}

export type Secret = TlsCertificateSecret | ValidationContextSecret

export const tlsCertificateSecret = (identity: SecretIdentity): TlsCertificateSecret => ({
  name: identity.spiffeId,
  tls_certificate: {
    certificate_chain: { inline_string: identity.chainPem },
    private_key: { inline_string: Redacted.value(identity.keyPem) }
  }
})

export const validationContextSecret = (bundlePem: string, trustDomain: string): ValidationContextSecret => ({
  name: ROOT_CA_SECRET,
  validation_context: {
    trusted_ca: { inline_string: bundlePem },
    match_typed_subject_alt_names: [{ san_type: "URI", matcher: { prefix: `spiffe://${trustDomain}/` } }]
  }
})

/** Every secret: `ROOTCA` first, then one per identity, sorted by name so equal inputs give equal output. */
export const secretResources = (input: {
  readonly trustDomain: string
  readonly bundlePem: string
  readonly identities: Iterable<SecretIdentity>
}): ReadonlyArray<Secret> => [
  validationContextSecret(input.bundlePem, input.trustDomain),
  ...[...input.identities]
    .map(tlsCertificateSecret)
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
]

/**
 * Whether a peer may receive a secret: everyone may read `ROOTCA`; a service's key goes only to
 * that service (the xDS server checks the node's verified SPIFFE ID with this before it sends).
 */
export const mayReadSecret = (peerSpiffeId: string | undefined, secretName: string): boolean =>
  secretName === ROOT_CA_SECRET || (peerSpiffeId !== undefined && peerSpiffeId === secretName)

/**
 * The same secrets in the shape `MeshState.secrets` takes: keyed by resource name, each object
 * without its `name` (the snapshot builder adds it back).
 */
export const secretMap = (
  input: Parameters<typeof secretResources>[0]
): ReadonlyMap<string, Readonly<Record<string, unknown>>> =>
  new Map(secretResources(input).map(({ name, ...rest }) => [name, rest]))
