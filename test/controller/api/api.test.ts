/** The controller's gRPC API over real TLS on loopback: resources, auth, certificates, metrics. */
import * as http from 'node:http';

import * as grpc from '@grpc/grpc-js';

import { t } from 'tap';

import { CertificateAuthority, spiffeAdminId, spiffeWorkloadId } from '../../../src/controller/ca';
import { ClientError, ControllerClient, loadCredentials } from '../../../src/controller/client';
import { generateKeyAndCsr } from '../../../src/node-proxy/identity';
import { doc, tempDir, testController } from '../../helpers/controller';

const A = 'nodemesh.io/v1alpha1';
const web = (node = 'n1', labels: Record<string, string> = { app: 'web' }) => ({
  apiVersion: A,
  kind: 'Workload',
  metadata: { name: 'web-1', namespace: 'shop', labels },
  spec: { node, serviceAccount: 'web', addresses: ['198.18.1.1'] },
});
const svc = { apiVersion: A, kind: 'Service', metadata: { name: 'web', namespace: 'shop' }, spec: { selector: { app: 'web' }, addresses: ['198.19.0.10'], ports: [{ port: 80 }] } };

async function refused(p: Promise<unknown>): Promise<ClientError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof ClientError) return err;
    throw err;
  }
  throw new Error('expected the call to be refused');
}

function metricsText(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get(`http://127.0.0.1:${port}/metrics`, (res) => {
      let b = '';
      res.on('data', (d: Buffer) => (b += d.toString()));
      res.on('end', () => resolve(b));
    }).on('error', reject);
  });
}

t.test('apply, get, list, delete; a batch with a bad document applies nothing', async (t) => {
  const c = await testController(t);
  const r = await c.admin.apply([doc(web()), doc(svc, 2)]);
  t.same(r.results.map((x) => `${x.kind}/${x.name} ${x.action}`), ['Workload/web-1 created', 'Service/web created']);
  t.same((await c.admin.apply([doc(web()), doc(svc, 2)])).results.map((x) => x.action), ['unchanged', 'unchanged']);
  const got = await c.admin.get('svc', 'shop', 'web');
  t.match(got, { kind: 'Service', metadata: { name: 'web', namespace: 'shop', resourceVersion: '1', generation: 1 } });
  t.equal((got.spec as { loadBalancer: { policy: string } }).loadBalancer.policy, 'P2C_EWMA', 'defaults are filled');

  const bad = { ...svc, metadata: { name: 'api', namespace: 'shop' }, spec: { ...svc.spec, ports: [{ port: 'eighty' }] } };
  const e = await refused(c.admin.apply([doc({ ...web('n1', { app: 'changed' }) }), doc(bad, 2)]));
  t.equal(e.code, 'NM_ERR_GRPC_INVALID_ARGUMENT');
  t.match(e.message, /test\.yaml doc 2 \(Service shop\/api\): spec\.ports\[0\]\.port: must be integer/);
  t.same((await c.admin.get('workload', 'shop', 'web-1')).metadata.labels, { app: 'web' }, 'the valid document of the batch was not applied');
  t.match(await refused(c.admin.get('svc', 'shop', 'api')), { code: 'NM_ERR_GRPC_NOT_FOUND', message: /service shop\/api not found/ });

  t.same((await c.admin.list('services', { namespace: 'shop' })).items.map((i) => i.metadata.name), ['web']);
  t.same((await c.admin.list('workloads')).items, [], 'default namespace is empty');
  t.same((await c.admin.list('workloads', { allNamespaces: true, labelSelector: 'app=web' })).items.length, 1);
  t.same((await c.admin.list('workloads', { allNamespaces: true, labelSelector: 'app!=web' })).items.length, 0);
  t.match(await refused(c.admin.list('workloads', { labelSelector: 'app in (' })), { code: 'NM_ERR_GRPC_INVALID_ARGUMENT' });
  t.match(await refused(c.admin.list('frobs')), { message: /unknown kind "frobs"/ });

  // A stale resourceVersion is a conflict and changes nothing.
  const stale = { ...web('n2'), metadata: { ...web().metadata, resourceVersion: '0' } };
  t.match(await refused(c.admin.apply([doc(stale)])), { code: 'NM_ERR_GRPC_ABORTED', message: /someone changed it first/ });
  const del = await c.admin.delete([{ kind: 'Service', namespace: 'shop', name: 'web' }]);
  t.same(del.deleted.map((d) => d.metadata.name), ['web']);
  t.match(await refused(c.admin.delete([{ kind: 'Service', namespace: 'shop', name: 'web' }])), { code: 'NM_ERR_GRPC_NOT_FOUND' });
});

