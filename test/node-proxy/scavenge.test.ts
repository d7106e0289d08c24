/**
 * The young GC the data path asks for (src/node-proxy/scavenge.ts), seen as
 * a user of the process would: through a real Splice on loopback, 256 MB of
 * bulk bytes cost scavenges, not full mark-compacts of the heap. Without it,
 * the buffers of the forwarded chunks pile up as external memory until V8
 * runs a full GC for them, one every few megabytes.
 */
import * as net from 'node:net';
import { constants, PerformanceObserver } from 'node:perf_hooks';

import t from 'tap';

import { Splice } from '../../src/node-proxy/outbound/splice';
import { forwarded, SCAVENGE_EVERY } from '../../src/node-proxy/scavenge';

const TOTAL = 256 << 20;

function watchGc(): { minor: number; major: number; stop: () => void } {
  const seen = { minor: 0, major: 0, stop: () => o.disconnect() };
  const o = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = (e as unknown as { detail: { kind: number } }).detail.kind;
      if (kind === constants.NODE_PERFORMANCE_GC_MINOR) seen.minor++;
      if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) seen.major++;
    }
  });
  o.observe({ entryTypes: ['gc'] });
  return seen;
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

t.test('counted bytes past the threshold bring a young GC at the end of the turn', async (t) => {
  const gc = watchGc();
  t.teardown(gc.stop);
  for (let i = 0; i < 8; i++) {
    forwarded(SCAVENGE_EVERY);
    await turn();
  }
  await new Promise((r) => setTimeout(r, 50));
  // One is asked for per crossing; V8 reports now and then one fewer (2 runs in 15 saw 3 of 4), so the bound leaves it that.
  t.ok(gc.minor >= 6, `a scavenge per threshold crossed, near enough (8 crossed, saw ${gc.minor})`);
});

t.test('256 MB through a splice: scavenges, next to no full GC', async (t) => {
  const sink = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    s.resume();
    s.on('end', () => s.end());
  });
  await new Promise<void>((resolve) => sink.listen(0, '127.0.0.1', resolve));
  t.teardown(() => sink.close());
  let done!: (why: string) => void;
  const ended = new Promise<string>((resolve) => (done = resolve));
  const proxy = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (accepted) => {
    const upstream = net.connect({ host: '127.0.0.1', port: (sink.address() as net.AddressInfo).port, allowHalfOpen: true });
    upstream.once('connect', () => new Splice(accepted, upstream, 30_000, done));
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  t.teardown(() => proxy.close());

  const gc = watchGc();
  t.teardown(gc.stop);
  const client = net.connect({ host: '127.0.0.1', port: (proxy.address() as net.AddressInfo).port, allowHalfOpen: true });
  client.on('error', () => {});
  client.resume();
  await new Promise((resolve) => client.once('connect', resolve));
  const block = Buffer.alloc(1 << 20, 7);
  for (let sent = 0; sent < TOTAL; sent += block.length) {
    if (!client.write(block)) await new Promise((resolve) => client.once('drain', resolve));
  }
  client.end();
  t.equal(await ended, 'closed', 'every byte went through and both sides closed');
  await new Promise((r) => setTimeout(r, 50));
  t.ok(gc.minor >= TOTAL / SCAVENGE_EVERY / 2, `scavenges ran as the bytes went (saw ${gc.minor})`);
  t.ok(gc.major <= 3, `at most a few full GCs for 256 MB (saw ${gc.major})`);
});
