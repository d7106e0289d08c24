/**
 * `nodemesh proxy --upgrade` in a 2-node lab (docs/architecture.md,
 * 'Upgrades that drop nothing'): 100 long-lived connections (50 across
 * nodes, 50 on one node) doing a round trip every 100 ms and a client
 * opening new ones throughout see nothing broken and nothing refused while
 * a node's proxy is replaced, on the client's node and on the server's; the
 * old process exits once its connections closed, or at --upgrade-drain; an
 * upgrade whose new process cannot start, or is killed before it took
 * over, leaves the old one serving; a SIGTERM while the old one drains is
 * bounded by --drain-timeout; a second proxy without --upgrade is refused.
 * Across the upgrade the node's /metrics never go down and, once the old
 * process exited, count every connection the client made; the held
 * connections' flows, carried by the old process, stay listed on the node
 * (GET /flows, `nodemesh flows`) until they close.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { t, type Test } from 'tap';

import { ControllerClient } from '../../src/controller/client';
import type { LabState } from '../../src/lab';
import { labSpawn } from '../../src/lab';
import { adminGet, adminSocketOf } from '../../src/node-proxy/admin';
import { PACKAGE_ROOT } from '../../src/paths';
import { bpfTest } from '../helpers/bpf';
import { fixture, runNode } from '../helpers/child';
import { alive } from '../helpers/processes';
import { doc } from '../helpers/controller';
import { labProcess, labRun, testLab } from '../helpers/lab';
import { onCleanup } from '../helpers/scratch';
import { waitFor } from '../helpers/wait';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');

interface Status {
  pid: number;
  ready: boolean;
  controller: { connected: boolean; configVersion: number };
  datapath: { config: { ready: boolean } };
}

interface LoadResult {
  holds: number;
  broken: number;
  brokenWhy: Record<string, number>;
  roundTrips: number;
  slowestMs: number;
  churn: { ok: number; failed: number; failures: Record<string, number> };
}

const status = async (node: string): Promise<Status> => JSON.parse(await adminGet(adminSocketOf(node), '/status')) as Status;

/** A node's counter and histogram series (`name{labels}` -> value), from /metrics on its admin socket; the proxy's per-process nodemesh_proxy_* left out. */
async function counters(node: string): Promise<Map<string, number>> {
  const text = await adminGet(adminSocketOf(node), '/metrics');
  const kinds = new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(\{.*\})? (\S+)$/.exec(line);
    if (!m || m[1]!.startsWith('nodemesh_proxy_')) continue;
    const base = m[1]!.replace(/_(bucket|sum|count)$/, '');
    const kind = kinds.get(m[1]!) ?? kinds.get(base);
    if (kind === 'counter' || kind === 'histogram') out.set(`${m[1]}${m[2] ?? ''}`, Number(m[3]));
  }
  return out;
}

/** Series of `before` that are lower (or gone) in `after`. */
function decreased(before: Map<string, number>, after: Map<string, number>): string[] {
  return [...before].filter(([k, v]) => !((after.get(k) ?? -1) >= v)).map(([k, v]) => `${k}: ${v} -> ${after.get(k) ?? 'gone'}`);
}

/** The sum of a counter's series whose labels include `has`. */
function total(series: Map<string, number>, name: string, has: string): number {
  let n = 0;
  for (const [k, v] of series) if (k.startsWith(`${name}{`) && k.includes(has)) n += v;
  return n;
}

interface FlowView {
  id: number;
  end?: string;
  drainingPid?: number;
}


/** The running proxy's own flags (less those of the upgrade that started it), so the next one is started exactly as the operator started it. */
function flagsOf(pid: number): string[] {
  const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  const flags = argv.slice(argv.indexOf('proxy') + 1);
  return flags.filter((f, i) => f !== '--upgrade' && f !== '--upgrade-drain' && flags[i - 1] !== '--upgrade-drain');
}

/** Starts argv in `target`; resolves once its output matches `line`, or fails after `timeoutMs`; killed at teardown. */
function spawnUntil(t: Test, lab: LabState, target: string, argv: string[], line: RegExp, timeoutMs: number): Promise<{ child: ChildProcess; output: () => string; tookMs: number }> {
  const started = Date.now();
  const child = labSpawn(lab, target, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  onCleanup(t, () => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${argv.join(' ')}: no ${line} within ${timeoutMs} ms: ${out}`)), timeoutMs);
    const check = (): void => {
      if (!line.test(out)) return;
      clearTimeout(timer);
      resolve({ child, output: () => out, tookMs: Date.now() - started });
    };
    child.stdout!.on('data', (d: Buffer) => ((out += d.toString()), check()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${argv.join(' ')} exited (${code}) before ${line}: ${out}`));
    });
  });
}

