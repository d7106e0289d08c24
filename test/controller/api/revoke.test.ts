/**
 * `nodemesh node revoke` over real TLS/gRPC: the node's next call is refused,
 * its open config stream ends with PERMISSION_DENIED, renewal is refused, its
 * unused tokens go, every other node gets the revocation list, and it joins
 * again only with a new token made for it.
 */
import { X509Certificate } from 'node:crypto';

import * as grpc from '@grpc/grpc-js';
import { t } from 'tap';

import type { ConfigMessage, NodeMessage } from '../../../src/api/proto';
import { normalizeSerial, spiffeNodeId, spiffeWorkloadId } from '../../../src/controller/ca';
import { ControllerClient, loadCredentials } from '../../../src/controller/client';
import { main } from '../../../src/cli/main';
import { LEDGER_DEFAULTS } from '../../../src/controller/api/ledger';
import { generateKeyAndCsr } from '../../../src/node-proxy/identity';
import { doc, refused, testController } from '../../helpers/controller';
import { waitFor } from '../../helpers/wait';

/** A node's config stream, recording what arrives and how it ends. */
function openStream(client: ControllerClient, node: string): { items: Map<string, string>; ended: Promise<grpc.ServiceError | 'clean'>; call: grpc.ClientDuplexStream<NodeMessage, ConfigMessage> } {
  const call = client.configStream();
  const items = new Map<string, string>();
  call.on('data', (m: ConfigMessage) => {
    const v = m.snapshot?.version ?? m.delta?.version;
    if (m.snapshot) {
      items.clear();
      for (const i of m.snapshot.items) items.set(i.key, i.json ?? JSON.stringify(i.workload ?? i.service));
    }
    if (m.delta) {
      for (const i of m.delta.upserts) items.set(i.key, i.json ?? JSON.stringify(i.workload ?? i.service));
      for (const k of m.delta.removals) items.delete(k);
    }
    if (v !== undefined) call.write({ ack: { version: v } });
  });
  const ended = new Promise<grpc.ServiceError | 'clean'>((resolve) => {
    call.on('error', (err: grpc.ServiceError) => resolve(err));
    call.on('end', () => resolve('clean'));
  });
  call.write({ hello: { node, version: 0, proxyVersion: 'test', addresses: [] } });
  return { items, ended, call };
}

function revokedSerials(items: Map<string, string>): string[] {
  const raw = items.get('RevocationList//revoked');
  return raw ? (JSON.parse(raw) as { serials: string[] }).serials : [];
}

const A = 'nodemesh.io/v1alpha1';
const workload = (name: string, node: string, ip: string) => ({ apiVersion: A, kind: 'Workload', metadata: { name, namespace: 'shop' }, spec: { node, serviceAccount: name, addresses: [ip] } });

