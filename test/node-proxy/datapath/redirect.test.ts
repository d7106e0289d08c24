/**
 * The data path in a real lab: pods (network namespaces + cgroups) connect to
 * Service VIPs; their node's "proxy" (`nodemesh datapath echo`, in the node's
 * namespace) answers with the origin the kernel recorded. The programs sit at
 * the cgroup2 root, so a process that entered a pod's netns from elsewhere is
 * captured too.
 */
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { t, type Test } from 'tap';

import { abi, cgroupId, findCgroup2Mount, netnsCookie } from '../../../src/bpf';
import type { LabState } from '../../../src/lab';
import { Datapath, monotonicNs, type FlowRecord } from '../../../src/node-proxy/datapath';
import { PACKAGE_ROOT } from '../../../src/paths';
import { bpfTest } from '../../helpers/bpf';
import { fixture } from '../../helpers/child';
import { labProcess, labRun, testLab } from '../../helpers/lab';
import { onCleanup, tempCgroup, tempPinDir } from '../../helpers/scratch';
import { waitFor } from '../../helpers/wait';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');
const VIP = '198.19.0.10';

interface Answer {
  peer: string;
  origin: { ip: string; port: number; netnsCookie: string; cgroupId: string; pid: number; family: number } | null;
}
type Result = { ok: true; answer: string } | { ok: false; code: string };

