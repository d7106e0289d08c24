/**
 * The same-node fast path (docs/architecture.md, 'The same-node fast path').
 * After the outbound listener has authorized a plaintext connection between
 * two pods of this node, it hands the copying to the kernel: both of the
 * proxy's sockets go into a sockhash (bpf/fastpath.bpf.c) whose sk_skb
 * verdict program puts each segment one socket receives straight on the
 * other's send queue. The proxy keeps both sockets open and reading: it still
 * sees every FIN, RST, error and timeout, and does half-close and the flow's
 * close as before; it just never touches the bytes.
 *
 * Three things make the handover exact:
 *  - join() only takes sockets with nothing buffered in the process (bytes a
 *    server wrote first are written on before it); bytes that reached a
 *    socket's receive queue before it joined are pushed through the verdict
 *    at once (kickReceive), not left for the next segment.
 *  - The kernel's copy is asynchronous (a work item per socket sends what the
 *    verdict queued). So a FIN is passed on only once every byte the verdict
 *    took from one side has reached the other's send queue: settled() compares
 *    the verdict's count with what the socket ever queued (tcpQueued()).
 *  - A segment for a socket whose peer is gone is passed up to the proxy,
 *    which writes it as any other (../../outbound/splice does).
 *
 * The maps are not pinned and belong to this process: a proxy that exits (or
 * is killed) takes them and the attached program with it, and its sockets are
 * closed by the kernel anyway. Nothing stale stays on the node.
 */
import type * as net from 'node:net';

import { abi, kickReceive, loadObject, recvInto, scalar, socketCookie, socketFd, tcpQueued, type BpfMap, type BpfObject } from '../../bpf';
import { bpfObjectPath } from '../../paths';

/** Why a connection was not joined (counted as nodemesh_fastpath_fallback_total{reason}). */
export type FastPathFallback = 'no-fd' | 'buffered' | 'full' | 'error';

export interface FastPathStats {
  joined: number;
  /** Connections closed after a direction went back to the proxy (NM_FP_MAX_PENDING). */
  proxied: number;
  fallback: Record<FastPathFallback, number>;
}

export interface FastPairBytes {
  aToB: number;
  bToA: number;
  /** A direction passed NM_FP_MAX_PENDING (a slow reader) and went back to the proxy's copy. */
  proxied: boolean;
}

/** One connection in the fast path: the two sockets the proxy holds, as a and b. */
export class FastPair {
  readonly #fp: FastPath;
  readonly #a: bigint;
  readonly #b: bigint;
  /** The sockets themselves, not their fds: a closed socket's fd number can belong to another by the next look. */
  readonly #sockA: net.Socket;
  readonly #sockB: net.Socket;
  /** What each side had queued to send before it joined (the process's own writes). */
  readonly #baseA: bigint;
  readonly #baseB: bigint;
  /** What the process had read from each side when it joined, and read with drain() since. */
  readonly #readBaseA: number;
  readonly #readBaseB: number;
  #drainedA = 0;
  #drainedB = 0;
  #left = false;

  /** @internal FastPath.join() makes them. */
  constructor(fp: FastPath, a: bigint, b: bigint, sockA: net.Socket, sockB: net.Socket, baseA: bigint, baseB: bigint) {
    this.#fp = fp;
    this.#a = a;
    this.#b = b;
    this.#sockA = sockA;
    this.#sockB = sockB;
    this.#baseA = baseA;
    this.#baseB = baseB;
    this.#readBaseA = sockA.bytesRead;
    this.#readBaseB = sockB.bytesRead;
  }

  /** Bytes the kernel has copied so far from a to b, and from b to a; `proxied` when a direction went back to the proxy. */
  bytes(): FastPairBytes {
    const a = this.#fp.entry(this.#a);
    const b = this.#fp.entry(this.#b);
    return { aToB: a ? Number(a.bytes) : 0, bToA: b ? Number(b.bytes) : 0, proxied: (((a?.flags ?? 0) | (b?.flags ?? 0)) & abi.FP_PROXIED) !== 0 };
  }

