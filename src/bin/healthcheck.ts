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
 */
const DEFAULT = "http://127.0.0.1:15014/healthz"

const target = (text: string, where: string): string | undefined => {
  if (/^\d{1,5}$/.test(text) && Number(text) > 0 && Number(text) <= 65535) return `http://127.0.0.1:${text}/healthz`
  if (/^https?:\/\/./.test(text) && URL.canParse(text)) return text
  process.stderr.write(
    `healthcheck: ${where}: expected a URL (http://HOST:PORT/healthz) or a port, got ${JSON.stringify(text)}\n`
  )
  return undefined
}

const fromArgument = process.argv[2]
const fromEnv = process.env["MESH_HEALTHCHECK"]
const url = fromArgument !== undefined
  ? target(fromArgument, "argument")
  : fromEnv !== undefined && fromEnv !== ""
  ? target(fromEnv, "MESH_HEALTHCHECK")
  : DEFAULT

if (url === undefined) {
  process.exitCode = 1
} else {
  fetch(url, { signal: AbortSignal.timeout(2_000) })
    .then((response) => {
      if (response.status !== 200) process.stderr.write(`healthcheck: ${url}: ${response.status}\n`)
      process.exitCode = response.status === 200 ? 0 : 1
    })
    .catch((error: unknown) => {
      process.stderr.write(`healthcheck: ${url}: ${error instanceof Error ? error.message : String(error)}\n`)
      process.exitCode = 1
    })
}
