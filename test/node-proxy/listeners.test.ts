/**
 * The node proxy's listeners under attack, on loopback with real TLS and real
 * HTTP/2: silent and half-sent TLS handshakes on the tunnel port are cut at
 * the handshake deadline; one address flooding it hits its own bound while
 * another peer's tunnel keeps working; rapid reset, PING and SETTINGS floods
 * get GOAWAY and a closed socket; header lists over the bound are refused;
 * slow-loris on metrics, health and admin (TCP and unix socket) are closed;
 * and every refusal is counted in the metrics.
 */
import 'reflect-metadata';

import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import * as tls from 'node:tls';
import { t } from 'tap';
import type { Test } from 'tap';

import { CertificateAuthority, spiffeWorkloadId } from '../../src/controller/ca';
import { silentLogger, type Logger } from '../../src/log';
import { startAdmin } from '../../src/node-proxy/admin';
import { ConnectionRecorder, FlowTable } from '../../src/node-proxy/flows';
import { UpstreamConnector } from '../../src/node-proxy/upstream';
import { generateKeyAndCsr } from '../../src/node-proxy/identity';
import { fdBudgetProblem, LISTENER_DEFAULTS, limitsFromFlags, listenerLimits, ListenerReporter, type ListenerOverrides } from '../../src/node-proxy/listeners';
import { ProxyMetrics } from '../../src/node-proxy/metrics';
import { BalancerCache, OutboundServer } from '../../src/node-proxy/outbound';
import { compilePolicies } from '../../src/node-proxy/policy';
import { ConfigState, MeshView, type WorkloadView } from '../../src/node-proxy/state';
import { HbonePool, HboneServer, identityToSni } from '../../src/node-proxy/tunnel';
import { PACKAGE_ROOT } from '../../src/paths';
import { echoTarget } from '../helpers/net';
import { waitFor } from '../helpers/wait';

const TD = 'cluster.local';
const CLIENT_ID = spiffeWorkloadId(TD, 'default', 'client');
const SERVER_ID = spiffeWorkloadId(TD, 'backend', 'server');
/** A second loopback address: "another peer" without leaving the machine. */
const ATTACKER = '127.0.0.2';

interface Creds {
  certPem: string;
  keyPem: string;
}
let ca: CertificateAuthority;
let clientCreds: Creds;
let serverCreds: Creds;

t.before(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-listeners-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  ca = await CertificateAuthority.loadOrCreate(dir, { trustDomain: TD });
  const issue = async (uri: string): Promise<Creds> => {
    const { keyPem, csrPem } = await generateKeyAndCsr(uri);
    const cert = await ca.signCsr(csrPem, { kind: 'workload', lifetimeSeconds: 3600, allowedUris: () => null });
    return { certPem: cert.chainPem, keyPem };
  };
  [clientCreds, serverCreds] = await Promise.all([issue(CLIENT_ID), issue(SERVER_ID)]);
});

// ---------------------------------------------------------------------------
// helpers


async function tunnelServer(t: Test, over: ListenerOverrides = {}): Promise<{ server: HboneServer; port: number; metrics: ProxyMetrics; reporter: ListenerReporter }> {
  const metrics = new ProxyMetrics();
  const reporter = new ListenerReporter({ metrics });
  const server = new HboneServer({
    trustBundle: () => ca.rootPem,
    serverCertificate: (id) => (id === SERVER_ID ? serverCreds : undefined),
    authorize: () => ({ accept: true }),
    limits: listenerLimits(over),
    reporter,
  });
  const port = await server.listen(0, '127.0.0.1');
  t.teardown(() => server.close());
  return { server, port, metrics, reporter };
}

/** A real tunnel stream through the server, from 127.0.0.1 with a valid identity: its echo comes back. */
async function tunnelWorks(t: Test, port: number, target: { host: string; port: number }): Promise<boolean> {
  const pool = new HbonePool();
  t.teardown(() => pool.close());
  const s = await pool.connect({
    sourceIdentity: CLIENT_ID,
    credentials: clientCreds,
    trustBundle: ca.rootPem,
    node: { address: '127.0.0.1', port },
    destinationIdentity: SERVER_ID,
    target,
    timeoutMs: 5_000,
  });
  const got = await new Promise<string>((resolve, reject) => {
    let out = '';
    s.on('data', (b: Buffer) => (out += b.toString()));
    s.once('end', () => resolve(out));
    s.once('error', reject);
    s.end('still-serving');
  });
  s.destroy();
  return got === 'still-serving';
}

