/**
 * The HBONE tunnel client: a pool of mutual-TLS HTTP/2 sessions to other
 * nodes' proxies (port 15008), one CONNECT stream per proxied connection.
 *
 * A session belongs to one (source identity, node address:port, destination
 * identity, client certificate serial): like ztunnel, streams of different
 * identity pairs never share a TLS connection, and a rotated certificate gets
 * fresh sessions while the old ones drain. The server certificate must chain
 * to the dial's trust bundle and carry exactly the destination identity as its
 * one URI SAN; host names play no part.
 *
 * Each CONNECT carries the pod's address in `Forwarded: for=` (./forwarded),
 * so the destination's policies see the client and not this node.
 *
 * The stream handed out is Node's own ClientHttp2Stream (no wrapper, no
 * per-chunk work). Its errors tell the caller's flow why it ended: the server's
 * RST_STREAM (CONNECT_ERROR when the target reset), or a TunnelError
 * NM_ERR_TUNNEL_BROKEN when the whole tunnel connection went away. The pool
 * keeps an 'error' listener of its own on every stream, so a reset never
 * crashes the process even when the caller listens late.
 */
import { X509Certificate } from 'node:crypto';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import type * as stream from 'node:stream';
import * as tls from 'node:tls';

import { normalizeSerial } from '../../api/identity';
import { MeshError } from '../../errors';
import { FORWARDED_HEADER, formatForwarded } from './forwarded';
import { formatAuthority, HBONE_DEFAULTS, POLICY_HEADER, REASON_HEADER, SecureContextCache } from './server';
import { certificateUris, identityToSni } from './sni';

export type TunnelErrorCode =
  | 'NM_ERR_TUNNEL_TLS' // handshake failed, the server refused our certificate, or presented the wrong identity
  | 'NM_ERR_TUNNEL_REFUSED' // the server answered the CONNECT with a non-200 status (`status`, `reason`)
  | 'NM_ERR_TUNNEL_TIMEOUT' // no tunnel or no answer within timeoutMs
  | 'NM_ERR_TUNNEL_BROKEN' // the node proxy is unreachable, or the tunnel connection died under the stream
  | 'NM_ERR_TUNNEL_BAD_ARGUMENT' // a dial that can never work: identity without an SNI form, bad PEM, bad target
  | 'NM_ERR_TUNNEL_LOCAL'; // this node cannot dial at all: no certificate yet for the source identity, the peer node's address unknown

export class TunnelError extends MeshError {
  declare readonly code: TunnelErrorCode;
  /** The server's `:status` (NM_ERR_TUNNEL_REFUSED). */
  readonly status?: number;
  /** The server's x-nodemesh-reason (NM_ERR_TUNNEL_REFUSED). */
  readonly reason?: string;
  /** The server's x-nodemesh-policy: the policy that refused (NM_ERR_TUNNEL_REFUSED 403). */
  readonly policy?: string;

  constructor(code: TunnelErrorCode, message: string, options?: { status?: number; reason?: string; policy?: string; cause?: unknown }) {
    super(code, message, options);
    if (options?.status !== undefined) this.status = options.status;
    if (options?.reason !== undefined) this.reason = options.reason;
    if (options?.policy !== undefined) this.policy = options.policy;
  }

  /**
   * Whose fault a failed dial is, for what the caller does next: `local`
   * (this node cannot dial: no endpoint is to blame, none is tried instead),
   * `tunnel` (the way to the peer node failed: TLS, a broken or timed-out
   * tunnel), `endpoint` (the peer node's proxy could not reach the target),
   * or `refused` (the destination decided no: a policy, not a failure).
   */
  get blame(): 'local' | 'tunnel' | 'endpoint' | 'refused' {
    switch (this.code) {
      case 'NM_ERR_TUNNEL_LOCAL':
      case 'NM_ERR_TUNNEL_BAD_ARGUMENT':
        return 'local';
      case 'NM_ERR_TUNNEL_REFUSED':
        // 403: a decision; 404/400: the target is not what the destination serves; 502/504: it could not reach it; 503/431: the peer is overloaded or refused the request's form.
        return this.status === 403 ? 'refused' : this.status === 502 || this.status === 504 || this.status === 404 ? 'endpoint' : 'tunnel';
      default:
        return 'tunnel';
    }
  }
}

