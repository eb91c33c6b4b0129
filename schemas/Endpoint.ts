/**
 * `address:port`, the key an endpoint is known by across layers (config checks, health,
 * discovery); IPv6 addresses are bracketed so `::1` port 880 and `::1:8` port 80 stay apart.
 */
export const endpointKey = (endpoint: { readonly address: string; readonly port: number }): string =>
  endpoint.address.includes(":") ? `[${endpoint.address}]:${endpoint.port}` : `${endpoint.address}:${endpoint.port}`

/** `host:port` or `[v6]:port` (a config value such as the tracing collector) to its parts. */
export const parseHostPort = (text: string): { readonly host: string; readonly port: number } => {
  const cut = text.lastIndexOf(":")
  return { host: text.slice(0, cut).replace(/^\[|\]$/g, ""), port: Number(text.slice(cut + 1)) }
}
