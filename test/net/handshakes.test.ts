/**
 * TLS handshakes in flight, on real loopback sockets: bounded per peer and in
 * total, a slot freed when the handshake is done or the socket closes, and
 * the deadline handed to the listener.
 */
import * as net from 'node:net';

import { t } from 'tap';
import type { Test } from 'tap';

import { HandshakeTable } from '../../src/net';
import { waitFor } from '../helpers/wait';

/** `n` accepted server-side sockets on a loopback listener; all closed at teardown. */
async function accepted(t: Test, n: number): Promise<net.Socket[]> {
  const got: net.Socket[] = [];
  const server = net.createServer((s) => {
    s.on('error', () => {});
    got.push(s);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const clients = Array.from({ length: n }, () => net.connect(port, '127.0.0.1').on('error', () => {}));
  t.teardown(() => {
    for (const c of clients) c.destroy();
    for (const s of got) s.destroy();
    server.close();
  });
  if (!(await waitFor(() => got.length === n, 10_000))) throw new Error(`${n} loopback connections were not accepted within 10 s`);
  return got;
}

t.test('per peer, then in total; done() and a closed socket each free a slot', async (t) => {
  const [a, b, c, d] = await accepted(t, 4);
  const timedOut: string[] = [];
  const h = new HandshakeTable({ maxHandshakes: 2, maxHandshakesPerPeer: 1, handshakeTimeoutMs: 60_000 }, (_raw, peer) => timedOut.push(peer));
  t.same(h.start(a!, 'p'), { admitted: true });
  t.same(h.start(b!, 'p'), { admitted: false, reason: 'per-peer' }, 'one handshake per peer at a time');
  h.done(a!);
  h.done(a!);
  t.equal(h.inFlight, 0, 'done twice frees one slot');
  t.same(h.start(b!, 'p'), { admitted: true });
  t.same(h.start(c!, 'q'), { admitted: true });
  t.same(h.start(d!, 'r'), { admitted: false, reason: 'total' }, 'two handshakes in flight in total');
  c!.destroy();
  t.ok(await waitFor(() => h.inFlight === 1, 10_000), 'the closed socket freed its slot');
  t.same(h.start(d!, 'r'), { admitted: true });
  t.same(timedOut, [], 'no deadline passed');
});

t.test('a handshake past its deadline is handed to the listener, once, and its slot stays until the socket goes', async (t) => {
  const [a, b] = await accepted(t, 2);
  const timedOut: net.Socket[] = [];
  const h = new HandshakeTable({ maxHandshakes: 8, maxHandshakesPerPeer: 8, handshakeTimeoutMs: 50 }, (raw) => {
    timedOut.push(raw);
    raw.destroy();
  });
  h.start(a!, 'p');
  h.start(b!, 'p');
  h.done(b!);
  t.ok(await waitFor(() => timedOut.length === 1 && h.inFlight === 0, 10_000), 'the late handshake was cut and its slot freed');
  t.equal(timedOut[0], a, 'the one not done');
  t.notOk(b!.destroyed, 'a finished handshake has no deadline');
});
