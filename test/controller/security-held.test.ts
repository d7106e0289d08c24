/**
 * What a node certificate (and a workload certificate) can get out of the
 * controller, over its real gRPC API on TLS: workload certificates only for
 * workloads placed on that node, one SPIFFE URI and nothing else, ECDSA P-256
 * only, never a CA; and no admin API at all. Each refusal changes nothing,
 * and the legitimate request beside it still succeeds.
 */
import 'reflect-metadata';

import * as x509 from '@peculiar/x509';
import { spawnSync } from 'node:child_process';
import { X509Certificate, webcrypto } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

import * as grpc from '@grpc/grpc-js';
import { t } from 'tap';
import type { Test } from 'tap';

import { CertificateAuthority, spiffeAdminId, spiffeNodeId, spiffeWorkloadId } from '../../src/controller/ca';
import { ControllerClient, loadCredentials } from '../../src/controller/client';
import { HbonePool, HboneServer } from '../../src/node-proxy/tunnel';
import { doc, httpGet, refused as refusedOrThrow, tempDir, testController, type TestController } from '../helpers/controller';

/** Each case of a table reports on its own: a call that was served comes back as code 'SERVED'. */
const refused = (p: Promise<unknown>) => refusedOrThrow(p, { orServed: true });

const A = 'nodemesh.io/v1alpha1';
const TD = 'cluster.local';
const WEB = spiffeWorkloadId(TD, 'shop', 'web');
const API = spiffeWorkloadId(TD, 'shop', 'api');
const EKU_SERVER = '1.3.6.1.5.5.7.3.1';
const EKU_CLIENT = '1.3.6.1.5.5.7.3.2';

const workload = (name: string, namespace: string, node: string, sa: string, ip: string) => ({
  apiVersion: A,
  kind: 'Workload',
  metadata: { name, namespace, labels: { app: sa } },
  spec: { node, serviceAccount: sa, addresses: [ip] },
});
const svc = { apiVersion: A, kind: 'Service', metadata: { name: 'web', namespace: 'shop' }, spec: { selector: { app: 'web' }, addresses: ['198.19.0.10'], ports: [{ port: 80 }] } };

async function issuedCount(c: TestController, kind: string): Promise<number> {
  const m = new RegExp(`nodemesh_controller_certificates_issued_total\\{kind="${kind}"\\} (\\d+)`).exec((await httpGet(c.controller.metricsPort, '/metrics')).body);
  return m ? Number(m[1]) : 0;
}

type Keys = webcrypto.CryptoKeyPair;
const P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const ECDSA_SHA256 = { name: 'ECDSA', hash: 'SHA-256' } as const;

async function p256(): Promise<Keys> {
  return (await webcrypto.subtle.generateKey(P256, true, ['sign', 'verify'])) as Keys;
}

async function keyPem(keys: Keys): Promise<string> {
  return x509.PemConverter.encode(Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)), 'PRIVATE KEY') + '\n';
}

type Name = { type: 'url' | 'dns' | 'ip' | 'email' | 'dn' | 'upn' | 'guid' | 'id'; value: string };

/** A CSR built by hand, for what generateKeyAndCsr never produces. */
async function csr(opts: { names?: Name[]; keys?: Keys; signingAlgorithm?: { name: string; hash?: string }; extensions?: x509.Extension[] } = {}): Promise<{ pem: string; keys: Keys }> {
  const keys = opts.keys ?? (await p256());
  const req = await x509.Pkcs10CertificateRequestGenerator.create({
    keys,
    signingAlgorithm: opts.signingAlgorithm ?? ECDSA_SHA256,
    extensions: [new x509.SubjectAlternativeNameExtension(opts.names ?? [{ type: 'url', value: WEB }], true), ...(opts.extensions ?? [])],
  });
  return { pem: req.toString('pem'), keys };
}

