/**
 * The node proxies' memory per idle connection (see docs/architecture.md,
 * 'Performance targets'): RSS of each proxy before, while pods hold idle
 * connections through the mesh across nodes (each set from a pod of one node
 * to a pod of the other, so every proxy carries every connection, as the
 * source's proxy or the destination's), and after they close, until
 * each is back within 10 % of its baseline and the data path's maps hold what
 * they held before (both bounded). The data path's counters show that the
 * kernel redirected every connection and saw every one close.
 */
import { type ChildProcess } from 'node:child_process';
import * as path from 'node:path';

import { labSpawn, type LabState } from '../src/lab';
import { Datapath } from '../src/node-proxy/datapath';
import { PACKAGE_ROOT } from '../src/paths';
import { DeadlineError, onExit, rss } from './common';

const HOLD_CLIENT = path.join(PACKAGE_ROOT, 'bench', 'hold-client.js');
/** Seconds a proxy's RSS must stay within 10 % of its baseline to count as back. */
const STAY_S = 5;

export interface MemoryProxy {
  node: string;
  pid: number;
}

interface MapsView {
  /** Entries per map (the per-CPU and array maps always hold their size). */
  entries: Record<string, number>;
  counters: Record<string, number>;
}

export interface ProxyMemory {
  node: string;
  /** RSS, MiB. */
  baselineMiB: number;
  heldMiB: number;
  /** (held - baseline) / connections, KiB. */
  perConnectionKiB: number;
  /** Seconds from the close until RSS was within 10 % of the baseline and stayed there (STAY_S, or to the deadline); null: not within the deadline. */
  backInS: number | null;
  lastMiB: number;
  /** The most RSS seen while waiting after the close. */
  peakAfterCloseMiB: number;
  /** Seconds from the close until every map held no more entries than at the baseline; null: not within the deadline. */
  mapsBackInS: number | null;
  maps: { baseline: Record<string, number>; held: Record<string, number>; last: Record<string, number> };
  /** Data path counters over the phase: connections redirected while opening, closed after. */
  redirected: number;
  closed: number;
}

export interface MemoryResult {
  /** Connections held at once, over every set; each proxy carried all of them (as the source's or the destination's). */
  connections: number;
  sets: (HoldSpec & { held: number; openMs: number; errors: number })[];
  deadlineS: number;
  proxies: ProxyMemory[];
}

function mapsOf(node: string): MapsView {
  const dp = Datapath.open(node);
  try {
    const s = dp.status();
    return {
      entries: Object.fromEntries(s.maps.map((m) => [m.name, m.entries])),
      counters: Object.fromEntries(Object.entries(s.counters).map(([k, v]) => [k, Number(v)])),
    };
  } finally {
    dp.close();
  }
}

const mapsBack = (now: MapsView, base: MapsView): boolean => Object.entries(base.entries).every(([k, v]) => (now.entries[k] ?? 0) <= v);

/** Reads one JSON line from the child's stdout, within `ms`. */
function nextLine(child: ChildProcess, ms: number, what: string, err: () => string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => done(new DeadlineError(what, ms, `  its stderr: ${err() || '(none)'}`)), ms);
    const onData = (d: Buffer): void => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      try {
        done(undefined, JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
      } catch (e) {
        done(new Error(`${what}: not JSON: ${buf.slice(0, nl)}`));
      }
    };
    const onExit = (code: number | null): void => done(new Error(`${what}: the client exited (${code}) first; its stderr: ${err() || '(none)'}`));
    const done = (e?: Error, v?: Record<string, unknown>): void => {
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      child.off('exit', onExit);
      if (e) reject(e);
      else resolve(v!);
    };
    child.stdout!.on('data', onData);
    child.once('exit', onExit);
  });
}

/** One set of idle connections: from a pod to a host and port through the mesh. */
export interface HoldSpec {
  client: string;
  host: string;
  port: number;
  count: number;
}

type Holder = { child: ChildProcess; stderr: () => string; spec: HoldSpec; held: number; errors: number; openMs: number; lastError: string };

/**
 * Holds every `specs` set of idle connections through the mesh at once and
 * measures `proxies`; `deadlineMs` bounds the wait for memory and maps to come
 * back after the close.
 */
