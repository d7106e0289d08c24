/**
 * Lookups the proxy does per connection, kept from ConfigState: VIP and port -> Service and its endpoints (the WorkloadViews
 * themselves, not copies); address -> workload (every workload of the mesh);
 * node -> where its proxy takes tunnels; the mesh config; the authorization
 * policies.
 */
import * as net from 'node:net';

import {
  MESH_CONFIG_DEFAULTS,
  ROOT_NAMESPACE,
  type AuthorizationPolicy,
  type HTTPRoute,
  type LoadBalancerPolicy,
  type PeerAuthentication,
  type MeshConfigSpec,
  type ServicePort,
  type ServiceSpec,
  type WorkloadSpec,
} from '../../api/kinds';
import { normalizeSerial, workloadIdentity as spiffeId } from '../../api/identity';
import { labelSelectorMatches } from '../../api/selectors';
import type { ConfigState } from './config-state';

/** A Service's endpoint: one of the mesh's workloads (the same object as its WorkloadView). */
export interface EndpointView {
  /** The workload's name. */
  workload: string;
  namespace: string;
  labels: Record<string, string>;
  node: string;
  nodeAddresses?: readonly string[];
  addresses: string[];
  identity: string;
  ready: boolean;
}

export interface ServiceView {
  key: string;
  name: string;
  namespace: string;
  addresses: string[];
  ports: ServicePort[];
  lbPolicy: LoadBalancerPolicy;
  endpoints: EndpointView[];
  /** Keys of the workloads the controller named as its endpoints (some may not have arrived). */
  endpointNames: readonly string[];
  /** Changes whenever the service or its endpoints (their readiness too) change: the balancer keeps its state while it is unchanged. */
  version: string;
}

export interface WorkloadView extends EndpointView {
  key: string;
  name: string;
  serviceAccount: string;
  netns?: string;
  /** This node runs it. */
  local: boolean;
  /** Where its node's proxy takes tunnels (remote workloads). */
  nodeAddresses: readonly string[];
}

/** Maps ::ffff:1.2.3.4 to 1.2.3.4 so both forms find the same entry. */
export function normalizeIp(ip: string): string {
  return ip.startsWith('::ffff:') && net.isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}

/** A Service as ConfigState keeps it: the resource and its endpoints by workload name. */
interface ServiceItem {
  metadata: { name: string; namespace?: string; resourceVersion?: string };
  spec: ServiceSpec;
  endpoints?: string[];
}
interface WorkloadItem {
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec: WorkloadSpec;
}
const NO_ADDRESSES: readonly string[] = Object.freeze([]);
const NO_ROUTES: readonly HTTPRoute[] = Object.freeze([]);

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

function setOrDelete<V>(m: Map<string, V>, key: string, v: V | undefined): void {
  if (v === undefined) m.delete(key);
  else m.set(key, v);
}

/**
 * Built once from the whole state, then kept up to date in place from the
 * keys each version changed: a readiness change among 50,000 workloads costs
 * one workload and the services naming it, not a rebuild of everything. It
 * is updated in the same tick as the state is committed, so a connection
 * never sees half of a version.
 */
export class MeshView {
  #version = 0;
  readonly node: string;
  #mesh: MeshConfigSpec = { ...MESH_CONFIG_DEFAULTS };
  readonly #services = new Map<string, ServiceView>();
  /** Every workload of the mesh (`local` marks this node's). */
  readonly #workloads = new Map<string, WorkloadView>();
  readonly #local = new Map<string, WorkloadView>();
  #localList: WorkloadView[] | undefined;
  readonly #policies = new Map<string, AuthorizationPolicy>();
  #policyList: AuthorizationPolicy[] | undefined;
  readonly #peerAuths = new Map<string, PeerAuthentication>();
  readonly #routes = new Map<string, HTTPRoute>();
  /** Service key -> the HTTPRoutes naming it as a parent, in key order; rebuilt when a route changes. */
  #routesByService: Map<string, HTTPRoute[]> | undefined;
  #peerAuthList: PeerAuthentication[] | undefined;
  #trustBundle = '';
  #revoked: ReadonlySet<string> = new Set();
  /** node -> where its proxy takes tunnels. */
  readonly #nodes = new Map<string, readonly string[]>();
  /** node -> its workloads (their nodeAddresses follow the node's). */
  readonly #onNode = new Map<string, Set<WorkloadView>>();
  /**
   * Workload key -> the service naming it as an endpoint (whether or not it
   * exists yet), or the set of them when there are several (most workloads
   * are in one service: no Set for each).
   */
  readonly #servicesOf = new Map<string, string | Set<string>>();
  readonly #byVip = new Map<string, { service: ServiceView; port: ServicePort }>();
  readonly #byAddress = new Map<string, WorkloadView>();
  /** Bumped into a ServiceView's `version` whenever its endpoints change. */
  #serial = 0;

