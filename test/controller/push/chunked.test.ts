/**
 * Config larger than one message, over real gRPC and TLS on loopback: a slice
 * over the node's receive limit arrives in parts and is taken whole; a stream
 * that breaks in the middle of a snapshot never leaves half of it applied; an
 * item that cannot fit the node's limit ends the stream with an error that
 * says so, instead of a silent loop.
 *
 * The node's receive limit is set low here (256 KiB, 64 KiB) so that a few
 * thousand workloads cross it; the same mechanism carries 50,000 under the
 * default limits (`npm run bench:controller`).
 */
import { t } from 'tap';

import { formatBytes } from '../../../src/api/limits';
import { ConfigState, ConfigStream, MeshView, type ApplyResult, type Progress } from '../../../src/node-proxy/state';
import { doc, testController, type TestController } from '../../helpers/controller';
import { waitFor } from '../../helpers/wait';

const A = 'nodemesh.io/v1alpha1';
const WORKLOADS = 6000;
const SERVICES = 600;

const workload = (i: number) => ({
  apiVersion: A,
  kind: 'Workload',
  metadata: { name: `w${i}`, namespace: 'bench', labels: { app: `svc-${i % SERVICES}` } },
  spec: { node: `node-${i % 50}`, serviceAccount: `sa-${i % SERVICES}`, addresses: [`198.18.${Math.floor(i / 250)}.${(i % 250) + 1}`] },
});
const service = (s: number) => ({
  apiVersion: A,
  kind: 'Service',
  metadata: { name: `svc-${s}`, namespace: 'bench' },
  spec: { selector: { app: `svc-${s}` }, addresses: [`198.19.${Math.floor(s / 250)}.${(s % 250) + 1}`], ports: [{ port: 80 }] },
});

async function load(c: TestController): Promise<void> {
  const all = [...Array.from({ length: SERVICES }, (_, s) => service(s)), ...Array.from({ length: WORKLOADS }, (_, i) => workload(i))];
  for (let i = 0; i < all.length; i += 1000) await c.admin.apply(all.slice(i, i + 1000).map((v, j) => doc(v, j + 1)));
}

