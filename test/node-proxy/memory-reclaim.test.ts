/** The node proxy's memory reclaim (src/node-proxy/memory-reclaim.ts): a reclaim lowers RSS after garbage; the reclaimer runs after start and after a wave of closes, not otherwise. */
import { t } from 'tap';

import { MemoryReclaimer, reclaimMemory, type ReclaimResult } from '../../src/node-proxy/memory-reclaim';

const until = async (ok: () => boolean): Promise<void> => {
  while (!ok()) await new Promise((r) => setTimeout(r, 5));
};

t.test('a reclaim gives the memory of garbage back to the kernel', async (t) => {
  let garbage: { i: number; s: string }[] | null = [];
  for (let i = 0; i < 500_000; i++) garbage.push({ i, s: `x${i}` });
  garbage = null;
  const r = reclaimMemory('closes');
  t.equal(r.why, 'closes');
  t.ok(r.rssAfterBytes < r.rssBeforeBytes, `RSS ${(r.rssBeforeBytes / 1e6).toFixed(0)} MB -> ${(r.rssAfterBytes / 1e6).toFixed(0)} MB`);
});

t.test('the reclaimer runs once after start, then only after enough closes and a quiet spell, and once more after those', async (t) => {
  let closed = 0;
  const seen: ReclaimResult[] = [];
  const r = new MemoryReclaimer({ closed: () => closed, onReclaim: (x) => seen.push(x), minCloses: 10, quietMs: 20, minIntervalMs: 0, checkMs: 5, afterStartMs: 1, followUpMs: 50 });
  t.teardown(() => r.close());
  await until(() => seen.length === 1);
  t.equal(seen[0]!.why, 'start', 'the first is for start-up');

  closed = 9;
  await new Promise((res) => setTimeout(res, 100));
  t.equal(r.status().reclaims, 1, 'fewer closes than minCloses: none');

  closed = 12;
  await until(() => seen.length === 2);
  t.equal(seen[1]!.why, 'closes');
  await until(() => seen.length === 3);
  t.equal(seen[2]!.why, 'follow-up', 'and once more after, for the tunnel sessions those connections left');
  t.same(r.status(), { reclaims: 3, last: seen[2] }, '/status shows the count and the last one');
  await new Promise((res) => setTimeout(res, 150));
  t.equal(r.status().reclaims, 3, 'no more closes: no more reclaims');
});
