/**
 * The HBONE tunnel with real certificates from a real CA, real mutual TLS 1.3
 * and real HTTP/2 CONNECT over loopback (127.0.0.1 and ::1): bytes and
 * half-close through it, session pooling, authorization, and every way a
 * handshake must be refused.
 */
import 'reflect-metadata';

import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type * as stream from 'node:stream';
import * as tls from 'node:tls';
import { t } from 'tap';
import type { Test } from 'tap';

import { CertificateAuthority, spiffeWorkloadId } from '../../../src/controller/ca';
import { generateKeyAndCsr } from '../../../src/node-proxy/identity';
import { ListenerReporter } from '../../../src/node-proxy/listeners';
import {
  HbonePool,
  HboneServer,
  identityToSni,
  parseAuthority,
  sniToIdentity,
  TunnelError,
  type HboneServerOptions,
  type InboundRequest,
  type InboundStreamEvent,
  type TunnelDial,
} from '../../../src/node-proxy/tunnel';
import { unusedPort } from '../../helpers/net';
import { waitFor } from '../../helpers/wait';

const TD = 'cluster.local';
const CLIENT_ID = spiffeWorkloadId(TD, 'default', 'client');
const SERVER_ID = spiffeWorkloadId(TD, 'backend', 'server');
const OTHER_ID = spiffeWorkloadId(TD, 'backend', 'other');
const MB = 1 << 20;

interface Creds {
  certPem: string;
  keyPem: string;
}

let ca: CertificateAuthority;
let ca2: CertificateAuthority;
let clientCreds: Creds;
let serverCreds: Creds;
let otherServerCreds: Creds;
let foreignClientCreds: Creds;

async function issue(from: CertificateAuthority, uri: string, lifetimeSeconds = 3600): Promise<Creds> {
  const { keyPem, csrPem } = await generateKeyAndCsr(uri);
  const cert = await from.signCsr(csrPem, { kind: 'workload', lifetimeSeconds, allowedUris: () => null });
  return { certPem: cert.chainPem, keyPem };
}

t.before(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-hbone-'));
  const dir2 = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-hbone-'));
  t.teardown(() => {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(dir2, { recursive: true, force: true });
  });
  ca = await CertificateAuthority.loadOrCreate(dir, { trustDomain: TD });
  ca2 = await CertificateAuthority.loadOrCreate(dir2, { trustDomain: TD });
  [clientCreds, serverCreds, otherServerCreds, foreignClientCreds] = await Promise.all([
    issue(ca, CLIENT_ID),
    issue(ca, SERVER_ID),
    issue(ca, OTHER_ID),
    issue(ca2, CLIENT_ID),
  ]);
});

// ---------------------------------------------------------------------------
// helpers

interface Harness {
  server: HboneServer;
  port: number;
  requests: InboundRequest[];
  events: InboundStreamEvent[];
  refused: string[];
}

async function startServer(t: Test, over: Partial<HboneServerOptions> = {}, at: { port?: number; host?: string } = {}): Promise<Harness> {
  const requests: InboundRequest[] = [];
  const events: InboundStreamEvent[] = [];
  const refused: string[] = [];
  const server = new HboneServer({
    trustBundle: () => ca.rootPem,
    serverCertificate: (id) => (id === SERVER_ID ? serverCreds : undefined),
    authorize: (req) => {
      requests.push(req);
      return { accept: true };
    },
    onStream: (e) => events.push(e),
    onConnectionRefused: (e) => refused.push(e.reason),
    ...over,
  });
  const port = await server.listen(at.port ?? 0, at.host ?? '127.0.0.1');
  t.teardown(() => server.close());
  return { server, port, requests, events, refused };
}

function newPool(t: Test, opts?: ConstructorParameters<typeof HbonePool>[0]): HbonePool {
  const pool = new HbonePool(opts);
  t.teardown(() => pool.close());
  return pool;
}

function dialOf(port: number, target: { host: string; port: number }, over: Partial<TunnelDial> = {}): TunnelDial {
  return {
    sourceIdentity: CLIENT_ID,
    credentials: clientCreds,
    trustBundle: ca.rootPem,
    node: { address: '127.0.0.1', port },
    destinationIdentity: SERVER_ID,
    target,
    timeoutMs: 5_000,
    ...over,
  };
}

