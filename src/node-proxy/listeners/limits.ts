/**
 * Every bound the node proxy's listeners hold, in one place: what a peer can
 * keep open (connections, TLS handshakes in flight, HTTP/2 streams) and for
 * how long, and how fast an HTTP/2 peer may reset streams, ping or send
 * SETTINGS before its session is closed. `nodemesh proxy` exposes the ones an
 * operator would tune as flags (see ./flags).
 *
 * The numbers follow what the mesh's peers do: ztunnel advertises 200 streams
 * and a 64 KiB header list; Envoy closes a session whose streams are mostly
 * reset before they answer; nghttp2 (under node:http2) keeps its own reset
 * bucket (1000 burst, 33/s) as a backstop behind ours. A CONNECT carries three
 * or four headers, so the header bounds sit far below what HTTP servers allow.
 */

export interface TcpLimits {
  /** Connections open at once on this listener. */
  maxConnections: number;
  /** Connections open at once from one peer (one address, see peerKey; the source pod on 15001). */
  maxConnectionsPerPeer: number;
}

export interface TunnelLimits extends TcpLimits {
  /** A TLS handshake not finished within this is cut. */
  handshakeTimeoutMs: number;
  /** TLS handshakes in flight at once (unauthenticated peers: these are all they can hold). */
  maxHandshakes: number;
  /** TLS handshakes in flight at once from one address. */
  maxHandshakesPerPeer: number;
  /** Tunnel streams (each holds one connection to a pod) open at once, over every session. */
  maxStreams: number;
}

export interface H2Limits {
  /** SETTINGS_MAX_CONCURRENT_STREAMS per session. */
  maxConcurrentStreams: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE: bytes of one header block, decoded. */
  maxHeaderListSize: number;
  /** Header fields in one block. */
  maxHeaderListPairs: number;
  /** Entries in one SETTINGS frame. */
  maxSettings: number;
  /** PINGs this side sent and not yet acknowledged. */
  maxOutstandingPings: number;
  /** Invalid frames before the session is destroyed. */
  maxSessionInvalidFrames: number;
  /** Streams refused (over the concurrency limit) before the session is destroyed. */
  maxSessionRejectedStreams: number;
  /** Streams the peer reset (or that closed) before they were answered, per second, before GOAWAY ENHANCE_YOUR_CALM. */
  maxResetsPerSecond: number;
  /** PING frames from the peer per second. */
  maxPingsPerSecond: number;
  /** SETTINGS frames from the peer per second. */
  maxSettingsPerSecond: number;
  /** After any GOAWAY this side sent for abuse, the socket is destroyed this much later (time to flush the GOAWAY). */
  goawayGraceMs: number;
  /** A PING every this often; a session whose peer does not answer within keepaliveTimeoutMs is destroyed (it also catches a session nghttp2 stopped reading). */
  keepaliveIntervalMs: number;
  keepaliveTimeoutMs: number;
}

export interface HttpLimits extends TcpLimits {
  /** Whole request head (request line and headers) within this. */
  headersTimeoutMs: number;
  /** Whole request (head and body) within this. */
  requestTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs: number;
  /** A connection with no bytes either way for this long is closed (a follower of /flows opts out). */
  idleTimeoutMs: number;
  maxHeadersCount: number;
  /** Bytes of one request head. */
  maxHeaderSize: number;
  maxRequestsPerSocket: number;
}

export interface RejectLogLimits {
  /** Log lines per (listener, reason) per interval; the rest are counted and reported with the next line. */
  linesPerInterval: number;
  intervalMs: number;
}

export interface ListenerLimits {
  outbound: TcpLimits & { connectTimeoutMs: number; idleTimeoutMs: number };
  tunnel: TunnelLimits;
  h2: H2Limits;
  /** 15020 and 15021: reachable from every pod and peer. */
  http: HttpLimits;
  /** 15000 (loopback) and its unix socket. */
  admin: HttpLimits;
  rejectLog: RejectLogLimits;
  /** File descriptors kept free of every listener's worst case: the controller stream, tunnels out, BPF maps, logs. */
  reservedFds: number;
}

const HTTP_BASE = {
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5_000,
  idleTimeoutMs: 30_000,
  maxHeadersCount: 64,
  maxHeaderSize: 16 * 1024,
  maxRequestsPerSocket: 1_000,
} as const;

