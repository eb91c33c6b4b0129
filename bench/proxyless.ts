/**
 * Proxyless gRPC throughput with and without mesh security (prints figures; not a test).
 *
 *   npx tsx bench/proxyless.ts                  # 5 s per mode, 32 calls in flight
 *   npx tsx bench/proxyless.ts --seconds 10 --concurrency 64 --rounds 3
 *
 * One process holds the controller, a real `@grpc/grpc-js-xds` XdsServer and a real xDS client,
 * the same layout in every mode; only the mesh config differs:
 * - `plaintext`: `mtls: permissive`, no authorization rules, default allow (no RBAC filter; the baseline);
 * - `plaintext+rbac`: `permissive`, an allow rule on the path (RBAC evaluated, no identities);
 * - `mtls+rbac`: `mtls: strict`, an allow rule naming the caller's SPIFFE ID.
 * Certificates come from the mesh CA (`certs issue`'s function). Prints calls/second per mode (mean
 * of the rounds after the first) and the ratio against the plaintext baseline of the same run.
 */
process.env["GRPC_XDS_EXPERIMENTAL_RBAC"] = "true"

import * as grpc from "@grpc/grpc-js"
import { Context, Effect, Either, Exit, Layer, Scope } from "effect"
import * as NodeFs from "node:fs"
import * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"

const argv = process.argv.slice(2)
const flag = (name: string, fallback: number) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 ? Number(argv[i + 1]) : fallback
}
const SECONDS = flag("seconds", 5)
const CONCURRENCY = flag("concurrency", 32)
/** Every round runs every mode; the first warms the JIT and is printed but not used for the ratio. */
const ROUNDS = Math.max(2, flag("rounds", 2))

