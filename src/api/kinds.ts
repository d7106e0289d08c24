/**
 * The resource kinds of nodemesh, Kubernetes-shaped:
 * `apiVersion: nodemesh.io/v1alpha1`, `kind`, `metadata`, `spec` (see
 * docs/architecture.md, 'Resources').
 */
export const API_VERSION = 'nodemesh.io/v1alpha1';

/** Policies here without a selector apply to the whole mesh (Istio's root namespace). */
export const ROOT_NAMESPACE = 'nodemesh-system';
export const GROUP = 'nodemesh.io';

export const KIND_NAMES = ['Workload', 'Service', 'AuthorizationPolicy', 'PeerAuthentication', 'HTTPRoute', 'MeshConfig'] as const;
export type KindName = (typeof KIND_NAMES)[number];

export interface KindInfo {
  kind: KindName;
  /** Lowercase plural, as `nodemesh get` and kubectl accept it. */
  plural: string;
  /** Other names `nodemesh get` accepts. */
  aliases: string[];
  namespaced: boolean;
  /** The $id of its JSON Schema in src/api/schemas/. */
  schema: string;
}

export const KINDS: Readonly<Record<KindName, KindInfo>> = Object.freeze({
  Workload: { kind: 'Workload', plural: 'workloads', aliases: ['workload', 'wl'], namespaced: true, schema: 'workload.schema.json' },
  Service: { kind: 'Service', plural: 'services', aliases: ['service', 'svc'], namespaced: true, schema: 'service.schema.json' },
  AuthorizationPolicy: {
    kind: 'AuthorizationPolicy',
    plural: 'authorizationpolicies',
    aliases: ['authorizationpolicy', 'ap'],
    namespaced: true,
    schema: 'authorizationpolicy.schema.json',
  },
  PeerAuthentication: {
    kind: 'PeerAuthentication',
    plural: 'peerauthentications',
    aliases: ['peerauthentication', 'pa'],
    namespaced: true,
    schema: 'peerauthentication.schema.json',
  },
  HTTPRoute: { kind: 'HTTPRoute', plural: 'httproutes', aliases: ['httproute', 'route'], namespaced: true, schema: 'httproute.schema.json' },
  MeshConfig: { kind: 'MeshConfig', plural: 'meshconfigs', aliases: ['meshconfig', 'mc'], namespaced: false, schema: 'meshconfig.schema.json' },
});

/** Finds a kind by its name, plural or alias, case-insensitively. */
export function findKind(name: string): KindInfo | undefined {
  const n = name.toLowerCase();
  return Object.values(KINDS).find((k) => k.kind.toLowerCase() === n || k.plural === n || k.aliases.includes(n) || `${k.plural}.${GROUP}` === n);
}

export interface ObjectMeta {
  name: string;
  /** Absent for cluster-scoped kinds (MeshConfig). */
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  // Set by the controller:
  uid?: string;
  /** The store's version when this object last changed; a precondition when sent back. */
  resourceVersion?: string;
  /** Bumped when spec changes. */
  generation?: number;
  creationTimestamp?: string;
}

export interface Resource<K extends KindName = KindName, S = unknown> {
  apiVersion: typeof API_VERSION;
  kind: K;
  metadata: ObjectMeta;
  spec: S;
}

/** `Kind/namespace/name` (cluster-scoped: `Kind//name`): one object's identity. */
export function resourceKey(r: { kind: string; metadata: { namespace?: string; name: string } }): string {
  return `${r.kind}/${r.metadata.namespace ?? ''}/${r.metadata.name}`;
}

/** `kind.nodemesh.io/name`, as apply and delete print it. */
export function displayName(r: { kind: string; metadata: { name: string } }): string {
  return `${r.kind.toLowerCase()}.${GROUP}/${r.metadata.name}`;
}

// --- specs (what the schemas in src/api/schemas/ accept) ---

