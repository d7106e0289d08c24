/**
 * Delivery from the client's own address (docs/architecture.md, 'Delivery
 * from the client address'), in a 2-node lab with its controller and proxies. A
 * server in n2-p1 answers every connection with the peer address it sees:
 * - across nodes (through the tunnel) and on one node, over IPv4 and IPv6, it
 *   sees the client pod's own address, not the proxy's;
 * - STRICT still lets the mesh's delivery in and keeps plaintext out;
 * - 50,000 short connections from two pods, the clients closing first, all
 *   succeed: each client has its own port range toward the pod (from one
 *   proxy address they would share ~28,000 ports held in TIME_WAIT);
 * - `--deliver-from proxy` restores delivery from the proxy's address.
 */
import * as path from 'node:path';

import { t } from 'tap';

import { ControllerClient } from '../../src/controller/client';
import type { LabState } from '../../src/lab';
import { adminGet, adminSocketOf } from '../../src/node-proxy/admin';
import { PACKAGE_ROOT } from '../../src/paths';
import { bpfTest } from '../helpers/bpf';
import { fixture } from '../helpers/child';
import { doc } from '../helpers/controller';
import { labProcess, labRun, testLab } from '../helpers/lab';
import { findProcess, flagOf } from '../helpers/processes';
import { waitFor } from '../helpers/wait';

const A = 'nodemesh.io/v1alpha1';
const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');
const PORT = 7101;

interface Churn {
  ok: number;
  failed: Record<string, number>;
  peers: Record<string, number>;
  ms: number;
}

