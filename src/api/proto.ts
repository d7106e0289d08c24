/**
 * The gRPC services of proto/nodemesh/v1, loaded at run time with
 * @grpc/proto-loader (field names camelCase, uint64 as number: versions stay
 * far below 2^53), and the TypeScript shapes of their messages.
 */
import * as path from 'node:path';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

import { PACKAGE_ROOT } from '../paths';

export const PROTO_DIR = path.join(PACKAGE_ROOT, 'src', 'api', 'proto');
const FILES = ['nodemesh/v1/resources.proto', 'nodemesh/v1/node_config.proto', 'nodemesh/v1/certificates.proto'];

interface ServiceCtor {
  service: grpc.ServiceDefinition;
  new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ChannelOptions): grpc.Client;
}

export interface NodemeshServices {
  Resources: ServiceCtor;
  NodeConfig: ServiceCtor;
  Bootstrap: ServiceCtor;
  Certificates: ServiceCtor;
}

let loaded: NodemeshServices | undefined;

export function services(): NodemeshServices {
  if (loaded) return loaded;
  const def = protoLoader.loadSync(FILES, {
    includeDirs: [PROTO_DIR],
    keepCase: false,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { nodemesh: { v1: NodemeshServices } };
  loaded = pkg.nodemesh.v1;
  return loaded;
}

// --- messages ---

export interface Document {
  source: string;
  index: number;
  json: string;
}
export interface ApplyRequest {
  documents: Document[];
  dryRun: boolean;
}
export interface ApplyResult {
  kind: string;
  namespace: string;
  name: string;
  action: string;
  resourceVersion: string;
}
export interface ApplyResponse {
  results: ApplyResult[];
  version: number;
}
export interface GetRequest {
  kind: string;
  namespace: string;
  name: string;
}
export interface ObjectMessage {
  json: string;
}
export interface ListRequest {
  kind: string;
  namespace: string;
  allNamespaces: boolean;
  labelSelector: string;
}
export interface ListResponse {
  items: string[];
  version: number;
}
export interface DeleteTargetMessage {
  kind: string;
  namespace: string;
  name: string;
  resourceVersion: string;
}
export interface DeleteRequest {
  targets: DeleteTargetMessage[];
}
export interface DeleteResponse {
  deleted: ObjectMessage[];
  version: number;
}
export interface WatchRequest {
  kind: string;
  namespace: string;
  fromVersion: number;
}
export interface WatchEvent {
  type: string;
  version: number;
  json: string;
}

export interface Hello {
  node: string;
  version: number;
  proxyVersion: string;
  addresses: string[];
  /** Why the node's previous stream ended ('' on its first). */
  lastError?: string;
  maxMessageBytes?: number;
  /** 'fail-closed' or 'fail-open': what the node's pods get while no proxy is ready. */
  failMode?: string;
}
export interface NodeMessage {
  msg?: 'hello' | 'ack' | 'nack' | 'heartbeat';
  hello?: Hello;
  ack?: { version: number };
  nack?: { version: number; reason: string };
  heartbeat?: { unixMs: number };
}
export interface WorkloadItem {
  node: string;
  serviceAccount: string;
  addresses: string[];
  labels: Record<string, string>;
  ready: boolean;
  netns: string;
  resourceVersion: string;
}
export interface ServiceItem {
  json: string;
  endpoints: string[];
}
/** One piece of a node's config: exactly one of json, workload, service (`body` names it when decoded). */
export interface Item {
  key: string;
  body?: 'json' | 'workload' | 'service';
  json?: string;
  workload?: WorkloadItem;
  service?: ServiceItem;
}
export interface Snapshot {
  version: number;
  items: Item[];
  more?: boolean;
  part?: number;
  totalItems?: number;
}
export interface Delta {
  version: number;
  fromVersion: number;
  upserts: Item[];
  removals: string[];
  more?: boolean;
  part?: number;
}
export interface ConfigMessage {
  msg?: 'snapshot' | 'delta' | 'heartbeat';
  snapshot?: Snapshot;
  delta?: Delta;
  heartbeat?: { unixMs: number };
}
export interface NodeStatusMessage {
  node: string;
  connected: boolean;
  sentVersion: number;
  ackedVersion: number;
  nackedVersion: number;
  nackReason: string;
  lastSeenUnixMs: number;
  peer: string;
  proxyVersion: string;
  addresses: string[];
  revoked: boolean;
  revokedUnixMs: number;
  certificateSerial: string;
  certificateExpiresUnixMs: number;
  joinedUnixMs: number;
  workloadCertificates: number;
  streamCertificateSerial: string;
  lastError: string;
  lastErrorUnixMs: number;
  streamsOpened: number;
  /** 'fail-closed' or 'fail-open', from the node's hello; '' before one. */
  failMode: string;
}
export interface RevokeNodeResponse {
  serials: string[];
}

export interface CertificateResponse {
  certificateChainPem: string;
  trustBundlePem: string;
  expiresUnixMs: number;
  trustDomain: string;
}
export interface JoinRequest {
  token: string;
  node: string;
  csrPem: string;
}
export interface CreateTokenRequest {
  node: string;
  ttlSeconds: number;
  uses: number;
}
export interface CreateTokenResponse {
  token: string;
  expiresUnixMs: number;
  uses: number;
}
