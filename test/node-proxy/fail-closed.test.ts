/**
 * Fail closed while no proxy is ready (docs/architecture.md, 'The data
 * path'), in a 2-node lab with its controller and proxies and a DENY on port
 * 7004 of a pod on n2. A server there records the peer of every connection
 * that reaches it, so anything that went around the mesh shows up there.
 * - SIGTERM of n1's proxy while a pod of n1 keeps connecting: none reach the
 *   server, the connects are refused (EPERM) and nm_stats counts them;
 * - the same with --fail-open: they do reach it (the test can fail);
 * - SIGKILL: refused throughout; once the heartbeat is stale the watchdog
 *   turns "connection refused by a dead port" into EPERM, counted;
 * - MeshConfig failOpen: only the workload it names goes around.
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';

import { t, type Test } from 'tap';

import { abi } from '../../src/bpf';
import { main } from '../../src/cli/main';
import { ControllerClient } from '../../src/controller/client';
import type { LabState } from '../../src/lab';
import { adminGet, adminSocketOf } from '../../src/node-proxy/admin';
import { Datapath } from '../../src/node-proxy/datapath';
import { PACKAGE_ROOT } from '../../src/paths';
import { bpfTest } from '../helpers/bpf';
import { fixture } from '../helpers/child';
import { alive, findProcess, flagOf } from '../helpers/processes';
import { doc } from '../helpers/controller';
import { labProcess, labRun, testLab } from '../helpers/lab';
import { waitFor } from '../helpers/wait';

const A = 'nodemesh.io/v1alpha1';
const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');
const DENIED = 7004;

interface Attempt {
  at: number;
  r: string;
}

function tally(results: Attempt[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const a of results) out[a.r] = (out[a.r] ?? 0) + 1;
  return out;
}

function delta(before: Record<string, bigint>, after: Record<string, bigint>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of Object.keys(after)) if (after[k] !== before[k]) out[k] = Number(after[k]! - (before[k] ?? 0n));
  return out;
}

/** The pid of the proxy `lab up` started for `node` (detached: found by its command line, which names this lab's node). */
function labProxyPid(node: string): number {
  const pid = findProcess((argv) => argv.includes(BIN) && argv.includes('proxy') && flagOf(argv, '--node') === node);
  if (pid === undefined) throw new Error(`no proxy process for node ${node}`);
  return pid;
}

t.test('nodemesh proxy refuses --fail-open with --fail-closed, before touching anything', async (t) => {
  let err = '';
  const code = await main(['proxy', '--node', 'n1', '--controller', '127.0.0.1:1', '--proxy-ip', '198.18.0.1', '--fail-open', '--fail-closed'], { out: () => {}, err: (s) => void (err += s) });
  t.equal(code, 64, 'a usage error');
  t.match(err, /--fail-open and --fail-closed contradict each other: give one \(fail closed is the default\)/);
});