/** A controller with shop/web on n1 and shop/api, default/web on n2; clients for both nodes. */
async function cluster(t: Test): Promise<{ c: TestController; n1: ControllerClient; n2: ControllerClient }> {
  const c = await testController(t);
  await c.admin.apply([
    doc(workload('web-1', 'shop', 'n1', 'web', '198.18.1.1')),
    doc(workload('api-1', 'shop', 'n2', 'api', '198.18.2.1'), 2),
    // Same service account name as n1's web, in another namespace, on n2.
    doc(workload('web-1', 'default', 'n2', 'web', '198.18.2.2'), 3),
  ]);
  return { c, n1: await c.nodeClient('n1'), n2: await c.nodeClient('n2') };
}

t.test('a node gets workload certificates only for workloads placed on it', async (t) => {
  const { c, n1, n2 } = await cluster(t);
  const sign = async (node: ControllerClient, uri: string) => node.sign((await csr({ names: [{ type: 'url', value: uri }] })).pem);

  const mine = new X509Certificate((await sign(n1, WEB)).certificateChainPem);
  t.equal(mine.subjectAltName, `URI:${WEB}`, 'n1 gets shop/web, which runs on it');
  t.equal(new X509Certificate((await sign(n2, API)).certificateChainPem).subjectAltName, `URI:${API}`, 'n2 gets shop/api, which runs on it');
  const before = await issuedCount(c, 'workload');

  const asks: [string, string, RegExp][] = [
    ['a pod on another node', API, /node n1 runs no workload with identity spiffe:\/\/cluster\.local\/ns\/shop\/sa\/api/],
    ['the same service account in another namespace, on another node', spiffeWorkloadId(TD, 'default', 'web'), /node n1 runs no workload/],
    ['an identity no workload has', spiffeWorkloadId(TD, 'shop', 'ghost'), /node n1 runs no workload/],
    ["another node's identity", spiffeNodeId(TD, 'n2'), /not a workload identity/],
    ["the admin's identity", spiffeAdminId(TD), /not a workload identity/],
    ['a workload of another trust domain', 'spiffe://other.td/ns/shop/sa/web', /trust domain/],
  ];
  for (const [what, uri, why] of asks) {
    const e = await refused(sign(n1, uri));
    t.equal(e.code, 'NM_ERR_GRPC_PERMISSION_DENIED', `${what}: PERMISSION_DENIED`);
    t.match(e.message, why, `${what}: says why`);
  }
  t.equal(await issuedCount(c, 'workload'), before, 'nothing was issued for the refused requests');
  t.ok(c.logs.filter((l) => l.event === 'security' && l.node === 'n1').length >= asks.length, 'each refusal is logged as a security event');

  // Placement is read at each request: once web-1 moves to n2, n1 may no longer get its identity.
  await c.admin.apply([doc(workload('web-1', 'shop', 'n2', 'web', '198.18.2.3'))]);
  t.match(await refused(sign(n1, WEB)), { code: 'NM_ERR_GRPC_PERMISSION_DENIED', message: /node n1 runs no workload/ }, 'after the workload moved away: refused');
  t.equal(new X509Certificate((await sign(n2, WEB)).certificateChainPem).subjectAltName, `URI:${WEB}`, 'and its new node gets it');
});

