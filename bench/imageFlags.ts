import * as NodeFs from "node:fs"
import * as NodePath from "node:path"

/** The Node/V8 flags between `node` and the script in the image's exec-form ENTRYPOINT (`npm start` has the same). */
export const entrypointFlags = (root: string): ReadonlyArray<string> => {
  const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(NodeFs.readFileSync(NodePath.join(root, "Dockerfile"), "utf8"))
  return (JSON.parse(entrypoint?.[1] ?? "[]") as ReadonlyArray<string>).slice(1, -1)
}

/**
 * The Node/V8 flags the daemon runs with: the image's (`entrypointFlags`), or the value of
 * `--node-flags "F"` when the bench is given one (`""`: none, for a baseline). Benches run the
 * controller as the image does.
 */
export const nodeFlags = (root: string, args: ReadonlyArray<string>): ReadonlyArray<string> => {
  const given = args.indexOf("--node-flags")
  if (given >= 0) return (args[given + 1] ?? "").split(" ").filter((flag) => flag !== "")
  return entrypointFlags(root)
}
