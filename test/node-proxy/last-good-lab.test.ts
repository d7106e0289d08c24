/**
 * No serving before policy, in a 2-node lab with real processes: kill -9
 * both proxies and the controller, start the proxies again while the
 * controller stays down, and the DENY they had is enforced from the first
 * connection they accept (on a node and across nodes over mTLS, with the
 * workload certificates they kept); the controller comes back and a new
 * policy reaches them. A proxy with no usable config accepts nothing at all.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t, type Test } from 'tap';

import { ControllerClient } from '../../src/controller/client';
import type { LabState } from '../../src/lab';
import { adminGet, adminSocketOf } from '../../src/node-proxy/admin';
import { PACKAGE_ROOT } from '../../src/paths';
import { bpfTest } from '../helpers/bpf';
import { fixture } from '../helpers/child';
import { alive, findProcess, flagOf } from '../helpers/processes';
import { doc } from '../helpers/controller';
import { labProcess, labRun, testLab } from '../helpers/lab';
import { onCleanup } from '../helpers/scratch';
import { waitFor } from '../helpers/wait';

const A = 'nodemesh.io/v1alpha1';
const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');

/** Connects to host:port for each port in turn until `ms` pass; one JSON array of {at, port, answer} (the server's name, or the error code). */
const PROBE = `
const net = require('node:net');
const [host, ports, ms] = [process.argv[1], process.argv[2].split(',').map(Number), Number(process.argv[3])];
const end = Date.now() + ms;
const seen = [];
const once = (port) => new Promise((resolve) => {
  const s = net.connect({ host, port });
  let b = '';
  s.setTimeout(3000, () => s.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
  s.on('data', (d) => (b += d));
  s.on('end', () => resolve(b.trim() || 'EMPTY'));
  s.on('error', (e) => resolve(e.code || e.message));
});
(async () => {
  while (Date.now() < end) {
    for (const port of ports) seen.push({ at: Date.now(), port, answer: await once(port) });
    await new Promise((r) => setTimeout(r, 30));
  }
  process.stdout.write(JSON.stringify(seen) + '\\n');
})();
`;

interface Attempt {
  at: number;
  port: number;
  answer: string;
}

function probe(lab: LabState, pod: string, host: string, ports: number[], ms: number): Promise<Attempt[]> {
  return labRun(lab, pod, [process.execPath, '-e', PROBE, host, ports.join(','), String(ms)]).then((r) => {
    if (r.code !== 0) throw new Error(`probe in ${pod}: ${r.code} ${r.stderr}`);
    return JSON.parse(r.stdout) as Attempt[];
  });
}

async function whoami(lab: LabState, pod: string, host: string, port: number): Promise<string> {
  const r = await labRun(lab, pod, [process.execPath, fixture('mesh-client.js'), 'whoami', host, String(port), '1']);
  return (JSON.parse(r.stdout) as { answers: string[] }).answers[0]!;
}

interface Status {
  ready: boolean;
  config: { source: string; version: number; summary: string; lastGood: { version: number; savedAtUnixMs: number } | null; lastGoodError?: string };
  workloadCertificates: { identity: string; notAfter?: string }[];
}
const status = async (node: string): Promise<Status> => JSON.parse(await adminGet(adminSocketOf(node), '/status')) as Status;
const statusOrNone = (node: string): Promise<Status | undefined> => status(node).catch(() => undefined);

/** The pid of the lab proxy with this state dir (it runs in its node's netns, started by the lab). */
function proxyPid(stateDir: string): number | undefined {
  return findProcess((argv) => argv.includes('proxy') && flagOf(argv, '--state-dir') === stateDir);
}

function killed(pid: number): Promise<boolean> {
  process.kill(pid, 'SIGKILL');
  return waitFor(() => !alive(pid), 5000);
}

