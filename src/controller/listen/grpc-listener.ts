/**
 * 15010 with the sockets owned here rather than by grpc-js: a net.Server
 * admits each TCP connection (per peer, in total, handshakes in flight), a
 * non-listening tls.Server runs the handshake under our deadline, and only a
 * connection that finished TLS with ALPN h2 is handed to grpc-js through its
 * connection injector. grpc-js then sees a TLSSocket, so callers'
 * certificates reach the handlers as before (auth.ts).
 *
 * HTTP/2 floods: each session's first stream (Node's
 * `http2.server.stream.created` channel) attaches budgets for PING, SETTINGS
 * and reset streams; a session over one is closed with ENHANCE_YOUR_CALM.
 * A session that never opens a stream holds nothing past grpc-js's idle
 * timeout (grpc.max_connection_idle_ms).
 */
import * as dc from 'node:diagnostics_channel';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';

import * as grpc from '@grpc/grpc-js';

import type { Logger } from '../../log';
import { AdmissionTable, HandshakeTable, peerKey, RateBudget } from '../../net';
import { ADMISSION_REFUSAL, type Refusal } from './admission';
import type { ListenerLimits } from './limits';
import type { Refusals } from './refusals';

export interface ListenerGauges {
  connections: { set(labels: { listener: 'grpc' | 'metrics' }, n: number): void };
  handshakes: { set(labels: { listener: 'grpc' | 'metrics' }, n: number): void };
}

export interface GrpcListenerOptions {
  server: grpc.Server;
  host: string;
  port: number;
  tls: { ca: string; cert: string; key: string };
  limits: ListenerLimits;
  /** The total bound after the file descriptor budget (connectionBudget). */
  maxConnections: number;
  refusals: Refusals;
  gauges: ListenerGauges;
  log: Logger;
}

export interface GrpcListener {
  port: number;
  /** Stops accepting, asks sessions to finish (GOAWAY), and destroys what is left after `graceMs`. */
  close(graceMs?: number): Promise<void>;
}

interface Conn {
  peer: string;
  address: string;
  raw: net.Socket;
  tls?: tls.TLSSocket;
  handshaking: boolean;
  timedOut: boolean;
  /** Budgets, made at the session's first stream. */
  guard?: { pings: RateBudget; settings: RateBudget; resets: RateBudget };
  cut: boolean;
}

/** Set on the TLSSocket handed to grpc-js; read back through `stream.session.socket`. */
const CONN = Symbol('nodemesh.controller.conn');
const tupleKey = (s: { remoteAddress?: string; remotePort?: number }): string => `${s.remoteAddress ?? '?'}|${s.remotePort ?? 0}`;

/** Sessions of every live listener in this process, found from a stream's session socket. */
const streamCreated = dc.channel('http2.server.stream.created');
const guards = new Set<(stream: http2.ServerHttp2Stream) => void>();
function onStreamCreated(message: unknown): void {
  const stream = (message as { stream?: http2.ServerHttp2Stream }).stream;
  if (stream) for (const g of guards) g(stream);
}

