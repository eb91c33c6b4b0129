import * as grpc from "@grpc/grpc-js"
import { type ChildProcess, spawn } from "node:child_process"
import { createServer } from "node:net"
import { createInterface } from "node:readline"
import { MAIN, requireBuild } from "./daemon.js"
import { waitFor } from "./eventually.js"

export interface AgentProcess {
  readonly child: ChildProcess
  readonly lines: Array<string>
  readonly adminUrl: string
  readonly exited: Promise<number | null>
}

/** A free loopback port (bound to 0, then released): for a controller that must come back on the same port. */
export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => resolve(typeof address === "object" && address !== null ? address.port : 0))
    })
  })

/** `mesh-controller agent …` as a child process; resolves once its admin port is logged. */
export const startAgent = async (args: ReadonlyArray<string>): Promise<AgentProcess> => {
  requireBuild()
  const child = spawn(process.execPath, [MAIN, "agent", "--admin", "127.0.0.1:0", ...args], {
    env: { ...process.env, LOG_FORMAT: "json" },
    stdio: ["ignore", "pipe", "pipe"]
  })
  const lines: Array<string> = []
  createInterface({ input: child.stdout! }).on("line", (line) => lines.push(line))
  createInterface({ input: child.stderr! }).on("line", (line) => lines.push(line))
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
  let code: number | null | undefined
  void exited.then((c) => (code = c))
  const adminUrl = await waitFor(async () => {
    if (code !== undefined) throw new Error(`agent exited (${code}):\n${lines.join("\n")}`)
    for (const line of lines) {
      const match = /agent admin: listening on (http:\/\/[^"\s]+)/.exec(line)
      if (match) return match[1]!
    }
    throw new Error(`no admin address yet:\n${lines.join("\n")}`)
  }, 30_000)
  return { child, lines, adminUrl, exited }
}

/** A trivial unary method with raw bytes, for checking that a TLS pair still talks. */
export const echoDefinition: grpc.ServiceDefinition = {
  Echo: {
    path: "/test.Echo/Echo",
    requestStream: false,
    responseStream: false,
    requestSerialize: (b: Buffer) => b,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (b: Buffer) => b,
    responseDeserialize: (b: Buffer) => b
  }
}
export const EchoClient = grpc.makeGenericClientConstructor(echoDefinition, "Echo")
