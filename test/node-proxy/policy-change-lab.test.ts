/**
 * A policy applied while connections are open (docs/architecture.md, 'Policy
 * changes and open connections'), in a 2-node lab with its controller and
 * proxies: a connection across nodes (through the tunnel, decided by the
 * destination's proxy) and one on one node (decided by the source's proxy,
 * copied by the proxy) each make a round trip every 100 ms. A DENY for the
 * client is applied: both are cut within moments, the deciding proxy's flow
 * names the policy, and a connection the policy does not select keeps going.
 */
import { t } from 'tap';

import { ControllerClient } from '../../src/controller/client';
import { adminGet, adminSocketOf } from '../../src/node-proxy/admin';
import type { Flow } from '../../src/node-proxy/flows/flow-table';
import { bpfTest } from '../helpers/bpf';
import { fixture } from '../helpers/child';
import { doc } from '../helpers/controller';
import { labProcess, testLab } from '../helpers/lab';
import { waitFor } from '../helpers/wait';

const A = 'nodemesh.io/v1alpha1';

bpfTest(t, 'a policy applied while connected closes what it denies', async (t) => {
  const lab = await testLab(t, 2, 2, true);
  const pod = (name: string) => lab.pods.find((p) => p.name === name)!;
  const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials);
  t.teardown(() => admin.close());
  for (const server of ['n1-p1', 'n2-p1']) await labProcess(t, lab, server, [process.execPath, fixture('mesh-server.js'), server], /serving/);
  const hold = async (from: string, to: string) =>
    (await labProcess(t, lab, from, [process.execPath, fixture('mesh-client.js'), 'hold', pod(to).ip, '8080', '15000'])).output;
  const cross = await hold('n1-p2', 'n2-p1');
  const same = await hold('n1-p2', 'n1-p1');
  const other = await hold('n2-p2', 'n2-p1');
  const roundTrips = (out: () => string): boolean => out().length === 0;
  await new Promise((r) => setTimeout(r, 1_000));
  t.ok([cross, same, other].every(roundTrips), 'all three connections are up and quiet (no result yet)');

  await admin.apply([
    doc({
      apiVersion: A,
      kind: 'AuthorizationPolicy',
      metadata: { name: 'no-n1-p2', namespace: 'default' },
      spec: { action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/default/sa/n1-p2'] } }] }] },
    }),
  ]);
  const failed = (out: () => string): boolean => /"failed":"/.test(out());
  t.ok(await waitFor(() => failed(cross), 10_000), 'the connection across nodes was cut');
  t.ok(await waitFor(() => failed(same), 10_000), 'the connection on one node was cut');
  t.notOk(failed(other), 'a connection the policy does not select keeps going');

  const flows = async (node: string): Promise<Flow[]> => JSON.parse(await adminGet(adminSocketOf(node), '/flows')) as Flow[];
  const [n1, n2] = [lab.nodes[0]!, lab.nodes[1]!];
  const why = /^denied: explicit-deny by default\/no-n1-p2 \(policy changed while connected\)$/;
  let dst: Flow | undefined;
  await waitFor(async () => (dst = (await flows(n2.name)).find((f) => f.end && f.source.identity?.endsWith('/sa/n1-p2'))) !== undefined, 5_000);
  t.match(dst?.closeReason, why, "n2's proxy, which decided the tunnelled one, names the policy in its flow");
  let local: Flow | undefined;
  await waitFor(async () => (local = (await flows(n1.name)).find((f) => f.end && f.destination.workload === 'n1-p1')) !== undefined, 5_000);
  t.match(local?.closeReason, why, "n1's proxy, which decided the one on its node, names it in its flow");
  let src: Flow | undefined;
  await waitFor(async () => (src = (await flows(n1.name)).find((f) => f.end && f.destination.workload === 'n2-p1')) !== undefined, 5_000);
  t.ok(src, "n1's flow of the tunnelled one ended too");
});