  private constructor(node: string) {
    this.node = node;
  }

  static build(state: ConfigState, node: string): MeshView {
    const view = new MeshView(node);
    view.update(state, state.items.keys());
    return view;
  }

  get version(): number {
    return this.#version;
  }

  get mesh(): Readonly<MeshConfigSpec> {
    return this.#mesh;
  }

  get services(): ReadonlyMap<string, ServiceView> {
    return this.#services;
  }

  /** Every workload of the mesh, by key. */
  get workloads(): ReadonlyMap<string, WorkloadView> {
    return this.#workloads;
  }

  /** The workloads this node runs. */
  get localWorkloads(): readonly WorkloadView[] {
    return (this.#localList ??= [...this.#local.values()]);
  }

  get policies(): readonly AuthorizationPolicy[] {
    return (this.#policyList ??= [...this.#policies.values()]);
  }

  get peerAuthentications(): readonly PeerAuthentication[] {
    return (this.#peerAuthList ??= [...this.#peerAuths.values()]);
  }

  /** The CA certificates (PEM) peers' certificates must chain to. */
  get trustBundle(): string {
    return this.#trustBundle;
  }

  /** Serials (normalized) of revoked certificates: tunnels refuse a peer presenting one. */
  get revokedSerials(): ReadonlySet<string> {
    return this.#revoked;
  }

  /** Takes the keys a version changed (added, updated or removed) from `state`. */
  update(state: ConfigState, changed: Iterable<string>): this {
    this.#version = state.version;
    const workloads: [string, unknown][] = [];
    const services: [string, unknown][] = [];
    const nodes: [string, unknown][] = [];
    for (const key of changed) {
      const kind = key.slice(0, key.indexOf('/'));
      const raw = state.get(key);
      switch (kind) {
        case 'Workload':
          workloads.push([key, raw]);
          break;
        case 'Service':
          services.push([key, raw]);
          break;
        case 'Node':
          nodes.push([key, raw]);
          break;
        case 'TrustBundle':
          this.#trustBundle = raw ? (raw as { pem: string }).pem : '';
          break;
        case 'RevocationList': {
          const serials = (raw as { serials?: unknown } | undefined)?.serials;
          this.#revoked = new Set(Array.isArray(serials) ? serials.filter((x): x is string => typeof x === 'string').map(normalizeSerial) : []);
          break;
        }
        case 'MeshConfig': {
          const before = this.#mesh.trustDomain;
          this.#mesh = { ...MESH_CONFIG_DEFAULTS, ...((raw as { spec?: Partial<MeshConfigSpec> } | undefined)?.spec ?? {}) };
          // Identities are derived from the trust domain: every workload changes.
          if (this.#mesh.trustDomain !== before) for (const k of this.#workloads.keys()) workloads.push([k, state.get(k)]);
          break;
        }
        case 'AuthorizationPolicy':
          setOrDelete(this.#policies, key, raw as AuthorizationPolicy | undefined);
          this.#policyList = undefined;
          break;
        case 'PeerAuthentication':
          setOrDelete(this.#peerAuths, key, raw as PeerAuthentication | undefined);
          this.#peerAuthList = undefined;
          break;
        case 'HTTPRoute':
          setOrDelete(this.#routes, key, raw as HTTPRoute | undefined);
          this.#routesByService = undefined;
          break;
        default:
          break;
      }
    }
    // Nodes first: workloads read their node's addresses.
    for (const [key, raw] of nodes) this.#updateNode(key, raw as { addresses?: unknown } | undefined);
    const touched = new Set<string>();
    for (const [key, raw] of workloads) this.#updateWorkload(key, raw as WorkloadItem | undefined, touched);
    for (const [key, raw] of services) {
      this.#updateService(key, raw as ServiceItem | undefined);
      touched.delete(key);
    }
    // Services whose endpoints changed while the service itself did not.
    for (const key of touched) {
      const s = this.#services.get(key);
      if (s) this.#resolveEndpoints(s, (state.get(key) as ServiceItem | undefined)?.endpoints ?? []);
    }
    return this;
  }

  #updateNode(key: string, raw: { addresses?: unknown } | undefined): void {
    const node = key.slice(key.lastIndexOf('/') + 1);
    const addresses = Array.isArray(raw?.addresses) ? (raw.addresses as unknown[]).filter((a): a is string => typeof a === 'string') : NO_ADDRESSES;
    if (raw) this.#nodes.set(node, addresses);
    else this.#nodes.delete(node);
    for (const w of this.#onNode.get(node) ?? []) (w as Mutable<WorkloadView>).nodeAddresses = addresses;
  }

  /** `touched` gathers services naming a workload that came or went (their endpoint lists change). */
  #updateWorkload(key: string, w: WorkloadItem | undefined, touched: Set<string>): void {
    const old = this.#workloads.get(key);
    if (old) {
      for (const a of old.addresses) if (this.#byAddress.get(normalizeIp(a)) === old) this.#byAddress.delete(normalizeIp(a));
      this.#onNode.get(old.node)?.delete(old);
      if (old.local) {
        this.#local.delete(key);
        this.#localList = undefined;
      }
    }
    const of = this.#servicesOf.get(key);
    if (typeof of === 'string') touched.add(of);
    else if (of) for (const s of of) touched.add(s);
    if (!w) {
      this.#workloads.delete(key);
      return;
    }
    const namespace = w.metadata.namespace || 'default';
    const fields: WorkloadView = {
      key,
      name: w.metadata.name,
      workload: w.metadata.name,
      namespace,
      labels: w.metadata.labels ?? {},
      node: w.spec.node,
      addresses: w.spec.addresses,
      identity: spiffeId(this.#mesh.trustDomain, namespace, w.spec.serviceAccount),
      serviceAccount: w.spec.serviceAccount,
      netns: w.spec.netns,
      ready: w.spec.ready,
      local: w.spec.node === this.node,
      nodeAddresses: this.#nodes.get(w.spec.node) ?? NO_ADDRESSES,
    };
    // The same object, updated: endpoint lists and connections holding it see the change.
    const view = old ? Object.assign(old as Mutable<WorkloadView>, fields) : fields;
    this.#workloads.set(key, view);
    let here = this.#onNode.get(view.node);
    if (!here) this.#onNode.set(view.node, (here = new Set()));
    here.add(view);
    if (view.local) {
      this.#local.set(key, view);
      this.#localList = undefined;
    }
    for (const a of view.addresses) this.#byAddress.set(normalizeIp(a), view);
  }

  #updateService(key: string, s: ServiceItem | undefined): void {
    const old = this.#services.get(key);
    if (old) {
      for (const vip of old.addresses) for (const p of old.ports) this.#byVip.delete(`${normalizeIp(vip)}|${p.port}`);
      for (const w of old.endpointNames) this.#unname(w, key);
      this.#services.delete(key);
    }
    if (!s) return;
    const namespace = s.metadata.namespace || 'default';
    const view: ServiceView = {
      key,
      name: s.metadata.name,
      namespace,
      addresses: s.spec.addresses,
      ports: s.spec.ports,
      lbPolicy: s.spec.loadBalancer?.policy ?? 'P2C_EWMA',
      endpoints: [],
      endpointNames: [],
      version: '',
    };
    this.#services.set(key, view);
    this.#resolveEndpoints(view, s.endpoints ?? []);
    for (const vip of view.addresses) for (const p of view.ports) this.#byVip.set(`${normalizeIp(vip)}|${p.port}`, { service: view, port: p });
  }

  #resolveEndpoints(view: ServiceView, names: readonly string[]): void {
    for (const k of view.endpointNames) this.#unname(k, view.key);
    const prefix = `Workload/${view.namespace}/`;
    const keys: string[] = [];
    const endpoints: EndpointView[] = [];
    for (const n of names) {
      const k = prefix + n;
      keys.push(k);
      this.#name(k, view.key);
      const w = this.#workloads.get(k);
      if (w) endpoints.push(w);
    }
    view.endpoints = endpoints;
    view.endpointNames = keys;
    // A new version for the balancer: its endpoints or their readiness changed.
    view.version = `${++this.#serial}`;
  }

  #name(workload: string, service: string): void {
    const of = this.#servicesOf.get(workload);
    if (of === undefined) this.#servicesOf.set(workload, service);
    else if (typeof of === 'string') {
      if (of !== service) this.#servicesOf.set(workload, new Set([of, service]));
    } else of.add(service);
  }

  #unname(workload: string, service: string): void {
    const of = this.#servicesOf.get(workload);
    if (of === service) this.#servicesOf.delete(workload);
    else if (typeof of === 'object') {
      of.delete(service);
      if (of.size === 1) this.#servicesOf.set(workload, of.values().next().value!);
    }
  }

  /** The HTTPRoutes attached to a Service (parentRefs naming it; a parentRef without a namespace means the route's own). */
  routesFor(serviceKey: string): readonly HTTPRoute[] {
    if (!this.#routesByService) {
      const by = new Map<string, HTTPRoute[]>();
      for (const key of [...this.#routes.keys()].sort()) {
        const r = this.#routes.get(key)!;
        const ns = r.metadata.namespace || 'default';
        const parents = new Set((r.spec.parentRefs ?? []).filter((p) => (p.kind ?? 'Service') === 'Service').map((p) => `Service/${p.namespace ?? ns}/${p.name}`));
        for (const svc of parents) {
          let list = by.get(svc);
          if (!list) by.set(svc, (list = []));
          list.push(r);
        }
      }
      this.#routesByService = by;
    }
    return this.#routesByService.get(serviceKey) ?? NO_ROUTES;
  }

  /** Where `node`'s proxy takes tunnels (this node's own addresses for `this.node`). */
  nodeAddresses(node: string): readonly string[] {
    return this.#nodes.get(node) ?? NO_ADDRESSES;
  }

  /**
   * The mTLS mode of a workload, as Istio decides it: a PeerAuthentication
   * selecting it in its namespace, else one for its whole namespace, else one
   * in the root namespace, else the mesh default.
   */
  mtlsMode(w: { namespace: string; labels: Record<string, string> }): 'STRICT' | 'PERMISSIVE' {
    const selects = (sel: Record<string, string>): boolean => labelSelectorMatches(sel, w.labels);
    const inNs = this.peerAuthentications.filter((p) => (p.metadata.namespace ?? 'default') === w.namespace);
    const pick =
      inNs.find((p) => p.spec.selector && selects(p.spec.selector.matchLabels)) ??
      inNs.find((p) => !p.spec.selector) ??
      this.peerAuthentications.find((p) => p.metadata.namespace === ROOT_NAMESPACE && !p.spec.selector);
    return pick?.spec.mtls.mode ?? this.mesh.defaultMtlsMode;
  }

  /**
   * Whether MeshConfig failOpen names this workload: its connects go around
   * the proxy while none is ready on its node (docs/architecture.md, 'Fail
   * closed, and the watchdog'). Everything else fails closed.
   */
  failOpen(w: { namespace: string; labels: Record<string, string> }): boolean {
    return (this.mesh.failOpen ?? []).some((e) => e.namespace === w.namespace && (!e.selector || labelSelectorMatches(e.selector.matchLabels, w.labels)));
  }

  /** The Service answering on ip:port. */
  serviceAt(ip: string, port: number): { service: ServiceView; port: ServicePort } | undefined {
    return this.#byVip.get(`${normalizeIp(ip)}|${port}`);
  }

  /** The mesh workload with this address. */
  workloadAt(ip: string): WorkloadView | undefined {
    return this.#byAddress.get(normalizeIp(ip));
  }
}
