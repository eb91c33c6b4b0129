import { Effect, Either, Schema } from "effect"
import { ServiceName } from "../../schemas/Config.js"

/** The `--service` argument as a service name, or the command's own error (`refuse`) saying why not. */
export const serviceArg = <E>(service: string, refuse: (reason: string) => E): Effect.Effect<string, E> =>
  Either.match(Schema.decodeEither(ServiceName)(service), {
    onLeft: () =>
      Effect.fail(
        refuse(`--service: expected a service name (lowercase letters, digits and '-'), got ${JSON.stringify(service)}`)
      ),
    onRight: Effect.succeed
  })
