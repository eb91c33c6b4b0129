import { type ChildProcess, spawn } from "node:child_process"
import { existsSync } from "node:fs"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { waitFor } from "./eventually.js"

export const MAIN = join(process.cwd(), "dist", "src", "main.js")

export const requireBuild = (): void => {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: run \`npm run build\` first (npm test does)`)
}

export interface Daemon {
  readonly child: ChildProcess
  readonly lines: Array<string>
  readonly stderr: Array<string>
  readonly adminUrl: string
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

/** Runs the built CLI to completion. */
export const runCli = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    requireBuild()
    const child = spawn(process.execPath, [MAIN, ...args], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    child.on("exit", (code) => resolve({ code, stdout, stderr }))
  })

const fetchText = async (url: string) => {
  const response = await fetch(url)
  return { status: response.status, text: await response.text() }
}

/**
 * Starts `mesh-controller run` as a child process (JSON logs), learns the admin address from its
 * log, and waits until /readyz answers 200.
 */
export const startDaemon = async (
  configPath: string,
  options: {
    readonly command?: string
    readonly args?: ReadonlyArray<string>
    readonly env?: Record<string, string>
    readonly cwd?: string
    /** Asks /readyz (default: fetch); an HTTPS admin server needs a client that trusts the mesh CA. */
    readonly readyz?: (url: string) => Promise<{ readonly status: number; readonly text: string }>
  } = {}
): Promise<Daemon> => {
  requireBuild()
  const child = spawn(
    options.command ?? process.execPath,
    [...(options.args ?? [MAIN]), "run", "--config", configPath],
    {
      env: { ...process.env, LOG_FORMAT: "json", ...options.env },
      cwd: options.cwd ?? process.cwd(),
      stdio: ["ignore", "pipe", "pipe"]
    }
  )
  const lines: Array<string> = []
  const stderr: Array<string> = []
  createInterface({ input: child.stdout! }).on("line", (line) => lines.push(line))
  createInterface({ input: child.stderr! }).on("line", (line) => stderr.push(line))
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => resolve({ code, signal }))
  )
  let finished = false
  void exited.then(() => (finished = true))
  const adminUrl = await waitFor(async () => {
    if (finished) throw new Error(`daemon exited early:\n${stderr.join("\n")}\n${lines.join("\n")}`)
    for (const line of lines) {
      const match = /admin: listening on (https?:\/\/[^"\s]+)/.exec(line)
      if (match) return match[1]!
    }
    throw new Error(`no admin address logged yet:\n${lines.join("\n")}\n${stderr.join("\n")}`)
  }, 30_000)
  await waitFor(async () => {
    if (finished) throw new Error(`daemon exited early:\n${stderr.join("\n")}`)
    const response = await (options.readyz ?? fetchText)(`${adminUrl}/readyz`)
    if (response.status !== 200) throw new Error(`readyz ${response.status}: ${response.text}`)
  }, 30_000)
  return { child, lines, stderr, adminUrl, exited }
}

export const jsonLogs = (
  lines: ReadonlyArray<string>
): Array<{ message: unknown; logLevel: string; annotations: Record<string, unknown> }> =>
  lines.flatMap((line) => {
    try {
      return [JSON.parse(line)]
    } catch {
      return []
    }
  })

/** Whether a process with this pid exists (signal 0 checks without signalling). */
export const processAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}
