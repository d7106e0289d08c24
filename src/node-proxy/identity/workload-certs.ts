/**
 * A certificate for each identity of this node's workloads: a fresh key and
 * CSR per identity, signed by the controller, renewed at half its lifetime,
 * retried with backoff when the controller is away. Keys are never logged.
 *
 * With `file`, the certificates and their keys are also kept in the state dir
 * (mode 0600, beside the node's own key), rewritten after each issue or drop:
 * a proxy restarted while the controller is away presents them again, so
 * cross-node mTLS keeps working until they expire (see docs/architecture.md,
 * 'No serving before policy'). Expired ones, and pairs whose key does not
 * match, are dropped when the file is read.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

import { normalizeSerial } from '../../api/identity';
import { silentLogger, type Logger } from '../../log';
import { writeFileAtomic } from '../state/atomic-file';
import { generateKeyAndCsr } from './csr';

export const WORKLOAD_CERTS_FILE = 'workload-certs.json';

export interface WorkloadCertificate {
  identity: string;
  certPem: string;
  keyPem: string;
  trustBundlePem: string;
  notBefore: Date;
  notAfter: Date;
  serial: string;
}

export interface SignFn {
  (csrPem: string): Promise<{ certificateChainPem: string; trustBundlePem: string; expiresUnixMs: number }>;
}

export interface WorkloadCertificatesOptions {
  sign: SignFn;
  log?: Logger;
  /** First retry delay after a failure; doubles up to maxBackoffMs. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Called after each new certificate (first or renewed). */
  onIssued?: (cert: WorkloadCertificate, renewal: boolean) => void;
  /** Called after each failed request (it is retried). */
  onFailed?: (identity: string, err: string) => void;
  /** Where the certificates and keys are kept across restarts (mode 0600); none: in memory only. */
  file?: string;
  /** The node they are kept for: a file of another node is not used. */
  node?: string;
}

interface StoredCertificate {
  identity: string;
  certPem: string;
  keyPem: string;
  trustBundlePem: string;
}

interface Entry {
  identity: string;
  cert?: WorkloadCertificate;
  timer?: NodeJS.Timeout;
  backoff: number;
  renewals: number;
  lastError?: string;
  waiters: ((c: WorkloadCertificate) => void)[];
  inflight: boolean;
}

export class WorkloadCertificates {
  readonly #opts: WorkloadCertificatesOptions;
  readonly #log: Logger;
  readonly #entries = new Map<string, Entry>();
  #closed = false;
  /** Read from the file at start, taken by want() for its identity. */
  readonly #restored = new Map<string, WorkloadCertificate>();
  #saving: Promise<void> | undefined;
  #dirty = false;

  constructor(opts: WorkloadCertificatesOptions) {
    this.#opts = opts;
    this.#log = (opts.log ?? silentLogger()).child({ component: 'workload-certs' });
    if (opts.file) this.#restore(opts.file);
  }

  /** Identities whose certificate was read from the file and not yet taken. */
  get restored(): string[] {
    return [...this.#restored.keys()];
  }

  #restore(file: string): void {
    let raw: { node?: unknown; certificates?: unknown };
    try {
      raw = JSON.parse(fs.readFileSync(file, 'utf8')) as typeof raw;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      this.#log.error({ file, err: (err as Error).message }, `workload certificates in ${file} are not used: the file cannot be read or is not JSON; new ones are requested from the controller (remove the file to silence this)`);
      return;
    }
    if (this.#opts.node !== undefined && raw.node !== this.#opts.node) {
      this.#log.error({ file, holds: raw.node, node: this.#opts.node }, `workload certificates in ${file} are of node ${String(raw.node)}, not this one: not used (give each node its own --state-dir)`);
      return;
    }
    const now = Date.now();
    let expired = 0;
    let bad = 0;
    for (const c of Array.isArray(raw.certificates) ? (raw.certificates as StoredCertificate[]) : []) {
      try {
        const x = new crypto.X509Certificate(c.certPem);
        if (!x.checkPrivateKey(crypto.createPrivateKey(c.keyPem))) throw new Error('key does not match');
        const cert: WorkloadCertificate = { identity: c.identity, certPem: c.certPem, keyPem: c.keyPem, trustBundlePem: c.trustBundlePem, notBefore: new Date(x.validFrom), notAfter: new Date(x.validTo), serial: x.serialNumber };
        if (cert.notAfter.getTime() <= now) expired++;
        else this.#restored.set(c.identity, cert);
      } catch {
        bad++;
      }
    }
    this.#log.info({ file, restored: this.#restored.size, expired, unusable: bad }, 'workload certificates read from the state dir');
  }