bpfTest(t, 'no bypass while a node proxy is down', async (t) => {
  const lab = await testLab(t, 2, 2, true);
  const [n1, n2] = lab.nodes as [LabState['nodes'][number], LabState['nodes'][number]];
  const pod = (name: string) => lab.pods.find((p) => p.name === name)!;
  const [client, other, server] = [pod('n1-p1'), pod('n1-p2'), pod('n2-p1')];
  const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials);
  t.teardown(() => admin.close());
  const n1Proxy = lab.mesh!.proxies.find((p) => p.node === n1.name)!;
  const dp = Datapath.open(n1.name);
  t.teardown(() => dp.close());

  const { output: serverOut } = await labProcess(t, lab, server.name, [process.execPath, fixture('peer-server.js'), String(DENIED), 'hold:7005'], /serving/);
  /** Peers of the connections that reached the server's denied port. */
  const reached = (): string[] =>
    serverOut()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { port: number; peer: string })
      .filter((c) => c.port === DENIED)
      .map((c) => c.peer);

  const acked = async (version: number, nodes: string[]): Promise<boolean> =>
    waitFor(async () => (await admin.listNodes()).filter((n) => nodes.includes(n.node)).every((n) => n.ackedVersion >= version), 10_000, 100);
  const r = await admin.apply([
    doc({
      apiVersion: A,
      kind: 'AuthorizationPolicy',
      metadata: { name: 'deny-7004', namespace: 'default' },
      spec: { selector: { matchLabels: { pod: server.name } }, action: 'DENY', rules: [{ to: [{ operation: { ports: [String(DENIED)] } }] }] },
    }),
  ]);
  // The destination's proxy decides; only its node is sent a policy selecting its pod.
  t.ok(await acked(r.version, [n2.name]), 'the DENY is in place on n2');

  const loop = async (from: string, ms: number): Promise<Attempt[]> => {
    const out = await labRun(lab, from, [process.execPath, fixture('connect-loop.js'), server.ip, String(DENIED), String(ms)]);
    if (out.code !== 0) throw new Error(`connect-loop in ${from}: ${out.code} ${out.stderr}`);
    return (JSON.parse(out.stdout) as { results: Attempt[] }).results;
  };
  const startProxy = async (t: Test, flags: string[] = []) => {
    // The state dir holds the node certificate from the first start: no token needed.
    const p = await labProcess(
      t,
      lab,
      `n${n1.index}`,
      [process.execPath, BIN, 'proxy', '--node', n1.name, '--controller', lab.mesh!.controller.address, '--ca-file', lab.mesh!.controller.caFile, '--state-dir', n1Proxy.stateDir, '--proxy-ip', n1.ip, '--proxy-ip6', n1.ip6, ...flags],
      /ready: outbound/,
    );
    t.ok(await waitFor(() => dp.status().proxy.alive, 5_000), 'the data path sees a live proxy');
    return p;
  };

  await t.test('with the proxy up the DENY holds, and the node says it fails closed', async (t) => {
    const res = await loop(client.name, 1_000);
    t.equal(reached().length, 0, `none of ${res.length} connections reached the denied port`);
    t.notOk(res.some((a) => a.r === 'ok'), 'the client got no greeting');
    t.match(dp.status().proxy, { alive: true, mode: 'fail-closed' });
    const st = JSON.parse(await adminGet(adminSocketOf(n1.name), '/status')) as { failMode: string };
    t.equal(st.failMode, 'fail-closed', "the proxy's /status");
    t.ok(await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n1.name)?.failMode === 'fail-closed', 5_000), "the controller's node list");
  });

  await t.test('SIGTERM: connects during the drain and after are refused, none go around', async (t) => {
    // A connection through the mesh (allowed port) that the proxy drains: the shutdown lasts while it is open.
    const held = await labProcess(t, lab, client.name, [process.execPath, '-e', `require('net').connect(7005, '${server.ip}').on('data', () => console.log('held')).on('close', () => console.log('closed'))`], /held/);
    const pid = labProxyPid(n1.name);
    const before = dp.counters();
    const running = loop(client.name, 6_000);
    await new Promise((r) => setTimeout(r, 1_000));
    process.kill(pid, 'SIGTERM');
    const killedAt = Date.now();
    const res = await running;
    const drainingAtEnd = alive(pid);
    held.child.kill('SIGKILL');
    t.ok(await waitFor(() => !alive(pid), 30_000, 50), 'the proxy exits');
    const exitMs = Date.now() - killedAt;
    const counts = tally(res);
    const d = delta(before, dp.counters());
    t.comment(
      `SIGTERM (fail closed): ${res.length} attempted, ${JSON.stringify(counts)}; proxy still draining when the client stopped: ${drainingAtEnd}; exited ${exitMs} ms after SIGTERM; counters ${JSON.stringify(d)}`,
    );
    t.equal(reached().length, 0, 'no connection reached the denied port');
    t.notOk(counts.ok, 'the client never got through');
    t.ok((counts.EPERM ?? 0) > 0, 'refused by the kernel (EPERM)');
    t.ok((d.proxy_down ?? 0) >= (counts.EPERM ?? 0), 'each refusal counted as proxy_down');
    t.notOk(d.proxy_down_open, 'none let around the proxy');
    t.match(dp.config(), { ready: false, failOpen: false }, 'not ready, still fail closed');
  });

  await t.test('SIGTERM with --fail-open: the connects go around the proxy (what fail closed prevents)', async (t) => {
    const p = await startProxy(t, ['--fail-open']);
    t.equal(dp.status().proxy.mode, 'fail-open');
    t.ok(await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n1.name)?.failMode === 'fail-open', 5_000), 'the node list says fail-open');
    const reachedBefore = reached().length;
    const before = dp.counters();
    const running = loop(client.name, 4_000);
    await new Promise((r) => setTimeout(r, 1_000));
    p.child.kill('SIGTERM');
    t.ok(await waitFor(() => p.child.exitCode !== null, 30_000, 50), 'the proxy exits');
    const res = await running;
    const counts = tally(res);
    const d = delta(before, dp.counters());
    const around = reached().slice(reachedBefore);
    t.comment(`SIGTERM (--fail-open): ${res.length} attempted, ${JSON.stringify(counts)}, ${around.length} reached the denied port, counters ${JSON.stringify(d)}`);
    t.ok(around.length > 0, 'connections reached the denied port');
    t.ok(
      around.every((peer) => peer === client.ip),
      "from the client's own address: around the mesh, not through it",
    );
    t.equal(d.proxy_down_open, d.proxy_down, 'every proxy_down connect was let around, and counted so');
    dp.configure({ failOpen: false });
  });

  await t.test('SIGKILL: refused throughout; after the watchdog period with EPERM, counted', async (t) => {
    const p = await startProxy(t);
    t.equal(dp.status().proxy.mode, 'fail-closed', 'a proxy without --fail-open sets the node back to fail closed');
    const reachedBefore = reached().length;
    const before = dp.counters();
    const running = loop(client.name, 7_000);
    await new Promise((r) => setTimeout(r, 1_000));
    p.child.kill('SIGKILL');
    const res = await running;
    const counts = tally(res);
    const d = delta(before, dp.counters());
    const firstEperm = res.find((a) => a.r === 'EPERM');
    const lastRefused = res.filter((a) => a.r === 'ECONNREFUSED').at(-1);
    t.comment(
      `SIGKILL: ${res.length} attempted, ${JSON.stringify(counts)}, first EPERM at ${firstEperm?.at} ms (killed at ~1000 ms), last ECONNREFUSED at ${lastRefused?.at} ms, counters ${JSON.stringify(d)}`,
    );
    t.equal(reached().length - reachedBefore, 0, 'no connection reached the denied port');
    t.notOk(counts.ok, 'the client never got through');
    t.ok(firstEperm, 'the watchdog fired: EPERM');
    t.ok(firstEperm && (!lastRefused || lastRefused.at < firstEperm.at), 'after it, no connect is sent to the dead port');
    t.ok((d.proxy_stale ?? 0) > 0, 'counted as proxy_stale');
    t.ok((d.proxy_down ?? 0) >= (counts.EPERM ?? 0), 'and as proxy_down');
    t.notOk(d.proxy_down_open, 'none let around the proxy');
    t.match(dp.status().proxy, { alive: false, mode: 'fail-closed' });
    t.ok(dp.config().ready, 'ready is still set in the map: the heartbeat is what says the proxy is gone');
    const cli = execFileSync(process.execPath, [BIN, 'status', '--node', n1.name], { encoding: 'utf8' });
    t.match(cli, /^proxy .* NOT ready \(heartbeat \d+ \w+ old: proxy gone\)  fail-closed: pods' connects are refused with EPERM while no proxy is ready$/m, 'nodemesh status --node says so');
  });

  await t.test('MeshConfig failOpen lets only the workload it names around a proxy that is down', async (t) => {
    const p = await startProxy(t);
    const flags = (): number[] => dp.pods().map((e) => e.flags & abi.POD_FAIL_OPEN);
    const storeBefore = (await admin.nodeList()).version;
    await t.rejects(
      admin.apply([doc({ apiVersion: A, kind: 'MeshConfig', metadata: { name: 'default' }, spec: { failOpen: [{ selector: { matchLabels: { pod: client.name } } }] } })]),
      { message: /spec\.failOpen\[0\]\.namespace: required/ },
      'a failOpen entry without its namespace is refused, naming the field',
    );
    t.equal((await admin.nodeList()).version, storeBefore, 'nothing applied');
    t.same(flags().filter(Boolean), [], 'no pod carries the flag');
    const r = await admin.apply([
      doc({ apiVersion: A, kind: 'MeshConfig', metadata: { name: 'default' }, spec: { failOpen: [{ namespace: 'default', selector: { matchLabels: { pod: client.name } } }] } }),
    ]);
    t.ok(await acked(r.version, [n1.name, n2.name]), 'the MeshConfig is on the nodes');
    t.ok(await waitFor(() => flags().filter(Boolean).length === 1, 5_000), 'one pod of n1 carries the fail-open flag in nm_pods');
    p.child.kill('SIGTERM');
    t.ok(await waitFor(() => p.child.exitCode !== null, 30_000, 50), 'the proxy exits');
    const reachedBefore = reached().length;
    const before = dp.counters();
    const [named, unnamed] = await Promise.all([loop(client.name, 1_500), loop(other.name, 1_500)]);
    const around = reached().slice(reachedBefore);
    const d = delta(before, dp.counters());
    t.comment(`failOpen ${client.name}: ${JSON.stringify(tally(named))}; ${other.name}: ${JSON.stringify(tally(unnamed))}; counters ${JSON.stringify(d)}`);
    t.ok(named.every((a) => a.r === 'ok'), `${client.name} (named) goes around`);
    t.ok(unnamed.every((a) => a.r === 'EPERM'), `${other.name} (not named) is refused`);
    t.ok(around.length > 0 && around.every((peer) => peer === client.ip), `only ${client.name} reached the server`);
    t.equal(d.proxy_down_open, named.length, 'the ones let around are counted');
  });
});
