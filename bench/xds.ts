/**
 * xDS push benchmark against the physical floor (prints figures; never fails a build).
 *
 *   npm run bench:xds -- [--streams 1000] [--services 1000] [--rounds 5] [--scale 10000]
 *                        [--instrument ../shared/xds-load] [--no-build] [--node-flags "FLAGS"]
 *
 * It runs the instrument's `compare.sh` (see its README): the BUILT controller (`dist`, as the
 * package's bin runs it, not under tsx) beside `floor.mjs`, a bare grpc-js server that writes one
 * pre-encoded response to every stream, on the same work in the same run, with the same lean
 * Envoy-like client (`load.mjs`) for both. Each figure is the median of `--rounds` rounds (load.mjs
 * takes the medians). Printed: every figure, the floor's, and the ratio; with `--scale N`, a second
 * run at N services shows what one change costs at N against `--services`.
 */
import { spawnSync } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { fileURLToPath } from "node:url"
import { nodeFlags as imageFlags } from "./imageFlags.js"

const USAGE = `usage: npm run bench:xds -- [options]
  --streams N        Envoy-like ADS streams (default 1000)
  --services N       services of 3 endpoints each (default 1000)
  --rounds N         one-endpoint changes per mode; figures are medians (default 5)
  --scale N          also run at N services and print the cost of one change at N vs --services
  --instrument DIR   the xds-load instrument (default ../shared/xds-load from the project root);
                     it needs its own node_modules (compare.sh runs npm ci there once)
  --no-build         use dist/ as it is (default: npm run build first)
  --node-flags "F"   Node/V8 flags the controller runs with (default: the Dockerfile ENTRYPOINT's,
                     as the image runs it; "" for none)
  --help             this text`

const root = NodePath.resolve(NodePath.dirname(fileURLToPath(import.meta.url)), "..")
const args = process.argv.slice(2)
if (args.includes("--help") || args.includes("-h")) {
  console.log(USAGE)
  process.exit(0)
}
const option = (name: string, fallback: string): string => {
  const i = args.indexOf(name)
  if (i < 0) return fallback
  const value = args[i + 1]
  if (value === undefined || value.startsWith("--")) {
    console.error(`${name} needs a value\n${USAGE}`)
    process.exit(2)
  }
  return value
}
const int = (name: string, fallback: number): number => {
  const value = Number(option(name, String(fallback)))
  if (!Number.isInteger(value) || value < 1) {
    console.error(`${name} must be a positive integer\n${USAGE}`)
    process.exit(2)
  }
  return value
}
const known = new Set(["--streams", "--services", "--rounds", "--scale", "--instrument", "--no-build", "--node-flags"])
for (const [i, a] of args.entries()) {
  // The value of --node-flags is itself made of flags.
  if (a.startsWith("--") && !known.has(a) && args[i - 1] !== "--node-flags") {
    console.error(`unknown option ${a}\n${USAGE}`)
    process.exit(2)
  }
}
const streams = int("--streams", 1000)
const services = int("--services", 1000)
const rounds = int("--rounds", 5)
const scale = args.includes("--scale") ? int("--scale", 10_000) : undefined
const instrument = NodePath.resolve(root, option("--instrument", "../shared/xds-load"))
const compare = NodePath.join(instrument, "compare.sh")
const nodeFlags = imageFlags(root, args)
if (!NodeFs.existsSync(compare)) {
  console.error(`no compare.sh in ${instrument}: pass --instrument <dir of xds-load>`)
  process.exit(2)
}

if (!args.includes("--no-build")) {
  const build = spawnSync("npm", ["run", "build"], { cwd: root, stdio: "inherit" })
  if (build.status !== 0) process.exit(build.status ?? 1)
}

interface Figures {
  readonly lastMs: number | undefined
  readonly bytes: number | undefined
  readonly syncMs: number | undefined
  readonly rssPeakMb: number | undefined
}

/**
 * Three mismatches between compare.sh and the controller, mended in a copy (in a temporary folder
 * beside links to the instrument's other files; the instrument itself is untouched):
 * - it names the service its registration goes to with `printf %04d`, while mesh.mjs pads names to
 *   the digits of the service count (`svc-00001` at 10,000): there the "one change" would create a
 *   new service (a new cluster, the whole CDS to every SotW stream) instead of adding an endpoint;
 * - its registration POST carries no credential, and the admin server answers such a POST with 401
 *   (the change never happens and the API rows print no figures): the copy sends the admin token the
 *   controller generated in the run's state dir (`certificates: {dir: $W/state}`);
 * - it starts the controller as `node "$BIN" run`, without the Node flags the image's ENTRYPOINT
 *   runs it with: the copy adds them (`nodeFlags`).
 */
const compareFor = (serviceCount: number): string => {
  const width = Math.max(4, String(serviceCount).length)
  const text = NodeFs.readFileSync(compare, "utf8")
  const post = "curl -s -o /dev/null -X POST -H content-type:application/json"
  const start = `node "$BIN" run`
  if (
    !text.includes("printf %04d") || !text.includes(post) || !text.includes("certificates: {dir: $W/state}") ||
    !text.includes(start)
  ) {
    console.error(
      "compare.sh no longer names the target with printf %04d, POSTs with curl, keeps its state in $W/state or starts node \"$BIN\" run"
    )
    process.exit(2)
  }
  const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "xds-compare-"))
  for (const entry of NodeFs.readdirSync(instrument)) {
    if (entry !== "compare.sh") NodeFs.symlinkSync(NodePath.join(instrument, entry), NodePath.join(dir, entry))
  }
  const patched = NodePath.join(dir, "compare.sh")
  const withToken = `${post} -H \\"authorization: Bearer \\$(cat $W/state/admin-token)\\"`
  NodeFs.writeFileSync(
    patched,
    text.replaceAll("printf %04d", `printf %0${width}d`).replace(post, withToken).replace(
      start,
      ["node", ...nodeFlags, `"$BIN" run`].join(" ")
    ),
    { mode: 0o755 }
  )
  process.on("exit", () => NodeFs.rmSync(dir, { recursive: true, force: true }))
  return patched
}