/** Raw TCP connections that never speak; `closed()` counts the ones the server closed. */
async function silentConnections(t: Test, port: number, n: number, localAddress?: string): Promise<{ closed: () => number }> {
  let closed = 0;
  const socks: net.Socket[] = [];
  for (let i = 0; i < n; i++) {
    const s = net.connect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) });
    s.on('error', () => {});
    s.once('close', () => closed++);
    socks.push(s);
    await new Promise<void>((r) => {
      s.once('connect', () => r());
      s.once('close', () => r());
    });
  }
  t.teardown(() => {
    for (const s of socks) s.destroy();
  });
  return { closed: () => closed };
}

async function metricsText(m: ProxyMetrics): Promise<string> {
  return m.registry.metrics();
}

// --- a raw HTTP/2 client over mutual TLS, frame by frame ---

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
const T = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, CONTINUATION: 9 } as const;
const END_HEADERS = 0x4;
const ACK = 0x1;
const CANCEL = 8;
const ENHANCE_YOUR_CALM = 11;

function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, payload]);
}

/** A header block as HEADERS and CONTINUATION frames within the 16 KiB default frame size. */
function headersFrames(stream: number, block: Buffer): Buffer {
  const max = 16_384;
  const out: Buffer[] = [];
  for (let at = 0; at < block.length || at === 0; at += max) {
    const last = at + max >= block.length;
    out.push(frame(at === 0 ? T.HEADERS : T.CONTINUATION, last ? END_HEADERS : 0, stream, block.subarray(at, at + max)));
    if (last) break;
  }
  return Buffer.concat(out);
}

/** HPACK integer with a 7-bit prefix (RFC 7541 §5.1), no Huffman. */
function hpackInt(n: number): Buffer {
  if (n < 127) return Buffer.from([n]);
  const out = [127];
  n -= 127;
  while (n >= 128) {
    out.push((n % 128) + 128);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}

/** A literal header field without indexing, new name (RFC 7541 §6.2.2). */
function literal(name: string, value: string): Buffer {
  return Buffer.concat([Buffer.from([0]), hpackInt(name.length), Buffer.from(name), hpackInt(value.length), Buffer.from(value)]);
}

function connectBlock(target: { host: string; port: number }, extra: Buffer[] = []): Buffer {
  return Buffer.concat([literal(':method', 'CONNECT'), literal(':authority', `${target.host}:${target.port}`), ...extra]);
}

class RawH2 {
  readonly socket: tls.TLSSocket;
  /** The first GOAWAY's error code (a destroy after it may send another, NO_ERROR). */
  goaway: number | undefined;
  readonly rst = new Map<number, number>();
  /** Stream ids the server answered with HEADERS, and whether the block started with the indexed `:status 200`. */
  readonly answered = new Map<number, boolean>();
  pingAcks = 0;
  closed = false;
  #buf = Buffer.alloc(0);

  private constructor(socket: tls.TLSSocket) {
    this.socket = socket;
    socket.on('error', () => {});
    socket.on('close', () => (this.closed = true));
    socket.on('data', (b: Buffer) => this.#read(b));
  }

  static async open(port: number, opts: { ackPings?: boolean } = {}): Promise<RawH2> {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      servername: identityToSni(SERVER_ID),
      ca: ca.rootPem,
      cert: clientCreds.certPem,
      key: clientCreds.keyPem,
      ALPNProtocols: ['h2'],
      checkServerIdentity: () => undefined,
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', () => resolve());
      socket.once('error', reject);
    });
    const c = new RawH2(socket);
    c.ackPings = opts.ackPings ?? true;
    c.write(Buffer.concat([PREFACE, frame(T.SETTINGS, 0, 0)]));
    return c;
  }

  ackPings = true;

  write(b: Buffer): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(b);
  }

  #read(b: Buffer): void {
    this.#buf = Buffer.concat([this.#buf, b]);
    while (this.#buf.length >= 9) {
      const len = this.#buf.readUIntBE(0, 3);
      if (this.#buf.length < 9 + len) return;
      const type = this.#buf[3]!;
      const flags = this.#buf[4]!;
      const stream = this.#buf.readUInt32BE(5) & 0x7fffffff;
      const payload = this.#buf.subarray(9, 9 + len);
      this.#buf = this.#buf.subarray(9 + len);
      if (type === T.SETTINGS && !(flags & ACK)) this.write(frame(T.SETTINGS, ACK, 0));
      else if (type === T.GOAWAY) this.goaway ??= payload.readUInt32BE(4);
      else if (type === T.RST_STREAM) this.rst.set(stream, payload.readUInt32BE(0));
      else if (type === T.HEADERS) this.answered.set(stream, payload[0] === 0x88);
      else if (type === T.PING && flags & ACK) this.pingAcks++;
      else if (type === T.PING && this.ackPings) this.write(frame(T.PING, ACK, 0, payload));
    }
  }

  /** Resolves once the server closed the socket, or false after `ms`. */
  closedWithin(ms: number): Promise<boolean> {
    return waitFor(() => this.closed, ms, 20);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

async function rawH2(t: Test, port: number, opts?: { ackPings?: boolean }): Promise<RawH2> {
  const c = await RawH2.open(port, opts);
  t.teardown(() => c.destroy());
  return c;
}

// ---------------------------------------------------------------------------
// pure parts

t.test('nodemesh proxy: a bad limit flag, or limits over RLIMIT_NOFILE, stop it before it listens or joins', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-listeners-cli-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const stateDir = path.join(dir, 'state');
  const run = (...flags: string[]) =>
    spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js'), 'proxy', '--node', 'x', '--controller', '127.0.0.1:9', '--proxy-ip', '127.0.0.1', '--cgroup', dir, '--state-dir', stateDir, ...flags], { encoding: 'utf8', timeout: 30_000 });
  const bad = run('--max-tunnel-handshakes', 'lots');
  t.equal(bad.status, 64, 'a usage error');
  t.match(bad.stderr, /--max-tunnel-handshakes must be a whole number from 1 to 999999999, not "lots" \(default 128\)/);
  const big = run('--max-outbound-connections', '999999');
  t.not(big.status, 0);
  t.match(big.stderr, /NM_ERR_FD_BUDGET|RLIMIT_NOFILE.*ulimit -n/, 'names the limit and the fix');
  t.notOk(fs.existsSync(stateDir), 'nothing was made');
});

