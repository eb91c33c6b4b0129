import * as NodePath from "node:path"

/**
 * Where an identity's files are: the Certificates layer writes them (atomically, by rename in
 * this directory, which Envoy watches), `certs issue` writes them for workloads that need files,
 * and Envoy reads them for mTLS to the controller.
 */
export interface IdentityFiles {
  readonly directory: string
  readonly certificateChain: string
  readonly privateKey: string
  readonly trustedCa: string
}

/** `cert.pem` (chain), `key.pem` and `ca.pem` (bundle) in `directory`, made absolute. */
export const filesIn = (directory: string): IdentityFiles => {
  const dir = NodePath.resolve(directory)
  return {
    directory: dir,
    certificateChain: NodePath.join(dir, "cert.pem"),
    privateKey: NodePath.join(dir, "key.pem"),
    trustedCa: NodePath.join(dir, "ca.pem")
  }
}

/**
 * The local sidecar's identity: `<certificates.dir>/workloads/<service>/`. Absolute, so Envoy
 * finds the files whatever its working directory (certificates.dir may be relative).
 */
export const identityFiles = (certificatesDir: string, service: string): IdentityFiles =>
  filesIn(NodePath.join(certificatesDir, "workloads", service))
