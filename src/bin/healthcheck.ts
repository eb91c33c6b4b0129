/**
 * The container's HEALTHCHECK: the distroless image has no shell or curl, so Node itself asks the
 * admin server's /healthz. Usage: node dist/bin/healthcheck.mjs [URL]
 *
 * The image's HEALTHCHECK names http://127.0.0.1:15014/healthz whatever the mounted config says, and
 * with `controller.admin.tls: true` that port speaks only TLS: a plain request there is closed
 * without an answer. So an http URL that gets no HTTP answer at all (but a connection) is asked once
 * more over https. That cannot report a dead server healthy: only a 200 from /healthz counts.
 *
 * Over https the server's certificate is not verified: it names the controller's SPIFFE ID, not a
 * host, and this probe sends no credential and reads nothing but the status of an open endpoint
 * (as Kubernetes' HTTPS probes do).
 */
import * as Http from "node:http"
import * as Https from "node:https"

const url = new URL(process.argv[2] ?? "http://127.0.0.1:15014/healthz")
// Docker's --timeout is 3 s: two attempts fit in it.
const TIMEOUT_MS = 1_400

class NoAnswer extends Error {
  constructor(readonly target: URL, readonly code: string | undefined, message: string) {
    super(`${target.href}: ${message}`)
  }
}

const status = (target: URL): Promise<number> =>
  new Promise((resolve, reject) => {
    const options = { timeout: TIMEOUT_MS, ...(target.protocol === "https:" ? { rejectUnauthorized: false } : {}) }
    const request = (target.protocol === "https:" ? Https : Http).get(target, options, (response) => {
      response.resume()
      resolve(response.statusCode ?? 0)
    })
    request.on("timeout", () => request.destroy(new Error(`no answer within ${TIMEOUT_MS} ms`)))
    request.on("error", (error: NodeJS.ErrnoException) => reject(new NoAnswer(target, error.code, error.message)))
  })

const check = async (): Promise<number> => {
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

check()
  .then((code) => {
    if (code !== 200) process.stderr.write(`healthcheck: ${url.href}: status ${code}\n`)
    process.exitCode = code === 200 ? 0 : 1
  })
  .catch((error: unknown) => {
    process.stderr.write(`healthcheck: ${error instanceof Error ? error.message : String(error)}\n`)
    process.exitCode = 1
  })
