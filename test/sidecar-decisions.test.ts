/** The sidecar's pure decisions: the Raspberry Pi preflight, restart backoff and crash loops, Envoy's command line and log lines. */
import { assert, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { explain, preflight, vaBitsFromKernelConfig, vaBitsFromMemoryMap } from "../src/sidecar/Preflight.js"
import { type Crash, decide, envoyArgs, parseEnvoyLogLine, type RestartPolicy } from "../src/sidecar/Restart.js"

const fixture = (name: string) =>
  NodeFs.readFileSync(NodePath.join(import.meta.dirname, "fixtures", "sidecar", name), "utf8")

describe("Raspberry Pi preflight", () => {
  it("reads the address width from kernel configurations", () => {
    assert.strictEqual(vaBitsFromKernelConfig(fixture("kernel-config-rpi-bcm2711-39bit.txt")), 39)
    assert.strictEqual(vaBitsFromKernelConfig(fixture("kernel-config-arm64-generic-48bit.txt")), 48)
    assert.isNull(vaBitsFromKernelConfig(fixture("kernel-config-x86_64.recorded.txt")))
    assert.strictEqual(vaBitsFromKernelConfig("# CONFIG_ARM64_VA_BITS_48 is not set\nCONFIG_ARM64_VA_BITS_39=y\n"), 39)
  })

  it("reads the address width from memory maps, ignoring kernel pages", () => {
    assert.strictEqual(vaBitsFromMemoryMap(fixture("maps-rpi4-39bit.txt")), 39)
    assert.strictEqual(vaBitsFromMemoryMap(fixture("maps-arm64-48bit.txt")), 48)
    // x86_64 user space is 47 bits; the [vsyscall] page at 0xffffffffff600000 is the kernel's.
    assert.strictEqual(vaBitsFromMemoryMap(fixture("maps-x86_64.recorded.txt")), 47)
    assert.isNull(vaBitsFromMemoryMap(""))
  })

  it("warns on a 39-bit Raspberry Pi kernel, with the ways out", () => {
    const fromConfig = preflight({
      arch: "arm64",
      kernelConfig: fixture("kernel-config-rpi-bcm2711-39bit.txt"),
      kernelConfigSource: "/proc/config.gz"
    })
    assert.strictEqual(fromConfig.verdict, "likely-crash")
    assert.strictEqual(fromConfig.source, "kernel-config")
    assert.strictEqual(fromConfig.vaBits, 39)
    assert.include(fromConfig.message, "CONFIG_ARM64_VA_BITS=39 in /proc/config.gz")
    const text = explain(fromConfig)
    assert.include(text, "48-bit")
    assert.include(text, "another allocator")
    assert.include(text, "proxyless gRPC")
    assert.include(text, "envoyproxy/envoy/issues/23339")

    const fromMap = preflight({ arch: "arm64", memoryMap: fixture("maps-rpi4-39bit.txt") })
    assert.strictEqual(fromMap.verdict, "likely-crash")
    assert.strictEqual(fromMap.source, "memory-map")
  })

  it("passes 48-bit arm64 kernels and other architectures", () => {
    assert.strictEqual(
      preflight({ arch: "arm64", kernelConfig: fixture("kernel-config-arm64-generic-48bit.txt") }).verdict,
      "ok"
    )
    assert.strictEqual(preflight({ arch: "arm64", memoryMap: fixture("maps-arm64-48bit.txt") }).verdict, "ok")
    const x86 = preflight({
      arch: "x64",
      kernelConfig: fixture("kernel-config-x86_64.recorded.txt"),
      memoryMap: fixture("maps-x86_64.recorded.txt")
    })
    assert.strictEqual(x86.verdict, "ok")
    assert.deepStrictEqual(x86.remedies, [])
  })

  it("prefers the kernel config, falls back to the memory map, and says so when it cannot tell", () => {
    // A kernel config without the arm64 option (a truncated or non-arm64 file) defers to the map.
    const fallback = preflight({
      arch: "arm64",
      kernelConfig: "CONFIG_64BIT=y\n",
      memoryMap: fixture("maps-rpi4-39bit.txt")
    })
    assert.strictEqual(fallback.source, "memory-map")
    assert.strictEqual(fallback.vaBits, 39)
    const unknown = preflight({ arch: "arm64" })
    assert.strictEqual(unknown.verdict, "unknown")
    assert.include(unknown.message, "23339")
  })
})

const policy: RestartPolicy = {
  initialBackoff: Duration.millis(500),
  maxBackoff: Duration.seconds(4),
  maxCrashes: 5,
  window: Duration.minutes(2)
}
const crash = (at: number, beforeReady = false): Crash => ({ at, beforeReady, code: 1, signal: null })
const delayAfter = (history: ReadonlyArray<Crash>, now: number) => {
  const decision = decide(history, now, policy)
  return decision._tag === "Restart" ? Duration.toMillis(decision.delay) : decision._tag
}

describe("restart decisions", () => {
  it("doubles the backoff with each crash inside the window, up to the cap", () => {
    const history: Array<Crash> = []
    const delays: Array<number | string> = []
    for (let i = 0; i < 4; i++) {
      history.push(crash(1_000 * i))
      delays.push(delayAfter(history, 1_000 * i))
    }
    assert.deepStrictEqual(delays, [500, 1_000, 2_000, 4_000])
    const capped = decide([crash(0), crash(1), crash(2), crash(3)], 3, {
      ...policy,
      maxBackoff: Duration.seconds(1),
      maxCrashes: 10
    })
    assert.deepStrictEqual(capped._tag === "Restart" ? Duration.toMillis(capped.delay) : capped._tag, 1_000)
  })

  it("declares a crash loop at maxCrashes within the window", () => {
    const history = [0, 1_000, 2_000, 3_000, 4_000].map((at) => crash(at, true))
    assert.deepStrictEqual(decide(history, 4_000, policy), { _tag: "CrashLoop", recentCrashes: 5 })
  })

  it("forgets crashes older than the window, resetting the backoff", () => {
    const window = Duration.toMillis(policy.window)
    const history = [0, 1_000, 2_000, 3_000].map((at) => crash(at))
    const later = 3_000 + window + 1
    history.push(crash(later))
    assert.strictEqual(delayAfter(history, later), 500)
  })
})

describe("Envoy's command line and output", () => {
  it("passes the bootstrap, epoch, base id, concurrency, drain time and extra args", () => {
    const args = envoyArgs({
      bootstrapPath: "/state/bootstrap.yaml",
      adminAddressPath: "/state/admin-address.2",
      baseId: 7,
      concurrency: 2,
      drainTime: Duration.millis(1500),
      args: ["--log-level", "warning"]
    }, 2)
    assert.deepStrictEqual(args, [
      "-c",
      "/state/bootstrap.yaml",
      "--restart-epoch",
      "2",
      "--base-id",
      "7",
      "--concurrency",
      "2",
      "--drain-time-s",
      "2",
      "--parent-shutdown-time-s",
      "3",
      "--admin-address-path",
      "/state/admin-address.2",
      "--log-level",
      "warning"
    ])
  })

  it("splits Envoy's log format into level, logger and message", () => {
    const line =
      "[2024-05-01 12:00:00.123][17][warning][config] [source/common/config/grpc_stream.h:191] StreamAggregatedResources gRPC config stream closed"
    assert.deepStrictEqual(parseEnvoyLogLine(line), {
      level: "warning",
      logger: "config",
      message: "StreamAggregatedResources gRPC config stream closed"
    })
    assert.deepStrictEqual(parseEnvoyLogLine("PARSE ERROR: Argument: --bogus"), {
      level: undefined,
      logger: undefined,
      message: "PARSE ERROR: Argument: --bogus"
    })
  })
})