function waitExit(child: ChildProcess, timeoutMs: number): Promise<number | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`still running after ${timeoutMs} ms`)), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

bpfTest(t, 'nodemesh proxy --upgrade drops nothing', async (t) => {
  const lab = await testLab(t, 2, 2, true);
  const [n1, n2] = lab.nodes as [LabState['nodes'][number], LabState['nodes'][number]];
  const pod = (name: string) => lab.pods.find((p) => p.name === name)!;
  // The client in n1-p1; one server on its node (n1-p2), one across (n2-p1).
  const [client, local, remote] = [pod('n1-p1'), pod('n1-p2'), pod('n2-p1')];
  await labProcess(t, lab, local.name, [process.execPath, fixture('mesh-server.js'), local.name], /serving/);
  await labProcess(t, lab, remote.name, [process.execPath, fixture('mesh-server.js'), remote.name], /serving/);
  const who = async (host: string): Promise<string> => {
    const r = await labRun(lab, client.name, [process.execPath, fixture('mesh-client.js'), 'whoami', host, '8081', '1']);
    return r.code === 0 && r.stdout.trim() ? (JSON.parse(r.stdout) as { answers: string[] }).answers[0]! : `exit ${r.code}: ${r.stderr}`;
  };
  t.ok(await waitFor(async () => (await who(remote.ip)) === remote.name && (await who(local.ip)) === local.name, 15_000), 'the mesh carries n1-p1 to both servers');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-upgrade-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  let runs = 0;
  /** What each node's current proxy wrote: the lab's log for the first, the output of the ones this test started. */
  const logOf = new Map<string, () => string>(lab.mesh!.proxies.map((p) => [p.node, () => fs.readFileSync(p.log, 'utf8')]));

  /** 50 held connections to each server and new ones throughout, until the returned stop() (bounded). */
  const startLoad = async (perHost = 50): Promise<{ stop(): Promise<LoadResult> }> => {
    const stopFile = path.join(dir, `stop-${++runs}`);
    const load = await labProcess(t, lab, client.name, [process.execPath, fixture('mesh-client.js'), 'load', `${remote.ip},${local.ip}`, '8080', String(perHost), stopFile, '180000'], /holding \d+/);
    t.match(load.output(), new RegExp(`holding ${2 * perHost}`), `${2 * perHost} connections held (${perHost} across nodes, ${perHost} on n1)`);
    return {
      stop: async () => {
        fs.writeFileSync(stopFile, '');
        await waitExit(load.child, 20_000);
        return JSON.parse(load.output().split('\n').find((l) => l.startsWith('{'))!) as LoadResult;
      },
    };
  };

  /** Runs `nodemesh proxy --upgrade` on `node` with the old one's flags; resolves once it took over. */
  const upgrade = async (node: string, drain: string): Promise<{ oldPid: number; child: ChildProcess; tookMs: number; oldLog: () => string }> => {
    const before = await status(node);
    const argv = [process.execPath, BIN, 'proxy', ...flagsOf(before.pid), '--upgrade', '--upgrade-drain', drain];
    const up = await spawnUntil(t, lab, node, argv, /took over from pid \d+ in \d+ ms/, 90_000);
    const oldLog = logOf.get(node)!;
    logOf.set(node, up.output);
    return { oldPid: before.pid, child: up.child, tookMs: up.tookMs, oldLog };
  };

  const checkUpgrade = async (t: Test, node: string): Promise<void> => {
    // The client's node counts each of its connections once, as their source; the server's node the tunnelled ones, as destination.
    const reporter = node === n1.name ? 'reporter="source"' : 'reporter="destination"';
    const before = await counters(node);
    // An operator following the node's flows through the upgrade.
    const follower = spawn(process.execPath, [BIN, 'flows', '-f', '--node', node, '-o', 'json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let followed = '';
    follower.stdout.on('data', (d: Buffer) => (followed += d.toString()));
    follower.stderr.on('data', (d: Buffer) => (followed += d.toString()));
    onCleanup(t, () => {
      if (follower.exitCode === null) follower.kill('SIGKILL');
    });
    const load = await startLoad();
    await new Promise((r) => setTimeout(r, 1_000));
    const loaded = await counters(node);
    const up = await upgrade(node, '2m');
    t.comment(`upgrade of ${node} took ${up.tookMs} ms from start to hand-over`);
    const now = await status(node);
    t.equal(now.pid, up.child.pid, `${node}'s admin socket answers from the new process`);
    t.equal(now.ready, true, 'which is ready');
    t.ok(alive(up.oldPid), 'the old process still runs: it carries its connections');
    const handed = await counters(node);
    t.same(decreased(loaded, handed), [], "no counter of the new process's /metrics is below what the old one showed");
    // The held connections were opened before the upgrade: the old process carries them, and they are still the node's.
    const held = node === n1.name ? 100 : 50;
    const live = (JSON.parse(await adminGet(adminSocketOf(node), '/flows?live=1&limit=100000')) as FlowView[]).filter((f) => f.drainingPid === up.oldPid);
    t.ok(live.length >= held, `GET /flows on ${node} lists the ${held} held connections, marked as the draining pid ${up.oldPid}'s (${live.length})`);
    const cli = await runNode(BIN, ['flows', '--node', node, '-o', 'json', '--limit', '100000']);
    t.equal(cli.code, 0, `nodemesh flows answers (${cli.stderr.trim()})`);
    const listed = (JSON.parse(cli.stdout) as FlowView[]).filter((f) => f.drainingPid === up.oldPid && !f.end);
    t.ok(listed.length >= held, `and so does nodemesh flows --node ${node} (${listed.length})`);
    // New connections keep coming for a while, now all to the new process.
    const flowsBefore = (JSON.parse(await adminGet(adminSocketOf(node), '/flows?limit=100000')) as unknown[]).length;
    await new Promise((r) => setTimeout(r, 2_000));
    const flowsAfter = (JSON.parse(await adminGet(adminSocketOf(node), '/flows?limit=100000')) as unknown[]).length;
    t.ok(flowsAfter > flowsBefore, `the new process serves new connections (${flowsAfter - flowsBefore} flows in 2 s)`);
    const r = await load.stop();
    t.comment(`load across the upgrade of ${node}: ${JSON.stringify(r)}`);
    t.equal(r.holds, 100, 'every held connection was up');
    t.equal(r.broken, 0, `no held connection broke (${JSON.stringify(r.brokenWhy)})`);
    t.ok(r.churn.ok > 0, `new connections were made throughout (${r.churn.ok})`);
    t.equal(r.churn.failed, 0, `no new connection was refused or broken (${JSON.stringify(r.churn.failures)})`);
    if (r.churn.failed || r.broken) {
      const errors = [up.oldLog(), ...[...logOf.values()].map((f) => f())].join('\n').split('\n').filter((l) => /"verdict":"(error|denied)"|warn|"level":[45]0/.test(l));
      t.comment(`what the proxies logged:\n${errors.slice(-20).join('\n')}`);
    }
    t.ok(await waitFor(() => !alive(up.oldPid), 20_000, 100), 'the old process exits once its connections closed (well before --upgrade-drain)');
    t.match(up.oldLog(), /upgrade: drained; exiting/, 'and says so');
    t.notMatch(up.oldLog(), /still open at the drain deadline/, 'having closed none itself');
    const after = await counters(node);
    t.same(decreased(handed, after), [], 'no counter went down when the old process exited');
    const opened = total(after, 'nodemesh_tcp_connections_opened_total', reporter) - total(before, 'nodemesh_tcp_connections_opened_total', reporter);
    const closed = total(after, 'nodemesh_tcp_connections_closed_total', reporter) - total(before, 'nodemesh_tcp_connections_closed_total', reporter);
    if (node === n1.name) t.equal(opened, r.holds + r.churn.ok + r.churn.failed, `${node} counted every connection the client made, held and new (${opened})`);
    else t.ok(opened >= held + 1, `${node} counted the held connections and new ones (${opened})`);
    t.equal(closed, opened, 'and each as closed: those the old process closed while it drained too');
    const gone = (JSON.parse(await adminGet(adminSocketOf(node), '/flows?live=1&limit=100000')) as FlowView[]).filter((f) => f.drainingPid !== undefined);
    t.equal(gone.length, 0, 'once they closed and the old process exited, none of its flows is listed as live');
    follower.kill('SIGTERM');
    await waitExit(follower, 10_000).catch(() => follower.kill('SIGKILL'));
    const closes = followed.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as FlowView);
    t.ok(
      closes.filter((f) => f.drainingPid === up.oldPid).length >= held,
      `nodemesh flows -f, started before the upgrade, printed the held connections closing in the draining process (${closes.filter((f) => f.drainingPid === up.oldPid).length})`,
    );
    t.equal(new Set(closes.map((f) => f.id)).size, closes.length, 'and no flow twice');
  };

  await t.test('on the client node: the outbound side', (t) => checkUpgrade(t, n1.name));
  await t.test('on the server node: the tunnel side', (t) => checkUpgrade(t, n2.name));

  await t.test('at --upgrade-drain the old process closes what is left, says how many, and exits', async (t) => {
    const load = await startLoad(2);
    const up = await upgrade(n1.name, '2s');
    const handedAt = Date.now();
    t.ok(await waitFor(() => !alive(up.oldPid), 15_000, 100), 'the old process exits at the deadline although its connections are still open');
    t.comment(`old process exited ${Date.now() - handedAt} ms after the hand-over (--upgrade-drain 2s)`);
    const r = await load.stop();
    t.equal(r.broken, 4, 'the 4 connections that outlived the deadline were closed');
    t.equal(r.churn.failed, 0, `no new connection was refused (${JSON.stringify(r.churn.failures)})`);
    t.match(up.oldLog(), /"cut":4,.*connections still open at the drain deadline were closed/, 'the old process logs how many it closed');
  });

  await t.test('a SIGTERM while the old process drains bounds what is left by --drain-timeout', async (t) => {
    const load = await startLoad(2);
    const up = await upgrade(n1.name, '2m');
    process.kill(up.oldPid, 'SIGTERM');
    const stoppedAt = Date.now();
    t.ok(await waitFor(() => !alive(up.oldPid), 15_000, 100), 'the old process exits long before its 2 min drain');
    t.comment(`old process exited ${Date.now() - stoppedAt} ms after its SIGTERM (--drain-timeout 2s)`);
    const r = await load.stop();
    t.equal(r.broken, 4, 'the 4 connections it still held were closed');
    t.equal(r.churn.failed, 0, `no new connection was refused (${JSON.stringify(r.churn.failures)})`);
    t.match(up.oldLog(), /"cut":4,.*connections still open at the drain deadline were closed/, 'and it logs how many');
    const now = await status(n1.name);
    t.ok(now.ready, 'the new process serves on');
    t.equal(now.datapath.config.ready, true, "and the data path's ready flag is still set: the old process's stop did not clear it");
  });

  await t.test('a second proxy for the node without --upgrade is refused (the ports are shared now)', async (t) => {
    const before = await status(n2.name);
    const child = labSpawn(lab, n2.name, [process.execPath, BIN, 'proxy', ...flagsOf(before.pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
    onCleanup(t, () => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    t.equal(await waitExit(child, 20_000), 64, 'a usage error');
    t.match(stderr, new RegExp(`a proxy for node ${n2.name} is running already .*pass --upgrade to take over from it`), 'which says to stop it or pass --upgrade');
    t.equal((await status(n2.name)).pid, before.pid, 'the running one is untouched');
  });

  await t.test('an upgrade whose new process cannot start leaves the old one serving', async (t) => {
    const before = await status(n1.name);
    const flags = flagsOf(before.pid);
    // A value only the started proxy can check: an address that is not the node's.
    const i = flags.indexOf('--proxy-ip');
    flags[i + 1] = '198.18.255.254';
    const argv = [process.execPath, BIN, 'proxy', ...flags, '--upgrade'];
    const child = labSpawn(lab, n1.name, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const code = await waitExit(child, 60_000);
    t.not(code, 0, 'the new process fails');
    t.match(err, /not an address of this network namespace/, 'and says why');
    t.match(err, new RegExp(`the running proxy \\(pid ${before.pid}\\) keeps serving and has resumed its config stream`), 'and that the old one keeps serving');
    t.equal((await status(n1.name)).pid, before.pid, 'the old process answers on the admin socket');
    t.equal(await who(remote.ip), remote.name, 'and carries new connections');
    t.ok(await waitFor(async () => (await status(n1.name)).controller.connected, 10_000, 100), 'its config stream is back');
    const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials);
    t.teardown(() => admin.close());
    const applied = await admin.apply([
      doc({ apiVersion: 'nodemesh.io/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'after-upgrade', namespace: 'default' }, spec: { selector: { matchLabels: { pod: local.name } }, action: 'DENY', rules: [{ from: [{ source: { ipBlocks: ['198.18.255.252/30'] } }] }] } }),
    ]);
    t.ok(
      await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n1.name)!.ackedVersion >= applied.version, 10_000, 100),
      'and it takes new config',
    );
  });

  await t.test('a new process killed before it took over leaves the old one serving', async (t) => {
    const before = await status(n1.name);
    const paused = (): number => logOf.get(n1.name)!().split('config stream paused').length;
    const was = paused();
    const child = labSpawn(lab, n1.name, [process.execPath, BIN, 'proxy', ...flagsOf(before.pid), '--upgrade'], { stdio: ['ignore', 'ignore', 'ignore'] });
    onCleanup(t, () => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    t.ok(await waitFor(() => paused() > was, 20_000, 20), 'the old process prepared (its config stream paused)');
    child.kill('SIGKILL');
    await waitExit(child, 10_000);
    t.ok(await waitFor(async () => (await status(n1.name)).controller.connected, 10_000, 100), 'its config stream is back');
    t.match(logOf.get(n1.name)!(), /went away before it took over.*keeps serving and resumes its config stream/, 'and it says why');
    t.equal((await status(n1.name)).pid, before.pid, 'it still answers on the admin socket');
    t.equal(await who(remote.ip), remote.name, 'and carries new connections');
  });
});
