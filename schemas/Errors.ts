import { Schema } from "effect"

/** One problem in a config document: where (a path like `services[2].port`, or `line 3, column 5`) and why. */
export class ConfigIssue extends Schema.Class<ConfigIssue>("ConfigIssue")({
  path: Schema.String,
  message: Schema.String
}) {
  override toString(): string {
    return this.path === "" ? this.message : `${this.path}: ${this.message}`
  }
}

/** A config document (file, reload, KV value) that cannot be used, with every problem found in it. */
export class ConfigInvalid extends Schema.TaggedError<ConfigInvalid>()("ConfigInvalid", {
  source: Schema.String,
  issues: Schema.Array(ConfigIssue)
}) {
  override get message(): string {
    const count = this.issues.length === 1 ? "1 problem" : `${this.issues.length} problems`
    return `${this.source}: ${count}\n${this.issues.map((issue) => `  ${issue.toString()}`).join("\n")}`
  }
}

/** A config file that cannot be read at all. */
export class ConfigUnreadable extends Schema.TaggedError<ConfigUnreadable>()("ConfigUnreadable", {
  source: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `${this.source}: cannot read the config file: ${this.reason}`
  }
}