export interface TunnelDial {
  sourceIdentity: string;
  /** Chain + key presented for that identity. */
  credentials: { certPem: string; keyPem: string };
  trustBundle: string;
  node: { address: string; port: number /* 15008 */ };
  /** Expected SPIFFE ID of the server certificate; also the SNI. */
  destinationIdentity: string;
  target: { host: string; port: number };
  /**
   * The client's address as the pod used it, sent as `Forwarded: for=` so the
   * destination's policies see it (source.ip, ipBlocks); the destination
   * believes it only when it is an address of a `sourceIdentity` workload on
   * the node this tunnel comes from.
   */
  sourceAddress?: string;
  /**
   * The tunnel connection's local address: the node address the controller
   * publishes for this node, which the destination checks the claim against
   * (a multi-homed node could otherwise leave from another one).
   */
  localAddress?: string;
  /** For the whole connect: tunnel setup and the server's answer (default 10 s). */
  timeoutMs?: number;
  /** Whether a certificate serial (normalizeSerial form) is on the revocation list: such a server is refused. */
  revoked?(serial: string): boolean;
}

export const POOL_DEFAULTS = Object.freeze({
  maxStreamsPerConnection: 100,
  idleMs: 60_000,
  /**
   * For an idle session that is not its key's first usable one: a wave of
   * connections opened one session per 100 streams, and each holds its TLS
   * and HTTP/2 state (and the peer's session its own) until it closes.
   */
  surplusIdleMs: 5_000,
  timeoutMs: 10_000,
});

const { NGHTTP2_CANCEL } = http2.constants;
const CACHE_MAX = 256;
const ignore = (): void => {};

interface PooledSession {
  readonly key: string;
  /** "address:port" for messages. */
  readonly node: string;
  readonly destination: string;
  readonly h2: http2.ClientHttp2Session;
  /** CONNECT streams sent and not yet closed. */
  readonly streams: Set<http2.ClientHttp2Stream>;
  /** Streams counted against capacity: open ones plus those being opened. */
  reserved: number;
  capacity: number;
  /** False once it errored, got GOAWAY or is closing: no new streams. */
  usable: boolean;
  /** TCP connected: failures from here on are the handshake's, not reachability's. */
  connected: boolean;
  /** The server's SETTINGS arrived: it accepted our certificate and speaks h2. */
  established: boolean;
  /** Why it broke; streams that die with it get this. */
  failure?: TunnelError;
  /** The server certificate's serial (normalized), once the handshake is done. */
  serverSerial?: string;
  idleTimer?: NodeJS.Timeout;
}

function errName(err: unknown): string {
  if (err && typeof err === 'object') {
    const e = err as NodeJS.ErrnoException;
    return e.code ?? e.message ?? String(err);
  }
  return String(err);
}

function boundedSet<K, V>(m: Map<K, V>, k: K, v: V): void {
  m.set(k, v);
  if (m.size > CACHE_MAX) m.delete(m.keys().next().value!);
}

export class HbonePool {
  readonly #maxStreams: number;
  readonly #idleMs: number;
  readonly #sessions = new Map<string, PooledSession[]>();
  readonly #contexts = new SecureContextCache(CACHE_MAX);
  /** certPem -> serial, and identity -> SNI: looked up per connect, computed once. */
  readonly #serials = new Map<string, string>();
  readonly #snis = new Map<string, string>();
  #sessionCount = 0;
  #streamCount = 0;
  #closed = false;
  readonly #closing = new Set<Promise<void>>();

  readonly #surplusIdleMs: number;

  constructor(opts: { maxStreamsPerConnection?: number; idleMs?: number; surplusIdleMs?: number } = {}) {
    const max = opts.maxStreamsPerConnection ?? POOL_DEFAULTS.maxStreamsPerConnection;
    if (!Number.isSafeInteger(max) || max < 1) {
      throw new TunnelError('NM_ERR_TUNNEL_BAD_ARGUMENT', `hbone: maxStreamsPerConnection must be a positive integer, got ${String(max)}`);
    }
    this.#maxStreams = max;
    this.#idleMs = opts.idleMs ?? POOL_DEFAULTS.idleMs;
    this.#surplusIdleMs = Math.min(this.#idleMs, opts.surplusIdleMs ?? POOL_DEFAULTS.surplusIdleMs);
  }