t.test('limits: flags and the file descriptor budget', async (t) => {
  const l = limitsFromFlags({ 'tunnel-handshake-timeout': '750ms', 'max-tunnel-handshakes-per-peer': '3' });
  t.equal(l.tunnel.handshakeTimeoutMs, 750);
  t.equal(l.tunnel.maxHandshakesPerPeer, 3);
  t.equal(l.tunnel.maxHandshakes, LISTENER_DEFAULTS.tunnel.maxHandshakes, 'the rest keep their defaults');
  t.throws(() => limitsFromFlags({ 'max-tunnel-connections': '0' }), { code: 'NM_ERR_USAGE', message: /--max-tunnel-connections must be a whole number.*not "0"/ });
  t.throws(() => limitsFromFlags({ 'tunnel-handshake-timeout': 'soon' }), { message: /--tunnel-handshake-timeout must be a duration/ });
  t.equal(fdBudgetProblem(LISTENER_DEFAULTS, 20_000), undefined, 'the defaults fit 20,000 descriptors (this lab host)');
  t.match(fdBudgetProblem(LISTENER_DEFAULTS, 4_096), /RLIMIT_NOFILE.*ulimit -n [0-9]+.*--max-outbound-connections/);
});

// ---------------------------------------------------------------------------
// item 1: the tunnel port's TLS handshakes

t.test('a TLS handshake that never finishes is cut at the handshake deadline, and counted', async (t) => {
  const { server, port, metrics } = await tunnelServer(t, { tunnel: { handshakeTimeoutMs: 300 } });
  const silent = await silentConnections(t, port, 3);
  // A ClientHello's first bytes and then nothing: a partial handshake.
  const partial = net.connect({ host: '127.0.0.1', port });
  partial.on('error', () => {});
  let partialClosed = false;
  partial.once('close', () => (partialClosed = true));
  partial.once('connect', () => partial.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03])));
  t.teardown(() => partial.destroy());
  t.ok(await waitFor(() => silent.closed() === 3 && partialClosed, 8_000), 'silent and partial-ClientHello connections closed by the server');
  t.equal(server.load.handshakes, 0, 'no handshake left in flight');
  t.ok(await waitFor(() => server.load.connections === 0, 2_000), 'and no connection held');
  t.match(await metricsText(metrics), /nodemesh_listener_rejected_total\{listener="tunnel",reason="handshake-timeout"\} 4/);
});

