/**
 * The HBONE tunnel server (port 15008), as Istio's ztunnel speaks it:
 * mutual TLS 1.3 with ALPN "h2", then one HTTP/2 CONNECT stream per proxied
 * TCP connection, `:authority` naming the destination `ip:port`.
 *
 * Per TLS connection: the client's SNI names the destination workload
 * (see ./sni), which picks the certificate presented; the client certificate
 * must chain to the trust bundle and carry exactly one URI SAN, a SPIFFE ID,
 * which becomes the stream's source principal. Per stream: authorize (a value,
 * never an exception), dial the target, answer 200, then pipe both ways with
 * backpressure and half-close (END_STREAM <-> FIN); resets map both ways
 * (RST_STREAM CONNECT_ERROR <-> TCP RST), as RFC 9113 §8.5 asks of a proxy.
 *
 * An accepted decision may instead carry a local handler (`handle`, a
 * StreamHandler): then nothing is dialed; the server answers 200 and hands
 * the stream to the handler, which reports its own figures through finish().
 * This is the hook for L7 at the destination (HTTP routing and L7
 * authorization take the CONNECT stream themselves); nothing uses it yet.
 * Either way each stream gets one 'decided' and one 'closed' event and the
 * same idle timeout (see docs/architecture.md, 'One connection, end to end').
 *
 * Node verifies client certificates in JavaScript after the handshake, so a
 * certificate from another CA, or expired, gets no TLS alert: the connection
 * is closed right after a handshake the TLS 1.3 client already considers
 * done. A missing certificate, TLS <= 1.2 and a non-h2 ALPN offer do get
 * alerts.
 *
 * Before any of that, every accepted socket passes the listener guard
 * (../listeners): connections and handshakes in flight bounded in total and
 * per address, a handshake deadline that destroys the socket; each session is
 * watched for reset, PING and SETTINGS floods and keepalive; streams are
 * bounded per session and over all sessions.
 */
import type { X509Certificate } from 'node:crypto';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';

import { formatHostPort } from '../../api/address';
import { normalizeSerial, parseSpiffeId } from '../../api/identity';
import { MeshError } from '../../errors';
import { peerKey } from '../../net';
import { corkForTurn } from '../coalesce';
import { guardSession, h2SessionOptions, HandshakeGuard, headerListSize, ListenerGuard, ListenerReporter, LISTENER_DEFAULTS, peerAddress, type ListenerLimits } from '../listeners';
import { forwarded } from '../scavenge';
import { FORWARDED_HEADER, parseForwarded } from './forwarded';
import { certificateUris, sniToIdentity } from './sni';

export interface TunnelPeer {
  /** The client's one SPIFFE URI. */
  principal: string;
  certificate: X509Certificate;
  /** The tunnel connection's TCP source as Node reports it (IPv4-mapped on a dual-stack listener): the peer node, not the pod. */
  remoteAddress: string;
}

export interface InboundRequest {
  peer: TunnelPeer;
  target: { host: string; port: number };
  /** The HTTP/2 stream id, unique per tunnel connection; for flows. */
  streamId: number;
  /**
   * The client address the peer claims in its `Forwarded: for=` header
   * (./forwarded), undefined when it sent none. A claim only: authorize()
   * decides whether this peer may make it.
   */
  claimedSource?: string;
}

/** A refusal's why: a stable reason and, for a policy's decision, the policy (namespace/name). */
export interface Refusal {
  reason: string;
  policy?: string;
}

/**
 * Reports a handed-off stream done: called once by the handler, with its own
 * counts (bytesIn: tunnel -> handler, bytesOut: handler -> tunnel); a second
 * call is ignored.
 */
export type StreamFinish = (closeReason: string, bytesIn: number, bytesOut: number) => void;

/**
 * Takes an accepted CONNECT stream instead of the server dialing its target.
 * Called after the 200 went out, so `stream` is the tunnel's byte stream:
 * write and end() (END_STREAM) it, close(code) resets it; it is typed as the
 * HTTP/2 stream so a handler can read `rstCode` and reset with a code, as the
 * dial path does. The handler must call finish() once it is done with the
 * stream; if it has not within idleTimeoutMs of the stream closing, the server
 * reports the stream closed itself (reason `handler-unfinished`, 0 bytes).
 * A throw, or a returned promise that rejects, resets the stream with
 * INTERNAL_ERROR and closes it with reason `handler-failed: ...`.
 */
export type StreamHandler = (stream: http2.ServerHttp2Stream, req: InboundRequest, finish: StreamFinish) => void | Promise<void>;