t.test('watch: from a version, then live', async (t) => {
  const c = await testController(t);
  await c.admin.apply([doc(web())]);
  const w = c.admin.watch({ fromVersion: 0 });
  const live: string[] = [];
  const got = new Promise<void>((resolve) =>
    w.on('data', (e: { type: string; version: number; json: string }) => {
      live.push(`${e.version} ${e.type} ${(JSON.parse(e.json) as { metadata: { name: string } }).metadata.name}`);
      if (live.length === 2) resolve();
    }),
  );
  w.on('error', () => {});
  await new Promise((r) => setTimeout(r, 100));
  await c.admin.apply([doc(svc)]);
  await c.admin.delete([{ kind: 'Workload', namespace: 'shop', name: 'web-1' }]);
  await got;
  w.cancel();
  t.same(live, ['2 ADDED web', '3 DELETED web-1'], 'live changes, in order');

  const replay = c.admin.watch({ fromVersion: 1, kind: 'Workload' });
  replay.on('error', () => {});
  const seen: string[] = [];
  await new Promise<void>((resolve) =>
    replay.on('data', (e: { type: string; version: number }) => {
      seen.push(`${e.version} ${e.type}`);
      resolve();
    }),
  );
  replay.cancel();
  t.same(seen, ['3 DELETED'], 'resumed from version 1, Workloads only');
});

t.test('nothing is served unauthenticated', async (t) => {
  const c = await testController(t);
  const creds = loadCredentials(c.controller.credentialsPath);
  const anon = new ControllerClient({ address: c.address, ca: creds.ca });
  t.teardown(() => anon.close());
  t.match(await refused(anon.apply([doc(web())])), { code: 'NM_ERR_GRPC_UNAUTHENTICATED', message: /admin credential required \(no client certificate\)/ });
  t.match(await refused(anon.list('services')), { code: 'NM_ERR_GRPC_UNAUTHENTICATED' });
  t.match(await refused(anon.createToken('n1')), { code: 'NM_ERR_GRPC_UNAUTHENTICATED' });
  t.match(await refused(anon.listNodes()), { code: 'NM_ERR_GRPC_UNAUTHENTICATED' });
  t.match(await refused(anon.sign('x')), { code: 'NM_ERR_GRPC_UNAUTHENTICATED', message: /node certificate required/ });

  // A certificate from another CA, even one naming the admin, counts for nothing.
  const other = await CertificateAuthority.loadOrCreate(tempDir(t), { trustDomain: 'cluster.local' });
  const forged = await other.issueClientCertificate(spiffeAdminId('cluster.local'), 3600);
  const impostor = new ControllerClient({ address: c.address, ca: creds.ca, cert: forged.chainPem, key: forged.keyPem });
  t.teardown(() => impostor.close());
  t.match(await refused(impostor.apply([doc(web())])), { code: 'NM_ERR_GRPC_UNAUTHENTICATED', message: /admin credential required/ });

  // A client that does not trust the controller's CA does not talk to it at all.
  const distrust = new ControllerClient({ address: c.address, ca: other.rootPem, cert: creds.cert, key: creds.key }, { timeoutMs: 3000 });
  t.teardown(() => distrust.close());
  t.match(await refused(distrust.list('services')), { unreachable: true });

  // A node is not the admin.
  const node = await c.nodeClient('n1');
  t.match(await refused(node.apply([doc(web())])), { code: 'NM_ERR_GRPC_PERMISSION_DENIED', message: /is a node, not the admin/ });
  t.equal((await c.admin.list('workloads', { allNamespaces: true })).items.length, 0, 'nothing was written by refused calls');
});

