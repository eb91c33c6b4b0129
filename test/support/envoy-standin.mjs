#!/usr/bin/env node
// A stand-in for the Envoy binary (none can be installed here) that honours the parts of Envoy's
// process contract the sidecar supervisor relies on:
//
//   -c/--config-path FILE   bootstrap (YAML or JSON); admin.address.socket_address is served
//   --restart-epoch N       N > 0 is a hot restart: the parent (epoch N-1, same --base-id) is asked
//                           over a domain socket to release the admin port, and is terminated
//                           --parent-shutdown-time-s after this process is ready; without a live
//                           parent the start fails (exit 1), as a supervisor bug should
//   --base-id N, --concurrency N, --drain-time-s N, --parent-shutdown-time-s N, --log-level L,
//   --admin-address-path FILE (written with "ip:port" once the admin listens)
//   admin: GET /ready (503 PRE_INITIALIZING/INITIALIZING, then 200 LIVE; 503 DRAINING after a
//          graceful drain), POST /drain_listeners[?graceful][&inboundonly], GET /server_info,
//          POST /quitquitquit, GET /stats/prometheus, GET /certs (the certificates of each cluster's
//          TLS transport socket, as Envoy's admin shows them: path, serial_number, subject_alt_names,
//          days_until_expiration, valid_from, expiration_time)
//   TLS files: the certificates named in clusters' transport sockets, inline (`filename`) or through
//          file-based SDS (`sds_config.path_config_source`: a DiscoveryResponse file with one Secret).
//          As Envoy, a path_config_source file that does not exist fails the start. The stand-in reads
//          the files again at each /certs request, which is what Envoy sees after the rename its
//          `watched_directory` reacts to (it does not emulate the watch itself).
//   SIGTERM/SIGINT: exit 0 at once (Envoy does not drain on SIGTERM)
//   unknown options: "PARSE ERROR", exit 1 (as Envoy's TCLAP parser)
//
// Switches for tests (not Envoy's):
//   --standin-crash start|after:MS|after-ready:MS|never   (or ENVOY_STANDIN_CRASH) crash at start,
//                                          MS after start, or MS after the first 200 on /ready
//                                          (so the supervisor has certainly seen it ready)
//   --standin-control FILE                 if FILE exists, its content overrides --standin-crash
//                                          (read at each start: lets a test change the next start)
//   --standin-crash-signal SIG             die by this signal instead of exit code 1
//   --standin-ready-delay-ms MS            how long /ready answers 503 (default 150)
//   --standin-ignore-sigterm               ignore SIGTERM (to test SIGKILL escalation)
//   --standin-events FILE                  append one JSON line per lifecycle event
import { X509Certificate } from "node:crypto"
import * as fs from "node:fs"
import * as http from "node:http"
import * as net from "node:net"
import * as YAML from "yaml"

const started = Date.now()
const argv = process.argv.slice(2)
const options = {
  config: undefined,
  epoch: 0,
  baseId: 0,
  concurrency: 1,
  drainTime: 600,
  parentShutdownTime: 900,
  logLevel: "info",
  adminAddressPath: undefined,
  crash: process.env.ENVOY_STANDIN_CRASH ?? "never",
  control: undefined,
  crashSignal: undefined,
  readyDelay: 150,
  ignoreSigterm: false,
  events: undefined
}
const valued = {
  "-c": "config",
  "--config-path": "config",
  "--restart-epoch": "epoch",
  "--base-id": "baseId",
  "--concurrency": "concurrency",
  "--drain-time-s": "drainTime",
  "--parent-shutdown-time-s": "parentShutdownTime",
  "-l": "logLevel",
  "--log-level": "logLevel",
  "--admin-address-path": "adminAddressPath",
  "--standin-crash": "crash",
  "--standin-control": "control",
  "--standin-crash-signal": "crashSignal",
  "--standin-ready-delay-ms": "readyDelay",
  "--standin-events": "events"
}
const numeric = new Set(["epoch", "baseId", "concurrency", "drainTime", "parentShutdownTime", "readyDelay"])
const ignoredValued = new Set([
  "--drain-strategy",
  "--service-node",
  "--service-cluster",
  "--service-zone",
  "--component-log-level",
  "--log-path",
  "--log-format",
  "--config-yaml",
  "--mode"
])
const ignoredFlags = new Set([
  "--disable-hot-restart",
  "--allow-unknown-static-fields",
  "--reject-unknown-dynamic-fields",
  "--enable-fine-grain-logging"
])

