/** Per-connection load balancing: every policy, locality and outlier detection, on an injected clock and PRNG. */
import { t } from 'tap';

import { MeshError } from '../../../src/errors';
import {
  createBalancer,
  registerBalancer,
  type Balancer,
  type BalancerOptions,
  type BalancerPolicy,
  type Endpoint,
  type PickContext,
} from '../../../src/node-proxy/lb';

const POLICIES: BalancerPolicy[] = ['P2C_EWMA', 'ROUND_ROBIN', 'LEAST_REQUEST', 'CONSISTENT_HASH'];

/** mulberry32: a small seeded PRNG, so every run draws the same numbers. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

function ep(id: string, node = 'node-a', ready = true): Endpoint {
  const n = Number(id.replace(/\D/g, '') || 0);
  return { id, address: `10.0.${n >> 8}.${n & 255}`, port: 8080, node, ready };
}

function eps(n: number, node = 'node-a'): Endpoint[] {
  return Array.from({ length: n }, (_, i) => ep(`e${i}`, node));
}

const CTX: PickContext = { sourceIp: '10.1.0.7', sourceNode: 'node-a' };

interface Harness {
  b: Balancer;
  clock: { t: number };
}

function make(policy: BalancerPolicy, opts: BalancerOptions = {}, seed = 1): Harness {
  const clock = { t: 1_000 };
  const b = createBalancer(policy, { random: prng(seed), now: () => clock.t, ...opts });
  return { b, clock };
}

/** Picks n times (a new source IP each time, so consistent hash spreads) and counts the ids. */
function tally(b: Balancer, n: number, exclude?: ReadonlySet<string>): Map<string, number> {
  const m = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const e = b.pick({ sourceIp: `10.2.${(i >> 8) & 255}.${i & 255}`, sourceNode: 'node-a', hashKey: `k${i}` }, exclude);
    const id = e?.id ?? 'none';
    m.set(id, (m.get(id) ?? 0) + 1);
  }
  return m;
}

function fail(b: Balancer, id: string, times: number): void {
  for (let i = 0; i < times; i++) b.connectResult(id, false, 1);
}

function ejected(b: Balancer): string[] {
  return b
    .stats()
    .filter((s) => s.ejected)
    .map((s) => s.id);
}

t.test('every policy', async (t) => {
  for (const policy of POLICIES) {
    t.test(policy, async (t) => {
      t.test('an empty set picks nothing', async (t) => {
        const { b } = make(policy);
        t.equal(b.pick(CTX), undefined);
        b.update([]);
        t.equal(b.pick(CTX), undefined);
      });

      t.test('not-ready endpoints are never picked', async (t) => {
        const { b } = make(policy);
        b.update([ep('e0', 'node-a', false), ep('e1', 'node-b', false)]);
        t.same([...tally(b, 200).keys()], ['none']);
        b.update([ep('e0', 'node-a', false), ep('e1', 'node-b', true)]);
        t.same([...tally(b, 200).keys()], ['e1']);
      });

      t.test('every endpoint gets connections', async (t) => {
        const { b } = make(policy);
        b.update(eps(4));
        t.same([...tally(b, 2_000).keys()].sort(), ['e0', 'e1', 'e2', 'e3']);
      });

      t.test('exclude skips ids already tried, and nothing is left when all are', async (t) => {
        const { b } = make(policy);
        b.update(eps(3));
        const counts = tally(b, 500, new Set(['e0', 'e2']));
        t.same([...counts.keys()], ['e1']);
        t.equal(b.pick(CTX, new Set(['e0', 'e1', 'e2'])), undefined);
        t.not(b.pick(CTX, new Set(['unknown'])), undefined, 'an unknown id in exclude is harmless');
      });

      t.test('local endpoints first, the rest when none is usable', async (t) => {
        const { b, clock } = make(policy, { localNode: 'node-a', outlier: { maxEjectionPercent: 100 } });
        b.update([ep('l0', 'node-a'), ep('l1', 'node-a'), ep('r0', 'node-b'), ep('r1', 'node-c')]);
        t.same([...tally(b, 1_000).keys()].sort(), ['l0', 'l1'], 'only local ones while they are usable');

        t.same([...tally(b, 500, new Set(['l0', 'l1'])).keys()].sort(), ['r0', 'r1'], 'a retry after both local ones failed goes remote');
        t.same([...tally(b, 500, new Set(['l0'])).keys()], ['l1'], 'a retry stays local while a local one is left');

        b.update([ep('l0', 'node-a', false), ep('l1', 'node-a'), ep('r0', 'node-b'), ep('r1', 'node-c')]);
        t.same([...tally(b, 500).keys()], ['l1'], 'one ready local endpoint still takes everything');

        fail(b, 'l1', 5);
        t.same(ejected(b), ['l1']);
        t.same([...tally(b, 1_000).keys()].sort(), ['r0', 'r1'], 'all local ones out: the rest');

        clock.t += 30_000;
        t.same([...tally(b, 500).keys()], ['l1'], 'back to local when its ejection ends');

        b.update([ep('l0', 'node-a', false), ep('l1', 'node-a', false), ep('r0', 'node-b'), ep('r1', 'node-c')]);
        t.same([...tally(b, 1_000).keys()].sort(), ['r0', 'r1'], 'all local ones not ready: the rest');
      });

      t.test('without a local node every usable endpoint is used', async (t) => {
        const { b } = make(policy);
        b.update([ep('l0', 'node-a'), ep('r0', 'node-b')]);
        t.same([...tally(b, 1_000).keys()].sort(), ['l0', 'r0']);
      });

      t.test('an ejected endpoint gets nothing until its time is up', async (t) => {
        const { b, clock } = make(policy);
        b.update(eps(3));
        fail(b, 'e1', 5);
        t.same(ejected(b), ['e1']);
        t.notOk(tally(b, 1_000).has('e1'));
        clock.t += 29_999;
        t.notOk(tally(b, 1_000).has('e1'));
        clock.t += 1;
        t.ok(tally(b, 1_000).has('e1'), 'returns, checked on pick');
        t.same(ejected(b), []);
      });

      t.test('all ejected: nothing is picked', async (t) => {
        const { b } = make(policy, { outlier: { maxEjectionPercent: 100 } });
        b.update(eps(2));
        fail(b, 'e0', 5);
        fail(b, 'e1', 5);
        t.same(ejected(b), ['e0', 'e1']);
        t.equal(b.pick(CTX), undefined);
      });
    });
  }
});

