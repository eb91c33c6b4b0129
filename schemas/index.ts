export * from "./Config.js"
export * from "./Duration.js"
export * from "./Errors.js"
export * from "./Identity.js"
