/**
 * The CA with real certificates: files on disk, CSRs signed and checked by
 * node:crypto, and a real mutual-TLS handshake with what it issues.
 */
import 'reflect-metadata';

import * as x509 from '@peculiar/x509';
import { createPrivateKey, X509Certificate, webcrypto } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { t } from 'tap';
import type { Test } from 'tap';

import {
  normalizeSerial,
  CaError,
  CertificateAuthority,
  parseSpiffeId,
  spiffeAdminId,
  spiffeNodeId,
  spiffeWorkloadId,
} from '../../../src/controller/ca';
import { generateKeyAndCsr } from '../../../src/node-proxy/identity';

const TD = 'cluster.local';
const WEB = `spiffe://${TD}/ns/default/sa/web`;
const ALLOW_ALL = (): null => null;
const EKU_SERVER = '1.3.6.1.5.5.7.3.1';
const EKU_CLIENT = '1.3.6.1.5.5.7.3.2';

function tmpDir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-ca-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function newCa(t: Test, trustDomain = TD): Promise<{ ca: CertificateAuthority; dir: string }> {
  const dir = tmpDir(t);
  return { ca: await CertificateAuthority.loadOrCreate(dir, { trustDomain }), dir };
}

/** A CSR with arbitrary SANs, for the cases generateKeyAndCsr cannot produce. */
async function csrWith(names: { type: 'url' | 'dns' | 'ip' | 'email'; value: string }[]): Promise<string> {
  const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    keys,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    extensions: [new x509.SubjectAlternativeNameExtension(names, true)],
  });
  return csr.toString('pem');
}

async function rejectsCode(t: Test, p: Promise<unknown>, code: string, msg: RegExp, name: string): Promise<void> {
  await t.rejects(p, { name: 'CaError', code, message: msg }, name);
}

t.test('SPIFFE IDs: build and parse', async (t) => {
  t.equal(spiffeWorkloadId(TD, 'default', 'web'), WEB);
  t.equal(spiffeNodeId(TD, 'node-1'), `spiffe://${TD}/nodemesh/node/node-1`);
  t.equal(spiffeAdminId(TD), `spiffe://${TD}/nodemesh/admin`);
  t.throws(() => spiffeWorkloadId(TD, 'a/b', 'web'), { code: 'NM_ERR_CA_BAD_ID', message: /namespace "a\/b"/ });
  t.throws(() => spiffeWorkloadId('Cluster.Local', 'a', 'b'), { code: 'NM_ERR_CA_BAD_ID', message: /trust domain/ });
  t.throws(() => spiffeNodeId(TD, '..'), { code: 'NM_ERR_CA_BAD_ID' });

  const cases: [string, ReturnType<typeof parseSpiffeId>][] = [
    [WEB, { trustDomain: TD, path: '/ns/default/sa/web', namespace: 'default', serviceAccount: 'web' }],
    [`spiffe://${TD}/nodemesh/node/n1`, { trustDomain: TD, path: '/nodemesh/node/n1' }],
    [`spiffe://${TD}`, { trustDomain: TD, path: '' }],
    [`spiffe://${TD}/ns/a/sa/b/extra`, { trustDomain: TD, path: '/ns/a/sa/b/extra' }],
    ['SPIFFE://cluster.local/ns/a/sa/b', null],
    ['spiffe://Cluster.local/ns/a/sa/b', null],
    ['spiffe://cluster.local:8443/ns/a', null],
    ['spiffe://user@cluster.local/ns/a', null],
    ['spiffe://cluster.local/ns//sa/b', null],
    ['spiffe://cluster.local/ns/a/', null],
    ['spiffe://cluster.local/ns/../sa/b', null],
    ['spiffe://cluster.local/ns/a?x=1', null],
    ['spiffe://cluster.local/ns/a#f', null],
    ['spiffe:///ns/a', null],
    ['https://cluster.local/ns/a/sa/b', null],
    [`spiffe://${TD}/${'a'.repeat(2048)}`, null],
  ];
  for (const [uri, want] of cases) t.same(parseSpiffeId(uri), want, uri.slice(0, 60));
});

