/**
 * The bounds on the controller's two listeners, in one place. 15010 is
 * reachable by anyone who can route to the controller (a joining node has no
 * certificate yet, so TLS asks for one but does not require it): every
 * resource a connection can hold before it proves anything is bounded here.
 */
import { MeshError } from '../../errors';

export interface ListenerLimits {
  /** A connection must finish the TLS handshake within this. */
  handshakeTimeoutMs: number;
  /** TLS handshakes in progress at once, in total and from one peer; more are refused until some finish. */
  maxHandshakes: number;
  maxHandshakesPerPeer: number;
  /** Open connections to 15010 (clamped to what RLIMIT_NOFILE leaves, see connectionBudget). */
  maxConnections: number;
  /** Open connections to 15010 from one peer (one address). */
  maxConnectionsPerPeer: number;
  /** A session with no call in progress for this long is closed (also one that never sends a call). */
  idleTimeoutMs: number;
  /** SETTINGS_MAX_CONCURRENT_STREAMS: calls in progress on one session. */
  maxConcurrentStreams: number;
  /** nghttp2's per-session memory cap, MB (grpc-js leaves it unlimited by default). */
  maxSessionMemoryMb: number;
  /** PING frames a client may send: sustained per second, and burst. */
  pingsPerSecond: number;
  pingBurst: number;
  /** SETTINGS frames a client may send: sustained per second, and burst. */
  settingsPerSecond: number;
  settingsBurst: number;
  /** Streams a client may reset (RST_STREAM) or see refused: sustained per second, and burst. */
  resetsPerSecond: number;
  resetBurst: number;
  /** 15014: open connections, per peer, and how long a request may take to arrive. */
  metricsMaxConnections: number;
  metricsMaxConnectionsPerPeer: number;
  metricsHeadersTimeoutMs: number;
  metricsRequestTimeoutMs: number;
  metricsIdleTimeoutMs: number;
  /** One log line per listener and reason per this interval; the rest are counted in it. */
  refusalLogIntervalMs: number;
}

/**
 * Why these numbers:
 * - A node proxy holds one connection (one grpc-js channel carries its config
 *   stream and its certificate calls), each from its own node address; the
 *   CLI holds one per command. 64 per peer leaves room for a host running many
 *   commands at once, and a flood from one address takes 64 slots of 16,384.
 *   Nodes behind one NAT address share the per-peer bound: raise
 *   --max-connections-per-peer to at least their number there.
 * - Handshakes: a real client finishes in milliseconds; 10 s covers a slow
 *   link. 128 in flight is far above what thousands of nodes reconnecting
 *   after a controller restart need at once (clients back off and retry);
 *   8 per peer keeps one address from taking them all with silent sockets
 *   (a node has one handshake at a time).
 * - Idle: grpc-js clients reconnect on the next call, so closing a session
 *   with no call in progress costs a handshake; a node's config stream is
 *   always in progress, so it is never idle.
 * - Floods: grpc-js clients send a handful of SETTINGS and keepalive PINGs a
 *   minute and reset a stream only when a call is cancelled; the budgets are
 *   orders of magnitude above that and far below a flood (CVE-2023-44487).
 */
export const LISTENER_DEFAULTS: Readonly<ListenerLimits> = Object.freeze({
  handshakeTimeoutMs: 10_000,
  maxHandshakes: 128,
  maxHandshakesPerPeer: 8,
  maxConnections: 16_384,
  maxConnectionsPerPeer: 64,
  idleTimeoutMs: 60_000,
  maxConcurrentStreams: 100,
  maxSessionMemoryMb: 32,
  pingsPerSecond: 10,
  pingBurst: 100,
  settingsPerSecond: 10,
  settingsBurst: 100,
  resetsPerSecond: 50,
  resetBurst: 200,
  metricsMaxConnections: 64,
  metricsMaxConnectionsPerPeer: 16,
  metricsHeadersTimeoutMs: 10_000,
  metricsRequestTimeoutMs: 15_000,
  metricsIdleTimeoutMs: 30_000,
  refusalLogIntervalMs: 10_000,
});

/** File descriptors kept free of both listeners: the store (database, WAL, journal), the CA and credential files, the log, DNS. */
export const FD_RESERVE = 128;

export class ListenerLimitError extends MeshError {}

/** Checks a partial set of limits (flags, options) and fills the rest from the defaults. Unknown keys and non-positive integers are errors. */
export function parseListenerLimits(raw: Partial<Record<string, unknown>> = {}): Readonly<ListenerLimits> {
  const out: Record<string, number> = { ...LISTENER_DEFAULTS };
  for (const [k, v] of Object.entries(raw)) {
    if (v === undefined) continue;
    if (!(k in LISTENER_DEFAULTS)) throw new ListenerLimitError('NM_ERR_USAGE', `unknown listener limit "${k}" (known: ${Object.keys(LISTENER_DEFAULTS).join(', ')})`);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw new ListenerLimitError('NM_ERR_USAGE', `listener limit ${k} must be a positive integer, got ${JSON.stringify(v)}`);
    out[k] = v;
  }
  if (out.metricsHeadersTimeoutMs! > out.metricsRequestTimeoutMs!)
    throw new ListenerLimitError('NM_ERR_USAGE', `metricsHeadersTimeoutMs (${out.metricsHeadersTimeoutMs}) must not exceed metricsRequestTimeoutMs (${out.metricsRequestTimeoutMs}): headers are part of the request`);
  return Object.freeze(out as unknown as ListenerLimits);
}

/**
 * How many connections 15010 may hold given the process's file descriptor
 * limit: the configured bound, or what is left under the soft RLIMIT_NOFILE
 * after 15014's connections and the reserve, whichever is lower. Never so
 * many that accept() fails with EMFILE and the store cannot open a file.
 * `nofile` is readOpenFileLimit() (../../net).
 */
export function connectionBudget(limits: ListenerLimits, nofile: number | undefined): { maxConnections: number; clamped: boolean } {
  if (nofile === undefined) return { maxConnections: limits.maxConnections, clamped: false };
  const room = nofile - FD_RESERVE - limits.metricsMaxConnections;
  const max = Math.max(1, Math.min(limits.maxConnections, room));
  return { maxConnections: max, clamped: max < limits.maxConnections };
}