t.test('one address flooding the tunnel port hits its own bound; another peer keeps its tunnel', async (t) => {
  // A long deadline, so only the per-peer bound can close the flood here.
  const { server, port, metrics } = await tunnelServer(t, { tunnel: { handshakeTimeoutMs: 60_000, maxHandshakesPerPeer: 4, maxConnectionsPerPeer: 8 } });
  const target = await echoTarget(t);
  const flood = await silentConnections(t, port, 40, ATTACKER);
  t.ok(await waitFor(() => flood.closed() === 36, 10_000), `the flood's connections over the bound were closed (${flood.closed()} of 40)`);
  t.equal(server.load.handshakes, 4, 'the attacker holds exactly its per-peer share of handshakes');
  t.ok(await tunnelWorks(t, port, target), 'a tunnel stream from another address with a valid identity still works');
  const text = await metricsText(metrics);
  t.match(text, /nodemesh_listener_rejected_total\{listener="tunnel",reason="handshakes-per-peer"\} 36/);
  t.match(text, /nodemesh_listener_accepted_total\{listener="tunnel"\} [1-9]/);
  t.match(text, /nodemesh_listener_open_connections\{listener="tunnel"\} [1-9]/);
});

t.test('the rejection log is rate limited: a flood writes a few lines, with the count of the rest', async (t) => {
  const lines: Record<string, unknown>[] = [];
  const log = { warn: (o: Record<string, unknown>) => lines.push(o) } as unknown as Logger;
  const r = new ListenerReporter({ log, limits: { linesPerInterval: 3, intervalMs: 60_000 } });
  for (let i = 0; i < 1_000; i++) r.reject('tunnel', 'handshake-timeout', { remote: ATTACKER });
  t.equal(lines.length, 3, '1,000 refusals, 3 lines');
  t.equal(r.counts.get('tunnel handshake-timeout'), 1_000, 'all counted');
});

// ---------------------------------------------------------------------------
// item 5: HTTP/2 abuse on the tunnel port

t.test('a rapid-reset flood gets GOAWAY ENHANCE_YOUR_CALM and the socket closed; other sessions go on', async (t) => {
  const { port, metrics } = await tunnelServer(t, { h2: { maxResetsPerSecond: 50, goawayGraceMs: 200 } });
  const target = await echoTarget(t);
  const c = await rawH2(t, port);
  const block = connectBlock(target);
  for (let batch = 0; batch < 30 && !c.closed; batch++) {
    const frames: Buffer[] = [];
    for (let i = 0; i < 100; i++) {
      const id = 2 * (batch * 100 + i) + 1;
      frames.push(frame(T.HEADERS, END_HEADERS, id, block), frame(T.RST_STREAM, 0, id, Buffer.from([0, 0, 0, CANCEL])));
    }
    c.write(Buffer.concat(frames));
    await new Promise((r) => setImmediate(r));
  }
  t.ok(await c.closedWithin(5_000), 'the server closed the socket');
  t.equal(c.goaway, ENHANCE_YOUR_CALM, 'after GOAWAY ENHANCE_YOUR_CALM');
  t.ok(await tunnelWorks(t, port, target), 'a well-behaved session still gets its stream');
  t.match(await metricsText(metrics), /nodemesh_listener_rejected_total\{listener="tunnel",reason="h2-resets"\} 1/);
});

t.test('PING and SETTINGS floods are closed', async (t) => {
  const { port, metrics } = await tunnelServer(t, { h2: { maxPingsPerSecond: 10, maxSettingsPerSecond: 10, goawayGraceMs: 200 } });
  const pings = await rawH2(t, port);
  pings.write(Buffer.concat(Array.from({ length: 200 }, (_, i) => frame(T.PING, 0, 0, Buffer.alloc(8, i)))));
  t.ok(await pings.closedWithin(5_000), 'PING flood: closed');
  t.equal(pings.goaway, ENHANCE_YOUR_CALM);
  const settings = await rawH2(t, port);
  settings.write(Buffer.concat(Array.from({ length: 200 }, () => frame(T.SETTINGS, 0, 0))));
  t.ok(await settings.closedWithin(5_000), 'SETTINGS flood: closed');
  t.equal(settings.goaway, ENHANCE_YOUR_CALM);
  const text = await metricsText(metrics);
  t.match(text, /reason="h2-pings"\} 1/);
  t.match(text, /reason="h2-settings"\} 1/);
});

