/**
 * The certificate signing service's protocol. The .proto text lives here (not in a file beside
 * the package) so that dist/ and the container image carry it with the code that serves it;
 * `SIGNING_PROTO` is the canonical definition (print it to generate clients in other languages).
 */
import * as grpc from "@grpc/grpc-js"
import * as protoLoader from "@grpc/proto-loader"
import protobuf from "protobufjs"

export const SIGNING_PROTO = `syntax = "proto3";

package meshcontroller.signing.v1;

// Certificates for mesh workloads whose keys are made on their own hosts.
service CertificateSigning {
  // The trust bundle, to anyone: the agent checks it against the root fingerprint in its join
  // token before it sends anything secret, and then verifies the controller against it.
  rpc GetTrustBundle(GetTrustBundleRequest) returns (TrustBundle);
  // A certificate for the CSR's key. Proof of identity: a join token (first certificate), or
  // else the caller's current mesh certificate over mTLS (renewal). The identity signed is the
  // one the token or the certificate names, never one the CSR asks for.
  rpc Sign(SignRequest) returns (SignResponse);
}

message GetTrustBundleRequest {}

message TrustBundle {
  // Every trusted root, PEM, concatenated.
  string pem = 1;
}

message SignRequest {
  // PKCS#10, PEM. Its subject and SANs may be empty; if present they must name the granted identity.
  string csr_pem = 1;
  // A join token (mct1....); empty for a renewal over mTLS.
  string token = 2;
  // Optional: the service the caller believes it is (refused when the token says otherwise).
  string service = 3;
  // Optional: the caller's instance name (checked against an instance-bound token; logged).
  string instance = 4;
}

message SignResponse {
  string spiffe_id = 1;
  // The leaf, then intermediates (never the root).
  string certificate_chain_pem = 2;
  // Every trusted root, PEM: what the caller should trust from now on.
  string trust_bundle_pem = 3;
  string serial = 4;
  // RFC 3339.
  string not_before = 5;
  string not_after = 6;
}
`

export interface SignRequest {
  readonly csr_pem: string
  readonly token: string
  readonly service: string
  readonly instance: string
}

export interface SignResponse {
  readonly spiffe_id: string
  readonly certificate_chain_pem: string
  readonly trust_bundle_pem: string
  readonly serial: string
  readonly not_before: string
  readonly not_after: string
}

let loaded: grpc.GrpcObject | undefined

const packageObject = (): grpc.GrpcObject => {
  if (loaded === undefined) {
    const root = protobuf.parse(SIGNING_PROTO, { keepCase: true }).root
    const definition = protoLoader.fromJSON(root.toJSON(), { keepCase: true, defaults: true })
    loaded = grpc.loadPackageDefinition(definition)
  }
  return loaded
}

type ServiceClientConstructor = grpc.ServiceClientConstructor

const signingService = (): ServiceClientConstructor => {
  const ns = packageObject()["meshcontroller"] as grpc.GrpcObject
  return ((ns["signing"] as grpc.GrpcObject)["v1"] as grpc.GrpcObject)["CertificateSigning"] as ServiceClientConstructor
}

export const signingServiceDefinition = (): grpc.ServiceDefinition => signingService().service

/** A client for the signing service (untyped grpc-js client; see `SigningClient` for typed calls). */
export const newSigningClient = (
  address: string,
  credentials: grpc.ChannelCredentials,
  options: grpc.ChannelOptions = {}
) => new (signingService())(address, credentials, options) as unknown as SigningClient

export interface SigningClient extends grpc.Client {
  GetTrustBundle(
    request: Record<string, never>,
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, response?: { readonly pem: string }) => void
  ): grpc.ClientUnaryCall
  Sign(
    request: SignRequest,
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, response?: SignResponse) => void
  ): grpc.ClientUnaryCall
}