const parseError = (message) => {
  process.stderr.write(
    `PARSE ERROR: ${message}\n\nBrief USAGE:\n   envoy-standin -c <string> [--restart-epoch <uint32_t>] ...\n`
  )
  process.exit(1)
}

for (let i = 0; i < argv.length; i++) {
  const arg = argv[i]
  const [flag, inline] = arg.startsWith("--") && arg.includes("=")
    ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
    : [arg, undefined]
  if (flag === "--standin-ignore-sigterm") options.ignoreSigterm = true
  else if (ignoredFlags.has(flag)) continue
  else if (ignoredValued.has(flag)) { if (inline === undefined) i++ }
  else if (flag in valued) {
    const value = inline ?? argv[++i]
    if (value === undefined) parseError(`Missing a value for the argument: ${flag}`)
    const key = valued[flag]
    if (numeric.has(key)) {
      if (!/^\d+$/.test(value)) parseError(`Couldn't read argument value from string '${value}' (${flag})`)
      options[key] = Number(value)
    } else options[key] = value
  } else parseError(`Couldn't find match for argument: ${arg}`)
}

const LEVELS = ["trace", "debug", "info", "warning", "error", "critical", "off"]
const pad = (n, w = 2) => String(n).padStart(w, "0")
const stamp = () => {
  const d = new Date()
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${
    pad(d.getSeconds())
  }.${pad(d.getMilliseconds(), 3)}`
}
const log = (level, logger, message) => {
  if (LEVELS.indexOf(level) < LEVELS.indexOf(options.logLevel)) return
  process.stderr.write(`[${stamp()}][${process.pid}][${level}][${logger}] [source/server/server.cc:1] ${message}\n`)
}
const event = (name, extra = {}) => {
  if (options.events === undefined) return
  fs.appendFileSync(
    options.events,
    JSON.stringify({ event: name, pid: process.pid, epoch: options.epoch, at: Date.now(), ...extra }) + "\n"
  )
}

let crash = options.crash
if (options.control !== undefined && fs.existsSync(options.control)) {
  crash = fs.readFileSync(options.control, "utf8").trim() || crash
}

const die = (why) => {
  log("critical", "main", why)
  event("crash", { why })
  if (options.crashSignal !== undefined) process.kill(process.pid, options.crashSignal)
  else process.exit(1)
}

if (options.config === undefined) {
  log(
    "critical",
    "main",
    "error initializing configuration '': At least one of --config-path or --config-yaml or Options::configProto() should be non-empty"
  )
  process.exit(1)
}

let bootstrap
try {
  bootstrap = YAML.parse(fs.readFileSync(options.config, "utf8"))
} catch (error) {
  log("critical", "main", `error initializing configuration '${options.config}': ${error.message}`)
  process.exit(1)
}
const socketAddress = bootstrap?.admin?.address?.socket_address
if (bootstrap?.node?.id === undefined || bootstrap?.node?.cluster === undefined) {
  log("critical", "main", "error initializing configuration: node 'id' and 'cluster' are required")
  process.exit(1)
}
if (socketAddress === undefined) {
  log("critical", "main", "error initializing configuration: the stand-in needs admin.address.socket_address")
  process.exit(1)
}

// ---- TLS files ------------------------------------------------------------------------------
const sdsSources = []
const walk = (value) => {
  if (Array.isArray(value)) value.forEach(walk)
  else if (value !== null && typeof value === "object") {
    if (typeof value.path_config_source?.path === "string") sdsSources.push(value.path_config_source.path)
    Object.values(value).forEach(walk)
  }
}
walk(bootstrap)
for (const path of sdsSources) {
  if (!fs.existsSync(path)) {
    log(
      "critical",
      "main",
      `error initializing configuration '${options.config}': paths must refer to an existing path in the system: '${path}' does not exist`
    )
    process.exit(1)
  }
}

/** The one Secret a file-based SDS source holds (Envoy refuses any other count). */
const sdsSecret = (config, expected) => {
  const path = config?.path_config_source?.path
  const resources = YAML.parse(fs.readFileSync(path, "utf8"))?.resources ?? []
  if (resources.length !== 1) throw new Error(`${path}: Unexpected SDS secrets length: ${resources.length}`)
  if (resources[0].name !== expected) {
    throw new Error(`${path}: Unexpected SDS secret (expecting ${expected}): ${resources[0].name}`)
  }
  return resources[0]
}

const details = (filename) => {
  const pem = fs.readFileSync(filename, "utf8")
  const first = pem.slice(0, pem.indexOf("-----END CERTIFICATE-----") + 25)
  const cert = new X509Certificate(first)
  const expires = Date.parse(cert.validTo)
  return {
    path: filename,
    serial_number: cert.serialNumber.toLowerCase(),
    subject_alt_names: (cert.subjectAltName ?? "").split(", ").filter((s) => s.startsWith("URI:")).map((s) => ({
      uri: s.slice(4)
    })),
    days_until_expiration: String(Math.max(0, Math.floor((expires - Date.now()) / 86_400_000))),
    valid_from: new Date(Date.parse(cert.validFrom)).toISOString(),
    expiration_time: new Date(expires).toISOString()
  }
}

const certificates = () =>
  (bootstrap.static_resources?.clusters ?? []).flatMap((cluster) => {
    const context = cluster.transport_socket?.typed_config?.common_tls_context
    if (context === undefined) return []
    const chains = [
      ...(context.tls_certificates ?? []),
      ...(context.tls_certificate_sds_secret_configs ?? []).map((c) => sdsSecret(c.sds_config, c.name).tls_certificate)
    ]
    const validation = context.validation_context ??
      (context.combined_validation_context?.validation_context_sds_secret_config === undefined
        ? undefined
        : sdsSecret(
          context.combined_validation_context.validation_context_sds_secret_config.sds_config,
          context.combined_validation_context.validation_context_sds_secret_config.name
        ).validation_context)
    return [{
      ca_cert: validation?.trusted_ca?.filename === undefined ? [] : [details(validation.trusted_ca.filename)],
      cert_chain: chains.map((chain) => details(chain.certificate_chain.filename))
    }]
  })

event("start", { argv, config: options.config, node: bootstrap.node.id })
log("info", "main", `initializing epoch ${options.epoch} (base id=${options.baseId}, hot restart version=11.104)`)
log(
  "info",
  "main",
  `statically linked extensions: (stand-in) concurrency=${options.concurrency} drain-time-s=${options.drainTime}`
)

if (crash === "start") {
  die(
    "external/com_github_google_tcmalloc/tcmalloc/system-alloc.cc:625] MmapAligned() failed - unable to allocate with tag (hint, size, alignment)"
  )
}
const after = /^after:(\d+)$/.exec(crash)
const afterReady = /^after-ready:(\d+)$/.exec(crash)
let crashScheduled = false
if (after !== null) {
  setTimeout(
    () => die(`caught Segmentation fault, suspect faulting address 0x0 (after ${after[1]} ms)`),
    Number(after[1])
  )
}

// ---- hot restart: a domain socket per (base id, epoch) ---------------------------------------
const socketName = (epoch) => `\0envoy_standin_domain_socket_${options.baseId}_${epoch}`
let state = "PRE_INITIALIZING"
let admin

const request = (epoch, message) =>
  new Promise((resolve, reject) => {
    const socket = net.connect(socketName(epoch))
    let answer = ""
    socket.on("connect", () => socket.write(message + "\n"))
    socket.on("data", (data) => {
      answer += data
    })
    socket.on("end", () => resolve(answer.trim()))
    socket.on("error", reject)
  })

const rpc = net.createServer((socket) => {
  let text = ""
  socket.on("data", (data) => {
    text += data
    if (!text.includes("\n")) return
    const message = text.trim()
    if (message === "shutdown-admin") {
      log("info", "main", "shutting down admin due to child startup")
      event("shutdown-admin")
      state = "DRAINING"
      admin.close(() => socket.end("ok\n"))
      admin.closeAllConnections?.()
    } else if (message === "terminate") {
      log("warning", "main", "shutting down parent after drain")
      event("terminated-by-child")
      socket.end("ok\n", () => exit(0))
    } else socket.end("unknown\n")
  })
})
rpc.on(
  "error",
  (error) => die(`unable to bind domain socket with base_id=${options.baseId}, id=${options.epoch}: ${error.message}`)
)
rpc.listen(socketName(options.epoch))

const exit = (code) => {
  event("exit", { code })
  process.exit(code)
}

// ---- admin ------------------------------------------------------------------------------------
const serverInfo = () => ({
  version: "stand-in/1.31.0/Clean/RELEASE/BoringSSL",
  state,
  hot_restart_version: "11.104",
  command_line_options: {
    base_id: String(options.baseId),
    concurrency: options.concurrency,
    config_path: options.config,
    restart_epoch: options.epoch,
    drain_time: `${options.drainTime}s`,
    parent_shutdown_time: `${options.parentShutdownTime}s`,
    log_level: options.logLevel
  },
  node: bootstrap.node,
  uptime_current_epoch: `${Math.floor((Date.now() - started) / 1000)}s`,
  uptime_all_epochs: `${Math.floor((Date.now() - started) / 1000)}s`
})

const handle = (req, res) => {
  const url = new URL(req.url, "http://admin")
  const post = (then) => {
    if (req.method !== "POST") {
      res.writeHead(405, { "content-type": "text/plain" }).end(`Method ${req.method} not allowed, POST required.\n`)
      return
    }
    then()
  }
  switch (url.pathname) {
    case "/ready":
      res.writeHead(state === "LIVE" ? 200 : 503, { "content-type": "text/plain" }).end(`${state}\n`)
      if (state === "LIVE" && afterReady !== null && !crashScheduled) {
        crashScheduled = true
        setTimeout(
          () => die(`caught Segmentation fault, suspect faulting address 0x0 (${afterReady[1]} ms after ready)`),
          Number(afterReady[1])
        )
      }
      return
    case "/server_info":
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(serverInfo(), null, 2))
      return
    case "/certs":
      try {
        res.writeHead(200, { "content-type": "application/json" })
          .end(JSON.stringify({ certificates: certificates() }, null, 2))
      } catch (error) {
        res.writeHead(500, { "content-type": "text/plain" }).end(`${error.message}\n`)
      }
      return
    case "/drain_listeners":
      return post(() => {
        const graceful = url.searchParams.has("graceful")
        event("drain_listeners", { graceful, inboundonly: url.searchParams.has("inboundonly") })
        log("info", "main", `draining listeners${graceful ? " gracefully" : ""}`)
        if (graceful) state = "DRAINING"
        res.writeHead(200, { "content-type": "text/plain" }).end("OK\n")
      })
    case "/quitquitquit":
      return post(() => {
        event("quitquitquit")
        res.writeHead(200, { "content-type": "text/plain" }).end("OK\n", () => exit(0))
      })
    case "/stats/prometheus":
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4" })
        .end(
          `# TYPE envoy_server_live gauge\nenvoy_server_live{} ${
            state === "LIVE" ? 1 : 0
          }\n# TYPE envoy_server_hot_restart_epoch gauge\nenvoy_server_hot_restart_epoch{} ${options.epoch}\n`
        )
      return
    default:
      res.writeHead(404, { "content-type": "text/plain" }).end(
        "invalid path. admin commands are: /certs /ready /server_info /drain_listeners /quitquitquit /stats/prometheus\n"
      )
  }
}

