/**
 * Raspberry Pi preflight: official arm64 Envoy builds use tcmalloc, which assumes a 48-bit virtual
 * address space, and crash at start on kernels that give processes fewer bits. Stock Raspberry Pi
 * OS kernels are built with 39-bit addresses (CONFIG_ARM64_VA_BITS=39); see envoyproxy/envoy#23339.
 * This module decides from text (a kernel config, a /proc/self/maps) so it is testable with
 * recordings; layers/Sidecar.ts does the reading.
 */

export const ENVOY_VA_ISSUE = "https://github.com/envoyproxy/envoy/issues/23339"
/** What tcmalloc in official Envoy arm64 builds assumes. */
export const REQUIRED_VA_BITS = 48

export type VaSource = "kernel-config" | "memory-map"

export interface PreflightInput {
  /** `process.arch` of the host ("arm64", "x64" …). */
  readonly arch: string
  /** The kernel's build configuration (/proc/config.gz decompressed, or /boot/config-<release>). */
  readonly kernelConfig?: string | undefined
  /** Where the kernel config came from, for the message. */
  readonly kernelConfigSource?: string | undefined
  /** The text of /proc/self/maps. */
  readonly memoryMap?: string | undefined
}

export interface PreflightResult {
  readonly arch: string
  /** Virtual address bits available to processes, when they could be determined. */
  readonly vaBits: number | null
  readonly source: VaSource | null
  /** "likely-crash": Envoy's official arm64 build will probably crash at start on this host. */
  readonly verdict: "ok" | "likely-crash" | "unknown"
  readonly message: string
  /** The ways out, when the verdict is "likely-crash". */
  readonly remedies: ReadonlyArray<string>
}

/** `CONFIG_ARM64_VA_BITS=39` (or the `CONFIG_ARM64_VA_BITS_39=y` choice) → 39; absent on non-arm64 kernels. */
export const vaBitsFromKernelConfig = (text: string): number | null => {
  const value = /^CONFIG_ARM64_VA_BITS=(\d+)\s*$/m.exec(text)
  if (value !== null) return Number(value[1])
  const choice = /^CONFIG_ARM64_VA_BITS_(\d+)=y\s*$/m.exec(text)
  return choice === null ? null : Number(choice[1])
}

// Kernel-owned pages that show up in user maps on some architectures ([vsyscall] on x86_64 sits at
// 0xffffffffff600000; arm32's [vectors] at 0xffff0000) say nothing about the user address space.
const KERNEL_PAGES = /\[(vsyscall|vectors)\]\s*$/

/**
 * The bit width of the highest user-space address in a /proc/self/maps. The kernel places the
 * stack and the mmap area just below the top of the user address space, so on a 39-bit kernel
 * nothing ends above 2^39 and on a 48-bit one the stack sits near 2^48.
 */
export const vaBitsFromMemoryMap = (text: string): number | null => {
  let highest = 0n
  for (const line of text.split("\n")) {
    const match = /^([0-9a-f]+)-([0-9a-f]+)\s/i.exec(line)
    if (match === null || KERNEL_PAGES.test(line)) continue
    const end = BigInt(`0x${match[2]}`)
    if (end > highest) highest = end
  }
  if (highest === 0n) return null
  return (highest - 1n).toString(2).length
}

const REMEDIES: ReadonlyArray<string> = [
  "boot a kernel built with 48-bit virtual addresses (CONFIG_ARM64_VA_BITS_48=y), e.g. a distribution's generic arm64 kernel or a Raspberry Pi kernel rebuilt with that option",
  "use an Envoy built with another allocator (e.g. bazel --define tcmalloc=gperftools, or tcmalloc disabled), which does not assume 48-bit addresses",
  "leave the Envoy sidecar off on this host and use proxyless gRPC clients (xds:///<service>) instead"
]

/** Decides whether Envoy's official arm64 build is likely to crash on this host. */
export const preflight = (input: PreflightInput): PreflightResult => {
  const fromConfig = input.kernelConfig === undefined ? null : vaBitsFromKernelConfig(input.kernelConfig)
  const fromMap = fromConfig === null && input.memoryMap !== undefined ? vaBitsFromMemoryMap(input.memoryMap) : null
  const vaBits = fromConfig ?? fromMap
  const source: VaSource | null = fromConfig !== null ? "kernel-config" : fromMap !== null ? "memory-map" : null
  const base = { arch: input.arch, vaBits, source }
  if (input.arch !== "arm64") {
    return {
      ...base,
      verdict: "ok",
      message: `${input.arch} host: the arm64 address-space limit does not apply`,
      remedies: []
    }
  }
  if (vaBits === null) {
    return {
      ...base,
      verdict: "unknown",
      message: "could not determine the kernel's virtual address width (no kernel config, no readable memory map); " +
        `if Envoy crashes at start, see ${ENVOY_VA_ISSUE}`,
      remedies: []
    }
  }
  const evidence = source === "kernel-config"
    ? `CONFIG_ARM64_VA_BITS=${vaBits} in ${input.kernelConfigSource ?? "the kernel config"}`
    : `the highest address in /proc/self/maps needs ${vaBits} bits`
  if (vaBits >= REQUIRED_VA_BITS) {
    return { ...base, verdict: "ok", message: `${vaBits}-bit virtual addresses (${evidence})`, remedies: [] }
  }
  return {
    ...base,
    verdict: "likely-crash",
    message: `this arm64 kernel gives processes ${vaBits}-bit virtual addresses (${evidence}); ` +
      `official arm64 Envoy builds use tcmalloc, which assumes ${REQUIRED_VA_BITS} bits, and crash at start on such kernels ` +
      `(stock Raspberry Pi OS kernels are built this way; ${ENVOY_VA_ISSUE})`,
    remedies: REMEDIES
  }
}

/** One paragraph for logs and /status: the finding and the ways out. */
export const explain = (result: PreflightResult): string =>
  result.remedies.length === 0
    ? result.message
    : `${result.message}. Ways out: ${result.remedies.map((remedy, i) => `(${i + 1}) ${remedy}`).join("; ")}`