async function metric(c: TestController, name: string, labels = ''): Promise<number> {
  const text = await c.controller.metrics.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

function watch(s: ConfigStream): { updates: ApplyResult[]; parts: Progress[]; ends: string[] } {
  const out = { updates: [] as ApplyResult[], parts: [] as Progress[], ends: [] as string[] };
  s.on('update', (r) => out.updates.push(r));
  s.on('part', (p) => out.parts.push(p));
  s.on('disconnected', (why) => out.ends.push(why));
  return out;
}

t.test('a slice larger than the node takes in one message arrives in parts and is taken whole', async (t) => {
  const c = await testController(t);
  await load(c);
  const limit = 256 * 1024;
  const bytesBefore = await metric(c, 'nodemesh_controller_config_sent_bytes_total', '{type="snapshot"}');
  const s = new ConfigStream({ client: await c.nodeClient('node-1', { maxResponseBytes: limit }), node: 'node-1' });
  const seen = watch(s);
  s.start();
  t.teardown(() => s.stop());
  t.ok(await waitFor(() => seen.updates.length === 1, 30_000), 'the node took a version');
  const bytes = (await metric(c, 'nodemesh_controller_config_sent_bytes_total', '{type="snapshot"}')) - bytesBefore;
  t.ok(bytes > limit, `the snapshot (${formatBytes(bytes)}) is larger than the node's limit (${formatBytes(limit)})`);
  t.ok(seen.parts.length >= 4, `it came in ${seen.parts.length + 1} parts, each under a quarter of the limit`);
  t.equal(seen.ends.length, 0, 'the stream never broke');
  const held = [...s.state.items.keys()];
  t.equal(held.filter((k) => k.startsWith('Workload/')).length, WORKLOADS, `all ${WORKLOADS} workloads`);
  t.equal(held.filter((k) => k.startsWith('Service/')).length, SERVICES, `all ${SERVICES} services`);
  t.equal(seen.updates[0]!.changed.length, held.length, 'taken as one version');
  const view = MeshView.build(s.state, 'node-1');
  t.same(
    view.services.get('Service/bench/svc-7')!.endpoints.map((e) => e.workload),
    Array.from({ length: WORKLOADS / SERVICES }, (_, k) => `w${7 + k * SERVICES}`).sort(),
    'a service resolves its endpoints on the node',
  );
  t.match(view.workloadAt('198.18.0.8'), { name: 'w7', identity: 'spiffe://cluster.local/ns/bench/sa/sa-7', node: 'node-7' });
  t.comment(`snapshot: ${bytes} bytes for ${WORKLOADS} workloads and ${SERVICES} services: ${(bytes / (WORKLOADS + SERVICES)).toFixed(0)} bytes per item`);
  const n = (await c.admin.listNodes()).find((x) => x.node === 'node-1')!;
  t.equal(n.ackedVersion, s.state.version, 'the controller saw one ACK of it');

  // A new trust domain changes every identity: one MeshConfig item, the node derives the rest.
  const before = seen.parts.length;
  const r = await c.admin.apply([doc({ apiVersion: A, kind: 'MeshConfig', metadata: { name: 'default' }, spec: { trustDomain: 'example.org' } })]);
  t.ok(await waitFor(() => s.state.version === r.version, 30_000), 'the mesh-wide change is taken');
  t.equal(MeshView.build(s.state, 'node-1').workloadAt('198.18.0.8')!.identity, 'spiffe://example.org/ns/bench/sa/sa-7', 'identities follow the trust domain');
  // Re-labelling 1,000 workloads in one apply: one version, in several parts.
  const relabel = Array.from({ length: 1000 }, (_, i) => ({ ...workload(i), metadata: { ...workload(i).metadata, labels: { app: `svc-${i % SERVICES}`, ...Object.fromEntries([0, 1, 2, 3].map((k) => [`tier-${k}`, 'x'.repeat(60)])) } } }));
  const r2 = await c.admin.apply(relabel.map((v, j) => doc(v, j + 1)));
  t.ok(await waitFor(() => s.state.version === r2.version, 30_000), 'a delta of 1,000 workloads is taken');
  t.ok(seen.parts.length > before + 1, `the deltas came in parts (${seen.parts.length - before} more parts)`);
  t.equal((s.state.get('Workload/bench/w999') as { metadata: { labels: Record<string, string> } }).metadata.labels['tier-3'], 'x'.repeat(60));
  t.equal(seen.ends.length, 0);
});

t.test('a stream that breaks in the middle of a snapshot starts it over and never applies half', async (t) => {
  const c = await testController(t);
  await load(c);
  const client = await c.nodeClient('node-2', { maxResponseBytes: 256 * 1024 });
  const s = new ConfigStream({ client, node: 'node-2', backoffMs: 50 });
  const seen = watch(s);
  let cut = false;
  s.on('part', (p) => {
    // After the second part: the node has some of the snapshot, not all of it.
    if (!cut && p.parts === 2) {
      cut = true;
      t.ok(p.items < p.totalItems, `cut at ${p.items} of ${p.totalItems} items`);
      s.setClient(client); // cancels this stream and opens another, as a renewed certificate does
    }
  });
  s.start();
  t.teardown(() => s.stop());
  t.ok(await waitFor(() => seen.updates.length >= 1, 30_000), 'a version was taken');
  t.ok(cut, 'the stream was cut mid-snapshot');
  t.equal(seen.updates.length, 1, 'exactly one version taken');
  t.equal(seen.updates[0]!.changed.length, s.state.items.size, 'and it was the whole snapshot');
  t.equal([...s.state.items.keys()].filter((k) => k.startsWith('Workload/')).length, WORKLOADS, `all ${WORKLOADS} workloads`);
  t.ok(seen.parts.length >= 2 * 4, 'the parts before the cut were sent again');
});

t.test('an item too large for the node ends its stream with an error naming it; the node keeps its config', async (t) => {
  const c = await testController(t);
  const A1 = { ...workload(1), spec: { ...workload(1).spec, node: 'small' } };
  await c.admin.apply([doc(A1), doc(service(1), 2)]);
  const limit = 64 * 1024;
  const small = new ConfigStream({ client: await c.nodeClient('small', { maxResponseBytes: limit }), node: 'small', backoffMs: 200 });
  const seen = watch(small);
  small.start();
  t.teardown(() => small.stop());
  t.ok(await waitFor(() => seen.updates.length === 1, 10_000), 'it holds a config');
  const held = small.state.version;

  // A policy for the workload on that node, larger than the node takes in one message.
  const rules = Array.from({ length: 100 }, (_, i) => ({ from: [{ source: { principals: [0, 1, 2, 3, 4].map((k) => `cluster.local/ns/bench/sa/${'p'.repeat(150)}-${i}-${k}`) } }] }));
  const big = { apiVersion: A, kind: 'AuthorizationPolicy', metadata: { name: 'big', namespace: 'bench' }, spec: { selector: { matchLabels: { app: 'svc-1' } }, action: 'ALLOW', rules } };
  const refusedBefore = await metric(c, 'nodemesh_controller_config_refused_total');
  await c.admin.apply([doc(big)]);
  t.ok(await waitFor(() => seen.ends.length > 0, 10_000), 'the stream ended');
  t.match(seen.ends[0], /AuthorizationPolicy\/bench\/big is [\d.]+ KiB on the wire, more than node small takes in one message \(64 KiB/, 'the node is told which item and which limit');
  t.ok((await metric(c, 'nodemesh_controller_config_refused_total')) > refusedBefore, 'the controller counts it');
  t.ok(await waitFor(() => c.logs.some((l) => l.msg === 'cannot send the node its config' && l.node === 'small'), 5000), 'and logs it');
  t.equal(small.state.version, held, 'the node keeps the config it had');
  t.ok(small.state.items.has('Workload/bench/w1'));

  // The same policy reaches a node with the default limit.
  const other = new ConfigStream({ client: await c.nodeClient('node-1'), node: 'node-1' });
  const A2 = { ...workload(11), spec: { ...workload(11).spec, node: 'node-1' } };
  await c.admin.apply([doc({ ...A2, metadata: { ...A2.metadata, labels: { app: 'svc-1' } } })]);
  other.start();
  t.teardown(() => other.stop());
  t.ok(await waitFor(() => other.state.items.has('AuthorizationPolicy/bench/big'), 10_000), 'a node with room for it gets it');

  // Once the policy is gone, the small node gets its config again.
  const gone = await c.admin.delete([{ kind: 'AuthorizationPolicy', namespace: 'bench', name: 'big' }]);
  t.ok(await waitFor(() => small.state.version >= gone.version, 20_000), 'the small node catches up after the item is gone');
});

t.test('a snapshot larger than the node holds is refused once, at its first part, and shows in the node list', async (t) => {
  const c = await testController(t);
  await load(c);
  const s = new ConfigStream({ client: await c.nodeClient('node-3', { maxResponseBytes: 256 * 1024 }), node: 'node-3', state: new ConfigState({ maxItems: 1000 }) });
  const nacks: string[] = [];
  s.on('nack', (_v, reason) => nacks.push(reason));
  s.start();
  t.teardown(() => s.stop());
  t.ok(await waitFor(() => nacks.length > 0, 10_000), 'the node refused it');
  t.match(nacks[0], /the snapshot has 6603 items, more than this node holds \(1000, --max-config-items\)/);
  t.ok(await waitFor(async () => (await c.admin.listNodes()).find((n) => n.node === 'node-3')?.nackReason === nacks[0], 5000), 'nodemesh status shows why');
  await new Promise((r) => setTimeout(r, 500));
  t.equal(nacks.length, 1, 'one refusal, not one per part');
  t.equal(s.state.version, 0, 'and nothing taken');
});
