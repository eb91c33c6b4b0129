import { Context, Deferred, Duration, Effect, Layer, Stream } from "effect"
import * as NodePath from "node:path"
import { Admin } from "../layers/Admin.js"
import { ControllerIdentity } from "../layers/admin/AdminTls.js"
import { loadOrCreateToken } from "../layers/admin/AdminToken.js"
import { Certificates, secretsOf } from "../layers/Certificates.js"
import { ConsulClient } from "../layers/ConsulClient.js"
import { ConsulPolicies } from "../layers/ConsulPolicies.js"
import { ConsulRegistration } from "../layers/ConsulRegistration.js"
import { Discovery } from "../layers/Discovery.js"
import { Health } from "../layers/Health.js"
import { Lifecycle } from "../layers/Lifecycle.js"
import { LiveConfig } from "../layers/LiveConfig.js"
import { Policy } from "../layers/Policy.js"
import { RegistrationApi } from "../layers/RegistrationApi.js"
import { Sidecar } from "../layers/Sidecar.js"
import { SigningService } from "../layers/SigningService.js"
import { Snapshot, SnapshotSecrets } from "../layers/Snapshot.js"
import { Ui } from "../layers/Ui.js"
import { Xds } from "../layers/Xds.js"
import { serviceId } from "../schemas/Identity.js"

export interface ProgramOptions {
  readonly configPath: string
  readonly version: string
}

/** The layers, in start order; /readyz waits for all of them. */
export const LAYER_NAMES = [
  "config",
  "discovery",
  "admin",
  "consulPolicies",
  "policy",
  "certificates",
  "health",
  "consulRegistration",
  "snapshot",
  "xds",
  "signing",
  "sidecar"
] as const

/**
 * Marks the daemon ready once every other layer is built, and not ready as soon as shutdown
 * begins (this is released first). Shutdown as a whole is bounded by `controller.shutdownTimeout`:
 * a watchdog that no finalizer can block ends the process if the layers take longer.
 */
const Ready: Layer.Layer<never, never, Lifecycle | LiveConfig> = Layer.scopedDiscard(
  Effect.gen(function*() {
    const lifecycle = yield* Lifecycle
    const config = yield* LiveConfig
    yield* Effect.acquireRelease(
      Effect.zipRight(lifecycle.setPhase("ready"), Effect.logInfo("mesh-controller is ready")),
      () =>
        Effect.gen(function*() {
          const timeout = (yield* config.get).config.controller.shutdownTimeout
          yield* lifecycle.setPhase("stopping")
          yield* Effect.logInfo(`shutting down (at most ${Duration.format(timeout)})`)
          yield* Effect.sync(() => {
            const timer = setTimeout(() => {
              process.stderr.write(`shutdown did not finish within ${Duration.format(timeout)}; exiting\n`)
              process.exit(1)
            }, Duration.toMillis(timeout))
            timer.unref()
          })
        })
    )
  })
)

/** The workload certificates and trust bundle, served over SDS. */
const SecretsFromCertificates: Layer.Layer<SnapshotSecrets, never, Certificates> = Layer.effect(
  SnapshotSecrets,
  Effect.map(Certificates, (certificates) => ({ changes: certificates.changes.pipe(Stream.map(secretsOf)) }))
)

/** The xDS server, with mTLS from the mesh CA when `controller.xds.tls` is "mtls". */
const XdsFromConfig: Layer.Layer<Xds, unknown, LiveConfig | Certificates | Snapshot> = Layer.unwrapEffect(
  Effect.gen(function*() {
    const { config } = yield* (yield* LiveConfig).get
    const certificates = yield* Certificates
    return Xds.layer(config.controller.xds.tls === "mtls" ? { credentials: certificates.xdsServerCredentials } : {})
  })
)

/**
 * The admin server on `controller.admin`, with the runtime registration API and the status page. Its bearer token is
 * `controller.admin.tokenFile`, else `admin-token` in the state dir (`certificates.dir`), generated
 * on first start. Settings of `controller.admin` apply at start. With `tls`, the server takes the
 * controller's certificate from `ControllerIdentity` once Certificates has loaded the CA.
 */
