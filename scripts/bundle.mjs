// Builds the executable as a tree-shaken ESM bundle (dist/bin/), beside the per-module dist/ that
// the library's exports keep using. Loading the `effect` barrel module by module costs most of the
// CLI's start-up time and memory; the bundle holds only what the program uses, and code split at
// dynamic imports so `--help` does not load the daemon.
//
// Packages that locate files next to their own modules at run time (__dirname, require.resolve:
// grpc-js's and grpc-js-xds's .proto files; protobufjs, which requires optional modules through
// eval) stay external: Node loads them from node_modules as dist/ does. The rest is bundled, since
// loading CommonJS packages file by file (x509 and its ASN.1 stack, consul, prom-client) costs
// start-up time too.
import { build } from "esbuild"
import { execFileSync } from "node:child_process"
import { rmSync, writeFileSync } from "node:fs"

const external = [
  "@grpc/grpc-js",
  "@grpc/grpc-js-xds",
  "@grpc/proto-loader",
  "protobufjs",
  "protobufjs/*"
]

rmSync("dist/bin", { recursive: true, force: true })
const result = await build({
  entryPoints: { "mesh-controller": "src/bin/mesh-controller.ts", healthcheck: "src/bin/healthcheck.ts" },
  outdir: "dist/bin",
  outExtension: { ".js": ".mjs" },
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20.10",
  external,
  // Bundled CommonJS modules (yaml, …) call require() for Node's built-ins.
  banner: {
    js:
      "import { createRequire as __createRequire } from \"node:module\"; const require = __createRequire(import.meta.url);"
  },
  chunkNames: "chunks/[name]-[hash]",
  sourcemap: "linked",
  legalComments: "none",
  logLevel: "warning",
  metafile: true
})

// `mesh-controller --help` is answered from the text this bundle's CLI renders for it, rendered here
// (src/bin/mesh-controller.ts prints dist/bin/help.txt): the same bytes, without loading @effect/cli
// and effect to build them (most of --help's time). Rendered from the bundle itself, it cannot drift.
const mainChunk = Object.entries(result.metafile.outputs).find(([, output]) => output.entryPoint === "src/main.ts")
if (mainChunk === undefined) throw new Error("bundle: no chunk for src/main.ts")
writeFileSync(
  "dist/bin/help.txt",
  execFileSync(process.execPath, [mainChunk[0], "--help"], { stdio: ["ignore", "pipe", "inherit"] })
)

if (process.argv.includes("--metafile")) {
  // `node scripts/bundle.mjs --metafile`: what each output file holds, by package (for start-up work).
  for (const [file, output] of Object.entries(result.metafile.outputs)) {
    if (!file.endsWith(".mjs")) continue
    const byPackage = new Map()
    for (const [input, { bytesInOutput }] of Object.entries(output.inputs)) {
      const parts = input.replace(/^.*node_modules\//, "").split("/")
      const name = input.includes("node_modules/")
        ? (parts[0].startsWith("@") ? `${parts[0]}/${parts[1]}` : parts[0])
        : parts[0]
      byPackage.set(name, (byPackage.get(name) ?? 0) + bytesInOutput)
    }
    const top = [...byPackage].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([n, b]) => `${n} ${Math.round(b / 1024)}K`)
    console.log(
      `${file}: ${Math.round(output.bytes / 1024)}K (${top.join(", ")}); imports ${
        output.imports.filter((i) => i.external && !i.path.startsWith("node:")).map((i) => i.path).join(" ")
      }`
    )
  }
}
