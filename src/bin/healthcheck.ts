/**
 * The container's HEALTHCHECK: the distroless image has no shell or curl, so Node itself asks an
 * admin server's /healthz. One image runs the controller (admin 127.0.0.1:15014) and the agent
 * (admin 127.0.0.1:15021), so the target is chosen per container:
 *
 *   node dist/bin/healthcheck.mjs [URL | PORT]
 *
 * The argument wins; without one, MESH_HEALTHCHECK (a URL or a port) from the environment; else the
 * controller's http://127.0.0.1:15014/healthz. A port alone means http://127.0.0.1:PORT/healthz.
 * The environment is read here, in a program rather than a module, because `docker run` has no
 * way to change an image's exec-form HEALTHCHECK without a shell (its --health-cmd needs /bin/sh),
 * but it can set a variable: `-e MESH_HEALTHCHECK=15021`.
 *
 * With `controller.admin.tls: true` the controller's port speaks only TLS: a plain request there is
 * closed without an answer. So an http URL that gets no HTTP answer at all (but a connection) is
 * asked once more over https. That cannot report a dead server healthy: only a 200 from /healthz
 * counts. Over https the server's certificate is not verified: it names the controller's SPIFFE ID,
 * not a host, and this probe sends no credential and reads nothing but the status of an open
 * endpoint (as Kubernetes' HTTPS probes do).
 */
import * as Http from "node:http"
import * as Https from "node:https"

const DEFAULT = "http://127.0.0.1:15014/healthz"
// Docker's --timeout is 3 s: two attempts fit in it.
const TIMEOUT_MS = 1_400

const target = (text: string, where: string): URL | undefined => {
  if (/^\d{1,5}$/.test(text) && Number(text) > 0 && Number(text) <= 65535) {
    return new URL(`http://127.0.0.1:${text}/healthz`)
  }
  if (/^https?:\/\/./.test(text) && URL.canParse(text)) return new URL(text)
  process.stderr.write(
    `healthcheck: ${where}: expected a URL (http://HOST:PORT/healthz) or a port, got ${JSON.stringify(text)}\n`
  )
  return undefined
}

class NoAnswer extends Error {
  constructor(readonly target: URL, readonly code: string | undefined, message: string) {
    super(`${target.href}: ${message}`)
  }
}

const status = (url: URL): Promise<number> =>
  new Promise((resolve, reject) => {
    const options = { timeout: TIMEOUT_MS, ...(url.protocol === "https:" ? { rejectUnauthorized: false } : {}) }
    const request = (url.protocol === "https:" ? Https : Http).get(url, options, (response) => {
      response.resume()
      resolve(response.statusCode ?? 0)
    })
    request.on("timeout", () => request.destroy(new Error(`no answer within ${TIMEOUT_MS} ms`)))
    request.on("error", (error: NodeJS.ErrnoException) => reject(new NoAnswer(url, error.code, error.message)))
  })

const check = async (url: URL): Promise<number> => {
  try {
    return await status(url)
  } catch (error) {
    const refused = error instanceof NoAnswer && error.code === "ECONNREFUSED"
    if (url.protocol !== "http:" || refused) throw error
    const secure = new URL(url)
    secure.protocol = "https:"
    return await status(secure).catch((again: unknown) => {
      throw new Error(`${(error as Error).message}; then ${(again as Error).message}`)
    })
  }
}

const fromArgument = process.argv[2]
const fromEnv = process.env["MESH_HEALTHCHECK"]
const url = fromArgument !== undefined
  ? target(fromArgument, "argument")
  : fromEnv !== undefined && fromEnv !== ""
  ? target(fromEnv, "MESH_HEALTHCHECK")
  : new URL(DEFAULT)

if (url === undefined) {
  process.exitCode = 1
} else {
  check(url)
    .then((code) => {
      if (code !== 200) process.stderr.write(`healthcheck: ${url.href}: status ${code}\n`)
      process.exitCode = code === 200 ? 0 : 1
    })
    .catch((error: unknown) => {
      process.stderr.write(`healthcheck: ${error instanceof Error ? error.message : String(error)}\n`)
      process.exitCode = 1
    })
}
