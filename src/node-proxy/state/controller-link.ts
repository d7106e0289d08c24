/**
 * The node's link to the controller as a user reads it: connected or not,
 * how many attempts failed in a row and the last error, and what config the
 * node holds meanwhile. Pure: the proxy's /status and `nodemesh status
 * --node` both say it with describeLink().
 */

export interface ControllerLink {
  /** A stream is open and the controller answered on it. */
  connected: boolean;
  /** Streams in a row that ended before they delivered a config. */
  failures: number;
  /** Why the last stream ended ('' when none has failed), and when (unix ms). */
  lastError: string;
  lastErrorUnixMs: number;
  /** When the next attempt starts (0: none is waiting). */
  retryAtUnixMs: number;
}

/** A duration as people read it: 850 ms, 4 s, 12 min, 3 h, 2 d. */
export function formatAge(ms: number): string {
  const m = Math.max(0, ms);
  if (m < 1000) return `${Math.round(m)} ms`;
  if (m < 120_000) return `${Math.round(m / 1000)} s`;
  if (m < 2 * 3_600_000) return `${Math.round(m / 60_000)} min`;
  if (m < 2 * 86_400_000) return `${Math.round(m / 3_600_000)} h`;
  return `${Math.round(m / 86_400_000)} d`;
}

function trouble(link: ControllerLink, now: number): string {
  const parts: string[] = [];
  if (link.failures > 0) parts.push(`${link.failures} attempt${link.failures === 1 ? '' : 's'} failed`);
  if (link.lastError) parts.push(`last error ${formatAge(now - link.lastErrorUnixMs)} ago: ${link.lastError}`);
  if (!link.connected && link.retryAtUnixMs > 0) parts.push(`next attempt in ${formatAge(link.retryAtUnixMs - now)}`);
  return parts.join(', ');
}

/**
 * One line: `not connected (3 attempts failed, last error 2 s ago: 14
 * UNAVAILABLE: …, next attempt in 4 s), holds version 0: no config yet`.
 * `version`: the config version the node holds (0: none).
 */
export function describeLink(link: ControllerLink, version: number, now = Date.now()): string {
  if (link.connected) {
    // Errors from before a stream that delivered are history: shown only while it has not delivered yet.
    const why = link.failures > 0 ? ` (after ${trouble(link, now)})` : '';
    return `connected${why}, holds version ${version}${version === 0 ? ': receiving its first config' : ''}`;
  }
  const why = trouble(link, now) || 'connecting';
  const held = version === 0 ? 'no config yet' : 'serving it until the controller is back (changes made meanwhile have not reached this node)';
  return `not connected (${why}), holds version ${version}: ${held}`;
}