function deepFreeze<T>(o: T): Readonly<T> {
  for (const v of Object.values(o as object)) if (v && typeof v === 'object') deepFreeze(v);
  return Object.freeze(o);
}

export const LISTENER_DEFAULTS: Readonly<ListenerLimits> = deepFreeze({
  outbound: { maxConnections: 4_096, maxConnectionsPerPeer: 1_024, connectTimeoutMs: 5_000, idleTimeoutMs: 3_600_000 },
  tunnel: {
    handshakeTimeoutMs: 5_000,
    maxConnections: 1_024,
    // One session per (source identity, destination identity) pair of two nodes, more past 100 streams.
    maxConnectionsPerPeer: 512,
    maxHandshakes: 128,
    maxHandshakesPerPeer: 16,
    maxStreams: 4_096,
  },
  h2: {
    maxConcurrentStreams: 100,
    maxHeaderListSize: 8 * 1024,
    maxHeaderListPairs: 16,
    maxSettings: 16,
    maxOutstandingPings: 4,
    maxSessionInvalidFrames: 16,
    maxSessionRejectedStreams: 32,
    maxResetsPerSecond: 100,
    maxPingsPerSecond: 20,
    maxSettingsPerSecond: 20,
    goawayGraceMs: 1_000,
    keepaliveIntervalMs: 30_000,
    keepaliveTimeoutMs: 10_000,
  },
  http: { ...HTTP_BASE, maxConnections: 64, maxConnectionsPerPeer: 8 },
  admin: { ...HTTP_BASE, maxConnections: 64, maxConnectionsPerPeer: 64 },
  rejectLog: { linesPerInterval: 5, intervalMs: 10_000 },
  reservedFds: 1_024,
});

/** A partial override, as flags and tests give it. */
export type ListenerOverrides = { [K in keyof ListenerLimits]?: ListenerLimits[K] extends object ? Partial<ListenerLimits[K]> : ListenerLimits[K] };

export function listenerLimits(over: ListenerOverrides = {}): Readonly<ListenerLimits> {
  const out = {} as Record<string, unknown>;
  for (const [k, v] of Object.entries(LISTENER_DEFAULTS)) {
    const o = (over as Record<string, unknown>)[k];
    out[k] = v && typeof v === 'object' ? { ...v, ...(o as object | undefined) } : (o ?? v);
  }
  return deepFreeze(out as unknown as ListenerLimits);
}

/**
 * File descriptors each listener can make the process hold at its limits.
 * `unauthenticated` is what a peer with no mesh certificate can reach: TLS
 * handshakes in flight on 15008, 15020/15021 and the outbound listener (two
 * descriptors a connection: the pod's and the upstream).
 */
export function fdBudget(l: ListenerLimits): { unauthenticated: number; total: number; parts: Record<string, number> } {
  const parts = {
    outbound: 2 * l.outbound.maxConnections,
    tunnelHandshakes: l.tunnel.maxHandshakes,
    tunnelSessions: l.tunnel.maxConnections,
    tunnelStreams: l.tunnel.maxStreams,
    metricsAndHealth: 2 * l.http.maxConnections,
    admin: 2 * l.admin.maxConnections,
    reserved: l.reservedFds,
  };
  const unauthenticated = parts.outbound + parts.tunnelHandshakes + parts.metricsAndHealth;
  const total = Object.values(parts).reduce((a, b) => a + b, 0);
  return { unauthenticated, total, parts };
}

/** Why these limits cannot hold within `fdLimit` descriptors, or undefined when they can. */
export function fdBudgetProblem(l: ListenerLimits, fdLimit: number): string | undefined {
  const b = fdBudget(l);
  if (b.total <= fdLimit) return undefined;
  const parts = Object.entries(b.parts)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  return (
    `the listener limits can hold ${b.total} file descriptors (${parts}) but the process may open only ${fdLimit} (RLIMIT_NOFILE): ` +
    `raise the limit (ulimit -n ${b.total}, or LimitNOFILE= in the unit) or lower --max-outbound-connections, --max-tunnel-connections, --max-tunnel-streams or --max-tunnel-handshakes`
  );
}
