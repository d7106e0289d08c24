/**
 * Lookups the proxy does per connection, built once per config version from
 * ConfigState: VIP and port -> Service and its endpoints; address -> workload
 * (local ones in full, remote ones as service endpoints); local workloads by
 * netns; the mesh config; the authorization policies.
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
import type { ConfigState } from './config-state';

export interface EndpointView {
  workload: string;
  namespace: string;
  labels: Record<string, string>;
  node: string;
  nodeAddresses?: string[];
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

export interface WorkloadView {
  key: string;
  name: string;
  namespace: string;
  labels: Record<string, string>;
  node: string;
  addresses: string[];
  identity: string;
  serviceAccount: string;
  netns?: string;
  ready: boolean;
  /** This node runs it. */
  local: boolean;
  /** Where its node's proxy takes tunnels (remote workloads). */
  nodeAddresses?: string[];
}

/** Maps ::ffff:1.2.3.4 to 1.2.3.4 so both forms find the same entry. */
export function normalizeIp(ip: string): string {
  return ip.startsWith('::ffff:') && net.isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}

interface ServiceItem {
  metadata: { name: string; namespace?: string; resourceVersion?: string };
  spec: ServiceSpec;
  status?: { endpoints?: EndpointView[] };
}
interface WorkloadItem {
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec: WorkloadSpec;
  status?: { identity?: string; nodeAddresses?: string[] };
}

export class MeshView {
  readonly version: number;
  readonly node: string;
  readonly mesh: Readonly<MeshConfigSpec>;
  readonly services: ReadonlyMap<string, ServiceView>;
  /** Every workload of the mesh (`local` marks this node's). */
  readonly workloads: readonly WorkloadView[];
  readonly policies: readonly AuthorizationPolicy[];
  /** The CA certificates (PEM) peers' certificates must chain to. */
  readonly trustBundle: string;
  readonly peerAuthentications: readonly PeerAuthentication[];
  /** Serials (normalized) of revoked certificates: tunnels refuse a peer presenting one. */
  readonly revokedSerials: ReadonlySet<string>;
  readonly #byVip = new Map<string, { service: ServiceView; port: ServicePort }>();
  readonly #byAddress = new Map<string, WorkloadView>();

  private constructor(
    version: number,
    node: string,
    mesh: MeshConfigSpec,
    services: Map<string, ServiceView>,
    local: WorkloadView[],
    policies: AuthorizationPolicy[],
    trustBundle: string,
    peerAuthentications: PeerAuthentication[],
    revokedSerials: ReadonlySet<string>,
  ) {
    this.version = version;
    this.revokedSerials = revokedSerials;
    this.trustBundle = trustBundle;
    this.peerAuthentications = peerAuthentications;
    this.node = node;
    this.mesh = mesh;
    this.services = services;
    this.workloads = local;
    this.policies = policies;
  }

  static build(state: ConfigState, node: string): MeshView {
    let mesh: MeshConfigSpec = { ...MESH_CONFIG_DEFAULTS };
    const services = new Map<string, ServiceView>();
    const local: WorkloadView[] = [];
    const policies: AuthorizationPolicy[] = [];
    let trustBundle = '';
    const peerAuths: PeerAuthentication[] = [];
    let revoked: ReadonlySet<string> = new Set();
    for (const [key, raw] of state.items) {
      const kind = key.slice(0, key.indexOf('/'));
      if (kind === 'TrustBundle') trustBundle = (raw as { pem: string }).pem;
      else if (kind === 'RevocationList') {
        const serials = (raw as { serials?: unknown }).serials;
        revoked = new Set(Array.isArray(serials) ? serials.filter((x): x is string => typeof x === 'string').map(normalizeSerial) : []);
      }
      else if (kind === 'PeerAuthentication') peerAuths.push(raw as PeerAuthentication);
      else if (kind === 'MeshConfig') mesh = { ...mesh, ...(raw as { spec: Partial<MeshConfigSpec> }).spec };
      else if (kind === 'AuthorizationPolicy') policies.push(raw as AuthorizationPolicy);
      else if (kind === 'Service') {
        const s = raw as ServiceItem;
        services.set(key, {
          key,
          name: s.metadata.name,
          namespace: s.metadata.namespace ?? 'default',
          addresses: s.spec.addresses,
          ports: s.spec.ports,
          lbPolicy: s.spec.loadBalancer?.policy ?? 'P2C_EWMA',
          endpoints: s.status?.endpoints ?? [],
          version: s.metadata.resourceVersion ?? '',
        });
      } else if (kind === 'Workload') {
        const w = raw as WorkloadItem;
        local.push({
          key,
          name: w.metadata.name,
          namespace: w.metadata.namespace ?? 'default',
          labels: w.metadata.labels ?? {},
          node: w.spec.node,
          addresses: w.spec.addresses,
          identity: w.status?.identity ?? '',
          serviceAccount: w.spec.serviceAccount,
          netns: w.spec.netns,
          ready: w.spec.ready,
          local: w.spec.node === node,
          nodeAddresses: w.status?.nodeAddresses ?? [],
        });
      }
    }
    const view = new MeshView(state.version, node, mesh, services, local, policies, trustBundle, peerAuths, revoked);
    for (const s of services.values()) {
      for (const vip of s.addresses) for (const p of s.ports) view.#byVip.set(`${normalizeIp(vip)}|${p.port}`, { service: s, port: p });
      for (const e of s.endpoints) {
        for (const a of e.addresses) {
          if (view.#byAddress.has(normalizeIp(a))) continue;
          view.#byAddress.set(normalizeIp(a), {
            key: `Workload/${e.namespace}/${e.workload}`,
            name: e.workload,
            namespace: e.namespace,
            labels: e.labels ?? {},
            node: e.node,
            addresses: e.addresses,
            identity: e.identity,
            serviceAccount: e.identity.split('/sa/')[1] ?? '',
            ready: e.ready,
            local: e.node === node,
            nodeAddresses: e.nodeAddresses ?? [],
          });
        }
      }
    }
    // Workload items know more than endpoint entries (netns): they win.
    for (const w of local) for (const a of w.addresses) view.#byAddress.set(normalizeIp(a), w);
    return view;
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