const startAdmin = () =>
  new Promise((resolve) => {
    admin = http.createServer(handle)
    admin.on("error", (error) =>
      die(`cannot bind '${socketAddress.address}:${socketAddress.port_value ?? 0}': ${error.message}`))
    admin.listen(socketAddress.port_value ?? 0, socketAddress.address, () => {
      const { address, port } = admin.address()
      if (options.adminAddressPath !== undefined) {
        fs.writeFileSync(options.adminAddressPath, `${address}:${port}`)
      }
      log("info", "main", `admin address: ${address}:${port}`)
      event("admin", { address: `${address}:${port}` })
      resolve()
    })
  })

const main = async () => {
  if (options.epoch > 0) {
    try {
      await request(options.epoch - 1, "shutdown-admin")
    } catch (error) {
      die(
        `unable to connect to parent (epoch ${
          options.epoch - 1
        }, base id ${options.baseId}) for hot restart: ${error.message}`
      )
      return
    }
  }
  await startAdmin()
  state = "INITIALIZING"
  setTimeout(() => {
    state = "LIVE"
    log("info", "main", "all clusters initialized. initializing init manager")
    log("info", "config", "all dependencies initialized. starting workers")
    event("live")
    if (options.epoch > 0) {
      setTimeout(() => {
        request(options.epoch - 1, "terminate").catch(() => undefined)
      }, options.parentShutdownTime * 1000)
    }
  }, options.readyDelay)
}

const onTerm = (signal) => {
  event("signal", { signal })
  if (options.ignoreSigterm && signal === "SIGTERM") {
    log("warning", "main", "caught SIGTERM (ignored by --standin-ignore-sigterm)")
    return
  }
  log("warning", "main", `caught ${signal}`)
  log("info", "main", "shutting down server instance")
  exit(0)
}
process.on("SIGTERM", () => onTerm("SIGTERM"))
process.on("SIGINT", () => onTerm("SIGINT"))

main()
