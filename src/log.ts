/**
 * The one pino root logger of a process; components take children
 * (`{component: 'controller'}`) and connections children of those. Keys and
 * certificates are redacted wherever they appear under these names.
 */
import pino from 'pino';

export type Logger = pino.Logger;

export function createLogger(opts: { level?: string; name?: string; destination?: pino.DestinationStream } = {}): Logger {
  return pino(
    {
      level: opts.level ?? process.env.NODEMESH_LOG_LEVEL ?? 'info',
      name: opts.name ?? 'nodemesh',
      redact: { paths: ['key', 'keyPem', 'privateKey', 'token', '*.key', '*.keyPem', '*.privateKey', '*.token'], censor: '[redacted]' },
      base: { pid: process.pid },
    },
    opts.destination ?? pino.destination({ dest: 2, sync: false }),
  );
}

/** A logger that drops everything (tests, library use). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
