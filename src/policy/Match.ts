/**
 * Matchers for authorization conditions (`when`), built once at compile time.
 *
 * Paths and header values use the glob forms of the best-known meshes: `/admin/*` (prefix),
 * `*.html` (suffix), `*` (present, any value), anything else exact. A `*` elsewhere is an error:
 * Envoy's RBAC string matchers cannot express it.
 */

export type Glob =
  | { readonly _tag: "Any" }
  | { readonly _tag: "Exact"; readonly value: string }
  | { readonly _tag: "Prefix"; readonly value: string }
  | { readonly _tag: "Suffix"; readonly value: string }

/** Parses a glob, or says why it is not one. */
export const parseGlob = (text: string): Glob | string => {
  if (text === "*") return { _tag: "Any" }
  const stars = text.split("*").length - 1
  if (stars === 0) return { _tag: "Exact", value: text }
  if (stars === 1 && text.endsWith("*")) return { _tag: "Prefix", value: text.slice(0, -1) }
  if (stars === 1 && text.startsWith("*")) return { _tag: "Suffix", value: text.slice(1) }
  return `"${text}": "*" may only stand alone, end a prefix ("/admin/*") or start a suffix ("*.html")`
}

export const globMatches = (glob: Glob, value: string): boolean => {
  switch (glob._tag) {
    case "Any":
      return true
    case "Exact":
      return value === glob.value
    case "Prefix":
      return value.startsWith(glob.value)
    case "Suffix":
      return value.endsWith(glob.value)
  }
}

/** The path Envoy's RBAC `url_path` sees: without the query string or fragment. */
export const urlPath = (path: string): string => {
  const cut = path.search(/[?#]/)
  return cut < 0 ? path : path.slice(0, cut)
}
