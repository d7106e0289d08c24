/**
 * The embedded store: one SQLite file (better-sqlite3) in WAL mode with
 * synchronous=FULL, so a write returns only after it is on disk and a kill -9
 * at any moment loses no acknowledged write and leaves no half-applied batch
 * (each batch is one transaction).
 *
 * Tables: objects (the current state), events (the change log watches
 * resume from; its oldest rows are dropped past EVENT_RETENTION), meta
 * (the store version), tokens (bootstrap tokens, hashed), certificates
 * (every certificate issued and not yet expired: which node holds it, whether
 * it is revoked), nodes (joined, revoked).
 *
 * The schema is versioned with PRAGMA user_version; MIGRATIONS upgrade an
 * existing file step by step, each step one transaction.
 */
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import Database from 'better-sqlite3';

import { KINDS, resourceKey, type KindName, type Resource } from '../../api/kinds';
import {
  ConflictError,
  NotFoundError,
  stableStringify,
  StoreError,
  type ApplyOutcome,
  type BootstrapToken,
  type Change,
  type DeleteTarget,
  type IssuedCertificateRecord,
  type JoinRecord,
  type NodeRecord,
  type ListOptions,
  type Store,
  type TokenStore,
} from './store';

/** Change-log rows kept for watches that resume; older ones need a re-list. */
export const EVENT_RETENTION = 200_000;

/** Schema version 1: what stores made before versioning hold (so it is IF NOT EXISTS throughout). */
const SCHEMA_V1 = `
CREATE TABLE IF NOT EXISTS objects (
  kind TEXT NOT NULL,
  namespace TEXT NOT NULL,
  name TEXT NOT NULL,
  version INTEGER NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  version INTEGER NOT NULL,
  type TEXT NOT NULL,
  body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_version ON events (version);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens (
  id TEXT PRIMARY KEY,
  node TEXT NOT NULL,
  secret_hash TEXT NOT NULL,
  expires_at INTEGER NOT NULL,
  created_at INTEGER NOT NULL
) WITHOUT ROWID;
`;

/**
 * Index i upgrades schema version i to i+1. Tokens of a version-1 store were
 * reusable until they expired; they become single use (their one use still
 * open). Certificates issued before version 2 are not in `certificates`:
 * meta.certificates_tracked_since says from when they are.
 */
const MIGRATIONS: ((db: Database.Database) => void)[] = [
  (db) => db.exec(SCHEMA_V1),
  (db) => {
    db.exec(`
ALTER TABLE tokens ADD COLUMN uses INTEGER NOT NULL DEFAULT 1;
ALTER TABLE tokens ADD COLUMN used INTEGER NOT NULL DEFAULT 0;
CREATE TABLE certificates (
  serial TEXT PRIMARY KEY,
  node TEXT NOT NULL,
  kind TEXT NOT NULL,
  identity TEXT NOT NULL,
  not_after INTEGER NOT NULL,
  issued_at INTEGER NOT NULL,
  revoked_at INTEGER
) WITHOUT ROWID;
CREATE INDEX certificates_node ON certificates (node, identity);
CREATE TABLE nodes (
  node TEXT PRIMARY KEY,
  joined_at INTEGER NOT NULL,
  revoked_at INTEGER
) WITHOUT ROWID;
`);
    db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES ('certificates_tracked_since', ?)").run(String(Date.now()));
  },
];
export const SCHEMA_VERSION = MIGRATIONS.length;

const CERT_COLUMNS = 'serial, node, kind, identity, not_after AS notAfter, issued_at AS issuedAt, revoked_at AS revokedAt';
type CertRow = Omit<IssuedCertificateRecord, 'revokedAt'> & { revokedAt: number | null };
type NodeRow = Omit<NodeRecord, 'revokedAt'> & { revokedAt: number | null };

function certRecord(r: CertRow | undefined): IssuedCertificateRecord | undefined {
  if (!r) return undefined;
  const { revokedAt, ...rest } = r;
  return revokedAt === null ? rest : { ...rest, revokedAt };
}

function nodeRecord(r: NodeRow | undefined): NodeRecord | undefined {
  if (!r) return undefined;
  const { revokedAt, ...rest } = r;
  return revokedAt === null ? rest : { ...rest, revokedAt };
}

/** What decides "unchanged": the user's intent, not server-set fields. */
function intent(r: Resource): string {
  return stableStringify({ labels: r.metadata.labels ?? {}, annotations: r.metadata.annotations ?? {}, spec: r.spec });
}