  /** Rewrites the file with the certificates held now; coalesced, one write at a time. */
  #save(): void {
    const file = this.#opts.file;
    if (!file || this.#closed) return;
    this.#dirty = true;
    this.#saving ??= (async () => {
      try {
        while (this.#dirty && !this.#closed) {
          this.#dirty = false;
          const certificates: StoredCertificate[] = [];
          for (const e of this.#entries.values()) if (e.cert) certificates.push({ identity: e.identity, certPem: e.cert.certPem, keyPem: e.cert.keyPem, trustBundlePem: e.cert.trustBundlePem });
          await writeFileAtomic(file, JSON.stringify({ node: this.#opts.node, certificates }) + '\n', 0o600).catch((err: Error) =>
            this.#log.warn({ file, err: err.message }, 'cannot keep the workload certificates in the state dir (a restart while the controller is away would have none)'),
          );
        }
      } finally {
        this.#saving = undefined;
      }
    })();
  }

  /** Resolves once the file holds what is held now. */
  async flush(): Promise<void> {
    while (this.#saving) await this.#saving;
  }

  /** Keeps a certificate for `identity` from now on (idempotent). */
  want(identity: string): void {
    if (this.#closed || this.#entries.has(identity)) return;
    const e: Entry = { identity, backoff: this.#opts.backoffMs ?? 200, renewals: 0, waiters: [], inflight: false };
    this.#entries.set(identity, e);
    const kept = this.#restored.get(identity);
    this.#restored.delete(identity);
    if (kept && kept.notAfter.getTime() > Date.now()) {
      e.cert = kept;
      this.#log.info({ identity, serial: kept.serial, notAfter: kept.notAfter }, 'workload certificate taken from the state dir');
      this.#opts.onIssued?.(kept, false);
      this.#renewLater(e, kept);
      return;
    }
    void this.#issue(e);
  }

  /** Renews at half the lifetime left now (notBefore is backdated for clock skew). */
  #renewLater(e: Entry, cert: WorkloadCertificate): void {
    const at = (cert.notAfter.getTime() - Date.now()) / 2;
    e.timer = setTimeout(() => void this.#issue(e), Math.max(0, Math.min(at, 2 ** 31 - 1)));
    e.timer.unref();
  }

  /** Stops keeping it (no workload of this node has it any more). */
  drop(identity: string): void {
    const e = this.#entries.get(identity);
    if (!e) return;
    clearTimeout(e.timer);
    this.#entries.delete(identity);
    if (e.cert) this.#save();
  }

  /**
   * Certificates the controller revoked (a kept one read from the state dir
   * included) are not presented again: peers would refuse them. Each is
   * replaced by a new one at once; until then tunnels for it wait, as for a
   * first certificate. Returns the identities replaced.
   */
  revoked(isRevoked: (serial: string) => boolean): string[] {
    const replaced: string[] = [];
    for (const [identity, c] of this.#restored) if (isRevoked(normalizeSerial(c.serial))) this.#restored.delete(identity);
    for (const e of this.#entries.values()) {
      if (!e.cert || !isRevoked(normalizeSerial(e.cert.serial))) continue;
      this.#log.warn({ event: 'security', identity: e.identity, serial: e.cert.serial }, 'workload certificate revoked by the controller: asking for a new one');
      e.cert = undefined;
      clearTimeout(e.timer);
      replaced.push(e.identity);
      this.#save();
      void this.#issue(e);
    }
    return replaced;
  }

  /** Identities currently kept. */
  wanted(): string[] {
    return [...this.#entries.keys()];
  }

  get(identity: string): WorkloadCertificate | undefined {
    const c = this.#entries.get(identity)?.cert;
    return c && c.notAfter.getTime() > Date.now() ? c : undefined;
  }

  /** Resolves with the identity's certificate once there is one. */
  ready(identity: string, timeoutMs = 10_000): Promise<WorkloadCertificate> {
    const have = this.get(identity);
    if (have) return Promise.resolve(have);
    const e = this.#entries.get(identity);
    if (!e) return Promise.reject(new Error(`no certificate is kept for ${identity} (no workload of this node has it)`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no certificate for ${identity} within ${timeoutMs} ms${e.lastError ? `: ${e.lastError}` : ''}`)), timeoutMs);
      e.waiters.push((c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
  }

  list(): { identity: string; notAfter?: string; renewals: number; lastError?: string }[] {
    return [...this.#entries.values()].map((e) => ({ identity: e.identity, notAfter: e.cert?.notAfter.toISOString(), renewals: e.renewals, lastError: e.lastError }));
  }

  async #issue(e: Entry): Promise<void> {
    if (e.inflight || this.#closed) return;
    e.inflight = true;
    const renewal = e.cert !== undefined;
    try {
      const { keyPem, csrPem } = await generateKeyAndCsr(e.identity);
      const r = await this.#opts.sign(csrPem);
      if (this.#entries.get(e.identity) !== e) return; // dropped meanwhile
      const x = new crypto.X509Certificate(r.certificateChainPem);
      const cert: WorkloadCertificate = {
        identity: e.identity,
        certPem: r.certificateChainPem,
        keyPem,
        trustBundlePem: r.trustBundlePem,
        notBefore: new Date(x.validFrom),
        notAfter: new Date(x.validTo),
        serial: x.serialNumber,
      };
      e.cert = cert;
      e.lastError = undefined;
      e.backoff = this.#opts.backoffMs ?? 200;
      if (renewal) e.renewals++;
      this.#log.info({ identity: e.identity, serial: cert.serial, notAfter: cert.notAfter, renewal }, renewal ? 'workload certificate renewed' : 'workload certificate issued');
      this.#opts.onIssued?.(cert, renewal);
      for (const w of e.waiters.splice(0)) w(cert);
      this.#save();
      this.#renewLater(e, cert);
    } catch (err) {
      e.lastError = err instanceof Error ? err.message : String(err);
      this.#log.warn({ identity: e.identity, err: e.lastError, retryInMs: e.backoff }, 'workload certificate request failed');
      this.#opts.onFailed?.(e.identity, e.lastError);
      if (this.#entries.get(e.identity) === e && !this.#closed) {
        e.timer = setTimeout(() => void this.#issue(e), e.backoff);
        e.timer.unref();
        e.backoff = Math.min(e.backoff * 2, this.#opts.maxBackoffMs ?? 30_000);
      }
    } finally {
      e.inflight = false;
    }
  }

  close(): void {
    this.#closed = true;
    for (const e of this.#entries.values()) clearTimeout(e.timer);
    this.#entries.clear();
  }
}