t.test('revoking a node', async (t) => {
  const c = await testController(t);
  const creds = loadCredentials(c.controller.credentialsPath);
  await c.admin.apply([doc(workload('web', 'n1', '198.18.1.1')), doc(workload('api', 'n2', '198.18.2.1'), 2)]);
  const n1 = await c.nodeClient('n1');
  const n2 = await c.nodeClient('n2');
  const s1 = openStream(n1, 'n1');
  const s2 = openStream(n2, 'n2');
  t.teardown(() => {
    s1.call.cancel();
    s2.call.cancel();
  });
  t.ok(await waitFor(async () => s1.items.has('Workload/shop/web') && s2.items.has('Workload/shop/web'), 10_000), 'both streams have their config');
  t.same(revokedSerials(s2.items), [], 'nothing is revoked yet');
  const web = await n1.sign((await generateKeyAndCsr(spiffeWorkloadId('cluster.local', 'shop', 'web'))).csrPem);
  const webSerial = normalizeSerial(new X509Certificate(web.certificateChainPem).serialNumber);
  // A token made for n1 before the revoke, never used.
  const stale = await c.admin.createToken('n1');
  const before = (await c.admin.listNodes()).find((n) => n.node === 'n1')!;
  t.match(before, { connected: true, revoked: false, workloadCertificates: 1 });
  t.equal(before.streamCertificateSerial, before.certificateSerial, 'the stream authenticated with the node certificate listed');

  const out: string[] = [];
  const io = { out: (s: string) => void out.push(s), err: (s: string) => void out.push(s) };
  t.equal(await main(['node', 'revoke', 'n1', '--credentials', c.controller.credentialsPath], io), 0);
  t.match(out.join(''), /node n1 revoked: 2 certificates on the revocation list/);

  const end = await s1.ended;
  t.not(end, 'clean', 'the open stream did not end cleanly');
  t.match(end, { code: grpc.status.PERMISSION_DENIED, details: /node n1 was revoked: an admin must create a new token for it/ }, 'the open stream ended with PERMISSION_DENIED');

  const next = await refused(n1.sign((await generateKeyAndCsr(spiffeWorkloadId('cluster.local', 'shop', 'web'))).csrPem));
  t.equal(next.code, 'NM_ERR_GRPC_PERMISSION_DENIED', 'its next call, on the connection it already had, is refused');
  t.match(next.message, /node n1 was revoked at .*\(certificate [0-9a-f]+\): an admin must create a new token for it \(nodemesh controller token create --node n1\)/);
  t.match(await refused(n1.sign((await generateKeyAndCsr(spiffeNodeId('cluster.local', 'n1'))).csrPem)), { code: 'NM_ERR_GRPC_PERMISSION_DENIED' }, 'renewal is refused');
  const again = openStream(n1, 'n1');
  t.match(await again.ended, { code: grpc.status.PERMISSION_DENIED }, 'a new stream is refused');

  // Every other node gets both serials and keeps working.
  t.ok(await waitFor(async () => revokedSerials(s2.items).length === 2, 10_000), 'n2 got the revocation list');
  t.same(revokedSerials(s2.items), [before.certificateSerial, webSerial].sort(), 'the node certificate and the workload certificate');
  t.match((await n2.sign((await generateKeyAndCsr(spiffeWorkloadId('cluster.local', 'shop', 'api'))).csrPem)).certificateChainPem, /BEGIN CERTIFICATE/, 'n2 is still served');

  // Joining again takes a new token made for it.
  const anon = new ControllerClient({ address: c.address, ca: creds.ca });
  t.teardown(() => anon.close());
  const key = await generateKeyAndCsr(spiffeNodeId('cluster.local', 'n1'));
  t.match(await refused(anon.join(stale.token, 'n1', key.csrPem)), { code: 'NM_ERR_GRPC_UNAUTHENTICATED', message: /unknown bootstrap token/ }, 'its unused token went with the revoke');
  const pool = await c.admin.createToken('', 0, 5);
  t.match(await refused(anon.join(pool.token, 'n1', key.csrPem)), { message: /node n1 joined before/ }, 'a token for any node does not bring it back');

  out.length = 0;
  t.equal(await main(['node', 'list', '--credentials', c.controller.credentialsPath], io), 0);
  t.match(out.join(''), /n1\s+revoked \d{4}-/);
  t.match(out.join(''), /n2\s+active\s+yes/);

  const fresh = await c.admin.createToken('n1');
  const rejoined = await anon.join(fresh.token, 'n1', key.csrPem);
  const n1b = new ControllerClient({ address: c.address, ca: creds.ca, cert: rejoined.certificateChainPem, key: key.keyPem });
  t.teardown(() => n1b.close());
  t.match((await n1b.sign((await generateKeyAndCsr(spiffeWorkloadId('cluster.local', 'shop', 'web'))).csrPem)).certificateChainPem, /BEGIN CERTIFICATE/, 'with a new token it joins and works again');
  t.match((await c.admin.listNodes()).find((n) => n.node === 'n1'), { revoked: false });
  t.equal(revokedSerials(s2.items).length, 2, 'the old certificates stay revoked');

  t.match(await refused(c.admin.revokeNode('nope')), { code: 'NM_ERR_GRPC_NOT_FOUND', message: /node "nope" never joined this controller/ });
  t.match(await refused(n2.revokeNode('n1')), { code: 'NM_ERR_GRPC_PERMISSION_DENIED' }, 'a node cannot revoke');
});

t.test('a node cannot pile up certificates (which bounds the revocation list)', async (t) => {
  const c = await testController(t);
  await c.admin.apply([doc(workload('web', 'n1', '198.18.1.1')), doc(workload('api', 'n2', '198.18.2.1'), 2)]);
  const n1 = await c.nodeClient('n1');
  const n2 = await c.nodeClient('n2');
  const csr = async (sa: string) => (await generateKeyAndCsr(spiffeWorkloadId('cluster.local', 'shop', sa))).csrPem;
  const key = await csr('web');
  // The key is the node's to choose; the count is of certificates, whatever the key.
  for (let i = 0; i < LEDGER_DEFAULTS.maxLivePerIdentity; i++) await n1.sign(key);
  const e = await refused(n1.sign(key));
  t.equal(e.code, 'NM_ERR_GRPC_RESOURCE_EXHAUSTED');
  t.match(e.message, new RegExp(`node n1 holds ${LEDGER_DEFAULTS.maxLivePerIdentity} unexpired certificates for spiffe://cluster.local/ns/shop/sa/web, the most one node may hold for one identity`));
  t.match((await n2.sign(await csr('api'))).certificateChainPem, /BEGIN CERTIFICATE/, 'another node is still served');
  t.equal((await c.admin.revokeNode('n1')).length, LEDGER_DEFAULTS.maxLivePerIdentity + 1, 'a revocation lists at most the cap per identity, plus the node certificate');
});

t.test('token create flags are checked before anything is sent', async (t) => {
  const c = await testController(t);
  for (const [args, msg] of [
    [['--uses', '0'], /--uses must be an integer from 1 to 1000, not 0/],
    [['--uses', 'x'], /--uses must be an integer/],
    [['--ttl', '8d'], /--ttl must be from 1s to 7d, not 8d/],
    [['--ttl', '0s'], /--ttl must be from 1s/],
    [['--node', ''], /--node needs a node name/],
  ] as const) {
    let err = '';
    const code = await main(['controller', 'token', 'create', ...args, '--credentials', c.controller.credentialsPath], { out: () => {}, err: (s) => void (err += s) });
    t.equal(code, 64, args.join(' '));
    t.match(err, msg);
  }
  let out = '';
  let err = '';
  t.equal(await main(['controller', 'token', 'create', '--node', 'n9', '--uses', '3', '--ttl', '10m', '--credentials', c.controller.credentialsPath], { out: (s) => void (out += s), err: (s) => void (err += s) }), 0);
  t.match(out, /^[0-9a-f]{8}\.[0-9a-f]{32}\n$/, 'only the token on stdout');
  t.match(err, /token for node n9, 3 joins, valid until .*--token-file FILE/);
});
