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
import { forwarded } from '../scavenge';

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
   * bytes (client = a, upstream = b), and each way's leftovers go through a
   * KernelWay (below).
   */
  readonly #fast: FastPair | undefined;
  readonly #up: KernelWay | undefined;
  readonly #down: KernelWay | undefined;
  readonly #idleMs: number;
  #pollMs = 1;
  #poll: NodeJS.Timeout | undefined;
  /** The kernel's byte count at the last idle check. */
  #seen = -1;

  /** `done` is called once, after both sides closed, with why it ended ('closed' when neither failed). */
  constructor(client: net.Socket, upstream: Upstream, idleTimeoutMs: number, done: (reason: string) => void, fast?: FastPair) {
    this.#client = client;
    this.#upstream = upstream;
    this.#done = done;
    this.#fast = fast;
    this.#idleMs = idleTimeoutMs;
    if (fast) {
      this.#up = new KernelWay(fast, 'a', client, upstream);
      this.#down = new KernelWay(fast, 'b', upstream, client);
    }
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
    forwarded(chunk.length);
    if (this.#up) {
      if (!this.#up.data(chunk)) this.#schedule();
      return;
    }
    if (!this.#upstream.write(chunk)) this.#client.pause();
  };

  #upstreamData = (chunk: Buffer): void => {
    forwarded(chunk.length);
    if (this.#down) {
      if (!this.#down.data(chunk)) this.#schedule();
      return;
    }
    if (this.#coalesce) corkForTurn(this.#client);
    if (!this.#client.write(chunk)) this.#upstream.pause();
  };

  #upstreamDrain = (): void => {
    if (!this.#up?.holding) this.#client.resume();
  };

  #clientDrain = (): void => {
    if (!this.#down?.holding) this.#upstream.resume();
  };

  // A FIN ends the other side's direction only: the other way stays open (both allow half-open).
  #clientEnd = (): void => {
    if (this.#up) {
      if (!this.#up.end()) this.#schedule();
      return;
    }
    this.#upstream.end();
  };

  #upstreamEnd = (): void => {
    if (this.#down) {
      if (!this.#down.end()) this.#schedule();
      return;
    }
    this.#client.end();
  };

  /** Fast path: looks again, with a growing pause, while a way waits for the kernel's copy. */
  #schedule(): void {
    if (this.#poll || this.#open === 0) return;
    this.#poll = setTimeout(this.#settle, this.#pollMs);
    this.#pollMs = Math.min(this.#pollMs * 2, SETTLE_POLL_MAX_MS);
  }

  #settle = (): void => {
    this.#poll = undefined;
    const upDone = this.#up!.settle();
    const downDone = this.#down!.settle();
    if (upDone && downDone) this.#pollMs = 1;
    else this.#schedule();
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

/**
 * One way of a fast-path connection, from `src` to `dst`, for what the
 * kernel does not copy itself: a chunk that reached the process (the kernel
 * gave the way back, or the peer is gone) is written only once the kernel's
 * own copy that way has reached `dst` (so it cannot overtake it), and the
 * end of `src` is passed on only once every byte the kernel passed up has
 * been read (a passed-up segment can still wait in the kernel when the FIN
 * is seen: those are read with recv(2) here) and written, and the kernel's
 * copy has settled. Each call says whether the way is clear (true) or waits
 * (false: call settle() again later).
 */
class KernelWay {
  readonly #pair: FastPair;
  readonly #from: 'a' | 'b';
  readonly #src: net.Socket | Upstream;
  readonly #dst: net.Socket | Upstream;
  /** Bytes this process wrote to dst itself. */
  #written = 0;
  #held: Buffer | null = null;
  #ended = false;

  constructor(pair: FastPair, from: 'a' | 'b', src: net.Socket | Upstream, dst: net.Socket | Upstream) {
    this.#pair = pair;
    this.#from = from;
    this.#src = src;
    this.#dst = dst;
  }

  get holding(): boolean {
    return this.#held !== null;
  }

  data(chunk: Buffer): boolean {
    if (this.#held || !this.#pair.settled(this.#from, this.#written)) {
      this.#held = this.#held ? Buffer.concat([this.#held, chunk]) : chunk;
      this.#src.pause();
      return false;
    }
    if (!this.#write(chunk)) this.#src.pause();
    return true;
  }

  end(): boolean {
    this.#ended = true;
    return this.settle();
  }

  settle(): boolean {
    if (this.#ended) {
      // After the end the process no longer reads src: what the kernel passed up since is read here.
      for (let c: Buffer | null; !this.#held && (c = this.#pair.drain(this.#from, this.#src as net.Socket)) !== null; ) this.data(c);
    }
    if (this.#held) {
      if (!this.#pair.settled(this.#from, this.#written)) return false;
      const held = this.#held;
      this.#held = null;
      if (this.#write(held) && !this.#ended) this.#src.resume();
    }
    if (!this.#ended) return true;
    if (this.#pair.unread(this.#from, this.#src as net.Socket) > 0 || !this.#pair.settled(this.#from, this.#written)) return false;
    this.#ended = false;
    this.#dst.end();
    return true;
  }

  #write(chunk: Buffer): boolean {
    this.#written += chunk.length;
    return this.#dst.write(chunk);
  }
}