t.test('round robin cycles through the usable endpoints in turn', async (t) => {
  const { b } = make('ROUND_ROBIN', {}, 7);
  b.update(eps(3));
  const seq = Array.from({ length: 9 }, () => b.pick(CTX)!.id);
  t.same(new Set(seq.slice(0, 3)).size, 3, 'three picks, three endpoints');
  t.same(seq.slice(3, 6), seq.slice(0, 3), 'then the same order again');
  t.same(seq.slice(6, 9), seq.slice(0, 3));
  const counts = tally(b, 3_000);
  t.same([counts.get('e0'), counts.get('e1'), counts.get('e2')], [1_000, 1_000, 1_000], 'exactly even');

  const starts = new Set([1, 2, 3, 4, 5, 6, 7, 8].map((seed) => {
    const { b } = make('ROUND_ROBIN', {}, seed);
    b.update(eps(3));
    return b.pick(CTX)!.id;
  }));
  t.ok(starts.size > 1, 'balancers do not all start on the same endpoint');
});

t.test('P2C over peak EWMA', async (t) => {
  t.test('prefers lower latency, in proportion to how many it beats', async (t) => {
    const { b, clock } = make('P2C_EWMA', {}, 42);
    b.update(eps(5));
    [1, 2, 4, 8, 16].forEach((ms, i) => b.connectResult(`e${i}`, true, ms));
    clock.t += 0; // no time passes: the estimates stay as measured
    const counts = tally(b, 10_000);
    // Endpoint i wins the pairs drawn with a slower one: (4 - i) of the 10 pairs.
    [0.4, 0.3, 0.2, 0.1, 0].forEach((share, i) => {
      t.ok(Math.abs((counts.get(`e${i}`) ?? 0) / 10_000 - share) < 0.02, `e${i} gets about ${share * 100} %`);
    });
  });

  t.test('prefers the less loaded', async (t) => {
    const { b } = make('P2C_EWMA', {}, 43);
    b.update(eps(4));
    [0, 1, 3, 7].forEach((n, i) => {
      for (let k = 0; k < n; k++) b.started(`e${i}`);
    });
    const counts = tally(b, 10_000);
    [0.5, 1 / 3, 1 / 6, 0].forEach((share, i) => {
      t.ok(Math.abs((counts.get(`e${i}`) ?? 0) / 10_000 - share) < 0.02, `e${i} gets about ${Math.round(share * 100)} %`);
    });
  });

  t.test('weighs load against latency: (active + 1) × latency', async (t) => {
    const { b } = make('P2C_EWMA', {}, 44);
    b.update(eps(2));
    b.connectResult('e0', true, 1);
    b.connectResult('e1', true, 4);
    t.equal(b.pick(CTX)!.id, 'e0', 'idle: the faster');
    for (let k = 0; k < 4; k++) b.started('e0');
    t.equal(b.pick(CTX)!.id, 'e1', 'the faster with 4 open (cost 5) loses to the idle slower (cost 4)');
    b.finished('e0');
    b.finished('e0');
    t.equal(b.pick(CTX)!.id, 'e0', 'with 2 open (cost 3) it wins again');
  });

  t.test('spreads a stream of connections by latency', async (t) => {
    // Connections open and close; latency shapes the share, load keeps the slow one in play.
    const { b } = make('P2C_EWMA', {}, 45);
    b.update(eps(3));
    const lat: Record<string, number> = { e0: 1, e1: 1, e2: 5 };
    const open: string[] = [];
    const counts = new Map<string, number>();
    const rnd = prng(99);
    for (let i = 0; i < 10_000; i++) {
      const e = b.pick(CTX)!;
      b.started(e.id);
      b.connectResult(e.id, true, lat[e.id]!);
      open.push(e.id);
      counts.set(e.id, (counts.get(e.id) ?? 0) + 1);
      if (open.length > 20) b.finished(open.splice(Math.floor(rnd() * open.length), 1)[0]!);
    }
    t.ok(counts.get('e2')! < counts.get('e0')! / 2, `slow endpoint gets least (${[...counts]})`);
    t.ok(counts.get('e2')! > 0, 'but not nothing, once the fast ones are loaded');
  });

  t.test('a slower sample replaces the estimate, a faster one decays in over 10 s', async (t) => {
    const { b, clock } = make('P2C_EWMA');
    b.update(eps(1));
    const ewma = () => b.stats()[0]!.ewmaMs;
    t.equal(ewma(), 1, 'a new endpoint starts at 1 ms');
    b.connectResult('e0', true, 10);
    t.equal(ewma(), 10, 'peak: replaced at once');
    b.connectResult('e0', true, 1);
    t.equal(ewma(), 10, 'no time passed: a fast sample has no weight yet');
    clock.t += 10_000;
    b.connectResult('e0', true, 1);
    t.ok(Math.abs(ewma() - (10 * Math.exp(-1) + 1 * (1 - Math.exp(-1)))) < 1e-9, 'one time constant: e^-1 of the old value stays');
    const before = ewma();
    b.connectResult('e0', false, 0.1);
    t.equal(ewma(), before, 'a fast failure does not make it look cheaper');
    b.connectResult('e0', false, 3_000);
    t.equal(ewma(), 3_000, 'a slow failure (a timeout) raises it');
    clock.t += 10_000;
    t.ok(Math.abs(ewma() - 3_000 * Math.exp(-1)) < 1e-6, 'without samples it decays, so the endpoint is tried again');
  });
});

