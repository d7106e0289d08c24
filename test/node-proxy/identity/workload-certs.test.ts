/** Workload certificates from a real controller: issued, renewed at half life, retried while it is away. */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t } from 'tap';

import { ControllerClient } from '../../../src/controller/client';
import { startController } from '../../../src/controller/controller';
import { CertificateAuthority } from '../../../src/controller/ca';
import { generateKeyAndCsr, WORKLOAD_CERTS_FILE, WorkloadCertificates, type SignFn } from '../../../src/node-proxy/identity';
import { doc, tempDir, testController } from '../../helpers/controller';
import { waitFor } from '../../helpers/wait';

const A = 'nodemesh.io/v1alpha1';
const wl = { apiVersion: A, kind: 'Workload', metadata: { name: 'web-1', namespace: 'shop' }, spec: { node: 'n1', serviceAccount: 'web', addresses: ['198.18.1.1'] } };
const WEB = 'spiffe://cluster.local/ns/shop/sa/web';

t.test('issued for workloads on the node, renewed at half life', async (t) => {
  const dataDir = tempDir(t);
  const first = await testController(t, dataDir);
  await first.admin.apply([doc(wl)]);
  await first.controller.close();
  // The same store, with 4-second workload certificates.
  const c = await startController({ dataDir, listen: '127.0.0.1:0', metricsListen: '127.0.0.1:0', workloadCertLifetimeSeconds: 4 });
  t.teardown(() => c.close());
  const admin = ControllerClient.fromCredentials(c.credentialsPath);
  t.teardown(() => admin.close());
  const { token } = await admin.createToken('n1');
  const creds = JSON.parse(fs.readFileSync(c.credentialsPath, 'utf8')) as { controller: string; ca: string };
  const anon = new ControllerClient({ address: creds.controller, ca: creds.ca });
  t.teardown(() => anon.close());
  const n = await generateKeyAndCsr('spiffe://cluster.local/nodemesh/node/n1');
  const joined = await anon.join(token, 'n1', n.csrPem);
  const node = new ControllerClient({ address: creds.controller, ca: joined.trustBundlePem, cert: joined.certificateChainPem, key: n.keyPem });
  t.teardown(() => node.close());

  const issued: { serial: string; renewal: boolean }[] = [];
  const certs = new WorkloadCertificates({ sign: (csr) => node.sign(csr), onIssued: (c, renewal) => issued.push({ serial: c.serial, renewal }) });
  t.teardown(() => certs.close());
  certs.want(WEB);
  const c1 = await certs.ready(WEB);
  const x = new crypto.X509Certificate(c1.certPem);
  t.match(x.subjectAltName, /URI:spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web/);
  t.ok(x.verify(new crypto.X509Certificate(c1.trustBundlePem).publicKey), 'signed by the trust bundle');
  t.ok(crypto.createPrivateKey(c1.keyPem).asymmetricKeyType === 'ec' && x.checkPrivateKey(crypto.createPrivateKey(c1.keyPem)), 'the key matches');
  t.ok(await waitFor(() => issued.length >= 3, 12_000), 'renewed again and again before expiry');
  t.same(issued.slice(1).map((i) => i.renewal), issued.slice(1).map(() => true));
  t.equal(new Set(issued.map((i) => i.serial)).size, issued.length, 'a new certificate each time');
  t.ok(certs.get(WEB)!.notAfter.getTime() > Date.now(), 'the kept certificate is always valid');
  t.match(certs.list(), [{ identity: WEB, renewals: issued.length - 1 }]);

  // An identity of no workload on this node: refused, retried, reported.
  certs.want('spiffe://cluster.local/ns/shop/sa/other');
  t.ok(await waitFor(() => certs.list().some((l) => /runs no workload/.test(l.lastError ?? '')), 5000), 'the refusal is kept as the last error');
  await t.rejects(certs.ready('spiffe://cluster.local/ns/shop/sa/other', 500), /no certificate for .* within 500 ms: .*runs no workload/);
  certs.drop(WEB);
  t.equal(certs.get(WEB), undefined, 'dropped');
});

