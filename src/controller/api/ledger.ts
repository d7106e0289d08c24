/**
 * The certificate ledger: which node holds each certificate the CA issued
 * (node and workload certificates alike), until it expires, and which of them
 * a revocation cut off. The store holds the records; this decides what they
 * mean for a caller and what every node's revocation list says.
 *
 * The revocation list names the still-valid certificates of revoked nodes, so
 * it is bounded by what those nodes held when revoked: per identity (the
 * node's own and each workload identity placed on it) at most
 * LEDGER_DEFAULTS.maxLivePerIdentity unexpired certificates, since the
 * controller refuses more (renewal at half life keeps 2-3 live; restarts add
 * one each); each leaves the list when it expires (node certificates live
 * NODE_CERT_DEFAULTS.lifetimeSeconds, workload ones the MeshConfig lifetime,
 * 24 h by default).
 */
import { normalizeSerial, type IssuedCertificate } from '../ca';
import type { IssuedCertificateRecord, NodeRecord, TokenStore } from '../store';
import type { NodeCertificateCheck } from './auth';

export const NODE_CERT_DEFAULTS = Object.freeze({
  /** Node certificates are renewed at half life; a revoked one is refused at the controller at once, by peers through the list. */
  lifetimeSeconds: 24 * 3600,
});

/**
 * Bootstrap tokens, Kubernetes-style (`ID.SECRET`, the ID public, the secret
 * kept only as its sha256): single use unless made for more, and short-lived.
 */
export const TOKEN_DEFAULTS = Object.freeze({
  ttlSeconds: 24 * 3600,
  maxTtlSeconds: 7 * 24 * 3600,
  uses: 1,
  maxUses: 1000,
  /** Used and expired tokens are kept this long after they expire, so a late join hears why it is refused. */
  retainSeconds: 24 * 3600,
});

export const LEDGER_DEFAULTS = Object.freeze({
  /** Unexpired certificates one node may hold for one identity; past it Sign answers RESOURCE_EXHAUSTED. */
  maxLivePerIdentity: 100,
});

export interface NodeSummary {
  node: string;
  joinedAt?: number;
  revokedAt?: number;
  /** Its newest live node certificate. */
  certificate?: { serial: string; notAfter: number; revoked: boolean };
  /** Live workload certificates issued to it. */
  workloadCertificates: number;
}

export class CertificateLedger implements NodeCertificateCheck {
  readonly #store: TokenStore;
  readonly #trackedSince: number;

  /** `trackedSince`: when the store began recording certificates (older ones are adopted on first sight). */
  constructor(store: TokenStore, trackedSince: number) {
    this.#store = store;
    this.#trackedSince = trackedSince;
  }

  /** Why `node` may not get one more certificate for `identity` now, or undefined. */
  issueRefusal(node: string, identity: string, now = Date.now()): string | undefined {
    const live = this.#store.countLiveCertificates(node, identity, now);
    if (live < LEDGER_DEFAULTS.maxLivePerIdentity) return undefined;
    return `node ${node} holds ${live} unexpired certificates for ${identity}, the most one node may hold for one identity (${LEDGER_DEFAULTS.maxLivePerIdentity}): is its proxy restarting in a loop? The oldest expire within their lifetime`;
  }

  record(cert: IssuedCertificate, node: string, kind: 'node' | 'workload', now = Date.now()): void {
    this.#store.recordCertificate(this.toRecord(cert, node, kind, now));
  }

  toRecord(cert: IssuedCertificate, node: string, kind: 'node' | 'workload', now = Date.now()): IssuedCertificateRecord {
    return { serial: normalizeSerial(cert.serial), node, kind, identity: cert.uris[0] ?? '', notAfter: cert.notAfter.getTime(), issuedAt: now };
  }

  refusal(node: string, cert: { serial: string; notBefore: Date; notAfter: Date }): string | undefined {
    const serial = normalizeSerial(cert.serial);
    const rec = this.#store.getCertificate(serial);
    const rejoin = `an admin must create a new token for it (nodemesh controller token create --node ${node}) and the node join again`;
    if (rec) {
      if (rec.revokedAt !== undefined) return `node ${node} was revoked at ${new Date(rec.revokedAt).toISOString()} (certificate ${serial}): ${rejoin}`;
      if (rec.kind !== 'node' || rec.node !== node) return `certificate ${serial} was not issued to node ${node}`;
      return undefined;
    }
    // Issued before this controller recorded certificates: take it on (once), unless its node was revoked since.
    if (cert.notBefore.getTime() < this.#trackedSince) {
      const n = this.#store.getNode(node);
      if (n?.revokedAt !== undefined) return `node ${node} was revoked at ${new Date(n.revokedAt).toISOString()}: ${rejoin}`;
      this.#store.recordCertificate({ serial, node, kind: 'node', identity: '', notAfter: cert.notAfter.getTime(), issuedAt: cert.notBefore.getTime() });
      return undefined;
    }
    return `certificate ${serial} of node ${node} is not in this controller's records (was the store restored from an older backup?): ${rejoin}`;
  }

  /** Revokes the node and every live certificate issued to it; returns their serials. */
  revoke(node: string, now = Date.now()): string[] {
    return this.#store.revokeNode(node, now);
  }

  /** Serials of revoked certificates that are still within their validity, sorted. */
  revocationList(now = Date.now()): string[] {
    return this.#store
      .liveCertificates(now)
      .filter((c) => c.revokedAt !== undefined)
      .map((c) => c.serial)
      .sort();
  }

  /** Forgets expired certificates, and tokens that expired more than TOKEN_DEFAULTS.retainSeconds ago. */
  prune(now = Date.now()): void {
    this.#store.deleteExpiredCertificates(now);
    this.#store.deleteExpiredTokens(now - TOKEN_DEFAULTS.retainSeconds * 1000);
  }

  node(node: string): NodeRecord | undefined {
    return this.#store.getNode(node);
  }

  nodes(now = Date.now()): NodeSummary[] {
    const byNode = new Map<string, NodeSummary>();
    for (const n of this.#store.listNodes()) byNode.set(n.node, { node: n.node, joinedAt: n.joinedAt || undefined, revokedAt: n.revokedAt, workloadCertificates: 0 });
    // Oldest first: the last node certificate seen is the newest.
    for (const c of this.#store.liveCertificates(now)) {
      let s = byNode.get(c.node);
      if (!s) byNode.set(c.node, (s = { node: c.node, workloadCertificates: 0 }));
      if (c.kind === 'node') s.certificate = { serial: c.serial, notAfter: c.notAfter, revoked: c.revokedAt !== undefined };
      else if (c.revokedAt === undefined) s.workloadCertificates++;
    }
    return [...byNode.values()]
      .sort((a, b) => (a.node < b.node ? -1 : 1));
  }
}
