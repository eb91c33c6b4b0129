/**
 * A minimal authoritative DNS server over UDP on 127.0.0.1, for tests of Consul-DNS resolution:
 * answers A queries from a mutable table, NXDOMAIN for unknown names, no answers for other types.
 */
import { Effect, type Scope } from "effect"
import * as Dgram from "node:dgram"

export interface TinyDns {
  readonly server: string
  /** name (lowercase, no trailing dot) → IPv4 addresses; edit it to change answers. */
  readonly records: Map<string, ReadonlyArray<string>>
  readonly queries: Array<string>
  /** Stops answering (queries time out) until `resume`. */
  silent: boolean
}

const readName = (message: Buffer, offset: number): { name: string; end: number } => {
  const labels: Array<string> = []
  let at = offset
  while (message[at]! !== 0) {
    const length = message[at]!
    labels.push(message.subarray(at + 1, at + 1 + length).toString("ascii"))
    at += 1 + length
  }
  return { name: labels.join(".").toLowerCase(), end: at + 1 }
}

const answer = (query: Buffer, records: ReadonlyMap<string, ReadonlyArray<string>>): Buffer => {
  const { name, end } = readName(query, 12)
  const type = query.readUInt16BE(end)
  const question = query.subarray(12, end + 4)
  const known = records.get(name)
  const addresses = type === 1 ? known ?? [] : []
  const header = Buffer.alloc(12)
  header.writeUInt16BE(query.readUInt16BE(0), 0)
  // QR, AA, RD copied, RA; RCODE 3 (NXDOMAIN) for unknown names.
  header.writeUInt16BE(0x8000 | 0x0400 | (query.readUInt16BE(2) & 0x0100) | 0x0080 | (known ? 0 : 3), 2)
  header.writeUInt16BE(1, 4)
  header.writeUInt16BE(addresses.length, 6)
  const answers = addresses.map((address) => {
    const record = Buffer.alloc(16)
    record.writeUInt16BE(0xc00c, 0)
    record.writeUInt16BE(1, 2)
    record.writeUInt16BE(1, 4)
    record.writeUInt32BE(0, 6)
    record.writeUInt16BE(4, 10)
    address.split(".").forEach((octet, i) => record.writeUInt8(Number(octet), 12 + i))
    return record
  })
  return Buffer.concat([header, question, ...answers])
}

export const makeTinyDns: Effect.Effect<TinyDns, never, Scope.Scope> = Effect.acquireRelease(
  Effect.async<{ dns: TinyDns; socket: Dgram.Socket }>((resume) => {
    const socket = Dgram.createSocket("udp4")
    const dns: TinyDns = { server: "", records: new Map(), queries: [], silent: false }
    socket.on("message", (message, peer) => {
      const { name } = readName(message, 12)
      dns.queries.push(name)
      if (dns.silent) return
      socket.send(answer(message, dns.records), peer.port, peer.address)
    })
    socket.bind(0, "127.0.0.1", () => {
      Object.assign(dns, { server: `127.0.0.1:${socket.address().port}` })
      resume(Effect.succeed({ dns, socket }))
    })
  }),
  ({ socket }) => Effect.async<void>((resume) => void socket.close(() => resume(Effect.void)))
).pipe(Effect.map(({ dns }) => dns))