t.test('least request takes the fewest open, ties at random', async (t) => {
  const { b } = make('LEAST_REQUEST', {}, 5);
  b.update(eps(4));
  [2, 0, 0, 5].forEach((n, i) => {
    for (let k = 0; k < n; k++) b.started(`e${i}`);
  });
  const counts = tally(b, 10_000);
  t.same([...counts.keys()].sort(), ['e1', 'e2']);
  t.ok(Math.abs(counts.get('e1')! / 10_000 - 0.5) < 0.02, `ties split evenly (${[...counts]})`);
  t.same([...tally(b, 100, new Set(['e1'])).keys()], ['e2']);
  b.started('e1');
  b.started('e2');
  b.started('e2');
  t.same([...tally(b, 100).keys()], ['e1']);
  for (let k = 0; k < 5; k++) b.finished('e3');
  t.same([...tally(b, 100).keys()], ['e3'], 'after its connections close, e3 has the fewest (0)');
  for (let k = 0; k < 5; k++) b.finished('e3');
  t.equal(b.stats().find((s) => s.id === 'e3')!.active, 0, 'more closes than opens do not go below zero');
});

t.test('consistent hash', async (t) => {
  const keys = Array.from({ length: 10_000 }, (_, i) => `user-${i}`);
  const route = (b: Balancer) => keys.map((k) => b.pick({ ...CTX, hashKey: k })!.id);

  t.test('the same key goes to the same endpoint, on every proxy', async (t) => {
    const a = make('CONSISTENT_HASH', {}, 1).b;
    const c = make('CONSISTENT_HASH', {}, 2).b;
    a.update(eps(10));
    c.update([...eps(10)].reverse());
    t.same(route(a), route(a));
    t.same(route(a), route(c), 'independent of randomness and endpoint order');
  });

  t.test('without a hash key it hashes the source IP', async (t) => {
    const { b } = make('CONSISTENT_HASH');
    b.update(eps(10));
    const seen = new Set<string>();
    for (let i = 0; i < 50; i++) seen.add(b.pick({ sourceIp: '10.9.9.9', sourceNode: 'node-a' })!.id);
    t.equal(seen.size, 1);
    t.equal(b.pick({ sourceIp: '10.9.9.9', sourceNode: 'node-a' })!.id, b.pick({ sourceIp: '10.0.0.1', sourceNode: 'x', hashKey: '10.9.9.9' })!.id);
  });

  t.test('keys spread over the endpoints', async (t) => {
    const { b } = make('CONSISTENT_HASH');
    b.update(eps(10));
    const counts = new Map<string, number>();
    for (const id of route(b)) counts.set(id, (counts.get(id) ?? 0) + 1);
    t.equal(counts.size, 10);
    for (const [id, n] of counts) t.ok(n > 500 && n < 1_700, `${id} holds ${n} of 10000`);
  });

  t.test('removing one of 10 endpoints moves only its keys; adding it back restores them', async (t) => {
    const { b } = make('CONSISTENT_HASH');
    b.update(eps(10));
    const before = route(b);
    b.update(eps(10).filter((e) => e.id !== 'e3'));
    const after = route(b);
    const moved = before.filter((id, i) => id !== after[i]);
    t.ok(moved.length > 0 && moved.every((id) => id === 'e3'), 'only keys of e3 moved');
    t.equal(moved.length, before.filter((id) => id === 'e3').length, 'and all of them');
    t.ok(moved.length / keys.length < 0.17, `about a tenth moved (${moved.length})`);
    b.update(eps(10));
    t.same(route(b), before);
  });

  t.test('an ejected endpoint\'s keys go where removing it would send them, and come back', async (t) => {
    const { b, clock } = make('CONSISTENT_HASH');
    b.update(eps(10));
    const before = route(b);
    const removed = make('CONSISTENT_HASH').b;
    removed.update(eps(10).filter((e) => e.id !== 'e5'));
    fail(b, 'e5', 5);
    t.same(route(b), route(removed));
    clock.t += 30_000;
    t.same(route(b), before);
  });
});