/** A loopback TCP server (half-open allowed) running `onConn` per connection; `accepted` counts them. */
async function target(t: Test, onConn: (s: net.Socket) => void, host = '127.0.0.1'): Promise<{ host: string; port: number; accepted: () => number }> {
  let n = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    n++;
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
    s.on('error', () => {});
    onConn(s);
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return { host, port: (server.address() as net.AddressInfo).port, accepted: () => n };
}

const echo = (s: net.Socket): void => {
  s.pipe(s);
};

/** Everything `s` yields until 'end'; rejects when it errors or closes first. */
function readAll(s: stream.Readable): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.once('end', () => resolve(Buffer.concat(chunks)));
    s.once('error', reject);
    s.once('close', () => reject(new Error('closed before end')));
  });
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

function closedOf(events: InboundStreamEvent[]): InboundStreamEvent[] {
  return events.filter((e) => e.phase === 'closed');
}

/** Each stream id that was decided has exactly one 'closed' event. */
function oneClosedEach(t: Test, events: InboundStreamEvent[]): void {
  const decided = events.filter((e) => e.phase === 'decided').map((e) => e.req.streamId);
  const closed = closedOf(events).map((e) => e.req.streamId);
  t.same([...closed].sort(), [...decided].sort(), 'every decided stream closed exactly once');
}

interface RawResult {
  error?: string;
  secure: boolean;
  alpn?: string | false;
  bytes: number;
  timedOut: boolean;
}

/** A bare TLS connection to the tunnel port, watched until it closes. */
function rawTls(opts: tls.ConnectionOptions): Promise<RawResult> {
  return new Promise((resolve) => {
    const r: RawResult = { secure: false, bytes: 0, timedOut: false };
    const s = tls.connect(opts);
    const guard = setTimeout(() => {
      r.timedOut = true;
      s.destroy();
    }, 3_000);
    s.on('secureConnect', () => {
      r.secure = true;
      r.alpn = s.alpnProtocol ?? undefined;
    });
    s.on('data', (b: Buffer) => (r.bytes += b.length));
    s.on('error', (e: NodeJS.ErrnoException) => (r.error ??= e.code ?? e.message));
    s.on('close', () => {
      clearTimeout(guard);
      resolve(r);
    });
  });
}

function rawOptions(port: number, creds: Creds | null = clientCreds): tls.ConnectionOptions {
  return {
    host: '127.0.0.1',
    port,
    servername: identityToSni(SERVER_ID),
    ca: ca.rootPem,
    ALPNProtocols: ['h2'],
    checkServerIdentity: () => undefined,
    ...(creds ? { cert: creds.certPem, key: creds.keyPem } : {}),
  };
}

// ---------------------------------------------------------------------------
// pure parts

t.test('SNI names a workload identity reversibly, and refuses what would not round-trip', async (t) => {
  const ok: [string, string][] = [
    [SERVER_ID, 'server.backend.sa.cluster.local.spiffe'],
    ['spiffe://example/ns/a/sa/b', 'b.a.sa.example.spiffe'],
    ['spiffe://x.spiffe/ns/sa/sa/sa', 'sa.sa.sa.x.spiffe.spiffe'],
    ['spiffe://10.0.0.1/ns/n-1/sa/s-2', 's-2.n-1.sa.10.0.0.1.spiffe'],
  ];
  for (const [id, sni] of ok) {
    t.equal(identityToSni(id), sni, id);
    t.equal(sniToIdentity(sni), id, `${sni} back`);
  }
  const bad = [
    'spiffe://cluster.local/ns/default/sa/Web', // capitals: SNI is case-insensitive
    'spiffe://cluster.local/ns/default/sa/web.v1', // a dot would move the split
    'spiffe://cluster.local/ns/default/sa/web_1',
    'spiffe://cluster.local/ns/-default/sa/web',
    'spiffe://cluster_local/ns/default/sa/web',
    'spiffe://cluster.local/nodemesh/node/n1', // not a workload
    'spiffe://cluster.local/ns/default/sa/web/extra',
    'https://cluster.local/ns/default/sa/web',
    `spiffe://${'a'.repeat(60)}.${'b'.repeat(60)}.${'c'.repeat(60)}.${'d'.repeat(30)}/ns/${'n'.repeat(40)}/sa/web`, // 268 > 253
    `spiffe://cluster.local/ns/default/sa/${'w'.repeat(64)}`, // label > 63
  ];
  for (const id of bad) t.throws(() => identityToSni(id), { code: 'NM_ERR_TUNNEL_BAD_IDENTITY' }, id);
  for (const sni of [
    'example.com',
    'server.backend.sa.cluster.local',
    'Server.backend.sa.cluster.local.spiffe',
    'server.backend.xx.cluster.local.spiffe',
    'server.backend.sa.spiffe',
    'server.backend.sa.cluster..local.spiffe',
    'server.backend.sa.cluster_local.spiffe',
    '',
  ]) {
    t.equal(sniToIdentity(sni), undefined, JSON.stringify(sni));
  }
});

