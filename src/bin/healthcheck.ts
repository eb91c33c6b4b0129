/**
 * The container's HEALTHCHECK: the distroless image has no shell or curl, so Node itself asks the
 * admin server's /healthz. Usage: node dist/src/bin/healthcheck.js [URL]
 */
const url = process.argv[2] ?? "http://127.0.0.1:15014/healthz"

fetch(url, { signal: AbortSignal.timeout(2_000) })
  .then((response) => {
    process.exitCode = response.status === 200 ? 0 : 1
  })
  .catch((error: unknown) => {
    process.stderr.write(`healthcheck: ${url}: ${error instanceof Error ? error.message : String(error)}\n`)
    process.exitCode = 1
  })