export async function measureIdleConnections(lab: LabState, specs: readonly HoldSpec[], proxies: readonly MemoryProxy[], deadlineMs: number, progress: (line: string) => void): Promise<MemoryResult> {
  const describe = (h: HoldSpec): string => `${h.count} connections ${h.client} -> ${h.host}:${h.port}`;
  const hold = async (h: HoldSpec): Promise<Holder> => {
    const child = labSpawn(lab, h.client, [process.execPath, HOLD_CLIENT, h.host, String(h.port), String(h.count), '100', '120000', String(deadlineMs + 300_000)], { stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-2000)));
    onExit(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    const stderr = (): string => err;
    const r = await nextLine(child, 150_000, `memory: opening ${describe(h)}`, stderr);
    return { child, stderr, spec: h, held: Number(r.holding), errors: Number(r.errors), openMs: Number(r.openMs), lastError: String(r.lastError ?? '') };
  };
  const holdAll = async (hs: readonly HoldSpec[]): Promise<Holder[]> => {
    const got = await Promise.all(hs.map(hold));
    const short = got.filter((g) => g.held < g.spec.count);
    if (short.length) {
      await closeAll(got).catch(() => undefined);
      throw new Error(
        `memory: ${short.map((g) => `${g.held} of ${describe(g.spec)} reached the server in ${(g.openMs / 1000).toFixed(1)} s (${g.errors} errors, last: ${g.lastError || 'none'})`).join('; ')}; the proxies' logs say why`,
      );
    }
    return got;
  };
  const closeAll = (hs: readonly Holder[]): Promise<unknown> =>
    Promise.all(
      hs.map((h) => {
        h.child.stdin!.end('close\n');
        return nextLine(h.child, 30_000, `memory: closing ${describe(h.spec)}`, h.stderr);
      }),
    );

  // A few connections first, closed again, so the baseline has the code and pools any connection needs.
  await closeAll(await holdAll(specs.map((h) => ({ ...h, count: 100 }))));
  await new Promise((r) => setTimeout(r, 3000));
  const base = new Map(proxies.map((p) => [p.node, { rss: rss(p.pid).now, maps: mapsOf(p.node) }]));

  progress(`opening ${specs.map(describe).join(' and ')}, at once, through the mesh`);
  const holders = await holdAll(specs);
  const count = specs.reduce((a, h) => a + h.count, 0);
  await new Promise((r) => setTimeout(r, 3000));
  const held = new Map(proxies.map((p) => [p.node, { rss: rss(p.pid).now, maps: mapsOf(p.node) }]));

  progress(`closing them; waiting up to ${deadlineMs / 1000} s for the proxies' memory and the maps`);
  const closedAt = Date.now();
  await closeAll(holders);
  const out = new Map<string, ProxyMemory>();
  for (const p of proxies) {
    const b = base.get(p.node)!;
    const k = held.get(p.node)!;
    out.set(p.node, {
      node: p.node,
      baselineMiB: b.rss,
      heldMiB: k.rss,
      perConnectionKiB: ((k.rss - b.rss) * 1024) / count,
      backInS: null,
      lastMiB: k.rss,
      peakAfterCloseMiB: k.rss,
      mapsBackInS: null,
      maps: { baseline: b.maps.entries, held: k.maps.entries, last: k.maps.entries },
      redirected: (k.maps.counters.redirected ?? 0) - (b.maps.counters.redirected ?? 0),
      closed: 0,
    });
  }
  // RSS often rises for a while after a close (flow records, garbage not yet collected): back means back and staying back.
  const inBandSince = new Map<string, number | null>(proxies.map((p) => [p.node, null]));
  for (;;) {
    const elapsed = (Date.now() - closedAt) / 1000;
    const last = elapsed * 1000 > deadlineMs;
    for (const p of proxies) {
      const r = out.get(p.node)!;
      const b = base.get(p.node)!;
      r.lastMiB = rss(p.pid).now;
      r.peakAfterCloseMiB = Math.max(r.peakAfterCloseMiB, r.lastMiB);
      const m = mapsOf(p.node);
      r.maps.last = m.entries;
      r.closed = (m.counters.closed ?? 0) - (held.get(p.node)!.maps.counters.closed ?? 0);
      const since = r.lastMiB <= b.rss * 1.1 ? (inBandSince.get(p.node) ?? elapsed) : null;
      inBandSince.set(p.node, since);
      r.backInS = since !== null && (elapsed - since >= STAY_S || last) ? since : null;
      if (r.mapsBackInS === null && mapsBack(m, b.maps)) r.mapsBackInS = elapsed;
    }
    if ([...out.values()].every((r) => r.backInS !== null && r.mapsBackInS !== null) || last) break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  return { connections: count, sets: holders.map((h) => ({ ...h.spec, held: h.held, openMs: h.openMs, errors: h.errors })), deadlineS: deadlineMs / 1000, proxies: [...out.values()] };
}
