import { Data, Schema } from "effect"

/**
 * A CA file that cannot be used: unreadable, corrupt, not a CA, or a key that does not match its
 * certificate. Names the file and the reason, never its content (it may be a key).
 */
export class CaInvalid extends Schema.TaggedError<CaInvalid>()("CaInvalid", {
  file: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `${this.file}: ${this.reason}`
  }
}

/** Writing CA or certificate files failed (the directory, a temporary file, a rename). */
export class CertificateStoreError extends Schema.TaggedError<CertificateStoreError>()("CertificateStoreError", {
  path: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `${this.path}: ${this.reason}`
  }
}

/** A CA operation the current setup does not allow (e.g. rotating an operator-provided CA). */
export class CaOperationRefused extends Schema.TaggedError<CaOperationRefused>()("CaOperationRefused", {
  reason: Schema.String
}) {
  override get message(): string {
    return this.reason
  }
}

/** Key generation or signing failed inside WebCrypto (a bug or an unsupported algorithm, not user input). */
export class SigningFailed
  extends Data.TaggedError("SigningFailed")<{ readonly what: string; readonly cause: unknown }>
{
  override get message(): string {
    return `${this.what} failed: ${this.cause instanceof Error ? this.cause.message : String(this.cause)}`
  }
}
