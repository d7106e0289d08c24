/**
 * No request of any kind ends the controller: a real controller process gets
 * garbage on every RPC of every service (lone surrogates, huge strings, wrong
 * types, random bytes and invalid UTF-8 as messages through a raw client,
 * deep nesting, bad gRPC framing over raw HTTP/2, streams opened and
 * abandoned), and after each case it must still be running and answer a
 * normal Apply and Get.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as http2 from 'node:http2';
import * as path from 'node:path';

import * as grpc from '@grpc/grpc-js';
import { t } from 'tap';

import { spiffeNodeId } from '../../src/controller/ca';
import { ControllerClient, loadCredentials } from '../../src/controller/client';
import { generateKeyAndCsr } from '../../src/node-proxy/identity';
import { PACKAGE_ROOT } from '../../src/paths';
import { doc, tempDir } from '../helpers/controller';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');
const SERVER_NAME = 'nodemesh-controller';
const MiB = 1024 * 1024;

interface Child {
  proc: ChildProcess;
  stderr: () => string;
}

function startController(dataDir: string): Promise<Child> {
  const proc = spawn(process.execPath, [BIN, 'controller', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--metrics-listen', '127.0.0.1:0', '--log-level', 'warn'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('controller serving')) resolve({ proc, stderr: () => err });
    });
    proc.once('exit', (code) => reject(new Error(`controller exited (${code}) before serving: ${out}${err}`)));
  });
}

// --- protobuf by hand, so fields can hold what no client library would send ---

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}
const bytesField = (field: number, payload: Buffer): Buffer => Buffer.concat([varint((field << 3) | 2), varint(payload.length), payload]);
const varintField = (field: number, n: number): Buffer => Buffer.concat([varint(field << 3), varint(n)]);
const INVALID_UTF8 = Buffer.from([0x77, 0x65, 0x62, 0xff, 0xfe, 0xed, 0xa0, 0x80, 0xc0, 0xaf]);

type Outcome = { code: number; details: string } | { ok: Buffer };

const identity = (b: Buffer): Buffer => b;

function rawClient(address: string, creds: { ca: string; cert?: string; key?: string }): grpc.Client {
  return new grpc.Client(address, grpc.credentials.createSsl(Buffer.from(creds.ca), creds.key ? Buffer.from(creds.key) : null, creds.cert ? Buffer.from(creds.cert) : null), {
    'grpc.ssl_target_name_override': SERVER_NAME,
    'grpc.default_authority': SERVER_NAME,
    'grpc.max_send_message_length': 64 * MiB,
    'grpc.max_receive_message_length': 64 * MiB,
  });
}

function rawUnary(client: grpc.Client, method: string, body: Buffer): Promise<Outcome> {
  return new Promise((resolve) => {
    client.makeUnaryRequest(method, identity, identity, body, new grpc.Metadata(), { deadline: Date.now() + 20_000 }, (err, res) =>
      resolve(err ? { code: err.code, details: err.details } : { ok: res! }),
    );
  });
}

/** Resolves with a call's status, or 'open' (and cancels it) when none came within `ms`. */
function outcomeOf(s: grpc.ClientReadableStream<Buffer> | grpc.ClientDuplexStream<Buffer, Buffer>, ms: number): Promise<Outcome | 'open'> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      s.cancel();
      resolve('open');
    }, ms);
    const settle = (o: Outcome): void => {
      clearTimeout(timer);
      resolve(o);
    };
    s.on('data', () => {});
    s.on('error', (err: grpc.ServiceError) => settle({ code: err.code, details: err.details }));
    s.on('status', (st: grpc.StatusObject) => settle({ code: st.code, details: st.details }));
  });
}

/** Opens a server stream, waits for its status (or `ms`), then cancels it. */
function rawServerStream(client: grpc.Client, method: string, body: Buffer, ms: number): Promise<Outcome | 'open'> {
  return outcomeOf(client.makeServerStreamRequest(method, identity, identity, body, new grpc.Metadata(), {}), ms);
}

/** Writes `messages` on a bidirectional stream, then waits for its status (or `ms`) and cancels it. */
function rawBidi(client: grpc.Client, method: string, messages: Buffer[], ms: number, end = true): Promise<Outcome | 'open'> {
  const s = client.makeBidiStreamRequest(method, identity, identity, new grpc.Metadata(), {});
  const outcome = outcomeOf(s, ms);
  for (const m of messages) s.write(m);
  if (end) s.end();
  return outcome;
}

