/**
 * corkForTurn (src/node-proxy/coalesce.ts) on real loopback sockets: what is
 * written in one event-loop turn stays in the socket until the turn ends,
 * then leaves whole and in order; a socket destroyed meanwhile is skipped;
 * a socket corked by its owner is left to its owner.
 */
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';

import t, { type Test } from 'tap';

import { corkForTurn } from '../../src/node-proxy/coalesce';

async function pair(t: Test): Promise<{ out: net.Socket; received: () => Buffer }> {
  const chunks: Buffer[] = [];
  const srv = net.createServer((s) => s.on('data', (d: Buffer) => chunks.push(d)));
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  t.teardown(() => srv.close());
  const out = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1');
  out.on('error', () => {});
  await new Promise((resolve) => out.once('connect', resolve));
  t.teardown(() => out.destroy());
  return { out, received: () => Buffer.concat(chunks) };
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

t.test('writes of one turn are held until the turn ends, then all arrive in order', async (t) => {
  const { out, received } = await pair(t);
  const frames = Array.from({ length: 8 }, () => randomBytes(16 * 1024));
  for (const f of frames) {
    corkForTurn(out);
    out.write(f);
  }
  t.equal(out.writableCorked, 1, 'corked once, not once per write');
  t.equal(out.writableLength, 8 * 16 * 1024, 'the bytes wait in the socket during the turn');
  await turn();
  t.equal(out.writableCorked, 0, 'uncorked when the turn ends');
  const want = Buffer.concat(frames);
  for (let i = 0; i < 200 && received().length < want.length; i++) await new Promise((r) => setTimeout(r, 10));
  t.ok(received().equals(want), 'the receiver has every byte, in order');
});

t.test('a socket destroyed during the turn is skipped; others still go out', async (t) => {
  const a = await pair(t);
  const b = await pair(t);
  corkForTurn(a.out);
  a.out.write('gone');
  corkForTurn(b.out);
  b.out.write('kept');
  a.out.destroy();
  await turn();
  t.equal(b.out.writableCorked, 0, 'the live socket is uncorked');
  for (let i = 0; i < 200 && b.received().length < 4; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(b.received().toString(), 'kept');
  corkForTurn(a.out);
  t.equal(a.out.writableCorked, 0, 'a destroyed socket is not corked again');
});

t.test("a socket its owner corked stays the owner's to uncork", async (t) => {
  const { out } = await pair(t);
  out.cork();
  corkForTurn(out);
  t.equal(out.writableCorked, 1, 'not corked a second time');
  await turn();
  t.equal(out.writableCorked, 1, 'still corked after the turn');
  out.uncork();
});
