/** The words a person expects for the system errors the controller meets (files, sockets, names). */
const WORDS: Readonly<Record<string, string>> = {
  ENOENT: "no such file or directory",
  EACCES: "permission denied",
  EPERM: "permission denied",
  EISDIR: "is a directory, not a file",
  ENOTDIR: "a part of the path is not a directory",
  EEXIST: "already exists; refusing to overwrite it",
  ENOSPC: "no space left on the device",
  EROFS: "read-only file system",
  EADDRINUSE: "address already in use",
  EADDRNOTAVAIL: "address not available on this host",
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  ETIMEDOUT: "timed out",
  ENOTFOUND: "host name does not resolve",
  EAI_AGAIN: "host name does not resolve"
}

/** The errno code of an error, or of the error it wraps (platform errors keep Node's in `cause`). */
export const errnoCode = (error: unknown): string | undefined => {
  for (let current = error, depth = 0; current !== null && typeof current === "object" && depth < 4; depth++) {
    const code = (current as { code?: unknown }).code
    if (typeof code === "string") return code
    current = (current as { cause?: unknown }).cause
  }
  return undefined
}

/** "connection refused", "no such file or directory", …; else the error's own message. */
export const describeErrno = (error: unknown): string => {
  const code = errnoCode(error)
  const words = code === undefined ? undefined : WORDS[code]
  if (words !== undefined) return words
  const inner = (error as { cause?: unknown })?.cause ?? error
  return inner instanceof Error ? inner.message : String(inner)
}
