/**
 * The L4 benchmark's figures: a median with its spread over the runs, and
 * the table's ratio against the fair peer (bench/proxy-report.ts).
 */
import { t } from 'tap';

import { spread } from '../../bench/common';
import { sectionTable, summarize, type RunRecord, type SectionDef } from '../../bench/proxy-report';

t.test('spread: median, min and max; runs that gave no figure left out', async (t) => {
  const cases: [number[], ReturnType<typeof spread>][] = [
    [[3, 1, 2], { median: 2, min: 1, max: 3, runs: 3 }],
    [[4, 1, 3, 2], { median: 2.5, min: 1, max: 4, runs: 4 }],
    [[5], { median: 5, min: 5, max: 5, runs: 1 }],
    [[NaN, 7, Infinity, 9], { median: 8, min: 7, max: 9, runs: 2 }],
    [[], undefined],
    [[NaN], undefined],
  ];
  for (const [xs, want] of cases) t.same(spread(xs), want, JSON.stringify(xs));
});

t.test('the table shows each median with its min–max and the ratio against the peer', async (t) => {
  const def: SectionDef = {
    id: 'cross',
    title: 'Across nodes',
    paths: [
      { id: 'direct', label: 'direct' },
      { id: 'nodemesh', label: 'nodemesh' },
      { id: 'pair', label: 'pair' },
    ],
    peer: 'pair',
    subject: 'nodemesh',
  };
  const gbps: Record<string, number[]> = { direct: [10, 12, 11], nodemesh: [2, 1, 3], pair: [4, 5, 3] };
  const runs: RunRecord[] = Object.entries(gbps).flatMap(([path, xs]) => xs.map((x, i) => ({ section: 'cross', path, run: i + 1, startedAt: '', figures: { gbps: x, pacedP99: path === 'direct' ? 0.1 : 0.4 } })));
  const summary = summarize(runs);
  t.same(summary.cross!.nodemesh!.gbps, { median: 2, min: 1, max: 3, runs: 3 });
  const lines = sectionTable(def, summary);
  const row = lines.find((l) => l.includes('one TCP stream'))!;
  t.match(row, /11\.00 \(10\.00–12\.00\)\s+2\.00 \(1\.00–3\.00\)\s+4\.00 \(3\.00–5\.00\)\s+0\.50x$/, 'medians, spreads, and nodemesh over the pair');
  t.match(lines[1], /nodemesh \/ pair/, 'the ratio column names what it divides');
  t.match(lines.find((l) => l.includes('added to direct'))!, /nodemesh p50 —, p99 \+0\.300; pair p50 —, p99 \+0\.300/, 'what each path adds to direct');
  t.notOk(lines.some((l) => l.includes('request errors')), 'no error line when no run had errors');
});
