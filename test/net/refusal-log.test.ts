/** Refusals counted always, their log lines within a budget that says how many it held back. */
import { Writable } from 'node:stream';

import pino from 'pino';
import { t } from 'tap';

import { LineBudget, RefusalLog } from '../../src/net';

t.test('LineBudget: so many lines per key per interval; the next line written says how many were dropped', async (t) => {
  const lines = new LineBudget(2, 1000);
  const took = [0, 1, 2, 3, 1000].map((now) => lines.take('tunnel tls', now));
  t.same(took.map((x) => x.write), [true, true, false, false, true]);
  t.equal(took[4]!.dropped, 2);
  t.same(lines.take('other key', 3), { write: true, dropped: 0 }, 'keys have their own budget');
});

t.test('LineBudget of one line: one per interval, the rest folded into the next', async (t) => {
  const lines = new LineBudget(1, 10_000);
  t.same([0, 5, 9_999, 10_000].map((now) => lines.take('grpc handshake_timeout', now)), [
    { write: true, dropped: 0 },
    { write: false, dropped: 0 },
    { write: false, dropped: 0 },
    { write: true, dropped: 2 },
  ]);
});

t.test('RefusalLog: every refusal counted (metric and counts), lines written within the budget', async (t) => {
  const out: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l) out.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  const inc: { listener: string; reason: string }[] = [];
  const r = new RefusalLog<'a' | 'b', 'x'>({ counter: { inc: (l) => inc.push(l) }, log: pino({ level: 'info' }, sink), linesPerInterval: 1, intervalMs: 60_000 });
  for (let i = 0; i < 5; i++) r.note('a', 'x', (log, held) => log.warn({ held }, 'refused'));
  r.note('b', 'x', (log, held) => log.warn({ held }, 'refused'));
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(inc.length, 6, 'the counter sees every one');
  t.same([r.counts.get('a x'), r.counts.get('b x')], [5, 1]);
  t.equal(out.length, 2, 'one line per listener and reason within the interval');
  t.same(out.map((l) => l.held), [0, 0]);

  const quiet = new RefusalLog<'a', 'x'>({ linesPerInterval: 1, intervalMs: 1 });
  quiet.note('a', 'x', () => t.fail('no logger: nothing is written'));
  t.equal(quiet.counts.get('a x'), 1);
});
