/**
 * mesh-controller as a library: the config schema and its decoder, the pure mesh model, and every
 * layer (each is also importable on its own, e.g. `mesh-controller/layers/config`).
 */
export * from "../schemas/index.js"
export { decodeConfig, formatPath, parseConfig } from "./ConfigDocument.js"
export { configJsonSchema } from "./ConfigSchema.js"
export * from "./MeshState.js"
export { makeProgram } from "./program.js"
export { Admin, AdminListenError } from "../layers/Admin.js"
export { Config, loadFile } from "../layers/Config.js"
export type { ConfigFileOptions, ConfigStatus, LoadedConfig, ReloadResult } from "../layers/Config.js"
export { Discovery } from "../layers/Discovery.js"
export { Health } from "../layers/Health.js"
export type { HealthView } from "../layers/Health.js"
export { Lifecycle } from "../layers/Lifecycle.js"