t.test(':authority parsing', async (t) => {
  const cases: [string, { host: string; port: number } | undefined][] = [
    ['127.0.0.1:80', { host: '127.0.0.1', port: 80 }],
    ['[::1]:8080', { host: '::1', port: 8080 }],
    ['[2001:db8::1]:65535', { host: '2001:db8::1', port: 65535 }],
    ['reviews.default.svc:9080', { host: 'reviews.default.svc', port: 9080 }],
    ['::1:80', undefined],
    ['127.0.0.1', undefined],
    ['127.0.0.1:0', undefined],
    ['127.0.0.1:65536', undefined],
    ['127.0.0.1:8o', undefined],
    ['[127.0.0.1]:80', undefined],
    ['[::1:80', undefined],
    ['a b:80', undefined],
    [':80', undefined],
  ];
  for (const [input, want] of cases) t.same(parseAuthority(input), want, input);
  t.equal(parseAuthority(undefined), undefined);
});

// ---------------------------------------------------------------------------
// through the tunnel

t.test('1 MB each way with half-close in both orders', async (t) => {
  const h = await startServer(t);
  const pool = newPool(t);
  const up = randomBytes(MB);
  const down = randomBytes(MB);

  await t.test('client FIN first: the target sees it, then still answers', async (t) => {
    let received: Promise<Buffer> | undefined;
    const tgt = await target(t, (s) => {
      received = readAll(s).then((b) => {
        s.end(down); // written only after our END_STREAM arrived as FIN
        return b;
      });
    });
    const before = closedOf(h.events).length;
    const st = await pool.connect(dialOf(h.port, tgt));
    st.end(up);
    const got = await readAll(st);
    t.equal(sha(got), sha(down), 'client got the 1 MB the target sent after our half-close');
    t.equal(sha(await received!), sha(up), 'target got our 1 MB, then FIN');
    t.ok(await waitFor(() => closedOf(h.events).length === before + 1), 'server reported the stream closed');
    const e = closedOf(h.events).at(-1)!;
    t.match(e, { bytesIn: MB, bytesOut: MB, closeReason: 'closed', decision: { accept: true } });
  });

  await t.test('target FIN first: the client sees END_STREAM, then still sends', async (t) => {
    let received: Promise<Buffer> | undefined;
    const tgt = await target(t, (s) => {
      received = readAll(s);
      s.end(down);
    });
    const before = closedOf(h.events).length;
    const st = await pool.connect(dialOf(h.port, tgt));
    const got = await readAll(st);
    t.equal(sha(got), sha(down), 'client read 1 MB and END_STREAM');
    t.notOk(st.writableEnded, 'our direction is still open');
    st.end(up);
    t.equal(sha(await received!), sha(up), 'target got our 1 MB after its own FIN');
    t.ok(await waitFor(() => closedOf(h.events).length === before + 1));
    t.match(closedOf(h.events).at(-1)!, { bytesIn: MB, bytesOut: MB, closeReason: 'closed' });
  });

  oneClosedEach(t, h.events);
});

t.test('concurrent streams share one TLS session', async (t) => {
  const h = await startServer(t);
  const tgt = await target(t, echo);
  const pool = newPool(t);
  const streams = await Promise.all(Array.from({ length: 20 }, () => pool.connect(dialOf(h.port, tgt))));
  t.same(pool.stats(), { sessions: 1, streams: 20 });
  const ids = h.requests.map((r) => r.streamId);
  t.equal(new Set(ids).size, 20, 'distinct stream ids: all on one HTTP/2 connection');
  const replies = await Promise.all(
    streams.map((st, i) => {
      st.end(`ping ${i}`);
      return readAll(st);
    }),
  );
  t.same(
    replies.map((b) => b.toString()),
    streams.map((_, i) => `ping ${i}`),
  );
  t.ok(await waitFor(() => pool.stats().streams === 0), 'streams released');
  t.same(pool.stats(), { sessions: 1, streams: 0 }, 'the idle session stays pooled');
  const again = await pool.connect(dialOf(h.port, tgt));
  t.equal(h.requests.at(-1)!.streamId, 41, 'next stream reuses the session (stream id 41)');
  again.end();
  await readAll(again);
  t.ok(await waitFor(() => closedOf(h.events).length === 21));
  oneClosedEach(t, h.events);
});