  stats(): { sessions: number; streams: number } {
    return { sessions: this.#sessionCount, streams: this.#streamCount };
  }

  /**
   * Opens a CONNECT stream to `d.target` through `d.node`; resolves once the
   * server answered 200. Reuses a session of the same key while it has room,
   * opens another when all are full. A stream refused because a reused
   * session had just died is retried once on a fresh one (nothing was sent).
   */
  async connect(d: TunnelDial): Promise<stream.Duplex> {
    const { authority, forwarded } = this.#check(d);
    const sni = this.#sniOf(d.destinationIdentity);
    const key = `${d.sourceIdentity}\n${d.localAddress ?? ''}\n${d.node.address}\n${d.node.port}\n${d.destinationIdentity}\n${this.#serialOf(d.credentials.certPem)}`;
    const deadline = Date.now() + (d.timeoutMs ?? POOL_DEFAULTS.timeoutMs);
    const first = this.#acquire(key, d, sni, deadline);
    try {
      return await this.#request(first.session, d, authority, forwarded, deadline);
    } catch (err) {
      if (!first.reused || !(err instanceof TunnelError) || err.code !== 'NM_ERR_TUNNEL_BROKEN' || first.session.established === false) throw err;
      const again = this.#acquire(key, d, sni, deadline);
      return this.#request(again.session, d, authority, forwarded, deadline);
    }
  }

  /** Cuts every session whose server certificate is now revoked; their streams end with NM_ERR_TUNNEL_TLS. Returns how many. */
  recheck(revoked: (serial: string) => boolean): number {
    let cut = 0;
    for (const list of this.#sessions.values()) {
      for (const s of [...list]) {
        if (s.serverSerial === undefined || !revoked(s.serverSerial)) continue;
        this.#destroy(s, new TunnelError('NM_ERR_TUNNEL_TLS', `hbone: the certificate ${s.serverSerial} of node ${s.node} (${s.destination}) was revoked`));
        cut++;
      }
    }
    return cut;
  }

  /** Closes every session; their open streams end with NM_ERR_TUNNEL_BROKEN. Safe to call twice. */
  async close(): Promise<void> {
    this.#closed = true;
    const err = new TunnelError('NM_ERR_TUNNEL_BROKEN', 'hbone: the tunnel pool was closed (the proxy is shutting down)');
    for (const list of this.#sessions.values()) {
      for (const s of list) this.#destroy(s, err);
    }
    await Promise.all([...this.#closing]);
  }

  #check(d: TunnelDial): { authority: string; forwarded?: string } {
    if (this.#closed) throw new TunnelError('NM_ERR_TUNNEL_BROKEN', 'hbone: the tunnel pool is closed');
    const { node, target } = d;
    if (net.isIP(node.address) === 0 || !Number.isInteger(node.port) || node.port < 1 || node.port > 65535) {
      throw new TunnelError('NM_ERR_TUNNEL_BAD_ARGUMENT', `hbone: node ${JSON.stringify(node)} must be an IP address and a port 1-65535`);
    }
    if (typeof target.host !== 'string' || target.host === '' || !Number.isInteger(target.port) || target.port < 1 || target.port > 65535) {
      throw new TunnelError('NM_ERR_TUNNEL_BAD_ARGUMENT', `hbone: target ${JSON.stringify(target)} must be a host and a port 1-65535`);
    }
    if (d.localAddress !== undefined && net.isIP(d.localAddress) === 0) {
      throw new TunnelError('NM_ERR_TUNNEL_BAD_ARGUMENT', `hbone: localAddress ${JSON.stringify(d.localAddress)} must be an IP address of this node`);
    }
    if (d.sourceAddress === undefined) return { authority: formatAuthority(target) };
    if (net.isIP(d.sourceAddress) === 0 || d.sourceAddress.includes('%')) {
      throw new TunnelError('NM_ERR_TUNNEL_BAD_ARGUMENT', `hbone: sourceAddress ${JSON.stringify(d.sourceAddress)} must be the client's IP address (no zone, no port)`);
    }
    return { authority: formatAuthority(target), forwarded: formatForwarded(d.sourceAddress) };
  }

  #sniOf(identity: string): string {
    let sni = this.#snis.get(identity);
    if (sni === undefined) {
      try {
        sni = identityToSni(identity);
      } catch (err) {
        throw new TunnelError('NM_ERR_TUNNEL_BAD_ARGUMENT', (err as Error).message, { cause: err });
      }
      boundedSet(this.#snis, identity, sni);
    }
    return sni;
  }

  #serialOf(certPem: string): string {
    let serial = this.#serials.get(certPem);
    if (serial === undefined) {
      try {
        serial = normalizeSerial(new X509Certificate(certPem).serialNumber);
      } catch (err) {
        throw new TunnelError('NM_ERR_TUNNEL_BAD_ARGUMENT', `hbone: credentials.certPem is not a PEM certificate chain: ${errName(err)}`, { cause: err });
      }
      boundedSet(this.#serials, certPem, serial);
    }
    return serial;
  }

  /** A session with room for one more stream (the slot is taken now, so concurrent connects count it). */
  #acquire(key: string, d: TunnelDial, sni: string, deadline: number): { session: PooledSession; reused: boolean } {
    const list = this.#sessions.get(key);
    if (list) {
      for (const s of list) {
        if (s.usable && s.reserved < s.capacity) {
          this.#take(s);
          return { session: s, reused: true };
        }
      }
    }
    const s = this.#open(key, d, sni, deadline);
    if (list) list.push(s);
    else this.#sessions.set(key, [s]);
    this.#take(s);
    return { session: s, reused: false };
  }

  #take(s: PooledSession): void {
    s.reserved++;
    if (s.idleTimer) {
      clearTimeout(s.idleTimer);
      s.idleTimer = undefined;
    }
    if (s.reserved === 1) s.h2.ref();
  }

  #release(s: PooledSession): void {
    s.reserved--;
    if (s.reserved > 0 || !s.usable) return;
    // An idle session must not keep the process alive, and goes after idleMs; one beside its key's first usable session, after surplusIdleMs.
    s.h2.unref();
    const first = this.#sessions.get(s.key)?.find((x) => x.usable);
    s.idleTimer = setTimeout(() => this.#retire(s), first === s ? this.#idleMs : this.#surplusIdleMs);
    s.idleTimer.unref();
  }

  /** No new streams; closes once the open ones are done. */
  #retire(s: PooledSession): void {
    if (!s.usable) return;
    s.usable = false;
    if (!s.h2.closed && !s.h2.destroyed) s.h2.close();
  }