t.test('outlier detection', async (t) => {
  t.test('5 consecutive failures eject; a success resets the count', async (t) => {
    const { b } = make('ROUND_ROBIN');
    b.update(eps(4));
    fail(b, 'e0', 4);
    b.connectResult('e0', true, 1);
    fail(b, 'e0', 4);
    t.same(ejected(b), [], '4 + success + 4 is not 5 in a row');
    t.equal(b.stats()[0]!.consecutiveFailures, 4);
    fail(b, 'e0', 1);
    t.same(ejected(b), ['e0']);
    const s = b.stats()[0]!;
    t.equal(s.ejectedUntil, 1_000 + 30_000);
  });

  t.test('ejection time grows with each ejection, up to the maximum', async (t) => {
    const { b, clock } = make('P2C_EWMA', { outlier: { baseEjectionMs: 100_000 } });
    b.update(eps(4));
    const lengths: number[] = [];
    for (let round = 0; round < 4; round++) {
      fail(b, 'e0', 5);
      const until = b.stats()[0]!.ejectedUntil!;
      lengths.push(until - clock.t);
      clock.t = until - 1;
      t.same(ejected(b), ['e0'], 'still out 1 ms before');
      clock.t = until;
      b.pick(CTX);
      t.same(ejected(b), [], 'back at its time');
      t.equal(b.stats()[0]!.consecutiveFailures, 0, 'with a clean count');
      fail(b, 'e0', 4);
      t.same(ejected(b), [], 'fewer than 5 new failures do not eject it again');
    }
    t.same(lengths, [100_000, 200_000, 300_000, 300_000]);
  });

  t.test('time spent healthy is forgiven', async (t) => {
    const { b, clock } = make('ROUND_ROBIN');
    b.update(eps(4));
    fail(b, 'e0', 5);
    clock.t += 30_000;
    b.pick(CTX);
    fail(b, 'e0', 5);
    t.equal(b.stats()[0]!.ejectedUntil! - clock.t, 60_000, 'failing again at once: twice as long');
    clock.t += 60_000;
    b.pick(CTX);
    clock.t += 10 * 30_000;
    fail(b, 'e0', 5);
    t.equal(b.stats()[0]!.ejectedUntil! - clock.t, 30_000, 'after a long healthy spell: the base time again');
  });

  t.test('never more than maxEjectionPercent of the ready endpoints', async (t) => {
    const { b } = make('LEAST_REQUEST');
    b.update([...eps(4), ep('x', 'node-a', false)]);
    fail(b, 'e0', 5);
    fail(b, 'e1', 5);
    fail(b, 'e2', 5);
    t.same(ejected(b), ['e0', 'e1'], '50 % of 4 ready (the not-ready one does not count)');
    t.equal(b.stats()[2]!.consecutiveFailures, 5);
    t.same([...tally(b, 200).keys()].sort(), ['e2', 'e3'], 'the refused one stays in service');

    const lone = make('P2C_EWMA').b;
    lone.update(eps(1));
    fail(lone, 'e0', 50);
    t.same(ejected(lone), [], 'a lone endpoint is never ejected (one of one is 100 %)');
    t.equal(lone.pick(CTX)!.id, 'e0');

    const two = make('P2C_EWMA').b;
    two.update(eps(2));
    fail(two, 'e1', 5);
    t.same(ejected(two), ['e1'], 'one of two may go');
  });

  t.test('a refused ejection happens on a later failure once the cap allows', async (t) => {
    const { b, clock } = make('ROUND_ROBIN');
    b.update(eps(2));
    fail(b, 'e0', 5);
    fail(b, 'e1', 5);
    t.same(ejected(b), ['e0']);
    clock.t += 30_000;
    fail(b, 'e1', 1);
    t.same(ejected(b), ['e1'], 'e0 came back, so e1 may go now');
  });

  t.test('results for unknown ids change nothing', async (t) => {
    const { b } = make('ROUND_ROBIN');
    b.update(eps(2));
    fail(b, 'gone', 10);
    b.started('gone');
    b.finished('gone');
    t.same(b.stats().map((s) => s.id), ['e0', 'e1']);
    t.same(ejected(b), []);
  });
});

