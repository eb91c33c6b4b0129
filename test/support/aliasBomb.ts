/**
 * A "billion laughs" YAML document: nine levels of anchors, each a list of nine aliases of the
 * one before, so expanding it would build 9^9 strings. Valid YAML syntax; hostile only when expanded.
 */
export const aliasBomb = (): string => {
  const lines = ["mesh: { name: lab }", `a: &a [${Array(9).fill("\"lol\"").join(", ")}]`]
  let previous = "a"
  for (const name of "bcdefghi") {
    lines.push(`${name}: &${name} [${Array(9).fill(`*${previous}`).join(", ")}]`)
    previous = name
  }
  return `${lines.join("\n")}\n`
}