t.test('kept in the state dir: a restarted proxy presents them again without the controller; expired ones are dropped', async (t) => {
  const dir = tempDir(t);
  const ca = await CertificateAuthority.loadOrCreate(path.join(dir, 'ca'), { trustDomain: 'cluster.local' });
  const signer =
    (lifetimeSeconds: number): SignFn =>
    async (csr) => {
      const c = await ca.signCsr(csr, { lifetimeSeconds, allowedUris: () => null, kind: 'workload' });
      return { certificateChainPem: c.chainPem, trustBundlePem: ca.rootPem, expiresUnixMs: c.notAfter.getTime() };
    };
  const file = path.join(dir, WORKLOAD_CERTS_FILE);
  const DB = 'spiffe://cluster.local/ns/shop/sa/db';
  const first = new WorkloadCertificates({ sign: signer(3600), file, node: 'n1' });
  first.want(WEB);
  const web = await first.ready(WEB);
  await first.flush();
  first.close();
  // db's certificate lives 3 s only.
  const short = new WorkloadCertificates({ sign: signer(3), file: path.join(dir, 'short.json'), node: 'n1' });
  short.want(DB);
  const db = await short.ready(DB);
  await short.flush();
  short.close();
  const kept = JSON.parse(fs.readFileSync(file, 'utf8')) as { certificates: unknown[] };
  kept.certificates.push(...(JSON.parse(fs.readFileSync(path.join(dir, 'short.json'), 'utf8')) as { certificates: unknown[] }).certificates);
  fs.writeFileSync(file, JSON.stringify({ ...kept, node: 'n1' }), { mode: 0o600 });
  t.equal(fs.statSync(file).mode & 0o777, 0o600, 'the file with the keys is mode 0600');

  const down: SignFn = () => Promise.reject(new Error('14 UNAVAILABLE: the controller is down'));
  const again = new WorkloadCertificates({ sign: down, file, node: 'n1', backoffMs: 50 });
  t.teardown(() => again.close());
  t.same(again.restored.sort(), [DB, WEB].sort(), 'both read back');
  again.want(WEB);
  const got = await again.ready(WEB, 1000);
  t.equal(got.serial, web.serial, 'the same certificate, with the controller down');
  t.equal(got.keyPem, web.keyPem);
  await new Promise((r) => setTimeout(r, Math.max(0, db.notAfter.getTime() - Date.now() + 1100)));
  const later = new WorkloadCertificates({ sign: down, file, node: 'n1', backoffMs: 50 });
  t.teardown(() => later.close());
  t.same(later.restored, [WEB], "db's expired certificate is dropped when the file is read");
  later.want(DB);
  await t.rejects(later.ready(DB, 300), /no certificate for .*db within 300 ms: 14 UNAVAILABLE/, 'and db has none until the controller is back');
  const other = new WorkloadCertificates({ sign: down, file, node: 'n2' });
  t.teardown(() => other.close());
  t.same(other.restored, [], "another node's file is not used");
});

t.test('a revoked certificate is not presented again: kept on disk or held, it is replaced at once', async (t) => {
  const dir = tempDir(t);
  const ca = await CertificateAuthority.loadOrCreate(path.join(dir, 'ca'), { trustDomain: 'cluster.local' });
  let up = true;
  const sign: SignFn = async (csr) => {
    if (!up) throw new Error('14 UNAVAILABLE: the controller is down');
    const c = await ca.signCsr(csr, { lifetimeSeconds: 3600, allowedUris: () => null, kind: 'workload' });
    return { certificateChainPem: c.chainPem, trustBundlePem: ca.rootPem, expiresUnixMs: c.notAfter.getTime() };
  };
  const file = path.join(dir, WORKLOAD_CERTS_FILE);
  const first = new WorkloadCertificates({ sign, file, node: 'n1' });
  first.want(WEB);
  const old = await first.ready(WEB);
  await first.flush();
  first.close();
  // The controller revokes it (its serial in the config, as normalizeSerial spells it) while this proxy is down.
  const revoked = (serial: string): boolean => serial === old.serial.toLowerCase().replace(/^0+(?=.)/, '');

  up = false;
  const offline = new WorkloadCertificates({ sign, file, node: 'n1', backoffMs: 50 });
  t.teardown(() => offline.close());
  t.same(offline.revoked(revoked), [], 'a kept certificate not yet taken is just forgotten');
  offline.want(WEB);
  await t.rejects(offline.ready(WEB, 300), /no certificate for .*web within 300 ms: 14 UNAVAILABLE/, 'so none is presented while the controller is away');

  up = true;
  const held = new WorkloadCertificates({ sign, file, node: 'n1' });
  t.teardown(() => held.close());
  held.want(WEB);
  t.equal((await held.ready(WEB)).serial, old.serial, 'taken from the state dir while nothing says it is revoked');
  t.same(held.revoked(revoked), [WEB], 'then the revocation arrives: replaced');
  const fresh = await held.ready(WEB, 5_000);
  t.not(fresh.serial, old.serial, 'by a new certificate');
  t.same(held.revoked(revoked), [], 'which is not revoked');
});
