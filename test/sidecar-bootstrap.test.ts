/** Generated Envoy bootstraps, checked against Envoy's own `envoy.config.bootstrap.v3.Bootstrap` protobuf. */
import { Command, Options } from "@effect/cli"
import { NodeContext } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import type { Console } from "effect"
import { Cause, Effect, Either, Option } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import * as YAML from "yaml"
import type { MeshConfig } from "../schemas/Config.js"
import { filesIn } from "../src/certs/IdentityFiles.js"
import { makeEnvoyCommand } from "../src/commands/envoy.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import {
  buildBootstrap,
  checkBootstrap,
  checkSdsFile,
  inputForAgent,
  inputFromConfig,
  renderBootstrap
} from "../src/sidecar/Bootstrap.js"
import * as Protos from "../src/xds/Protos.js"

const configOf = (
  extra: { controller?: unknown; sidecar?: unknown; certificates?: unknown; policies?: unknown } = {}
): MeshConfig =>
  Either.getOrThrow(decodeConfig({
    mesh: { name: "lab", trustDomain: "home.arpa" },
    services: [{ name: "echo", port: 50051, protocol: "grpc" }, { name: "web", port: 8080 }],
    ...extra
  }, "test"))

const render = (config: MeshConfig, options: { service?: string } = {}) => {
  const input = Either.getOrThrow(inputFromConfig(config, { instance: "pi-1", service: "echo", ...options }))
  const rendered = renderBootstrap(input)
  if (Either.isLeft(rendered)) assert.fail(rendered.left.message)
  return Either.getOrThrow(rendered)
}

/** Encodes with Envoy's proto and decodes back: what Envoy would see. */
const roundTrip = (json: Record<string, unknown>) => {
  const bytes = Either.getOrThrow(checkBootstrap(json))
  return Protos.decode(Protos.Types.Bootstrap, bytes) as Record<string, any>
}

/** protobufjs decodes a loaded `Any` in place, as `{ "@type", ...fields }`: the fields. */
const unpack = (any: Record<string, unknown>): Record<string, unknown> => {
  const { ["@type"]: type, ...fields } = any
  assert.isString(type)
  return fields
}

