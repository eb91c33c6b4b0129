// Lint as Effect's own repositories do (Effect-TS/effect eslint.config.mjs): eslint and
// typescript-eslint's recommended rules, Effect's rule choices, and @effect/eslint-plugin's dprint
// rule so that `eslint .` also reports formatting. The formatting settings have one home, dprint.json,
// which the dprint CLI (`npm run format`) reads too; both use the same @dprint/typescript plugin.
import effect from "@effect/eslint-plugin"
import js from "@eslint/js"
import { readFileSync } from "node:fs"
import tseslint from "typescript-eslint"

const dprint = JSON.parse(readFileSync(new URL("./dprint.json", import.meta.url), "utf8"))

export default tseslint.config(
  {
    ignores: [
      "dist/**",
      "node_modules/**",
      "coverage/**",
      ".mesh-state/**",
      "schemas/mesh.schema.json",
      "src/xds/EnvoyProtos.ts"
    ]
  },
  js.configs.recommended,
  {
    // The status page's own script runs in the browser.
    files: ["src/ui/static/**/*.js"],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: "module",
      globals: Object.fromEntries(
        [
          "window",
          "document",
          "location",
          "sessionStorage",
          "fetch",
          "URLSearchParams",
          "AbortController",
          "setTimeout",
          "clearTimeout",
          "addEventListener",
          "removeEventListener",
          "console"
        ].map((name) => [name, "readonly"])
      )
    }
  },
  ...tseslint.configs.recommended,
  {
    files: ["**/*.ts", "**/*.mjs"],
    plugins: { "@effect": effect },
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: "module",
      globals: {
        process: "readonly",
        console: "readonly",
        Buffer: "readonly",
        URL: "readonly",
        setTimeout: "readonly",
        clearTimeout: "readonly",
        setInterval: "readonly",
        clearInterval: "readonly",
        setImmediate: "readonly",
        queueMicrotask: "readonly",
        performance: "readonly",
        fetch: "readonly",
        AbortController: "readonly",
        TextEncoder: "readonly",
        TextDecoder: "readonly",
        crypto: "readonly",
        structuredClone: "readonly"
      }
    },
    rules: {
      // Effect's choices (Effect-TS/effect eslint.config.mjs)
      "no-fallthrough": "off",
      "no-irregular-whitespace": "off",
      "object-shorthand": "error",
      "prefer-destructuring": "off",
      "sort-imports": "off",
      "no-restricted-syntax": ["error", {
        selector: "CallExpression[callee.property.name='push'] > SpreadElement.arguments",
        message: "Do not use spread arguments in Array.push"
      }],
      "no-unused-vars": "off",
      "require-yield": "off",
      "prefer-rest-params": "off",
      "prefer-spread": "off",
      "@typescript-eslint/array-type": ["warn", { default: "generic", readonly: "generic" }],
      "@typescript-eslint/no-non-null-assertion": "off",
      "@typescript-eslint/no-explicit-any": "off",
      "@typescript-eslint/no-empty-object-type": "off",
      "@typescript-eslint/no-unsafe-function-type": "off",
      "@typescript-eslint/no-wrapper-object-types": "off",
      "@typescript-eslint/consistent-type-imports": "warn",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/ban-ts-comment": "off",
      "@typescript-eslint/explicit-function-return-type": "off",
      "@typescript-eslint/explicit-module-boundary-types": "off",
      "@typescript-eslint/no-array-constructor": "off",
      "@typescript-eslint/no-use-before-define": "off",
      "@typescript-eslint/no-namespace": "off",
      "@effect/dprint": ["error", {
        config: { lineWidth: dprint.lineWidth, indentWidth: dprint.indentWidth, ...dprint.typescript }
      }]
    }
  }
)
