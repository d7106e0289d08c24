/** Node config streams against a real controller: slices, deltas, resume, NACK. */
import { t } from 'tap';

import { ConfigStream, MeshView, type ApplyResult } from '../../../src/node-proxy/state';
import { doc, testController } from '../../helpers/controller';
import { waitFor } from '../../helpers/wait';

const A = 'nodemesh.io/v1alpha1';
const wl = (name: string, node: string, app: string) => ({
  apiVersion: A,
  kind: 'Workload',
  metadata: { name, namespace: 'shop', labels: { app } },
  spec: { node, serviceAccount: app, addresses: [`198.18.${node === 'n1' ? 1 : 2}.${name.length}`] },
});
const policy = (ports: string[], extraLabel = '') => ({
  apiVersion: A,
  kind: 'AuthorizationPolicy',
  metadata: { name: 'only-a', namespace: 'shop', ...(extraLabel ? { labels: { mark: extraLabel } } : {}) },
  spec: { selector: { matchLabels: { app: 'a' } }, action: 'DENY', rules: [{ to: [{ operation: { ports } }] }] },
});
const peerAuth = (rev: string) => ({
  apiVersion: A,
  kind: 'PeerAuthentication',
  metadata: { name: 'strict-a', namespace: 'shop', labels: { rev } },
  spec: { selector: { matchLabels: { app: 'a' } }, mtls: { mode: 'STRICT' } },
});
const service = { apiVersion: A, kind: 'Service', metadata: { name: 'a', namespace: 'shop' }, spec: { selector: { app: 'a' }, addresses: ['198.19.0.10'], ports: [{ port: 80 }] } };

function updates(s: ConfigStream): ApplyResult[] {
  const out: ApplyResult[] = [];
  s.on('update', (r) => out.push(r));
  return out;
}

t.test('each node gets its slice, then deltas of what touches it', async (t) => {
  const c = await testController(t);
  await c.admin.apply([doc(wl('a-1', 'n1', 'a')), doc(wl('b-1', 'n2', 'b'), 2), doc(peerAuth('0'), 3), doc(service, 4), doc(policy(['5432']), 5)]);
  const s1 = new ConfigStream({ client: await c.nodeClient('n1'), node: 'n1' });
  const s2 = new ConfigStream({ client: await c.nodeClient('n2'), node: 'n2' });
  t.teardown(() => {
    s1.stop();
    s2.stop();
  });
  const u1 = updates(s1);
  const u2 = updates(s2);
  s1.start();
  s2.start();
  t.ok(await waitFor(() => u1.length > 0 && u2.length > 0), 'both got a snapshot');
  const keys = (s: ConfigStream): string[] => [...s.state.items.keys()].sort();
  t.same(keys(s1), ['AuthorizationPolicy/shop/only-a', 'MeshConfig//default', 'PeerAuthentication/shop/strict-a', 'RevocationList//revoked', 'Service/shop/a', 'TrustBundle//bundle', 'Workload/shop/a-1', 'Workload/shop/b-1']);
  t.same(keys(s2), ['MeshConfig//default', 'RevocationList//revoked', 'Service/shop/a', 'TrustBundle//bundle', 'Workload/shop/a-1', 'Workload/shop/b-1'], 'n2 runs nothing the policies select: it gets neither');
  t.match(s1.state.get('Service/shop/a'), { endpoints: ['a-1'] }, 'a service names its endpoints');
  t.match(MeshView.build(s1.state, 'n1').services.get('Service/shop/a')!.endpoints, [{ workload: 'a-1', node: 'n1', identity: 'spiffe://cluster.local/ns/shop/sa/a' }], 'the node resolves them to workloads');
  const n2Version = s2.state.version;

  // Deltas: time from apply to the node holding the version.
  const latencies: number[] = [];
  for (const rev of ['1', '2', '3', '4', '5']) {
    const before = u1.length;
    const started = process.hrtime.bigint();
    const r = await c.admin.apply([doc(peerAuth(rev))]);
    t.ok(await waitFor(() => u1.length > before, 2000, 1), `delta for revision ${rev} arrived`);
    latencies.push(Number(process.hrtime.bigint() - started) / 1e6);
    t.equal(s1.state.version, r.version);
    t.same(u1.at(-1)!.changed, ['PeerAuthentication/shop/strict-a'], 'the delta carries only the changed object');
  }
  latencies.sort((a, b) => a - b);
  t.ok(latencies[2]! < 100, `median apply-to-node latency ${latencies[2]!.toFixed(1)} ms is under 100 ms`);
  t.equal(s2.state.version, n2Version, 'n2 got nothing: none of it touched n2');

  // Moving b-1 into app=a touches both nodes: n2 now needs the peer authentication, n1's service endpoints change.
  await c.admin.apply([doc(wl('b-1', 'n2', 'a'))]);
  t.ok(await waitFor(() => s2.state.items.has('PeerAuthentication/shop/strict-a')), 'n2 gained the peer authentication');
  t.ok(await waitFor(() => (s1.state.get('Service/shop/a') as { endpoints: unknown[] }).endpoints.length === 2), 'n1 sees the new endpoint');
  await c.admin.delete([{ kind: 'PeerAuthentication', namespace: 'shop', name: 'strict-a' }]);
  t.ok(await waitFor(() => !s1.state.items.has('PeerAuthentication/shop/strict-a') && !s2.state.items.has('PeerAuthentication/shop/strict-a')), 'a deletion removes it from both');

  const nodes = await c.admin.listNodes();
  t.same(nodes.map((n) => [n.node, n.connected, n.ackedVersion === n.sentVersion]), [
    ['n1', true, true],
    ['n2', true, true],
  ]);
});

