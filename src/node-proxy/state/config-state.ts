/**
 * What the controller pushed to this node: one place holds it, one place
 * changes it. Snapshots replace, deltas patch. Either may come in parts; the
 * parts are gathered and nothing is taken before the last one has arrived
 * and the whole version has been checked. A version that cannot be applied is
 * refused whole and the previous state stays.
 *
 * Items arrive as JSON objects or in the compact wire form of Workloads and
 * Services; both are kept as the same objects (a Workload as the resource, a
 * Service as the resource with `endpoints`: the names of its Workloads).
 */
import { LIMITS } from '../../api/limits';
import type { ConfigMessage, Item } from '../../api/proto';

export interface ApplyResult {
  version: number;
  /** Keys that changed (added, updated or removed). */
  changed: string[];
}

export class ConfigRejected extends Error {
  constructor(
    readonly version: number,
    message: string,
  ) {
    super(message);
  }
}

/** Where a message in parts stands. */
export interface Progress {
  type: 'snapshot' | 'delta';
  version: number;
  parts: number;
  items: number;
  /** Items the whole snapshot has (0 for a delta: unknown until the end). */
  totalItems: number;
}

interface Gathering extends Progress {
  from: number;
  upserts: Map<string, unknown>;
  removals: string[];
}

export interface ConfigStateOptions {
  /** Items this node holds at most; a larger snapshot is refused at its first part. */
  maxItems?: number;
}

export class ConfigState {
  #items = new Map<string, unknown>();
  #version = 0;
  #gathering: Gathering | undefined;
  /** A message refused before its last part: its other parts are dropped without another refusal. */
  #refused: { type: 'snapshot' | 'delta'; version: number } | undefined;
  readonly #maxItems: number;

  constructor(opts: ConfigStateOptions = {}) {
    this.#maxItems = opts.maxItems ?? LIMITS.maxNodeConfigItems;
  }

  get version(): number {
    return this.#version;
  }

  get items(): ReadonlyMap<string, unknown> {
    return this.#items;
  }

  /** A message whose parts are still arriving, if any. */
  get receiving(): Readonly<Progress> | undefined {
    const g = this.#gathering;
    return g && { type: g.type, version: g.version, parts: g.parts, items: g.items, totalItems: g.totalItems };
  }

  get(key: string): unknown {
    return this.#items.get(key);
  }

  /** Forgets a message whose parts were still arriving (its stream broke: the controller starts it over). */
  abandon(): void {
    this.#gathering = undefined;
  }

