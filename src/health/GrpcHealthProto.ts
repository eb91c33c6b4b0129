import * as ProtoLoader from "@grpc/proto-loader"

/**
 * grpc.health.v1 (grpc/health/v1/health.proto), declared here as protobuf JSON: the two messages
 * and the service are all there is to it, and no package in node_modules ships the .proto file.
 * Field numbers and enum values are those of the published proto.
 */
export const healthProtoJson: Parameters<typeof ProtoLoader.fromJSON>[0] = {
  nested: {
    grpc: {
      nested: {
        health: {
          nested: {
            v1: {
              nested: {
                HealthCheckRequest: { fields: { service: { type: "string", id: 1 } } },
                HealthCheckResponse: {
                  fields: { status: { type: "ServingStatus", id: 1 } },
                  nested: {
                    ServingStatus: { values: { UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2, SERVICE_UNKNOWN: 3 } }
                  }
                },
                Health: {
                  methods: {
                    Check: {
                      requestType: "HealthCheckRequest",
                      responseType: "HealthCheckResponse",
                      comment: "The serving status of the server (service \"\") or of one service."
                    },
                    Watch: {
                      requestType: "HealthCheckRequest",
                      responseType: "HealthCheckResponse",
                      responseStream: true,
                      comment: "The serving status now and at every change."
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
  }
}

export type ServingStatus = "UNKNOWN" | "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN"
export interface HealthCheckRequest {
  readonly service: string
}
export interface HealthCheckResponse {
  readonly status: ServingStatus
}

/** The package definition (enums as strings, defaults filled in) for `grpc.loadPackageDefinition`. */
export const healthPackageDefinition: ProtoLoader.PackageDefinition = ProtoLoader.fromJSON(healthProtoJson, {
  enums: String,
  defaults: true
})

export const HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