/** One gRPC request over raw HTTP/2 with a body we frame ourselves; resolves with grpc-status, or the HTTP status. */
function rawHttp2(address: string, creds: { ca: string; cert: string; key: string }, method: string, headers: Record<string, string>, body: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const session = http2.connect(`https://${address}`, { ca: creds.ca, cert: creds.cert, key: creds.key, servername: SERVER_NAME });
    session.on('error', (err) => resolve(`session error ${err.message}`));
    const req = session.request({ ':method': 'POST', ':path': method, 'content-type': 'application/grpc', te: 'trailers', ...headers });
    let status = '';
    req.on('response', (h) => (status = `http ${String(h[':status'])}${h['grpc-status'] !== undefined ? ` grpc ${String(h['grpc-status'])}` : ''}`));
    req.on('trailers', (h) => (status = `grpc ${String(h['grpc-status'])}`));
    req.on('data', () => {});
    req.on('error', (err) => (status = `stream error ${err.message}`));
    req.on('close', () => {
      session.close();
      resolve(status || 'closed');
    });
    req.end(body);
    setTimeout(() => req.close(http2.constants.NGHTTP2_CANCEL), 10_000).unref();
  });
}

function frame(message: Buffer, opts: { compressed?: boolean; declaredLength?: number } = {}): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt8(opts.compressed ? 1 : 0, 0);
  head.writeUInt32BE(opts.declaredLength ?? message.length, 1);
  return Buffer.concat([head, message]);
}

const R = '/nodemesh.v1.Resources/';
const N = '/nodemesh.v1.NodeConfig/';
const B = '/nodemesh.v1.Bootstrap/';
const C = '/nodemesh.v1.Certificates/';
const A = 'nodemesh.io/v1alpha1';
const svc = (name: string): Record<string, unknown> => ({ apiVersion: A, kind: 'Service', metadata: { name, namespace: 'shop' }, spec: { selector: { app: 'web' }, addresses: ['198.19.0.10'], ports: [{ port: 80 }] } });
const applyBody = (json: string, source = 'garbage.json'): Buffer => bytesField(1, Buffer.concat([bytesField(1, Buffer.from(source)), varintField(2, 1), bytesField(3, Buffer.from(json))]));

