/** Reconnect delays (jitter, cap, reset) and the line that says how a node's link to the controller stands. */
import { t } from 'tap';

import { Backoff, describeLink, formatAge, type ControllerLink } from '../../../src/node-proxy/state';

/** A fixed sequence standing in for Math.random. */
const seq = (...xs: number[]) => {
  let i = 0;
  return () => xs[i++ % xs.length]!;
};

t.test('each delay is drawn from [base/2, base], base doubling from 200 ms to the 2 s cap', async (t) => {
  const lows = new Backoff({ random: () => 0 });
  const highs = new Backoff({ random: () => 0.999_999 });
  const low = Array.from({ length: 12 }, () => lows.next());
  const high = Array.from({ length: 12 }, () => highs.next());
  t.same(low, [100, 200, 400, 800, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000], 'lower bounds: half the base, the base capped at 2 s');
  t.same(high, [200, 400, 800, 1600, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000], 'upper bounds: the base: a node follows the controller within 2 s of its return');
  const mixed = new Backoff({ random: seq(0.25, 0.5, 0.75) });
  t.same([mixed.next(), mixed.next(), mixed.next()], [125, 300, 700], 'in between, as the random draw says');
});

t.test('a real random source stays within the bounds and spreads', async (t) => {
  const draws = new Set<number>();
  for (let run = 0; run < 50; run++) {
    const b = new Backoff();
    let base = 200;
    for (let i = 0; i < 12; i++) {
      const d = b.next();
      if (d < base / 2 || d > base) t.fail(`attempt ${i}: ${d} ms is outside [${base / 2}, ${base}]`);
      if (i === 3) draws.add(d);
      base = Math.min(base * 2, 2_000);
    }
  }
  t.ok(draws.size > 10, `50 nodes' 4th delays differ (${draws.size} distinct): they do not reconnect in one wave`);
});

t.test('reset starts over at the initial delay; options move the start and the cap', async (t) => {
  const b = new Backoff({ random: () => 0.999_999 });
  for (let i = 0; i < 6; i++) b.next();
  b.reset();
  t.same([b.next(), b.next()], [200, 400]);
  const c = new Backoff({ initialMs: 1000, maxMs: 3000, random: () => 0.999_999 });
  t.same([c.next(), c.next(), c.next(), c.next()], [1000, 2000, 3000, 3000]);
  const odd = new Backoff({ initialMs: 5000, maxMs: 10, random: () => 0.999_999 });
  t.same([odd.next(), odd.next()], [5000, 5000], 'a cap below the start is the start');
});

t.test('describeLink says why a node holds what it holds', async (t) => {
  const now = 1_000_000_000;
  const down = (over: Partial<ControllerLink>): ControllerLink => ({ connected: false, failures: 0, lastError: '', lastErrorUnixMs: 0, retryAtUnixMs: 0, ...over });
  const cases: [string, ControllerLink, number, string][] = [
    ['first attempt under way', down({}), 0, 'not connected (connecting), holds version 0: no config yet'],
    [
      'failing, nothing held',
      down({ failures: 3, lastError: '14 UNAVAILABLE: No connection established', lastErrorUnixMs: now - 2000, retryAtUnixMs: now + 4000 }),
      0,
      'not connected (3 attempts failed, last error 2 s ago: 14 UNAVAILABLE: No connection established, next attempt in 4 s), holds version 0: no config yet',
    ],
    [
      'failing, an older config held',
      down({ failures: 1, lastError: '14 UNAVAILABLE: controller shutting down', lastErrorUnixMs: now - 300_000, retryAtUnixMs: now + 150 }),
      12,
      'not connected (1 attempt failed, last error 5 min ago: 14 UNAVAILABLE: controller shutting down, next attempt in 150 ms), holds version 12: serving it until the controller is back (changes made meanwhile have not reached this node)',
    ],
    ['healthy', { connected: true, failures: 0, lastError: '14 UNAVAILABLE: old', lastErrorUnixMs: now - 86_400_000, retryAtUnixMs: 0 }, 7, 'connected, holds version 7'],
    [
      'connected, first config not in yet after failures',
      { connected: true, failures: 2, lastError: '8 RESOURCE_EXHAUSTED: Received message larger than max (5000 vs 1024)', lastErrorUnixMs: now - 1000, retryAtUnixMs: 0 },
      0,
      'connected (after 2 attempts failed, last error 1 s ago: 8 RESOURCE_EXHAUSTED: Received message larger than max (5000 vs 1024)), holds version 0: receiving its first config',
    ],
  ];
  for (const [what, link, version, want] of cases) t.equal(describeLink(link, version, now), want, what);
});

t.test('formatAge', async (t) => {
  const cases: [number, string][] = [
    [-5, '0 ms'],
    [850, '850 ms'],
    [1499, '1 s'],
    [119_000, '119 s'],
    [120_000, '2 min'],
    [7_100_000, '118 min'],
    [7_200_000, '2 h'],
    [172_800_000, '2 d'],
  ];
  for (const [ms, want] of cases) t.equal(formatAge(ms), want, `${ms} ms`);
});
