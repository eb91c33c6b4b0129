/**
 * Proxyless mesh security end to end: real `@grpc/grpc-js-xds` XdsServer and clients, certificates
 * from the mesh CA (`certs issue`'s function, in-process), the controller's Listener/Cluster
 * resources for `policies.security.mtls: strict` and the service's authorization rules (RBAC).
 */
import { assert, describe, it } from "@effect/vitest"
import * as grpc from "@grpc/grpc-js"
import { Context, Effect, Either, Exit, Layer, Scope } from "effect"
import * as NodeFs from "node:fs"
import * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import * as NodeTls from "node:tls"
import { vi } from "vitest"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { Snapshot } from "../layers/Snapshot.js"
import { Xds } from "../layers/Xds.js"
import type { MeshConfig } from "../schemas/Config.js"
import { grpcBootstrap } from "../src/agent/GrpcBootstrap.js"
import { filesIn } from "../src/certs/IdentityFiles.js"
import { storeSettingsOf } from "../src/commands/ca.js"
import { issueToFiles } from "../src/commands/certs.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import { authorize } from "../src/policy/Authorize.js"
import { compileConfig } from "../src/policy/Compile.js"
import { eventually } from "./support/eventually.js"

// grpc-js-xds reads its flags from the environment when it is first imported: RBAC is off unless set.
vi.hoisted(() => {
  process.env["GRPC_XDS_EXPERIMENTAL_RBAC"] = "true"
})
const grpcXds = await import("@grpc/grpc-js-xds")
grpcXds.register()

const identity = (b: Buffer) => b
const METHODS = ["Call", "Admin", "Other"] as const
const pathOf = (method: string) => `/mesh.test.Echo/${method}`
const echoDefinition = Object.fromEntries(METHODS.map((m) => [m, {
  path: pathOf(m),
  requestStream: false,
  responseStream: false,
  requestSerialize: identity,
  requestDeserialize: identity,
  responseSerialize: identity,
  responseDeserialize: identity
}])) satisfies grpc.ServiceDefinition