export class SqliteStore implements Store, TokenStore {
  readonly path: string;
  readonly #db: Database.Database;
  #version: number;
  readonly #listeners = new Set<(changes: Change[], version: number) => void>();
  readonly #stmt: {
    get: Database.Statement;
    upsert: Database.Statement;
    remove: Database.Statement;
    event: Database.Statement;
    setVersion: Database.Statement;
    listAll: Database.Statement;
    listKind: Database.Statement;
    listKindNs: Database.Statement;
    since: Database.Statement;
    oldest: Database.Statement;
    compact: Database.Statement;
    putToken: Database.Statement;
    getToken: Database.Statement;
    expireTokens: Database.Statement;
    useToken: Database.Statement;
    putCert: Database.Statement;
    getCert: Database.Statement;
    liveCerts: Database.Statement;
    countLive: Database.Statement;
    expireCerts: Database.Statement;
    putNode: Database.Statement;
    getNode: Database.Statement;
    listNodes: Database.Statement;
    revokeNode: Database.Statement;
    revokeNodeCerts: Database.Statement;
    deleteNodeTokens: Database.Statement;
  };
  /** When certificates began to be recorded (ms): older ones of this CA are not in the table. */
  readonly certificatesTrackedSince: number;

  readonly #retention: number;

  constructor(dataDir: string, opts: { eventRetention?: number } = {}) {
    this.#retention = opts.eventRetention ?? EVENT_RETENTION;
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    this.path = path.join(dataDir, 'store.db');
    this.#db = new Database(this.path);
    // Durable on return: the WAL is fsynced at every commit.
    this.#db.pragma('journal_mode = WAL');
    this.#db.pragma('synchronous = FULL');
    this.#db.pragma('foreign_keys = ON');
    const db = this.#db;
    this.#migrate();
    this.#stmt = {
      get: db.prepare('SELECT body FROM objects WHERE kind = ? AND namespace = ? AND name = ?'),
      upsert: db.prepare('INSERT INTO objects (kind, namespace, name, version, body) VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, namespace, name) DO UPDATE SET version = excluded.version, body = excluded.body'),
      remove: db.prepare('DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?'),
      event: db.prepare('INSERT INTO events (version, type, body) VALUES (?, ?, ?)'),
      setVersion: db.prepare("INSERT INTO meta (key, value) VALUES ('version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
      listAll: db.prepare('SELECT body FROM objects ORDER BY kind, namespace, name'),
      listKind: db.prepare('SELECT body FROM objects WHERE kind = ? ORDER BY namespace, name'),
      listKindNs: db.prepare('SELECT body FROM objects WHERE kind = ? AND namespace = ? ORDER BY name'),
      since: db.prepare('SELECT version, type, body FROM events WHERE version > ? ORDER BY seq'),
      oldest: db.prepare('SELECT MIN(version) AS v FROM events'),
      compact: db.prepare('DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?'),
      putToken: db.prepare('INSERT OR REPLACE INTO tokens (id, node, secret_hash, expires_at, created_at, uses, used) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      getToken: db.prepare('SELECT id, node, secret_hash AS secretHash, expires_at AS expiresAt, created_at AS createdAt, uses, used FROM tokens WHERE id = ?'),
      expireTokens: db.prepare('DELETE FROM tokens WHERE expires_at < ?'),
      // The check and the use are one statement: of two joins racing for the last use, one changes a row.
      useToken: db.prepare('UPDATE tokens SET used = used + 1 WHERE id = ? AND used < uses AND expires_at > ?'),
      putCert: db.prepare('INSERT OR REPLACE INTO certificates (serial, node, kind, identity, not_after, issued_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      getCert: db.prepare(`SELECT ${CERT_COLUMNS} FROM certificates WHERE serial = ?`),
      liveCerts: db.prepare(`SELECT ${CERT_COLUMNS} FROM certificates WHERE not_after > ? ORDER BY issued_at`),
      countLive: db.prepare('SELECT COUNT(*) AS n FROM certificates WHERE node = ? AND identity = ? AND not_after > ?'),
      expireCerts: db.prepare('DELETE FROM certificates WHERE not_after <= ?'),
      putNode: db.prepare('INSERT INTO nodes (node, joined_at, revoked_at) VALUES (?, ?, NULL) ON CONFLICT (node) DO UPDATE SET joined_at = excluded.joined_at, revoked_at = NULL'),
      getNode: db.prepare('SELECT node, joined_at AS joinedAt, revoked_at AS revokedAt FROM nodes WHERE node = ?'),
      listNodes: db.prepare('SELECT node, joined_at AS joinedAt, revoked_at AS revokedAt FROM nodes ORDER BY node'),
      revokeNode: db.prepare('INSERT INTO nodes (node, joined_at, revoked_at) VALUES (?, 0, ?) ON CONFLICT (node) DO UPDATE SET revoked_at = excluded.revoked_at'),
      revokeNodeCerts: db.prepare('UPDATE certificates SET revoked_at = ? WHERE node = ? AND not_after > ? AND revoked_at IS NULL RETURNING serial'),
      deleteNodeTokens: db.prepare('DELETE FROM tokens WHERE node = ?'),
    };
    const since = db.prepare("SELECT value FROM meta WHERE key = 'certificates_tracked_since'").get() as { value: string } | undefined;
    this.certificatesTrackedSince = since ? Number(since.value) : 0;
    const row = db.prepare("SELECT value FROM meta WHERE key = 'version'").get() as { value: string } | undefined;
    this.#version = row ? Number(row.value) : 0;
  }

  get version(): number {
    return this.#version;
  }

  #migrate(): void {
    const db = this.#db;
    const at = db.pragma('user_version', { simple: true }) as number;
    if (at > MIGRATIONS.length) {
      throw new StoreError(
        'NM_ERR_STORE_SCHEMA',
        `${this.path} has schema version ${at}, newer than this controller's ${MIGRATIONS.length}: run the controller version that wrote it (or newer)`,
      );
    }
    for (let v = at; v < MIGRATIONS.length; v++) {
      db.transaction(() => {
        MIGRATIONS[v]!(db);
        db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  #read(kind: string, namespace: string | undefined, name: string): Resource | undefined {
    const row = this.#stmt.get.get(kind, namespace ?? '', name) as { body: string } | undefined;
    return row ? (JSON.parse(row.body) as Resource) : undefined;
  }

  get(kind: string, namespace: string | undefined, name: string): Resource | undefined {
    return this.#read(kind, KINDS[kind as KindName]?.namespaced === false ? undefined : namespace, name);
  }

  list(opts: ListOptions = {}): Resource[] {
    const rows = (
      opts.kind === undefined
        ? this.#stmt.listAll.all()
        : opts.namespace === undefined
          ? this.#stmt.listKind.all(opts.kind)
          : this.#stmt.listKindNs.all(opts.kind, opts.namespace)
    ) as { body: string }[];
    return rows.map((r) => JSON.parse(r.body) as Resource);
  }

  apply(resources: Resource[]): ApplyOutcome[] {
    const next = this.#version + 1;
    const now = new Date().toISOString();
    const changes: Change[] = [];
    const outcomes = this.#db.transaction((): ApplyOutcome[] => {
      const out: ApplyOutcome[] = [];
      for (const r of resources) {
        const ns = r.metadata.namespace;
        const old = this.#read(r.kind, ns, r.metadata.name);
        const want = r.metadata.resourceVersion;
        if (want !== undefined && want !== (old?.metadata.resourceVersion ?? '')) {
          throw new ConflictError(
            `${resourceKey(r)}: ${old ? `it is at version ${old.metadata.resourceVersion}` : 'it does not exist'}, not ${want}: someone changed it first; get it again and reapply`,
          );
        }
        if (old && intent(old) === intent(r)) {
          out.push({ action: 'unchanged', resource: old });
          continue;
        }
        const specChanged = !old || stableStringify(old.spec) !== stableStringify(r.spec);
        const stored: Resource = {
          apiVersion: r.apiVersion,
          kind: r.kind,
          metadata: {
            ...r.metadata,
            uid: old?.metadata.uid ?? randomUUID(),
            resourceVersion: String(next),
            generation: (old?.metadata.generation ?? 0) + (specChanged ? 1 : 0),
            creationTimestamp: old?.metadata.creationTimestamp ?? now,
          },
          spec: r.spec,
        };
        const body = JSON.stringify(stored);
        this.#stmt.upsert.run(r.kind, ns ?? '', r.metadata.name, next, body);
        const type = old ? 'MODIFIED' : 'ADDED';
        this.#stmt.event.run(next, type, body);
        changes.push({ type, version: next, resource: stored });
        out.push({ action: old ? 'configured' : 'created', resource: stored });
      }
      if (changes.length) this.#stmt.setVersion.run(String(next));
      return out;
    })();
    if (changes.length) this.#committed(changes, next);
    return outcomes;
  }

  delete(targets: DeleteTarget[]): Resource[] {
    const next = this.#version + 1;
    const changes: Change[] = [];
    const removed = this.#db.transaction((): Resource[] => {
      const out: Resource[] = [];
      for (const t of targets) {
        const ns = KINDS[t.kind as KindName]?.namespaced === false ? undefined : t.namespace;
        const old = this.#read(t.kind, ns, t.name);
        const key = `${t.kind}/${ns ?? ''}/${t.name}`;
        if (!old) throw new NotFoundError(`${key} does not exist`);
        if (t.resourceVersion !== undefined && t.resourceVersion !== old.metadata.resourceVersion)
          throw new ConflictError(`${key}: it is at version ${old.metadata.resourceVersion}, not ${t.resourceVersion}: get it again`);
        this.#stmt.remove.run(t.kind, ns ?? '', t.name);
        const body = JSON.stringify(old);
        this.#stmt.event.run(next, 'DELETED', body);
        changes.push({ type: 'DELETED', version: next, resource: old });
        out.push(old);
      }
      if (changes.length) this.#stmt.setVersion.run(String(next));
      return out;
    })();
    if (changes.length) this.#committed(changes, next);
    return removed;
  }

  #committed(changes: Change[], version: number): void {
    this.#version = version;
    if (version % 1000 === 0 || this.#retention < 1000) this.#stmt.compact.run(this.#retention);
    // The write is durable already: a failing listener must not fail it.
    for (const l of this.#listeners) {
      try {
        l(changes, version);
      } catch (err) {
        process.emitWarning(`store listener failed at version ${version}: ${err instanceof Error ? err.stack : String(err)}`);
      }
    }
  }

  changesSince(version: number): Change[] | 'compacted' {
    if (version >= this.#version) return [];
    const oldest = (this.#stmt.oldest.get() as { v: number | null }).v;
    // Events of version+1 must all still be there.
    if (oldest === null || oldest > version + 1) return 'compacted';
    return (this.#stmt.since.all(version) as { version: number; type: Change['type']; body: string }[]).map((r) => ({
      type: r.type,
      version: r.version,
      resource: JSON.parse(r.body) as Resource,
    }));
  }

  subscribe(listener: (changes: Change[], version: number) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  putToken(t: BootstrapToken): void {
    this.#stmt.putToken.run(t.id, t.node, t.secretHash, t.expiresAt, t.createdAt, t.uses, t.used);
  }

  getToken(id: string): BootstrapToken | undefined {
    return this.#stmt.getToken.get(id) as BootstrapToken | undefined;
  }

  deleteExpiredTokens(now: number): number {
    return this.#stmt.expireTokens.run(now).changes;
  }

  consumeToken(j: JoinRecord): boolean {
    return this.#db.transaction((): boolean => {
      if (this.#stmt.useToken.run(j.tokenId, j.now).changes !== 1) return false;
      this.#stmt.putNode.run(j.certificate.node, j.now);
      this.#putCert(j.certificate);
      return true;
    })();
  }

  #putCert(c: IssuedCertificateRecord): void {
    this.#stmt.putCert.run(c.serial, c.node, c.kind, c.identity, c.notAfter, c.issuedAt, c.revokedAt ?? null);
  }

  recordCertificate(c: IssuedCertificateRecord): void {
    this.#putCert(c);
  }

  getCertificate(serial: string): IssuedCertificateRecord | undefined {
    return certRecord(this.#stmt.getCert.get(serial) as CertRow | undefined);
  }

  countLiveCertificates(node: string, identity: string, now: number): number {
    return (this.#stmt.countLive.get(node, identity, now) as { n: number }).n;
  }

  liveCertificates(now: number): IssuedCertificateRecord[] {
    return (this.#stmt.liveCerts.all(now) as CertRow[]).map((r) => certRecord(r)!);
  }

  deleteExpiredCertificates(now: number): number {
    return this.#stmt.expireCerts.run(now).changes;
  }

  getNode(node: string): NodeRecord | undefined {
    return nodeRecord(this.#stmt.getNode.get(node) as NodeRow | undefined);
  }

  listNodes(): NodeRecord[] {
    return (this.#stmt.listNodes.all() as NodeRow[]).map((r) => nodeRecord(r)!);
  }

  revokeNode(node: string, now: number): string[] {
    return this.#db.transaction((): string[] => {
      this.#stmt.revokeNode.run(node, now);
      this.#stmt.deleteNodeTokens.run(node);
      return (this.#stmt.revokeNodeCerts.all(now, node, now) as { serial: string }[]).map((r) => r.serial);
    })();
  }

  close(): void {
    if (this.#db.open) this.#db.close();
  }
}
