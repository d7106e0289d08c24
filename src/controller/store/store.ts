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
  node: string;
  /** sha256 of the secret, hex. */
  secretHash: string;
  expiresAt: number;
  createdAt: number;
}

/** Bootstrap tokens, kept with the resources. */
export interface TokenStore {
  putToken(token: BootstrapToken): void;
  getToken(id: string): BootstrapToken | undefined;
  deleteExpiredTokens(now: number): number;
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
