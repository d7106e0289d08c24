/**
 * Lookups the proxy does per connection, built once per config version from
 * ConfigState: VIP and port -> Service and its endpoints (the WorkloadViews
 * themselves, not copies); address -> workload (every workload of the mesh);
 * node -> where its proxy takes tunnels; the mesh config; the authorization
 * policies.
 */
import * as net from 'node:net';

import {
  MESH_CONFIG_DEFAULTS,
  type AuthorizationPolicy,
  type LoadBalancerPolicy,
  type PeerAuthentication,
  type MeshConfigSpec,
  type ServicePort,
  type ServiceSpec,
  type WorkloadSpec,
} from '../../api/kinds';
import { normalizeSerial } from '../../controller/ca';
import { spiffeId } from '../../controller/registry';
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
  /** The resource's resourceVersion: the balancer keeps its state while it is unchanged. */
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

export class MeshView {
  readonly version: number;
  readonly node: string;
  readonly mesh: Readonly<MeshConfigSpec>;
  readonly services: ReadonlyMap<string, ServiceView>;
  /** Every workload of the mesh (`local` marks this node's). */
  readonly workloads: readonly WorkloadView[];
  /** The workloads this node runs. */
  readonly localWorkloads: readonly WorkloadView[];
  readonly policies: readonly AuthorizationPolicy[];
  /** The CA certificates (PEM) peers' certificates must chain to. */
  readonly trustBundle: string;
  readonly peerAuthentications: readonly PeerAuthentication[];
  /** Serials (normalized) of revoked certificates: tunnels refuse a peer presenting one. */
  readonly revokedSerials: ReadonlySet<string>;
  /** node -> where its proxy takes tunnels. */
  readonly #nodes: ReadonlyMap<string, readonly string[]>;
  readonly #byVip = new Map<string, { service: ServiceView; port: ServicePort }>();
  readonly #byAddress = new Map<string, WorkloadView>();

  private constructor(
    version: number,
    node: string,
    mesh: MeshConfigSpec,
    services: Map<string, ServiceView>,
    workloads: WorkloadView[],
    policies: AuthorizationPolicy[],
    trustBundle: string,
    peerAuthentications: PeerAuthentication[],
    revokedSerials: ReadonlySet<string>,
    nodes: ReadonlyMap<string, readonly string[]>,
  ) {
    this.version = version;
    this.revokedSerials = revokedSerials;
    this.trustBundle = trustBundle;
    this.peerAuthentications = peerAuthentications;
    this.node = node;
    this.mesh = mesh;
    this.services = services;
    this.workloads = workloads;
    this.localWorkloads = workloads.filter((w) => w.local);
    this.policies = policies;
    this.#nodes = nodes;
  }

  static build(state: ConfigState, node: string): MeshView {
    let mesh: MeshConfigSpec = { ...MESH_CONFIG_DEFAULTS };
    const nodes = new Map<string, readonly string[]>();
    const policies: AuthorizationPolicy[] = [];
    let trustBundle = '';
    const peerAuths: PeerAuthentication[] = [];
    let revoked: ReadonlySet<string> = new Set();
    const serviceItems: [string, ServiceItem][] = [];
    const workloadItems: [string, WorkloadItem][] = [];
    for (const [key, raw] of state.items) {
      const kind = key.slice(0, key.indexOf('/'));
      if (kind === 'Workload') workloadItems.push([key, raw as WorkloadItem]);
      else if (kind === 'Service') serviceItems.push([key, raw as ServiceItem]);
      else if (kind === 'Node') {
        const addresses = (raw as { addresses?: unknown }).addresses;
        nodes.set(key.slice(key.lastIndexOf('/') + 1), Array.isArray(addresses) ? addresses.filter((a): a is string => typeof a === 'string') : NO_ADDRESSES);
      } else if (kind === 'TrustBundle') trustBundle = (raw as { pem: string }).pem;
      else if (kind === 'RevocationList') {
        const serials = (raw as { serials?: unknown }).serials;
        revoked = new Set(Array.isArray(serials) ? serials.filter((x): x is string => typeof x === 'string').map(normalizeSerial) : []);
      } else if (kind === 'PeerAuthentication') peerAuths.push(raw as PeerAuthentication);
      else if (kind === 'MeshConfig') mesh = { ...mesh, ...(raw as { spec: Partial<MeshConfigSpec> }).spec };
      else if (kind === 'AuthorizationPolicy') policies.push(raw as AuthorizationPolicy);
    }
    // Identities are derived as the CA derives them, from the mesh's trust domain.
    const workloads: WorkloadView[] = [];
    const byKey = new Map<string, WorkloadView>();
    for (const [key, w] of workloadItems) {
      const namespace = w.metadata.namespace || 'default';
      const view: WorkloadView = {
        key,
        name: w.metadata.name,
        workload: w.metadata.name,
        namespace,
        labels: w.metadata.labels ?? {},
        node: w.spec.node,
        addresses: w.spec.addresses,
        identity: spiffeId(mesh.trustDomain, namespace, w.spec.serviceAccount),
        serviceAccount: w.spec.serviceAccount,
        netns: w.spec.netns,
        ready: w.spec.ready,
        local: w.spec.node === node,
        nodeAddresses: nodes.get(w.spec.node) ?? NO_ADDRESSES,
      };
      workloads.push(view);
      byKey.set(key, view);
    }
    const services = new Map<string, ServiceView>();
    for (const [key, s] of serviceItems) {
      const namespace = s.metadata.namespace || 'default';
      const endpoints: EndpointView[] = [];
      for (const name of s.endpoints ?? []) {
        const w = byKey.get(`Workload/${namespace}/${name}`);
        if (w) endpoints.push(w);
      }
      services.set(key, {
        key,
        name: s.metadata.name,
        namespace,
        addresses: s.spec.addresses,
        ports: s.spec.ports,
        lbPolicy: s.spec.loadBalancer?.policy ?? 'P2C_EWMA',
        endpoints,
        version: s.metadata.resourceVersion ?? '',
      });
    }
    const view = new MeshView(state.version, node, mesh, services, workloads, policies, trustBundle, peerAuths, revoked, nodes);
    for (const s of services.values()) for (const vip of s.addresses) for (const p of s.ports) view.#byVip.set(`${normalizeIp(vip)}|${p.port}`, { service: s, port: p });
    for (const w of workloads) for (const a of w.addresses) view.#byAddress.set(normalizeIp(a), w);
    return view;
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
    const selects = (sel: Record<string, string>): boolean => Object.entries(sel).every(([k, v]) => w.labels[k] === v);
    const inNs = this.peerAuthentications.filter((p) => (p.metadata.namespace ?? 'default') === w.namespace);
    const pick =
      inNs.find((p) => p.spec.selector && selects(p.spec.selector.matchLabels)) ??
      inNs.find((p) => !p.spec.selector) ??
      this.peerAuthentications.find((p) => p.metadata.namespace === 'nodemesh-system' && !p.spec.selector);
    return pick?.spec.mtls.mode ?? this.mesh.defaultMtlsMode;
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