t.test('update() keeps the state of endpoints that stay', async (t) => {
  const { b } = make('P2C_EWMA', { outlier: { maxEjectionPercent: 100 } });
  b.update(eps(3));
  b.started('e0');
  b.started('e0');
  b.connectResult('e0', true, 7);
  fail(b, 'e1', 5);
  fail(b, 'e2', 3);
  const moved = { ...ep('e0'), address: '10.9.9.9' };
  b.update([moved, ep('e1'), ep('e2'), ep('e3')]);
  const stats = new Map(b.stats().map((s) => [s.id, s]));
  t.equal(stats.get('e0')!.active, 2);
  t.equal(stats.get('e0')!.ewmaMs, 7);
  t.equal(stats.get('e1')!.ejected, true);
  t.equal(stats.get('e2')!.consecutiveFailures, 3);
  t.same(stats.get('e3'), { id: 'e3', active: 0, ewmaMs: 1, ejected: false, ejectedUntil: undefined, consecutiveFailures: 0 });
  t.equal(b.pick(CTX, new Set(['e2', 'e3']))!.address, '10.9.9.9', 'picks return the latest version of an endpoint');

  b.update([ep('e1')]);
  t.same(b.stats().map((s) => s.id), ['e1']);
  t.equal(b.pick(CTX), undefined, 'the one left is still ejected');
  b.update(eps(2));
  t.equal(b.stats()[0]!.active, 0, 'a removed endpoint that comes back starts afresh');
});

t.test('registry', async (t) => {
  for (const policy of POLICIES) t.ok(createBalancer(policy), `${policy} is built in`);
  const err = t.throws(() => createBalancer('RANDOM' as BalancerPolicy), {
    code: 'NM_ERR_LB_UNKNOWN_POLICY',
    message: /"RANDOM".*P2C_EWMA/,
  });
  t.type(err, MeshError);

  let made: BalancerOptions | undefined;
  const fixed: Balancer = {
    update() {},
    pick: () => ep('only'),
    started() {},
    finished() {},
    connectResult() {},
    stats: () => [],
  };
  registerBalancer('TEST_FIXED', (o) => {
    made = o;
    return fixed;
  });
  t.equal(createBalancer('TEST_FIXED' as BalancerPolicy, { localNode: 'n' }).pick(CTX)!.id, 'only');
  t.same(made, { localNode: 'n' });
});