bpfTest(t, 'a restarted proxy serves its last-good config, never nothing and never everything', async (t) => {
  const lab = await testLab(t, 2, 2, true);
  const [n1, n2] = lab.nodes;
  const mesh = lab.mesh!;
  const proxyOf = (node: LabState['nodes'][number]) => mesh.proxies.find((p) => p.node === node.name)!;
  const px1 = proxyOf(n1!);
  const server = lab.pods.find((p) => p.name === 'n1-p1')!;
  const dataDir = path.dirname(mesh.controller.credentials);
  let admin = ControllerClient.fromCredentials(mesh.controller.credentials);
  t.teardown(() => admin.close());

  // n1-p1 answers on 8081 (allowed) and 7004 (denied below).
  await labProcess(t, lab, 'n1-p1', [process.execPath, fixture('mesh-server.js'), 'n1-p1'], /serving/);
  await labProcess(t, lab, 'n1-p1', [process.execPath, fixture('mesh-server.js'), 'n1-p1-7004', '7004', '7005'], /serving/);
  const denyPort = (ports: string[]) =>
    doc({ apiVersion: A, kind: 'AuthorizationPolicy', metadata: { name: 'deny-port', namespace: 'default' }, spec: { selector: { matchLabels: { pod: 'n1-p1' } }, action: 'DENY', rules: [{ to: [{ operation: { ports } }] }] } });
  const r = await admin.apply([denyPort(['7004'])]);
  t.ok(await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n1!.name)!.ackedVersion >= r.version, 10_000), 'n1 took the DENY');
  t.equal(await whoami(lab, 'n1-p2', server.ip, 7004), 'ECONNRESET', 'on n1, 7004 is denied');
  t.equal(await whoami(lab, 'n2-p2', server.ip, 7004), 'ECONNRESET', 'and across nodes');
  t.equal(await whoami(lab, 'n2-p2', server.ip, 8081), 'n1-p1', '8081 is allowed');
  t.ok(await waitFor(async () => ((await status(n1!.name)).config.lastGood?.version ?? 0) >= r.version, 10_000), 'n1 wrote the version to its state dir');
  t.ok(await waitFor(async () => ((await status(n2!.name)).config.lastGood?.version ?? 0) > 0, 10_000), 'so did n2');
  const before = await status(n1!.name);
  const before2 = await status(n2!.name);
  t.equal(fs.statSync(path.join(px1.stateDir, 'config.bin')).mode & 0o777, 0o600, 'config.bin is mode 0600');
  t.equal(fs.statSync(path.join(px1.stateDir, 'workload-certs.json')).mode & 0o777, 0o600, 'so is workload-certs.json');

  let controllerPid = mesh.controller.pid;
  let controllerBackAt = 0;
  const top = t;
  const startController = async (): Promise<void> => {
    const log = fs.openSync(mesh.controller.log, 'a');
    const child = spawn(process.execPath, [BIN, 'controller', '--data-dir', dataDir, '--listen', mesh.controller.address, '--metrics-listen', mesh.controller.metrics], { detached: true, stdio: ['ignore', log, log] });
    fs.closeSync(log);
    child.unref();
    controllerPid = child.pid!;
    // `lab down` knows only the first controller.
    onCleanup(top, () => {
      try {
        process.kill(child.pid!, 'SIGKILL');
      } catch {
        // gone already
      }
    });
    admin.close();
    admin = ControllerClient.fromCredentials(mesh.controller.credentials, { timeoutMs: 2000 });
    t.ok(await waitFor(async () => (await admin.listNodes().catch(() => undefined)) !== undefined, 30_000, 100), 'the controller is back');
    controllerBackAt = Date.now();
  };
  // Cleanups go on the whole test: a proxy started in one subtest serves the next.
  const startProxy = (node = n1!): number => {
    const px = proxyOf(node);
    const log = fs.openSync(px.log, 'a');
    const child = spawn(
      'nsenter',
      [`--net=/run/netns/${node.netns}`, process.execPath, BIN, 'proxy', '--node', node.name, '--controller', mesh.controller.address, '--state-dir', px.stateDir, '--proxy-ip', node.ip, '--proxy-ip6', node.ip6],
      { detached: true, stdio: ['ignore', log, log] },
    );
    fs.closeSync(log);
    child.unref();
    onCleanup(top, () => {
      try {
        process.kill(child.pid!, 'SIGKILL');
      } catch {
        // gone already, or killed by the test
      }
    });
    return child.pid!;
  };
  const stopAll = async (t: Test, nodes = [n1!]): Promise<void> => {
    t.ok(await killed(controllerPid), 'kill -9 the controller');
    for (const node of nodes) t.ok(await killed(proxyPid(proxyOf(node).stateDir)!), `kill -9 the proxy of ${node.name}`);
  };

  await t.test('kill -9 both proxies and the controller; restarted with the controller down, they enforce their last config from the first connection', async (t) => {
    await stopAll(t, [n1!, n2!]);
    const restartedAt = Date.now();
    const probes = Promise.all([probe(lab, 'n1-p2', server.ip, [7004, 8081], 9_000), probe(lab, 'n2-p2', server.ip, [7004, 8081], 9_000)]);
    startProxy(n1);
    startProxy(n2);
    t.ok(await waitFor(async () => (await statusOrNone(n1!.name))?.ready === true && (await statusOrNone(n2!.name))?.ready === true, 20_000, 50), 'both ready again without the controller');
    const readyAt = Date.now();
    t.match((await status(n2!.name)).config, { source: 'disk', version: before2.config.version }, 'n2 too serves the version it had');
    const s = await status(n1!.name);
    t.match(s.config, { source: 'disk', version: before.config.version }, 'serving the version it had, from disk');
    t.match(s.config.summary, /config version \d+ from disk \(.*config\.bin, saved at .*\), until the controller answers/);
    const health = await labRun(lab, n1!.name, [process.execPath, '-e', "fetch('http://127.0.0.1:15021/healthz/ready').then(async r=>process.stdout.write(r.status+' '+await r.text()))"]);
    t.match(health.stdout, /^200 ready: config version \d+ from disk/, 'the readiness endpoint says so');
    t.match(fs.readFileSync(px1.log, 'utf8'), new RegExp(`serving the last config from disk, version ${before.config.version}, saved at \\d{4}-`), 'and the log');
    const kept = (id: Status) => id.workloadCertificates.find((c) => c.identity.endsWith('/sa/n1-p1'))?.notAfter;
    t.equal(kept(s), kept(before), "n1-p1's certificate is the one kept in the state dir (the controller cannot sign)");
    const kept2 = (id: Status) => id.workloadCertificates.find((c) => c.identity.endsWith('/sa/n2-p2'))?.notAfter;
    t.ok(kept2(before2) && kept2(await status(n2!.name)) === kept2(before2), "so is n2-p2's on n2, the tunnel's client side");
    const cli = await labRun(lab, n1!.name, [process.execPath, BIN, 'status', '--node', n1!.name]);
    t.match(cli.stdout, /config +\d+ services, 1 authorization policies, 2 local workloads; config version \d+ from disk/, `nodemesh status --node says so: ${cli.stdout}${cli.stderr}`);

    const [local, remote] = await probes;
    for (const [where, attempts] of [['on n1', local], ['across nodes', remote]] as const) {
      const passed = attempts.filter((a) => a.port === 7004 && a.answer === 'n1-p1-7004');
      t.same(passed, [], `${where}: not one connection to the denied port got through (${attempts.filter((a) => a.port === 7004).length} tried)`);
      const served = attempts.filter((a) => a.port === 8081 && a.answer === 'n1-p1');
      t.ok(served.length > 0, `${where}: the allowed port works again`);
      const firstServed = served[0]?.at ?? 0;
      const deniedAfter = attempts.filter((a) => a.port === 7004 && a.at >= firstServed);
      t.ok(deniedAfter.length > 0 && deniedAfter.every((a) => a.answer === 'ECONNRESET'), `${where}: once it serves, 7004 is refused by policy (${[...new Set(deniedAfter.map((a) => a.answer))].join(', ')})`);
      const earlier = [...new Set(attempts.filter((a) => a.at < firstServed).map((a) => a.answer))];
      t.comment(`${where}: first allowed connection ${firstServed - restartedAt} ms after the restart (ready seen ${readyAt - restartedAt} ms); before it: ${earlier.join(', ')}`);
    }
  });

  await t.test('the controller comes back: the proxy catches up and a new policy is enforced', async (t) => {
    await startController();
    const followed = await Promise.all(
      [n1!, n2!].map(async (n) => ((await waitFor(async () => (await status(n.name)).config.source === 'controller', 20_000, 50)) ? Date.now() - controllerBackAt : -1)),
    );
    t.ok(followed.every((ms) => ms >= 0), 'both nodes take their config from the controller again');
    t.comment(`controller back -> each node serving its config again: ${followed.map((ms) => `${ms} ms`).join(', ')} (back-off capped at 2 s)`);
    const r = await admin.apply([denyPort(['7004', '8081'])]);
    t.ok(await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n1!.name)!.ackedVersion >= r.version, 10_000), 'n1 took the new version');
    t.equal(await whoami(lab, 'n1-p2', server.ip, 8081), 'ECONNRESET', 'the new DENY on 8081 holds on n1');
    t.equal(await whoami(lab, 'n2-p2', server.ip, 8081), 'ECONNRESET', 'and across nodes');
    t.ok(await waitFor(async () => ((await status(n1!.name)).config.lastGood?.version ?? 0) >= r.version, 10_000), 'and is kept in the state dir');
    await admin.apply([denyPort(['7004'])]);
  });

  // Not a mesh workload or service: under ALLOW_ANY a proxy with a config would pass it through.
  await labProcess(t, lab, n2!.name, [process.execPath, fixture('mesh-server.js'), 'outside', '9181', '9180'], /serving/);
  t.equal(await whoami(lab, 'n1-p2', n2!.ip, 9181), 'outside', 'passthrough to it works while a config is held');
  for (const [name, prepare] of [
    ['with no config kept', () => fs.rmSync(path.join(px1.stateDir, 'config.bin'))],
    ['with a damaged config file', () => fs.writeFileSync(path.join(px1.stateDir, 'config.bin'), 'nodemesh-config v1\n{"node":"x"', { mode: 0o600 })],
  ] as const) {
    await t.test(`${name} and the controller down, the proxy accepts nothing`, async (t) => {
      await stopAll(t);
      prepare();
      const logFrom = fs.statSync(px1.log).size;
      startProxy();
      t.ok(await waitFor(async () => (await statusOrNone(n1!.name)) !== undefined, 20_000, 50), 'its /status answers');
      const attempts = await probe(lab, 'n1-p2', server.ip, [7004, 8081], 6_000);
      const outside = await probe(lab, 'n1-p2', n2!.ip, [9181], 1_000);
      // Refused either way: ECONNREFUSED while the dead proxy's ready flag stands (nothing listens on 15001 yet), EPERM from the kernel once its watchdog sees no heartbeat.
      const answers = [...new Set([...attempts, ...outside].map((a) => a.answer))];
      t.ok(answers.length > 0 && answers.every((a) => a === 'ECONNREFUSED' || a === 'EPERM'), `every connection refused, to the mesh and to a destination it does not know (${answers.join(', ')})`);
      const s = await status(n1!.name);
      t.match(s, { ready: false, config: { source: 'none', version: 0 } }, 'not ready, no config');
      t.match(s.config.summary, /^no config yet: waiting for the controller; pod traffic is not served/);
      const log = fs.readFileSync(px1.log, 'utf8').slice(logFrom);
      if (name.includes('damaged')) t.match(log, /the last config in \S+config\.bin is not used: .*remove the file/, 'the log names the file and the fix');
      t.match(log, /not serving \(15001 and 15008 stay closed\) until the controller answers/);
      await startController();
      t.ok(await waitFor(async () => (await statusOrNone(n1!.name))?.ready === true, 20_000, 100), 'ready once the controller answers');
      t.equal((await status(n1!.name)).config.source, 'controller');
      t.equal(await whoami(lab, 'n1-p2', server.ip, 7004), 'ECONNRESET', 'with its policy');
      t.equal(await whoami(lab, 'n1-p2', server.ip, 8081), 'n1-p1');
    });
  }
});