export interface WorkloadSpec {
  /** Node the workload runs on. */
  node: string;
  serviceAccount: string;
  /** IPv4 and/or IPv6 addresses of the workload. */
  addresses: string[];
  ports?: { name?: string; port: number; protocol?: 'TCP' }[];
  /** Its network namespace file on the node (the lab; Kubernetes derives it). */
  netns?: string;
  /** Whether it should receive traffic. */
  ready: boolean;
}

export type AppProtocol = 'tcp' | 'http' | 'http2' | 'grpc';
export type LoadBalancerPolicy = 'P2C_EWMA' | 'ROUND_ROBIN' | 'LEAST_REQUEST' | 'CONSISTENT_HASH';

export interface ServicePort {
  name?: string;
  port: number;
  /** Port on the workloads; defaults to `port`. */
  targetPort?: number;
  appProtocol?: AppProtocol;
}

export interface ServiceSpec {
  selector: Record<string, string>;
  /** Virtual IPs (VIPs) the service answers on. */
  addresses: string[];
  ports: ServicePort[];
  loadBalancer?: { policy: LoadBalancerPolicy; hashOn?: { header?: string; source?: boolean } };
}

export interface StringMatchLists {
  [field: string]: string[] | undefined;
}

export interface AuthorizationRule {
  from?: { source: StringMatchLists }[];
  to?: { operation: StringMatchLists }[];
  when?: { key: string; values?: string[]; notValues?: string[] }[];
}

export interface AuthorizationPolicySpec {
  selector?: { matchLabels: Record<string, string> };
  action: 'ALLOW' | 'DENY' | 'AUDIT';
  rules?: AuthorizationRule[];
}

export interface PeerAuthenticationSpec {
  selector?: { matchLabels: Record<string, string> };
  mtls: { mode: 'STRICT' | 'PERMISSIVE' };
}

export interface HTTPRouteSpec {
  parentRefs: { group?: '' | 'nodemesh.io'; kind?: 'Service'; name: string; namespace?: string; port?: number }[];
  hostnames?: string[];
  rules: Record<string, unknown>[];
}

export interface MeshConfigSpec {
  trustDomain: string;
  outboundTrafficPolicy: { mode: 'ALLOW_ANY' | 'REGISTRY_ONLY' };
  defaultMtlsMode: 'STRICT' | 'PERMISSIVE';
  /** Workload certificate lifetime, seconds. */
  certificateLifetimeSeconds: number;
  /**
   * Workloads that fail open: while no proxy is ready on their node, their
   * connects go around it (no policy, no mTLS) instead of being refused.
   * Each entry names a namespace and, optionally, a selector in it.
   */
  failOpen: readonly FailOpenEntry[];
  /**
   * Connections between two pods of one node, once authorized, are copied by
   * the kernel (a sockmap) instead of the proxy: flows still get their bytes
   * and close, and policy still decides each connection.
   */
  sameNodeFastPath: boolean;
}

export interface FailOpenEntry {
  namespace: string;
  /** None: every workload of the namespace. */
  selector?: { matchLabels: Record<string, string> };
}

export const MESH_CONFIG_DEFAULTS: Readonly<MeshConfigSpec> = Object.freeze({
  trustDomain: 'cluster.local',
  outboundTrafficPolicy: Object.freeze({ mode: 'ALLOW_ANY' as const }),
  defaultMtlsMode: 'PERMISSIVE' as const,
  certificateLifetimeSeconds: 24 * 3600,
  failOpen: Object.freeze([]) as readonly FailOpenEntry[],
  sameNodeFastPath: false,
});

export type Workload = Resource<'Workload', WorkloadSpec>;
export type Service = Resource<'Service', ServiceSpec>;
export type AuthorizationPolicy = Resource<'AuthorizationPolicy', AuthorizationPolicySpec>;
export type PeerAuthentication = Resource<'PeerAuthentication', PeerAuthenticationSpec>;
export type HTTPRoute = Resource<'HTTPRoute', HTTPRouteSpec>;
export type MeshConfig = Resource<'MeshConfig', MeshConfigSpec>;