t.test('a full session makes the pool open another', async (t) => {
  const h = await startServer(t);
  const tgt = await target(t, echo);
  const pool = newPool(t, { maxStreamsPerConnection: 2 });
  const streams = await Promise.all([1, 2, 3].map(() => pool.connect(dialOf(h.port, tgt))));
  t.same(pool.stats(), { sessions: 2, streams: 3 });
  t.same(h.requests.map((r) => r.streamId).sort(), [1, 1, 3], 'two connections: stream ids 1, 3 and 1');
  for (const st of streams) st.end();
  await Promise.all(streams.map(readAll));

  await t.test("the server's SETTINGS_MAX_CONCURRENT_STREAMS caps it too", async (t) => {
    const h1 = await startServer(t, { maxConcurrentStreams: 1 });
    const pool1 = newPool(t);
    const a = await pool1.connect(dialOf(h1.port, tgt));
    const b = await pool1.connect(dialOf(h1.port, tgt));
    t.same(pool1.stats(), { sessions: 2, streams: 2 });
    for (const st of [a, b]) st.end();
    await Promise.all([readAll(a), readAll(b)]);
  });

  await t.test('another source identity or credential gets its own session', async (t) => {
    const h2 = await startServer(t);
    const pool2 = newPool(t);
    const other = await issue(ca, spiffeWorkloadId(TD, 'default', 'other-client'));
    const renewed = await issue(ca, CLIENT_ID);
    const s1 = await pool2.connect(dialOf(h2.port, tgt));
    const s2 = await pool2.connect(dialOf(h2.port, tgt, { sourceIdentity: spiffeWorkloadId(TD, 'default', 'other-client'), credentials: other }));
    const s3 = await pool2.connect(dialOf(h2.port, tgt, { credentials: renewed }));
    t.same(pool2.stats(), { sessions: 3, streams: 3 });
    t.same(
      h2.requests.map((r) => r.peer.principal),
      [CLIENT_ID, spiffeWorkloadId(TD, 'default', 'other-client'), CLIENT_ID],
    );
    for (const st of [s1, s2, s3]) st.end();
    await Promise.all([s1, s2, s3].map(readAll));
  });
});

t.test('authorize sees the client principal and the target (IPv6 loopback)', async (t) => {
  const seen: InboundRequest[] = [];
  const h = await startServer(
    t,
    {
      authorize: async (req) => {
        seen.push(req);
        await new Promise((r) => setTimeout(r, 5));
        return { accept: true };
      },
    },
    { host: '::1' },
  );
  const tgt = await target(t, echo, '::1');
  const pool = newPool(t);
  const st = await pool.connect(dialOf(h.port, tgt, { node: { address: '::1', port: h.port } }));
  t.equal(seen.length, 1);
  t.equal(seen[0]!.peer.principal, CLIENT_ID);
  t.same(seen[0]!.target, { host: '::1', port: tgt.port });
  t.equal(seen[0]!.streamId, 1);
  t.equal(seen[0]!.peer.certificate.serialNumber.toLowerCase(), new X509Certificate(clientCreds.certPem).serialNumber.toLowerCase());
  st.end('v6');
  t.equal((await readAll(st)).toString(), 'v6');
  t.ok(await waitFor(() => closedOf(h.events).length === 1));
  t.match(h.events.map((e) => e.phase), ['decided', 'closed']);
});

