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
import { AdmissionTable, LineBudget } from './admission';
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
  | 'h2-error'
  | 'http-timeout'
  | 'http-bad-request'
  | 'no-origin';

export class ListenerReporter {
  readonly #metrics: ListenerMetrics | undefined;
  readonly #log: Logger | undefined;
  readonly #lines: LineBudget;
  /** Counts by `listener reason`, for status and tests. */
  readonly counts = new Map<string, number>();

  constructor(opts: { metrics?: ListenerMetrics; log?: Logger; limits?: RejectLogLimits } = {}) {
    this.#metrics = opts.metrics;
    this.#log = opts.log;
    const l = opts.limits ?? LISTENER_DEFAULTS.rejectLog;
    this.#lines = new LineBudget(l.linesPerInterval, l.intervalMs);
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
    const key = `${listener} ${reason}`;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
    this.#metrics?.listenerRejected.inc({ listener, reason });
    if (!this.#log) return;
    const { write, dropped } = this.#lines.take(key, Date.now());
    if (!write) return;
    this.#log.warn({ event: 'security', listener, reason, remote: fields.remote, detail: fields.detail, ...(dropped ? { suppressed: dropped } : {}) }, 'listener refused or closed a connection');
  }
}

/** The peer key of an accepted socket: its address, IPv4-mapped IPv6 folded to IPv4. */
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
  admit(socket: net.Socket, peer = peerAddress(socket)): boolean {
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

/**
 * TLS handshakes in flight: bounded in total and per address, each with a
 * deadline after which the raw socket is destroyed (node:tls only reports
 * its own handshakeTimeout; the socket stays open).
 */
export class HandshakeGuard {
  readonly #table: AdmissionTable;
  readonly #timeoutMs: number;
  readonly #guard: ListenerGuard;
  readonly #inFlight = new Map<net.Socket, { peer: string; timer: NodeJS.Timeout }>();

  constructor(limits: Pick<TunnelLimits, 'maxHandshakes' | 'maxHandshakesPerPeer' | 'handshakeTimeoutMs'>, guard: ListenerGuard) {
    this.#table = new AdmissionTable(limits.maxHandshakes, limits.maxHandshakesPerPeer);
    this.#timeoutMs = limits.handshakeTimeoutMs;
    this.#guard = guard;
  }

  get inFlight(): number {
    return this.#table.size;
  }

  /** Starts the clock on a raw socket's handshake; false: refused (too many in flight) and destroyed. */
  start(raw: net.Socket, peer = peerAddress(raw)): boolean {
    const a = this.#table.admit(peer);
    if (!a.admitted) {
      this.#guard.cut(raw, a.reason === 'total' ? 'handshakes' : 'handshakes-per-peer', { remote: peer });
      return false;
    }
    const timer = setTimeout(() => {
      this.#guard.cut(raw, 'handshake-timeout', { remote: peer, detail: `no TLS handshake within ${this.#timeoutMs} ms` });
    }, this.#timeoutMs);
    timer.unref();
    this.#inFlight.set(raw, { peer, timer });
    raw.once('close', () => this.done(raw));
    return true;
  }

  /** The handshake finished (or the socket went): its slot is free. Safe twice. */
  done(raw: net.Socket): void {
    const h = this.#inFlight.get(raw);
    if (!h) return;
    this.#inFlight.delete(raw);
    clearTimeout(h.timer);
    this.#table.release(h.peer);
  }
}
