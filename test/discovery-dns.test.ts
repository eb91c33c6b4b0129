/**
 * Host-name endpoints are resolved before they reach Discovery.changes: system names through the
 * system resolver (`localhost`), `*.consul` names through Consul's DNS interface (here a real tiny
 * DNS server on 127.0.0.1 over UDP).
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Either, Layer } from "effect"
import { ConsulClient } from "../layers/ConsulClient.js"
import { Discovery } from "../layers/Discovery.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import type { MeshConfig } from "../schemas/Config.js"
import { decodeConfig } from "../src/ConfigDocument.js"
import { eventually } from "./support/eventually.js"
import { makeTinyDns } from "./support/TinyDns.js"

const configOf = (dnsServer: string, endpoints: ReadonlyArray<Record<string, unknown>>): MeshConfig =>
  Either.getOrThrowWith(
    decodeConfig({
      mesh: { name: "dns" },
      discovery: { dns: { refreshInterval: "100ms", consulServer: dnsServer } },
      services: [{ name: "web", port: 8080, endpoints }]
    }, "test"),
    (error) => new Error(error.message)
  )

const start = (config: MeshConfig) =>
  Effect.map(
    Layer.build(
      Discovery.layer({ dnsTimeout: "2 seconds" }).pipe(
        Layer.provide(ConsulClient.layer),
        Layer.provide(LiveConfig.layerMemory(config))
      )
    ),
    (context) => Context.get(context, Discovery)
  )

const addressesOf = (discovery: Context.Tag.Service<Discovery>) =>
  Effect.map(
    discovery.services,
    (services) => services.find((s) => s.name === "web")?.endpoints.map((e) => e.address) ?? []
  )

const expectAddresses = (discovery: Context.Tag.Service<Discovery>, wanted: ReadonlyArray<string>) =>
  eventually(
    Effect.flatMap(addressesOf(discovery), (got) =>
      JSON.stringify(got) === JSON.stringify(wanted) ? Effect.void : Effect.fail(new Error(JSON.stringify(got))))
  )

interface DnsStatus {
  readonly dns: {
    readonly names: ReadonlyArray<{ host: string; addresses: ReadonlyArray<string>; error: string | null }>
  }
}

describe("Discovery DNS", () => {
  it.scopedLive("a host name is resolved by the system resolver before it reaches consumers", () =>
    Effect.gen(function*() {
      const discovery = yield* start(configOf("127.0.0.1:1", [{ address: "localhost" }, { address: "10.1.1.1" }]))
      const addresses = yield* addressesOf(discovery)
      expect(addresses).toContain("127.0.0.1")
      expect(addresses).toContain("10.1.1.1")
      expect(addresses).not.toContain("localhost")
      const endpoints = (yield* discovery.services)[0]!.endpoints
      assert.isTrue(endpoints.every((e) => e.port === 8080 && e.source === "config"))
    }))

  it.scopedLive("*.service.consul names go to Consul's DNS; answers are refreshed; a failing server keeps the last ones", () =>
    Effect.gen(function*() {
      const dns = yield* makeTinyDns
      dns.records.set("web.service.consul", ["10.0.0.2", "10.0.0.1"])
      const discovery = yield* start(configOf(dns.server, [{ address: "web.service.consul", port: 9000 }]))
      yield* expectAddresses(discovery, ["10.0.0.1", "10.0.0.2"])
      assert.include(dns.queries, "web.service.consul")

      dns.records.set("web.service.consul", ["10.0.0.3"])
      yield* expectAddresses(discovery, ["10.0.0.3"])

      dns.silent = true
      yield* eventually(Effect.flatMap(discovery.status, (status) => {
        const entry = (status as DnsStatus).dns.names.find((n) => n.host === "web.service.consul")
        return entry?.error ? Effect.succeed(entry) : Effect.fail(new Error("no error yet"))
      }))
      yield* expectAddresses(discovery, ["10.0.0.3"])
    }))

  it.scopedLive("a name that does not resolve is left out and reported; the other endpoints are served", () =>
    Effect.gen(function*() {
      const dns = yield* makeTinyDns
      const discovery = yield* start(
        configOf(dns.server, [{ address: "missing.service.consul" }, { address: "10.2.2.2" }])
      )
      yield* expectAddresses(discovery, ["10.2.2.2"])
      const status = (yield* discovery.status) as DnsStatus
      const entry = status.dns.names.find((n) => n.host === "missing.service.consul")
      assert.deepStrictEqual(entry?.addresses, [])
      expect(entry?.error).toMatch(/ENOTFOUND|NXDOMAIN/)
      // It appears once it resolves.
      dns.records.set("missing.service.consul", ["10.3.3.3"])
      yield* expectAddresses(discovery, ["10.2.2.2", "10.3.3.3"])
    }))
})