t.test('a denial is a 403 with its reason, and nothing is dialed', async (t) => {
  const reason = 'explicit-deny: backend/deny-default';
  const h = await startServer(t, { authorize: () => ({ accept: false, status: 403, reason }) });
  const tgt = await target(t, echo);
  const pool = newPool(t);
  const err = await pool.connect(dialOf(h.port, tgt)).catch((e: unknown) => e);
  t.type(err, TunnelError);
  t.match(err, { code: 'NM_ERR_TUNNEL_REFUSED', status: 403, reason, message: /refused CONNECT 127\.0\.0\.1:\d+ .* 403: explicit-deny/ });
  t.equal(tgt.accepted(), 0, 'target never dialed');
  t.match(h.events, [
    { phase: 'decided', decision: { accept: false, status: 403 } },
    { phase: 'closed', bytesIn: 0, bytesOut: 0 },
  ]);
  t.ok(await waitFor(() => pool.stats().streams === 0));
  t.equal(pool.stats().sessions, 1, 'a refused stream leaves the session usable');

  await t.test('authorize throwing is a 503, not a crash', async (t) => {
    const h2 = await startServer(t, {
      authorize: () => {
        throw new Error('policy store unavailable');
      },
    });
    await t.rejects(pool.connect(dialOf(h2.port, tgt)), { code: 'NM_ERR_TUNNEL_REFUSED', status: 503, reason: /policy store unavailable/ });
  });
});

t.test('an unreachable target is a 502', async (t) => {
  const h = await startServer(t);
  const pool = newPool(t);
  const port = await unusedPort();
  await t.rejects(pool.connect(dialOf(h.port, { host: '127.0.0.1', port })), {
    code: 'NM_ERR_TUNNEL_REFUSED',
    status: 502,
    reason: /ECONNREFUSED/,
  });
  t.ok(await waitFor(() => closedOf(h.events).length === 1));
  t.match(closedOf(h.events)[0], { decision: { accept: true }, closeReason: /ECONNREFUSED/ });

  await t.test('a target that never answers is a 504', async (t) => {
    // A socket stuck in connect, without leaving loopback: the server's timer must fire.
    const stuck = (): net.Socket => Object.defineProperty(new net.Socket(), 'connecting', { value: true });
    const h2 = await startServer(t, { dial: stuck, connectTimeoutMs: 100 });
    await t.rejects(pool.connect(dialOf(h2.port, { host: '127.0.0.1', port: 9 })), {
      code: 'NM_ERR_TUNNEL_REFUSED',
      status: 504,
      reason: /connect-timeout: 127\.0\.0\.1:9 did not answer within 100 ms/,
    });
    t.ok(await waitFor(() => closedOf(h2.events).length === 1));
  });
});

t.test('an idle session is closed after idleMs and no longer holds the pool', async (t) => {
  const h = await startServer(t);
  const tgt = await target(t, echo);
  const pool = newPool(t, { idleMs: 50 });
  const st = await pool.connect(dialOf(h.port, tgt));
  st.end('x');
  await readAll(st);
  t.ok(await waitFor(() => pool.stats().sessions === 0), 'closed once idle');
  const again = await pool.connect(dialOf(h.port, tgt));
  again.end('y');
  t.equal((await readAll(again)).toString(), 'y', 'a new session replaces it');
});

t.test('after a wave of streams only the first session stays idle: the others close after surplusIdleMs', async (t) => {
  const h = await startServer(t);
  const tgt = await target(t, echo);
  const pool = newPool(t, { maxStreamsPerConnection: 2, idleMs: 60_000, surplusIdleMs: 50 });
  const streams = await Promise.all([1, 2, 3, 4, 5].map(() => pool.connect(dialOf(h.port, tgt))));
  t.equal(pool.stats().sessions, 3, 'five streams at two per session: three sessions');
  for (const st of streams) st.end('x');
  await Promise.all(streams.map(readAll));
  t.ok(await waitFor(() => pool.stats().sessions === 1), 'the surplus ones closed once idle');
  const again = await pool.connect(dialOf(h.port, tgt));
  again.end('y');
  t.equal((await readAll(again)).toString(), 'y', 'the one kept carries the next stream');
  t.equal(pool.stats().sessions, 1, 'on the session kept');
});