/** A free loopback port: XdsServer refuses port 0 (its Listener is named after the port). */
const freePort = Effect.async<number>((resume) => {
  const server = NodeNet.createServer()
  server.listen(0, "127.0.0.1", () => {
    const port = (server.address() as NodeNet.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

const tempDir = Effect.acquireRelease(
  Effect.sync(() => NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "mesh-proxyless-"))),
  (dir) => Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
)

const rules = [
  { name: "web-echo", action: "allow", from: [{ service: "web" }], to: "echo", when: { paths: ["/mesh.test.Echo/*"] } },
  {
    name: "batch-call",
    action: "allow",
    from: [{ service: "batch" }],
    to: "echo",
    when: { paths: ["/mesh.test.Echo/Call"] }
  },
  { name: "no-admin", action: "deny", to: "echo", when: { paths: ["/mesh.test.Echo/Admin"] } },
  {
    name: "canary",
    action: "allow",
    from: [{ service: "billing" }],
    to: "echo",
    when: { headers: { "x-canary": "1" } }
  },
  { name: "web-ledger", action: "allow", from: [{ service: "web" }], to: "ledger" }
]

const meshConfig = (
  dir: string,
  ports: { readonly echo: number; readonly ledger: number },
  authorization: ReadonlyArray<unknown> = rules,
  caDir = "ca",
  mtls: "strict" | "permissive" = "strict"
): MeshConfig => {
  const service = (name: string, port: number) => ({
    name,
    protocol: "grpc",
    port,
    endpoints: [{ address: "127.0.0.1", port }]
  })
  const decoded = decodeConfig({
    mesh: { name: "px", trustDomain: "mesh.local" },
    certificates: { dir: NodePath.join(dir, caDir) },
    services: [
      service("echo", ports.echo),
      service("ledger", ports.ledger),
      service("web", 1),
      service("batch", 1),
      service("billing", 1)
    ],
    policies: { security: { mtls, defaultAction: "deny", authorization } }
  }, "test")
  if (Either.isLeft(decoded)) throw new Error(decoded.left.message)
  return decoded.right
}

/** The controller (memory LiveConfig, embedded Discovery, Snapshot, Xds): its address and its config. */
const controller = (config: MeshConfig) =>
  Effect.gen(function*() {
    const inputs = Layer.mergeAll(LiveConfig.layerMemory(config), Health.layerNoop)
    const snapshot = Snapshot.layer.pipe(
      Layer.provide(Layer.merge(inputs, Discovery.layerEmbedded.pipe(Layer.provide(inputs))))
    )
    const context = yield* Layer.build(
      Layer.merge(Xds.layer({ host: "127.0.0.1", port: 0 }).pipe(Layer.provide(Layer.merge(snapshot, inputs))), inputs)
    )
    return { address: `127.0.0.1:${Context.get(context, Xds).address.port}`, live: Context.get(context, LiveConfig) }
  })

/** `certs issue --service NAME --out DIR/NAME`, in-process; the files' directory. */
const issue = (config: MeshConfig, dir: string, name: string, out = name) =>
  Effect.map(Effect.orDie(issueToFiles(storeSettingsOf(config), name, NodePath.join(dir, out))), (issued) => ({
    directory: NodePath.join(dir, out),
    serial: issued.identity.serial
  }))

const bootstrap = (xds: string, service: string, certs: string) =>
  JSON.stringify(grpcBootstrap({ xdsServer: xds, service, instance: "t1", files: filesIn(certs), refreshSeconds: 1 }))

/** A proxyless XdsServer of `service` on 127.0.0.1:`port`; resolves once it serves (its Listener arrived and is valid). */
const xdsServer = (
  xds: string,
  service: string,
  port: number,
  certs: string,
  /** Receives the serial number of each caller's certificate. */
  seen?: Array<string>
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<grpc.Server>((resume) => {
      const server = new grpcXds.XdsServer({
        "grpc.TEST_ONLY_DO_NOT_USE_IN_PROD.xds_bootstrap_config": bootstrap(xds, service, certs)
      })
      const reply =
        (name: string) => (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
          seen?.push(call.getAuthContext().sslPeerCertificate?.serialNumber ?? "")
          callback(null, Buffer.from(`${service}:${name}`))
        }
      server.addService(echoDefinition, Object.fromEntries(METHODS.map((m) => [m, reply(m)])))
      server.bindAsync(
        `127.0.0.1:${port}`,
        new grpcXds.XdsServerCredentials(grpc.ServerCredentials.createInsecure()),
        (error) => {
          if (error) resume(Effect.die(error))
          else resume(Effect.succeed(server))
        }
      )
    }),
    (server) => Effect.sync(() => server.forceShutdown())
  ).pipe(Effect.asVoid)

type Caller = (method: string, headers?: Readonly<Record<string, string>>) => Effect.Effect<number>

const callerOf = (client: grpc.Client): Caller => (method, headers = {}) =>
  Effect.async<number>((resume) => {
    const metadata = new grpc.Metadata()
    for (const [k, v] of Object.entries(headers)) metadata.set(k, v)
    client.makeUnaryRequest(pathOf(method), identity, identity, Buffer.alloc(0), metadata, {
      deadline: Date.now() + 10_000
    }, (error) => resume(Effect.succeed(error ? error.code : grpc.status.OK)))
  })

/** A proxyless client of `service` (mesh identity from `certs`) dialling `xds:///<target>`. */
const xdsCaller = (xds: string, service: string, certs: string, target: string) =>
  Effect.map(
    Effect.acquireRelease(
      Effect.sync(() =>
        new grpc.Client(`xds:///${target}`, new grpcXds.XdsChannelCredentials(grpc.credentials.createInsecure()), {
          "grpc.TEST_ONLY_DO_NOT_USE_IN_PROD.xds_bootstrap_config": bootstrap(xds, service, certs)
        })
      ),
      (client) => Effect.sync(() => client.close())
    ),
    callerOf
  )

/** A client that dials the server's address directly with `credentials` (no xDS). */
const directCaller = (port: number, credentials: grpc.ChannelCredentials) =>
  Effect.map(
    Effect.acquireRelease(Effect.sync(() => new grpc.Client(`127.0.0.1:${port}`, credentials)), (c) =>
      Effect.sync(() => c.close())),
    callerOf
  )

/** A certificate serial as Node prints it (upper-case hex, no colons) or as the CA reports it. */
const normalize = (serial: string) => serial.toLowerCase().replace(/:/g, "").replace(/^0+/, "")

const read = (dir: string, file: string) => NodeFs.readFileSync(NodePath.join(dir, file))

/** The mesh with echo (and ledger, whose server shows billing's certificate) serving, and callers' files. */
const mesh = Effect.gen(function*() {
  const dir = yield* tempDir
  const ports = { echo: yield* freePort, ledger: yield* freePort }
  const config = meshConfig(dir, ports)
  const certs = {
    echo: yield* issue(config, dir, "echo"),
    web: yield* issue(config, dir, "web"),
    batch: yield* issue(config, dir, "batch"),
    billing: yield* issue(config, dir, "billing")
  }
  const { address, live } = yield* controller(config)
  yield* xdsServer(address, "echo", ports.echo, certs.echo.directory)
  return { dir, ports, config, certs, address, live }
})

describe("proxyless gRPC under mtls: strict", () => {
  it.scopedLive(
    "an allowed caller gets OK, a denied one PERMISSION_DENIED, plaintext and foreign-CA callers fail the handshake",
    () =>
      Effect.gen(function*() {
        const { address, certs, config, dir, ports } = yield* mesh
        const web = yield* xdsCaller(address, "web", certs.web.directory, "echo")
        assert.strictEqual(yield* web("Call"), grpc.status.OK)
        const billing = yield* xdsCaller(address, "billing", certs.billing.directory, "echo")
        assert.strictEqual(yield* billing("Call"), grpc.status.PERMISSION_DENIED)

        const plaintext = yield* directCaller(ports.echo, grpc.credentials.createInsecure())
        assert.strictEqual(yield* plaintext("Call"), grpc.status.UNAVAILABLE)
        // A certificate from another CA, even while trusting the mesh's: the server refuses it.
        const foreignConfig = meshConfig(dir, ports, rules, "other-ca")
        const foreign = yield* issue(foreignConfig, dir, "web", "foreign-web")
        const noCheck = { checkServerIdentity: () => undefined }
        const foreignCaller = yield* directCaller(
          ports.echo,
          grpc.credentials.createSsl(
            read(certs.web.directory, "ca.pem"),
            read(foreign.directory, "key.pem"),
            read(foreign.directory, "cert.pem"),
            noCheck
          )
        )
        assert.strictEqual(yield* foreignCaller("Call"), grpc.status.UNAVAILABLE)
        // No client certificate at all.
        const anonymous = yield* directCaller(
          ports.echo,
          grpc.credentials.createSsl(read(certs.web.directory, "ca.pem"), null, null, noCheck)
        )
        assert.strictEqual(yield* anonymous("Call"), grpc.status.UNAVAILABLE)
        // The control: the same direct TLS dial with the mesh's own web certificate is let through.
        const meshWeb = yield* directCaller(
          ports.echo,
          grpc.credentials.createSsl(
            read(certs.web.directory, "ca.pem"),
            read(certs.web.directory, "key.pem"),
            read(certs.web.directory, "cert.pem"),
            noCheck
          )
        )
        assert.strictEqual(yield* meshWeb("Call"), grpc.status.OK)
        assert.isDefined(config)
      }),
    { timeout: 60_000 }
  )

  it.scopedLive("a client refuses a server that presents another service's identity", () =>
    Effect.gen(function*() {
      const { address, certs, ports } = yield* mesh
      // ledger's server runs with billing's certificate: the client expects spiffe://mesh.local/service/ledger.
      yield* xdsServer(address, "ledger", ports.ledger, certs.billing.directory)
      const web = yield* xdsCaller(address, "web", certs.web.directory, "ledger")
      assert.strictEqual(yield* web("Call"), grpc.status.UNAVAILABLE)
      // The same client reaches echo, whose server shows echo's identity.
      const echo = yield* xdsCaller(address, "web", certs.web.directory, "echo")
      assert.strictEqual(yield* echo("Call"), grpc.status.OK)
    }), { timeout: 60_000 })

  it.scopedLive(
    "policy check's decisions and a live server's agree on a table of requests",
    () =>
      Effect.gen(function*() {
        const { address, certs, config } = yield* mesh
        const compiled = compileConfig(config)
        if (Either.isLeft(compiled)) throw new Error(compiled.left.message)
        const table: Array<
          {
            readonly from: "web" | "batch" | "billing"
            readonly method: string
            readonly headers?: Record<string, string>
          }
        > = []
        for (const from of ["web", "batch", "billing"] as const) {
          for (const method of METHODS) table.push({ from, method })
        }
        table.push({ from: "billing", method: "Call", headers: { "x-canary": "1" } })
        table.push({ from: "billing", method: "Admin", headers: { "x-canary": "1" } })
        table.push({ from: "batch", method: "Other", headers: { "x-canary": "1" } })
        const callers = {
          web: yield* xdsCaller(address, "web", certs.web.directory, "echo"),
          batch: yield* xdsCaller(address, "batch", certs.batch.directory, "echo"),
          billing: yield* xdsCaller(address, "billing", certs.billing.directory, "echo")
        }
        const lines: Array<string> = []
        let allowed = 0
        for (const request of table) {
          const decision = authorize(compiled.right, request.from, "echo", {
            method: "POST",
            path: pathOf(request.method),
            headers: request.headers
          })
          const code = yield* callers[request.from](request.method, request.headers)
          if (decision.allowed) allowed++
          lines.push(
            `${request.from} ${request.method} ${
              JSON.stringify(request.headers ?? {})
            }: policy ${decision.allowed} live ${code}`
          )
          assert.strictEqual(code, decision.allowed ? grpc.status.OK : grpc.status.PERMISSION_DENIED, lines.join("\n"))
        }
        // Both outcomes are exercised.
        assert.isAbove(allowed, 2)
        assert.isBelow(allowed, table.length - 2)
      }),
    { timeout: 60_000 }
  )

  it.scopedLive(
    "an authorization rule changed in the config changes what a running server allows",
    () =>
      Effect.gen(function*() {
        const { address, certs, dir, live, ports } = yield* mesh
        const billing = yield* xdsCaller(address, "billing", certs.billing.directory, "echo")
        assert.strictEqual(yield* billing("Other"), grpc.status.PERMISSION_DENIED)
        const more = [...rules, {
          name: "billing-other",
          action: "allow",
          from: [{ service: "billing" }],
          to: "echo",
          when: { paths: ["/mesh.test.Echo/Other"] }
        }]
        yield* live.apply(meshConfig(dir, ports, more), "test")
        yield* eventually(
          Effect.filterOrFail(billing("Other"), (code) => code === grpc.status.OK, (code) => `still ${code}`)
        )
        // The rest of the rules still hold.
        assert.strictEqual(yield* billing("Admin"), grpc.status.PERMISSION_DENIED)
      }),
    { timeout: 60_000 }
  )

  it.scopedLive(
    "certificates renewed on disk are picked up by server and client without a restart",
    () =>
      Effect.gen(function*() {
        const { address, certs, config, dir, ports } = yield* mesh
        const web = yield* xdsCaller(address, "web", certs.web.directory, "echo")
        assert.strictEqual(yield* web("Call"), grpc.status.OK)
        const served = (serial: string) =>
          Effect.async<string, string>((resume) => {
            const socket = NodeTls.connect({
              host: "127.0.0.1",
              port: ports.echo,
              ca: read(certs.web.directory, "ca.pem"),
              key: read(certs.web.directory, "key.pem"),
              cert: read(certs.web.directory, "cert.pem"),
              ALPNProtocols: ["h2"],
              checkServerIdentity: () => undefined
            }, () => {
              const got = socket.getPeerCertificate().serialNumber
              socket.destroy()
              resume(
                normalize(got) === normalize(serial)
                  ? Effect.succeed(got)
                  : Effect.fail(`serving ${got}`)
              )
            })
            socket.on("error", (error) => resume(Effect.fail(error.message)))
          })
        const renewed = yield* issue(config, dir, "echo")
        assert.notStrictEqual(renewed.serial, certs.echo.serial)
        yield* eventually(served(renewed.serial), { timeout: "20 seconds" })
        // The client side: web's files are renewed while its channel runs. While the server still sees
        // the old certificate it is restarted (the channel must connect again, with what it has loaded).
        const ledger = yield* issue(config, dir, "ledger")
        const seen: Array<string> = []
        const serveLedger = Effect.flatMap(Scope.make(), (scope) =>
          Effect.as(Scope.extend(xdsServer(address, "ledger", ports.ledger, ledger.directory, seen), scope), scope))
        let current = yield* serveLedger
        yield* Effect.addFinalizer(() =>
          Scope.close(current, Exit.void)
        )
        const toLedger = yield* xdsCaller(address, "web", certs.web.directory, "ledger")
        assert.strictEqual(yield* toLedger("Call"), grpc.status.OK)
        assert.strictEqual(normalize(seen.at(-1) ?? ""), normalize(certs.web.serial))
        const renewedWeb = yield* issue(config, dir, "web")
        yield* eventually(
          Effect.gen(function*() {
            const code = yield* toLedger("Call")
            const got = normalize(seen.at(-1) ?? "")
            if (code === grpc.status.OK && got === normalize(renewedWeb.serial)) return
            if (code === grpc.status.OK) {
              // Still the connection made with the old certificate: drop it by restarting the server.
              yield* Scope.close(current, Exit.void)
              current = yield* serveLedger
            }
            return yield* Effect.fail(`code ${code}, client certificate ${got}`)
          }),
          { timeout: "20 seconds" }
        )
      }),
    { timeout: 60_000 }
  )
})

describe("proxyless gRPC under mtls: permissive", () => {
  it.scopedLive(
    "plaintext both ways: rules without callers apply, rules naming callers never match",
    () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const ports = { echo: yield* freePort, ledger: yield* freePort }
        const anyone = { name: "anyone-other", action: "allow", to: "echo", when: { paths: ["/mesh.test.Echo/Other"] } }
        const config = meshConfig(dir, ports, [...rules, anyone], "ca", "permissive")
        const web = yield* issue(config, dir, "web")
        const echo = yield* issue(config, dir, "echo")
        const { address } = yield* controller(config)
        yield* xdsServer(address, "echo", ports.echo, echo.directory)
        const compiled = compileConfig(config)
        if (Either.isLeft(compiled)) throw new Error(compiled.left.message)
        const viaXds = yield* xdsCaller(address, "web", web.directory, "echo")
        const plaintext = yield* directCaller(ports.echo, grpc.credentials.createInsecure())
        for (const caller of [viaXds, plaintext]) {
          for (const method of METHODS) {
            // Without TLS the server sees no identity: `policy check` for a caller without one agrees.
            const decision = authorize(compiled.right, undefined, "echo", { method: "POST", path: pathOf(method) })
            assert.strictEqual(
              yield* caller(method),
              decision.allowed ? grpc.status.OK : grpc.status.PERMISSION_DENIED,
              method
            )
          }
        }
        assert.strictEqual(yield* viaXds("Other"), grpc.status.OK)
        assert.strictEqual(yield* viaXds("Call"), grpc.status.PERMISSION_DENIED)
      }),
    { timeout: 60_000 }
  )
})
