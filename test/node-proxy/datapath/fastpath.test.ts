/**
 * The same-node fast path (src/node-proxy/datapath/fastpath.ts and
 * bpf/fastpath.bpf.c), on real loopback sockets with the real sockhash and
 * sk_skb program: client <-> [accepted | FastPath + Splice | upstream] <->
 * server, the way the outbound listener joins a same-node connection.
 * What is checked is what the two ends see (every byte, in order, each FIN
 * and RST where it belongs) and that the kernel, not the process, copied the
 * bytes: the process read none of them, the kernel's counters have them all.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as net from 'node:net';

import t, { type Test } from 'tap';

import { FastPath, type FastPair } from '../../../src/node-proxy/datapath/fastpath';
import { Splice } from '../../../src/node-proxy/outbound/splice';
import { bpfTest } from '../../helpers/bpf';
import { fixture } from '../../helpers/child';
import { echoTarget, listenPaused } from '../../helpers/net';
import { waitFor } from '../../helpers/wait';

interface Rig {
  client: net.Socket;
  server: net.Socket;
  /** The proxy's two sockets (for the bytes the process itself read). */
  accepted: net.Socket;
  upstream: net.Socket;
  pair: FastPair;
  ended: Promise<{ why: string; kernel: { aToB: number; bToA: number; proxied: boolean } }>;
}

interface RigOptions {
  idleTimeoutMs?: number;
  /** Written by the server as soon as it accepts (a server that speaks first). */
  banner?: Buffer;
  /** Written by the client right after connecting, before the proxy has joined the sockets. */
  early?: Buffer;
  /** The server does not read until told (a slow reader). */
  serverPaused?: boolean;
}

async function rig(t: Test, fp: FastPath, o: RigOptions = {}): Promise<Rig> {
  let onServer!: (s: net.Socket) => void;
  const gotServer = new Promise<net.Socket>((resolve) => (onServer = resolve));
  const serverPort = await listenPaused(t, (s) => {
    s.on('error', () => {});
    if (o.banner) s.write(o.banner);
    if (!o.serverPaused) s.resume();
    onServer(s);
  });
  let onEnded!: (r: Awaited<Rig['ended']>) => void;
  const ended = new Promise<Awaited<Rig['ended']>>((resolve) => (onEnded = resolve));
  let onJoined!: (r: { accepted: net.Socket; upstream: net.Socket; pair: FastPair }) => void;
  const joined = new Promise<{ accepted: net.Socket; upstream: net.Socket; pair: FastPair }>((resolve) => (onJoined = resolve));
  const proxyPort = await listenPaused(t, (accepted) => {
    const upstream = net.connect({ host: '127.0.0.1', port: serverPort, allowHalfOpen: true });
    upstream.once('connect', () => {
      const go = (): void => {
        const pair = fp.join(accepted, upstream);
        if (typeof pair === 'string') throw new Error(`not joined: ${pair}`);
        new Splice(accepted, upstream, o.idleTimeoutMs ?? 30_000, (why) => onEnded({ why, kernel: pair.leave() }), pair);
        onJoined({ accepted, upstream, pair });
      };
      // With a banner or early bytes, give them time to be in the queues before the join.
      if (o.banner || o.early) setTimeout(go, 50);
      else go();
    });
  });
  const client = net.connect({ host: '127.0.0.1', port: proxyPort, allowHalfOpen: true });
  client.on('error', () => {});
  if (o.early) client.write(o.early);
  const server = await gotServer;
  const j = await joined;
  t.teardown(() => {
    client.destroy();
    server.destroy();
  });
  return { client, server, ended, ...j };
}

function readAll(s: net.Socket): Promise<Buffer> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.once('end', () => resolve(Buffer.concat(parts)));
  });
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