t.test('a header list over the bound is refused; a normal CONNECT on the same session is answered', async (t) => {
  const { port } = await tunnelServer(t);
  const target = await echoTarget(t);
  const c = await rawH2(t, port);
  // 20 KiB of header value, over the 8 KiB list bound (node's default is 64 KiB).
  c.write(headersFrames(1, connectBlock(target, [literal('x-pad', 'a'.repeat(20 * 1024))])));
  // And 40 small fields, over the 16-pair bound.
  c.write(frame(T.HEADERS, END_HEADERS, 3, connectBlock(target, Array.from({ length: 40 }, (_, i) => literal(`x-h${i}`, 'v')))));
  c.write(frame(T.HEADERS, END_HEADERS, 5, connectBlock(target)));
  t.ok(await waitFor(() => c.answered.get(5) === true || c.closed, 5_000), 'the normal CONNECT was answered 200');
  t.equal(c.answered.get(5), true);
  t.not(c.answered.get(1), true, 'the oversize header list got no 200');
  t.not(c.answered.get(3), true, 'the header list with too many fields got no 200');
  t.ok(c.rst.has(1) || c.answered.has(1), 'the oversize one was refused (RST_STREAM or an error status)');
});

t.test('a peer that stops answering PING is closed (keepalive)', async (t) => {
  const { port, metrics } = await tunnelServer(t, { h2: { keepaliveIntervalMs: 200, keepaliveTimeoutMs: 300 } });
  const c = await rawH2(t, port, { ackPings: false });
  t.ok(await c.closedWithin(5_000), 'closed');
  t.match(await metricsText(metrics), /reason="h2-keepalive"\} 1/);
});

// ---------------------------------------------------------------------------
// item 1: metrics, health and admin (HTTP/1)

async function adminServers(t: Test, over: ListenerOverrides): Promise<{ ports: { admin: number; metrics: number; health: number }; socket: string; metrics: ProxyMetrics }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-listeners-admin-'));
  const socket = path.join(dir, 'admin.sock');
  const metrics = new ProxyMetrics();
  const a = await startAdmin(
    { flows: new FlowTable(), configDump: () => ({}), status: () => ({}), ready: () => true, metrics },
    { adminHost: '127.0.0.1', adminPort: 0, adminSocket: socket, metricsHost: '127.0.0.1', metricsPort: 0, healthHost: '127.0.0.1', healthPort: 0, limits: listenerLimits(over), reporter: new ListenerReporter({ metrics }) },
  );
  t.teardown(async () => {
    await a.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { ports: a.ports, socket, metrics };
}

/** Sends a request head one byte every 100 ms, never finishing it; resolves to whether the server closed the connection within `ms`. */
function slowLoris(t: Test, to: net.NetConnectOpts, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(to);
    s.on('error', () => {});
    const head = 'GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ' + 'a'.repeat(4096);
    let i = 0;
    const drip = setInterval(() => s.write(head[i++ % head.length]!), 100);
    const give = setTimeout(() => {
      clearInterval(drip);
      s.destroy();
      resolve(false);
    }, ms);
    s.once('close', () => {
      clearInterval(drip);
      clearTimeout(give);
      resolve(true);
    });
    t.teardown(() => s.destroy());
  });
}

t.test('slow-loris on metrics (15020), health (15021) and admin (15000, unix socket) is closed', async (t) => {
  const http = { headersTimeoutMs: 500, requestTimeoutMs: 1_000 };
  const { ports, socket } = await adminServers(t, { http, admin: http });
  const closed = await Promise.all([
    slowLoris(t, { host: '127.0.0.1', port: ports.metrics }, 8_000),
    slowLoris(t, { host: '127.0.0.1', port: ports.health }, 8_000),
    slowLoris(t, { host: '127.0.0.1', port: ports.admin }, 8_000),
    slowLoris(t, { path: socket }, 8_000),
  ]);
  t.same(closed, [true, true, true, true], 'metrics, health, admin, admin socket');
  const res = await fetch(`http://127.0.0.1:${ports.metrics}/metrics`);
  t.equal(res.status, 200, 'metrics still answers');
  const text = await res.text();
  for (const l of ['metrics', 'health', 'admin', 'admin-socket']) t.match(text, new RegExp(`nodemesh_listener_rejected_total\\{listener="${l}",reason="http-timeout"\\} [1-9]`), `${l}: counted`);
});

