/**
 * The same-node fast path in a lab (docs/architecture.md, 'The same-node fast
 * path'): one node, two pods, its controller and proxy, MeshConfig
 * `sameNodeFastPath: true`. A pod's connection to the other pod of its node:
 * - its bytes arrive whole and the kernel, not the proxy, copied them (the
 *   proxy's fast-path counters), while the flow still shows every byte;
 * - an AuthorizationPolicy applied while it is open closes it (as it closes
 *   any connection the proxy copies), and the flow says why;
 * - switched off, new connections are copied by the proxy again.
 */
import * as path from 'node:path';

import { t } from 'tap';

import { ControllerClient } from '../../src/controller/client';
import { adminGet, adminSocketOf } from '../../src/node-proxy/admin';
import type { Flow } from '../../src/node-proxy/flows/flow-table';
import { PACKAGE_ROOT } from '../../src/paths';
import { bpfTest } from '../helpers/bpf';
import { fixture } from '../helpers/child';
import { doc, sample } from '../helpers/controller';
import { labProcess, labRun, testLab } from '../helpers/lab';
import { waitFor } from '../helpers/wait';

const A = 'nodemesh.io/v1alpha1';
const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');

bpfTest(t, 'the same-node fast path in a lab', async (t) => {
  const lab = await testLab(t, 1, 2, true);
  const node = lab.nodes[0]!;
  const [server, client] = [lab.pods.find((p) => p.name === 'n1-p1')!, lab.pods.find((p) => p.name === 'n1-p2')!];
  const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials);
  t.teardown(() => admin.close());
  await labProcess(t, lab, server.name, [process.execPath, fixture('mesh-server.js'), server.name], /serving/);

  const metrics = async (): Promise<string> => (await labRun(lab, node.name, [process.execPath, '-e', "fetch('http://127.0.0.1:15020/metrics').then(r=>r.text()).then(t=>process.stdout.write(t))"])).stdout;
  const joined = async (): Promise<number> => sample(await metrics(), 'nodemesh_fastpath_joined_total');
  const flows = async (): Promise<Flow[]> => JSON.parse(await adminGet(adminSocketOf(node.name), '/flows')) as Flow[];
  const echo = async (bytes: number): Promise<{ sent: number; received: number; same: boolean }> => {
    const r = await labRun(lab, client.name, [process.execPath, fixture('mesh-client.js'), 'echo', server.ip, '8080', String(bytes)]);
    if (r.code !== 0) throw new Error(`mesh-client echo: ${r.code} ${r.stderr}`);
    return JSON.parse(r.stdout) as { sent: number; received: number; same: boolean };
  };
  const meshConfig = (on: boolean) => admin.apply([doc({ apiVersion: A, kind: 'MeshConfig', metadata: { name: 'default' }, spec: { sameNodeFastPath: on } })]);

  t.equal(await joined(), 0, 'off by default: nothing joined before MeshConfig turns it on');
  await meshConfig(true);

  await t.test('bytes arrive whole, the kernel copied them, and the flow counts them', async (t) => {
    // The config reaches the proxy shortly after the apply: the first connection after it is joined.
    let r = await echo(1024);
    t.ok(await waitFor(async () => (r = await echo(1024)) && (await joined()) > 0, 10_000), 'a connection was handed to the kernel');
    const before = await joined();
    r = await echo(4 << 20);
    t.same(r, { sent: 4 << 20, received: 4 << 20, same: true }, '4 MB went there and back, unchanged');
    t.equal(await joined(), before + 1, 'that connection too was copied by the kernel');
    let flow: Flow | undefined;
    await waitFor(async () => (flow = (await flows()).find((f) => f.end && f.bytesSent === 4 << 20)) !== undefined, 5_000);
    t.ok(flow, 'its flow closed with every byte counted');
    t.equal(flow?.bytesReceived, 4 << 20, 'both ways');
    t.equal(flow?.destination.workload, server.name);
    // Most of these go back to the proxy part-way (a burst outruns the kernel's bound): every byte must still arrive in order.
    let whole = 0;
    for (let i = 0; i < 20; i++) if ((await echo(4 << 20)).same) whole++;
    t.equal(whole, 20, '20 more echoes of 4 MB came back whole and in order');
  });

  await t.test('a policy applied while it is open closes it', async (t) => {
    const hold = labProcess(t, lab, client.name, [process.execPath, fixture('mesh-client.js'), 'hold', server.ip, '8080', '8000']);
    const { output } = await hold;
    await new Promise((r) => setTimeout(r, 1_000));
    await admin.apply([
      doc({
        apiVersion: A,
        kind: 'AuthorizationPolicy',
        metadata: { name: 'no-p2', namespace: 'default' },
        spec: { selector: { matchLabels: { pod: server.name } }, action: 'DENY', rules: [{ from: [{ source: { principals: [`cluster.local/ns/default/sa/${client.name}`] } }] }] },
      }),
    ]);
    t.ok(await waitFor(() => output().includes('"failed"') && !output().includes('"failed":null'), 10_000), 'the open connection was cut');
    let flow: Flow | undefined;
    await waitFor(async () => (flow = (await flows()).find((f) => f.closeReason?.includes('policy changed'))) !== undefined, 5_000);
    t.match(flow?.closeReason, /denied: explicit-deny by default\/no-p2 \(policy changed while connected\)/, 'its flow names the policy');
    const r = await labRun(lab, client.name, [process.execPath, fixture('mesh-client.js'), 'echo', server.ip, '8080', '16']);
    t.match(r.stdout, /error|"received":0/, 'a new connection is refused too');
    await admin.delete([{ kind: 'AuthorizationPolicy', namespace: 'default', name: 'no-p2' }]);
  });

  await t.test('nodemesh status --node says so', async (t) => {
    const r = await labRun(lab, node.name, [process.execPath, BIN, 'status', '--node', node.name]);
    t.match(r.stdout, /fast path {3}on: 0 open, \d+ joined, \d+ handed back to the proxy/, r.stdout);
  });

  await t.test('switched off, the proxy copies new connections itself', async (t) => {
    await meshConfig(false);
    await new Promise((r) => setTimeout(r, 1_000));
    const before = await joined();
    t.same(await echo(1 << 20), { sent: 1 << 20, received: 1 << 20, same: true });
    t.equal(await joined(), before, 'not joined');
  });
});
