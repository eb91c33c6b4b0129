/**
 * A stand-in for a Consul agent's HTTP API, for tests (no Consul binary can be installed here).
 * It speaks the real wire protocol to the real `consul` npm client: the endpoints the controller
 * uses, blocking queries (`index`, `wait`, `X-Consul-Index`), per-resource indexes, TTL checks that
 * expire, and faults: connection refused, error statuses, slow answers, an index that goes
 * backwards, a snapshot restore, and a restart that forgets every registration.
 *
 * Blocking queries follow Consul's server (`blockingQuery` in agent/consul/rpc.go): a query with
 * `index` > 0 blocks while the resource's index is at or below the asked one (also when the asked
 * one is greater, as after a restore), until the index rises past it or `wait` (default 5m, at
 * most 10m, plus up to wait/16 of jitter) elapses. A write that leaves the index at or below the
 * asked one does not answer the query. A restore abandons the state store: every query blocked
 * at that instant answers at once, with the (lower) restored index.
 *
 * One node (`standin`, 127.0.0.1, datacenter dc1). Agent registrations and catalog entries are the
 * same thing here, as they are on a single-agent cluster.
 */
import { Effect, type Scope } from "effect"
import * as Http from "node:http"
import * as Https from "node:https"
import type { AddressInfo, Socket } from "node:net"

export type CheckStatus = "passing" | "warning" | "critical"

export interface StandInCheck {
  readonly CheckID: string
  readonly Name: string
  Status: CheckStatus
  Output: string
  readonly ServiceID: string
  readonly ServiceName: string
  readonly Type: string
  readonly TTL?: string
  readonly definition: Record<string, unknown>
}

export interface StandInService {
  readonly ID: string
  readonly Service: string
  readonly Tags: ReadonlyArray<string>
  readonly Address: string
  readonly Port: number
  readonly Meta: Readonly<Record<string, string>>
  readonly Weights: { readonly Passing: number; readonly Warning: number }
}

interface Waiter {
  readonly resource: string
  /** `change`: the resource was written (the query re-checks its index); `abandon`: answer now. */
  readonly wake: (reason: "change" | "abandon") => void
}

/** What a snapshot holds: the whole state, indexes included. */
export interface StandInSnapshot {
  readonly index: bigint
  readonly resourceIndex: ReadonlyMap<string, bigint>
  readonly services: ReadonlyMap<string, StandInService>
  readonly checks: ReadonlyMap<string, StandInCheck>
  readonly kv: ReadonlyMap<string, { value: Buffer; createIndex: bigint; modifyIndex: bigint }>
}

const NODE = { ID: "00000000-0000-0000-0000-000000000001", Node: "standin", Address: "127.0.0.1", Datacenter: "dc1" }

/** Go duration (`5s`, `100ms`, `1m30s`) → milliseconds. */
const parseGoDuration = (text: string): number | undefined => {
  const units: Record<string, number> = { ns: 1e-6, us: 1e-3, "µs": 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 }
  let total = 0
  let matched = ""
  for (const [part, amount, unit] of text.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g)) {
    total += Number(amount) * units[unit!]!
    matched += part
  }
  return matched === text && text !== "" ? total : undefined
}

export class ConsulStandIn {
  private server: Http.Server
  private readonly sockets = new Set<Socket>()
  private index = 10n
  private readonly resourceIndex = new Map<string, bigint>()
  private readonly services = new Map<string, StandInService>()
  private readonly checks = new Map<string, StandInCheck>()
  private readonly kv = new Map<string, { value: Buffer; createIndex: bigint; modifyIndex: bigint }>()
  private readonly ttlTimers = new Map<string, NodeJS.Timeout>()
  private waiters = new Set<Waiter>()
  private failStatus: number | undefined
  private delayMillis = 0
  private refusing = false
  /** Every request as `METHOD /path` (no query), in order. */
  readonly requests: Array<string> = []
  /** Registrations of these service IDs are refused with 403, as an ACL would. */
  readonly refusedIds = new Set<string>()
  /** Every `X-Consul-Token` received. */
  readonly tokens = new Set<string>()
  port = 0

  private constructor(private readonly tls?: { readonly certPem: string; readonly keyPem: string }) {
    this.server = this.newServer()
  }

  /** Starts on 127.0.0.1 with a free port; stops with the scope. */
  static readonly make: Effect.Effect<ConsulStandIn, never, Scope.Scope> = Effect.suspend(() =>
    ConsulStandIn.start(undefined)
  )