/** `handle` on an accepted decision: the stream goes to that local handler, nothing is dialed. */
export type InboundDecision = { accept: true; handle?: StreamHandler } | ({ accept: false; status: 403 | 404 | 502 | 503 } & Refusal);

export interface InboundStreamEvent {
  req: InboundRequest;
  decision: InboundDecision;
  /** Tunnel -> target (or handler) bytes; set on 'closed'. */
  bytesIn?: number;
  /** Target (or handler) -> tunnel bytes; set on 'closed'. */
  bytesOut?: number;
  closeReason?: string;
  phase: 'decided' | 'closed';
}

export interface HboneServerOptions {
  /** PEM trust bundle; called per handshake so rotation takes effect. */
  trustBundle(): string;
  /** Whether a certificate serial (normalizeSerial form) is on the revocation list; called per handshake and by recheck(). */
  revoked?(serial: string): boolean;
  /** The certificate (chain PEM) and key this node presents for a destination identity named by SNI; undefined -> handshake refused. */
  serverCertificate(identity: string): { certPem: string; keyPem: string } | undefined;
  /** Decide per CONNECT (after the peer was verified); accepted, the module then dials target and pipes, or hands the stream to the decision's `handle`. */
  authorize(req: InboundRequest): InboundDecision | Promise<InboundDecision>;
  /**
   * Dial the target (default net.connect). The socket should allow half-open
   * (`allowHalfOpen: true`), or the target's FIN also ends the client's direction.
   */
  dial?(target: { host: string; port: number }, req: InboundRequest): net.Socket;
  /**
   * Every CONNECT that parsed into an InboundRequest gets one 'decided' and
   * then one 'closed' event. Malformed requests (405, 400: a bad
   * `:authority` or `Forwarded`) get neither.
   * Exceptions thrown here are ignored: an observer must not break a stream.
   */
  onStream?(e: InboundStreamEvent): void;
  /** A connection refused before any stream: bad TLS, no or bad identity, no h2. */
  onConnectionRefused?(e: { remoteAddress?: string; reason: string }): void;
  /** Dialing the target; 504 after it (default 5 s). */
  connectTimeoutMs?: number;
  /** A stream with no bytes either way for this long is cut (handed-off streams too); a tunnel connection with no frames is closed (default 1 h). */
  idleTimeoutMs?: number;
  /** SETTINGS_MAX_CONCURRENT_STREAMS per tunnel connection (default: limits.h2.maxConcurrentStreams). */
  maxConcurrentStreams?: number;
  /** Connection, handshake, stream and HTTP/2 bounds (default LISTENER_DEFAULTS; see ../listeners). */
  limits?: Pick<ListenerLimits, 'tunnel' | 'h2'>;
  /** Where refusals and cuts are counted and logged, rate limited (default: counted only). */
  reporter?: ListenerReporter;
}

export const HBONE_DEFAULTS = Object.freeze({
  port: 15008,
  connectTimeoutMs: 5_000,
  idleTimeoutMs: 3_600_000,
  /** Per-stream HTTP/2 receive window: enough for ~1 Gbit/s at sub-millisecond RTT without letting one stalled stream buffer much. */
  streamWindow: 1 << 20,
  /** Per-connection receive window, shared by its streams. */
  sessionWindow: 16 << 20,
  /** nghttp2's per-session memory cap in MB (Node's default, 10, is below one full connection window). */
  maxSessionMemoryMb: 64,
});

/** The response header carrying why a CONNECT was not answered 200. */
export const REASON_HEADER = 'x-nodemesh-reason';
/** The policy (namespace/name) that refused a CONNECT, when one did. */
export const POLICY_HEADER = 'x-nodemesh-policy';

const { NGHTTP2_CANCEL, NGHTTP2_CONNECT_ERROR, NGHTTP2_INTERNAL_ERROR, NGHTTP2_NO_ERROR } = http2.constants;
const PEM_CERT = '-----BEGIN CERTIFICATE-----';
const HOSTNAME_RE = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const PORT_RE = /^[0-9]{1,5}$/;
const ignore = (): void => {};
/** One function for every stream's target socket, not a closure each. */
const countForwarded = (chunk: Buffer): void => forwarded(chunk.length);

function errName(err: unknown): string {
  if (err && typeof err === 'object') {
    const e = err as NodeJS.ErrnoException;
    return e.code ?? e.message ?? String(err);
  }
  return String(err);
}

