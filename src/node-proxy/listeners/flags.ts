/**
 * The listener limits an operator tunes, as `nodemesh proxy` flags: one
 * table (flag -> place in ListenerLimits, count or duration), so the flag
 * list, its help and its parsing cannot drift apart.
 */
import { parseDurationMs } from '../../api/duration';
import { MeshError } from '../../errors';
import { LISTENER_DEFAULTS, listenerLimits, type ListenerLimits, type ListenerOverrides } from './limits';

type Section = Exclude<keyof ListenerLimits, 'reservedFds'>;

interface FlagSpec {
  section: Section;
  key: string;
  kind: 'count' | 'duration';
  help: string;
}

export const LISTENER_FLAGS: Readonly<Record<string, FlagSpec>> = Object.freeze({
  'tunnel-handshake-timeout': { section: 'tunnel', key: 'handshakeTimeoutMs', kind: 'duration', help: 'cut a 15008 connection whose TLS handshake is not done by then' },
  'max-tunnel-connections': { section: 'tunnel', key: 'maxConnections', kind: 'count', help: 'tunnel (15008) connections open at once' },
  'max-tunnel-connections-per-peer': { section: 'tunnel', key: 'maxConnectionsPerPeer', kind: 'count', help: 'tunnel connections open at once from one address' },
  'max-tunnel-handshakes': { section: 'tunnel', key: 'maxHandshakes', kind: 'count', help: 'TLS handshakes in flight on 15008' },
  'max-tunnel-handshakes-per-peer': { section: 'tunnel', key: 'maxHandshakesPerPeer', kind: 'count', help: 'TLS handshakes in flight on 15008 from one address' },
  'max-tunnel-streams': { section: 'tunnel', key: 'maxStreams', kind: 'count', help: 'tunnel streams (connections to pods) open at once, over every session' },
  'h2-max-concurrent-streams': { section: 'h2', key: 'maxConcurrentStreams', kind: 'count', help: 'HTTP/2 streams per tunnel session' },
  'h2-max-resets-per-second': { section: 'h2', key: 'maxResetsPerSecond', kind: 'count', help: 'streams reset before answering, per session per second, before GOAWAY' },
  'max-outbound-connections': { section: 'outbound', key: 'maxConnections', kind: 'count', help: 'pod connections (15001) open at once' },
  'max-outbound-connections-per-pod': { section: 'outbound', key: 'maxConnectionsPerPeer', kind: 'count', help: 'connections open at once from one pod' },
  'max-http-connections': { section: 'http', key: 'maxConnections', kind: 'count', help: 'connections to metrics (15020) and to health (15021), each' },
  'max-http-connections-per-peer': { section: 'http', key: 'maxConnectionsPerPeer', kind: 'count', help: 'connections to 15020 or 15021 from one address' },
  'http-request-timeout': { section: 'http', key: 'requestTimeoutMs', kind: 'duration', help: 'a whole request to 15020/15021 within this' },
});

function defaultOf(s: FlagSpec): string {
  const v = (LISTENER_DEFAULTS[s.section] as unknown as Record<string, number>)[s.key]!;
  return s.kind === 'duration' ? (v % 1000 === 0 ? `${v / 1000}s` : `${v}ms`) : String(v);
}

/** Options and help for the command definition. */
export function listenerFlagOptions(): { options: Record<string, { type: 'string' }>; help: Record<string, string> } {
  const options: Record<string, { type: 'string' }> = {};
  const help: Record<string, string> = {};
  for (const [flag, s] of Object.entries(LISTENER_FLAGS)) {
    options[flag] = { type: 'string' };
    help[flag] = `${s.help} (default ${defaultOf(s)})`;
  }
  return { options, help };
}

/** Limits from the parsed flags; a bad value throws NM_ERR_USAGE naming the flag and the form it takes, and nothing is applied. */
export function limitsFromFlags(values: Record<string, unknown>, command = 'nodemesh proxy'): Readonly<ListenerLimits> {
  const over: Record<string, Record<string, number>> = {};
  for (const [flag, s] of Object.entries(LISTENER_FLAGS)) {
    const raw = values[flag];
    if (raw === undefined) continue;
    const text = String(raw);
    let n: number | undefined;
    if (s.kind === 'count') n = /^[1-9][0-9]{0,8}$/.test(text) ? Number(text) : undefined;
    else {
      const ms = parseDurationMs(text);
      n = ms !== undefined && ms > 0 ? ms : undefined;
    }
    if (n === undefined) {
      const form = s.kind === 'count' ? 'a whole number from 1 to 999999999' : 'a duration above zero like 500ms, 5s or 1m';
      throw new MeshError('NM_ERR_USAGE', `${command}: --${flag} must be ${form}, not ${JSON.stringify(text)} (default ${defaultOf(s)})`);
    }
    (over[s.section] ??= {})[s.key] = n;
  }
  return listenerLimits(over as ListenerOverrides);
}
