// The status page: Preact components (htm templates, no build step) that poll the small JSON
// endpoints of /ui/api. Only the section on screen is polled, and nothing while the tab is hidden,
// so a page left open in the background costs the controller nothing.
import { html, render, useEffect, useState } from "/ui/vendor/preact-htm.js"

const POLL_MS = 2000

// ------------------------------------------------------------------------------------------------
// data
// ------------------------------------------------------------------------------------------------

const NOTHING_YET = { data: null, error: null, at: null, notReady: null, needsToken: false }

// When the admin server is not on loopback, what the page reads needs the admin token (the same
// rule as /status). It is kept for this tab only and sent as a bearer token, never in a URL.
const TOKEN_KEY = "mesh-controller.adminToken"
const apiHeaders = () => {
  const token = sessionStorage.getItem(TOKEN_KEY)
  return token ? { accept: "application/json", authorization: `Bearer ${token}` } : { accept: "application/json" }
}

/**
 * Polls `url` while the document is visible; `url` null pauses. What it returns always belongs to
 * the current `url` (a section never renders another section's answer while its own loads).
 */
function usePoll(url, epoch, ms = POLL_MS) {
  const [polled, setState] = useState({ url, ...NOTHING_YET })
  const state = polled.url === url ? polled : NOTHING_YET
  useEffect(() => {
    if (url === null) return undefined
    let stopped = false
    let timer
    let controller
    const tick = async () => {
      clearTimeout(timer)
      if (stopped || document.hidden) return
      controller = new AbortController()
      try {
        const response = await fetch(url, { signal: controller.signal, headers: apiHeaders() })
        const body = await response.json()
        if (stopped) return
        if (response.ok) setState({ url, data: body, error: null, at: Date.now(), notReady: null, needsToken: false })
        else {
          const needsToken = response.status === 401 || response.status === 403
          setState((s) => ({
            ...(s.url === url ? s : NOTHING_YET),
            url,
            error: body.message ?? body.error ?? `HTTP ${response.status}`,
            notReady: response.status === 503 ? body : null,
            needsToken,
            at: Date.now()
          }))
          // Asking again without a (new) token would only be refused again.
          if (needsToken) return
        }
      } catch (error) {
        if (stopped || error.name === "AbortError") return
        setState((s) => ({ ...(s.url === url ? s : NOTHING_YET), url, error: `cannot reach the controller (${error.message})` }))
      }
      if (!stopped) timer = setTimeout(tick, ms)
    }
    const onVisibility = () => {
      if (!document.hidden) void tick()
    }
    document.addEventListener("visibilitychange", onVisibility)
    void tick()
    return () => {
      stopped = true
      clearTimeout(timer)
      controller?.abort()
      document.removeEventListener("visibilitychange", onVisibility)
    }
  }, [url, ms, epoch])
  return state
}

