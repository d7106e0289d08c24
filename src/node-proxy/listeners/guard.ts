/**
 * The one gate every node proxy listener's sockets pass: admission against
 * the listener's total and per-peer bounds, TLS handshakes in flight with a
 * deadline that destroys the socket, and one shared reporter for every
 * refusal or cut (a counter per listener and reason, and a log line rate
 * limited per listener and reason, because a peer decides how often these
 * happen).
 */
import type * as net from 'node:net';

import type { Logger } from '../../log';
import { AdmissionTable, HandshakeTable, peerKey, RefusalLog } from '../../net';
import { LISTENER_DEFAULTS, type RejectLogLimits, type TcpLimits, type TunnelLimits } from './limits';

/** The metric handles the reporter feeds (prom-client counters and a gauge in ProxyMetrics). */
export interface ListenerMetrics {
  listenerAccepted: { inc(labels: { listener: string }): void };
  listenerRejected: { inc(labels: { listener: string; reason: string }): void };
  listenerOpen: { inc(labels: { listener: string }): void; dec(labels: { listener: string }): void };
}

/**
 * Why a listener refused or cut a connection; the label values of
 * nodemesh_listener_rejected_total{reason}.
 */
export type RejectReason =
  | 'total'
  | 'per-peer'
  | 'handshakes'
  | 'handshakes-per-peer'
  | 'handshake-timeout'
  | 'tls'
  | 'identity'
  | 'revoked'
  | 'streams'
  | 'h2-resets'
  | 'h2-pings'
  | 'h2-settings'
  | 'h2-keepalive'
  | 'h2-headers'
  // A CONNECT's Forwarded header did not parse (tunnel), or named a client the peer may not speak for (inbound).
  | 'forwarded'
  | 'source-address'
  | 'h2-error'
  | 'http-timeout'
  | 'http-bad-request'
  | 'no-origin';

export class ListenerReporter {
  readonly #metrics: ListenerMetrics | undefined;
  readonly #refusals: RefusalLog<string, RejectReason>;

  constructor(opts: { metrics?: ListenerMetrics; log?: Logger; limits?: RejectLogLimits } = {}) {
    this.#metrics = opts.metrics;
    const l = opts.limits ?? LISTENER_DEFAULTS.rejectLog;
    this.#refusals = new RefusalLog({ counter: opts.metrics?.listenerRejected, log: opts.log, linesPerInterval: l.linesPerInterval, intervalMs: l.intervalMs });
  }

  /** Counts by `listener reason`, for status and tests. */
  get counts(): ReadonlyMap<string, number> {
    return this.#refusals.counts;
  }

  accepted(listener: string): void {
    this.#metrics?.listenerAccepted.inc({ listener });
    this.#metrics?.listenerOpen.inc({ listener });
  }

  closed(listener: string): void {
    this.#metrics?.listenerOpen.dec({ listener });
  }

  /** Counted always; logged within the line budget, with how many lines were dropped before it. */
  reject(listener: string, reason: RejectReason, fields: { remote?: string; detail?: string } = {}): void {
    this.#refusals.note(listener, reason, (log, dropped) =>
      log.warn({ event: 'security', listener, reason, remote: fields.remote, detail: fields.detail, ...(dropped ? { suppressed: dropped } : {}) }, 'listener refused or closed a connection'),
    );
  }
}

/** The address of an accepted socket as logs show it, IPv4-mapped IPv6 folded to IPv4 (admission counts by peerKey). */
export function peerAddress(socket: net.Socket): string {
  const a = socket.remoteAddress ?? '';
  return a.startsWith('::ffff:') ? a.slice(7) : a;
}

export class ListenerGuard {
  readonly name: string;
  readonly #table: AdmissionTable;
  readonly #reporter: ListenerReporter;
  /** Sockets this guard destroyed: their later errors are not refusals of their own. */
  readonly #cut = new WeakSet<net.Socket>();

  constructor(name: string, limits: TcpLimits, reporter: ListenerReporter) {
    this.name = name;
    this.#table = new AdmissionTable(limits.maxConnections, limits.maxConnectionsPerPeer);
    this.#reporter = reporter;
  }

  get open(): number {
    return this.#table.size;
  }

  /**
   * Admits an accepted socket under `peer`, or destroys it and reports why.
   * An admitted socket's slot is given back when it closes.
   */
  admit(socket: net.Socket, peer = peerKey(socket.remoteAddress)): boolean {
    const a = this.#table.admit(peer);
    if (!a.admitted) {
      this.cut(socket, a.reason, { remote: peer });
      return false;
    }
    this.#reporter.accepted(this.name);
    socket.once('close', () => {
      this.#table.release(peer);
      this.#reporter.closed(this.name);
    });
    return true;
  }

  reject(reason: RejectReason, fields: { remote?: string; detail?: string } = {}): void {
    this.#reporter.reject(this.name, reason, fields);
  }

  /** Reports and destroys. */
  cut(socket: net.Socket, reason: RejectReason, fields: { remote?: string; detail?: string } = {}): void {
    this.#cut.add(socket);
    this.reject(reason, fields);
    socket.destroy();
  }

  wasCut(socket: net.Socket): boolean {
    return this.#cut.has(socket);
  }
}

/** TLS handshakes in flight on a listener (../../net HandshakeTable), refused and cut under this listener's reasons. */
export class HandshakeGuard {
  readonly #table: HandshakeTable;
  readonly #guard: ListenerGuard;

  constructor(limits: Pick<TunnelLimits, 'maxHandshakes' | 'maxHandshakesPerPeer' | 'handshakeTimeoutMs'>, guard: ListenerGuard) {
    this.#guard = guard;
    this.#table = new HandshakeTable(limits, (raw, peer) => {
      this.#guard.cut(raw, 'handshake-timeout', { remote: peer, detail: `no TLS handshake within ${limits.handshakeTimeoutMs} ms` });
    });
  }

  get inFlight(): number {
    return this.#table.inFlight;
  }

  /** Starts the clock on a raw socket's handshake; false: refused (too many in flight) and destroyed. */
  start(raw: net.Socket, peer = peerKey(raw.remoteAddress)): boolean {
    const a = this.#table.start(raw, peer);
    if (!a.admitted) this.#guard.cut(raw, a.reason === 'total' ? 'handshakes' : 'handshakes-per-peer', { remote: peer });
    return a.admitted;
  }

  /** The handshake finished (or the socket went): its slot is free. Safe twice. */
  done(raw: net.Socket): void {
    this.#table.done(raw);
  }
}
