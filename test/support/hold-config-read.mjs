// A preload (`node --import`) for tests of what happens while the daemon starts: it holds the read
// of one file (HOLD_READ_PATH, the config) until `<path>.release` exists, and marks with
// `<path>.reading` that the read has begun. The process is real; only that one read waits, so a
// test can act at the moment "the program has loaded but its config has not".
// The module object itself (the default export), not a read-only namespace.
import NodeFs from "node:fs"
import { syncBuiltinESMExports } from "node:module"
import { resolve } from "node:path"

const held = process.env.HOLD_READ_PATH
if (held !== undefined) {
  const original = NodeFs.readFile
  NodeFs.readFile = function(path, ...rest) {
    if (resolve(String(path)) !== resolve(held)) return original.call(this, path, ...rest)
    NodeFs.writeFileSync(`${held}.reading`, "")
    const wait = setInterval(() => {
      if (!NodeFs.existsSync(`${held}.release`)) return
      clearInterval(wait)
      original.call(this, path, ...rest)
    }, 20)
  }
  // `import * as NFS from "node:fs"` namespaces see the patched function from here on.
  syncBuiltinESMExports()
}
