/**
 * Derived state of the mesh, kept in memory from the store: a Service's
 * endpoints (the Workloads its selector matches in its namespace), each
 * Workload's SPIFFE identity, the effective MeshConfig, and which nodes need
 * which policy. Everything a node may receive is an Item; the registry knows
 * each item's content, the store version it last changed at, and its scope
 * (every node, or a set of nodes).
 *
 * Pure: no I/O. `apply(changes)` returns the keys of items that changed in
 * content or scope, so the push side diffs only those.
 */
import type { Change } from '../store';
import {
  MESH_CONFIG_DEFAULTS,
  resourceKey,
  type AuthorizationPolicy,
  type MeshConfigSpec,
  type PeerAuthentication,
  type Resource,
  type Service,
  type Workload,
} from '../../api/kinds';

/** Policies here without a selector apply to the whole mesh (Istio's root namespace). */
export const ROOT_NAMESPACE = 'nodemesh-system';
export const TRUST_BUNDLE_KEY = 'TrustBundle//bundle';
export const MESH_CONFIG_KEY = 'MeshConfig//default';
/** Serials (normalized hex) of revoked certificates still in their validity: every node's tunnels refuse them. */
export const REVOCATION_LIST_KEY = 'RevocationList//revoked';

export interface ItemState {
  key: string;
  json: string;
  /**
   * Bumped (from a counter of the registry's own) whenever content or scope
   * changes, also for changes that are no store write (a node's addresses).
   */
  version: number;
  /** null: every node; else the nodes that need it. */
  scope: ReadonlySet<string> | null;
}

export interface Endpoint {
  workload: string;
  namespace: string;
  /** The workload's labels: which policies select it. */
  labels: Record<string, string>;
  node: string;
  /** Where that node's proxy takes tunnels (empty until the node has said hello). */
  nodeAddresses: string[];
  addresses: string[];
  identity: string;
  ready: boolean;
}

function selects(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined): boolean {
  if (!selector) return true;
  for (const [k, v] of Object.entries(selector)) if (labels?.[k] !== v) return false;
  return true;
}

