/**
 * What every balancer shares: per-endpoint state kept across updates, outlier
 * ejection, and locality. A policy only supplies a `Picker`, which chooses
 * among the candidates this module hands it.
 *
 * Locality: endpoints on `localNode` take all connections while at least one
 * of them is usable (ready and not ejected); when none is, every usable
 * endpoint does. A candidate the caller excludes (already tried) counts as
 * unusable for that pick, so a retry after the only local endpoint failed
 * goes to another node rather than nowhere.
 *
 * The two candidate lists (local, all) are rebuilt when the set changes
 * (update, ejection, return), never per pick: pick() allocates nothing
 * unless an `exclude` set has to be walked.
 */
import { performance } from 'node:perf_hooks';

import { currentLatency, EWMA_DEFAULTS, observeFailure, observeLatency } from './ewma';
import { initialOutlierState, OutlierDetector } from './outlier';
import type { Balancer, BalancerOptions, BalancerStats, Endpoint, EndpointState, PickContext, Picker } from './types';

export class LocalityBalancer implements Balancer {
  readonly #picker: Picker;
  readonly #localNode: string | undefined;
  readonly #now: () => number;
  readonly #detector: OutlierDetector;
  readonly #defaultRttMs: number;
  readonly #decayMs: number;

  #states = new Map<string, EndpointState>();
  #order: EndpointState[] = [];
  readonly #local: EndpointState[] = [];
  readonly #all: EndpointState[] = [];
  #ready = 0;
  #ejectedReady = 0;
  #ejected = 0;
  #nextReturn = Infinity;

  constructor(picker: Picker, opts: BalancerOptions = {}) {
    this.#picker = picker;
    this.#localNode = opts.localNode;
    this.#now = opts.now ?? (() => performance.now());
    this.#detector = new OutlierDetector(opts.outlier);
    this.#defaultRttMs = opts.ewma?.defaultRttMs ?? EWMA_DEFAULTS.defaultRttMs;
    this.#decayMs = opts.ewma?.decayMs ?? EWMA_DEFAULTS.decayMs;
  }

  update(endpoints: readonly Endpoint[]): void {
    const now = this.#now();
    const next = new Map<string, EndpointState>();
    const order: EndpointState[] = [];
    for (const ep of endpoints) {
      // A repeated id is the same endpoint; the first occurrence wins.
      if (next.has(ep.id)) continue;
      let s = this.#states.get(ep.id);
      if (s === undefined) {
        s = {
          ...initialOutlierState(),
          id: ep.id,
          endpoint: ep,
          local: false,
          usable: false,
          active: 0,
          ewmaMs: this.#defaultRttMs,
          ewmaAt: now,
        };
      }
      s.endpoint = ep;
      s.local = this.#localNode !== undefined && ep.node === this.#localNode;
      next.set(ep.id, s);
      order.push(s);
    }
    this.#states = next;
    this.#order = order;
    for (const s of order) this.#detector.returnIfDue(s, now);
    this.#picker.rebuild?.(order);
    this.#rebuild();
  }

  pick(ctx: PickContext, exclude?: ReadonlySet<string>): Endpoint | undefined {
    if (this.#ejected > 0) this.#returnDue(this.#now());
    let local = true;
    let list = this.#local;
    let eligible = list.length === 0 ? 0 : list.length - this.#excludedUsable(exclude, true);
    if (eligible <= 0) {
      local = false;
      list = this.#all;
      eligible = list.length - this.#excludedUsable(exclude, false);
      if (eligible <= 0) return undefined;
    }
    return this.#picker.choose(list, eligible, local, ctx, exclude)?.endpoint;
  }

  started(id: string): void {
    const s = this.#states.get(id);
    if (s !== undefined) s.active++;
  }

  finished(id: string): void {
    const s = this.#states.get(id);
    if (s !== undefined && s.active > 0) s.active--;
  }

  connectResult(id: string, ok: boolean, latencyMs: number): void {
    const s = this.#states.get(id);
    if (s === undefined) return;
    const now = this.#now();
    if (ok) observeLatency(s, latencyMs, now, this.#decayMs);
    else observeFailure(s, latencyMs, now);
    // Returns first, so the percent cap counts only endpoints still out.
    if (this.#ejected > 0) this.#returnDue(now);
    if (this.#detector.record(s, ok, now, this.#ejectedReady, this.#ready)) this.#rebuild();
  }

  stats(): BalancerStats[] {
    const now = this.#now();
    if (this.#ejected > 0) this.#returnDue(now);
    return this.#order.map((s) => ({
      id: s.id,
      active: s.active,
      ewmaMs: currentLatency(s, now, this.#decayMs),
      ejected: s.ejectedUntil !== undefined,
      ejectedUntil: s.ejectedUntil,
      consecutiveFailures: s.consecutiveFailures,
    }));
  }

  /** Usable endpoints of the tier that `exclude` names. */
  #excludedUsable(exclude: ReadonlySet<string> | undefined, local: boolean): number {
    if (exclude === undefined || exclude.size === 0) return 0;
    let n = 0;
    for (const id of exclude) {
      const s = this.#states.get(id);
      if (s !== undefined && s.usable && (s.local || !local)) n++;
    }
    return n;
  }

  #returnDue(now: number): void {
    if (now < this.#nextReturn) return;
    let changed = false;
    for (const s of this.#order) if (this.#detector.returnIfDue(s, now)) changed = true;
    if (changed) this.#rebuild();
  }

  #rebuild(): void {
    this.#local.length = 0;
    this.#all.length = 0;
    this.#ready = 0;
    this.#ejectedReady = 0;
    this.#ejected = 0;
    this.#nextReturn = Infinity;
    for (const s of this.#order) {
      const ejected = s.ejectedUntil !== undefined;
      if (ejected) {
        this.#ejected++;
        if (s.ejectedUntil! < this.#nextReturn) this.#nextReturn = s.ejectedUntil!;
      }
      s.usable = s.endpoint.ready && !ejected;
      if (!s.endpoint.ready) continue;
      this.#ready++;
      if (ejected) {
        this.#ejectedReady++;
        continue;
      }
      this.#all.push(s);
      if (s.local) this.#local.push(s);
    }
  }
}
