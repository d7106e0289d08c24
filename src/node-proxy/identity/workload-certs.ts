/**
 * A certificate for each identity of this node's workloads: a fresh key and
 * CSR per identity, signed by the controller, renewed at half its lifetime,
 * retried with backoff when the controller is away. Keys stay in memory and
 * are never logged.
 */
import * as crypto from 'node:crypto';

import { silentLogger, type Logger } from '../../log';
import { generateKeyAndCsr } from './csr';

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

  constructor(opts: WorkloadCertificatesOptions) {
    this.#opts = opts;
    this.#log = (opts.log ?? silentLogger()).child({ component: 'workload-certs' });
  }

  /** Keeps a certificate for `identity` from now on (idempotent). */
  want(identity: string): void {
    if (this.#closed || this.#entries.has(identity)) return;
    const e: Entry = { identity, backoff: this.#opts.backoffMs ?? 200, renewals: 0, waiters: [], inflight: false };
    this.#entries.set(identity, e);
    void this.#issue(e);
  }

  /** Stops keeping it (no workload of this node has it any more). */
  drop(identity: string): void {
    const e = this.#entries.get(identity);
    if (!e) return;
    clearTimeout(e.timer);
    this.#entries.delete(identity);
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
      // Renew at half the lifetime left now (notBefore is backdated for clock skew).
      const at = (cert.notAfter.getTime() - Date.now()) / 2;
      e.timer = setTimeout(() => void this.#issue(e), Math.max(0, Math.min(at, 2 ** 31 - 1)));
      e.timer.unref();
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