describe("Envoy bootstrap", () => {
  it("defaults: node id and cluster, Delta ADS to the controller, admin on 127.0.0.1:15000, overload limits", () => {
    const rendered = render(configOf())
    const decoded = roundTrip(rendered.json)
    assert.deepStrictEqual(decoded.node.id, "echo~pi-1")
    assert.deepStrictEqual(decoded.node.cluster, "echo")
    assert.strictEqual(decoded.dynamic_resources.ads_config.api_type, "DELTA_GRPC")
    assert.strictEqual(decoded.dynamic_resources.ads_config.transport_api_version, "V3")
    assert.deepStrictEqual(decoded.dynamic_resources.cds_config.initial_fetch_timeout, { seconds: "10", nanos: 0 })
    assert.deepInclude(decoded.dynamic_resources.lds_config, { resource_api_version: "V3" })
    assert.deepStrictEqual(decoded.admin.address.socket_address, { address: "127.0.0.1", port_value: 15000 })

    const xds = decoded.static_resources.clusters[0]
    assert.strictEqual(xds.name, "mesh-controller-xds")
    assert.deepStrictEqual(xds.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address, {
      address: "127.0.0.1",
      port_value: 15010
    })
    assert.isUndefined(xds.transport_socket)

    const monitors = decoded.overload_manager.resource_monitors.map((m: any) => unpack(m.typed_config))
    assert.deepStrictEqual(monitors[0], { max_heap_size_bytes: String(256 * 1024 * 1024) })
    assert.deepStrictEqual(monitors[1], { max_active_downstream_connections: "1024" })
    assert.strictEqual(decoded.overload_manager.actions.length, 2)
  })

  it("mTLS with the service's identity files, state-of-the-world, Prometheus listener, observability policy, a named controller", () => {
    const config = configOf({
      controller: { xds: { tls: "mtls", port: 15011 } },
      certificates: { dir: "/srv/mesh/certs" },
      sidecar: {
        envoy: {
          service: "echo",
          xdsApi: "sotw",
          initialFetchTimeout: "2500ms",
          xdsAddress: { host: "controller.home.arpa", port: 15011 },
          prometheus: { port: 15090 },
          overload: { maxHeapMiB: 64, maxConnections: 200 }
        }
      }
    })
    const rendered = render({
      ...config,
      policies: configOf({
        policies: { observability: { tracing: { collector: "10.0.0.9:4317" }, statsTags: { site: "attic" } } }
      }).policies
    })
    const decoded = roundTrip(rendered.json)
    assert.strictEqual(decoded.dynamic_resources.ads_config.api_type, "GRPC")
    assert.deepStrictEqual(decoded.dynamic_resources.cds_config.initial_fetch_timeout, {
      seconds: "2",
      nanos: 500_000_000
    })

    const [xds, admin, tracing] = decoded.static_resources.clusters
    assert.strictEqual(xds.type, "STRICT_DNS")
    const tls = unpack(xds.transport_socket.typed_config) as any
    const certificate = tls.common_tls_context.tls_certificates[0]
    assert.strictEqual(certificate.certificate_chain.filename, "/srv/mesh/certs/workloads/echo/cert.pem")
    assert.strictEqual(certificate.private_key.filename, "/srv/mesh/certs/workloads/echo/key.pem")
    assert.strictEqual(
      tls.common_tls_context.validation_context.trusted_ca.filename,
      "/srv/mesh/certs/workloads/echo/ca.pem"
    )
    assert.deepStrictEqual(tls.common_tls_context.validation_context.match_typed_subject_alt_names, [
      { san_type: "URI", matcher: { exact: "spiffe://home.arpa/controller" } }
    ])

    assert.strictEqual(admin.name, "envoy-admin")
    assert.strictEqual(decoded.static_resources.listeners[0].address.socket_address.port_value, 15090)
    assert.strictEqual(tracing.name, "mesh-tracing")
    assert.deepStrictEqual(unpack(decoded.tracing.http.typed_config), {
      grpc_service: { envoy_grpc: { cluster_name: "mesh-tracing" } },
      service_name: "echo"
    })
    assert.deepStrictEqual(decoded.stats_config.stats_tags, [{ tag_name: "site", fixed_value: "attic" }])
    assert.isTrue(decoded.stats_config.use_all_default_tags.value)
    const heap = unpack(decoded.overload_manager.resource_monitors[0].typed_config)
    assert.deepStrictEqual(heap, { max_heap_size_bytes: String(64 * 1024 * 1024) })
  })

  it("the agent's bootstrap: mTLS identity by file-based SDS, one Secret per file, each watching the identity directory", () => {
    const identity = filesIn("/var/lib/mesh/identity")
    const rendered = Either.getOrThrow(renderBootstrap(inputForAgent({
      trustDomain: "home.arpa",
      service: "web",
      instance: "pi-3",
      xds: { host: "10.0.0.2", port: 15010 },
      envoy: configOf().sidecar.envoy,
      identity,
      sdsDir: "/var/lib/mesh/envoy/sds"
    })))
    const decoded = roundTrip(rendered.json)
    assert.deepStrictEqual([decoded.node.id, decoded.node.cluster], ["web~pi-3", "web"])
    const tls = unpack(decoded.static_resources.clusters[0].transport_socket.typed_config) as any
    const context = tls.common_tls_context
    assert.isUndefined(context.tls_certificates?.[0])
    const source = context.tls_certificate_sds_secret_configs[0].sds_config.path_config_source
    assert.deepStrictEqual(source, {
      path: "/var/lib/mesh/envoy/sds/mesh-identity.yaml",
      watched_directory: { path: "/var/lib/mesh/identity" }
    })
    assert.deepStrictEqual(
      context.combined_validation_context.default_validation_context.match_typed_subject_alt_names,
      [
        { san_type: "URI", matcher: { exact: "spiffe://home.arpa/controller" } }
      ]
    )
    assert.deepStrictEqual(rendered.sds.map((file) => file.path), [
      "/var/lib/mesh/envoy/sds/mesh-identity.yaml",
      "/var/lib/mesh/envoy/sds/mesh-trust.yaml"
    ])
    for (const file of rendered.sds) {
      const parsed = YAML.parse(file.yaml)
      const bytes = Either.getOrThrow(checkSdsFile(parsed))
      const response = Protos.decode(Protos.Types.DiscoveryResponse, bytes) as any
      assert.strictEqual(response.resources.length, 1)
    }
    const identitySecret = YAML.parse(rendered.sds[0]!.yaml).resources[0]
    assert.deepStrictEqual(identitySecret.tls_certificate, {
      certificate_chain: { filename: identity.certificateChain },
      private_key: { filename: identity.privateKey },
      watched_directory: { path: identity.directory }
    })
    // A Secret Envoy would refuse (no certificate chain) is caught before anything is written.
    assert.isTrue(Either.isLeft(checkSdsFile({
      resources: [{ "@type": Protos.typeUrl(Protos.Types.Secret), name: "x", tls_certificate: { nonsense: 1 } }]
    })))
  })

  it("prints YAML that still checks when read back (what Envoy reads from -c)", () => {
    for (
      const config of [
        configOf(),
        configOf({ controller: { xds: { tls: "mtls" } }, sidecar: { envoy: { prometheus: { port: 15090 } } } })
      ]
    ) {
      const rendered = render(config)
      const reread = YAML.parse(rendered.yaml) as unknown
      assert.isTrue(Either.isRight(checkBootstrap(reread)))
      assert.deepStrictEqual(reread, rendered.json)
      assert.match(rendered.version, /^[0-9a-f]{12}$/)
    }
  })

  it("is deterministic: equal configs give equal versions, a change gives a new one", () => {
    assert.strictEqual(render(configOf()).version, render(configOf()).version)
    assert.notStrictEqual(
      render(configOf()).version,
      render(configOf({ sidecar: { envoy: { xdsApi: "sotw" } } })).version
    )
  })

  it("the checker names misspelled fields, malformed durations and unknown types by path", () => {
    const json = buildBootstrap(Either.getOrThrow(inputFromConfig(configOf(), { instance: "pi-1", service: "echo" })))
    const cluster = (json["static_resources"] as any).clusters[0]
    const broken = {
      ...json,
      static_resources: {
        clusters: [{ ...cluster, conect_timeout: "1s" }, { ...cluster, name: "b", connect_timeout: "ten seconds" }]
      },
      overload_manager: {
        resource_monitors: [{ name: "x", typed_config: { "@type": "type.googleapis.com/envoy.nope.Missing" } }]
      }
    }
    const result = checkBootstrap(broken)
    assert.isTrue(Either.isLeft(result))
    const issues = Either.isLeft(result) ? result.left.issues.join("\n") : ""
    assert.include(issues, "static_resources.clusters[0].conect_timeout: unknown field")
    assert.include(issues, "did you mean \"connect_timeout\"")
    assert.include(issues, "static_resources.clusters[1].connect_timeout")
    assert.include(issues, "overload_manager.resource_monitors[0].typed_config")
  })

  it("needs a known service", () => {
    const none = inputFromConfig(configOf(), { instance: "pi-1" })
    assert.isTrue(Either.isLeft(none))
    assert.include(Either.isLeft(none) ? none.left.message : "", "sidecar.envoy.service")
    const unknown = inputFromConfig(configOf(), { instance: "pi-1", service: "db" })
    assert.include(
      Either.isLeft(unknown) ? unknown.left.message : "",
      "unknown service \"db\" (services in the config: echo, web)"
    )
  })

  it("the config file rejects an enabled sidecar without a service, and an unknown one", () => {
    const missing = decodeConfig({ mesh: { name: "lab" }, sidecar: { envoy: { enabled: true } } }, "mesh.yaml")
    assert.include(Either.isLeft(missing) ? missing.left.message : "", "sidecar.envoy.service: name the service")
    const unknown = decodeConfig({ mesh: { name: "lab" }, sidecar: { envoy: { service: "ghost" } } }, "mesh.yaml")
    assert.include(
      Either.isLeft(unknown) ? unknown.left.message : "",
      "sidecar.envoy.service: unknown service \"ghost\""
    )
  })
})

