/** The L4 benchmark's printed tables: medians with their spread, and the ratio against the fair peer. */
import { type Spread, spread } from './common';
import { type MemoryResult } from './proxy-memory';

export const METRICS = ['gbps', 'connectRps', 'connectP99', 'persistentRps', 'persistentP99', 'pacedRps', 'pacedP50', 'pacedP99', 'connectCorePer1k', 'persistentCorePer1k', 'errors'] as const;
export type Metric = (typeof METRICS)[number];

export interface RunRecord {
  section: string;
  path: string;
  run: number;
  startedAt: string;
  figures: Partial<Record<Metric, number>>;
}

export interface SectionDef {
  id: string;
  title: string;
  /** Paths in column order; `peer` is the one the ratio is against. */
  paths: { id: string; label: string }[];
  peer: string;
  subject: string;
}

const ROWS: { metric: Metric; label: string; digits: number; added?: boolean }[] = [
  { metric: 'gbps', label: 'one TCP stream (Gbit/s, iperf3)', digits: 2 },
  { metric: 'connectRps', label: 'new connection per request (req/s)', digits: 0 },
  { metric: 'connectP99', label: '  p99 (ms)', digits: 2 },
  { metric: 'persistentRps', label: 'round trips, 16 connections (req/s)', digits: 0 },
  { metric: 'persistentP99', label: '  p99 (ms)', digits: 2 },
  { metric: 'pacedP50', label: '1 KB req/resp at 1,000/s: p50 (ms)', digits: 3 },
  { metric: 'pacedP99', label: '  p99 (ms)', digits: 3 },
  { metric: 'connectCorePer1k', label: 'proxy CPU per 1,000 new conn/s (core)', digits: 3 },
  { metric: 'persistentCorePer1k', label: 'proxy CPU per 1,000 round trips/s', digits: 3 },
];

export type Summary = Record<string, Record<string, Partial<Record<Metric, Spread>>>>;

/** Section -> path -> metric -> median and spread over the runs. */
export function summarize(runs: readonly RunRecord[]): Summary {
  const out: Summary = {};
  for (const r of runs) {
    const p = ((out[r.section] ??= {})[r.path] ??= {});
    for (const m of METRICS) {
      const xs = runs.filter((x) => x.section === r.section && x.path === r.path).map((x) => x.figures[m] ?? NaN);
      const s = spread(xs);
      if (s) p[m] = s;
    }
  }
  return out;
}

const fmt = (x: number, d: number): string => x.toFixed(d);

function cell(s: Spread | undefined, d: number): string {
  if (!s) return '—';
  return s.runs > 1 ? `${fmt(s.median, d)} (${fmt(s.min, d)}–${fmt(s.max, d)})` : fmt(s.median, d);
}

export function sectionTable(def: SectionDef, summary: Summary): string[] {
  const sec = summary[def.id] ?? {};
  const W = 24;
  const lines = [def.title];
  lines.push(`  ${''.padEnd(38)}${def.paths.map((p) => p.label.padStart(W)).join('')}  ${`${def.subject} / ${def.paths.find((p) => p.id === def.peer)!.label}`.padStart(W)}`);
  for (const row of ROWS) {
    const cells = def.paths.map((p) => cell(sec[p.id]?.[row.metric], row.digits));
    const a = sec[def.subject]?.[row.metric]?.median;
    const b = sec[def.peer]?.[row.metric]?.median;
    const ratio = a !== undefined && b !== undefined && b !== 0 ? `${(a / b).toFixed(2)}x` : '—';
    lines.push(`  ${row.label.padEnd(38)}${cells.map((c) => c.padStart(W)).join('')}  ${ratio.padStart(W)}`);
  }
  const direct = sec.direct;
  const added = (path: string, m: Metric): string => {
    const a = sec[path]?.[m]?.median;
    const d = direct?.[m]?.median;
    return a === undefined || d === undefined ? '—' : `${a - d < 0 ? '' : '+'}${(a - d).toFixed(3)}`;
  };
  lines.push(
    `  added to direct at 1,000/s (medians, ms): ${def.paths
      .filter((p) => p.id !== 'direct')
      .map((p) => `${p.label} p50 ${added(p.id, 'pacedP50')}, p99 ${added(p.id, 'pacedP99')}`)
      .join('; ')}`,
  );
  const errors = def.paths.map((p) => `${p.label} ${sec[p.id]?.errors?.max ?? 0}`).join(', ');
  if (def.paths.some((p) => (sec[p.id]?.errors?.max ?? 0) > 0)) lines.push(`  request errors (most in one run): ${errors}`);
  return lines;
}

export function memoryLines(m: MemoryResult, idle: Record<string, number>, afterRuns: Record<string, number>, idleSplit: Record<string, { anon: number; file: number }> = {}): string[] {
  const lines = [`Node proxy memory (RSS; target: <= 60 MB idle, <= 10 KB per idle connection)`];
  const split = (n: string): string => (idleSplit[n] ? ` (${idleSplit[n].anon.toFixed(0)} its own, ${idleSplit[n].file.toFixed(0)} mapped from the runtime's files)` : '');
  lines.push(`  idle, freshly started: ${Object.entries(idle).map(([n, v]) => `${n} ${v.toFixed(0)} MiB${split(n)}`).join(', ')}; after the idle connections and all the runs: ${Object.entries(afterRuns).map(([n, v]) => `${n} ${v.toFixed(0)} MiB`).join(', ')}`);
  lines.push(
    `  ${m.connections} idle connections held at once through the mesh across nodes, each through both proxies (${m.sets.map((s) => `${s.held} ${s.client} -> ${s.host}:${s.port} opened in ${(s.openMs / 1000).toFixed(1)} s`).join(', ')}); per connection = RSS delta / ${m.connections}:`,
  );
  for (const p of m.proxies) {
    const back = p.backInS === null ? `RSS not back within 10 % in ${m.deadlineS} s (${p.lastMiB.toFixed(0)} MiB then, at most ${p.peakAfterCloseMiB.toFixed(0)})` : `RSS back within 10 % after ${p.backInS.toFixed(0)} s (at most ${p.peakAfterCloseMiB.toFixed(0)} MiB meanwhile)`;
    const maps = p.mapsBackInS === null ? `BPF maps not back in ${m.deadlineS} s (${JSON.stringify(p.maps.last)}, before ${JSON.stringify(p.maps.baseline)})` : `BPF maps back after ${p.mapsBackInS.toFixed(0)} s`;
    lines.push(
      `    ${p.node}: ${p.baselineMiB.toFixed(0)} -> ${p.heldMiB.toFixed(0)} MiB, ${p.perConnectionKiB.toFixed(1)} KiB per connection; after the close: ${back}, ${maps}; the data path counted ${p.redirected} redirected, ${p.closed} closed`,
    );
  }
  return lines;
}
