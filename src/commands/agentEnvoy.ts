/**
 * `mesh-controller agent --envoy`: the local Envoy, run by the Sidecar layer's supervisor (the same
 * one the controller uses: atomic bootstrap, /ready wait, restart backoff, drain, stop, parent-death
 * signal) with a bootstrap made from the identity the agent holds. Loaded only with `--envoy`, so
 * an agent without Envoy does not carry the config schema and the bootstrap builder.
 */
import { Effect, Either, Layer, ParseResult, Schema } from "effect"
import * as NodePath from "node:path"
import { Agent, AgentRefused } from "../../layers/Agent.js"
import { Sidecar } from "../../layers/Sidecar.js"
import { Envoy } from "../../schemas/Config.js"
import { parseSpiffeId } from "../certs/Spiffe.js"
import { inputForAgent } from "../sidecar/Bootstrap.js"

export interface AgentEnvoyOptions {
  /** The Envoy binary. */
  readonly path: string
  readonly admin: { readonly host: string; readonly port: number }
  /** Where the bootstrap and its SDS files go. */
  readonly stateDir: string
  /** The controller's mTLS xDS server. */
  readonly xds: { readonly host: string; readonly port: number }
  readonly instance: string
}

/**
 * Built after the Agent layer, so Envoy starts only once the agent holds a valid certificate, and
 * stops (drained) before the agent's own finalizers run; /healthz shows its status as `envoy`.
 */
export const agentEnvoyLayer = (options: AgentEnvoyOptions): Layer.Layer<never, AgentRefused, Agent> =>
  Layer.unwrapEffect(Effect.gen(function*() {
    const agent = yield* Agent
    const held = yield* agent.status
    const id = Either.getOrUndefined(parseSpiffeId(held.spiffeId ?? ""))
    const service = id?.segments[0] === "service" ? id.segments[1] : undefined
    if (id === undefined || service === undefined) {
      return yield* new AgentRefused({ reason: `--envoy: the agent holds no service identity (${held.spiffeId})` })
    }
    const envoy = yield* Schema.decodeUnknown(Envoy)({ enabled: true, path: options.path, admin: options.admin }).pipe(
      Effect.mapError((error) =>
        new AgentRefused({ reason: `--envoy: ${ParseResult.TreeFormatter.formatErrorSync(error)}` })
      )
    )
    const stateDir = NodePath.resolve(options.stateDir)
    const sidecar = Sidecar.layerBootstrap({
      input: inputForAgent({
        trustDomain: id.trustDomain,
        service,
        instance: options.instance,
        xds: options.xds,
        envoy,
        identity: agent.files,
        sdsDir: NodePath.join(stateDir, "sds")
      }),
      envoy,
      stateDir,
      identityHint: `the agent writes them in ${agent.files.directory}`
    }).pipe(Layer.mapError((error) => new AgentRefused({ reason: `--envoy: ${error.reason}` })))
    return Layer.scopedDiscard(
      Effect.flatMap(Sidecar, (running) => agent.report("envoy", running.status))
    ).pipe(Layer.provide(sidecar))
  }))