function useHash(fallback) {
  const read = () => (location.hash.replace(/^#/, "") || fallback)
  const [hash, setHash] = useState(read)
  useEffect(() => {
    const onChange = () => setHash(read())
    addEventListener("hashchange", onChange)
    return () => removeEventListener("hashchange", onChange)
  }, [])
  return hash
}

// ------------------------------------------------------------------------------------------------
// formatting
// ------------------------------------------------------------------------------------------------

const duration = (ms) => {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—"
  const s = Math.max(0, Math.round(ms / 1000))
  if (s < 60) return `${s}s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m}m ${s % 60}s`
  const h = Math.floor(m / 60)
  if (h < 48) return `${h}h ${m % 60}m`
  return `${Math.floor(h / 24)}d ${h % 24}h`
}

const clock = (iso) => {
  if (!iso) return "—"
  const d = new Date(iso)
  const sameDay = d.toDateString() === new Date().toDateString()
  return sameDay ? d.toLocaleTimeString() : d.toLocaleString()
}

const percent = (fraction) => (fraction === null ? "—" : `${(Math.floor(fraction * 1000) / 10).toFixed(1)}%`)

const relative = (iso, now) => {
  const delta = Date.parse(iso) - now
  return delta >= 0 ? `in ${duration(delta)}` : `${duration(-delta)} ago`
}

const TONE_WORDS = { ok: "ok", "renew-overdue": "renewal overdue", expiring: "expires soon", expired: "expired" }

// ------------------------------------------------------------------------------------------------
// shell
// ------------------------------------------------------------------------------------------------

const SECTIONS = [
  { id: "services", title: "Services", api: "/ui/api/services", view: (d) => html`<${Services} data=${d} />` },
  { id: "dataplanes", title: "Data planes", api: "/ui/api/dataplanes", view: (d) => html`<${DataPlanes} data=${d} />` },
  { id: "certificates", title: "Certificates", api: "/ui/api/certificates", view: (d) => html`<${Certificates} data=${d} />` },
  { id: "policy", title: "Policy", api: "/ui/api/policy", view: (d) => html`<${PolicyView} data=${d} />` }
]

function App() {
  const hash = useHash("services")
  const section = SECTIONS.find((s) => s.id === hash) ?? SECTIONS[0]
  const [epoch, setEpoch] = useState(0)
  const overview = usePoll("/ui/api/overview", epoch, 5000)
  const current = usePoll(section.api, epoch)
  const o = overview.data
  const live = current.error === null && current.at !== null
  return html`
    <header class="top">
      <div class="brand">
        <strong>${o?.mesh?.name ?? "mesh"}</strong>
        <span class="muted">${o ? `mesh-controller ${o.version}` : ""}</span>
      </div>
      <div class=${`phase phase-${o?.phase ?? "unknown"}`} data-testid="phase">
        ${o?.phase ?? "…"}${o && o.waiting.length > 0 ? `: waiting for ${o.waiting.join(", ")}` : ""}
      </div>
      <div class=${`live ${live ? "on" : "off"}`} data-testid="live" title="The page polls the controller every 2 s while it is visible">
        ${live ? `live · ${new Date(current.at).toLocaleTimeString()}` : current.error ?? "connecting…"}
      </div>
    </header>
    <nav class="tabs">
      ${SECTIONS.map((s) => html`<a href=${`#${s.id}`} class=${s === section ? "active" : ""} data-tab=${s.id}>${s.title}</a>`)}
    </nav>
    <main id=${section.id} data-section=${section.id}>
      ${current.needsToken
        ? html`<${TokenPrompt} message=${current.error} onToken=${() => setEpoch(epoch + 1)} />`
        : current.notReady
        ? html`<p class="notice">The controller is ${current.notReady.phase}: waiting for ${current.notReady.waiting.join(", ")}.</p>`
        : current.data
        ? section.view(current.data)
        : html`<p class="muted">Loading…</p>`}
    </main>`
}

function TokenPrompt({ message, onToken }) {
  const [token, setToken] = useState("")
  const submit = (event) => {
    event.preventDefault()
    sessionStorage.setItem(TOKEN_KEY, token.trim())
    onToken()
  }
  return html`
    <section class="card">
      <header><h2>Admin token needed</h2></header>
      <p class="meta">${`${message} — `}this admin server is not on loopback, so reading the mesh takes the admin token
        (the file named in <code>/status</code> as <code>tokenFile</code>). It is kept for this tab only.</p>
      <form class="check" onSubmit=${submit}>
        <label class="wide">Token <input type="password" name="token" autocomplete="off" value=${token}
          onInput=${(e) => setToken(e.currentTarget.value)} /></label>
        <button type="submit">Use token</button>
      </form>
    </section>`
}

// ------------------------------------------------------------------------------------------------
// services
// ------------------------------------------------------------------------------------------------

function Services({ data }) {
  const now = Date.parse(data.now)
  if (data.services.length === 0) return html`<p class="muted">No services: add some to the config, the API or Consul.</p>`
  return html`<div class="cards">${data.services.map((s) => html`<${ServiceCard} key=${s.name} service=${s} now=${now} />`)}</div>`
}

function ServiceCard({ service, now }) {
  const state = service.panic ? "panic" : service.available ? "available" : "unavailable"
  return html`
    <section class=${`card service ${state}`} data-service=${service.name}>
      <header>
        <h2>${service.name}</h2>
        <span class=${`pill ${state}`}>${service.panic ? `panic (fail ${service.failMode})` : state}</span>
      </header>
      <p class="meta">
        ${`${service.protocol} :${service.port} · from ${service.source} · ${service.check ?? "not health-checked"} · `}
        <span class="healthy-text">${service.counts.healthy} healthy</span>${", "}
        <span class="unhealthy-text">${service.counts.unhealthy} unhealthy</span>${`, ${service.counts.unknown} unknown`}
      </p>
      ${service.endpoints.length === 0
        ? html`<p class="muted">No endpoints.</p>`
        : html`<ul class="endpoints">${service.endpoints.map((e) => html`<${EndpointRow} key=${e.key} endpoint=${e} now=${now} />`)}</ul>`}
    </section>`
}

function EndpointRow({ endpoint: e, now }) {
  const down = e.health === "unhealthy" && e.since ? now - Date.parse(e.since) : null
  const lastDown = [...e.transitions].reverse().find((t) => t.from === "unhealthy")
  return html`
    <li class=${`endpoint ${e.health}`} data-endpoint=${e.key} data-health=${e.health}>
      <div class="ep-head">
        <span class=${`dot ${e.health}`} aria-hidden="true"></span>
        <code class="ep-key">${e.key}</code>
        <span class=${`pill ${e.health}`}>${e.health}</span>
        <span class="muted">weight ${e.weight} · ${e.source}</span>
      </div>
      ${e.checked
        ? html`
          <${Timeline} endpoint=${e} now=${now} />
          <div class="ep-facts">
            <span>${down !== null ? html`<b class="unhealthy-text">down for ${duration(down)}</b>` : `${e.health} since ${clock(e.since)}`}</span>
            <span>availability <b data-testid="availability">${percent(e.availability)}</b> since ${clock(e.trackedSince)}</span>
            ${e.unhealthyMs > 0 ? html`<span>down ${duration(e.unhealthyMs)} in total</span>` : null}
            ${lastDown && down === null ? html`<span>last outage ended ${clock(lastDown.at)}</span>` : null}
            ${e.lastError ? html`<span class="unhealthy-text">last probe: ${e.lastError}</span>` : null}
          </div>
          ${e.transitions.length > 0
            ? html`<ol class="flips" data-testid="flips">
                ${e.transitions.slice(-5).reverse().map((t) =>
                  html`<li key=${t.at}><time datetime=${t.at}>${clock(t.at)}</time> <span class=${`${t.from}-text`}>${t.from}</span> → <span class=${`${t.to}-text`}>${t.to}</span></li>`)}
              </ol>`
            : null}`
        : html`<div class="ep-facts muted">No health check: routed as ${e.health}.</div>`}
    </li>`
}

const STATE_COLOR = { healthy: "var(--ok)", unhealthy: "var(--bad)", unknown: "var(--unknown)" }
const WINDOW_MS = 15 * 60_000

/**
 * The endpoint's recent past: a band coloured by its health over time (from its transitions), and
 * under it one tick per probe in the history (red when it failed, height by latency).
 */
function Timeline({ endpoint: e, now }) {
  const tracked = Date.parse(e.trackedSince)
  const oldestProbe = e.history.length > 0 ? Date.parse(e.history[0].at) : now
  const start = Math.min(Math.max(tracked, now - WINDOW_MS), oldestProbe)
  const span = Math.max(1, now - start)
  const x = (t) => Math.max(0, Math.min(300, ((t - start) / span) * 300))
  const segments = []
  let state = "unknown"
  let from = start
  for (const t of e.transitions) {
    const at = Date.parse(t.at)
    if (at <= start) {
      state = t.to
      continue
    }
    segments.push({ state, from, to: at })
    state = t.to
    from = at
  }
  segments.push({ state, from, to: now })
  const maxLatency = Math.max(1, ...e.history.map((h) => h.latencyMs))
  return html`
    <svg class="timeline" viewBox="0 0 300 34" preserveAspectRatio="none" role="img"
      aria-label=${`health of ${e.key} over the last ${duration(span)}`}>
      ${segments.map((s) => html`<rect x=${x(s.from)} y="0" width=${Math.max(0.5, x(s.to) - x(s.from))} height="12"
        fill=${STATE_COLOR[s.state]} class=${`seg ${s.state}`}><title>${s.state} ${clock(new Date(s.from).toISOString())} – ${duration(s.to - s.from)}</title></rect>`)}
      ${e.history.map((h) => {
        const height = 4 + 16 * Math.min(1, h.latencyMs / maxLatency)
        return html`<rect x=${x(Date.parse(h.at)) - 1} y=${34 - height} width="2" height=${height}
          fill=${h.ok ? "var(--ok)" : "var(--bad)"} class=${h.ok ? "probe ok" : "probe failed"}>
          <title>${clock(h.at)} ${h.ok ? `ok in ${h.latencyMs} ms` : `failed: ${h.error ?? ""}`}</title></rect>`
      })}
    </svg>
    <div class="axis muted"><span>${duration(span)} ago</span><span>now</span></div>`
}

// ------------------------------------------------------------------------------------------------
// data planes
// ------------------------------------------------------------------------------------------------

function DataPlanes({ data }) {
  const now = Date.parse(data.now)
  return html`
    <p class="meta">Snapshot version <code>${data.snapshotVersion}</code> · ${data.clients.length} connected stream${data.clients.length === 1 ? "" : "s"}</p>
    ${data.clients.length === 0
      ? html`<p class="muted">No data plane is connected.</p>`
      : html`<div class="cards">${data.clients.map((c) => html`<${ClientCard} key=${c.stream} client=${c} now=${now} />`)}</div>`}`
}

function ClientCard({ client: c, now }) {
  return html`
    <section class=${`card client ${c.nacked ? "nacked" : ""}`} data-node=${c.nodeId ?? ""}>
      <header>
        <h2><code>${c.nodeId ?? "(no node yet)"}</code></h2>
        <span class="pill">${c.protocol}</span>
        <span class="pill">${c.kind}</span>
        ${c.nacked ? html`<span class="pill unhealthy">NACK</span>` : null}
      </header>
      <p class="meta">
        service <b>${c.service ?? "—"}</b>${` · connected ${clock(c.connectedAt)} (${duration(now - Date.parse(c.connectedAt))}) · ${c.peer}`}${c.identity ? html` · <code>${c.identity}</code>` : null}${c.userAgent ? ` · ${c.userAgent}` : ""}
      </p>
      <div class="scroll">
        <table class="types">
          <thead><tr><th>Type</th><th>ACKed version</th><th>Pushes</th><th>NACKs</th><th>Last NACK</th></tr></thead>
          <tbody>
            ${c.types.map((t) => html`
              <tr key=${t.type} data-type=${t.type} class=${t.lastNack ? "has-nack" : ""}>
                <td>${t.type}<div class="muted small">${t.subscribed} subscribed</div></td>
                <td><code>${t.acknowledgedVersion ?? "—"}</code>${t.waitingForAck ? html`<div class="muted small">waiting for ACK</div>` : null}</td>
                <td>${t.pushes}</td>
                <td>${t.nacks}</td>
                <td class="nack-reason">${t.lastNack
                  ? html`<span class="unhealthy-text" data-testid="nack-reason">${t.lastNack.message}</span>
                      <div class="muted small">version ${t.lastNack.version} · ${clock(t.lastNack.at)}</div>`
                  : "—"}</td>
              </tr>`)}
          </tbody>
        </table>
      </div>
    </section>`
}

// ------------------------------------------------------------------------------------------------
// certificates
// ------------------------------------------------------------------------------------------------

function Certificates({ data }) {
  const now = Date.parse(data.now)
  return html`
    <p class="meta">
      Trust domain <code>${data.trustDomain}</code> · CA ${data.ca} · ${data.renewals} issued or renewed · <span class=${data.failures > 0 ? "unhealthy-text" : ""}>${data.failures} failures</span>
      ${data.lastError ? html` · last error: <span class="unhealthy-text">${data.lastError}</span>` : null}
    </p>
    <section class="card">
      <header><h2>Roots</h2></header>
      <ul class="certs">
        ${data.roots.map((r) => html`
          <li key=${r.fingerprint} class=${`cert tone-${r.tone}`} data-tone=${r.tone}>
            <div><b>${r.subject}</b> <span class="pill">${r.state}</span> <span class=${`pill tone-${r.tone}`}>${TONE_WORDS[r.tone]}</span></div>
            <div class="fingerprint"><span class="muted">SHA-256</span> <code>${r.fingerprint}</code></div>
            <div class="muted">expires ${clock(r.notAfter)} (${relative(r.notAfter, now)}) · serial ${r.serial}</div>
          </li>`)}
      </ul>
    </section>
    <section class="card">
      <header><h2>Workload identities</h2></header>
      <ul class="certs">
        ${data.identities.map((i) => html`
          <li key=${i.spiffeId} class=${`cert tone-${i.tone}`} data-identity=${i.spiffeId} data-tone=${i.tone}>
            <div><code>${i.spiffeId}</code> <span class=${`pill tone-${i.tone}`}>${TONE_WORDS[i.tone]}</span></div>
            <div class="muted">expires ${clock(i.notAfter)} (${relative(i.notAfter, now)}) · renews ${clock(i.renewAt)} (${relative(i.renewAt, now)})</div>
          </li>`)}
      </ul>
    </section>`
}

// ------------------------------------------------------------------------------------------------
// policy
// ------------------------------------------------------------------------------------------------

function PolicyView({ data }) {
  const reload = data.config.lastReload
  return html`
    <p class="meta">
      default <b>${data.defaultAction}</b> · mTLS ${data.mtls} · ${data.ruleCount} authorization rule${data.ruleCount === 1 ? "" : "s"}${" · "}compiled ${clock(data.compiledAt)} from <code>${data.configHash.slice(0, 12)}</code>
    </p>
    <section class="card">
      <header><h2>Last reload</h2></header>
      ${reload === null
        ? html`<p class="muted">Not reloaded since ${clock(data.config.loadedAt)} (${data.config.source}).</p>`
        : reload._tag === "Rejected"
        ? html`<div class="unhealthy-text" data-testid="reload">Rejected ${clock(reload.at)}; the config in force stays:
            <ul>${reload.errors.map((e) => html`<li><code>${e}</code></li>`)}</ul></div>`
        : html`<p data-testid="reload">${reload._tag === "Applied" ? "Applied" : "Unchanged"} ${clock(reload.at)} (${data.config.source}).</p>`}
      ${data.lastRejected
        ? html`<div class="unhealthy-text">Policies rejected ${clock(data.lastRejected.at)}:
            <ul>${data.lastRejected.issues.map((i) => html`<li><code>${i}</code></li>`)}</ul></div>`
        : null}
      ${data.warnings.length > 0
        ? html`<div class="warn-text">Warnings:<ul>${data.warnings.map((w) => html`<li>${w}</li>`)}</ul></div>`
        : html`<p class="muted">No warnings.</p>`}
    </section>
    <${CheckForm} services=${data.services} />
    <section class="card">
      <header><h2>Authorization rules</h2></header>
      ${data.targets.length === 0
        ? html`<p class="muted">No rules: every request gets the default (${data.defaultAction}).</p>`
        : html`<div class="scroll"><table class="rules">
            <thead><tr><th>Service</th><th>Rule</th><th>Action</th><th>From</th><th>When</th></tr></thead>
            <tbody>${data.targets.flatMap((t) => t.rules.map((r) => html`
              <tr key=${`${t.service} ${r.name}`} class=${r.action}>
                <td>${t.service}</td><td><code>${r.name}</code></td>
                <td><span class=${`pill ${r.action === "deny" ? "unhealthy" : "healthy"}`}>${r.action}</span></td>
                <td>${r.from === null ? "anyone" : r.from.map((p) => html`<div><code>${p}</code></div>`)}</td>
                <td>${conditions(r)}</td>
              </tr>`))}</tbody>
          </table></div>`}
      ${data.trafficPolicies.length > 0 ? html`<p class="meta">Traffic policies for ${data.trafficPolicies.join(", ")}</p>` : null}
    </section>`
}

const conditions = (r) => {
  const parts = []
  if (r.methods) parts.push(r.methods.join(" "))
  if (r.paths) parts.push(r.paths.join(" "))
  if (r.ports) parts.push(`port ${r.ports.join(", ")}`)
  if (r.headers) parts.push(r.headers.join("; "))
  return parts.length === 0 ? "always" : parts.join(" · ")
}

const METHODS = ["", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

/** Decides one request with the policy in force, as `policy check` does (a GET: nothing changes). */
function CheckForm({ services }) {
  const [form, setForm] = useState({ from: "", to: services[0] ?? "", method: "", path: "", port: "", headers: "" })
  const [result, setResult] = useState(null)
  const set = (field) => (event) => setForm({ ...form, [field]: event.currentTarget.value })
  const submit = async (event) => {
    event.preventDefault()
    const q = new URLSearchParams()
    for (const field of ["from", "to", "method", "path", "port"]) if (form[field].trim() !== "") q.set(field, form[field].trim())
    for (const line of form.headers.split("\n")) if (line.trim() !== "") q.append("header", line.trim())
    try {
      const response = await fetch(`/ui/api/policy/check?${q}`, { headers: apiHeaders() })
      const body = await response.json()
      setResult(response.ok ? { ok: true, ...body } : { ok: false, message: body.message ?? body.error })
    } catch (error) {
      setResult({ ok: false, message: `cannot reach the controller (${error.message})` })
    }
  }
  return html`
    <section class="card">
      <header><h2>Check a request</h2><span class="muted">same decision as <code>mesh-controller policy check</code></span></header>
      <form class="check" onSubmit=${submit} data-testid="check-form">
        <label>Caller <input name="from" required list="ui-services" placeholder="service or spiffe:// ID" value=${form.from} onInput=${set("from")} /></label>
        <label>Service <select name="to" value=${form.to} onChange=${set("to")}>${services.map((s) => html`<option value=${s}>${s}</option>`)}</select></label>
        <label>Method <select name="method" value=${form.method} onChange=${set("method")}>${METHODS.map((m) => html`<option value=${m}>${m === "" ? "(any)" : m}</option>`)}</select></label>
        <label>Path <input name="path" placeholder="/api/items" value=${form.path} onInput=${set("path")} /></label>
        <label>Port <input name="port" inputmode="numeric" placeholder="(none)" value=${form.port} onInput=${set("port")} /></label>
        <label class="wide">Headers <textarea name="headers" rows="1" placeholder="k=v, one per line" value=${form.headers} onInput=${set("headers")}></textarea></label>
        <datalist id="ui-services">${services.map((s) => html`<option value=${s} />`)}</datalist>
        <button type="submit">Decide</button>
      </form>
      ${result === null
        ? null
        : result.ok
        ? html`<div class=${`verdict ${result.allowed ? "allow" : "deny"}`} data-testid="verdict"
            data-allowed=${String(result.allowed)} data-rule=${result.rule ?? ""} data-reason=${result.reason}>
            <b>${result.allowed ? "ALLOW" : "DENY"}</b>${result.rule ? html` by rule <code>${result.rule}</code>` : null}
            <pre data-testid="verdict-text">${result.text}</pre>
          </div>`
        : html`<div class="verdict error" data-testid="verdict" data-error="true">${result.message}</div>`}
    </section>`
}

// Preact renders next to what a container holds: the "Loading…" placeholder goes first.
const root = document.getElementById("app")
root.textContent = ""
render(html`<${App} />`, root)