t.test('resets travel both ways and never crash the process', async (t) => {
  const h = await startServer(t);
  const pool = newPool(t);

  await t.test('client resets: the target connection is cut', async (t) => {
    let targetClosed: Promise<void> | undefined;
    const tgt = await target(t, (s) => {
      targetClosed = new Promise((resolve) => s.once('close', () => resolve()));
      s.write('hello');
    });
    const before = closedOf(h.events).length;
    const st = await pool.connect(dialOf(h.port, tgt));
    await new Promise((resolve) => st.once('data', resolve));
    st.destroy();
    await targetClosed;
    t.ok(await waitFor(() => closedOf(h.events).length === before + 1));
    t.match(closedOf(h.events).at(-1)!, { closeReason: /reset|closed/, bytesOut: 5 });
  });

  await t.test('target resets: the client stream errors with CONNECT_ERROR', async (t) => {
    const tgt = await target(t, (s) => {
      s.once('data', () => s.resetAndDestroy());
    });
    const st = await pool.connect(dialOf(h.port, tgt));
    const err = new Promise<Error>((resolve) => st.once('error', resolve));
    st.write('boom');
    t.match(await err, { code: 'ERR_HTTP2_STREAM_ERROR', message: /CONNECT_ERROR/ });
  });

  t.ok(pool.stats().sessions <= 1);
});

// ---------------------------------------------------------------------------
// refused handshakes

