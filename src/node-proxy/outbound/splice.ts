/**
 * Both directions of one proxied connection: bytes with backpressure, a FIN
 * on one side ends the other's direction (half-close), an error or the idle
 * timeout on either side destroys both, and one report once both have
 * closed.
 *
 * Written out rather than as two pipe() calls because an idle connection
 * should cost little: the two pipes and their once() wrappers made about 30
 * closures and a dozen contexts per connection. In a heap snapshot of 800
 * idle connections through the source proxy, each held 14.8 KB of heap, 5.3
 * KB of it closures and contexts. Here the handlers are one object's fields.
 */
import type * as net from 'node:net';
import type { Duplex } from 'node:stream';

import { corkForTurn } from '../coalesce';
import type { FastPair } from '../datapath/fastpath';

export type Upstream = Duplex & { setTimeout?(ms: number): unknown };

/** Longest wait between two looks at the kernel's copy while a FIN or a chunk waits for it to settle. */
const SETTLE_POLL_MAX_MS = 64;

export class Splice {
  readonly #client: net.Socket;
  readonly #upstream: Upstream;
  readonly #done: (reason: string) => void;
  /** A tunnel stream arrives one HTTP/2 DATA frame at a time: its frames of one turn go to the client as one write (../coalesce). */
  readonly #coalesce: boolean;
  #reason = 'closed';
  #open = 2;
  /**
   * The same-node fast path (../datapath/fastpath): the kernel copies the
   * bytes (client = a, upstream = b). What still reaches 'data' (a direction
   * the kernel gave back, a peer gone) and each FIN wait until the kernel's
   * copy that way has reached the other socket, so nothing overtakes it.
   */
  readonly #fast: FastPair | undefined;
  readonly #idleMs: number;
  /** Fast path: bytes this process wrote to each side itself, what waits for the kernel, and the last byte count seen by the idle check. */
  #toUp = 0;
  #toClient = 0;
  #heldUp: Buffer | null = null;
  #heldClient: Buffer | null = null;
  #endUp = false;
  #endClient = false;
  #pollMs = 1;
  #poll: NodeJS.Timeout | undefined;
  #seen = -1;

