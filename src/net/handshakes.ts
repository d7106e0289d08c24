/**
 * TLS handshakes in flight on one listener: bounded in total and per peer,
 * each with a deadline. node:tls only reports its own handshakeTimeout and
 * leaves the socket open, so the listener's `onTimeout` decides what a late
 * handshake costs (both listeners destroy the raw socket).
 */
import type * as net from 'node:net';

import { AdmissionTable, type Admission } from './admission';

export interface HandshakeLimits {
  maxHandshakes: number;
  maxHandshakesPerPeer: number;
  handshakeTimeoutMs: number;
}

export class HandshakeTable {
  readonly #table: AdmissionTable;
  readonly #timeoutMs: number;
  readonly #onTimeout: (raw: net.Socket, peer: string) => void;
  readonly #inFlight = new Map<net.Socket, { peer: string; timer: NodeJS.Timeout }>();

  constructor(limits: HandshakeLimits, onTimeout: (raw: net.Socket, peer: string) => void) {
    this.#table = new AdmissionTable(limits.maxHandshakes, limits.maxHandshakesPerPeer);
    this.#timeoutMs = limits.handshakeTimeoutMs;
    this.#onTimeout = onTimeout;
  }

  get inFlight(): number {
    return this.#table.size;
  }

  get timeoutMs(): number {
    return this.#timeoutMs;
  }

  /** Takes a slot for `raw`'s handshake and starts its deadline, or says which bound refused it (the caller refuses the socket). */
  start(raw: net.Socket, peer: string): Admission {
    const a = this.#table.admit(peer);
    if (!a.admitted) return a;
    const timer = setTimeout(() => this.#onTimeout(raw, peer), this.#timeoutMs);
    timer.unref();
    this.#inFlight.set(raw, { peer, timer });
    raw.once('close', () => this.done(raw));
    return a;
  }

  /** The handshake finished (or the socket went): its slot is free and its deadline off. Safe twice. */
  done(raw: net.Socket): void {
    const h = this.#inFlight.get(raw);
    if (!h) return;
    this.#inFlight.delete(raw);
    clearTimeout(h.timer);
    this.#table.release(h.peer);
  }
}
