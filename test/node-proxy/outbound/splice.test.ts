/**
 * One proxied connection's two directions (src/node-proxy/outbound/splice.ts),
 * on real loopback sockets: a client, the splice in the middle, a server.
 * Bytes arrive whole under backpressure, a FIN ends only its own direction,
 * an error or the idle timeout cuts both sides, and the report comes once,
 * after both closed, with the reason.
 */
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';

import t, { type Test } from 'tap';

import { Splice } from '../../../src/node-proxy/outbound/splice';
import { listenPaused } from '../../helpers/net';

interface Rig {
  /** The pod's end. */
  client: net.Socket;
  /** The server's end of the upstream connection. */
  server: net.Socket;
  /** Why the splice ended, once it did; how many times it reported. */
  ended: Promise<string>;
  reports: () => number;
}

/** client <-> [accepted | Splice | upstream] <-> server */
async function rig(t: Test, idleTimeoutMs = 30_000): Promise<Rig> {
  let onServer!: (s: net.Socket) => void;
  const gotServer = new Promise<net.Socket>((resolve) => (onServer = resolve));
  const serverPort = await listenPaused(t, (s) => {
    s.on('error', () => {});
    s.resume();
    onServer(s);
  });
  let reports = 0;
  let onEnded!: (why: string) => void;
  const ended = new Promise<string>((resolve) => (onEnded = resolve));
  // As the outbound listener does: the accepted socket waits, paused, until its upstream is connected.
  const proxyPort = await listenPaused(t, (accepted) => {
    const upstream = net.connect({ host: '127.0.0.1', port: serverPort, allowHalfOpen: true });
    upstream.once('connect', () => {
      new Splice(accepted, upstream, idleTimeoutMs, (why) => {
        reports++;
        onEnded(why);
      });
    });
  });
  const client = net.connect({ host: '127.0.0.1', port: proxyPort, allowHalfOpen: true });
  client.on('error', () => {});
  const server = await gotServer;
  t.teardown(() => {
    client.destroy();
    server.destroy();
  });
  return { client, server, ended, reports: () => reports };
}

function readAll(s: net.Socket): Promise<Buffer> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.once('end', () => resolve(Buffer.concat(parts)));
  });
}

t.test('8 MB each way arrive whole, then each FIN ends only its direction', async (t) => {
  const r = await rig(t);
  const up = randomBytes(8 << 20);
  const down = randomBytes(8 << 20);
  const atServer = readAll(r.server);
  const atClient = readAll(r.client);
  r.client.end(up);
  t.ok((await atServer).equals(up), 'the client\'s 8 MB reached the server, then its FIN');
  t.notOk(r.server.writableEnded, 'the server can still send: its direction is open');
  r.server.end(down);
  t.ok((await atClient).equals(down), "the server's 8 MB reached the client after the client's FIN");
  t.equal(await r.ended, 'closed', 'ended cleanly');
  t.equal(r.reports(), 1, 'reported once');
});

t.test('a reset on one side cuts the other, and says which side', async (t) => {
  const r = await rig(t);
  const clientCut = new Promise((resolve) => (r.client.once('end', resolve), r.client.once('close', resolve)));
  // Once a byte went through, the splice is in place.
  r.client.write('x');
  await new Promise((resolve) => r.server.once('data', resolve));
  r.server.resetAndDestroy();
  t.match(await r.ended, /^upstream error: ECONNRESET$/, 'the reason names the upstream');
  await clientCut;
  t.pass('the client was cut too (its connection ended)');
  t.equal(r.reports(), 1);
});

t.test('the idle timeout cuts both sides', async (t) => {
  const r = await rig(t, 300);
  r.client.write('hello');
  const started = Date.now();
  t.equal(await r.ended, 'idle-timeout');
  t.ok(Date.now() - started >= 250, 'not before the timeout');
  t.equal(r.reports(), 1);
});