  /** `done` is called once, after both sides closed, with why it ended ('closed' when neither failed). */
  constructor(client: net.Socket, upstream: Upstream, idleTimeoutMs: number, done: (reason: string) => void, fast?: FastPair) {
    this.#client = client;
    this.#upstream = upstream;
    this.#done = done;
    this.#fast = fast;
    this.#idleMs = idleTimeoutMs;
    this.#coalesce = 'session' in upstream;
    client.on('error', this.#clientError);
    upstream.on('error', this.#upstreamError);
    client.setTimeout(idleTimeoutMs);
    client.on('timeout', this.#idle);
    if (upstream.setTimeout) {
      upstream.setTimeout(idleTimeoutMs);
      upstream.on('timeout', this.#idle);
    }
    client.on('close', this.#closed);
    upstream.on('close', this.#closed);
    client.on('end', this.#clientEnd);
    upstream.on('end', this.#upstreamEnd);
    upstream.on('drain', this.#upstreamDrain);
    client.on('drain', this.#clientDrain);
    // Data that came while the upstream connected is in the client's buffer: the listener takes it first.
    client.on('data', this.#clientData);
    upstream.on('data', this.#upstreamData);
    // A 'data' listener does not restart a stream that was paused (the listener holds the client until it knows where it goes).
    client.resume();
    upstream.resume();
  }

  #clientData = (chunk: Buffer): void => {
    if (this.#fast) {
      if (this.#heldUp || !this.#fast.settled('a', this.#toUp)) return this.#hold('up', chunk);
      this.#toUp += chunk.length;
    }
    if (!this.#upstream.write(chunk)) this.#client.pause();
  };

  #upstreamData = (chunk: Buffer): void => {
    if (this.#fast) {
      if (this.#heldClient || !this.#fast.settled('b', this.#toClient)) return this.#hold('client', chunk);
      this.#toClient += chunk.length;
    }
    if (this.#coalesce) corkForTurn(this.#client);
    if (!this.#client.write(chunk)) this.#upstream.pause();
  };

  #upstreamDrain = (): void => {
    if (!this.#heldUp) this.#client.resume();
  };

  #clientDrain = (): void => {
    if (!this.#heldClient) this.#upstream.resume();
  };

  // A FIN ends the other side's direction only: the other way stays open (both allow half-open).
  #clientEnd = (): void => {
    if (this.#fast && (this.#heldUp || !this.#fast.settled('a', this.#toUp))) {
      this.#endUp = true;
      return this.#schedule();
    }
    this.#upstream.end();
  };

  #upstreamEnd = (): void => {
    if (this.#fast && (this.#heldClient || !this.#fast.settled('b', this.#toClient))) {
      this.#endClient = true;
      return this.#schedule();
    }
    this.#client.end();
  };

  /** Fast path: keeps a chunk (its source paused) until the kernel's copy that way has settled. */
  #hold(to: 'up' | 'client', chunk: Buffer): void {
    if (to === 'up') {
      this.#heldUp = this.#heldUp ? Buffer.concat([this.#heldUp, chunk]) : chunk;
      this.#client.pause();
    } else {
      this.#heldClient = this.#heldClient ? Buffer.concat([this.#heldClient, chunk]) : chunk;
      this.#upstream.pause();
    }
    this.#schedule();
  }

  #schedule(): void {
    if (this.#poll || this.#open === 0) return;
    this.#poll = setTimeout(this.#settle, this.#pollMs);
    this.#pollMs = Math.min(this.#pollMs * 2, SETTLE_POLL_MAX_MS);
  }

  #settle = (): void => {
    this.#poll = undefined;
    const fast = this.#fast!;
    let waiting = false;
    if (this.#heldUp || this.#endUp) {
      if (fast.settled('a', this.#toUp)) {
        const held = this.#heldUp;
        this.#heldUp = null;
        if (held) {
          this.#toUp += held.length;
          if (this.#upstream.write(held)) this.#client.resume();
        }
        if (this.#endUp) {
          this.#endUp = false;
          this.#upstream.end();
        }
      } else waiting = true;
    }
    if (this.#heldClient || this.#endClient) {
      if (fast.settled('b', this.#toClient)) {
        const held = this.#heldClient;
        this.#heldClient = null;
        if (held) {
          this.#toClient += held.length;
          if (this.#client.write(held)) this.#upstream.resume();
        }
        if (this.#endClient) {
          this.#endClient = false;
          this.#client.end();
        }
      } else waiting = true;
    }
    if (waiting) this.#schedule();
    else this.#pollMs = 1;
  };

  #clientError = (err: Error): void => this.#fail('client error', err);
  #upstreamError = (err: Error): void => this.#fail('upstream error', err);
  #idle = (): void => {
    if (this.#fast) {
      // The kernel's copy does not touch the sockets' timers: idle only if it moved nothing either.
      const b = this.#fast.bytes();
      const moved = b.aToB + b.bToA;
      if (moved !== this.#seen) {
        this.#seen = moved;
        this.#client.setTimeout(this.#idleMs);
        this.#upstream.setTimeout?.(this.#idleMs);
        return;
      }
    }
    this.#fail('idle-timeout');
  };

  #fail(why: string, err?: Error): void {
    if (this.#reason === 'closed') this.#reason = err ? `${why}: ${(err as NodeJS.ErrnoException).code ?? err.message}` : why;
    this.#client.destroy();
    this.#upstream.destroy();
  }

  #closed = (): void => {
    if (--this.#open > 0) return;
    if (this.#poll) {
      clearTimeout(this.#poll);
      this.#poll = undefined;
    }
    this.#done(this.#reason);
  };

  /** Cuts both sides now, with the reason the report gives (a policy that now denies it). */
  cut(reason: string): void {
    if (this.#reason === 'closed') this.#reason = reason;
    this.destroy();
  }

  /** Cuts both sides now (a drain deadline). */
  destroy(): void {
    this.#client.destroy();
    this.#upstream.destroy();
  }
}