async function client(lab: LabState, pod: string, host: string, port: number, count = 1, concurrency = 1, family = 4): Promise<{ pid: number; results: Result[] }> {
  const r = await labRun(lab, pod, [process.execPath, fixture('origin-client.js'), host, String(port), String(count), String(concurrency), String(family)]);
  if (r.code !== 0) throw new Error(`origin-client in ${pod} failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as { pid: number; results: Result[] };
}

/** origin-client run in a pod's network namespace only, staying in this process's cgroup (nsenter --net). */
async function netnsOnlyClient(netns: string, host: string, port: number, family = 4): Promise<{ pid: number; results: Result[] }> {
  const child = spawn('nsenter', [`--net=/run/netns/${netns}`, process.execPath, fixture('origin-client.js'), host, String(port), '1', '1', String(family)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve, reject) => child.on('error', reject).on('close', resolve));
  if (code !== 0) throw new Error(`origin-client in netns ${netns} failed (${code}): ${stderr}`);
  return JSON.parse(stdout) as { pid: number; results: Result[] };
}

function ownCgroup(): string {
  const rel = /^0::(.*)$/m.exec(fs.readFileSync('/proc/self/cgroup', 'utf8'))![1]!;
  return path.join(findCgroup2Mount()!, rel);
}

function answers(results: Result[]): Answer[] {
  return results.map((r) => {
    if (!r.ok) throw new Error(`connect failed: ${r.code}`);
    return JSON.parse(r.answer) as Answer;
  });
}

function codes(results: Result[]): string[] {
  return results.map((r) => (r.ok ? 'ok' : r.code));
}

function delta(before: Record<string, bigint>, after: Record<string, bigint>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of Object.keys(after)) if (after[k] !== before[k]) out[k] = Number(after[k]! - (before[k] ?? 0n));
  return out;
}

async function startEcho(t: Test, lab: LabState, node: string): Promise<() => string> {
  const { output } = await labProcess(t, lab, `n${node.split('-n')[1]}`, [process.execPath, BIN, 'datapath', 'echo', '--node', node], /listening on/);
  return output;
}

bpfTest(t, 'the data path in a lab', async (t) => {
  const lab = await testLab(t, 2, 2);
  const n1 = lab.nodes[0]!;
  const [p1, p2] = lab.pods.filter((p) => p.node === n1.name);
  const dp = Datapath.install({ node: n1.name, proxyIp: n1.ip, proxyIp6: n1.ip6 });
  t.teardown(() => dp.uninstall());
  t.equal(dp.cgroup(), findCgroup2Mount(), 'attached at the cgroup2 root by default');
  t.equal(dp.status().capture, 'netns');
  const cookie1 = await dp.enroll(`/run/netns/${p1!.netns}`, { index: 1 });
  const cookie2 = await dp.enroll(`/run/netns/${p2!.netns}`, { index: 2 });
  const flows: FlowRecord[] = [];
  const rb = dp.flowEvents((records) => flows.push(...records));
  t.teardown(() => rb.close());
  const echoOutput = await startEcho(t, lab, n1.name);
  t.equal(dp.config().ready, true, 'echo marked the data path ready');

  await t.test('a pod connecting to a Service VIP reaches its node proxy with its true origin', async (t) => {
    const before = dp.counters();
    const a = await client(lab, 'n1-p1', VIP, 80);
    const b = await client(lab, 'n1-p2', '198.19.7.7', 8080);
    const [ansA] = answers(a.results);
    const [ansB] = answers(b.results);
    t.match(ansA!.peer, new RegExp(`^${p1!.ip.replace(/\./g, '\\.')}:\\d+$`), 'the proxy sees the pod as the peer');
    t.match(
      ansA!.origin,
      { ip: VIP, port: 80, netnsCookie: String(cookie1), cgroupId: String(cgroupId(p1!.cgroup)), pid: a.pid, family: 4, startNs: /^\d+$/ },
      'origin of n1-p1: VIP, its netns cookie, its cgroup, its pid',
    );
    t.equal(String(await netnsCookie(`/run/netns/${p1!.netns}`)), ansA!.origin!.netnsCookie);
    t.match(ansB!.origin, { ip: '198.19.7.7', port: 8080, netnsCookie: String(cookie2), cgroupId: String(cgroupId(p2!.cgroup)), pid: b.pid });
    t.same(delta(before, dp.counters()), { redirected: 2, closed: 2 });
    t.ok(await waitFor(() => flows.length >= 2), 'flow events arrived');
    const f = flows.find((x) => x.origin.pid === a.pid)!;
    t.match(f, { srcIp: p1!.ip, established: true, origin: { ip: VIP, port: 80, netnsCookie: cookie1 } });
    t.ok(f.bytesReceived > 0n, 'the flow counts the bytes the pod received');
    t.ok(f.endNs > f.origin.startNs);
  });

  await t.test('IPv4 through a dual-stack IPv6 socket goes through connect6', async (t) => {
    const before = dp.counters();
    const r = await client(lab, 'n1-p1', VIP, 443, 1, 1, 6);
    const [ans] = answers(r.results);
    t.match(ans!.origin, { ip: VIP, port: 443, netnsCookie: String(cookie1), family: 6 });
    t.same(delta(before, dp.counters()), { redirected: 1, closed: 1 });
  });

  await t.test('native IPv6: a pod connecting to an IPv6 VIP reaches the proxy on its IPv6 address', async (t) => {
    const before = dp.counters();
    const r = await client(lab, 'n1-p2', '2001:2:0:ffff::10', 80);
    const [ans] = answers(r.results);
    t.match(ans!.peer, new RegExp(`^${p2!.ip6}:\\d+$`), 'the proxy sees the pod IPv6 address');
    t.match(ans!.origin, { ip: '2001:2:0:ffff::10', port: 80, netnsCookie: String(cookie2), pid: r.pid, family: 6 });
    t.same(delta(before, dp.counters()), { redirected: 1, closed: 1 });
    dp.excludeCidr('2001:2:0:ffff::/64');
    t.same(codes((await client(lab, 'n1-p2', '2001:2:0:ffff::10', 80)).results), ['ENETUNREACH'], 'an excluded IPv6 CIDR is not redirected');
    t.equal(dp.includeCidr('2001:2:0:ffff::/64'), true);
    t.same(codes((await client(lab, 'n1-p2', '::1', 1)).results), ['ECONNREFUSED'], 'IPv6 loopback stays in the pod');
  });

  await t.test('not redirected: unenrolled pod, the node itself, excluded CIDR and port, loopback, UDP', async (t) => {
    const seen = echoOutput().split('\n').length;

    t.equal(await dp.unenroll(`/run/netns/${p2!.netns}`), true);
    let before = dp.counters();
    t.same(codes((await client(lab, 'n1-p2', VIP, 80)).results), ['ENETUNREACH'], 'an unenrolled pod goes straight to the network (no route)');
    t.same(delta(before, dp.counters()), {}, 'not counted: at the cgroup root that would count every connect of the machine');
    await dp.enroll(`/run/netns/${p2!.netns}`, { index: 2 });

    before = dp.counters();
    t.same(codes((await client(lab, 'n1', VIP, 80)).results), ['ENETUNREACH'], 'the node itself is never redirected');
    t.same(delta(before, dp.counters()), {}, 'its netns is not enrolled');

    dp.excludeCidr('198.19.0.99/32');
    dp.excludePort(8443);
    t.same(dp.excludedCidrs(), ['198.19.0.99/32']);
    before = dp.counters();
    t.same(codes((await client(lab, 'n1-p1', '198.19.0.99', 80)).results), ['ENETUNREACH'], 'excluded CIDR');
    t.same(codes((await client(lab, 'n1-p1', VIP, 8443)).results), ['ENETUNREACH'], 'excluded port');
    t.same(delta(before, dp.counters()), { excluded: 2 });
    t.equal(dp.includeCidr('198.19.0.99/32'), true);
    t.equal(dp.includePort(8443), true);
    t.same(answers((await client(lab, 'n1-p1', '198.19.0.99', 8443)).results)[0]!.origin?.port, 8443, 'redirected again once included');

    // Loopback inside the pod: a server on 127.0.0.1 and a client to it.
    before = dp.counters();
    const lo = await labRun(lab, 'n1-p1', [
      process.execPath,
      '-e',
      `const net=require('net');const s=net.createServer(c=>c.end('lo')).listen(0,'127.0.0.1',()=>{net.connect(s.address().port,'127.0.0.1').on('data',d=>{console.log(String(d));process.exit(0)})})`,
    ]);
    t.equal(lo.stdout.trim(), 'lo', 'loopback connects stay in the pod');
    t.same(delta(before, dp.counters()), { excluded: 1 });

    // UDP (DNS): a connected UDP socket to a VIP is not rewritten, so it has no route.
    before = dp.counters();
    const udp = await labRun(lab, 'n1-p1', [
      process.execPath,
      '-e',
      `const s=require('dgram').createSocket('udp4');s.connect(53,'${VIP}',e=>{console.log(e?e.code:'connected');s.close()})`,
    ]);
    t.match(udp.stdout.trim(), /^(ENETUNREACH|connected)$/);
    t.same(delta(before, dp.counters()), {}, 'UDP is not touched');
    t.equal(echoOutput().split('\n').length - 1, seen, 'the proxy saw none of these but the included one');
  });

  await t.test('"this host" in every spelling stays in the pod: never redirected', async (t) => {
    // Redirected, these would reach the proxy, which would dial them in the node's namespace.
    const cases: [string, number][] = [
      ['0.0.0.0', 4],
      ['0.0.0.0', 6],
      ['127.0.0.2', 4],
      ['127.0.0.1', 6],
      ['::', 6],
      ['::1', 6],
      ['::ffff:0.0.0.0', 6],
      ['::ffff:127.0.0.1', 6],
    ];
    const seen = echoOutput().split('\n').length;
    const before = dp.counters();
    for (const [host, family] of cases) t.same(codes((await client(lab, 'n1-p1', host, 15001, 1, 1, family)).results), ['ECONNREFUSED'], `${host} (IPv${family} socket): refused by the pod's own loopback`);
    t.same(delta(before, dp.counters()), { excluded: cases.length }, 'each counted as excluded');
    t.equal(echoOutput().split('\n').length, seen, 'the proxy saw none of them');
    t.equal(answers((await client(lab, 'n1-p1', VIP, 80)).results)[0]!.origin?.ip, VIP, 'a VIP is still redirected');
  });

  await t.test('a process in the pod netns but outside its cgroup is redirected as the pod', async (t) => {
    const mine = ownCgroup();
    t.not(mine, p1!.cgroup, 'this test runs outside the pod cgroup');
    const before = dp.counters();
    const r = await netnsOnlyClient(p1!.netns, VIP, 80);
    const [ans] = answers(r.results);
    t.match(ans!.origin, { ip: VIP, port: 80, netnsCookie: String(cookie1), cgroupId: String(cgroupId(mine)), pid: r.pid }, 'origin: the pod netns cookie, the cgroup it really runs in');
    const r6 = await netnsOnlyClient(p1!.netns, '2001:2:0:ffff::10', 80);
    t.match(answers(r6.results)[0]!.origin, { ip: '2001:2:0:ffff::10', netnsCookie: String(cookie1) }, 'IPv6 too');
    t.same(codes((await netnsOnlyClient(p1!.netns, '0.0.0.0', 15001)).results), ['ECONNREFUSED'], '"this host" stays in the pod for it as well');
    t.same(delta(before, dp.counters()), { redirected: 2, closed: 2, excluded: 1 });
  });

  await t.test("this process's own network namespace is never enrolled", async (t) => {
    const pods = dp.pods().length;
    await t.rejects(dp.enroll('/proc/self/ns/net'), { code: 'NM_ERR_DATAPATH_ENROLL', message: /own network namespace .*only pod namespaces can be enrolled/ });
    const own = await netnsCookie('/proc/self/ns/net');
    t.throws(() => dp.enrollCookie(own), { code: 'NM_ERR_DATAPATH_ENROLL' }, 'nor by cookie');
    t.equal(dp.pods().length, pods, 'nothing changed');
    t.same(codes((await client(lab, 'n1', VIP, 80)).results), ['ENETUNREACH'], 'the node is still not redirected');
  });

  await t.test('STRICT drops plaintext to a listener opened from outside the pod cgroup', async (t) => {
    dp.enrollCookie(cookie2, { index: 2, flags: abi.POD_STRICT });
    t.teardown(() => dp.enrollCookie(cookie2, { index: 2 }));
    const server = spawn('nsenter', [`--net=/run/netns/${p2!.netns}`, process.execPath, '-e', "require('net').createServer(s=>s.end('hello')).listen(9090,'::',()=>console.log('listening'))"], { stdio: ['ignore', 'pipe', 'pipe'] });
    onCleanup(t, () => {
      if (server.exitCode === null) server.kill('SIGKILL');
    });
    await new Promise<void>((resolve, reject) => {
      server.stdout.on('data', (d: Buffer) => /listening/.test(d.toString()) && resolve());
      server.once('exit', (code) => reject(new Error(`listener exited (${code})`)));
    });
    const n2 = lab.nodes[1]!;
    const before = dp.counters();
    const r = await client(lab, `n${n2.index}`, p2!.ip, 9090);
    t.same(codes(r.results), ['ETIMEDOUT'], 'a connect from the other node never completes: its SYN is dropped');
    t.ok(dp.counters().strict_drop - before.strict_drop >= 1n, 'counted as a STRICT drop');
    dp.enrollCookie(cookie2, { index: 2 });
    t.same(codes((await client(lab, `n${n2.index}`, p2!.ip, 9090)).results), ['ok'], 'PERMISSIVE again: it gets in');
  });

  await t.test('not ready: fail closed by default; fail open for the node or for one pod', async (t) => {
    dp.setReady(false);
    t.teardown(() => {
      dp.configure({ ready: true, failOpen: false });
      dp.enrollCookie(cookie1, { index: 1 });
    });
    t.equal(dp.config().failOpen, false, 'a new install fails closed');
    let before = dp.counters();
    t.same(codes((await client(lab, 'n1-p1', VIP, 80)).results), ['EPERM'], 'fail closed: refused');
    t.same(delta(before, dp.counters()), { proxy_down: 1 }, 'counted as proxy down, nothing let around');
    dp.configure({ failOpen: true });
    before = dp.counters();
    t.same(codes((await client(lab, 'n1-p1', VIP, 80)).results), ['ENETUNREACH'], 'fail open (the node): the connect goes out unredirected');
    t.same(delta(before, dp.counters()), { proxy_down: 1, proxy_down_open: 1 }, 'counted as let around the proxy');
    dp.configure({ failOpen: false });
    dp.enrollCookie(cookie1, { index: 1, flags: abi.POD_FAIL_OPEN });
    before = dp.counters();
    t.same(codes((await client(lab, 'n1-p1', VIP, 80)).results), ['ENETUNREACH'], 'fail open (this pod, nm_pods flag): goes around');
    t.same(codes((await client(lab, 'n1-p2', VIP, 80)).results), ['EPERM'], 'the other pod of the node: still refused');
    t.same(delta(before, dp.counters()), { proxy_down: 2, proxy_down_open: 1 });
    dp.enrollCookie(cookie1, { index: 1 });
    dp.configure({ ready: true });
    t.equal(answers((await client(lab, 'n1-p1', VIP, 80)).results)[0]!.origin?.ip, VIP, 'ready again: redirected');
  });

  await t.test('watchdog: ready with a stale heartbeat counts as no proxy', async (t) => {
    t.teardown(() => dp.configure({ ready: true, watchdogMs: 0, heartbeatNs: 0n }));
    // process.hrtime.bigint() is CLOCK_MONOTONIC, the clock bpf_ktime_get_ns() reads.
    dp.configure({ ready: true, watchdogMs: 2_000, heartbeatNs: monotonicNs() });
    t.equal(answers((await client(lab, 'n1-p1', VIP, 80)).results)[0]!.origin?.ip, VIP, 'a fresh heartbeat: redirected');
    dp.configure({ heartbeatNs: monotonicNs() - 10_000_000_000n });
    const before = dp.counters();
    t.same(codes((await client(lab, 'n1-p1', VIP, 80)).results), ['EPERM'], 'a heartbeat 10 s old (the proxy died): refused, fail closed');
    t.same(delta(before, dp.counters()), { proxy_down: 1, proxy_stale: 1 });
    t.match(dp.status().proxy, { alive: false, mode: 'fail-closed' }, 'the status says so');
    t.ok(dp.status().proxy.heartbeatAgeMs! >= 10_000, 'with the heartbeat age');
    dp.heartbeat();
    t.equal(answers((await client(lab, 'n1-p1', VIP, 80)).results)[0]!.origin?.ip, VIP, 'beating again: redirected');
  });

  await t.test('2,000 connections from two pods at once: every origin found, maps empty after', async (t) => {
    const before = dp.counters();
    const flowsBefore = flows.length;
    const [a, b] = await Promise.all([client(lab, 'n1-p1', VIP, 80, 1000, 50), client(lab, 'n1-p2', '198.19.0.11', 81, 1000, 50)]);
    const ansA = answers(a.results);
    const ansB = answers(b.results);
    t.equal(ansA.length + ansB.length, 2000);
    t.ok(ansA.every((x) => x.origin?.ip === VIP && x.origin.port === 80 && x.origin.netnsCookie === String(cookie1) && x.origin.pid === a.pid), 'n1-p1: all 1000 origins right');
    t.ok(ansB.every((x) => x.origin?.ip === '198.19.0.11' && x.origin.port === 81 && x.origin.netnsCookie === String(cookie2) && x.origin.pid === b.pid), 'n1-p2: all 1000 origins right');
    t.ok(await waitFor(() => dp.counters().closed - before.closed >= 2000n, 10_000), 'every close seen');
    t.same(delta(before, dp.counters()), { redirected: 2000, closed: 2000 }, 'counters agree');
    t.ok(await waitFor(() => flows.length - flowsBefore >= 2000, 10_000), '2000 flow events');
    t.same(dp.originEntries(), { byCookie: 0, byTuple: 0 }, 'the origin maps are empty again');
  });
});

