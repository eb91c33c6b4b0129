/**
 * Keeps an early SIGHUP from killing `mesh-controller run`. Node's default for SIGHUP is to exit at
 * once (129), and the daemon's reload handler (LiveConfig.reloadOnSighup) exists only from when the
 * config has loaded until shutdown ends; a SIGHUP sent by a supervisor or `docker kill -s HUP`
 * while the process starts (loading the CLI takes most of a second on a Raspberry Pi) or while it
 * stops would otherwise end it without its finalizers.
 *
 * Imported first by the entry modules, so it runs before anything else is loaded. A SIGHUP before
 * the config has loaded needs no reload: the load that follows reads the file as it is. Only `run`
 * is guarded: for the other commands (a `demo` in a closed terminal) a hang-up should still end them.
 */
const ignoreUntilTheDaemonHandlesIt = (): void => {}

if (process.argv[2] === "run") {
  process.on("SIGHUP", ignoreUntilTheDaemonHandlesIt)
}