t.test('bootstrap tokens and workload certificates', async (t) => {
  const c = await testController(t);
  const creds = loadCredentials(c.controller.credentialsPath);
  const anon = new ControllerClient({ address: c.address, ca: creds.ca });
  t.teardown(() => anon.close());
  const csr = await generateKeyAndCsr('spiffe://cluster.local/nodemesh/node/n1');
  t.match(await refused(anon.join('nope.nope', 'n1', csr.csrPem)), { code: 'NM_ERR_GRPC_UNAUTHENTICATED', message: /unknown bootstrap token/ });
  const { token } = await c.admin.createToken('n2');
  t.match(await refused(anon.join(token, 'n1', csr.csrPem)), { code: 'NM_ERR_GRPC_PERMISSION_DENIED', message: /this token is for node n2, not n1/ });
  const n2csr = await generateKeyAndCsr('spiffe://cluster.local/nodemesh/node/n1');
  t.match(await refused(anon.join(token, 'n2', n2csr.csrPem)), { code: 'NM_ERR_GRPC_PERMISSION_DENIED', message: /must name spiffe:\/\/cluster\.local\/nodemesh\/node\/n2/ }, 'a CSR for another node');

  await c.admin.apply([doc(web('n1')), doc({ ...web('n2'), metadata: { name: 'api-1', namespace: 'shop' }, spec: { node: 'n2', serviceAccount: 'api', addresses: ['198.18.2.1'] } }, 2)]);
  const n1 = await c.nodeClient('n1');
  const mine = await generateKeyAndCsr(spiffeWorkloadId('cluster.local', 'shop', 'web'));
  const issued = await n1.sign(mine.csrPem);
  t.match(issued.certificateChainPem, /BEGIN CERTIFICATE/);
  t.equal(issued.trustBundlePem, creds.ca);
  t.ok(Math.abs(issued.expiresUnixMs - Date.now() - 24 * 3600 * 1000) < 120_000, 'workload certificates live 24 h by default');

  const theirs = await generateKeyAndCsr(spiffeWorkloadId('cluster.local', 'shop', 'api'));
  const e = await refused(n1.sign(theirs.csrPem));
  t.equal(e.code, 'NM_ERR_GRPC_PERMISSION_DENIED');
  t.match(e.message, /node n1 runs no workload with identity spiffe:\/\/cluster\.local\/ns\/shop\/sa\/api/);
  t.ok(c.logs.some((l) => l.event === 'security' && l.node === 'n1' && /runs no workload/.test(String(l.reason))), 'logged as a security event');
  const renew = await generateKeyAndCsr('spiffe://cluster.local/nodemesh/node/n1');
  t.match((await n1.sign(renew.csrPem)).certificateChainPem, /BEGIN CERTIFICATE/, 'a node renews its own certificate');
  const text = await metricsText(c.controller.metricsPort);
  t.match(text, /nodemesh_controller_certificates_issued_total\{kind="workload"\} 1/);
  t.match(text, /nodemesh_controller_certificates_refused_total\{kind="workload"\} 1/);
  t.match(text, /nodemesh_controller_api_requests_total\{method="Certificates.Sign",code="PERMISSION_DENIED"\} 1/);
  t.match(text, /nodemesh_controller_api_requests_total\{method="Resources.Apply",code="OK"\} 1/);
});

/** The status a stream ends with, or 'no status' if none came within `ms` (the old Watch left refused callers waiting). */
function streamStatus(s: grpc.ClientReadableStream<unknown>, ms = 10_000): Promise<{ code: number; details: string } | 'no status'> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      s.cancel();
      resolve('no status');
    }, ms);
    s.on('data', () => {});
    s.on('error', (e: grpc.ServiceError) => {
      clearTimeout(timer);
      resolve({ code: e.code, details: e.details });
    });
  });
}