function attachedPrograms(cg: string): string[] {
  const out = execFileSync('bpftool', ['-j', 'cgroup', 'show', cg], { encoding: 'utf8' }).trim();
  return out ? (JSON.parse(out) as { name: string }[]).map((p) => p.name).sort() : [];
}

/** Program ids attached to a cgroup (every hook), by bpftool. */
function attachedIds(cg: string): number[] {
  const out = execFileSync('bpftool', ['-j', 'cgroup', 'show', cg], { encoding: 'utf8' }).trim();
  return out ? (JSON.parse(out) as { id: number }[]).map((p) => p.id) : [];
}

function cli(args: string[]): string {
  return execFileSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
}

bpfTest(t, 'installed by a process that exits; adopted by the next; uninstall leaves nothing', async (t) => {
  const lab = await testLab(t, 1, 1);
  const n1 = lab.nodes[0]!;
  const pod = lab.pods[0]!;
  cli(['datapath', 'install', '--node', n1.name, '--cgroup', n1.cgroup, '--proxy-ip', n1.ip]);
  cli(['datapath', 'enroll', '--node', n1.name, '--netns', `/run/netns/${pod.netns}`]);
  t.same(attachedPrograms(n1.cgroup), ['nm_connect4', 'nm_connect6', 'nm_ingress', 'nm_sock_release', 'nm_sockops']);

  // The installer is gone; the echo (another process) marks ready; pods are redirected.
  await startEcho(t, lab, n1.name);
  t.equal(answers((await client(lab, pod.name, VIP, 80)).results)[0]!.origin?.ip, VIP, 'redirected by pinned programs');

  // Install again (a proxy restart): the same links and maps are adopted.
  const first = Datapath.open(n1.name);
  const linksBefore = first.links();
  first.close();
  const again = Datapath.install({ node: n1.name, cgroup: n1.cgroup, proxyIp: n1.ip });
  const linksAfter = again.links();
  t.same(linksAfter.map((l) => l.attached), [true, true, true, true, true]);
  t.ok(linksAfter.every((l, i) => l.progId !== linksBefore[i]!.progId), 'each link now runs the newly loaded program');
  t.equal(again.pods().length, 1, 'enrolled pods kept');
  t.equal(again.config().ready, true, 'readiness kept');
  again.close();
  t.equal(answers((await client(lab, pod.name, VIP, 80)).results)[0]!.origin?.ip, VIP, 'still redirected');

  // Installing with the default (the cgroup2 root) moves the programs there,
  // the new links attached before the old ones go: no gap in redirection.
  const root = findCgroup2Mount()!;
  const moved = Datapath.install({ node: n1.name, proxyIp: n1.ip });
  const movedLinks = moved.links();
  t.same(movedLinks.map((l) => l.cgroupId), new Array(5).fill(String(cgroupId(root))), 'every link is on the root now');
  t.equal(moved.cgroup(), root);
  t.equal(moved.pods().length, 1, 'enrolled pods kept');
  moved.close();
  t.same(attachedPrograms(n1.cgroup), [], 'nothing is left on the node cgroup');
  t.same(
    attachedIds(root).filter((id) => movedLinks.some((l) => l.progId === id)).length,
    5,
    'bpftool lists the five programs on the root cgroup',
  );
  t.equal(answers((await client(lab, pod.name, VIP, 80)).results)[0]!.origin?.ip, VIP, 'still redirected');

  const status = JSON.parse(cli(['status', '--node', n1.name, '-o', 'json'])) as { installed: boolean; links: { attached: boolean }[]; pods: unknown[]; counters: Record<string, string> };
  t.equal(status.installed, true);
  t.equal(status.pods.length, 1);
  t.ok(Number(status.counters.redirected) >= 2);

  t.match(cli(['status', '--node', n1.name]), /cgroup +\S+ \(cgroup2 root: every socket of an enrolled pod netns\)/);

  t.match(cli(['datapath', 'uninstall', '--node', n1.name]), /detached and unpinned/);
  t.same(attachedPrograms(n1.cgroup), [], 'bpftool lists nothing of ours on the cgroup');
  t.same(attachedIds(root).filter((id) => movedLinks.some((l) => l.progId === id)), [], 'nor on the root cgroup');
  t.notOk(fs.existsSync(`/sys/fs/bpf/nodemesh/${n1.name}`), 'no pins remain');
  t.same(codes((await client(lab, pod.name, VIP, 80)).results), ['ENETUNREACH'], 'no longer redirected');
  t.match(cli(['datapath', 'uninstall', '--node', n1.name]), /nothing was installed/, 'uninstall is idempotent');
});