bpfTest(t, 'the same-node fast path', async (t) => {
  const fp = FastPath.open();
  t.teardown(() => fp.close());

  await t.test('what a request and its answer carry is copied by the kernel alone', async (t) => {
    const r = await rig(t, fp);
    const up = randomBytes(256 << 10);
    const down = randomBytes(512 << 10);
    const atServer = readAll(r.server);
    const atClient = readAll(r.client);
    for (let i = 0; i < up.length; i += 16 << 10) r.client.write(up.subarray(i, i + (16 << 10)));
    r.client.end();
    t.equal(sha(await atServer), sha(up), 'the request arrived whole');
    r.server.end(down);
    t.equal(sha(await atClient), sha(down), 'the answer arrived whole');
    const { why, kernel } = await r.ended;
    t.equal(why, 'closed', 'ended cleanly');
    t.equal(r.accepted.bytesRead + r.upstream.bytesRead, 0, 'the proxy process read none of the bytes');
    t.same(kernel, { aToB: up.length, bToA: down.length, proxied: false }, 'the kernel counted every byte, each way');
  });

  await t.test('8 MB each way arrive whole and in order; each FIN ends only its direction', async (t) => {
    const r = await rig(t, fp);
    const up = randomBytes(8 << 20);
    const down = randomBytes(8 << 20);
    const atServer = readAll(r.server);
    const atClient = readAll(r.client);
    r.client.end(up);
    t.equal(sha(await atServer), sha(up), "the client's 8 MB reached the server, then its FIN");
    t.notOk(r.server.writableEnded, 'the server can still send: its direction is open');
    r.server.end(down);
    t.equal(sha(await atClient), sha(down), "the server's 8 MB reached the client after the client's FIN");
    const { why, kernel } = await r.ended;
    t.equal(why, 'closed', 'ended cleanly');
    // A burst this size may outrun the kernel's bound, and the proxy then copies the rest of that direction.
    t.equal(kernel.aToB + r.accepted.bytesRead, up.length, 'the kernel and the proxy between them copied each byte up once');
    t.equal(kernel.bToA + r.upstream.bytesRead, down.length, 'and each byte down once');
  });

  await t.test('30 echoes of 4 MB in 64 KB writes each come back whole and in order (the kernel hands some back to the proxy mid-way)', async (t) => {
    const echo = await echoTarget(t);
    const proxyPort = await listenPaused(t, (accepted) => {
      const up = net.connect({ ...echo, allowHalfOpen: true });
      up.once('connect', () => {
        const pair = fp.join(accepted, up);
        if (typeof pair === 'string') throw new Error(`not joined: ${pair}`);
        new Splice(accepted, up, 30_000, () => pair.leave(), pair);
      });
    });
    const data = randomBytes(4 << 20);
    const want = sha(data);
    let whole = 0;
    for (let i = 0; i < 30; i++) {
      const c = net.connect({ host: '127.0.0.1', port: proxyPort, allowHalfOpen: true });
      c.on('error', () => {});
      const back = readAll(c);
      await new Promise((resolve) => c.once('connect', resolve));
      for (let off = 0; off < data.length; off += 64 << 10) if (!c.write(data.subarray(off, off + (64 << 10)))) await new Promise((resolve) => c.once('drain', resolve));
      c.end();
      if (sha(await back) === want) whole++;
      c.destroy();
    }
    t.equal(whole, 30, 'every echo came back whole and in order');
  });

  await t.test('a server that speaks first, and bytes sent before the join, arrive first', async (t) => {
    const banner = Buffer.from('220 ready\r\n');
    const early = Buffer.from('EHLO pod\r\n');
    const r = await rig(t, fp, { banner, early });
    const first = await new Promise<Buffer>((resolve) => r.server.once('data', resolve));
    t.equal(first.toString(), early.toString(), 'the early bytes reached the server with no later segment to push them');
    const more = randomBytes(1 << 20);
    const atClient = readAll(r.client);
    r.server.end(more);
    const got = await atClient;
    t.equal(got.subarray(0, banner.length).toString(), banner.toString(), 'the banner came first');
    t.equal(sha(got.subarray(banner.length)), sha(more), 'then the rest, in order');
    r.client.end();
    t.equal((await r.ended).why, 'closed');
  });

  await t.test('a reset on one side cuts the other', async (t) => {
    const r = await rig(t, fp);
    const clientCut = new Promise((resolve) => (r.client.once('end', resolve), r.client.once('close', resolve)));
    r.client.write('x');
    await new Promise((resolve) => r.server.once('data', resolve));
    r.server.resetAndDestroy();
    t.match((await r.ended).why, /^upstream error: ECONNRESET$/, 'the reason names the upstream');
    await clientCut;
    t.pass('the client was cut too');
  });

  await t.test('a reader slower than the kernel may queue: the direction goes back to the proxy, bounded, and nothing is lost', async (t) => {
    const r = await rig(t, fp, { serverPaused: true });
    const proxiedBefore = fp.stats().proxied;
    const up = randomBytes(48 << 20);
    let sentAll = false;
    r.client.write(up, () => (sentAll = true));
    // The server reads nothing: the client must be held back by TCP, not queued without end in the kernel.
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    t.notOk(sentAll, 'the client cannot push 48 MB into a connection whose reader is stopped');
    t.ok(r.pair.bytes().proxied, 'the kernel handed the direction back to the proxy');
    t.ok(r.pair.bytes().aToB <= 2 << 20, `the kernel took at most about its bound ahead of the reader (${r.pair.bytes().aToB} bytes)`);
    const atServer = readAll(r.server);
    r.server.resume();
    r.client.end();
    t.equal(sha(await atServer), sha(up), 'once it reads, every byte arrives, in order');
    r.server.end();
    const { why, kernel } = await r.ended;
    t.equal(why, 'closed');
    t.equal(kernel.aToB + r.accepted.bytesRead, up.length, 'the kernel and the proxy between them copied each byte once');
    t.equal(fp.stats().proxied, proxiedBefore + 1, 'counted as proxied');
  });

  await t.test('the idle timeout does not cut a connection the kernel keeps busy, and cuts it once it is idle', async (t) => {
    const r = await rig(t, fp, { idleTimeoutMs: 300 });
    const stop = Date.now() + 1_200;
    while (Date.now() < stop) {
      r.client.write(randomBytes(4096));
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    t.equal(r.client.destroyed, false, 'busy for 4 idle timeouts in a row, still open');
    t.equal(r.accepted.bytesRead, 0, 'and the process read none of it');
    t.equal((await r.ended).why, 'idle-timeout', 'idle, it is cut');
  });

  await t.test('a proxy killed with connections in the fast path leaves nothing in the kernel', async (t) => {
    const child = spawn(process.execPath, [fixture('fastpath-holder.js')], { stdio: ['ignore', 'pipe', 'inherit'] });
    t.teardown(() => child.kill('SIGKILL'));
    const line = await new Promise<string>((resolve, reject) => {
      child.stdout.once('data', (d: Buffer) => resolve(d.toString()));
      child.once('exit', (code) => reject(new Error(`fastpath-holder exited ${code}`)));
    });
    const { maps } = JSON.parse(line) as { maps: number[] };
    const exists = (id: number): boolean => spawnSync('bpftool', ['map', 'show', 'id', String(id)]).status === 0;
    t.ok(maps.every(exists), `its maps ${maps.join(', ')} exist while it runs`);
    child.kill('SIGKILL');
    t.ok(await waitFor(() => !maps.some(exists), 10_000, 100), 'once it is killed, the kernel has freed them (and with them the program)');
  });

  await t.test('nothing stays in the maps after the connections closed', async (t) => {
    await waitFor(() => fp.open === 0, 5_000);
    t.equal(fp.open, 0, 'no pair open');
    t.ok(fp.stats().joined >= 36, `every connection above was joined (${fp.stats().joined})`);
    t.same(fp.stats().fallback, { 'no-fd': 0, buffered: 0, full: 0, error: 0 }, 'none fell back');
  });
});