t.test('status details are safe: lone surrogates and long input come back escaped and cut, and the controller keeps serving', async (t) => {
  const c = await testController(t);
  const lone = { ...svc, metadata: { name: 'web\ud800', namespace: 'shop' } };
  const e = await refused(c.admin.apply([doc(lone)]));
  t.equal(e.code, 'NM_ERR_GRPC_INVALID_ARGUMENT');
  t.equal(e.message, 'test.yaml doc 1 (Service shop/"web\\ud800"): metadata.name: must be well-formed Unicode: lone surrogate \\ud800 at character 4 (save the file as UTF-8; a \\uD800-\\uDFFF escape must be half of a pair)');
  // protobuf carries strings as UTF-8: a lone surrogate in a request field arrives as U+FFFD, named in the answer.
  t.match(await refused(c.admin.get('svc', 'shop', 'web\ud800')), { code: 'NM_ERR_GRPC_NOT_FOUND', message: 'service shop/"web\ufffd\ufffd\ufffd" not found' });

  // An error that quotes long input is cut, not sent whole (it exceeded the client's metadata limit).
  const long = await refused(c.admin.apply([{ source: 'x.yaml', index: 1, json: JSON.stringify({ ...svc, kind: 'K'.repeat(100_000) }) }]));
  t.equal(long.code, 'NM_ERR_GRPC_INVALID_ARGUMENT');
  t.match(long.message, /^x\.yaml doc 1 \("K{64}"… \(99936 more characters\) shop\/web\): kind: unknown kind "K{64}"… \(99936 more characters\) \(one of Workload/);
  t.match(await refused(c.admin.apply([{ source: 's'.repeat(100_000), index: 1, json: '{' }])), { code: 'NM_ERR_GRPC_INVALID_ARGUMENT', message: /^source "s{64}"… \(99936 more characters\) is longer than 1024 characters, the limit$/ });
  // Many problems: the status stops at 4 KiB and says so.
  const many = await refused(c.admin.apply(Array.from({ length: 500 }, (_, i) => doc({ ...svc, metadata: { name: `web-${i}`, namespace: 'shop' }, spec: {} }, i + 1))));
  t.equal(many.code, 'NM_ERR_GRPC_INVALID_ARGUMENT');
  t.ok(Buffer.byteLength(encodeURI(many.message)) <= 4096, `cut to 4 KiB (${Buffer.byteLength(many.message)} bytes)`);
  t.match(many.message, /^test\.yaml doc 1 \(Service shop\/web-0\): spec\.selector: required\n[^]*… \(\d+ more characters cut: a gRPC status carries at most 4096 bytes\)$/);

  t.same((await c.admin.apply([doc(svc)])).results.map((r) => r.action), ['created'], 'normal applies still work');
  t.equal((await c.admin.get('svc', 'shop', 'web')).metadata.name, 'web');
});

t.test('Watch checks the caller before streaming and ends at once with the right code', async (t) => {
  const c = await testController(t);
  const creds = loadCredentials(c.controller.credentialsPath);
  const anon = new ControllerClient({ address: c.address, ca: creds.ca });
  t.teardown(() => anon.close());
  const node = await c.nodeClient('n1');
  t.match(await streamStatus(anon.watch()), { code: grpc.status.UNAUTHENTICATED, details: /admin credential required \(no client certificate\)/ }, 'no certificate');
  t.match(await streamStatus(node.watch()), { code: grpc.status.PERMISSION_DENIED, details: /is a node, not the admin/ }, 'a node certificate');
  t.match(await streamStatus(c.admin.watch({ kind: 'frobs' })), { code: grpc.status.INVALID_ARGUMENT, details: /unknown kind "frobs"/ }, 'a bad kind');
  t.match(await streamStatus(c.admin.watch({ namespace: 'n'.repeat(1000) })), { code: grpc.status.INVALID_ARGUMENT, details: /namespace "n{64}"… \(936 more characters\) is longer than 253 characters/ });
  await c.admin.apply([doc(web())]);
  for (let i = 0; i < 3; i++) await c.admin.apply([doc(web('n1', { app: `v${i}` }))]);
  const r = await c.admin.list('workloads', { allNamespaces: true });
  t.equal(r.items.length, 1, 'the controller still serves');
  t.match(await streamStatus(c.admin.watch({ fromVersion: 1 }), 3000), 'no status', 'an admin watch streams and stays open');
  const text = await metricsText(c.controller.metricsPort);
  t.match(text, /nodemesh_controller_api_requests_total\{method="Resources.Watch",code="UNAUTHENTICATED"\} 1/);
  t.match(text, /nodemesh_controller_api_requests_total\{method="Resources.Watch",code="PERMISSION_DENIED"\} 1/);
});

t.test('nesting and size limits: errors that name the limit, from the controller and from the client', async (t) => {
  const c = await testController(t);
  const deep = `{"apiVersion":"nodemesh.io/v1alpha1","kind":"Service","metadata":{"name":"web"},"spec":${'['.repeat(10_000)}${']'.repeat(10_000)}}`;
  const e = await refused(c.admin.apply([{ source: 'deep.json', index: 1, json: deep }]));
  t.equal(e.code, 'NM_ERR_GRPC_INVALID_ARGUMENT');
  t.match(e.message, /^deep\.json doc 1 \(Service default\/web\): spec(\[0\]){31}: nested deeper than 32 levels, the limit/);

  const big = { ...svc, metadata: { name: 'big', namespace: 'shop', annotations: { a: 'x'.repeat(5 * 1024 * 1024) } } };
  const tooBig = await refused(c.admin.apply([doc(big)]));
  t.match(tooBig, { code: 'NM_ERR_TOO_LARGE', message: /^these 1 documents make a 5\.0 MiB request, over the 4 MiB limit of a request to the controller: apply them in several parts$/ }, 'the client checks before sending');

  // A client told a larger limit sends it; the controller's explicit limit refuses it.
  const loose = ControllerClient.fromCredentials(c.controller.credentialsPath, { maxRequestBytes: 16 * 1024 * 1024 });
  t.teardown(() => loose.close());
  t.match(await refused(loose.apply([doc(big)])), { code: 'NM_ERR_GRPC_RESOURCE_EXHAUSTED', message: /message larger than max .*the controller takes requests of at most its --max-request-bytes \(default 4 MiB\)/ });
  t.match(await refused(c.admin.apply(Array.from({ length: 1001 }, (_, i) => doc({ ...svc, metadata: { name: `w${i}` } }, i + 1)))), {
    code: 'NM_ERR_GRPC_RESOURCE_EXHAUSTED',
    message: '1001 documents in one request, over the limit of 1000: send them in several requests',
  });
  t.same((await c.admin.apply([doc(svc)])).results.map((r) => r.action), ['created'], 'normal applies still work');
});
