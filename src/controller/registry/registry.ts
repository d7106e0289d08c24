/**
 * Derived state of the mesh, kept in memory from the store: a Service's
 * endpoints (the Workloads its selector matches in its namespace, by name),
 * the effective MeshConfig, where each node takes tunnels (a Node item), and
 * which nodes need which policy. Everything a node may receive is an Item,
 * kept encoded (once per change, the same bytes for every node's stream);
 * the registry knows each item's content, a sequence number of its last
 * change, its size on the wire and its scope (every node, or a set of nodes). Removals are remembered (bounded) so a node that comes back gets
 * only what changed while it was away.
 *
 * Pure: no I/O. `apply(changes)` returns the keys of items that changed in
 * content or scope, so the push side diffs only those.
 */
import { encodeItem, framedLength } from '../../api/config-wire';
import type { Item } from '../../api/proto';
import type { Change } from '../store';
import { workloadIdentity } from '../../api/identity';
import { labelSelectorMatches } from '../../api/selectors';
import {
  MESH_CONFIG_DEFAULTS,
  resourceKey,
  ROOT_NAMESPACE,
  type AuthorizationPolicy,
  type MeshConfigSpec,
  type PeerAuthentication,
  type Resource,
  type Service,
  type Workload,
} from '../../api/kinds';

export { ROOT_NAMESPACE };
export const TRUST_BUNDLE_KEY = 'TrustBundle//bundle';
export const MESH_CONFIG_KEY = 'MeshConfig//default';
/** Serials (normalized hex) of revoked certificates still in their validity: every node's tunnels refuse them. */
export const REVOCATION_LIST_KEY = 'RevocationList//revoked';

export interface ItemState {
  key: string;
  /** The item as sent. */
  wire: Item;
  /** Its encoding: made once per change, the same bytes for every node (equal bytes: nothing to send). */
  encoded: Buffer;
  /** What it takes in a message, bytes (the encoding with its field tag and length). */
  bytes: number;
  /**
   * Bumped (from a counter of the registry's own) whenever content or scope
   * changes, also for changes that are no store write (a node's addresses).
   */
  version: number;
  /** null: every node; else the nodes that need it. */
  scope: ReadonlySet<string> | null;
}

/** Items of these kinds go only to the nodes in their scope; all others to every node. */
export function isScopedKey(key: string): boolean {
  return key.startsWith('AuthorizationPolicy/') || key.startsWith('PeerAuthentication/');
}

export const NODE_KEY_PREFIX = 'Node//';

/** Removals remembered for nodes that come back; one that was away longer gets a snapshot. */
const REMOVALS_KEPT = 65_536;

const selects = labelSelectorMatches;

/** A workload's SPIFFE ID (src/api/identity.ts). */
export const spiffeId = workloadIdentity;

/** A multimap from one `ns/key=value` label pair to the objects that have it (or select on it). */
class PairIndex<T> {
  readonly #m = new Map<string, Set<T>>();
  add(ns: string, labels: Record<string, string> | undefined, v: T): void {
    for (const [k, val] of Object.entries(labels ?? {})) {
      const key = `${ns}/${k}=${val}`;
      let set = this.#m.get(key);
      if (!set) this.#m.set(key, (set = new Set()));
      set.add(v);
    }
  }
  remove(ns: string, labels: Record<string, string> | undefined, v: T): void {
    for (const [k, val] of Object.entries(labels ?? {})) {
      const key = `${ns}/${k}=${val}`;
      const set = this.#m.get(key);
      set?.delete(v);
      if (set?.size === 0) this.#m.delete(key);
    }
  }
  get(ns: string, k: string, v: string): ReadonlySet<T> {
    return this.#m.get(`${ns}/${k}=${v}`) ?? EMPTY;
  }
}
const EMPTY: ReadonlySet<never> = new Set();