  #destroy(s: PooledSession, err: TunnelError): void {
    s.usable = false;
    s.failure ??= err;
    this.#failStreams(s);
    if (!s.h2.destroyed) s.h2.destroy();
  }

  /** Node would end a dead session's streams without an error (or a bare ECONNRESET); the caller's flow must learn why. */
  #failStreams(s: PooledSession): void {
    for (const st of s.streams) if (!st.destroyed && !(st.readableEnded && st.writableFinished)) st.destroy(s.failure);
  }

  #open(key: string, d: TunnelDial, sni: string, deadline: number): PooledSession {
    let ctx: tls.SecureContext;
    try {
      ctx = this.#contexts.get(d.trustBundle, d.credentials.certPem, d.credentials.keyPem);
    } catch (err) {
      throw new TunnelError('NM_ERR_TUNNEL_BAD_ARGUMENT', (err as Error).message, { cause: err });
    }
    const node = formatAuthority({ host: d.node.address, port: d.node.port });
    const expected = d.destinationIdentity;
    // noDelay reaches net.Socket.connect at runtime; @types/node does not list it for tls.connect.
    const options: tls.ConnectionOptions & { noDelay: boolean } = {
      host: d.node.address,
      port: d.node.port,
      ...(d.localAddress !== undefined ? { localAddress: d.localAddress } : {}),
      servername: sni,
      secureContext: ctx,
      ALPNProtocols: ['h2'],
      rejectUnauthorized: true,
      noDelay: true,
      // The chain was verified against the bundle already; what matters is who it names, not a host name.
      checkServerIdentity: (_host, cert) => {
        const serial = normalizeSerial(cert.serialNumber);
        if (d.revoked?.(serial)) {
          return new TunnelError('NM_ERR_TUNNEL_TLS', `hbone: node ${node} presented certificate ${serial} for ${expected}, which is revoked (its node was revoked)`);
        }
        s.serverSerial = serial;
        const uris = certificateUris(cert.raw);
        if (uris.length === 1 && uris[0] === expected) return undefined;
        return new TunnelError(
          'NM_ERR_TUNNEL_TLS',
          `hbone: node ${node} presented ${uris.length ? uris.join(', ') : 'no URI SAN'} instead of ${expected} (it does not run that workload, or routes a stale endpoint)`,
        );
      },
    };
    const socket = tls.connect(options);
    // Registered before http2's own socket listeners (http2.connect below adds them), so the
    // cause is known, and handed to the open streams, before Node ends them without one.
    let s!: PooledSession;
    socket.once('connect', () => {
      s.connected = true;
    });
    socket.once('secureConnect', () => {
      if (socket.alpnProtocol !== 'h2') {
        socket.destroy(new TunnelError('NM_ERR_TUNNEL_TLS', `hbone: node ${node} did not negotiate ALPN h2 (is port ${d.node.port} an HBONE port?)`));
      }
    });
    socket.on('error', (err: Error) => {
      s.usable = false;
      s.failure ??= this.#classify(s, err);
      this.#failStreams(s);
    });
    socket.once('close', () => {
      s.usable = false;
      s.failure ??= s.established
        ? new TunnelError('NM_ERR_TUNNEL_BROKEN', `hbone: the tunnel to node ${node} (${expected}) closed under the stream (the node proxy restarted or the network dropped)`)
        : new TunnelError(
            'NM_ERR_TUNNEL_TLS',
            `hbone: node ${node} closed the connection during the TLS/HTTP2 setup: it did not accept our certificate for ${d.sourceIdentity} (check that its trust bundle holds our CA and the certificate has not expired)`,
          );
      this.#failStreams(s);
    });
    const h2 = http2.connect(`https://${node}`, {
      createConnection: () => socket,
      settings: { initialWindowSize: HBONE_DEFAULTS.streamWindow, enablePush: false },
      maxSessionMemory: HBONE_DEFAULTS.maxSessionMemoryMb,
    });
    s = {
      key,
      node,
      destination: expected,
      h2,
      streams: new Set(),
      reserved: 0,
      capacity: this.#maxStreams,
      usable: true,
      connected: false,
      established: false,
    };
    this.#sessionCount++;

    const setupTimer = setTimeout(() => {
      if (s.established) return;
      socket.destroy(
        new TunnelError(
          'NM_ERR_TUNNEL_TIMEOUT',
          `hbone: no tunnel to node ${node} within ${d.timeoutMs ?? POOL_DEFAULTS.timeoutMs} ms (maybe a NetworkPolicy or firewall blocks HBONE port ${d.node.port})`,
        ),
      );
    }, Math.max(0, deadline - Date.now()));
    setupTimer.unref();

    h2.on('error', (err: Error) => {
      s.usable = false;
      s.failure ??= this.#classify(s, err);
    });
    // The server's SETTINGS are the first sign it accepted our certificate (TLS 1.3 clients finish the handshake before the server checks it).
    h2.on('remoteSettings', (settings) => {
      s.established = true;
      clearTimeout(setupTimer);
      if (settings.maxConcurrentStreams !== undefined) s.capacity = Math.max(1, Math.min(this.#maxStreams, settings.maxConcurrentStreams));
    });
    h2.once('connect', () => {
      try {
        h2.setLocalWindowSize(HBONE_DEFAULTS.sessionWindow);
      } catch {
        // already gone; 'close' cleans up
      }
    });
    h2.on('goaway', () => {
      s.usable = false;
    });
    let closed!: () => void;
    const closing = new Promise<void>((resolve) => (closed = resolve));
    this.#closing.add(closing);
    h2.once('close', () => {
      clearTimeout(setupTimer);
      if (s.idleTimer) clearTimeout(s.idleTimer);
      s.usable = false;
      const list = this.#sessions.get(key);
      if (list) {
        const i = list.indexOf(s);
        if (i !== -1) list.splice(i, 1);
        if (list.length === 0) this.#sessions.delete(key);
      }
      this.#sessionCount--;
      this.#closing.delete(closing);
      closed();
    });
    return s;
  }

  #classify(s: PooledSession, err: unknown): TunnelError {
    if (err instanceof TunnelError) return err;
    const code = errName(err);
    if (s.established) {
      return new TunnelError('NM_ERR_TUNNEL_BROKEN', `hbone: the tunnel to node ${s.node} (${s.destination}) failed: ${code}`, { cause: err });
    }
    if (!s.connected) {
      return new TunnelError(
        'NM_ERR_TUNNEL_BROKEN',
        `hbone: cannot reach the node proxy at ${s.node}: ${code} (is it running, and is HBONE port 15008 open between the nodes?)`,
        { cause: err },
      );
    }
    return new TunnelError(
      'NM_ERR_TUNNEL_TLS',
      `hbone: mutual TLS with node ${s.node} (${s.destination}) failed: ${code} (check both trust bundles, certificate validity and the server's identity)`,
      { cause: err },
    );
  }

  /**
   * Counts the stream until it closes. Its own function: a listener made in
   * #request would keep that call's whole scope (the dial, its credentials
   * and callbacks, the answer's handlers) for as long as the stream lives.
   */
  #track(s: PooledSession, req: http2.ClientHttp2Stream): void {
    s.streams.add(req);
    this.#streamCount++;
    req.on('error', ignore);
    req.once('close', () => {
      s.streams.delete(req);
      this.#streamCount--;
      this.#release(s);
    });
  }

  #request(s: PooledSession, d: TunnelDial, authority: string, forwarded: string | undefined, deadline: number): Promise<stream.Duplex> {
    return new Promise((resolve, reject) => {
      let req: http2.ClientHttp2Stream;
      try {
        const headers: http2.OutgoingHttpHeaders = { ':method': 'CONNECT', ':authority': authority };
        if (forwarded !== undefined) headers[FORWARDED_HEADER] = forwarded;
        req = s.h2.request(headers, { endStream: false });
      } catch (err) {
        this.#release(s);
        s.usable = false;
        reject(s.failure ?? this.#classify(s, err));
        return;
      }
      this.#track(s, req);

      let settled = false;
      const finish = (err?: TunnelError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        req.off('response', onResponse);
        req.off('error', onError);
        req.off('close', onClose);
        if (!err) {
          resolve(req);
          return;
        }
        if (!req.destroyed) req.close(NGHTTP2_CANCEL);
        reject(err);
      };
      const onResponse = (headers: http2.IncomingHttpHeaders): void => {
        const status = Number(headers[':status']);
        if (status === 200) {
          finish();
          return;
        }
        const one = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v.join(', ') : v);
        const reason = one(headers[REASON_HEADER]);
        const policy = one(headers[POLICY_HEADER]);
        finish(
          new TunnelError(
            'NM_ERR_TUNNEL_REFUSED',
            `hbone: node ${s.node} refused CONNECT ${authority} from ${d.sourceIdentity} with ${status}${reason ? `: ${reason}` : ''}${policy ? ` (${policy})` : ''}`,
            { status, reason, ...(policy ? { policy } : {}) },
          ),
        );
      };
      const onError = (err: Error): void => finish(s.failure ?? this.#classify(s, err));
      const onClose = (): void =>
        finish(
          s.failure ??
            new TunnelError('NM_ERR_TUNNEL_BROKEN', `hbone: node ${s.node} reset CONNECT ${authority} before answering (code ${req.rstCode})`),
        );
      const timer = setTimeout(
        () =>
          finish(
            s.failure ??
              new TunnelError(
                'NM_ERR_TUNNEL_TIMEOUT',
                s.established
                  ? `hbone: node ${s.node} did not answer CONNECT ${authority} within ${d.timeoutMs ?? POOL_DEFAULTS.timeoutMs} ms`
                  : `hbone: no tunnel to node ${s.node} within ${d.timeoutMs ?? POOL_DEFAULTS.timeoutMs} ms (maybe a NetworkPolicy or firewall blocks HBONE port ${d.node.port})`,
              ),
          ),
        Math.max(0, deadline - Date.now()),
      );
      req.once('response', onResponse);
      req.on('error', onError);
      req.once('close', onClose);
    });
  }
}