/** `host:port` or `[v6]:port` -> target; undefined when malformed. Exported for the table test and the client. */
export function parseAuthority(authority: unknown): { host: string; port: number } | undefined {
  if (typeof authority !== 'string') return undefined;
  const colon = authority.lastIndexOf(':');
  if (colon <= 0) return undefined;
  const portText = authority.slice(colon + 1);
  if (!PORT_RE.test(portText)) return undefined;
  const port = Number(portText);
  if (port < 1 || port > 65535) return undefined;
  const host = authority.slice(0, colon);
  if (host.startsWith('[')) {
    const v6 = host.endsWith(']') ? host.slice(1, -1) : '';
    return net.isIPv6(v6) ? { host: v6, port } : undefined;
  }
  return net.isIPv4(host) || (HOSTNAME_RE.test(host) && !host.includes(':')) ? { host, port } : undefined;
}

/** The CONNECT `:authority` for a target (IPv6 in brackets). */
export function formatAuthority(target: { host: string; port: number }): string {
  return formatHostPort(target.host, target.port);
}

/**
 * SecureContexts by (trust bundle, chain, key) content, so a handshake never
 * re-parses PEM it has seen; a rotated bundle or certificate is new content
 * and gets a new context. Bounded: the oldest entry goes first.
 */
export class SecureContextCache {
  readonly #max: number;
  readonly #byContent = new Map<string, tls.SecureContext>();

  constructor(max = 64) {
    this.#max = max;
  }

  /** Throws MeshError NM_ERR_TUNNEL_BAD_CREDENTIALS when the PEM does not load. */
  get(trustBundle: string, certPem: string, keyPem: string): tls.SecureContext {
    const key = `${trustBundle}\0${certPem}\0${keyPem}`;
    let ctx = this.#byContent.get(key);
    if (ctx) return ctx;
    // An empty `ca` makes Node fall back to its public root store: never let that happen on the mesh's own port.
    if (typeof trustBundle !== 'string' || !trustBundle.includes(PEM_CERT)) {
      throw new MeshError('NM_ERR_TUNNEL_BAD_CREDENTIALS', 'hbone: the trust bundle holds no PEM certificate (push the mesh root before opening tunnels)');
    }
    try {
      ctx = tls.createSecureContext({ ca: trustBundle, cert: certPem, key: keyPem, minVersion: 'TLSv1.3' });
    } catch (err) {
      throw new MeshError(
        'NM_ERR_TUNNEL_BAD_CREDENTIALS',
        `hbone: cannot load the certificate, key or trust bundle: ${errName(err)} (pass PEM, with the key matching the first certificate)`,
        { cause: err },
      );
    }
    this.#byContent.set(key, ctx);
    if (this.#byContent.size > this.#max) this.#byContent.delete(this.#byContent.keys().next().value!);
    return ctx;
  }
}

/** Header values are visible-ASCII; a reason is for humans, so it is also kept short. */
function headerSafe(reason: string): string {
  return String(reason).replace(/[^\x20-\x7e]/g, '?').slice(0, 256);
}

function respond(stream: http2.ServerHttp2Stream, headers: http2.OutgoingHttpHeaders, endStream: boolean): boolean {
  if (stream.destroyed || stream.closed || stream.headersSent) return false;
  try {
    stream.respond(headers, { endStream });
    return true;
  } catch {
    return false;
  }
}

function isPromise<T>(v: T | Promise<T>): v is Promise<T> {
  return typeof (v as Promise<T> | undefined)?.then === 'function';
}

export class HboneServer {
  readonly #o: HboneServerOptions;
  readonly #tls: tls.Server;
  readonly #connectTimeout: number;
  readonly #idleTimeout: number;
  readonly #contexts = new SecureContextCache();
  /** Raw accepted sockets, so close() can cut handshakes in progress too. */
  readonly #sockets = new Set<net.Socket>();
  readonly #sessions = new Set<http2.ServerHttp2Session>();
  /** Whose each session is, so recheck() can cut a peer revoked after its handshake. */
  readonly #peerOf = new WeakMap<http2.ServerHttp2Session, TunnelPeer>();
  readonly #limits: Pick<ListenerLimits, 'tunnel' | 'h2'>;
  readonly #sessionOptions: http2.ServerSessionOptions;
  readonly #guard: ListenerGuard;
  readonly #handshakes: HandshakeGuard;
  /** Streams open over every session (each holds a connection to a pod). */
  #streams = 0;
  /** Each spliced stream's request and how to cut it, so reauthorize() can ask again when policies change. */
  readonly #spliced = new Map<InboundRequest, (reason: string) => void>();
  /** Counts reauthorize() calls: a stream decided before the latest one and spliced after it is asked again at splice. */
  #generation = 0;
  readonly #decidedIn = new WeakMap<InboundRequest, number>();
  /** The peer address of each accepted socket, read at accept: a destroyed socket no longer says. */
  readonly #peers = new WeakMap<net.Socket, string>();
  #closing: Promise<void> | undefined;
  #drainUntil = Infinity;