export class Registry {
  readonly #objects = new Map<string, Resource>();
  /** namespace -> workload name -> workload */
  readonly #workloads = new Map<string, Map<string, Workload>>();
  /** Workloads by each of their labels; selectors look up one pair, then check the rest. */
  readonly #workloadsByLabel = new PairIndex<Workload>();
  /** Services and policies by each pair of their selector. */
  readonly #selectorsByPair = new PairIndex<string>();
  /** Policies without a selector, by namespace (they select every workload there). */
  readonly #unselective = new Map<string, Set<string>>();
  readonly #items = new Map<string, ItemState>();
  #mesh: MeshConfigSpec = { ...MESH_CONFIG_DEFAULTS };
  readonly #nodeAddresses = new Map<string, string[]>();
  /** node -> workloads placed on it. */
  readonly #byNode = new Map<string, Set<Workload>>();
  /** (seq, key) of removed items, oldest first, at most REMOVALS_KEPT. */
  readonly #removed: { seq: number; key: string }[] = [];
  #removedHead = 0;
  #seq = 0;
  #trustBundle: string;

  constructor(trustBundlePem: string) {
    this.#trustBundle = trustBundlePem;
    this.#set(TRUST_BUNDLE_KEY, jsonItem(TRUST_BUNDLE_KEY, { kind: 'TrustBundle', pem: trustBundlePem }), null);
    this.#setMeshItem();
    this.setRevocationList([]);
  }

  get items(): ReadonlyMap<string, ItemState> {
    return this.#items;
  }

  /** The sequence number of the newest change. */
  get seq(): number {
    return this.#seq;
  }