  /** The same over HTTPS with this certificate (Consul's `https://` API). */
  static readonly makeTls = (
    tls: { readonly certPem: string; readonly keyPem: string }
  ): Effect.Effect<ConsulStandIn, never, Scope.Scope> => ConsulStandIn.start(tls)

  private static start(tls: { readonly certPem: string; readonly keyPem: string } | undefined) {
    return Effect.acquireRelease(
      Effect.promise(async () => {
        const standIn = new ConsulStandIn(tls)
        await standIn.listen(0)
        return standIn
      }),
      (standIn) => Effect.promise(() => standIn.close()).pipe(Effect.timeoutOption("5 seconds"))
    )
  }

  get address(): string {
    return `${this.tls ? "https" : "http"}://127.0.0.1:${this.port}`
  }

  // -------------------------------------------------------------------------------------------
  // Faults
  // -------------------------------------------------------------------------------------------

  /** Stops listening and drops every connection: clients get ECONNREFUSED until `acceptConnections`. */
  readonly refuseConnections = (): Promise<void> => {
    this.refusing = true
    return this.closeServer()
  }

  readonly acceptConnections = async (): Promise<void> => {
    if (!this.refusing) return
    this.refusing = false
    this.server = this.newServer()
    await this.listen(this.port)
  }

  /** Every request answers this status (undefined: answer normally again). */
  readonly failWith = (status: number | undefined): void => {
    this.failStatus = status
  }

  /** Every answer is delayed this long (blocking queries: on top of their wait). */
  readonly slowDown = (millis: number): void => {
    this.delayMillis = millis
  }

  /** A restarted agent with no state: every registration, check and key is gone, and the index restarts low. */
  readonly restart = (): void => {
    this.services.clear()
    this.checks.clear()
    this.kv.clear()
    for (const timer of this.ttlTimers.values()) clearTimeout(timer)
    this.ttlTimers.clear()
    this.resourceIndex.clear()
    this.index = 2n
    for (const socket of this.sockets) socket.destroy()
    this.wakeAll()
  }

  /** The index goes backwards without losing data (a different server); blocked queries answer. */
  readonly rewindIndex = (to: bigint): void => {
    this.index = to
    for (const [key, value] of this.resourceIndex) if (value > to) this.resourceIndex.set(key, to)
    this.wakeAll()
  }

  /** `consul snapshot save`: the state at this instant. */
  readonly snapshot = (): StandInSnapshot => ({
    index: this.index,
    resourceIndex: new Map(this.resourceIndex),
    services: new Map(this.services),
    checks: new Map([...this.checks].map(([id, check]) => [id, { ...check }])),
    kv: new Map(this.kv)
  })

  /**
   * `consul snapshot restore`: the state (and so every index) goes back to the snapshot's, and
   * the old state store is abandoned, which answers every blocked query at once.
   */
  readonly restore = (snapshot: StandInSnapshot): void => {
    this.index = snapshot.index
    this.resourceIndex.clear()
    for (const [key, value] of snapshot.resourceIndex) this.resourceIndex.set(key, value)
    this.services.clear()
    for (const [key, value] of snapshot.services) this.services.set(key, value)
    this.checks.clear()
    for (const [key, value] of snapshot.checks) this.checks.set(key, { ...value })
    this.kv.clear()
    for (const [key, value] of snapshot.kv) this.kv.set(key, value)
    this.wakeAll()
  }

  /** Blocking queries parked right now (a watch that is not spinning sits here). */
  readonly blockedQueries = (): number => this.waiters.size

  // -------------------------------------------------------------------------------------------
  // Test helpers (what a real cluster's other nodes or operators would do)
  // -------------------------------------------------------------------------------------------

  readonly setCheckStatus = (checkId: string, status: CheckStatus): void => {
    const check = this.checks.get(checkId)
    if (!check) throw new Error(`no check ${checkId}`)
    check.Status = status
    this.touch(`service:${check.ServiceName}`)
  }

  readonly registeredServices = (): ReadonlyArray<StandInService> => [...this.services.values()]
  readonly registeredChecks = (): ReadonlyArray<StandInCheck> => [...this.checks.values()]
  readonly count = (request: string): number => this.requests.filter((r) => r === request).length

  // -------------------------------------------------------------------------------------------
  // Server
  // -------------------------------------------------------------------------------------------