  constructor(opts: HboneServerOptions) {
    this.#o = opts;
    this.#connectTimeout = opts.connectTimeoutMs ?? HBONE_DEFAULTS.connectTimeoutMs;
    this.#idleTimeout = opts.idleTimeoutMs ?? HBONE_DEFAULTS.idleTimeoutMs;
    const limits = opts.limits ?? LISTENER_DEFAULTS;
    this.#limits = opts.maxConcurrentStreams === undefined ? limits : { ...limits, h2: { ...limits.h2, maxConcurrentStreams: opts.maxConcurrentStreams } };
    this.#sessionOptions = { ...h2SessionOptions(this.#limits.h2, { initialWindowSize: HBONE_DEFAULTS.streamWindow }), maxSessionMemory: HBONE_DEFAULTS.maxSessionMemoryMb };
    this.#guard = new ListenerGuard('tunnel', this.#limits.tunnel, opts.reporter ?? new ListenerReporter());
    this.#handshakes = new HandshakeGuard(this.#limits.tunnel, this.#guard);
    // The default context has no certificate, so a ClientHello without our SNI fails; every real handshake gets its context from SNICallback.
    this.#tls = tls.createServer({
      minVersion: 'TLSv1.3',
      // As the tunnel client's socket: a stream's small frames (a reply, a WINDOW_UPDATE) are not held back for an ACK (Nagle).
      noDelay: true,
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: ['h2'],
      // The HandshakeGuard cuts at handshakeTimeoutMs; node's own timeout only reports, and would log each one.
      handshakeTimeout: 2 * this.#limits.tunnel.handshakeTimeoutMs,
      SNICallback: (servername, cb) => this.#sni(servername, cb),
    });
    this.#tls.on('connection', (raw: net.Socket) => {
      const peer = peerKey(raw.remoteAddress);
      if (!this.#guard.admit(raw, peer) || !this.#handshakes.start(raw, peer)) return;
      this.#peers.set(raw, peerAddress(raw));
      this.#sockets.add(raw);
      raw.once('close', () => this.#sockets.delete(raw));
    });
    // Node checks the client chain after the handshake and destroys the socket itself; authorizationError says why.
    this.#tls.on('tlsClientError', (err, socket) => {
      const raw = rawOf(socket);
      this.#handshakes.done(raw);
      if (this.#guard.wasCut(raw)) return;
      const why = (socket as tls.TLSSocket).authorizationError;
      this.#refused(socket, why ? `tls: client certificate not trusted: ${String(why)}` : `tls: ${errName(err)}`);
    });
    this.#tls.on('secureConnection', (socket: tls.TLSSocket) => this.#secure(socket));
  }

  /** Listens (host default `::`, dual stack); resolves to the bound port. */
  listen(port: number = HBONE_DEFAULTS.port, host = '::'): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.#tls.once('error', onError);
      // reusePort: an upgrade's new process listens beside this one (docs/architecture.md, 'Upgrades that drop nothing').
      this.#tls.listen({ port, host, ipv6Only: false, reusePort: true }, () => {
        this.#tls.off('error', onError);
        resolve((this.#tls.address() as net.AddressInfo).port);
      });
    });
  }

  /**
   * Stops accepting and sends GOAWAY on every tunnel connection; after
   * `drainMs` (default 0) cuts whatever is left, streams included. Safe to
   * call twice; a second call can only bring the deadline closer.
   */
  close(drainMs = 0): Promise<void> {
    this.#drainUntil = Math.min(this.#drainUntil, Date.now() + drainMs);
    this.#closing ??= (async () => {
      const stopped = new Promise<void>((resolve) => this.#tls.close(() => resolve()));
      for (const s of this.#sessions) s.close();
      while (this.#sessions.size > 0 && Date.now() < this.#drainUntil) await new Promise((r) => setTimeout(r, 20));
      for (const s of this.#sessions) s.destroy();
      for (const raw of this.#sockets) raw.destroy();
      await stopped;
    })();
    return this.#closing;
  }

  /**
   * Cuts every tunnel connection whose client certificate is now revoked (the
   * list changed after their handshake), streams included; returns how many.
   */
  recheck(): number {
    let cut = 0;
    for (const session of this.#sessions) {
      const peer = this.#peerOf.get(session);
      if (!peer || !this.#o.revoked?.(normalizeSerial(peer.certificate.serialNumber))) continue;
      this.#refused(session.socket as tls.TLSSocket, `revoked: the client certificate of ${peer.principal} was revoked while connected`);
      session.destroy();
      cut++;
    }
    return cut;
  }

  /**
   * Asks authorize() again for every stream connected to a pod, and cuts
   * those it now refuses (a policy applied after they opened, the workload
   * gone): RST_STREAM to the source proxy, RST to the pod. Their 'closed'
   * events carry `denied: <reason> by <policy> (policy changed while
   * connected)`. A decision that is not immediate (a promise) leaves its
   * stream as it is. Returns how many were cut.
   */
  reauthorize(): number {
    this.#generation++;
    let n = 0;
    for (const [req, cutStream] of this.#spliced) {
      const why = this.#refusedNow(req);
      if (why === undefined) continue;
      this.#spliced.delete(req);
      cutStream(why);
      n++;
    }
    return n;
  }

  /** Asks authorize() about an open stream again: the close reason if it now refuses it, undefined if not (or not at once). */
  #refusedNow(req: InboundRequest): string | undefined {
    let d: InboundDecision | Promise<InboundDecision>;
    try {
      d = this.#o.authorize(req);
    } catch (err) {
      d = authorizeFailed(err);
    }
    if (isPromise(d) || d.accept) return undefined;
    return `denied: ${d.reason}${d.policy ? ` by ${d.policy}` : ''} (policy changed while connected)`;
  }

  /** Open tunnel connections and TLS handshakes in flight. */
  get load(): { connections: number; handshakes: number; streams: number } {
    return { connections: this.#guard.open, handshakes: this.#handshakes.inFlight, streams: this.#streams };
  }

  #refused(socket: net.Socket | tls.TLSSocket, reason: string): void {
    this.#guard.reject(reason.startsWith('identity') ? 'identity' : reason.startsWith('revoked') ? 'revoked' : 'tls', { remote: this.#peers.get(rawOf(socket)) ?? peerAddress(socket), detail: reason });
    try {
      this.#o.onConnectionRefused?.({ remoteAddress: socket.remoteAddress, reason });
    } catch {
      // an observer must not break the server
    }
  }

  #sni(servername: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void): void {
    const identity = sniToIdentity(servername);
    if (identity === undefined) {
      cb(new Error(`hbone: SNI ${JSON.stringify(servername)} does not name a workload identity`));
      return;
    }
    try {
      const cred = this.#o.serverCertificate(identity);
      if (!cred) {
        cb(new Error(`hbone: this node holds no certificate for ${identity}`));
        return;
      }
      cb(null, this.#contexts.get(this.#o.trustBundle(), cred.certPem, cred.keyPem));
    } catch (err) {
      cb(err instanceof Error ? err : new Error(String(err)));
    }
  }

  #secure(socket: tls.TLSSocket): void {
    this.#handshakes.done(rawOf(socket));
    if (this.#closing) {
      socket.destroy();
      return;
    }
    // No ALPN offered at all passes the handshake; h2 is the only protocol spoken here.
    if (socket.alpnProtocol !== 'h2') {
      this.#refused(socket, `alpn: the client offered no h2 (negotiated ${String(socket.alpnProtocol)})`);
      socket.destroy();
      return;
    }
    if (!socket.authorized) {
      this.#refused(socket, `tls: client certificate not trusted: ${String(socket.authorizationError)}`);
      socket.destroy();
      return;
    }
    const certificate = socket.getPeerX509Certificate();
    const uris = certificate ? certificateUris(certificate.raw) : [];
    if (!certificate || uris.length !== 1 || !parseSpiffeId(uris[0]!)) {
      this.#refused(socket, `identity: the client certificate must carry exactly one SPIFFE URI SAN, it carries ${uris.length ? uris.join(', ') : 'none'}`);
      socket.destroy();
      return;
    }
    const serial = normalizeSerial(certificate.serialNumber);
    if (this.#o.revoked?.(serial)) {
      this.#refused(socket, `revoked: the client certificate ${serial} of ${uris[0]} is on the revocation list (its node was revoked)`);
      socket.destroy();
      return;
    }
    const peer: TunnelPeer = { principal: uris[0]!, certificate, remoteAddress: socket.remoteAddress ?? '' };
    const session = http2.performServerHandshake(socket, this.#sessionOptions);
    this.#sessions.add(session);
    this.#peerOf.set(session, peer);
    session.on('error', ignore);
    guardSession(session, this.#limits.h2, this.#guard, this.#peers.get(rawOf(socket)) ?? peerAddress(socket));
    session.once('close', () => this.#sessions.delete(session));
    session.on('stream', (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, _flags: number, raw: string[]) => this.#stream(peer, stream, headers, raw));
    session.setTimeout(this.#idleTimeout, () => session.close());
    try {
      session.setLocalWindowSize(HBONE_DEFAULTS.sessionWindow);
    } catch {
      // the peer is already gone; 'close' cleans up
    }
  }

  #stream(peer: TunnelPeer, stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, raw: string[]): void {
    // A peer's RST_STREAM or a dead connection surfaces as 'error': it is handled through 'close', never thrown.
    stream.on('error', ignore);
    const size = headerListSize(raw);
    if (size > this.#limits.h2.maxHeaderListSize) {
      this.#guard.reject('h2-headers', { detail: `a header list of ${size} bytes from ${peer.principal}, over ${this.#limits.h2.maxHeaderListSize}` });
      respond(stream, { ':status': 431, [REASON_HEADER]: headerSafe(`header list of ${size} bytes is over the limit of ${this.#limits.h2.maxHeaderListSize}`) }, true);
      return;
    }
    if (this.#streams >= this.#limits.tunnel.maxStreams) {
      this.#guard.reject('streams', { detail: `${this.#streams} tunnel streams open, the limit; refused one from ${peer.principal}` });
      respond(stream, { ':status': 503, [REASON_HEADER]: headerSafe(`overloaded: ${this.#streams} tunnel streams open on this node (--max-tunnel-streams)`) }, true);
      return;
    }
    this.#count(stream);
    const method = headers[':method'];
    if (method !== 'CONNECT') {
      respond(stream, { ':status': 405, allow: 'CONNECT', [REASON_HEADER]: headerSafe(`method ${String(method)} not allowed: the tunnel speaks only CONNECT`) }, true);
      return;
    }
    const target = parseAuthority(headers[':authority']);
    if (!target) {
      respond(stream, { ':status': 400, [REASON_HEADER]: headerSafe(`bad :authority ${JSON.stringify(headers[':authority'])} (expected host:port or [ipv6]:port)`) }, true);
      return;
    }
    const forwarded = headers[FORWARDED_HEADER];
    let claimedSource: string | undefined;
    if (forwarded !== undefined) {
      // Only a nodemesh proxy sends it, always well formed: a bad one is a broken or hostile peer, refused like a bad :authority.
      const f = parseForwarded(forwarded);
      if (!f.ok) {
        this.#guard.reject('forwarded', { remote: peer.remoteAddress, detail: `${f.problem} from ${peer.principal}` });
        respond(stream, { ':status': 400, [REASON_HEADER]: headerSafe(`bad-forwarded: ${f.problem} (send one for=IPv4 or for="[IPv6]")`) }, true);
        return;
      }
      claimedSource = f.address;
    }
    const req: InboundRequest = { peer, target, streamId: stream.id ?? 0, ...(claimedSource !== undefined ? { claimedSource } : {}) };
    let decision: InboundDecision | Promise<InboundDecision>;
    try {
      decision = this.#o.authorize(req);
    } catch (err) {
      decision = authorizeFailed(err);
    }
    if (isPromise(decision)) {
      decision.then(
        (d) => this.#decided(req, stream, d),
        (err: unknown) => this.#decided(req, stream, authorizeFailed(err)),
      );
    } else {
      this.#decided(req, stream, decision);
    }
  }

  /** Its own function: a listener made where the stream's headers are read would keep that whole scope (the raw headers among it) for the stream's life. */
  #count(stream: http2.ServerHttp2Stream): void {
    this.#streams++;
    stream.once('close', () => this.#streams--);
  }

  #emit(e: InboundStreamEvent): void {
    try {
      this.#o.onStream?.(e);
    } catch {
      // an observer must not break a stream
    }
  }

  #closed(req: InboundRequest, decision: InboundDecision, closeReason: string, bytesIn = 0, bytesOut = 0): void {
    this.#emit({ req, decision, phase: 'closed', bytesIn, bytesOut, closeReason });
  }

  #decided(req: InboundRequest, stream: http2.ServerHttp2Stream, decision: InboundDecision): void {
    this.#emit({ req, decision, phase: 'decided' });
    if (stream.destroyed || stream.closed) {
      this.#closed(req, decision, 'reset before connect');
      return;
    }
    if (!decision.accept) {
      respond(stream, { ':status': decision.status, [REASON_HEADER]: headerSafe(decision.reason), ...(decision.policy ? { [POLICY_HEADER]: headerSafe(decision.policy) } : {}) }, true);
      this.#closed(req, decision, `denied: ${decision.reason}`);
      return;
    }
    this.#decidedIn.set(req, this.#generation);
    if (decision.handle) this.#handOff(req, stream, decision, decision.handle);
    else this.#connect(req, stream, decision);
  }

  /**
   * Answers 200 and gives the stream to a local handler; its finish() is the
   * one 'closed' event. A cut the server made (idle timeout, a failing
   * handler) names the reason, over the handler's: the handler only sees a
   * reset and cannot tell who made it.
   */
  #handOff(req: InboundRequest, stream: http2.ServerHttp2Stream, decision: InboundDecision, handle: StreamHandler): void {
    if (!respond(stream, { ':status': 200 }, false)) {
      this.#closed(req, decision, 'reset before connect');
      return;
    }
    let finished = false;
    let cutReason: string | undefined;
    let unfinished: NodeJS.Timeout | undefined;
    const report = (closeReason: string, bytesIn: number, bytesOut: number): void => {
      if (finished) return;
      finished = true;
      clearTimeout(unfinished);
      this.#closed(req, decision, closeReason, bytesIn, bytesOut);
    };
    const finish: StreamFinish = (closeReason, bytesIn, bytesOut) => report(cutReason ?? closeReason, bytesIn, bytesOut);
    const fail = (err: unknown): void => {
      cutReason ??= `handler-failed: ${err instanceof Error ? err.message : String(err)}`;
      if (!stream.closed) stream.close(NGHTTP2_INTERNAL_ERROR);
      finish(cutReason, 0, 0);
    };
    stream.setTimeout(this.#idleTimeout, () => {
      cutReason ??= 'idle-timeout';
      if (!stream.closed) stream.close(NGHTTP2_CANCEL);
    });
    stream.once('close', () => {
      stream.setTimeout(0);
      if (finished) return;
      // A handler that lost its finish() must not leave the stream counted open forever (flows, the active gauge).
      unfinished = setTimeout(() => report(`handler-unfinished: finish() not called within ${this.#idleTimeout} ms of the stream closing`, 0, 0), this.#idleTimeout);
      unfinished.unref();
    });
    let result: void | Promise<void>;
    try {
      result = handle(stream, req, finish);
    } catch (err) {
      fail(err);
      return;
    }
    if (isPromise(result)) result.then(undefined, fail);
  }

  #connect(req: InboundRequest, stream: http2.ServerHttp2Stream, decision: InboundDecision): void {
    const { host, port } = req.target;
    const fail = (status: 502 | 504, why: string): void => {
      respond(stream, { ':status': status, [REASON_HEADER]: headerSafe(why) }, true);
      this.#closed(req, decision, why);
    };
    let upstream: net.Socket;
    try {
      upstream = this.#o.dial ? this.#o.dial(req.target, req) : net.connect({ host, port, allowHalfOpen: true, noDelay: true });
    } catch (err) {
      fail(502, `connect-failed: ${errName(err)}`);
      return;
    }
    let settled = false;
    const timer = setTimeout(() => {
      upstream.destroy(Object.assign(new Error(`connect to ${formatAuthority(req.target)} timed out after ${this.#connectTimeout} ms`), { code: 'ETIMEDOUT' }));
    }, this.#connectTimeout);
    const settle = (): boolean => {
      if (settled) return false;
      settled = true;
      clearTimeout(timer);
      upstream.off('error', onError);
      upstream.off('close', onUpstreamClose);
      upstream.off('connect', onConnect);
      stream.off('close', onStreamClose);
      return true;
    };
    const onError = (err: NodeJS.ErrnoException): void => {
      if (!settle()) return;
      upstream.destroy();
      if (err.code === 'ETIMEDOUT') fail(504, `connect-timeout: ${formatAuthority(req.target)} did not answer within ${this.#connectTimeout} ms`);
      else fail(502, `connect-failed: ${errName(err)}`);
    };
    const onUpstreamClose = (): void => {
      if (settle()) fail(502, 'connect-failed: closed before connecting');
    };
    const onStreamClose = (): void => {
      if (!settle()) return;
      upstream.destroy();
      this.#closed(req, decision, 'reset before connect');
    };
    const onConnect = (): void => {
      if (!settle()) return;
      if (!respond(stream, { ':status': 200 }, false)) {
        upstream.destroy();
        this.#closed(req, decision, 'reset before connect');
        return;
      }
      this.#splice(req, decision, stream, upstream);
    };
    upstream.on('error', onError);
    upstream.once('close', onUpstreamClose);
    stream.once('close', onStreamClose);
    if (upstream.connecting) upstream.once('connect', onConnect);
    else if (!upstream.destroyed) onConnect();
  }

  /**
   * Pipes both ways until both sides are closed, then one 'closed' event.
   * pipe() gives backpressure; half-close is forwarded by hand in the tunnel
   * -> target direction, because Node ends a reset stream's readable side as
   * if END_STREAM had arrived, and that must become a RST, not a FIN.
   */
  #splice(req: InboundRequest, decision: InboundDecision, stream: http2.ServerHttp2Stream, upstream: net.Socket): void {
    let reason: string | undefined;
    let open = 2;
    let upstreamEnded = false;
    const done = (): void => {
      if (--open > 0) return;
      this.#spliced.delete(req);
      this.#closed(req, decision, reason ?? 'closed', upstream.bytesWritten, upstream.bytesRead);
    };
    const cutStream = (why: string): void => {
      reason ??= why;
      if (!stream.closed) stream.close(NGHTTP2_CANCEL);
      cut(upstream);
    };
    this.#spliced.set(req, cutStream);
    upstream.on('error', (err: NodeJS.ErrnoException) => {
      reason ??= `upstream error: ${errName(err)}`;
      if (!stream.closed) stream.close(NGHTTP2_CONNECT_ERROR);
      upstream.destroy();
    });
    upstream.once('end', () => {
      upstreamEnded = true;
    });
    upstream.once('close', done);
    upstream.setTimeout(this.#idleTimeout, () => {
      reason ??= 'idle-timeout';
      if (!stream.closed) stream.close(NGHTTP2_CANCEL);
      upstream.destroy();
    });
    // 'aborted': closed (RST_STREAM, or the tunnel died) while our direction was still open; emitted before that artificial 'end'.
    stream.once('aborted', () => {
      reason ??= `stream reset (code ${stream.rstCode})`;
      cut(upstream);
    });
    stream.once('end', () => {
      if (!stream.aborted) upstream.end();
    });
    stream.once('close', () => {
      // Clean only when both END_STREAMs went through (ours follows the target's FIN).
      if (!(stream.rstCode === NGHTTP2_NO_ERROR && stream.readableEnded && upstreamEnded)) {
        reason ??= stream.rstCode === NGHTTP2_NO_ERROR ? 'tunnel closed' : `stream reset (code ${stream.rstCode})`;
        cut(upstream);
      }
      done();
    });
    // Before pipe()'s listener, so the frames of one read of the tunnel go out to the target together.
    stream.on('data', (chunk: Buffer) => {
      forwarded(chunk.length);
      corkForTurn(upstream);
    });
    upstream.on('data', countForwarded);
    stream.pipe(upstream, { end: false });
    upstream.pipe(stream);
    // Policies changed while it connected: reauthorize() did not see it yet, so it is asked now.
    const why = this.#decidedIn.get(req) !== this.#generation ? this.#refusedNow(req) : undefined;
    if (why !== undefined) {
      this.#spliced.delete(req);
      cutStream(why);
    }
  }
}

/** The accepted TCP socket under a server-side TLSSocket (node keeps it as `_parent`). */
function rawOf(socket: net.Socket): net.Socket {
  return (socket as net.Socket & { _parent?: net.Socket })._parent ?? socket;
}

/**
 * A TCP RST to the target (RFC 9113 §8.5), or a plain close once our FIN was
 * queued: Node 20 loses the socket's 'close' (EINVAL) when resetAndDestroy()
 * follows end() before the shutdown completed.
 */
function cut(sock: net.Socket): void {
  if (sock.destroyed) return;
  if (sock.writableEnded) {
    sock.destroy();
    return;
  }
  try {
    sock.resetAndDestroy();
  } catch {
    sock.destroy(); // not a TCP handle (a custom dial): no RST to send
  }
}

function authorizeFailed(err: unknown): InboundDecision {
  return { accept: false, status: 503, reason: `authorization failed: ${err instanceof Error ? err.message : String(err)}` };
}