export async function listenGrpc(opts: GrpcListenerOptions): Promise<GrpcListener> {
  const { limits, refusals, gauges } = opts;
  const table = new AdmissionTable(opts.maxConnections, limits.maxConnectionsPerPeer);
  const conns = new Set<Conn>();
  const byTuple = new Map<string, Conn>();
  const handshakes = new HandshakeTable(limits, (raw) => {
    const c = byTuple.get(tupleKey(raw));
    if (c) c.timedOut = true;
    refusals.note('grpc', 'handshake_timeout', c?.address ?? raw.remoteAddress ?? 'unknown');
    raw.destroy();
  });
  const report = (): void => {
    gauges.connections.set({ listener: 'grpc' }, table.size);
    gauges.handshakes.set({ listener: 'grpc' }, handshakes.inFlight);
  };
  const injector = opts.server.createConnectionInjector(grpc.ServerCredentials.createInsecure());

  const tlsServer = new tls.Server({
    ca: opts.tls.ca,
    cert: opts.tls.cert,
    key: opts.tls.key,
    // Ask for a certificate, do not require one: a joining node has only its token.
    requestCert: true,
    rejectUnauthorized: false,
    ALPNProtocols: ['h2'],
    minVersion: 'TLSv1.2',
    // Ours below decides; this one only backs it up.
    handshakeTimeout: limits.handshakeTimeoutMs * 2,
  });

  const handshakeEnded = (c: Conn): void => {
    if (!c.handshaking) return;
    c.handshaking = false;
    handshakes.done(c.raw);
    report();
  };

  tlsServer.on('tlsClientError', (err: Error, s: tls.TLSSocket) => {
    const c = byTuple.get(tupleKey(s));
    const code = (err as NodeJS.ErrnoException).code;
    // A client that hangs up mid-handshake was not refused: only count what we ended.
    if (c && !c.timedOut && code !== 'ECONNRESET' && code !== 'EPIPE') refusals.note('grpc', 'handshake_failed', c.address, code ?? err.message);
    s.destroy();
    c?.raw.destroy();
  });

  tlsServer.on('secureConnection', (s: tls.TLSSocket) => {
    const c = byTuple.get(tupleKey(s));
    if (!c || c.raw.destroyed) {
      s.destroy();
      return;
    }
    handshakeEnded(c);
    if (s.alpnProtocol !== 'h2') {
      refusals.note('grpc', 'not_h2', c.address);
      s.destroy();
      c.raw.destroy();
      return;
    }
    s.on('error', () => {});
    c.tls = s;
    (s as unknown as Record<symbol, Conn>)[CONN] = c;
    injector.injectConnection(s);
  });

  const cut = (c: Conn, reason: Refusal, session: http2.Http2Session): void => {
    if (c.cut) return;
    c.cut = true;
    refusals.note('grpc', reason, c.address);
    try {
      session.destroy(undefined, http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
    } catch {
      // already destroyed
    }
    // A client that does not read would keep the GOAWAY queued: the socket goes regardless.
    setTimeout(() => c.raw.destroy(), 1000).unref();
  };

  const guard = (stream: http2.ServerHttp2Stream): void => {
    const session = stream.session;
    const c = session ? ((session.socket as unknown as Record<symbol, Conn | undefined>)[CONN]) : undefined;
    if (!c || !session || !conns.has(c)) return;
    if (!c.guard) {
      const g = {
        pings: new RateBudget(limits.pingsPerSecond, limits.pingBurst),
        settings: new RateBudget(limits.settingsPerSecond, limits.settingsBurst),
        resets: new RateBudget(limits.resetsPerSecond, limits.resetBurst),
      };
      c.guard = g;
      session.on('ping', () => {
        if (!g.pings.take()) cut(c, 'ping_flood', session);
      });
      session.on('remoteSettings', () => {
        if (!g.settings.take()) cut(c, 'settings_flood', session);
      });
    }
    const g = c.guard;
    stream.once('close', () => {
      if (stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR && !g.resets.take()) cut(c, 'reset_flood', session);
    });
  };

  const netServer = net.createServer({ pauseOnConnect: false }, (raw) => {
    const address = raw.remoteAddress ?? 'unknown';
    const peer = peerKey(raw.remoteAddress);
    // Connections first, then handshakes in flight: the order the reasons were always checked in.
    const a = table.admit(peer);
    let refused: Refusal | undefined = a.admitted ? undefined : ADMISSION_REFUSAL[a.reason];
    if (!refused && !handshakes.start(raw, peer).admitted) {
      table.release(peer);
      refused = 'handshake_limit';
    }
    if (refused) {
      refusals.note('grpc', refused, address);
      raw.on('error', () => {});
      raw.destroy();
      return;
    }
    const c: Conn = { peer, address, raw, handshaking: true, timedOut: false, cut: false };
    conns.add(c);
    const key = tupleKey(raw);
    byTuple.set(key, c);
    report();
    raw.on('error', () => {});
    raw.once('close', () => {
      handshakeEnded(c);
      c.tls?.destroy();
      conns.delete(c);
      byTuple.delete(key);
      table.release(peer);
      report();
    });
    tlsServer.emit('connection', raw);
  });
  // Accept failures (EMFILE under someone else's descriptors) must not end the process.
  netServer.on('error', (err) => opts.log.error({ component: 'controller-listener', err: err.message }, 'gRPC listener error'));

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    netServer.once('error', onError);
    netServer.listen({ host: opts.host, port: opts.port }, () => {
      netServer.off('error', onError);
      resolve();
    });
  });
  guards.add(guard);
  if (guards.size === 1) streamCreated.subscribe(onStreamCreated);
  report();

  return {
    port: (netServer.address() as net.AddressInfo).port,
    close: async (graceMs = 5000) => {
      guards.delete(guard);
      if (guards.size === 0) streamCreated.unsubscribe(onStreamCreated);
      const closed = new Promise<void>((resolve) => netServer.close(() => resolve()));
      injector.drain(graceMs);
      for (const c of conns) if (!c.tls) c.raw.destroy();
      const deadline = setTimeout(() => {
        for (const c of conns) c.raw.destroy();
      }, graceMs);
      deadline.unref();
      await closed;
      clearTimeout(deadline);
      injector.destroy();
    },
  };
}
