/**
 * What the controller pushed to this node (DESIGN: "one place holds state,
 * one place changes it"). Snapshots replace, deltas patch; a version that
 * cannot be applied is refused whole and the previous state stays.
 */
import type { ConfigMessage } from '../../api/proto';

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

export class ConfigState {
  #items = new Map<string, unknown>();
  #version = 0;

  get version(): number {
    return this.#version;
  }

  get items(): ReadonlyMap<string, unknown> {
    return this.#items;
  }

  get(key: string): unknown {
    return this.#items.get(key);
  }

  /** Keys of one kind ("Service/"), in key order. */
  keysOf(kind: string): string[] {
    return [...this.#items.keys()].filter((k) => k.startsWith(`${kind}/`)).sort();
  }

  /**
   * Works out the state a snapshot or delta leads to, without taking it.
   * Throws ConfigRejected when the message cannot be applied: a delta from
   * another version, or an item that is not a JSON object of the kind its
   * key names.
   */
  prepare(msg: ConfigMessage): Staged | undefined {
    if (msg.snapshot) {
      const next = new Map<string, unknown>();
      for (const it of msg.snapshot.items) next.set(it.key, parseItem(msg.snapshot.version, it.key, it.json));
      const changed = new Set([...this.#items.keys(), ...next.keys()]);
      return { version: msg.snapshot.version, items: next, changed: [...changed] };
    }
    if (msg.delta) {
      const d = msg.delta;
      if (d.fromVersion !== this.#version) throw new ConfigRejected(d.version, `delta from version ${d.fromVersion}, but this node holds ${this.#version}`);
      const parsed = d.upserts.map((it) => [it.key, parseItem(d.version, it.key, it.json)] as const);
      const next = new Map(this.#items);
      for (const [k, v] of parsed) next.set(k, v);
      for (const k of d.removals) next.delete(k);
      return { version: d.version, items: next, changed: [...parsed.map(([k]) => k), ...d.removals] };
    }
    return undefined;
  }

  /** Takes a prepared state. */
  commit(staged: Staged): ApplyResult {
    this.#items = staged.items;
    this.#version = staged.version;
    return { version: staged.version, changed: staged.changed };
  }

  /** prepare() then commit(): all of the message, or (on ConfigRejected) none of it. */
  apply(msg: ConfigMessage): ApplyResult | undefined {
    const staged = this.prepare(msg);
    return staged && this.commit(staged);
  }
}

/** A state worked out by prepare(), not yet taken. */
export interface Staged {
  version: number;
  items: Map<string, unknown>;
  changed: string[];
}

function parseItem(version: number, key: string, json: string): unknown {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch (err) {
    throw new ConfigRejected(version, `item ${key} is not JSON: ${(err as Error).message}`);
  }
  const kind = key.split('/')[0];
  if (!v || typeof v !== 'object' || (v as { kind?: unknown }).kind !== kind) throw new ConfigRejected(version, `item ${key} is not a ${kind} object`);
  return v;
}