  private newServer(): Http.Server {
    const handler = (req: Http.IncomingMessage, res: Http.ServerResponse) => void this.handle(req, res)
    const server: Http.Server = this.tls
      ? Https.createServer({ cert: this.tls.certPem, key: this.tls.keyPem }, handler)
      : Http.createServer(handler)
    server.on(this.tls ? "secureConnection" : "connection", (socket) => {
      this.sockets.add(socket)
      socket.on("close", () => this.sockets.delete(socket))
    })
    return server
  }

  private listen(port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject)
      this.server.listen(port, "127.0.0.1", () => {
        this.server.off("error", reject)
        this.port = (this.server.address() as AddressInfo).port
        resolve()
      })
    })
  }

  private closeServer(): Promise<void> {
    return new Promise((resolve) => {
      for (const socket of this.sockets) socket.destroy()
      this.wakeAll()
      if (!this.server.listening) return resolve()
      this.server.close(() => resolve())
    })
  }

  readonly close = async (): Promise<void> => {
    for (const timer of this.ttlTimers.values()) clearTimeout(timer)
    await this.closeServer()
  }

  private bump(): bigint {
    this.index += 1n
    return this.index
  }

  /** A write to a resource: a new index for it, and its blocked readers wake. */
  private touch(...resources: ReadonlyArray<string>): void {
    const next = this.bump()
    for (const resource of resources) this.resourceIndex.set(resource, next)
    for (const waiter of [...this.waiters]) if (resources.includes(waiter.resource)) waiter.wake("change")
  }

  private wakeAll(): void {
    for (const waiter of [...this.waiters]) waiter.wake("abandon")
  }

  private indexOf(resource: string): bigint {
    return this.resourceIndex.get(resource) ?? (this.index > 1n ? 1n : this.index)
  }

  private async handle(req: Http.IncomingMessage, res: Http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://standin")
    const method = req.method ?? "GET"
    this.requests.push(`${method} ${url.pathname}`)
    const token = req.headers["x-consul-token"]
    if (typeof token === "string") this.tokens.add(token)
    const body = await readBody(req)
    if (this.delayMillis > 0) await new Promise((r) => setTimeout(r, this.delayMillis))
    if (this.failStatus !== undefined) return send(res, this.failStatus, "stand-in: injected fault\n")
    try {
      await this.route(method, url, body, req, res)
    } catch (error) {
      send(res, 400, `${error instanceof Error ? error.message : String(error)}\n`)
    }
  }

  /**
   * Without `index` (or 0): answers now. Otherwise blocks while the resource's index is at or
   * below the asked one, until it rises past it, `wait` ends, or the state is abandoned.
   */
  private async blocking(
    resource: string,
    url: URL,
    req: Http.IncomingMessage,
    res: Http.ServerResponse,
    answer: () => { status: number; body: unknown }
  ): Promise<void> {
    const asked = url.searchParams.get("index")
    const askedIndex = asked !== null && /^\d+$/.test(asked) ? BigInt(asked) : 0n
    if (askedIndex > 0n && this.indexOf(resource) <= askedIndex) {
      const wait = Math.min(parseGoDuration(url.searchParams.get("wait") ?? "5m") ?? 300_000, 600_000)
      await new Promise<void>((resolve) => {
        const waiter: Waiter = {
          resource,
          // A write wakes the query to look again; it answers only if the index passed the asked one.
          wake: (reason) => {
            if (reason === "abandon" || this.indexOf(resource) > askedIndex) done()
          }
        }
        const timer = setTimeout(() => done(), wait + Math.random() * (wait / 16))
        const done = () => {
          clearTimeout(timer)
          this.waiters.delete(waiter)
          resolve()
        }
        this.waiters.add(waiter)
        req.socket.once("close", done)
      })
      if (res.destroyed || req.socket.destroyed) return
    }
    const { status, body } = answer()
    res.setHeader("X-Consul-Index", this.indexOf(resource).toString())
    res.setHeader("X-Consul-KnownLeader", "true")
    res.setHeader("X-Consul-LastContact", "0")
    send(res, status, body)
  }

  private async route(method: string, url: URL, body: string, req: Http.IncomingMessage, res: Http.ServerResponse) {
    const path = url.pathname
    let m: RegExpMatchArray | null
    if (method === "GET" && path === "/v1/status/leader") return send(res, 200, "127.0.0.1:8300")
    if (method === "GET" && path === "/v1/catalog/services") {
      return this.blocking("catalog", url, req, res, () => {
        const out: Record<string, Array<string>> = {}
        for (const service of this.services.values()) {
          out[service.Service] = [...new Set([...(out[service.Service] ?? []), ...service.Tags])]
        }
        return { status: 200, body: out }
      })
    }
    if (method === "GET" && (m = path.match(/^\/v1\/health\/service\/([^/]+)$/))) {
      const name = decodeURIComponent(m[1]!)
      const passingOnly = url.searchParams.has("passing")
      return this.blocking(`service:${name}`, url, req, res, () => ({
        status: 200,
        body: [...this.services.values()]
          .filter((s) => s.Service === name)
          .map((service) => ({
            Node: NODE,
            Service: service,
            Checks: [
              {
                Node: NODE.Node,
                CheckID: "serfHealth",
                Name: "Serf Health Status",
                Status: "passing",
                ServiceID: "",
                ServiceName: ""
              },
              ...[...this.checks.values()].filter((c) => c.ServiceID === service.ID).map((
                { definition: _, ...check }
              ) => ({ Node: NODE.Node, ...check }))
            ]
          }))
          .filter((entry) => !passingOnly || entry.Checks.every((c) => c.Status === "passing"))
      }))
    }
    if (method === "GET" && path === "/v1/agent/services") {
      return send(res, 200, Object.fromEntries([...this.services].map(([id, s]) => [id, { ...s, Datacenter: "dc1" }])))
    }
    if (method === "GET" && path === "/v1/agent/checks") {
      return send(
        res,
        200,
        Object.fromEntries([...this.checks].map(([id, { definition: _, ...c }]) => [id, { Node: NODE.Node, ...c }]))
      )
    }
    if (method === "PUT" && path === "/v1/agent/service/register") return this.register(JSON.parse(body), res)
    if (method === "PUT" && (m = path.match(/^\/v1\/agent\/service\/deregister\/([^/]+)$/))) {
      const id = decodeURIComponent(m[1]!)
      const service = this.services.get(id)
      if (!service) {
        return send(
          res,
          404,
          `Unknown service ID "${id}". Ensure that the service ID is passed, not the service name.\n`
        )
      }
      this.services.delete(id)
      for (const [checkId, check] of this.checks) if (check.ServiceID === id) this.dropCheck(checkId)
      this.touch("catalog", `service:${service.Service}`)
      return send(res, 200, "")
    }
    if (method === "PUT" && (m = path.match(/^\/v1\/agent\/check\/(pass|warn|fail|update)\/(.+)$/))) {
      const check = this.checks.get(decodeURIComponent(m[2]!))
      if (!check) return send(res, 404, `Unknown check ID "${decodeURIComponent(m[2]!)}"\n`)
      const statusOf = { pass: "passing", warn: "warning", fail: "critical" } as const
      const parsed = m[1] === "update" && body !== ""
        ? (JSON.parse(body) as { Status?: CheckStatus; Output?: string })
        : {}
      const status: CheckStatus = m[1] === "update"
        ? parsed.Status ?? "passing"
        : statusOf[m[1] as "pass" | "warn" | "fail"]
      this.updateTtl(check, status, url.searchParams.get("note") ?? parsed.Output ?? "")
      return send(res, 200, "")
    }
    if ((m = path.match(/^\/v1\/kv\/(.+)$/))) {
      const key = decodeURIComponent(m[1]!)
      if (method === "PUT") {
        const existing = this.kv.get(key)
        const index = this.bump()
        this.kv.set(key, { value: Buffer.from(body), createIndex: existing?.createIndex ?? index, modifyIndex: index })
        this.resourceIndex.set(`kv:${key}`, index)
        for (const waiter of [...this.waiters]) if (waiter.resource === `kv:${key}`) waiter.wake("change")
        return send(res, 200, true)
      }
      if (method === "DELETE") {
        this.kv.delete(key)
        this.touch(`kv:${key}`)
        return send(res, 200, true)
      }
      return this.blocking(`kv:${key}`, url, req, res, () => {
        const entry = this.kv.get(key)
        if (!entry) return { status: 404, body: "" }
        return {
          status: 200,
          body: [{
            Key: key,
            Flags: 0,
            LockIndex: 0,
            CreateIndex: Number(entry.createIndex),
            ModifyIndex: Number(entry.modifyIndex),
            Value: entry.value.toString("base64")
          }]
        }
      })
    }
    send(res, 404, `stand-in: no route for ${method} ${path}\n`)
  }

  private register(definition: Record<string, unknown>, res: Http.ServerResponse): void {
    const name = definition["Name"]
    if (typeof name !== "string" || name === "") return send(res, 400, "Missing service name\n")
    const id = typeof definition["ID"] === "string" && definition["ID"] !== "" ? (definition["ID"] as string) : name
    if (this.refusedIds.has(id)) return send(res, 403, "Permission denied: token lacks 'service:write' permission\n")
    const previous = this.services.get(id)
    const weights = definition["Weights"] as { Passing?: number; Warning?: number } | undefined
    const service: StandInService = {
      ID: id,
      Service: name,
      Tags: Array.isArray(definition["Tags"]) ? (definition["Tags"] as Array<string>) : [],
      Address: typeof definition["Address"] === "string" ? (definition["Address"] as string) : "",
      Port: typeof definition["Port"] === "number" ? (definition["Port"] as number) : 0,
      Meta: (definition["Meta"] as Record<string, string> | undefined) ?? {},
      Weights: { Passing: weights?.Passing ?? 1, Warning: weights?.Warning ?? 1 }
    }
    this.services.set(id, service)
    const definitions = [
      ...(definition["Check"] ? [definition["Check"] as Record<string, unknown>] : []),
      ...((definition["Checks"] as Array<Record<string, unknown>> | undefined) ?? [])
    ]
    definitions.forEach((check, i) => {
      const checkId = typeof check["CheckID"] === "string"
        ? (check["CheckID"] as string)
        : definitions.length === 1
        ? `service:${id}`
        : `service:${id}:${i + 1}`
      const type = check["TTL"]
        ? "ttl"
        : check["HTTP"]
        ? "http"
        : check["TCP"]
        ? "tcp"
        : check["GRPC"]
        ? "grpc"
        : "unknown"
      const existing = this.checks.get(checkId)
      const status = (check["Status"] as CheckStatus | undefined) ?? existing?.Status ?? "critical"
      const entry: StandInCheck = {
        CheckID: checkId,
        Name: (check["Name"] as string | undefined) ?? `Service '${name}' check`,
        Status: status,
        Output: "",
        ServiceID: id,
        ServiceName: name,
        Type: type,
        ...(typeof check["TTL"] === "string" ? { TTL: check["TTL"] as string } : {}),
        definition: check
      }
      this.checks.set(checkId, entry)
      if (entry.TTL) this.armTtl(entry)
    })
    this.touch(
      "catalog",
      `service:${name}`,
      ...(previous && previous.Service !== name ? [`service:${previous.Service}`] : [])
    )
    send(res, 200, "")
  }

  private updateTtl(check: StandInCheck, status: CheckStatus, output: string) {
    const changed = check.Status !== status || check.Output !== output
    check.Status = status
    check.Output = output
    if (check.TTL) this.armTtl(check)
    if (changed) this.touch(`service:${check.ServiceName}`)
  }

  /** A TTL check not updated within its TTL turns critical, as on a real agent. */
  private armTtl(check: StandInCheck) {
    const ttl = parseGoDuration(check.TTL!) ?? 30_000
    clearTimeout(this.ttlTimers.get(check.CheckID))
    const timer = setTimeout(() => {
      if (this.checks.get(check.CheckID) !== check) return
      check.Status = "critical"
      check.Output = "TTL expired"
      this.touch(`service:${check.ServiceName}`)
    }, ttl)
    timer.unref()
    this.ttlTimers.set(check.CheckID, timer)
  }

  private dropCheck(checkId: string) {
    clearTimeout(this.ttlTimers.get(checkId))
    this.ttlTimers.delete(checkId)
    this.checks.delete(checkId)
  }
}

const readBody = (req: Http.IncomingMessage): Promise<string> =>
  new Promise((resolve) => {
    const chunks: Array<Buffer> = []
    req.on("data", (chunk: Buffer) => chunks.push(chunk))
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")))
    req.on("error", () => resolve(""))
  })

const send = (res: Http.ServerResponse, status: number, body: unknown) => {
  if (res.headersSent || res.destroyed) return
  const text = typeof body === "string" ? body : JSON.stringify(body)
  res.statusCode = status
  res.setHeader("Content-Type", typeof body === "string" ? "text/plain; charset=utf-8" : "application/json")
  res.end(text)
}