bpfTest(t, 'an install over maps pinned with an older layout replaces them, fail closed', async (t) => {
  const pinBase = tempPinDir(t);
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-dp-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const cgroup = tempCgroup(t);
  const node = 'layout';
  const pinDir = Datapath.pinDirOf(node, pinBase);
  fs.mkdirSync(pinDir, { recursive: true });
  // What an install before the heartbeat left: a 24-byte nm_config (fail_closed 0: fail open) and 8 counters.
  execFileSync('bpftool', ['map', 'create', path.join(pinDir, 'nm_config'), 'type', 'array', 'key', '4', 'value', '24', 'entries', '1', 'name', 'nm_config']);
  execFileSync('bpftool', ['map', 'create', path.join(pinDir, 'nm_stats'), 'type', 'percpu_array', 'key', '4', 'value', '8', 'entries', '8', 'name', 'nm_stats']);
  const dp = Datapath.install({ node, cgroup, proxyIp: '198.18.0.1', pinBase, stateDir });
  onCleanup(t, () => Datapath.uninstall(node, { pinBase, stateDir }));
  t.match(dp.config(), { proxyIp: '198.18.0.1', ready: false, failOpen: false, heartbeatNs: 0n, watchdogMs: 0 }, 'a new nm_config: not ready, fail closed');
  t.same(Object.keys(dp.counters()), [...abi.STATS], 'nm_stats has every counter');
  t.equal(dp.links().filter((l) => l.attached).length, 5, 'attached');
  dp.close();
});
