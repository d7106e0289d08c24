/**
 * What the controller process does with an error that no handler caught.
 * Requests never get here (every RPC goes through api/handler.ts, whose
 * boundaries turn any throw into a status); this is the backstop for our own
 * bugs, and it treats the two kinds differently:
 *
 * - unhandledRejection: logged and counted, and the controller keeps serving.
 *   A rejected promise unwound only its own chain; the store commits each
 *   write in one synchronous transaction (all of it or none), and the call
 *   that owned the promise is ended by its deadline. Exiting would turn any
 *   such bug into an outage of every node's config.
 * - uncaughtException: logged, counted and the process exits (code 70). A
 *   synchronous throw out of an event handler may have stopped grpc-js's
 *   transport or the push hub half way through changing their in-memory
 *   state, and pushing config from an inconsistent hub is worse than a
 *   restart: the store is crash-safe and node proxies keep serving their
 *   last good config until the controller is back.
 */
import type { Logger } from '../log';
import type { ControllerMetrics } from './metrics';

/** At most one unhandled-rejection log line per this many milliseconds; the rest are counted. */
export const UNHANDLED_LOG_INTERVAL_MS = 10_000;
/** Exit code after an uncaught exception (EX_SOFTWARE). */
export const UNCAUGHT_EXIT_CODE = 70;

/** Installs the policy on this process; returns the function that removes it. */
export function installProcessPolicy(log: Logger, metrics: ControllerMetrics): () => void {
  let lastLogAt = -Infinity;
  let suppressed = 0;
  const onRejection = (reason: unknown): void => {
    metrics.unhandledErrors.inc({ kind: 'rejection' });
    const now = Date.now();
    if (now - lastLogAt < UNHANDLED_LOG_INTERVAL_MS) {
      suppressed++;
      return;
    }
    lastLogAt = now;
    log.error({ err: reason, suppressedSinceLastLine: suppressed }, 'unhandled promise rejection (a controller bug; still serving: please report it)');
    suppressed = 0;
  };
  const onException = (err: Error): void => {
    metrics.unhandledErrors.inc({ kind: 'exception' });
    log.fatal({ err }, 'uncaught exception (a controller bug; exiting so a restart begins from the store: please report it)');
    const exit = (): never => process.exit(UNCAUGHT_EXIT_CODE);
    setTimeout(exit, 1000);
    log.flush(() => exit());
  };
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);
  return () => {
    process.off('unhandledRejection', onRejection);
    process.off('uncaughtException', onException);
  };
}
