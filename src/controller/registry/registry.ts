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

export interface ItemState {
  key: string;
  json: string;
  /** Store version at which content or scope last changed. */
  version: number;
  /** null: every node; else the nodes that need it. */
  scope: ReadonlySet<string> | null;
}

export interface Endpoint {
  workload: string;
  namespace: string;
  node: string;
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

export class Registry {
  readonly #objects = new Map<string, Resource>();
  /** namespace -> workload name -> workload */
  readonly #workloads = new Map<string, Map<string, Workload>>();
  readonly #items = new Map<string, ItemState>();
  #mesh: MeshConfigSpec = { ...MESH_CONFIG_DEFAULTS };
  #trustBundle: string;

  constructor(trustBundlePem: string) {
    this.#trustBundle = trustBundlePem;
    this.#set(TRUST_BUNDLE_KEY, JSON.stringify({ kind: 'TrustBundle', pem: trustBundlePem }), null, 0);
    this.#setMeshItem(0);
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
    this.apply(
      resources.map((resource) => ({ type: 'ADDED' as const, version, resource })),
      version,
    );
  }

  setTrustBundle(pem: string, version: number): Set<string> {
    if (pem === this.#trustBundle) return new Set();
    this.#trustBundle = pem;
    this.#set(TRUST_BUNDLE_KEY, JSON.stringify({ kind: 'TrustBundle', pem }), null, version);
    return new Set([TRUST_BUNDLE_KEY]);
  }

  /** Applies store changes; returns the keys of items whose content or scope changed. */
  apply(changes: Change[], version: number): Set<string> {
    const dirty = new Set<string>();
    let everything = false;
    for (const c of changes) {
      const r = c.resource;
      const key = resourceKey(r);
      const old = this.#objects.get(key);
      if (c.type === 'DELETED') this.#objects.delete(key);
      else this.#objects.set(key, r);
      dirty.add(key);
      switch (r.kind) {
        case 'Workload': {
          const ns = r.metadata.namespace ?? 'default';
          let byName = this.#workloads.get(ns);
          if (!byName) this.#workloads.set(ns, (byName = new Map()));
          if (c.type === 'DELETED') byName.delete(r.metadata.name);
          else byName.set(r.metadata.name, r as Workload);
          // Services whose selector matched before or matches now, and policies whose scope may move.
          for (const o of this.#objects.values()) {
            if (o.metadata.namespace !== ns && !(o.metadata.namespace === ROOT_NAMESPACE && o.kind !== 'Service')) continue;
            if (o.kind === 'Service') {
              const sel = (o as Service).spec.selector;
              if (selects(sel, old?.metadata.labels) || selects(sel, r.metadata.labels)) dirty.add(resourceKey(o));
            } else if (o.kind === 'AuthorizationPolicy' || o.kind === 'PeerAuthentication') {
              dirty.add(resourceKey(o));
            }
          }
          break;
        }
        case 'MeshConfig':
          everything = true;
          break;
        default:
          break;
      }
    }
    if (everything) {
      this.#mesh = { ...MESH_CONFIG_DEFAULTS, ...((this.#objects.get('MeshConfig//default')?.spec as Partial<MeshConfigSpec>) ?? {}) };
      for (const k of this.#objects.keys()) dirty.add(k);
      for (const k of this.#items.keys()) dirty.add(k);
      dirty.add(MESH_CONFIG_KEY);
    }
    const changed = new Set<string>();
    for (const key of dirty) if (this.#refresh(key, version)) changed.add(key);
    return changed;
  }

  /** Recomputes one item; true when its content or scope changed (or it went away). */
  #refresh(key: string, version: number): boolean {
    if (key === MESH_CONFIG_KEY) return this.#setMeshItem(version);
    if (key === TRUST_BUNDLE_KEY) return false;
    const r = this.#objects.get(key);
    if (!r) return this.#items.delete(key);
    switch (r.kind) {
      case 'Workload': {
        const w = r as Workload;
        return this.#set(key, JSON.stringify({ ...w, status: { identity: this.identityOf(w) } }), new Set([w.spec.node]), version);
      }
      case 'Service': {
        const s = r as Service;
        return this.#set(key, JSON.stringify({ ...s, status: { endpoints: this.endpointsOf(s) } }), null, version);
      }
      case 'AuthorizationPolicy':
      case 'PeerAuthentication':
        return this.#set(key, JSON.stringify(r), this.#policyScope(r as AuthorizationPolicy | PeerAuthentication), version);
      case 'HTTPRoute':
        return this.#set(key, JSON.stringify(r), null, version);
      default:
        return false;
    }
  }

  endpointsOf(s: Service): Endpoint[] {
    const ns = s.metadata.namespace ?? 'default';
    const out: Endpoint[] = [];
    for (const w of this.#workloads.get(ns)?.values() ?? []) {
      if (!selects(s.spec.selector, w.metadata.labels)) continue;
      out.push({
        workload: w.metadata.name,
        namespace: ns,
        node: w.spec.node,
        addresses: w.spec.addresses,
        identity: this.identityOf(w),
        ready: w.spec.ready,
      });
    }
    return out.sort((a, b) => (a.workload < b.workload ? -1 : 1));
  }

  /** Nodes running a workload the policy selects. */
  #policyScope(p: AuthorizationPolicy | PeerAuthentication): Set<string> {
    const ns = p.metadata.namespace ?? 'default';
    const sel = p.spec.selector?.matchLabels;
    const nodes = new Set<string>();
    const scan = (byName: Map<string, Workload> | undefined): void => {
      for (const w of byName?.values() ?? []) if (selects(sel, w.metadata.labels)) nodes.add(w.spec.node);
    };
    if (ns === ROOT_NAMESPACE) for (const byName of this.#workloads.values()) scan(byName);
    else scan(this.#workloads.get(ns));
    return nodes;
  }

  #setMeshItem(version: number): boolean {
    return this.#set(MESH_CONFIG_KEY, JSON.stringify({ kind: 'MeshConfig', metadata: { name: 'default' }, spec: this.#mesh }), null, version);
  }

  #set(key: string, json: string, scope: Set<string> | null, version: number): boolean {
    const old = this.#items.get(key);
    if (old && old.json === json && sameScope(old.scope, scope)) return false;
    this.#items.set(key, { key, json, version, scope });
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
