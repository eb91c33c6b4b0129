/**
 * `mesh-controller grpc bootstrap`: the gRPC xDS bootstrap a proxyless app reads, printed by the
 * real CLI (dist/), equal to what the agent's builder makes for the same inputs.
 */
import { describe, expect, it } from "@effect/vitest"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { grpcBootstrap } from "../src/agent/GrpcBootstrap.js"
import { filesIn } from "../src/certs/IdentityFiles.js"
import { runCli } from "./support/daemon.js"

const configFile = (xds: string) => {
  const dir = mkdtempSync(join(tmpdir(), "mesh-grpc-bootstrap-"))
  const path = join(dir, "mesh.yaml")
  writeFileSync(path, `mesh:\n  name: lab\ncontroller:\n  xds:\n${xds}services:\n  - name: web\n    port: 8080\n`)
  return { dir, path }
}

describe("grpc bootstrap", () => {
  it("prints the agent's bootstrap: node, file_watcher provider on the directory, server listener template", async () => {
    const { dir, path } = configFile("    host: 0.0.0.0\n    port: 15010\n")
    const result = await runCli([
      "grpc",
      "bootstrap",
      "--config",
      path,
      "--service",
      "web",
      "--instance",
      "pi-3",
      "--certs",
      join(dir, "certs")
    ])
    expect(result.stderr).toBe("")
    expect(result.code).toBe(0)
    const printed = JSON.parse(result.stdout)
    expect(printed).toEqual(grpcBootstrap({
      xdsServer: "127.0.0.1:15010",
      xdsChannel: "insecure",
      service: "web",
      instance: "pi-3",
      files: filesIn(join(dir, "certs"))
    }))
    expect(printed.node.id).toBe("web~pi-3")
    expect(printed.certificate_providers.mesh.plugin_name).toBe("file_watcher")
    expect(printed.certificate_providers.mesh.config.certificate_file).toBe(join(dir, "certs", "cert.pem"))
    expect(printed.server_listener_resource_name_template).toBe("grpc/server?xds.resource.listening_address=%s")
  })

  it("dials xDS over TLS with the same files when the controller requires it, and takes --xds", async () => {
    const { dir, path } = configFile("    port: 15010\n    tls: mtls\n")
    const result = await runCli([
      "grpc",
      "bootstrap",
      "--config",
      path,
      "--service",
      "web",
      "--instance",
      "a",
      "--certs",
      dir,
      "--xds",
      "10.0.0.2:15010"
    ])
    expect(result.code).toBe(0)
    const printed = JSON.parse(result.stdout)
    expect(printed.xds_servers[0].server_uri).toBe("10.0.0.2:15010")
    expect(printed.xds_servers[0].channel_creds[0].type).toBe("tls")
  })

  it("refuses an instance name that would break the node id, naming the flag", async () => {
    const { dir, path } = configFile("    port: 15010\n")
    const result = await runCli([
      "grpc",
      "bootstrap",
      "--config",
      path,
      "--service",
      "web",
      "--instance",
      "a~b",
      "--certs",
      dir
    ])
    expect(result.code).toBe(1)
    expect(result.stderr).toContain("--instance")
  })
})