t.test('one address holding many connections to metrics hits the per-peer bound; others still scrape', async (t) => {
  const { ports } = await adminServers(t, { http: { maxConnectionsPerPeer: 4 } });
  const flood = await silentConnections(t, ports.metrics, 20, ATTACKER);
  t.ok(await waitFor(() => flood.closed() === 16, 10_000), `closed over the bound (${flood.closed()} of 20)`);
  const res = await fetch(`http://127.0.0.1:${ports.metrics}/metrics`);
  t.equal(res.status, 200);
  t.match(await res.text(), /nodemesh_listener_rejected_total\{listener="metrics",reason="per-peer"\} 16/);
});

// ---------------------------------------------------------------------------
// item 1: the outbound listener (15001), bounded per source pod

t.test('one pod holding many outbound connections hits its own bound; another pod still connects', async (t) => {
  // The data path's answer (origin and netns cookie, from BPF) is given here by address: pod A is 127.0.0.2, pod B 127.0.0.1.
  // Everything after it is the real listener; the destination is a workload on another node, reached through a tunnel
  // that this test answers with an in-memory echo.
  const state = new ConfigState();
  const far = { kind: 'Workload', metadata: { name: 'far', namespace: 'default' }, spec: { node: 'n2', serviceAccount: 'far', addresses: ['198.18.99.1'] } };
  const n2 = { kind: 'Node', metadata: { name: 'n2' }, addresses: ['198.18.0.2'] };
  state.apply({ snapshot: { version: 1, items: [{ key: 'Workload/default/far', json: JSON.stringify(far) }, { key: 'Node//n2', json: JSON.stringify(n2) }] } } as never);
  const view = MeshView.build(state, 'n1');
  const pod = (name: string): WorkloadView => ({ key: `Workload/default/${name}`, name, workload: name, namespace: 'default', labels: {}, node: 'n1', addresses: [], identity: spiffeWorkloadId(TD, 'default', name), serviceAccount: name, ready: true, local: true, nodeAddresses: [] });
  const metrics = new ProxyMetrics();
  const server = new OutboundServer({
    node: 'n1',
    originOf: (s) => ({ ip: '198.18.99.1', port: 8080, netnsCookie: s.remoteAddress?.endsWith('127.0.0.2') ? 7n : 8n, cgroupId: 0n, pid: 0, family: 4, startNs: 0n }),
    workloadOfCookie: (c) => pod(c === 7n ? 'pod-a' : 'pod-b'),
    view: () => view,
    policies: () => compilePolicies([]),
    balancers: new BalancerCache('n1'),
    recorder: new ConnectionRecorder({ node: 'n1', flows: new FlowTable(), metrics, log: silentLogger(), accessLogLevel: 'silent' }),
    upstream: new UpstreamConnector({ node: 'n1', connectTimeoutMs: LISTENER_DEFAULTS.outbound.connectTimeoutMs, tunnel: async () => new PassThrough() }),
    log: silentLogger(),
    limits: { ...LISTENER_DEFAULTS.outbound, maxConnectionsPerPeer: 4 },
    reporter: new ListenerReporter({ metrics }),
  });
  const port = await server.listen(0, '127.0.0.1');
  t.teardown(() => server.close(0));
  const flood = await silentConnections(t, port, 20, ATTACKER);
  t.ok(await waitFor(() => flood.closed() === 16, 10_000), `pod A's connections over its bound were closed (${flood.closed()} of 20)`);
  const b = net.connect({ host: '127.0.0.1', port });
  t.teardown(() => b.destroy());
  const echoed = await new Promise<string>((resolve) => {
    let got = '';
    b.on('error', () => resolve('error'));
    b.on('data', (d: Buffer) => {
      got += d.toString();
      if (got === 'pod-b-bytes') resolve(got);
    });
    b.write('pod-b-bytes');
  });
  t.equal(echoed, 'pod-b-bytes', "pod B's connection goes through");
  t.match(await metricsText(metrics), /nodemesh_listener_rejected_total\{listener="outbound",reason="per-peer"\} 16/);
});