  /**
   * Whether every byte the kernel took from `from` ('a' or 'b') is on the
   * other socket's send queue, so a FIN written there now comes after them.
   * `written` is what the process itself wrote to that socket since joining.
   * True once the other socket is closed (nothing more can reach it).
   */
  settled(from: 'a' | 'b', written: number): boolean {
    const [src, to, base] = from === 'a' ? [this.#a, this.#sockB, this.#baseB] : [this.#b, this.#sockA, this.#baseA];
    const fd = to.destroyed ? -1 : socketFd(to);
    if (fd < 0) return true;
    let queued: bigint;
    try {
      queued = tcpQueued(fd);
    } catch {
      return true;
    }
    const e = this.#fp.entry(src);
    return queued - base >= (e ? e.bytes : 0n) + BigInt(written);
  }

  /**
   * Bytes the kernel passed up to the process from `from`'s socket that the
   * process has not read yet (after that socket's end, drain() reads them).
   */
  unread(from: 'a' | 'b', sock: net.Socket): number {
    const e = this.#fp.entry(from === 'a' ? this.#a : this.#b);
    const read = from === 'a' ? sock.bytesRead - this.#readBaseA + this.#drainedA : sock.bytesRead - this.#readBaseB + this.#drainedB;
    return e ? Number(e.passed) - read : 0;
  }

  /**
   * Reads (recv(2), not blocking) what the kernel passed up to `from`'s
   * socket after the process saw its end: null when nothing is owed or
   * nothing has arrived yet.
   */
  drain(from: 'a' | 'b', sock: net.Socket): Buffer | null {
    const owed = this.unread(from, sock);
    const fd = owed > 0 && !sock.destroyed ? socketFd(sock) : -1;
    if (fd < 0) return null;
    const buf = Buffer.allocUnsafe(Math.min(owed, 64 * 1024));
    const n = recvInto(fd, buf);
    if (n <= 0) return null;
    if (from === 'a') this.#drainedA += n;
    else this.#drainedB += n;
    return buf.subarray(0, n);
  }

  /**
   * Forgets the pair once both sockets closed (the kernel took them out of the
   * sockhash itself) and returns, once, the bytes each way that the sockets'
   * own counters do not show (the kernel's copy and what drain() read);
   * later calls return zeros.
   */
  leave(): FastPairBytes {
    if (this.#left) return { aToB: 0, bToA: 0, proxied: false };
    this.#left = true;
    const bytes = this.bytes();
    this.#fp.forget(this.#a, this.#b, bytes.proxied);
    // What drain() read never reached the sockets' own counters either.
    return { aToB: bytes.aToB + this.#drainedA, bToA: bytes.bToA + this.#drainedB, proxied: bytes.proxied };
  }
}

export class FastPath {
  readonly #obj: BpfObject;
  readonly #socks: BpfMap<bigint, bigint>;
  readonly #pairs: BpfMap<bigint, { peer: bigint; bytes: bigint; passed: bigint; base_seq: number; flags: number }>;
  readonly #stats: FastPathStats = { joined: 0, proxied: 0, fallback: { 'no-fd': 0, buffered: 0, full: 0, error: 0 } };
  #open = 0;

  private constructor(obj: BpfObject) {
    this.#obj = obj;
    this.#socks = obj.map('nm_fp_socks', { key: scalar('u64'), value: scalar('u64') });
    this.#pairs = obj.map('nm_fp_pairs', { key: scalar('u64'), value: abi.FastPathPair });
  }

  /**
   * Loads bpf/fastpath.bpf.o and attaches its verdict to the sockhash. Throws
   * a BpfError naming what the kernel lacks (sockmap, sk_skb programs:
   * CONFIG_BPF_STREAM_PARSER) when it cannot.
   */
  static open(opts: { maxPendingBytes?: number } = {}): FastPath {
    const obj = loadObject(bpfObjectPath('fastpath'), opts.maxPendingBytes ? { globals: { max_pending: opts.maxPendingBytes } } : {});
    try {
      obj.attachToMap('nm_fp_verdict', 'nm_fp_socks');
      return new FastPath(obj);
    } catch (err) {
      obj.close();
      throw err;
    }
  }

  /** The kernel ids of the sockhash and the pairs map (for bpftool, and the test that they go with the process). */
  mapIds(): number[] {
    return [this.#socks.info.id, this.#pairs.info.id];
  }

  /** Connections in the fast path now. */
  get open(): number {
    return this.#open;
  }

  stats(): Readonly<FastPathStats> {
    return this.#stats;
  }

  /**
   * Hands both sockets to the kernel, or says why not. Call it before either
   * socket is read (the client paused since accept, the upstream just
   * connected): bytes the upstream already read are written to the client
   * first, and a socket with bytes still waiting to be written is refused
   * ('buffered'), since the kernel's copy would overtake them.
   */
  join(a: net.Socket, b: net.Socket): FastPair | FastPathFallback {
    const r = this.#join(a, b);
    if (typeof r === 'string') this.#stats.fallback[r]++;
    else {
      this.#stats.joined++;
      this.#open++;
    }
    return r;
  }

  #join(a: net.Socket, b: net.Socket): FastPair | FastPathFallback {
    const fdA = socketFd(a);
    const fdB = socketFd(b);
    if (fdA < 0 || fdB < 0) return 'no-fd';
    for (const [from, to] of [[a, b], [b, a]] as const) {
      // What the process read already is written on first (a server that speaks first).
      for (let chunk: Buffer | null; (chunk = from.read() as Buffer | null) !== null; ) to.write(chunk);
    }
    if (a.writableLength > 0 || b.writableLength > 0 || a.readableLength > 0 || b.readableLength > 0) return 'buffered';
    if (this.#open * 2 + 2 > abi.FP_MAX_SOCKETS) return 'full';
    let ca: bigint;
    let cb: bigint;
    let baseA: bigint;
    let baseB: bigint;
    try {
      ca = socketCookie(fdA);
      cb = socketCookie(fdB);
      baseA = tcpQueued(fdA);
      baseB = tcpQueued(fdB);
    } catch {
      return 'error';
    }
    try {
      this.#pairs.set(ca, { peer: cb, bytes: 0n, passed: 0n, base_seq: 0, flags: 0 }, 'noexist');
      this.#pairs.set(cb, { peer: ca, bytes: 0n, passed: 0n, base_seq: 0, flags: 0 }, 'noexist');
    } catch {
      this.#pairs.delete(ca);
      this.#pairs.delete(cb);
      return 'full';
    }
    // From the first insert on, that socket's segments go through the verdict: to its peer once
    // the peer is in too, up to the proxy for good if one comes before (the verdict then leaves
    // that direction to the proxy). The upstream goes in first: the pod's socket, whose bytes are
    // the first to flow, finds its peer there. A socket that joined is never taken out while open
    // (that would drop what the verdict queued for the proxy).
    try {
      this.#socks.set(cb, BigInt(fdB));
      this.#socks.set(ca, BigInt(fdA));
    } catch {
      this.#pairs.delete(ca);
      this.#pairs.delete(cb);
      return 'error';
    }
    try {
      kickReceive(fdA);
      kickReceive(fdB);
    } catch {
      // Closed meanwhile: its close reaches the splice as usual.
    }
    return new FastPair(this, ca, cb, a, b, baseA, baseB);
  }

  /** @internal one direction's entry, by its source socket's cookie. */
  entry(c: bigint): { bytes: bigint; passed: bigint; flags: number } | undefined {
    return this.#pairs.get(c);
  }

  /** @internal */
  forget(a: bigint, b: bigint, proxied: boolean): void {
    if (proxied) this.#stats.proxied++;
    this.#pairs.delete(a);
    this.#pairs.delete(b);
    this.#open--;
  }

  /** Releases the maps and the program (connections still joined stop being copied: close them first). */
  close(): void {
    this.#socks.close();
    this.#pairs.close();
    this.#obj.close();
  }
}
