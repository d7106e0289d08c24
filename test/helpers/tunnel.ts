/**
 * A real mesh CA for HBONE tests and the workload certificates it signs, the
 * way a node proxy gets them: a key and CSR from node-proxy/identity, signed
 * by the controller's CertificateAuthority.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import type { Test } from 'tap';

import { CertificateAuthority, normalizeSerial } from '../../src/controller/ca';
import { generateKeyAndCsr } from '../../src/node-proxy/identity';

export interface WorkloadCreds {
  certPem: string;
  keyPem: string;
  /** normalizeSerial form, as the revocation list holds it. */
  serial: string;
}

export interface TestCa {
  ca: CertificateAuthority;
  /** A workload certificate (chain PEM) for a SPIFFE URI. */
  issue(uri: string, lifetimeSeconds?: number): Promise<WorkloadCreds>;
}

/** A CA in a temporary directory removed when `t` ends. */
export async function testCa(t: Test, trustDomain = 'cluster.local'): Promise<TestCa> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-ca-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const ca = await CertificateAuthority.loadOrCreate(dir, { trustDomain });
  return {
    ca,
    issue: async (uri, lifetimeSeconds = 3600) => {
      const { keyPem, csrPem } = await generateKeyAndCsr(uri);
      const cert = await ca.signCsr(csrPem, { kind: 'workload', lifetimeSeconds, allowedUris: () => null });
      return { certPem: cert.chainPem, keyPem, serial: normalizeSerial(cert.serial) };
    },
  };
}