const AdminFromConfig = (
  version: string
): Layer.Layer<Admin, unknown, LiveConfig | Discovery | Lifecycle | Ui | ControllerIdentity> =>
  Layer.unwrapEffect(
    Effect.gen(function*() {
      const { config } = yield* (yield* LiveConfig).get
      const admin = config.controller.admin
      const trustDomain = config.mesh.trustDomain
      const identity = yield* ControllerIdentity
      const tokenFile = NodePath.resolve(admin.tokenFile ?? NodePath.join(config.certificates.dir, "admin-token"))
      const ui = yield* Ui
      const token = yield* loadOrCreateToken(tokenFile)
      if (token.created) yield* Effect.logInfo(`admin: generated the admin token in ${token.path}`)
      return Admin.layer({
        host: admin.host,
        port: admin.port,
        version,
        routes: RegistrationApi,
        ui: ui.routes,
        tokenFile: token.path,
        tls: admin.tls ? { trustDomain, identity: Deferred.await(identity) } : undefined,
        access: {
          verifyToken: token.verify,
          readAccess: admin.readAccess,
          allowedHosts: admin.allowedHosts,
          adminIdentities: admin.adminIdentities.map((name) => serviceId(trustDomain, name))
        }
      })
    }).pipe(Effect.annotateLogs({ module: "admin" }))
  )

/** Hands the controller's identity (which follows renewals and rotation) to the admin server. */
const ShareControllerIdentity: Layer.Layer<never, never, Certificates | ControllerIdentity> = Layer.effectDiscard(
  Effect.gen(function*() {
    const certificates = yield* Certificates
    yield* Deferred.succeed(yield* ControllerIdentity, certificates.controllerProvider)
  })
)

const statusOf =
  <I, S extends { readonly status: Effect.Effect<unknown> }>(tag: Context.Tag<I, S>) => (ctx: Context.Context<I>) =>
    Context.get(ctx, tag).status

/** The composition root: every layer of the daemon, in dependency order. */
export const makeProgram = (options: ProgramOptions): Layer.Layer<never, unknown> => {
  const track = Lifecycle.track
  const ConfigLive = track("config", LiveConfig.layer({ path: options.configPath }), statusOf(LiveConfig))
  const DiscoveryLive = track("discovery", Discovery.layer(), statusOf(Discovery))
  const AdminLive = track("admin", AdminFromConfig(options.version), statusOf(Admin))
  const PolicyLive = track("policy", Policy.layer, statusOf(Policy))
  const ConsulPoliciesLive = track("consulPolicies", ConsulPolicies.layer(), statusOf(ConsulPolicies))
  // HTTPS checks with `trustMeshCa` verify targets against the current trust bundle.
  const HealthLive = track(
    "health",
    Layer.unwrapEffect(
      Effect.map(
        Certificates,
        (certificates) => Health.layer({ meshCa: Effect.map(certificates.bundle, (b) => b.pem) })
      )
    ),
    statusOf(Health)
  )
  const RegistrationLive = track("consulRegistration", ConsulRegistration.layer(), statusOf(ConsulRegistration))
  const CertificatesLive = track("certificates", Certificates.layer, statusOf(Certificates))
  const SnapshotLive = track(
    "snapshot",
    Snapshot.layerWithSecrets.pipe(Layer.provide(SecretsFromCertificates)),
    statusOf(Snapshot)
  )
  const XdsLive = track("xds", XdsFromConfig, statusOf(Xds))
  const SigningLive = track("signing", SigningService.layerConfig, statusOf(SigningService))
  const SidecarLive = track("sidecar", Sidecar.layerConfig(), statusOf(Sidecar))

  // The status page is served from the start (by Admin) and reads the other layers once all are built.
  return Layer.merge(Ready, Ui.layerSources).pipe(
    Layer.provide(SidecarLive),
    Layer.provide(XdsLive),
    Layer.provide(SigningLive),
    Layer.provideMerge(SnapshotLive),
    Layer.provide(RegistrationLive),
    Layer.provideMerge(HealthLive),
    Layer.provide(ShareControllerIdentity),
    Layer.provideMerge(CertificatesLive),
    Layer.provide(PolicyLive),
    // Below this line the layers see the file's config; above it, with the policies from
    // Consul KV in place of the file's while the key holds a valid value.
    Layer.provide(ConsulPolicies.configOverlay),
    Layer.provide(ConsulPoliciesLive),
    Layer.provide(AdminLive),
    Layer.provideMerge(DiscoveryLive),
    // One Consul client for Discovery, ConsulPolicies and ConsulRegistration, from the file's config,
    // with the controller ID from the state dir (so the registration API writes through to Consul).
    Layer.provideMerge(ConsulClient.layerWithControllerId),
    // SIGHUP reloads from as soon as there is a config until shutdown ends.
    Layer.provideMerge(LiveConfig.reloadOnSighup.pipe(Layer.provideMerge(ConfigLive))),
    Layer.provide(Ui.layer({ version: options.version })),
    Layer.provide(Lifecycle.layer(LAYER_NAMES)),
    Layer.provide(ControllerIdentity.layer)
  )
}