/** One compare.sh run, its lines parsed: controller and floor figures by mode. */
const run = (serviceCount: number) => {
  const started = Date.now()
  const result = spawnSync("bash", [compareFor(serviceCount)], {
    cwd: root,
    env: { ...process.env, STREAMS: String(streams), SERVICES: String(serviceCount), ROUNDS: String(rounds) },
    encoding: "utf8",
    maxBuffer: 64 * 1024 * 1024
  })
  const out = `${result.stdout}${result.stderr}`
  const lines = out.split("\n")
  const num = (line: string | undefined, re: RegExp): number | undefined => {
    const m = line === undefined ? null : re.exec(line)
    return m ? Number(m[1]) : undefined
  }
  const figures = (prefix: string): Figures => {
    const line = lines.find((l) => l.startsWith(prefix))
    return {
      lastMs: num(line, /last stream ([\d.]+) ms/),
      bytes: num(line, /, (\d+) B\/stream/),
      syncMs: num(line, /initial sync of all ([\d.]+) ms/),
      rssPeakMb: num(line, /server peak RSS (\d+) MB/)
    }
  }
  return {
    raw: out,
    seconds: Math.round((Date.now() - started) / 1000),
    ready: lines.find((l) => l.startsWith("controller ready")),
    after: lines.find((l) => l.startsWith("controller after")),
    peakMb: num(lines.find((l) => l.startsWith("controller after")), /(\d+) MB peak/),
    delta: figures("controller delta-api"),
    sotw: figures("controller sotw-api"),
    file: figures("controller delta-file"),
    floorDelta: figures("floor delta"),
    floorSotw: figures("floor sotw")
  }
}

const fmt = (
  n: number | undefined
) => (n === undefined ? "?" : n >= 100 ? Math.round(n).toLocaleString("en") : String(n))
const ratio = (a: number | undefined, b: number | undefined) =>
  a === undefined || b === undefined || b === 0 ? "?" : `${(a / b).toFixed(2)}x`

const load = () => NodeOs.loadavg().map((n) => n.toFixed(2)).join(", ")
console.log(
  `xds bench: ${streams} streams, ${services} services x 3 endpoints, ${rounds} rounds (medians); controller: node ${
    nodeFlags.join(" ")
  }`
)
console.log(
  `machine: ${NodeOs.cpus().length} x ${
    NodeOs.cpus()[0]?.model ?? "?"
  }, node ${process.version}; load average before: ${load()}`
)
const main = run(services)
if (main.delta.lastMs === undefined) {
  console.log(main.raw)
  console.error("compare.sh printed no controller figures (its output is above)")
  process.exit(0)
}
const rows: ReadonlyArray<readonly [string, number | undefined, number | undefined]> = [
  ["Delta: one change reaches the last stream (ms)", main.delta.lastMs, main.floorDelta.lastMs],
  ["SotW: one change reaches the last stream (ms)", main.sotw.lastMs, main.floorSotw.lastMs],
  ["SotW bytes per stream for that change (B)", main.sotw.bytes, main.floorSotw.bytes],
  ["Delta initial sync of all streams (ms)", main.delta.syncMs, main.floorDelta.syncMs],
  ["SotW initial sync of all streams (ms)", main.sotw.syncMs, main.floorSotw.syncMs],
  [
    "peak RSS with all streams (MB)",
    main.peakMb,
    Math.max(main.floorDelta.rssPeakMb ?? 0, main.floorSotw.rssPeakMb ?? 0)
  ],
  ["config file rewrite -> last stream, Delta (ms)", main.file.lastMs, undefined]
]
console.log(`\n| figure | controller | floor | ratio |\n| --- | --- | --- | --- |`)
for (const [name, ours, floor] of rows) {
  console.log(
    `| ${name} | ${fmt(ours)} | ${floor === undefined ? "-" : fmt(floor)} | ${
      floor === undefined ? "" : ratio(ours, floor)
    } |`
  )
}
console.log(`\n${main.ready ?? ""}\n${main.after ?? ""}\n(${main.seconds} s; load average after: ${load()})`)

if (scale !== undefined) {
  const big = run(scale)
  console.log(`\none change at ${scale} vs ${services} services (${streams} streams):`)
  console.log(
    `  Delta last stream: ${fmt(big.delta.lastMs)} ms vs ${fmt(main.delta.lastMs)} ms = ${
      ratio(big.delta.lastMs, main.delta.lastMs)
    }`
  )
  console.log(
    `  SotW last stream:  ${fmt(big.sotw.lastMs)} ms vs ${fmt(main.sotw.lastMs)} ms = ${
      ratio(big.sotw.lastMs, main.sotw.lastMs)
    }`
  )
  console.log(
    `  same run's floor at ${scale}: Delta ${fmt(big.floorDelta.lastMs)} ms, SotW ${fmt(big.floorSotw.lastMs)} ms`
  )
  console.log(`  (load average after: ${load()})`)
}