const main = async () => {
  const grpcXds = await import("@grpc/grpc-js-xds")
  const { Discovery } = await import("../layers/Discovery.js")
  const { Health } = await import("../layers/Health.js")
  const { LiveConfig } = await import("../layers/LiveConfig.js")
  const { Snapshot } = await import("../layers/Snapshot.js")
  const { Xds } = await import("../layers/Xds.js")
  const { grpcBootstrap } = await import("../src/agent/GrpcBootstrap.js")
  const { filesIn } = await import("../src/certs/IdentityFiles.js")
  const { storeSettingsOf } = await import("../src/commands/ca.js")
  const { issueToFiles } = await import("../src/commands/certs.js")
  const { decodeConfig } = await import("../src/ConfigDocument.js")
  grpcXds.register()

  const identity = (b: Buffer) => b
  const PATH = "/mesh.bench.Echo/Call"
  const definition = {
    Call: {
      path: PATH,
      requestStream: false,
      responseStream: false,
      requestSerialize: identity,
      requestDeserialize: identity,
      responseSerialize: identity,
      responseDeserialize: identity
    }
  }
  const freePort = () =>
    new Promise<number>((resolve) => {
      const s = NodeNet.createServer()
      s.listen(0, "127.0.0.1", () => {
        const port = (s.address() as NodeNet.AddressInfo).port
        s.close(() => resolve(port))
      })
    })
  const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "mesh-bench-proxyless-"))

  const run = async (mode: "plaintext" | "plaintext+rbac" | "mtls+rbac") => {
    const port = await freePort()
    const authorization = mode === "plaintext"
      ? []
      : [{
        name: "allow",
        action: "allow",
        to: "echo",
        ...(mode === "mtls+rbac" ? { from: [{ service: "web" }] } : {}),
        when: { paths: ["/mesh.bench.Echo/*"] }
      }]
    const decoded = decodeConfig({
      mesh: { name: "bench", trustDomain: "mesh.local" },
      certificates: { dir: NodePath.join(dir, "ca") },
      services: [
        { name: "echo", protocol: "grpc", port, endpoints: [{ address: "127.0.0.1", port }] },
        { name: "web", protocol: "grpc", port: 1, endpoints: [{ address: "127.0.0.1", port: 1 }] }
      ],
      policies: {
        security: {
          mtls: mode === "mtls+rbac" ? "strict" : "permissive",
          defaultAction: mode === "plaintext" ? "allow" : "deny",
          authorization
        }
      }
    }, "bench")
    if (Either.isLeft(decoded)) throw new Error(decoded.left.message)
    const config = decoded.right
    for (const name of ["echo", "web"]) {
      await Effect.runPromise(Effect.orDie(issueToFiles(storeSettingsOf(config), name, NodePath.join(dir, name))))
    }
    const inputs = Layer.mergeAll(LiveConfig.layerMemory(config), Health.layerNoop)
    const snapshot = Snapshot.layer.pipe(
      Layer.provide(Layer.merge(inputs, Discovery.layerEmbedded.pipe(Layer.provide(inputs))))
    )
    const xdsLayer = Xds.layer({ host: "127.0.0.1", port: 0 }).pipe(Layer.provide(Layer.merge(snapshot, inputs)))
    const scope = await Effect.runPromise(Scope.make())
    const context = await Effect.runPromise(Layer.buildWithScope(xdsLayer, scope))
    const close = () => Effect.runPromise(Scope.close(scope, Exit.void))
    const xds = `127.0.0.1:${Context.get(context, Xds).address.port}`
    const bootstrap = (service: string) =>
      JSON.stringify(
        grpcBootstrap({ xdsServer: xds, service, instance: "b1", files: filesIn(NodePath.join(dir, service)) })
      )
    const server = new grpcXds.XdsServer({
      "grpc.TEST_ONLY_DO_NOT_USE_IN_PROD.xds_bootstrap_config": bootstrap("echo")
    })
    server.addService(definition, {
      Call: (_c: unknown, cb: grpc.sendUnaryData<Buffer>) => cb(null, Buffer.from("ok"))
    })
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(
        `127.0.0.1:${port}`,
        new grpcXds.XdsServerCredentials(grpc.ServerCredentials.createInsecure()),
        (e) => (e ? reject(e) : resolve())
      )
    )
    const client = new grpc.Client(
      "xds:///echo",
      new grpcXds.XdsChannelCredentials(grpc.credentials.createInsecure()),
      {
        "grpc.TEST_ONLY_DO_NOT_USE_IN_PROD.xds_bootstrap_config": bootstrap("web")
      }
    )
    const call = () =>
      new Promise<void>((resolve, reject) =>
        client.makeUnaryRequest(PATH, identity, identity, Buffer.alloc(16), new grpc.Metadata(), {
          deadline: Date.now() + 10_000
        }, (e) => (e ? reject(e) : resolve()))
      )
    await call() // warm: xDS resolved, connection up; a denied or failed call throws here
    for (let i = 0; i < 200; i++) await call()
    let done = 0
    const until = Date.now() + SECONDS * 1000
    const worker = async () => {
      while (Date.now() < until) {
        await call()
        done++
      }
    }
    const started = Date.now()
    await Promise.all(Array.from({ length: CONCURRENCY }, worker))
    const rate = done / ((Date.now() - started) / 1000)
    client.close()
    server.forceShutdown()
    await close()
    return rate
  }

  const modes = ["plaintext", "plaintext+rbac", "mtls+rbac"] as const
  const rounds: Array<Array<number>> = []
  for (let r = 0; r < ROUNDS; r++) {
    const rates: Array<number> = []
    for (const mode of modes) rates.push(await run(mode))
    rounds.push(rates)
  }
  const counted = rounds.slice(1)
  const mean = (i: number) => counted.reduce((sum, rates) => sum + rates[i]!, 0) / counted.length
  const base = mean(0)
  console.log(
    `proxyless unary calls, ${SECONDS}s per mode, ${CONCURRENCY} in flight, one process (controller + XdsServer + client)`
  )
  console.log(
    `rounds (first is warm-up): ${rounds.map((rates) => rates.map((x) => x.toFixed(0)).join("/")).join("  ")}`
  )
  modes.forEach((mode, i) =>
    console.log(`${mode.padEnd(16)} ${mean(i).toFixed(0).padStart(8)} calls/s   ratio ${(mean(i) / base).toFixed(2)}`)
  )
  console.log(`load average: ${NodeOs.loadavg().map((l) => l.toFixed(2)).join(" ")}`)
  NodeFs.rmSync(dir, { recursive: true, force: true })
  process.exit(0)
}

void main()