describe("envoy bootstrap (CLI)", () => {
  const runCli = (args: ReadonlyArray<string>) =>
    Effect.gen(function*() {
      const printed: Array<string> = []
      const console = {
        ...(yield* Effect.console),
        log: (...items: ReadonlyArray<unknown>) => Effect.sync(() => void printed.push(items.join(" ")))
      }
      const cli = Command.run(makeEnvoyCommand(Options.file("config")), { name: "mesh-controller", version: "test" })
      const exit = yield* Effect.exit(
        cli(["node", "mesh-controller", ...args]).pipe(Effect.withConsole(console as Console.Console))
      )
      return { exit, printed: printed.join("\n") }
    }).pipe(Effect.provide(NodeContext.layer))

  const file = () => {
    const path = NodePath.join(NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "envoy-cli-")), "mesh.yaml")
    NodeFs.writeFileSync(
      path,
      "mesh: { name: lab }\nservices:\n  - { name: echo, port: 50051 }\nsidecar: { envoy: { instance: pi-7 } }\n"
    )
    return path
  }

  it.effect("prints a bootstrap that checks against Envoy's proto", () =>
    Effect.gen(function*() {
      const { exit, printed } = yield* runCli(["bootstrap", "--service", "echo", "--config", file()])
      assert.isTrue(exit._tag === "Success")
      const parsed = YAML.parse(printed) as Record<string, any>
      assert.strictEqual(parsed.node.id, "echo~pi-7")
      assert.isTrue(Either.isRight(checkBootstrap(parsed)))
    }))

  it.effect("fails with a readable message for an unknown service", () =>
    Effect.gen(function*() {
      const { exit } = yield* runCli(["bootstrap", "--service", "nope", "--config", file()])
      assert.isTrue(exit._tag === "Failure")
      const failure = exit._tag === "Failure" ? Cause.failureOption(exit.cause) : Option.none()
      assert.include(Option.isSome(failure) ? (failure.value as Error).message : "", "unknown service \"nope\"")
    }))
})