t.test('a reconnecting node gets only what changed while it was away', async (t) => {
  const c = await testController(t);
  await c.admin.apply([doc(wl('a-1', 'n1', 'a')), doc(policy(['1']), 2), doc(service, 3)]);
  const client = await c.nodeClient('n1');
  const s = new ConfigStream({ client, node: 'n1' });
  const u = updates(s);
  s.start();
  t.ok(await waitFor(() => u.length === 1));
  const snapshotSize = u[0]!.changed.length;
  s.stop();
  await waitFor(() => c.controller.hub.connectedCount === 0);
  await c.admin.apply([doc(policy(['2']))]);
  s.start();
  t.ok(await waitFor(() => u.length === 2), 'resumed');
  t.same(u[1]!.changed, ['AuthorizationPolicy/shop/only-a'], `a delta of 1 item, not a snapshot of ${snapshotSize}`);
  t.match(s.state.get('AuthorizationPolicy/shop/only-a'), { spec: { rules: [{ to: [{ operation: { ports: ['2'] } }] }] } });
  s.stop();
});

t.test('a NACKed version leaves the previous config and shows in the node list', async (t) => {
  const c = await testController(t);
  await c.admin.apply([doc(wl('a-1', 'n1', 'a')), doc(policy(['1']), 2)]);
  const s = new ConfigStream({
    client: await c.nodeClient('n1'),
    node: 'n1',
    validate: (staged) => ([...staged.upserts.values()].some((v) => (v as { metadata?: { labels?: { mark?: string } } }).metadata?.labels?.mark === 'bad') ? 'policy only-a uses a feature this proxy lacks' : null),
  });
  const nacks: string[] = [];
  s.on('nack', (_v, reason) => nacks.push(reason));
  const u = updates(s);
  s.start();
  t.teardown(() => s.stop());
  t.ok(await waitFor(() => u.length === 1));
  const held = s.state.version;
  const r = await c.admin.apply([doc(policy(['9'], 'bad'))]);
  t.ok(await waitFor(() => nacks.length === 1), 'the node refused it');
  t.equal(s.state.version, held, 'and kept the version it had');
  t.match(s.state.get('AuthorizationPolicy/shop/only-a'), { spec: { rules: [{ to: [{ operation: { ports: ['1'] } }] }] } });
  t.ok(await waitFor(() => c.logs.some((l) => l.msg === 'node refused a config version')), 'the controller logged it');
  const n = (await c.admin.listNodes()).find((x) => x.node === 'n1')!;
  t.equal(n.nackedVersion, r.version);
  t.equal(n.nackReason, 'policy only-a uses a feature this proxy lacks');
  // The node holds an older version than the one it refused: the next change comes whole.
  const good = await c.admin.apply([doc(policy(['3']))]);
  t.ok(await waitFor(() => s.state.version === good.version), 'the next good version is taken');
  t.match(s.state.get('AuthorizationPolicy/shop/only-a'), { spec: { rules: [{ to: [{ operation: { ports: ['3'] } }] }] } });
  t.equal(nacks.length, 1);
});