  /**
   * Keys removed after `seq`, or undefined when removals that far back are no
   * longer remembered (the caller then sends a snapshot).
   */
  removedSince(seq: number): string[] | undefined {
    const log = this.#removed;
    // Full: the oldest kept is at the head, and older ones are forgotten.
    if (log.length === REMOVALS_KEPT && seq < log[this.#removedHead]!.seq) return undefined;
    const out: string[] = [];
    for (let i = 0; i < log.length; i++) {
      const e = log[(this.#removedHead + i) % log.length]!;
      if (e.seq > seq) out.push(e.key);
    }
    return out;
  }

  meshConfig(): Readonly<MeshConfigSpec> {
    return this.#mesh;
  }

  get(kind: string, namespace: string | undefined, name: string): Resource | undefined {
    return this.#objects.get(`${kind}/${namespace ?? ''}/${name}`);
  }

  /** Workloads placed on `node`. */
  workloadsOn(node: string): Workload[] {
    return [...(this.#byNode.get(node) ?? EMPTY)];
  }

  identityOf(w: Workload): string {
    return spiffeId(this.#mesh.trustDomain, w.metadata.namespace ?? 'default', w.spec.serviceAccount);
  }

  /** Loads the whole state (at start). */
  load(resources: Resource[], version: number): void {
    this.apply(resources.map((resource) => ({ type: 'ADDED' as const, version, resource })));
  }

  /** A node said where its proxy listens: its Node item (every node reads it for tunnels to that node's workloads). */
  setNodeAddresses(node: string, addresses: string[]): Set<string> {
    const old = this.#nodeAddresses.get(node) ?? [];
    if (old.length === addresses.length && old.every((a, i) => a === addresses[i])) return new Set();
    this.#nodeAddresses.set(node, [...addresses]);
    const key = NODE_KEY_PREFIX + node;
    return this.#set(key, { key, json: JSON.stringify({ kind: 'Node', metadata: { name: node }, addresses }) }, null) ? new Set([key]) : new Set();
  }

  setTrustBundle(pem: string): Set<string> {
    if (pem === this.#trustBundle) return new Set();
    this.#trustBundle = pem;
    this.#set(TRUST_BUNDLE_KEY, jsonItem(TRUST_BUNDLE_KEY, { kind: 'TrustBundle', pem }), null);
    return new Set([TRUST_BUNDLE_KEY]);
  }

  /** The serials every node must refuse (sorted by the caller); the changed key, if it changed. */
  setRevocationList(serials: string[]): Set<string> {
    return this.#set(REVOCATION_LIST_KEY, jsonItem(REVOCATION_LIST_KEY, { kind: 'RevocationList', serials }), null) ? new Set([REVOCATION_LIST_KEY]) : new Set();
  }

  /** Applies store changes; returns the keys of items whose content or scope changed. */
  apply(changes: Change[]): Set<string> {
    const dirty = new Set<string>();
    let everything = false;
    for (const c of changes) {
      const r = c.resource;
      const key = resourceKey(r);
      const old = this.#objects.get(key);
      if (old) this.#unindex(key, old);
      if (c.type === 'DELETED') this.#objects.delete(key);
      else {
        this.#objects.set(key, r);
        this.#index(key, r);
      }
      dirty.add(key);
      if (r.kind === 'Workload') {
        // Services and policies that selected it before or select it now.
        const ns = r.metadata.namespace ?? 'default';
        for (const labels of [old?.metadata.labels, c.type === 'DELETED' ? undefined : r.metadata.labels]) {
          for (const [k, v] of Object.entries(labels ?? {})) {
            for (const sk of this.#selectorsByPair.get(ns, k, v)) dirty.add(sk);
            for (const sk of this.#selectorsByPair.get(ROOT_NAMESPACE, k, v)) dirty.add(sk);
          }
        }
        for (const pk of this.#unselective.get(ns) ?? EMPTY) dirty.add(pk);
        for (const pk of this.#unselective.get(ROOT_NAMESPACE) ?? EMPTY) dirty.add(pk);
      } else if (r.kind === 'MeshConfig') {
        everything = true;
      }
    }
    if (everything) {
      this.#mesh = { ...MESH_CONFIG_DEFAULTS, ...((this.#objects.get('MeshConfig//default')?.spec as Partial<MeshConfigSpec>) ?? {}) };
      for (const k of this.#objects.keys()) dirty.add(k);
      for (const k of this.#items.keys()) dirty.add(k);
      dirty.add(MESH_CONFIG_KEY);
    }
    const changed = new Set<string>();
    for (const key of dirty) if (this.#refresh(key)) changed.add(key);
    return changed;
  }

  #selectorOf(r: Resource): Record<string, string> | undefined {
    if (r.kind === 'Service') return (r as Service).spec.selector;
    if (r.kind === 'AuthorizationPolicy' || r.kind === 'PeerAuthentication') return (r as AuthorizationPolicy).spec.selector?.matchLabels;
    return undefined;
  }

  #index(key: string, r: Resource): void {
    const ns = r.metadata.namespace ?? 'default';
    if (r.kind === 'Workload') {
      let byName = this.#workloads.get(ns);
      if (!byName) this.#workloads.set(ns, (byName = new Map()));
      byName.set(r.metadata.name, r as Workload);
      this.#workloadsByLabel.add(ns, r.metadata.labels, r as Workload);
      const node = (r as Workload).spec.node;
      let here = this.#byNode.get(node);
      if (!here) this.#byNode.set(node, (here = new Set()));
      here.add(r as Workload);
      return;
    }
    const sel = this.#selectorOf(r);
    if (sel && Object.keys(sel).length) this.#selectorsByPair.add(ns, sel, key);
    else if (r.kind === 'AuthorizationPolicy' || r.kind === 'PeerAuthentication') {
      let set = this.#unselective.get(ns);
      if (!set) this.#unselective.set(ns, (set = new Set()));
      set.add(key);
    }
  }

  #unindex(key: string, r: Resource): void {
    const ns = r.metadata.namespace ?? 'default';
    if (r.kind === 'Workload') {
      this.#workloads.get(ns)?.delete(r.metadata.name);
      this.#workloadsByLabel.remove(ns, r.metadata.labels, r as Workload);
      const node = (r as Workload).spec.node;
      const here = this.#byNode.get(node);
      here?.delete(r as Workload);
      if (here?.size === 0) this.#byNode.delete(node);
      return;
    }
    const sel = this.#selectorOf(r);
    if (sel && Object.keys(sel).length) this.#selectorsByPair.remove(ns, sel, key);
    else this.#unselective.get(ns)?.delete(key);
  }

  /** Workloads of `ns` (every namespace when null) that `selector` matches, through the label index. */
  *#selected(ns: string | null, selector: Record<string, string> | undefined): Iterable<Workload> {
    const first = Object.entries(selector ?? {})[0];
    if (!first) {
      const spaces = ns === null ? [...this.#workloads.values()] : [this.#workloads.get(ns)];
      for (const byName of spaces) yield* byName?.values() ?? [];
      return;
    }
    const spaces = ns === null ? [...this.#workloads.keys()] : [ns];
    for (const n of spaces) for (const w of this.#workloadsByLabel.get(n, first[0], first[1])) if (selects(selector, w.metadata.labels)) yield w;
  }

  /** Recomputes one item; true when its content or scope changed (or it went away). */
  #refresh(key: string): boolean {
    if (key === MESH_CONFIG_KEY) return this.#setMeshItem();
    if (key === TRUST_BUNDLE_KEY || key === REVOCATION_LIST_KEY || key.startsWith(NODE_KEY_PREFIX)) return false;
    const r = this.#objects.get(key);
    if (!r) return this.#remove(key);
    switch (r.kind) {
      case 'Workload': {
        // Every node: a pod's address must resolve to its identity and node
        // anywhere, so traffic to it takes the tunnel even without a Service.
        const w = r as Workload;
        return this.#set(key, { key, workload: { node: w.spec.node, serviceAccount: w.spec.serviceAccount, addresses: w.spec.addresses, labels: w.metadata.labels ?? {}, ready: w.spec.ready, netns: w.spec.netns ?? '', resourceVersion: w.metadata.resourceVersion ?? '' } }, null);
      }
      case 'Service': {
        const s = r as Service;
        const endpoints = this.endpointsOf(s).map((w) => w.metadata.name);
        return this.#set(key, { key, service: { json: JSON.stringify({ apiVersion: s.apiVersion, kind: s.kind, metadata: s.metadata, spec: s.spec }), endpoints } }, null);
      }
      case 'AuthorizationPolicy':
      case 'PeerAuthentication':
        // The destination's node decides (over the tunnel, or locally for
        // same-node traffic): only nodes running a selected workload need it.
        return this.#set(key, jsonItem(key, r), this.#policyScope(r as AuthorizationPolicy | PeerAuthentication));
      case 'HTTPRoute':
        return this.#set(key, jsonItem(key, r), null);
      default:
        return false;
    }
  }

  /** The workloads a service's selector matches in its namespace, by name. */
  endpointsOf(s: Service): Workload[] {
    const ns = s.metadata.namespace ?? 'default';
    return [...this.#selected(ns, s.spec.selector)].sort((a, b) => (a.metadata.name < b.metadata.name ? -1 : 1));
  }

  /** Nodes running a workload the policy selects (mesh-wide from the root namespace). */
  #policyScope(p: AuthorizationPolicy | PeerAuthentication): Set<string> {
    const ns = p.metadata.namespace ?? 'default';
    const nodes = new Set<string>();
    for (const w of this.#selected(ns === ROOT_NAMESPACE ? null : ns, p.spec.selector?.matchLabels)) nodes.add(w.spec.node);
    return nodes;
  }

  #setMeshItem(): boolean {
    return this.#set(MESH_CONFIG_KEY, jsonItem(MESH_CONFIG_KEY, { kind: 'MeshConfig', metadata: { name: 'default' }, spec: this.#mesh }), null);
  }

  #set(key: string, wire: Item, scope: Set<string> | null): boolean {
    const old = this.#items.get(key);
    const encoded = encodeItem(wire);
    if (old && old.encoded.equals(encoded) && sameScope(old.scope, scope)) return false;
    this.#items.set(key, { key, wire, encoded, bytes: framedLength(encoded), version: ++this.#seq, scope });
    return true;
  }

  #remove(key: string): boolean {
    if (!this.#items.delete(key)) return false;
    const e = { seq: ++this.#seq, key };
    if (this.#removed.length < REMOVALS_KEPT) this.#removed.push(e);
    else {
      this.#removed[this.#removedHead] = e;
      this.#removedHead = (this.#removedHead + 1) % REMOVALS_KEPT;
    }
    return true;
  }
}

function jsonItem(key: string, v: unknown): Item {
  return { key, json: JSON.stringify(v) };
}

function sameScope(a: ReadonlySet<string> | null, b: ReadonlySet<string> | null): boolean {
  if (a === null || b === null) return a === b;
  if (a.size !== b.size) return false;
  for (const x of a) if (!b.has(x)) return false;
  return true;
}

/** Whether `node` should hold `item`. */
export function wants(item: ItemState, node: string): boolean {
  return item.scope === null || item.scope.has(node);
}