export function spiffeId(trustDomain: string, namespace: string, serviceAccount: string): string {
  return `spiffe://${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
}

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
  #seq = 0;
  #trustBundle: string;

  constructor(trustBundlePem: string) {
    this.#trustBundle = trustBundlePem;
    this.#set(TRUST_BUNDLE_KEY, JSON.stringify({ kind: 'TrustBundle', pem: trustBundlePem }), null);
    this.#setMeshItem();
    this.setRevocationList([]);
  }

  get items(): ReadonlyMap<string, ItemState> {
    return this.#items;
  }

  meshConfig(): Readonly<MeshConfigSpec> {
    return this.#mesh;
  }

  get(kind: string, namespace: string | undefined, name: string): Resource | undefined {
    return this.#objects.get(`${kind}/${namespace ?? ''}/${name}`);
  }

  /** Workloads placed on `node`. */
  workloadsOn(node: string): Workload[] {
    const out: Workload[] = [];
    for (const byName of this.#workloads.values()) for (const w of byName.values()) if (w.spec.node === node) out.push(w);
    return out;
  }

  identityOf(w: Workload): string {
    return spiffeId(this.#mesh.trustDomain, w.metadata.namespace ?? 'default', w.spec.serviceAccount);
  }

  /** Loads the whole state (at start). */
  load(resources: Resource[], version: number): void {
    this.apply(resources.map((resource) => ({ type: 'ADDED' as const, version, resource })));
  }

  /**
   * A node said where its proxy listens. Its workloads and the services with
   * endpoints on it change (they carry it); returns their keys.
   */
  setNodeAddresses(node: string, addresses: string[]): Set<string> {
    const old = this.#nodeAddresses.get(node) ?? [];
    if (old.length === addresses.length && old.every((a, i) => a === addresses[i])) return new Set();
    this.#nodeAddresses.set(node, [...addresses]);
    const changed = new Set<string>();
    for (const [key, r] of this.#objects) {
      const touches = r.kind === 'Service' ? this.endpointsOf(r as Service).some((e) => e.node === node) : r.kind === 'Workload' && (r as Workload).spec.node === node;
      if (touches && this.#refresh(key)) changed.add(key);
    }
    return changed;
  }

  setTrustBundle(pem: string): Set<string> {
    if (pem === this.#trustBundle) return new Set();
    this.#trustBundle = pem;
    this.#set(TRUST_BUNDLE_KEY, JSON.stringify({ kind: 'TrustBundle', pem }), null);
    return new Set([TRUST_BUNDLE_KEY]);
  }

  /** The serials every node must refuse (sorted by the caller); the changed key, if it changed. */
  setRevocationList(serials: string[]): Set<string> {
    return this.#set(REVOCATION_LIST_KEY, JSON.stringify({ kind: 'RevocationList', serials }), null) ? new Set([REVOCATION_LIST_KEY]) : new Set();
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
    if (key === TRUST_BUNDLE_KEY || key === REVOCATION_LIST_KEY) return false;
    const r = this.#objects.get(key);
    if (!r) return this.#items.delete(key);
    switch (r.kind) {
      case 'Workload': {
        // Every node: a pod's address must resolve to its identity and node
        // anywhere, so traffic to it takes the tunnel even without a Service.
        const w = r as Workload;
        return this.#set(key, JSON.stringify({ ...w, status: { identity: this.identityOf(w), nodeAddresses: this.#nodeAddresses.get(w.spec.node) ?? [] } }), null);
      }
      case 'Service': {
        const s = r as Service;
        return this.#set(key, JSON.stringify({ ...s, status: { endpoints: this.endpointsOf(s) } }), null);
      }
      case 'AuthorizationPolicy':
      case 'PeerAuthentication':
        // The destination's node decides (over the tunnel, or locally for
        // same-node traffic): only nodes running a selected workload need it.
        return this.#set(key, JSON.stringify(r), this.#policyScope(r as AuthorizationPolicy | PeerAuthentication));
      case 'HTTPRoute':
        return this.#set(key, JSON.stringify(r), null);
      default:
        return false;
    }
  }

  endpointsOf(s: Service): Endpoint[] {
    const ns = s.metadata.namespace ?? 'default';
    const out: Endpoint[] = [];
    for (const w of this.#selected(ns, s.spec.selector)) {
      out.push({
        workload: w.metadata.name,
        namespace: ns,
        labels: w.metadata.labels ?? {},
        node: w.spec.node,
        nodeAddresses: this.#nodeAddresses.get(w.spec.node) ?? [],
        addresses: w.spec.addresses,
        identity: this.identityOf(w),
        ready: w.spec.ready,
      });
    }
    return out.sort((a, b) => (a.workload < b.workload ? -1 : 1));
  }

  /** Nodes running a workload the policy selects (mesh-wide from the root namespace). */
  #policyScope(p: AuthorizationPolicy | PeerAuthentication): Set<string> {
    const ns = p.metadata.namespace ?? 'default';
    const nodes = new Set<string>();
    for (const w of this.#selected(ns === ROOT_NAMESPACE ? null : ns, p.spec.selector?.matchLabels)) nodes.add(w.spec.node);
    return nodes;
  }

  #setMeshItem(): boolean {
    return this.#set(MESH_CONFIG_KEY, JSON.stringify({ kind: 'MeshConfig', metadata: { name: 'default' }, spec: this.#mesh }), null);
  }

  #set(key: string, json: string, scope: Set<string> | null): boolean {
    const old = this.#items.get(key);
    if (old && old.json === json && sameScope(old.scope, scope)) return false;
    this.#items.set(key, { key, json, version: ++this.#seq, scope });
    return true;
  }
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