t.test('CSRs asking for more than one SPIFFE ID, other names, other keys or with a bad signature are refused', async (t) => {
  const { c, n1 } = await cluster(t);
  const good = await csr();
  t.match((await n1.sign(good.pem)).certificateChainPem, /BEGIN CERTIFICATE/, 'the identity itself is allowed (control)');
  const before = await issuedCount(c, 'workload');

  const rsa = (await webcrypto.subtle.generateKey(
    { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
    true,
    ['sign', 'verify'],
  )) as Keys;
  const p384 = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign', 'verify'])) as Keys;
  // Carries one key, signed by another: whoever sent it does not hold the key it asks to certify.
  const someoneElses = await p256();
  const mine = await p256();
  const mismatched = await csr({ keys: { publicKey: someoneElses.publicKey, privateKey: mine.privateKey } });
  // A same-length edit inside the signed body: still parses, no longer verifies.
  const der = Buffer.from(new x509.Pkcs10CertificateRequest((await csr({ names: [{ type: 'url', value: API }] })).pem).rawData);
  const at = der.indexOf(Buffer.from('sa/api'));
  der.write('sa/web', at, 'latin1');
  const tampered = x509.PemConverter.encode(der, 'CERTIFICATE REQUEST');

  const cases: [string, Promise<string>, RegExp][] = [
    ['two URIs', csr({ names: [{ type: 'url', value: WEB }, { type: 'url', value: API }] }).then((x) => x.pem), /exactly one URI SAN.*carries 2/],
    ['the same URI twice', csr({ names: [{ type: 'url', value: WEB }, { type: 'url', value: WEB }] }).then((x) => x.pem), /exactly one URI SAN.*carries 2/],
    ['URI + DNS', csr({ names: [{ type: 'url', value: WEB }, { type: 'dns', value: 'web.shop.svc' }] }).then((x) => x.pem), /also asks for dns:web\.shop\.svc/],
    ['URI + IPv4', csr({ names: [{ type: 'url', value: WEB }, { type: 'ip', value: '198.18.1.1' }] }).then((x) => x.pem), /also asks for ip:198\.18\.1\.1/],
    ['URI + IPv6', csr({ names: [{ type: 'url', value: WEB }, { type: 'ip', value: '::1' }] }).then((x) => x.pem), /also asks for ip:/],
    ['URI + email', csr({ names: [{ type: 'url', value: WEB }, { type: 'email', value: 'root@example.com' }] }).then((x) => x.pem), /also asks for email:root@example\.com/],
    ['URI + directory name', csr({ names: [{ type: 'url', value: WEB }, { type: 'dn', value: 'CN=controller' }] }).then((x) => x.pem), /also asks for dn/],
    ['URI + UPN (otherName)', csr({ names: [{ type: 'url', value: WEB }, { type: 'upn', value: 'admin@cluster.local' }] }).then((x) => x.pem), /also asks for upn/],
    ['DNS only', csr({ names: [{ type: 'dns', value: 'web.shop.svc' }] }).then((x) => x.pem), /also asks for dns/],
    ['an RSA key', csr({ keys: rsa, signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5' } }).then((x) => x.pem), /key is RSASSA-PKCS1-v1_5.*ECDSA P-256 keys only/],
    ['a P-384 key', csr({ keys: p384, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-384' } }).then((x) => x.pem), /ECDSA P-384.*ECDSA P-256 keys only/],
    ['signed by a key other than the one it carries', Promise.resolve(mismatched.pem), /signature does not verify/],
    ['altered after signing', Promise.resolve(tampered), /signature does not verify/],
    ['not a CSR at all', Promise.resolve('-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n'), /cannot parse the CSR/],
  ];
  for (const [what, pem, why] of cases) {
    const e = await refused(n1.sign(await pem));
    t.not(e.grpcCode, grpc.status.OK, `${what}: refused`);
    t.match(e.code, /^NM_ERR_GRPC_(INVALID_ARGUMENT|PERMISSION_DENIED)$/, `${what}: ${e.code}`);
    t.match(e.message, why, `${what}: the message names the problem`);
  }
  t.equal(await issuedCount(c, 'workload'), before, 'nothing was issued for any of them');
  t.match((await n1.sign((await csr()).pem)).certificateChainPem, /BEGIN CERTIFICATE/, 'and a clean request right after is still served');
});

/** openssl verify of `leaf` against `root`, with `untrusted` as the candidate intermediate. */
function opensslVerify(dir: string, root: string, untrusted: string, leaf: string): { code: number | null; out: string } {
  const f = (n: string, pem: string): string => {
    const p = path.join(dir, n);
    fs.writeFileSync(p, pem);
    return p;
  };
  const r = spawnSync('openssl', ['verify', '-CAfile', f('root.pem', root), '-untrusted', f('mid.pem', untrusted), f('leaf.pem', leaf)], { encoding: 'utf8' });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

t.test('a CSR asking to be a CA gets a leaf that cannot sign anything', async (t) => {
  const { c, n1 } = await cluster(t);
  const root = loadCredentials(c.controller.credentialsPath).ca;
  // The controller's own CA, loaded from its data directory: for its peer check and to give the test tunnel a server certificate.
  const ca = await CertificateAuthority.loadOrCreate(path.join(c.dataDir, 'ca'), { trustDomain: TD });
  const caExtensions = (): x509.Extension[] => [
    new x509.BasicConstraintsExtension(true, 5, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension(['2.5.29.37.0', x509.ExtendedKeyUsage.codeSigning], false),
  ];
  const asked = await csr({ extensions: caExtensions() });
  t.equal((new x509.Pkcs10CertificateRequest(asked.pem).extensions.find((e) => e instanceof x509.BasicConstraintsExtension) as x509.BasicConstraintsExtension | undefined)?.ca, true, 'the request does ask for CA:TRUE, pathLen 5, keyCertSign');
  const chain = (await n1.sign(asked.pem)).certificateChainPem;
  const leafPem = chain.slice(0, chain.indexOf('-----END CERTIFICATE-----') + 25) + '\n';

  const leaf = new X509Certificate(leafPem);
  t.equal(leaf.ca, false, 'issued CA:FALSE');
  const parsed = new x509.X509Certificate(leafPem);
  const bc = parsed.getExtension(x509.BasicConstraintsExtension);
  t.match(bc, { ca: false, critical: true }, 'basicConstraints is critical CA:FALSE');
  t.equal(bc?.pathLength, undefined, 'no pathLen');
  const ku = parsed.getExtension(x509.KeyUsagesExtension)!;
  t.equal(ku.usages & (x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign), 0, 'no keyCertSign, no cRLSign');
  t.equal(ku.usages, x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, 'keyUsage is what the CA decides');
  t.same([...(leaf.keyUsage ?? [])].sort(), [EKU_SERVER, EKU_CLIENT].sort(), 'extKeyUsage is serverAuth+clientAuth only (no anyExtendedKeyUsage, no codeSigning)');

  // The attack: mint a certificate for shop/api (placed on n2) with the leaf's key.
  const child = await p256();
  const forged = await x509.X509CertificateGenerator.create({
    serialNumber: '01',
    // A subject of its own: the same (empty) name as its issuer would make it self-issued, refused for that instead.
    subject: 'CN=forged',
    issuer: parsed.subjectName,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 3600_000),
    publicKey: child.publicKey,
    signingKey: asked.keys.privateKey,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth], false),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: API }], true),
    ],
  });
  const forgedPem = forged.toString('pem') + '\n';
  const forgedNode = new X509Certificate(forgedPem);
  t.ok(forgedNode.verify(leaf.publicKey), "the forged certificate's signature is the leaf key's (so only the CA bit can stop it)");
  t.notOk(forgedNode.checkIssued(leaf), 'OpenSSL does not take the leaf as its issuer');

  const v = opensslVerify(tempDir(t), root, leafPem, forgedPem);
  t.not(v.code, 0, 'openssl verify refuses the chain');
  t.match(v.out, /invalid CA certificate|not a CA|key usage does not include certificate signing/i, `and says the leaf is no CA: ${v.out.trim().replace(/\s+/g, ' ')}`);
  t.equal(opensslVerify(tempDir(t), root, leafPem, leafPem).code, 0, 'while the leaf itself verifies against the root (control)');

  t.throws(() => ca.verifyPeer(forgedPem), { code: 'NM_ERR_CA_UNTRUSTED' }, "the controller's own peer check refuses it");

  // And at a real tunnel port: mutual TLS with the forged chain (forged + leaf) is refused, with the leaf it is served.
  const serverKeys = await csr({ names: [{ type: 'url', value: spiffeWorkloadId(TD, 'shop', 'db') }] });
  const server = await ca.signCsr(serverKeys.pem, { kind: 'workload', lifetimeSeconds: 3600, allowedUris: () => null });
  const backend = net.createServer((s) => s.end('served\n'));
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
  t.teardown(() => backend.close());
  const serverKey = await keyPem(serverKeys.keys);
  const refusedReasons: string[] = [];
  const hb = new HboneServer({
    trustBundle: () => root,
    serverCertificate: () => ({ certPem: server.chainPem, keyPem: serverKey }),
    authorize: () => ({ accept: true }),
    dial: () => net.connect((backend.address() as net.AddressInfo).port, '127.0.0.1'),
    onConnectionRefused: (e) => refusedReasons.push(e.reason),
  });
  const port = await hb.listen(0, '127.0.0.1');
  t.teardown(() => hb.close());
  const pool = new HbonePool();
  t.teardown(() => pool.close());
  const dial = async (identity: string, certPem: string, key: string): Promise<string> => {
    try {
      const s = await pool.connect({
        sourceIdentity: identity,
        credentials: { certPem, keyPem: key },
        trustBundle: root,
        node: { address: '127.0.0.1', port },
        destinationIdentity: spiffeWorkloadId(TD, 'shop', 'db'),
        target: { host: '198.18.1.9', port: 80 },
        timeoutMs: 5000,
      });
      return await new Promise<string>((resolve) => {
        let b = '';
        s.on('data', (d: Buffer) => (b += d.toString()));
        s.on('end', () => resolve(b.trim()));
        s.on('error', (e: Error) => resolve(`error ${e.message}`));
      });
    } catch (err) {
      return `refused ${(err as Error).message}`;
    }
  };
  t.match(await dial(API, forgedPem + leafPem, await keyPem(child)), /^refused/, 'the forged shop/api chain is refused by the tunnel');
  t.ok(refusedReasons.some((r) => /not trusted|certificate/i.test(r)), `the tunnel says why: ${refusedReasons.join('; ')}`);
  t.equal(await dial(WEB, leafPem, await keyPem(asked.keys)), 'served', 'the leaf itself is served (control)');

  // A node renewing its own certificate with the same extensions gets a leaf too.
  const nodeAsk = await csr({ names: [{ type: 'url', value: spiffeNodeId(TD, 'n1') }], extensions: caExtensions() });
  const nodeCert = new X509Certificate((await n1.sign(nodeAsk.pem)).certificateChainPem);
  t.equal(nodeCert.ca, false, 'a node certificate asked for as a CA is CA:FALSE');
  t.equal(new x509.X509Certificate(nodeCert.raw).getExtension(x509.KeyUsagesExtension)!.usages & x509.KeyUsageFlags.keyCertSign, 0, 'without keyCertSign');
});

/** Watch with a deadline: the events it delivered and the status it ended with. */
function watchOutcome(client: ControllerClient, deadlineMs: number): Promise<{ events: number; code: grpc.status; details: string }> {
  const raw = client.clients.Resources as unknown as { Watch(req: unknown, md: grpc.Metadata, opts: grpc.CallOptions): grpc.ClientReadableStream<unknown> };
  const w = raw.Watch({ kind: '', namespace: '', fromVersion: 1 }, new grpc.Metadata(), { deadline: Date.now() + deadlineMs });
  let events = 0;
  return new Promise((resolve) => {
    w.on('data', () => events++);
    w.on('error', (e: grpc.ServiceError) => resolve({ events, code: e.code, details: e.details }));
    w.on('status', (s: grpc.StatusObject) => s.code === grpc.status.OK && resolve({ events, code: s.code, details: s.details }));
  });
}

t.test('a node certificate, or a workload certificate, cannot use any admin API; nothing changes', async (t) => {
  const { c, n1 } = await cluster(t);
  await c.admin.apply([doc(svc, 1)]);
  const snapshot = async (): Promise<string> => {
    const all = await Promise.all(['workloads', 'services', 'authorizationpolicies'].map((k) => c.admin.list(k, { allNamespaces: true })));
    return JSON.stringify({ version: all[0]!.version, items: all.map((l) => l.items) });
  };
  const before = await snapshot();

  // A workload certificate n1 legitimately obtained for its pod shop/web.
  const wl = await csr();
  const wlCert = await n1.sign(wl.pem);
  const creds = loadCredentials(c.controller.credentialsPath);
  const workloadClient = new ControllerClient({ address: c.address, ca: creds.ca, cert: wlCert.certificateChainPem, key: await keyPem(wl.keys) });
  t.teardown(() => workloadClient.close());

  const deny = doc({ apiVersion: A, kind: 'AuthorizationPolicy', metadata: { name: 'deny-all', namespace: 'shop' }, spec: { action: 'DENY', rules: [{}] } });
  const calls = (x: ControllerClient): [string, () => Promise<unknown>][] => [
    ['Apply', () => x.apply([deny])],
    ['Apply (dry run)', () => x.apply([deny], true)],
    ['Get', () => x.get('svc', 'shop', 'web')],
    ['Get of something absent (no existence oracle)', () => x.get('svc', 'shop', 'absent')],
    ['List', () => x.list('workloads', { allNamespaces: true })],
    ['List of an unknown kind (auth before validation)', () => x.list('frobs')],
    ['Delete', () => x.delete([{ kind: 'Service', namespace: 'shop', name: 'web' }])],
    ['Bootstrap.CreateToken', () => x.createToken('n9')],
    ['NodeConfig.ListNodes', () => x.listNodes()],
  ];
  for (const [rpc, call] of calls(n1)) {
    const e = await refused(call());
    t.equal(e.code, 'NM_ERR_GRPC_PERMISSION_DENIED', `node certificate, ${rpc}: PERMISSION_DENIED`);
    t.match(e.message, /spiffe:\/\/cluster\.local\/nodemesh\/node\/n1 is a node, not the admin/, `node certificate, ${rpc}: says why`);
  }
  for (const [rpc, call] of [...calls(workloadClient), ['Certificates.Sign', async () => workloadClient.sign((await csr({ names: [{ type: 'url', value: API }] })).pem)] as [string, () => Promise<unknown>]]) {
    const e = await refused(call());
    t.equal(e.code, 'NM_ERR_GRPC_UNAUTHENTICATED', `workload certificate, ${rpc}: UNAUTHENTICATED`);
    t.match(e.message, /is neither the admin nor a node/, `workload certificate, ${rpc}: says why`);
  }

  // Watch: refused without a single event, and ended by the server with its code, not by the deadline.
  const nodeWatch = await watchOutcome(n1, 5000);
  t.equal(nodeWatch.events, 0, 'node certificate, Watch: no event delivered');
  const wlWatch = await watchOutcome(workloadClient, 5000);
  t.equal(wlWatch.events, 0, 'workload certificate, Watch: no event delivered');
  t.equal(grpc.status[nodeWatch.code], 'PERMISSION_DENIED', `node certificate, Watch: PERMISSION_DENIED (${nodeWatch.details})`);
  t.equal(grpc.status[wlWatch.code], 'UNAUTHENTICATED', `workload certificate, Watch: UNAUTHENTICATED (${wlWatch.details})`);

  t.equal(await snapshot(), before, 'nothing changed: same version, same objects');
  t.equal((await c.admin.list('workloads', { allNamespaces: true })).items.length, 3, 'the admin still reads everything (control)');
  const text = (await httpGet(c.controller.metricsPort, '/metrics')).body;
  for (const m of ['Resources.Apply', 'Resources.Get', 'Resources.List', 'Resources.Delete', 'Resources.Watch', 'Bootstrap.CreateToken', 'NodeConfig.ListNodes'])
    t.match(text, new RegExp(`nodemesh_controller_api_requests_total\\{method="${m.replace('.', '\\.')}",code="PERMISSION_DENIED"\\} [1-9]`), `${m} refusals are counted`);
});