t.test('garbage on every RPC never ends the controller, and it keeps answering', async (t) => {
  const dataDir = tempDir(t, 'nodemesh-robust-');
  const child = await startController(dataDir);
  t.teardown(() => {
    child.proc.kill('SIGKILL');
  });
  const creds = loadCredentials(path.join(dataDir, 'admin.json'));
  const admin = new ControllerClient({ address: creds.controller, ca: creds.ca, cert: creds.cert, key: creds.key }, { timeoutMs: 20_000 });
  const { token } = await admin.createToken('n1');
  const anonClient = new ControllerClient({ address: creds.controller, ca: creds.ca });
  const nodeKey = await generateKeyAndCsr(spiffeNodeId('cluster.local', 'n1'));
  const nodeCert = await anonClient.join(token, 'n1', nodeKey.csrPem);
  anonClient.close();
  const rawAdmin = rawClient(creds.controller, creds);
  const rawAnon = rawClient(creds.controller, { ca: creds.ca });
  const rawNode = rawClient(creds.controller, { ca: creds.ca, cert: nodeCert.certificateChainPem, key: nodeKey.keyPem });
  t.teardown(() => {
    for (const c of [admin, rawAdmin, rawAnon, rawNode]) c.close();
  });

  let generation = 0;
  let dead = false;
  const stillServes = async (what: string): Promise<void> => {
    if (dead) return;
    if (child.proc.exitCode !== null || child.proc.signalCode !== null) {
      dead = true;
      t.fail(`${what}: the controller exited (${child.proc.exitCode ?? child.proc.signalCode}): ${child.stderr().slice(-2000)}`);
      return;
    }
    generation++;
    try {
      const r = await admin.apply([doc({ ...svc('canary'), metadata: { name: 'canary', namespace: 'shop', labels: { gen: String(generation) } } })]);
      const got = await admin.get('svc', 'shop', 'canary');
      t.ok(r.results[0]!.action !== 'unchanged' && got.metadata.labels?.gen === String(generation), `${what}: still serves Apply and Get`);
    } catch (err) {
      dead = true;
      t.fail(`${what}: Apply/Get failed: ${(err as Error).message}; controller stderr: ${child.stderr().slice(-2000)}`);
    }
  };
  const answered = (what: string, o: Outcome | 'open' | string): void => {
    if (typeof o === 'object' && 'code' in o) t.ok(Buffer.byteLength(encodeURI(o.details)) <= 4096, `${what}: ${grpc.status[o.code]}, details within 4 KiB`);
  };

  const unaryCases: [string, grpc.Client, string, Buffer][] = [
    ['Apply: a name with a lone surrogate (the reported crash)', rawAdmin, `${R}Apply`, applyBody(JSON.stringify(svc('web\ud800')))],
    ['Apply: lone surrogates in kind, namespace, label key and value', rawAdmin, `${R}Apply`, applyBody(JSON.stringify({ apiVersion: A, kind: 'Svc\udbff', metadata: { name: 'w', namespace: '\udc00', labels: { '\ud800k': 'v\udfff' } }, spec: {} }))],
    ['Apply: a 3 MiB name', rawAdmin, `${R}Apply`, applyBody(JSON.stringify(svc('w'.repeat(3 * MiB))))],
    ['Apply: a 3 MiB source', rawAdmin, `${R}Apply`, applyBody(JSON.stringify(svc('w')), 's\ud800'.repeat(MiB))],
    ['Apply: wrong types everywhere', rawAdmin, `${R}Apply`, applyBody(JSON.stringify({ apiVersion: 7, kind: ['Service'], metadata: 'web', spec: null }))],
    ['Apply: JSON that is not an object', rawAdmin, `${R}Apply`, Buffer.concat(['null', '[]', '"x"', '1e999', '-0', 'true'].map((j) => applyBody(j)))],
    ['Apply: invalid JSON quoting a lone surrogate', rawAdmin, `${R}Apply`, applyBody('{"a": \\ud800 }')],
    ['Apply: 200,000-level nested JSON', rawAdmin, `${R}Apply`, applyBody(`{"apiVersion":"${A}","kind":"Service","metadata":{"name":"d"},"spec":${'['.repeat(200_000)}${']'.repeat(200_000)}}`)],
    ['Apply: 200,000-level nested objects', rawAdmin, `${R}Apply`, applyBody('{"a":'.repeat(200_000) + '1' + '}'.repeat(200_000))],
    ['Apply: invalid UTF-8 in json and source', rawAdmin, `${R}Apply`, bytesField(1, Buffer.concat([bytesField(1, INVALID_UTF8), bytesField(3, Buffer.concat([Buffer.from('{"kind":"'), INVALID_UTF8, Buffer.from('"}')]))]))],
    ['Apply: 5,000 documents', rawAdmin, `${R}Apply`, Buffer.concat(Array.from({ length: 5000 }, () => applyBody('{}')))],
    ['Apply: a 6 MiB message (over the request limit)', rawAdmin, `${R}Apply`, applyBody(JSON.stringify(svc('w')), 'x'.repeat(6 * MiB))],
    ['Apply: a message with a wrong wire type', rawAdmin, `${R}Apply`, Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f])],
    ['Apply: anonymous, with a lone surrogate', rawAnon, `${R}Apply`, applyBody(JSON.stringify(svc('web\ud800')))],
    ['Get: invalid UTF-8 name', rawAdmin, `${R}Get`, Buffer.concat([bytesField(1, Buffer.from('svc')), bytesField(3, INVALID_UTF8)])],
    ['Get: a 3 MiB name and namespace', rawAdmin, `${R}Get`, Buffer.concat([bytesField(1, Buffer.from('svc')), bytesField(2, Buffer.alloc(MiB, 'n')), bytesField(3, Buffer.alloc(3 * MiB, 'w'))])],
    ['Get: a 1 MiB kind', rawAdmin, `${R}Get`, bytesField(1, Buffer.alloc(MiB, 'k'))],
    ['List: a 1 MiB selector', rawAdmin, `${R}List`, Buffer.concat([bytesField(1, Buffer.from('svc')), bytesField(4, Buffer.alloc(MiB, '('))])],
    ['List: selectors that do not parse', rawAdmin, `${R}List`, Buffer.concat([bytesField(1, Buffer.from('svc')), bytesField(4, Buffer.from('a in (b,,), !!=\ud800'))])],
    ['Delete: 100,000 targets', rawAdmin, `${R}Delete`, Buffer.concat(Array.from({ length: 100_000 }, () => bytesField(1, bytesField(1, Buffer.from('svc')))))],
    ['Delete: invalid UTF-8 and huge names', rawAdmin, `${R}Delete`, bytesField(1, Buffer.concat([bytesField(1, INVALID_UTF8), bytesField(3, Buffer.alloc(MiB, 'w')), bytesField(4, Buffer.from('x'))]))],
    ['ListNodes: as a node, with junk fields', rawNode, `${N}ListNodes`, Buffer.concat([bytesField(7, INVALID_UTF8), varintField(9, 2 ** 40)])],
    ['RevokeNode: a 1 MiB name with invalid UTF-8', rawAdmin, `${N}RevokeNode`, bytesField(1, Buffer.concat([INVALID_UTF8, Buffer.alloc(MiB, 'n')]))],
    ['RevokeNode: a node that never joined', rawAdmin, `${N}RevokeNode`, bytesField(1, Buffer.from('n9'))],
    ['RevokeNode: as a node', rawNode, `${N}RevokeNode`, bytesField(1, Buffer.from('n1'))],
    ['Join: a garbage token, node and CSR', rawAnon, `${B}Join`, Buffer.concat([bytesField(1, Buffer.from('..\ud800..')), bytesField(2, INVALID_UTF8), bytesField(3, Buffer.from('-----BEGIN CERTIFICATE REQUEST-----\n\u0000\n'))])],
    ['Join: a 3 MiB token', rawAnon, `${B}Join`, bytesField(1, Buffer.alloc(3 * MiB, '.'))],
    ['CreateToken: a 1 MiB node name, ttl 2^32-1', rawAdmin, `${B}CreateToken`, Buffer.concat([bytesField(1, Buffer.alloc(MiB, 'n')), varintField(2, 2 ** 32 - 1)])],
    ['CreateToken: as a node', rawNode, `${B}CreateToken`, bytesField(1, Buffer.from('n2'))],
    ['Sign: a garbage CSR', rawNode, `${C}Sign`, bytesField(1, Buffer.concat([Buffer.from('-----BEGIN CERTIFICATE REQUEST-----\n'), randomBytes(3000), Buffer.from('\n-----END CERTIFICATE REQUEST-----\n')]))],
    ['Sign: a 3 MiB CSR', rawNode, `${C}Sign`, bytesField(1, Buffer.alloc(3 * MiB, 'A'))],
    ['Sign: anonymous', rawAnon, `${C}Sign`, bytesField(1, Buffer.from('x'))],
    ['an unknown method', rawAdmin, `${R}Nope`, Buffer.alloc(0)],
  ];
  // Random bytes as every message of every unary RPC.
  for (const m of [`${R}Apply`, `${R}Get`, `${R}List`, `${R}Delete`, `${N}ListNodes`, `${N}RevokeNode`, `${B}Join`, `${B}CreateToken`, `${C}Sign`]) {
    for (const size of [1, 7, 300, 70_000]) unaryCases.push([`${m}: ${size} random bytes`, m.startsWith(C) ? rawNode : rawAdmin, m, randomBytes(size)]);
  }

  for (const [what, client, method, body] of unaryCases) {
    answered(what, await rawUnary(client, method, body));
    await stillServes(what);
  }

  // Watch: refused callers, bad requests, random bytes, and streams opened then abandoned.
  const watchCases: [string, grpc.Client, Buffer][] = [
    ['Watch: anonymous', rawAnon, Buffer.alloc(0)],
    ['Watch: a node certificate', rawNode, Buffer.alloc(0)],
    ['Watch: an unknown kind with a lone surrogate', rawAdmin, bytesField(1, Buffer.from('k\ud800'))],
    ['Watch: invalid UTF-8 namespace', rawAdmin, bytesField(2, INVALID_UTF8)],
    ['Watch: from a version far in the future', rawAdmin, varintField(3, 2 ** 52)],
    ['Watch: random bytes', rawAdmin, randomBytes(512)],
  ];
  for (const [what, client, body] of watchCases) {
    const o = await rawServerStream(client, `${R}Watch`, body, 3000);
    answered(what, o);
    if (what.includes('anonymous')) t.match(o, { code: grpc.status.UNAUTHENTICATED }, `${what}: refused at once`);
    if (what.includes('node certificate')) t.match(o, { code: grpc.status.PERMISSION_DENIED }, `${what}: refused at once`);
    await stillServes(what);
  }

  // NodeConfig.Stream: garbage messages, lies, and abandoned streams.
  const hello = (node: string, extra: Buffer = Buffer.alloc(0)): Buffer => bytesField(1, Buffer.concat([bytesField(1, Buffer.from(node)), extra]));
  const streamCases: [string, grpc.Client, Buffer[], boolean][] = [
    ['Stream: anonymous', rawAnon, [hello('n1')], true],
    ['Stream: the admin', rawAdmin, [hello('n1')], true],
    ['Stream: random bytes first', rawNode, [randomBytes(100), randomBytes(5000)], true],
    ['Stream: an ack before hello', rawNode, [bytesField(2, varintField(1, 5))], true],
    ['Stream: hello as another node, invalid UTF-8', rawNode, [hello('n2\ud800'), hello(INVALID_UTF8.toString('latin1'))], true],
    ['Stream: hello with 10,000 bogus addresses and a 1 MiB version', rawNode, [hello('n1', Buffer.concat([bytesField(3, Buffer.alloc(MiB, 'v')), ...Array.from({ length: 10_000 }, () => bytesField(4, Buffer.from('not-an-ip')))]))], true],
    ['Stream: hello, then a 1 MiB NACK with invalid UTF-8, random bytes, acks of unknown versions', rawNode, [hello('n1'), bytesField(3, Buffer.concat([varintField(1, 2 ** 50), bytesField(2, Buffer.concat([INVALID_UTF8, Buffer.alloc(MiB, 'r')]))])), randomBytes(64), bytesField(2, varintField(1, 2 ** 52))], true],
    ['Stream: hello, then abandoned without end', rawNode, [hello('n1')], false],
    ['Stream: opened and abandoned before any message', rawNode, [], false],
  ];
  for (const [what, client, messages, end] of streamCases) {
    const o = await rawBidi(client, `${N}Stream`, messages, 3000, end);
    answered(what, o);
    if (what.includes('anonymous')) t.match(o, { code: grpc.status.UNAUTHENTICATED }, `${what}: refused at once`);
    await stillServes(what);
  }

  // Many streams opened at once and dropped with their connection, mid-flight.
  const dropped = rawClient(creds.controller, creds);
  const droppedNode = rawClient(creds.controller, { ca: creds.ca, cert: nodeCert.certificateChainPem, key: nodeKey.keyPem });
  for (let i = 0; i < 50; i++) {
    dropped.makeServerStreamRequest(`${R}Watch`, identity, identity, Buffer.alloc(0), new grpc.Metadata(), {}).on('error', () => {});
    const s = droppedNode.makeBidiStreamRequest(`${N}Stream`, identity, identity, new grpc.Metadata(), {});
    s.on('error', () => {});
    s.write(hello('n1'));
  }
  await new Promise((r) => setTimeout(r, 500));
  await admin.apply([doc(svc('during-drop'))]);
  dropped.close();
  droppedNode.close();
  await stillServes('50 Watch and 50 node streams dropped with their connections');

  // Framing no gRPC library would produce, over raw HTTP/2 with the admin certificate.
  const h2Cases: [string, Record<string, string>, Buffer][] = [
    ['HTTP/2: compressed flag without an encoding', {}, frame(applyBody('{}'), { compressed: true })],
    ['HTTP/2: gzip encoding over random bytes', { 'grpc-encoding': 'gzip' }, frame(randomBytes(200), { compressed: true })],
    ['HTTP/2: an unknown encoding', { 'grpc-encoding': 'zstd-x' }, frame(randomBytes(200), { compressed: true })],
    ['HTTP/2: a frame declaring 2 GiB, then the stream ends', {}, frame(randomBytes(10), { declaredLength: 2 ** 31 })],
    ['HTTP/2: half a frame header', {}, Buffer.from([0, 0, 0])],
    ['HTTP/2: two messages on a unary call', {}, Buffer.concat([frame(applyBody('{}')), frame(applyBody('{}'))])],
    ['HTTP/2: a garbage timeout header', { 'grpc-timeout': '99999999999999999H' }, frame(applyBody('{}'))],
    ['HTTP/2: not gRPC at all', { 'content-type': 'text/plain' }, Buffer.from('GET / HTTP/1.1\r\n\r\n')],
  ];
  for (const [what, headers, body] of h2Cases) {
    t.comment(`${what}: ${await rawHttp2(creds.controller, creds, `${R}Apply`, headers, body)}`);
    await stillServes(what);
  }

  t.equal(child.proc.exitCode, null, 'the controller ran through all of it');
  t.notMatch(child.stderr(), /uncaught|unhandled/i, 'and logged no uncaught exception or unhandled rejection');
  fs.writeFileSync(path.join(dataDir, 'stderr.log'), child.stderr());
});