bpfTest(t, "pods see their clients' own addresses", async (t) => {
  const lab = await testLab(t, 2, 2, true);
  const [n1, n2] = lab.nodes as [LabState['nodes'][number], LabState['nodes'][number]];
  const pod = (name: string) => lab.pods.find((p) => p.name === name)!;
  const [a, b, server, neighbour] = [pod('n1-p1'), pod('n1-p2'), pod('n2-p1'), pod('n2-p2')];
  const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials);
  t.teardown(() => admin.close());
  await labProcess(t, lab, server.name, [process.execPath, fixture('churn-server.js'), String(PORT)], /serving/);

  const churn = async (from: string, host: string, count: number, concurrency: number): Promise<Churn> => {
    const out = await labRun(lab, from, [process.execPath, fixture('churn-client.js'), host, String(PORT), String(count), String(concurrency)]);
    if (out.code !== 0) throw new Error(`churn-client in ${from}: ${out.code} ${out.stderr}`);
    return JSON.parse(out.stdout) as Churn;
  };
  const seenBy = async (from: string, host: string): Promise<string[]> => Object.keys((await churn(from, host, 1, 1)).peers);

  await t.test('across nodes, through the tunnel, the pod sees the client pod', async (t) => {
    t.same(await seenBy(a.name, server.ip), [a.ip], `n2-p1 sees ${a.ip}, not n2's proxy (${n2.ip})`);
    t.same(await seenBy(a.name, server.ip6), [a.ip6], 'and over IPv6 its IPv6 address');
  });

  await t.test('on one node too', async (t) => {
    t.same(await seenBy(neighbour.name, server.ip), [neighbour.ip], `n2-p1 sees ${neighbour.ip}`);
    t.same(await seenBy(neighbour.name, server.ip6), [neighbour.ip6], 'over IPv6 as well');
  });

  await t.test("the proxy's /status says so, and the pod holds the rule that routes replies back", async (t) => {
    const st = JSON.parse(await adminGet(adminSocketOf(n2.name), '/status')) as { delivery: { mode: string; pods: number; failed: number } };
    t.match(st.delivery, { mode: 'client', pods: 2, failed: 0 }, "both of n2's pods are delivered to from their clients' addresses");
    t.match((await labRun(lab, server.name, ['ip', 'rule', 'show'])).stdout, /fwmark 0xe4d\/0xfff lookup 15006/, 'the fwmark rule in n2-p1');
    const cli = await labRun(lab, n2.name, [process.execPath, BIN, 'status', '--node', n2.name]);
    t.match(cli.stdout, /\n  delivery    from the client's own address to 2 pods\n/, `nodemesh status --node says so: ${cli.stdout}${cli.stderr}`);
  });

  await t.test('STRICT lets the delivery in and keeps plaintext out', async (t) => {
    const r = await admin.apply([doc({ apiVersion: A, kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'default' }, spec: { selector: { matchLabels: { pod: server.name } }, mtls: { mode: 'STRICT' } } })]);
    t.teardown(() => admin.delete([{ kind: 'PeerAuthentication', namespace: 'default', name: 'strict' }]).then(() => {}));
    t.ok(await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n2.name)!.ackedVersion >= r.version, 10_000, 100), 'STRICT reached n2');
    t.same(await seenBy(a.name, server.ip), [a.ip], 'through the mesh from another node');
    t.same(await seenBy(neighbour.name, server.ip), [neighbour.ip], 'through the mesh from the same node');
    // The node's own netns is outside the mesh: its plaintext must not get in, whatever address it comes from.
    const plain = await churn(n1.name, server.ip, 1, 1);
    t.equal(plain.ok, 0, 'plaintext from another node is dropped');
  });

  await t.test('50,000 short connections from two pods, clients closing first: none fail', async (t) => {
    const each = 25_000;
    const started = Date.now();
    const [ra, rb] = await Promise.all([churn(a.name, server.ip, each, 16), churn(b.name, server.ip, each, 16)]);
    const ms = Date.now() - started;
    const timeWait = await labRun(lab, server.name, ['ss', '-Htan', 'state', 'time-wait']);
    const held = timeWait.stdout.split('\n').filter((l) => l.trim()).length;
    t.comment(`50,000 connections across nodes in ${(ms / 1000).toFixed(1)} s (${Math.round(50_000 / (ms / 1000))}/s); ${held} in TIME_WAIT in n2-p1's netns afterwards`);
    t.same(ra.failed, {}, `${a.name}: no failures`);
    t.same(rb.failed, {}, `${b.name}: no failures`);
    t.same(ra.peers, { [a.ip]: each }, `${a.name}: every connection seen from its own address`);
    t.same(rb.peers, { [b.ip]: each }, `${b.name}: every connection seen from its own address`);
  });

  await t.test('--deliver-from proxy: the pod sees the proxy', async (t) => {
    const pid = findProcess((argv) => argv.includes(BIN) && argv.includes('proxy') && flagOf(argv, '--node') === n2.name);
    t.ok(pid, "the lab's proxy of n2 runs");
    const n2Proxy = lab.mesh!.proxies.find((p) => p.node === n2.name)!;
    process.kill(pid!, 'SIGTERM');
    t.ok(await waitFor(() => findProcess((argv) => argv.includes(BIN) && argv.includes('proxy') && flagOf(argv, '--node') === n2.name) === undefined, 20_000, 100), 'it stopped');
    await labProcess(
      t,
      lab,
      n2.name,
      [process.execPath, BIN, 'proxy', '--node', n2.name, '--controller', lab.mesh!.controller.address, '--ca-file', lab.mesh!.controller.caFile, '--state-dir', n2Proxy.stateDir, '--proxy-ip', n2.ip, '--proxy-ip6', n2.ip6, '--deliver-from', 'proxy'],
      /ready: outbound/,
    );
    let seen: string[] = [];
    t.ok(await waitFor(async () => (seen = await seenBy(a.name, server.ip).catch(() => [])).length > 0, 20_000, 200), 'the restarted proxy serves');
    t.same(seen, [n2.ip], 'across nodes: from the proxy address');
    t.same(await seenBy(neighbour.name, server.ip), [n2.ip], 'on one node: from the proxy address');
    const rules = await labRun(lab, server.name, ['ip', 'rule', 'show']);
    t.notMatch(rules.stdout, /lookup 15006/, 'and the rule the client-address delivery put in the pod is gone');
    const cli = await labRun(lab, n2.name, [process.execPath, BIN, 'status', '--node', n2.name]);
    t.match(cli.stdout, /\n  delivery    from the proxy's address \(--deliver-from proxy\)\n/, 'nodemesh status --node says so');
  });
});