t.test('no client certificate: handshake refused', async (t) => {
  const h = await startServer(t);
  const r = await rawTls(rawOptions(h.port, null));
  t.equal(r.error, 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED');
  t.equal(r.bytes, 0);
  t.equal(h.requests.length, 0);
  t.ok(await waitFor(() => h.refused.length > 0));
  t.match(h.refused, [/PEER_DID_NOT_RETURN_A_CERTIFICATE/]);
});

t.test('client certificate from another CA: refused', async (t) => {
  const h = await startServer(t);
  const tgt = await target(t, echo);
  const pool = newPool(t);
  await t.rejects(pool.connect(dialOf(h.port, tgt, { credentials: foreignClientCreds })), {
    code: 'NM_ERR_TUNNEL_TLS',
    message: /did not accept our certificate/,
  });
  t.equal(h.requests.length, 0);
  t.match(h.refused, [/not trusted/]);
  t.ok(await waitFor(() => pool.stats().sessions === 0), 'the failed session left the pool');
});

t.test('expired client certificate: refused', async (t) => {
  const h = await startServer(t);
  const tgt = await target(t, echo);
  const pool = newPool(t);
  const shortLived = await issue(ca, CLIENT_ID, 1);
  const notAfter = Date.parse(new X509Certificate(shortLived.certPem).validTo);
  await new Promise((r) => setTimeout(r, Math.max(0, notAfter - Date.now() + 1_100)));
  await t.rejects(pool.connect(dialOf(h.port, tgt, { credentials: shortLived })), { code: 'NM_ERR_TUNNEL_TLS' });
  t.equal(h.requests.length, 0);
  t.match(h.refused, [/CERT_HAS_EXPIRED/]);
});

t.test('server presenting the wrong identity: the client refuses', async (t) => {
  const h = await startServer(t, { serverCertificate: () => otherServerCreds });
  const tgt = await target(t, echo);
  const pool = newPool(t);
  await t.rejects(pool.connect(dialOf(h.port, tgt)), {
    code: 'NM_ERR_TUNNEL_TLS',
    message: new RegExp(`presented ${OTHER_ID} instead of ${SERVER_ID}`),
  });
  t.equal(h.requests.length, 0);

  await t.test('a server with no certificate for the SNI refuses the handshake', async (t) => {
    const h2 = await startServer(t);
    const ghost = spiffeWorkloadId(TD, 'backend', 'ghost');
    await t.rejects(pool.connect(dialOf(h2.port, tgt, { destinationIdentity: ghost })), { code: 'NM_ERR_TUNNEL_TLS' });
    t.match(h2.refused, [/no certificate for spiffe:\/\/cluster\.local\/ns\/backend\/sa\/ghost/]);
  });

  await t.test('a server cert from a CA outside our bundle is refused', async (t) => {
    const foreignServer = await issue(ca2, SERVER_ID);
    const h3 = await startServer(t, { serverCertificate: () => foreignServer, trustBundle: () => ca.rootPem + ca2.rootPem });
    await t.rejects(pool.connect(dialOf(h3.port, tgt)), { code: 'NM_ERR_TUNNEL_TLS' });
  });
});

t.test('ALPN other than h2: refused', async (t) => {
  const h = await startServer(t);
  const http1 = await rawTls({ ...rawOptions(h.port), ALPNProtocols: ['http/1.1'] });
  t.equal(http1.error, 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL');
  t.notOk(http1.secure);

  const none = await rawTls({ ...rawOptions(h.port), ALPNProtocols: undefined });
  t.notOk(none.timedOut, 'closed by the server');
  t.equal(none.alpn, false, 'no ALPN offered passes TLS…');
  t.equal(none.bytes, 0, '…but is closed before any HTTP/2 byte');
  t.ok(await waitFor(() => h.refused.some((r) => r.startsWith('alpn'))));
  t.equal(h.requests.length, 0);
});

t.test('TLS 1.2 client: refused', async (t) => {
  const h = await startServer(t);
  const r = await rawTls({ ...rawOptions(h.port), maxVersion: 'TLSv1.2' });
  t.equal(r.error, 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION');
  t.notOk(r.secure);
});

t.test('anything but CONNECT host:port: 405 / 400', async (t) => {
  const h = await startServer(t);
  const session = http2.connect(`https://127.0.0.1:${h.port}`, { createConnection: () => tls.connect(rawOptions(h.port)) });
  t.teardown(() => session.destroy());
  session.on('error', () => {});
  const statusOf = (headers: http2.OutgoingHttpHeaders): Promise<http2.IncomingHttpHeaders> =>
    new Promise((resolve, reject) => {
      const req = session.request(headers, { endStream: true });
      req.on('error', reject);
      req.once('response', resolve);
      req.resume();
    });
  const get = await statusOf({ ':method': 'GET', ':path': '/' });
  t.equal(get[':status'], 405);
  t.equal(get['allow'], 'CONNECT');
  const post = await statusOf({ ':method': 'POST', ':path': '/', ':authority': '127.0.0.1:80' });
  t.equal(post[':status'], 405);
  const noPort = await statusOf({ ':method': 'CONNECT', ':authority': 'example' });
  t.equal(noPort[':status'], 400);
  t.match(noPort['x-nodemesh-reason'], /bad :authority/);
  t.equal(h.requests.length, 0, 'none reached authorize');
});

t.test("the client's address travels as Forwarded: for=, IPv4 and IPv6", async (t) => {
  const h = await startServer(t);
  const tgt = await target(t, echo);
  const pool = newPool(t);
  for (const sourceAddress of ['198.18.1.2', '2001:2:1::2', undefined]) {
    const st = await pool.connect(dialOf(h.port, tgt, sourceAddress === undefined ? {} : { sourceAddress, localAddress: '127.0.0.1' }));
    st.end('x');
    await readAll(st);
    const req = h.requests.at(-1)!;
    t.equal(req.claimedSource, sourceAddress, `claimed ${String(sourceAddress)}`);
    t.equal(req.peer.remoteAddress, '127.0.0.1', 'and the address the tunnel came from');
  }
});

t.test('a malformed Forwarded is a 400 naming the problem, counted, and reaches no policy', async (t) => {
  const reporter = new ListenerReporter();
  const h = await startServer(t, { reporter });
  const session = http2.connect(`https://127.0.0.1:${h.port}`, { createConnection: () => tls.connect(rawOptions(h.port)) });
  t.teardown(() => session.destroy());
  session.on('error', () => {});
  const answer = (forwarded: string | string[]): Promise<http2.IncomingHttpHeaders> =>
    new Promise((resolve, reject) => {
      const req = session.request({ ':method': 'CONNECT', ':authority': '127.0.0.1:9', forwarded } as http2.OutgoingHttpHeaders, { endStream: true });
      req.on('error', reject);
      req.once('response', resolve);
      req.resume();
    });
  const hostile: [string | string[], RegExp][] = [
    [`for="[${'1:'.repeat(200)}1]"`, /bytes, over 64/],
    ['for=198.18.1.2, for=198.18.1.3', /more than one hop/],
    [['for=198.18.1.2', 'for=198.18.1.3'], /more than one hop/],
    ['for=unknown', /for=unknown/],
    ['garbage', /no for= parameter/],
    ['for=2001:2::1', /for="\[address\]"/],
  ];
  for (const [value, why] of hostile) {
    const r = await answer(value);
    t.equal(r[':status'], 400, `${JSON.stringify(value).slice(0, 40)}: 400`);
    t.match(r['x-nodemesh-reason'], why);
    t.match(r['x-nodemesh-reason'], /^bad-forwarded: .*\(send one for=IPv4 or for="\[IPv6\]"\)$/);
  }
  t.equal(h.requests.length, 0, 'none reached authorize');
  t.equal(reporter.counts.get('tunnel forwarded'), hostile.length, 'each counted under nodemesh_listener_rejected_total{reason="forwarded"}');
});

// ---------------------------------------------------------------------------
// lifecycle

t.test('a server restart breaks the session; the pool recovers on the next connect', async (t) => {
  const tgt = await target(t, echo);
  const first = await startServer(t);
  const pool = newPool(t);
  const st = await pool.connect(dialOf(first.port, tgt));
  st.write('a');
  await new Promise((resolve) => st.once('data', resolve));
  const broken = new Promise<Error>((resolve) => st.once('error', resolve));
  await first.server.close();
  const err = await broken;
  t.type(err, TunnelError);
  t.match(err, { code: 'NM_ERR_TUNNEL_BROKEN', message: /closed under the stream|failed/ });
  t.ok(await waitFor(() => pool.stats().sessions === 0), 'the dead session left the pool');
  t.ok(await waitFor(() => closedOf(first.events).length === 1), 'the server closed its stream too');

  const second = await startServer(t, {}, { port: first.port });
  const again = await pool.connect(dialOf(second.port, tgt));
  again.end('b');
  t.equal((await readAll(again)).toString(), 'b');
  t.equal(pool.stats().sessions, 1);
});

t.test('trust bundle rotation takes effect without a restart', async (t) => {
  let bundle = ca.rootPem;
  const h = await startServer(t, { trustBundle: () => bundle });
  const tgt = await target(t, echo);
  const pool = newPool(t);
  await t.rejects(pool.connect(dialOf(h.port, tgt, { credentials: foreignClientCreds })), { code: 'NM_ERR_TUNNEL_TLS' }, 'new CA not yet trusted');
  bundle = ca.rootPem + ca2.rootPem;
  const st = await pool.connect(dialOf(h.port, tgt, { credentials: foreignClientCreds }));
  t.equal(h.requests.at(-1)!.peer.principal, CLIENT_ID);
  st.end('rotated');
  t.equal((await readAll(st)).toString(), 'rotated');
  const old = await pool.connect(dialOf(h.port, tgt));
  old.end('old');
  t.equal((await readAll(old)).toString(), 'old', 'the old CA still works alongside');
});

t.test('bad dials fail fast with a clear code', async (t) => {
  const pool = newPool(t);
  const h = await startServer(t);
  await t.rejects(pool.connect(dialOf(h.port, { host: '127.0.0.1', port: 0 })), { code: 'NM_ERR_TUNNEL_BAD_ARGUMENT' });
  await t.rejects(pool.connect(dialOf(h.port, { host: '127.0.0.1', port: 80 }, { destinationIdentity: 'spiffe://cluster.local/ns/a/sa/B' })), {
    code: 'NM_ERR_TUNNEL_BAD_ARGUMENT',
  });
  await t.rejects(pool.connect(dialOf(h.port, { host: '127.0.0.1', port: 80 }, { trustBundle: '' })), { code: 'NM_ERR_TUNNEL_BAD_ARGUMENT', message: /trust bundle/ });
  for (const sourceAddress of ['pod-a', '198.18.1.2:80', 'fe80::1%eth0']) {
    await t.rejects(pool.connect(dialOf(h.port, { host: '127.0.0.1', port: 80 }, { sourceAddress })), { code: 'NM_ERR_TUNNEL_BAD_ARGUMENT', message: /sourceAddress .* must be the client's IP address/ });
  }
  await t.rejects(pool.connect(dialOf(h.port, { host: '127.0.0.1', port: 80 }, { localAddress: 'node-1' })), { code: 'NM_ERR_TUNNEL_BAD_ARGUMENT', message: /localAddress/ });
  const closed = await unusedPort();
  await t.rejects(pool.connect(dialOf(closed, { host: '127.0.0.1', port: 80 })), { code: 'NM_ERR_TUNNEL_BROKEN', message: /ECONNREFUSED/ });
  t.ok(await waitFor(() => pool.stats().sessions === 0 && pool.stats().streams === 0), 'nothing left in the pool');
  await pool.close();
  await t.rejects(pool.connect(dialOf(h.port, { host: '127.0.0.1', port: 80 })), { code: 'NM_ERR_TUNNEL_BROKEN', message: /closed/ });
});