t.test('loadOrCreate makes a root, reloads the same one, and refuses broken files', async (t) => {
  const { ca, dir } = await newCa(t);
  const keyPath = path.join(dir, 'ca.key');
  const certPath = path.join(dir, 'ca.crt');
  t.equal(fs.statSync(keyPath).mode & 0o777, 0o600, 'key is private to its owner');
  t.match(fs.readFileSync(keyPath, 'utf8'), /^-----BEGIN PRIVATE KEY-----/, 'PKCS#8 PEM');
  t.same(fs.readdirSync(dir).sort(), ['ca.crt', 'ca.key'], 'no temp files left behind');

  const root = new X509Certificate(ca.rootPem);
  t.equal(root.subject, `CN=nodemesh root CA ${TD}`);
  t.equal(root.issuer, root.subject);
  t.ok(root.ca);
  t.ok(root.verify(root.publicKey), 'self-signed');
  t.equal(root.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  const years = (Date.parse(root.validTo) - Date.now()) / (365.25 * 86400e3);
  t.ok(years > 9.9 && years < 10.1, `about 10 years (${years.toFixed(2)})`);
  const parsed = new x509.X509Certificate(ca.rootPem);
  t.equal(parsed.getExtension(x509.BasicConstraintsExtension)?.critical, true, 'basicConstraints critical');
  const ku = parsed.getExtension(x509.KeyUsagesExtension);
  t.equal(ku?.critical, true, 'keyUsage critical');
  t.equal(ku?.usages, x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
  t.ok(parsed.getExtension(x509.SubjectKeyIdentifierExtension), 'has SKI');
  t.equal(parsed.signatureAlgorithm.hash.name, 'SHA-256');

  const again = await CertificateAuthority.loadOrCreate(dir, { trustDomain: TD });
  t.equal(again.rootPem, ca.rootPem, 'same root after reload');
  const csr = await generateKeyAndCsr(WEB);
  const issued = await again.signCsr(csr.csrPem, { lifetimeSeconds: 3600, allowedUris: ALLOW_ALL, kind: 'workload' });
  t.ok(new X509Certificate(issued.certPem).verify(root.publicKey), 'the reloaded CA signs with the same key');

  // Each broken state in its own copy of the directory.
  const broken = async (name: string, mutate: (d: string) => void, code: string, msg: RegExp): Promise<void> => {
    const d = tmpDir(t);
    fs.copyFileSync(certPath, path.join(d, 'ca.crt'));
    fs.copyFileSync(keyPath, path.join(d, 'ca.key'));
    mutate(d);
    await rejectsCode(t, CertificateAuthority.loadOrCreate(d, { trustDomain: TD }), code, msg, name);
  };
  await broken('garbage key', (d) => fs.writeFileSync(path.join(d, 'ca.key'), 'not a key\n'), 'NM_ERR_CA_LOAD', /cannot parse .*ca\.key.*remove both ca\.crt and ca\.key/);
  await broken(
    'truncated key',
    (d) => fs.writeFileSync(path.join(d, 'ca.key'), fs.readFileSync(keyPath, 'utf8').slice(0, 80)),
    'NM_ERR_CA_LOAD',
    /ca\.key/,
  );
  const other = await newCa(t);
  await broken('key of another root', (d) => fs.copyFileSync(path.join(other.dir, 'ca.key'), path.join(d, 'ca.key')), 'NM_ERR_CA_KEY_MISMATCH', /ca\.key is not the private key of .*ca\.crt/);
  await broken('garbage cert', (d) => fs.writeFileSync(path.join(d, 'ca.crt'), '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'), 'NM_ERR_CA_LOAD', /cannot parse .*ca\.crt/);
  await broken('lone key', (d) => fs.rmSync(path.join(d, 'ca.crt')), 'NM_ERR_CA_LOAD', /found .*ca\.key but not .*ca\.crt/);
  await broken('lone cert', (d) => fs.rmSync(path.join(d, 'ca.key')), 'NM_ERR_CA_LOAD', /found .*ca\.crt but not .*ca\.key/);
  await rejectsCode(t, CertificateAuthority.loadOrCreate(tmpDir(t), { trustDomain: 'Bad Domain' }), 'NM_ERR_CA_BAD_ID', /trust domain/, 'bad trust domain');
});

t.test('fromFiles takes an operator root and refuses a leaf', async (t) => {
  const { ca, dir } = await newCa(t);
  const op = await CertificateAuthority.fromFiles(path.join(dir, 'ca.crt'), path.join(dir, 'ca.key'), { trustDomain: TD });
  t.equal(op.rootPem, ca.rootPem);

  const leafDir = tmpDir(t);
  const leaf = await ca.issueClientCertificate(spiffeAdminId(TD), 3600);
  fs.writeFileSync(path.join(leafDir, 'leaf.crt'), leaf.certPem);
  fs.writeFileSync(path.join(leafDir, 'leaf.key'), leaf.keyPem);
  await rejectsCode(
    t,
    CertificateAuthority.fromFiles(path.join(leafDir, 'leaf.crt'), path.join(leafDir, 'leaf.key'), { trustDomain: TD }),
    'NM_ERR_CA_LOAD',
    /leaf\.crt is not a CA certificate/,
    'leaf is not a CA',
  );
  await rejectsCode(
    t,
    CertificateAuthority.fromFiles(path.join(leafDir, 'missing.crt'), path.join(leafDir, 'leaf.key'), { trustDomain: TD }),
    'NM_ERR_CA_LOAD',
    /cannot read .*missing\.crt/,
    'missing file is named',
  );
});

t.test('signCsr issues a workload certificate', async (t) => {
  const { ca } = await newCa(t);
  const root = new X509Certificate(ca.rootPem);
  const { keyPem, csrPem } = await generateKeyAndCsr(WEB);
  t.match(keyPem, /^-----BEGIN PRIVATE KEY-----/);
  let seen: string[] = [];
  const before = Date.now();
  const issued = await ca.signCsr(csrPem, {
    lifetimeSeconds: 86400,
    allowedUris: (uris) => {
      seen = uris;
      return null;
    },
    kind: 'workload',
  });
  t.same(seen, [WEB], 'allowedUris saw the requested identity');
  t.same(issued.uris, [WEB]);

  const cert = new X509Certificate(issued.certPem);
  t.equal(cert.issuer, root.subject);
  t.ok(cert.checkIssued(root));
  t.ok(cert.verify(root.publicKey), 'signed by the root');
  t.notOk(cert.ca);
  t.notOk(cert.subject, 'empty subject'); // Node.js 24 reads it as '', earlier ones as undefined
  t.equal(cert.subjectAltName, `URI:${WEB}`);
  t.same([...(cert.keyUsage ?? [])].sort(), [EKU_SERVER, EKU_CLIENT], 'extKeyUsage serverAuth+clientAuth');
  t.equal(normalizeSerial(cert.serialNumber), issued.serial, 'the serial as every comparison spells it');
  // 16 random bytes, positive: below 2^127 (its spelling drops leading zeros).
  t.match(issued.serial, /^[1-9a-f][0-9a-f]{0,31}$/);
  t.ok(BigInt(`0x${issued.serial}`) < 2n ** 127n, '16 bytes, positive');
  t.ok(cert.checkPrivateKey(createPrivateKey(keyPem)), 'certificate carries the CSR key');

  const notBefore = Date.parse(cert.validFrom);
  const notAfter = Date.parse(cert.validTo);
  t.equal(notBefore, issued.notBefore.getTime());
  t.equal(notAfter, issued.notAfter.getTime());
  t.ok(Math.abs(notBefore - (before - 60_000)) < 3000, 'notBefore backdated 60s');
  t.ok(Math.abs(notAfter - (before + 86400e3)) < 3000, 'notAfter = now + lifetime');

  const parsed = new x509.X509Certificate(issued.certPem);
  t.equal(parsed.getExtension(x509.SubjectAlternativeNameExtension)?.critical, true, 'SAN critical with an empty subject');
  const ku = parsed.getExtension(x509.KeyUsagesExtension);
  t.equal(ku?.critical, true);
  t.equal(ku?.usages, x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment);
  t.equal(parsed.getExtension(x509.BasicConstraintsExtension)?.ca, false);
  const aki = parsed.getExtension(x509.AuthorityKeyIdentifierExtension);
  const rootSki = new x509.X509Certificate(ca.rootPem).getExtension(x509.SubjectKeyIdentifierExtension);
  t.equal(aki?.keyId, rootSki?.keyId, 'AKI names the root key');
  t.equal(parsed.signatureAlgorithm.hash.name, 'SHA-256');

  t.equal(issued.chainPem, issued.certPem + ca.rootPem, 'chain is leaf then root');

  // The CSR's subject is the requester's text: none of it reaches the certificate, the identity is the SAN alone.
  for (const cn of ['web.default', 'spiffe://cluster.local/ns/kube-system/sa/admin', 'x'.repeat(1000)]) {
    const withCn = await ca.signCsr((await generateKeyAndCsr(WEB, cn)).csrPem, { lifetimeSeconds: 60, allowedUris: ALLOW_ALL, kind: 'workload' });
    t.notOk(new X509Certificate(withCn.certPem).subject, `CSR CN ${cn.slice(0, 20)}: empty subject`);
    t.equal(new x509.X509Certificate(withCn.certPem).getExtension(x509.SubjectAlternativeNameExtension)?.critical, true, 'and a critical SAN');
  }
  const nodeWithCn = await ca.signCsr((await generateKeyAndCsr(spiffeNodeId(TD, 'n1'), 'n2')).csrPem, { lifetimeSeconds: 60, allowedUris: ALLOW_ALL, kind: 'node' });
  t.notOk(new X509Certificate(nodeWithCn.certPem).subject, 'a node certificate ignores the CSR CN too');

  const node = await ca.signCsr((await generateKeyAndCsr(spiffeNodeId(TD, 'n1'))).csrPem, { lifetimeSeconds: 60, allowedUris: ALLOW_ALL, kind: 'node' });
  t.same(new X509Certificate(node.certPem).keyUsage, [EKU_CLIENT], 'node: clientAuth only');
});

t.test('signCsr never outlives the root', async (t) => {
  const { ca } = await newCa(t);
  const rootNotAfter = Date.parse(new X509Certificate(ca.rootPem).validTo);
  const issued = await ca.signCsr((await generateKeyAndCsr(WEB)).csrPem, { lifetimeSeconds: 20 * 365 * 86400, allowedUris: ALLOW_ALL, kind: 'workload' });
  t.equal(issued.notAfter.getTime(), rootNotAfter);
});

t.test('signCsr refuses bad requests', async (t) => {
  const { ca } = await newCa(t);
  const sign = (csrPem: string, kind: 'workload' | 'node' | 'client' | 'server' = 'workload', allowedUris: (u: string[]) => string | null = ALLOW_ALL) =>
    ca.signCsr(csrPem, { lifetimeSeconds: 3600, allowedUris, kind });

  // Same-length edit inside the signed body: parses fine, signature no longer matches.
  const good = new x509.Pkcs10CertificateRequest((await generateKeyAndCsr(WEB)).csrPem);
  const der = Buffer.from(good.rawData);
  const at = der.indexOf(Buffer.from('sa/web'));
  t.ok(at > 0);
  der.write('sa/wex', at, 'latin1');
  const tampered = x509.PemConverter.encode(der, 'CERTIFICATE REQUEST');
  t.ok(new x509.Pkcs10CertificateRequest(tampered), 'tampered CSR still parses');
  await rejectsCode(t, sign(tampered), 'NM_ERR_CA_BAD_CSR', /signature does not verify/, 'tampered signature');

  await rejectsCode(t, sign('hello'), 'NM_ERR_CA_BAD_CSR', /cannot parse the CSR/, 'not a CSR');
  await rejectsCode(t, sign(await csrWith([{ type: 'url', value: WEB }, { type: 'url', value: `spiffe://${TD}/ns/default/sa/db` }])), 'NM_ERR_CA_BAD_CSR', /exactly one URI SAN.*carries 2/, 'two URIs');
  await rejectsCode(t, sign(await csrWith([{ type: 'url', value: WEB }, { type: 'dns', value: 'web.example' }])), 'NM_ERR_CA_BAD_CSR', /also asks for dns:web\.example/, 'URI plus DNS');
  await rejectsCode(t, sign(await csrWith([{ type: 'dns', value: 'web.example' }])), 'NM_ERR_CA_BAD_CSR', /also asks for dns/, 'DNS only');
  await rejectsCode(t, sign(await csrWith([])), 'NM_ERR_CA_BAD_CSR', /exactly one URI SAN.*carries 0/, 'no SAN');

  await rejectsCode(t, sign((await generateKeyAndCsr(WEB)).csrPem, 'workload', () => 'node n1 runs no workload with identity default/web'), 'NM_ERR_CA_REFUSED', /^node n1 runs no workload with identity default\/web$/, 'allowedUris reason surfaces');
  await rejectsCode(t, sign((await generateKeyAndCsr('spiffe://other.td/ns/default/sa/web')).csrPem), 'NM_ERR_CA_REFUSED', /trust domain other\.td/, 'foreign trust domain');
  await rejectsCode(t, sign((await generateKeyAndCsr(spiffeNodeId(TD, 'n1'))).csrPem, 'workload'), 'NM_ERR_CA_REFUSED', /not a workload identity/, 'node ID as workload');
  await rejectsCode(t, sign((await generateKeyAndCsr(WEB)).csrPem, 'node'), 'NM_ERR_CA_REFUSED', /not a node identity/, 'workload ID as node');
  await rejectsCode(t, ca.signCsr((await generateKeyAndCsr(WEB)).csrPem, { lifetimeSeconds: 0, allowedUris: ALLOW_ALL, kind: 'workload' }), 'NM_ERR_CA_BAD_ARGUMENT', /lifetimeSeconds/, 'zero lifetime');

  let called = false;
  await rejectsCode(t, sign(tampered, 'workload', () => ((called = true), null)), 'NM_ERR_CA_BAD_CSR', /signature/, 'tampered again');
  t.notOk(called, 'allowedUris is not consulted for an unverified CSR');
});

t.test('verifyPeer', async (t) => {
  const { ca } = await newCa(t);
  const { ca: otherCa } = await newCa(t);
  const issued = await ca.signCsr((await generateKeyAndCsr(WEB)).csrPem, { lifetimeSeconds: 3600, allowedUris: ALLOW_ALL, kind: 'workload' });

  const ok = ca.verifyPeer(issued.certPem);
  t.same(ok, { uris: [WEB], notBefore: issued.notBefore, notAfter: issued.notAfter, serial: issued.serial });
  t.same(ca.verifyPeer(new X509Certificate(issued.certPem).raw), ok, 'DER works too');

  // The serial a peer is known by is the one the CA recorded, also when its hex starts with 0
  // (node:crypto keeps the zero, the ledger and revocation list drop it): about 1 in 16 serials.
  const one = (await generateKeyAndCsr(WEB)).csrPem;
  let zero: Awaited<ReturnType<typeof ca.signCsr>> | undefined;
  for (let i = 0; i < 400 && !zero; i++) {
    const c = await ca.signCsr(one, { lifetimeSeconds: 3600, allowedUris: ALLOW_ALL, kind: 'workload' });
    if (new X509Certificate(c.certPem).serialNumber.startsWith('0')) zero = c;
  }
  t.ok(zero, 'a serial with a leading zero came up');
  if (zero) {
    t.equal(ca.verifyPeer(zero.certPem).serial, zero.serial, 'verifyPeer names it as the CA recorded it');
    t.equal(zero.serial, normalizeSerial(zero.serial), 'in the one spelling every comparison uses');
  }

  const foreign = await otherCa.signCsr((await generateKeyAndCsr(WEB)).csrPem, { lifetimeSeconds: 3600, allowedUris: ALLOW_ALL, kind: 'workload' });
  t.throws(() => ca.verifyPeer(foreign.certPem), { code: 'NM_ERR_CA_UNTRUSTED', message: /not signed by this mesh's root/ }, 'another CA');
  t.throws(() => ca.verifyPeer(otherCa.rootPem), { code: 'NM_ERR_CA_UNTRUSTED' }, 'another root');
  t.throws(() => ca.verifyPeer(issued.certPem, new Date(issued.notAfter.getTime() + 1000)), { code: 'NM_ERR_CA_UNTRUSTED', message: /expired/ }, 'expired');
  t.throws(() => ca.verifyPeer(issued.certPem, new Date(issued.notBefore.getTime() - 1000)), { code: 'NM_ERR_CA_UNTRUSTED', message: /not valid before/ }, 'not yet valid');
  t.throws(() => ca.verifyPeer(ca.rootPem), { code: 'NM_ERR_CA_UNTRUSTED', message: /root CA certificate itself/ }, 'the root itself');
  t.throws(() => ca.verifyPeer(Buffer.from('junk')), { code: 'NM_ERR_CA_UNTRUSTED', message: /cannot be parsed/ }, 'junk');

  const admin = await ca.issueClientCertificate(spiffeAdminId(TD), 600);
  t.same(ca.verifyPeer(admin.certPem).uris, [spiffeAdminId(TD)]);
  t.same(new X509Certificate(admin.certPem).keyUsage, [EKU_CLIENT]);
  t.ok(new X509Certificate(admin.certPem).checkPrivateKey(createPrivateKey(admin.keyPem)));
  await rejectsCode(t, ca.issueClientCertificate('spiffe://other.td/nodemesh/admin', 600), 'NM_ERR_CA_REFUSED', /trust domain/, 'client in foreign domain');

  try {
    ca.verifyPeer(foreign.certPem);
    t.fail('foreign certificate accepted');
  } catch (err) {
    t.ok(err instanceof CaError, 'throws a CaError');
  }
});

t.test('mutual TLS with a server certificate and a workload certificate', async (t) => {
  const { ca } = await newCa(t);
  const server = await ca.issueServerCertificate(['localhost', '127.0.0.1'], 3600);
  const serverCert = new X509Certificate(server.certPem);
  t.equal(serverCert.subjectAltName, 'DNS:localhost, IP Address:127.0.0.1');
  t.same(serverCert.keyUsage, [EKU_SERVER]);
  await rejectsCode(t, ca.issueServerCertificate(['bad host'], 60), 'NM_ERR_CA_BAD_ARGUMENT', /neither an IP address nor a DNS name/, 'bad host');

  const client = await generateKeyAndCsr(WEB);
  const clientCert = await ca.signCsr(client.csrPem, { lifetimeSeconds: 3600, allowedUris: ALLOW_ALL, kind: 'workload' });

  const seenByServer = new Promise<{ authorized: boolean; error: unknown; san: string | undefined; uris: string[] }>((resolve, reject) => {
    const srv = tls.createServer(
      { key: server.keyPem, cert: server.chainPem, ca: ca.rootPem, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' },
      (sock) => {
        const peer = sock.getPeerCertificate();
        resolve({ authorized: sock.authorized, error: sock.authorizationError, san: peer.subjectaltname, uris: ca.verifyPeer(peer.raw).uris });
        sock.end('hello');
      },
    );
    srv.on('tlsClientError', reject);
    t.teardown(() => srv.close());
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      const sock = tls.connect({ host: '127.0.0.1', port, key: client.keyPem, cert: clientCert.certPem, ca: ca.rootPem });
      sock.on('secureConnect', () => {
        t.ok(sock.authorized, `client authorized the server (${String(sock.authorizationError ?? 'ok')})`);
        t.equal(sock.getPeerCertificate().subjectaltname, 'DNS:localhost, IP Address:127.0.0.1');
      });
      sock.on('data', () => sock.end());
      sock.on('error', reject);
      t.teardown(() => sock.destroy());
    });
  });
  const seen = await seenByServer;
  t.ok(seen.authorized, `server authorized the client (${String(seen.error ?? 'ok')})`);
  t.equal(seen.san, `URI:${WEB}`);
  t.same(seen.uris, [WEB]);

  // The same client certificate from another CA must not get through.
  const { ca: otherCa } = await newCa(t);
  const foreign = await otherCa.signCsr(client.csrPem, { lifetimeSeconds: 3600, allowedUris: ALLOW_ALL, kind: 'workload' });
  const refused = await new Promise<boolean>((resolve) => {
    const srv = tls.createServer({ key: server.keyPem, cert: server.chainPem, ca: ca.rootPem, requestCert: true, rejectUnauthorized: true }, (sock) => {
      resolve(false);
      sock.destroy();
    });
    srv.on('tlsClientError', () => resolve(true));
    t.teardown(() => srv.close());
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      const sock = tls.connect({ host: '127.0.0.1', port, key: client.keyPem, cert: foreign.certPem, ca: ca.rootPem });
      sock.on('error', () => undefined);
      t.teardown(() => sock.destroy());
    });
  });
  t.ok(refused, 'server rejects a client certificate from another CA');
});