t.test('a node must say hello as itself', async (t) => {
  const c = await testController(t);
  const s = new ConfigStream({ client: await c.nodeClient('n1'), node: 'n2', backoffMs: 60_000 });
  const why = new Promise<string>((resolve) => s.once('disconnected', resolve));
  const failed = waitFor(() => c.logs.some((l) => l.msg === 'node stream refused'), 5000);
  s.start();
  t.teardown(() => s.stop());
  t.ok(await failed, 'refused');
  t.match(c.logs.find((l) => l.msg === 'node stream refused'), { details: 'hello names node n2, but the certificate is node n1', code: 'PERMISSION_DENIED' });
  t.equal(s.state.version, 0, 'and got nothing');
  void why;
});

t.test('where a node takes tunnels reaches the other nodes in its endpoints', async (t) => {
  const c = await testController(t);
  await c.admin.apply([doc(wl('a-1', 'n1', 'a')), doc(service, 2)]);
  const s2 = new ConfigStream({ client: await c.nodeClient('n2'), node: 'n2' });
  const u2 = updates(s2);
  s2.start();
  t.teardown(() => s2.stop());
  t.ok(await waitFor(() => u2.length === 1));
  const endpoint = () => MeshView.build(s2.state, 'n2').services.get('Service/shop/a')!.endpoints[0]!;
  t.match(endpoint(), { workload: 'a-1', node: 'n1', nodeAddresses: [] }, 'n1 has not said hello yet');
  const before = s2.state.version;
  const s1 = new ConfigStream({ client: await c.nodeClient('n1'), node: 'n1', addresses: ['198.18.0.1', '2001:2:0:0::1'] });
  const changes = updates(s2);
  s1.start();
  t.teardown(() => s1.stop());
  t.ok(await waitFor(() => endpoint().nodeAddresses!.length === 2), 'n2 learns n1 address from its hello');
  t.same(endpoint().nodeAddresses, ['198.18.0.1', '2001:2:0:0::1']);
  t.ok(s2.state.version >= before);
  t.same(changes.flatMap((u) => u.changed), ['Node//n1'], 'one Node item changed, not every workload on n1');
  t.same((await c.admin.listNodes()).find((n) => n.node === 'n1')!.addresses, ['198.18.0.1', '2001:2:0:0::1']);
});

t.test("a node may not publish a connected node's address; one that is gone gives it up", async (t) => {
  const c = await testController(t);
  await c.admin.apply([doc(wl('a-1', 'n1', 'a')), doc(service, 2)]);
  const s1 = new ConfigStream({ client: await c.nodeClient('n1'), node: 'n1', addresses: ['198.18.0.1', '2001:2::1'] });
  s1.start();
  t.teardown(() => s1.stop());
  t.ok(await waitFor(() => s1.state.version > 0), 'n1 is connected');
  for (const claim of ['198.18.0.1', '::ffff:198.18.0.1', '2001:2:0:0:0:0:0:1']) {
    const s3 = new ConfigStream({ client: await c.nodeClient('n3'), node: 'n3', addresses: ['198.18.0.3', claim], backoffMs: 60_000 });
    s3.start();
    const refused = await waitFor(() => s3.link.lastError !== '', 5000);
    s3.stop();
    t.ok(refused, `n3 claiming ${claim} is refused`);
    t.match(s3.link.lastError, /PERMISSION_DENIED: hello\.addresses: .* is node n1's, which is connected: a node publishes only its own addresses \(check --proxy-ip on node n3\)/);
    t.equal(s3.state.version, 0, 'and gets nothing');
  }
  t.same((await c.admin.listNodes()).find((n) => n.node === 'n1')!.addresses, ['198.18.0.1', '2001:2::1'], "n1 keeps its addresses");
  s1.stop();
  t.ok(await waitFor(async () => (await c.admin.listNodes()).find((n) => n.node === 'n1')?.connected === false, 5000), 'n1 is gone');
  // Its machine replaced, the address reused by a new node:
  const s4 = new ConfigStream({ client: await c.nodeClient('n4'), node: 'n4', addresses: ['198.18.0.1'] });
  s4.start();
  t.teardown(() => s4.stop());
  t.ok(await waitFor(() => s4.state.version > 0), 'n4 takes the address of a node that is not connected');
  const endpoint = () => MeshView.build(s4.state, 'n4').services.get('Service/shop/a')!.endpoints[0]!;
  t.ok(await waitFor(() => endpoint().nodeAddresses?.length === 1), "n1's Node item loses it");
  t.same(endpoint().nodeAddresses, ['2001:2::1'], 'n1 keeps only what nobody else took');
});