  /**
   * Takes one message (or one part of it) and works out the state it leads
   * to, without taking it: undefined while parts are still to come. Throws
   * ConfigRejected when it cannot be applied: parts out of order, a delta from
   * another version, an item that is not an object of the kind its key names,
   * more items than this node holds. The parts gathered so far are dropped then.
   */
  prepare(msg: ConfigMessage): Staged | undefined {
    const m = msg.snapshot ?? msg.delta;
    if (!m) return undefined;
    const type = msg.snapshot ? 'snapshot' : 'delta';
    // The rest of a message already refused: one refusal is enough.
    if ((m.part ?? 0) > 0 && this.#refused?.type === type && this.#refused.version === m.version) return undefined;
    this.#refused = undefined;
    try {
      return this.#prepare(msg);
    } catch (err) {
      this.#gathering = undefined;
      if (m.more) this.#refused = { type, version: m.version };
      throw err;
    }
  }

  #prepare(msg: ConfigMessage): Staged | undefined {
    const snap = msg.snapshot;
    const delta = msg.delta;
    if (!snap && !delta) return undefined;
    const version = (snap ?? delta)!.version;
    const part = (snap ?? delta)!.part ?? 0;
    let g = this.#gathering;
    if (part === 0) {
      // A snapshot starts over whatever was half gathered; a delta may not interrupt one.
      if (g && delta) throw new ConfigRejected(version, `a delta to version ${version} arrived while ${g.type} ${g.version} was still in parts (${g.parts} of it arrived)`);
      if (snap && (snap.totalItems ?? 0) > this.#maxItems)
        throw new ConfigRejected(version, `the snapshot has ${snap.totalItems} items, more than this node holds (${this.#maxItems}, --max-config-items)`);
      if (delta && delta.fromVersion !== this.#version) throw new ConfigRejected(version, `delta from version ${delta.fromVersion}, but this node holds ${this.#version}`);
      g = { type: snap ? 'snapshot' : 'delta', version, from: delta?.fromVersion ?? 0, parts: 0, items: 0, totalItems: snap?.totalItems ?? 0, upserts: new Map(), removals: [] };
    } else if (!g || g.version !== version || g.parts !== part || (snap ? g.type !== 'snapshot' : g.type !== 'delta')) {
      throw new ConfigRejected(version, `part ${part} of ${snap ? 'snapshot' : 'delta'} ${version} arrived, but ${g ? `part ${g.parts} of ${g.type} ${g.version}` : 'a part 0'} was next`);
    }
    for (const it of snap?.items ?? delta!.upserts) {
      g.upserts.set(it.key, parseItem(version, it));
    }
    if (delta) for (const k of delta.removals) g.removals.push(k);
    g.parts++;
    g.items = g.upserts.size;
    const size = g.type === 'snapshot' ? g.upserts.size : this.#items.size + g.upserts.size;
    if (size > this.#maxItems) throw new ConfigRejected(version, `version ${version} would have this node hold more than ${this.#maxItems} items (--max-config-items)`);
    if ((snap ?? delta)!.more) {
      this.#gathering = g;
      return undefined;
    }
    this.#gathering = undefined;
    return new Staged(this.#items, g.type === 'snapshot', version, g.upserts, g.removals);
  }

  /** Takes a prepared state: a snapshot replaces the map, a delta patches it in place. */
  commit(staged: Staged): ApplyResult {
    const changed = staged.changedKeys();
    if (staged.replace) this.#items = staged.upserts;
    else {
      for (const [k, v] of staged.upserts) this.#items.set(k, v);
      for (const k of staged.removals) this.#items.delete(k);
    }
    this.#version = staged.version;
    return { version: staged.version, changed };
  }

  /** prepare() then commit(): all of the message, or (on ConfigRejected) none of it. */
  apply(msg: ConfigMessage): ApplyResult | undefined {
    const staged = this.prepare(msg);
    return staged && this.commit(staged);
  }
}

/** A state worked out by prepare(), not yet taken: what it sets and removes over the state it starts from. */
export class Staged {
  constructor(
    readonly base: ReadonlyMap<string, unknown>,
    /** A snapshot: keys it does not set go. */
    readonly replace: boolean,
    readonly version: number,
    readonly upserts: Map<string, unknown>,
    readonly removals: readonly string[],
  ) {}

  /** The entries of one kind ("AuthorizationPolicy") once this is taken. */
  *entriesOf(kind: string): Iterable<[string, unknown]> {
    const prefix = `${kind}/`;
    for (const [k, v] of this.upserts) if (k.startsWith(prefix)) yield [k, v];
    if (this.replace) return;
    const removed = new Set(this.removals);
    for (const [k, v] of this.base) if (k.startsWith(prefix) && !this.upserts.has(k) && !removed.has(k)) yield [k, v];
  }

  changedKeys(): string[] {
    if (!this.replace) return [...this.upserts.keys(), ...this.removals.filter((k) => this.base.has(k))];
    const out = [...this.upserts.keys()];
    for (const k of this.base.keys()) if (!this.upserts.has(k)) out.push(k);
    return out;
  }
}

const KEY = /^([A-Za-z]+)\/([^/]*)\/([^/]+)$/;

function parseItem(version: number, it: Item): unknown {
  const m = KEY.exec(it.key);
  if (!m) throw new ConfigRejected(version, `item key ${JSON.stringify(it.key.slice(0, 200))} is not Kind/namespace/name`);
  const [, kind, namespace, name] = m as unknown as [string, string, string, string];
  if (it.workload) {
    if (kind !== 'Workload') throw new ConfigRejected(version, `item ${it.key} carries a workload`);
    const w = it.workload;
    return {
      kind: 'Workload',
      metadata: { name, namespace, labels: w.labels ?? {}, resourceVersion: w.resourceVersion || undefined },
      spec: { node: w.node, serviceAccount: w.serviceAccount, addresses: w.addresses ?? [], ready: w.ready, ...(w.netns ? { netns: w.netns } : {}) },
    };
  }
  if (it.service) {
    if (kind !== 'Service') throw new ConfigRejected(version, `item ${it.key} carries a service`);
    const v = parseJson(version, it.key, it.service.json, kind) as Record<string, unknown>;
    return { ...v, endpoints: it.service.endpoints ?? [] };
  }
  return parseJson(version, it.key, it.json ?? '', kind);
}

function parseJson(version: number, key: string, json: string, kind: string): unknown {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch (err) {
    throw new ConfigRejected(version, `item ${key} is not JSON: ${(err as Error).message}`);
  }
  if (!v || typeof v !== 'object' || (v as { kind?: unknown }).kind !== kind) throw new ConfigRejected(version, `item ${key} is not a ${kind} object`);
  return v;
}
