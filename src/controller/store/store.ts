/**
 * The controller's store: where applied resources live. One interface, so
 * etcd and the Kubernetes API can come later as backends; the embedded SQLite
 * store (sqlite.ts) is the default.
 *
 * Every write is a batch, all or nothing, and gets one new store version;
 * every object it changed carries that version as its resourceVersion.
 * A write is acknowledged only once durable.
 */
import { MeshError } from '../../errors';
import type { Resource } from '../../api/kinds';

export type ChangeType = 'ADDED' | 'MODIFIED' | 'DELETED';

export interface Change {
  type: ChangeType;
  version: number;
  /** The object after the change (for DELETED: as it was). */
  resource: Resource;
}

export type ApplyAction = 'created' | 'configured' | 'unchanged';

export interface ApplyOutcome {
  action: ApplyAction;
  resource: Resource;
}

export interface DeleteTarget {
  kind: string;
  namespace?: string;
  name: string;
  /** Precondition: delete only while the object is at this version. */
  resourceVersion?: string;
}

export interface ListOptions {
  kind?: string;
  /** Omitted: every namespace. */
  namespace?: string;
}

export interface Store {
  /** The version of the latest acknowledged write (0 when empty). */
  readonly version: number;
  /**
   * Creates or updates every resource, or none. A resource carrying
   * metadata.resourceVersion is written only if it still has that version
   * (else ConflictError). Unchanged objects keep their version.
   */
  apply(resources: Resource[]): ApplyOutcome[];
  /** Deletes every target, or none; missing ones are NotFoundError. */
  delete(targets: DeleteTarget[]): Resource[];
  get(kind: string, namespace: string | undefined, name: string): Resource | undefined;
  list(opts?: ListOptions): Resource[];
  /**
   * Changes after `version`, oldest first; 'compacted' when they are no longer
   * all kept (the caller must list again).
   */
  changesSince(version: number): Change[] | 'compacted';
  /** Called after each acknowledged write with its changes. Returns an unsubscribe function. */
  subscribe(listener: (changes: Change[], version: number) => void): () => void;
  close(): void;
}

export interface BootstrapToken {
  id: string;
  /** The one node name it may join as; '' for any name the controller has never seen. */
  node: string;
  /** sha256 of the secret, hex: a copy of the database holds no usable token. */
  secretHash: string;
  expiresAt: number;
  createdAt: number;
  /** How many joins it allows, and how many it has had. */
  uses: number;
  used: number;
}

/** A certificate the controller issued, kept until it expires: who holds it, and whether it was revoked. */
export interface IssuedCertificateRecord {
  /** Lowercase hex without leading zeros (see normalizeSerial). */
  serial: string;
  node: string;
  kind: 'node' | 'workload';
  identity: string;
  notAfter: number;
  issuedAt: number;
  revokedAt?: number;
}

export interface NodeRecord {
  node: string;
  joinedAt: number;
  revokedAt?: number;
}

/** What a successful join writes, all at once. */
export interface JoinRecord {
  tokenId: string;
  now: number;
  certificate: IssuedCertificateRecord;
}

/**
 * Bootstrap tokens, issued certificates and nodes, kept with the resources.
 * Each method is one transaction: a token use, the node it made and the
 * certificate it got are written together or not at all.
 */
export interface TokenStore {
  putToken(token: BootstrapToken): void;
  getToken(id: string): BootstrapToken | undefined;
  /** Deletes tokens that expired before `before` (used or not). */
  deleteExpiredTokens(before: number): number;
  /**
   * Takes one use of the token (it must still have one and be unexpired) and
   * records the node and its certificate; false, writing nothing, when
   * another join took the last use first.
   */
  consumeToken(join: JoinRecord): boolean;
  recordCertificate(cert: IssuedCertificateRecord): void;
  getCertificate(serial: string): IssuedCertificateRecord | undefined;
  /** How many certificates for `identity` issued to `node` are unexpired at `now`. */
  countLiveCertificates(node: string, identity: string, now: number): number;
  /** Certificates not yet expired at `now`, oldest first. */
  liveCertificates(now: number): IssuedCertificateRecord[];
  /** Drops certificates past their notAfter: they are refused anyway, revoked or not. */
  deleteExpiredCertificates(now: number): number;
  getNode(node: string): NodeRecord | undefined;
  listNodes(): NodeRecord[];
  /**
   * Marks the node revoked, every live certificate issued to it revoked, and
   * deletes its unused tokens; returns the serials revoked.
   */
  revokeNode(node: string, now: number): string[];
}

export class StoreError extends MeshError {}

/** A precondition failed: someone else changed the object first. */
export class ConflictError extends StoreError {
  constructor(message: string) {
    super('NM_ERR_CONFLICT', message);
  }
}

export class NotFoundError extends StoreError {
  constructor(message: string) {
    super('NM_ERR_NOT_FOUND', message);
  }
}

/** JSON with object keys sorted: equal values give equal strings. */
export function stableStringify(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(stableStringify).join(',')}]`;
  const o = value as Record<string, unknown>;
  return `{${Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${stableStringify(o[k])}`)
    .join(',')}}`;
}
