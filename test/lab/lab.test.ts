/** The lab as a user drives it: up, list, exec, down, and what is left after failures. */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t } from 'tap';

import { findCgroup2Mount } from '../../src/bpf';
import { heldLabRoutes, keepLabRoutes, LAB_RANGES, labDown, labUp, readLab, type LabState } from '../../src/lab';
import { Datapath } from '../../src/node-proxy/datapath';
import { PACKAGE_ROOT } from '../../src/paths';
import { bpfTest } from '../helpers/bpf';
import { labName, labRun, testLab } from '../helpers/lab';
import { onCleanupAsync } from '../helpers/scratch';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');

function nodemesh(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Everything on the host that carries the lab's name. */
function leftovers(name: string): string[] {
  const out: string[] = [];
  const ns = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  for (const l of ns.split('\n')) if (l.startsWith(`nm-${name}-`)) out.push(`netns ${l.split(' ')[0]}`);
  const links = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' });
  for (const l of links.split('\n')) {
    const m = /^\d+: ([^:@]+)/.exec(l);
    if (m && m[1]!.startsWith(`nm-${name}-`)) out.push(`link ${m[1]}`);
  }
  const cgRoot = path.join(findCgroup2Mount()!, 'nodemesh-lab');
  if (fs.existsSync(cgRoot)) for (const d of fs.readdirSync(cgRoot)) if (d.startsWith(`${name}-`)) out.push(`cgroup ${d}`);
  if (fs.existsSync('/sys/fs/bpf/nodemesh')) for (const d of fs.readdirSync('/sys/fs/bpf/nodemesh')) if (d.startsWith(`${name}-`)) out.push(`pins ${d}`);
  if (fs.existsSync(`/run/nodemesh/labs/${name}.json`)) out.push('state file');
  return out;
}

bpfTest(t, 'up, list, exec, down', async (t) => {
  const lab = await testLab(t, 2, 2);
  const name = lab.name;

  const list = nodemesh(['lab', 'list', '--name', name, '-o', 'json']);
  t.equal(list.code, 0);
  const listed = JSON.parse(list.stdout) as LabState;
  const base = 16 * listed.slot;
  t.same(
    listed.pods.map((p) => [p.name, p.ip, p.netns]),
    [
      ['n1-p1', `198.18.${base + 1}.1`, `nm-${name}-n1-p1`],
      ['n1-p2', `198.18.${base + 1}.2`, `nm-${name}-n1-p2`],
      ['n2-p1', `198.18.${base + 2}.1`, `nm-${name}-n2-p1`],
      ['n2-p2', `198.18.${base + 2}.2`, `nm-${name}-n2-p2`],
    ],
  );
  t.same(listed.nodes.map((n) => n.ip), [`198.18.${base}.1`, `198.18.${base}.2`]);
  const text = nodemesh(['lab', 'list', '--name', name]);
  t.match(text.stdout, new RegExp(`n2-p1 +pod +${name}-n2 +198\\.18\\.${base + 2}\\.1 +/run/netns/nm-${name}-n2-p1 `));

  // exec: netns, cgroup, exit code.
  const inPod = await labRun(lab, 'n2-p1', ['sh', '-c', 'ip -o -4 addr show dev eth0; cat /proc/self/cgroup; exit 7']);
  t.equal(inPod.code, 7, 'the exit code is passed through');
  t.match(inPod.stdout, new RegExp(`inet 198\\.18\\.${base + 2}\\.1/24`), 'runs in the pod netns');
  t.match(inPod.stdout, new RegExp(`0::/nodemesh-lab/${name}-n2/p1\\n`), 'runs in the pod cgroup');
  const viaCli = spawnSync(process.execPath, [BIN, 'lab', 'exec', '--name', name, 'n1-p2', '--', 'sh', '-c', 'exit 3'], { encoding: 'utf8' });
  t.equal(viaCli.status, 3, '`nodemesh lab exec` passes the exit code through');
  const unknown = nodemesh(['lab', 'exec', '--name', name, 'n9-p9', '--', 'true']);
  t.equal(unknown.code, 1);
  t.match(unknown.stderr, /has no pod or node "n9-p9": pods are n1-p1, n1-p2, n2-p1, n2-p2/);

  // Pods on different nodes reach each other through their nodes.
  const server = spawn('nsenter', [`--net=/run/netns/nm-${name}-n2-p2`, process.execPath, '-e', "require('net').createServer(s=>s.end('pong')).listen(7000,()=>console.log('up'))"], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => server.kill('SIGKILL'));
  await new Promise((r) => server.stdout.once('data', r));
  const ping = await labRun(lab, 'n1-p1', [process.execPath, '-e', `require('net').connect(7000,'198.18.${base + 2}.2').on('data',d=>console.log(String(d)))`]);
  t.equal(ping.stdout.trim(), 'pong', 'n1-p1 reaches n2-p2 across nodes');
  const ping6 = await labRun(lab, 'n1-p1', [process.execPath, '-e', `require('net').connect(7000,'2001:2:0:${base + 2}::2').on('data',d=>console.log(String(d)))`]);
  t.equal(ping6.stdout.trim(), 'pong', 'and over IPv6');

  // Nothing routes outside the lab: no default route on a node (route lookups only; no packet is sent).
  const route = spawnSync('ip', ['-n', `nm-${name}-n1`, 'route', 'get', '192.0.2.1'], { encoding: 'utf8' });
  t.not(route.status, 0);
  t.match(route.stderr, /unreachable/i, 'a node has no route out of the lab');
  t.notMatch(execFileSync('ip', ['-n', `nm-${name}-n1`, 'route'], { encoding: 'utf8' }), /default/);

  // Nor from the host: pod subnets and VIPs have no host route, so without the lab's
  // unreachable routes they would follow the host's default route out of the machine.
  for (const dst of [`198.18.${base + 2}.1`, '198.19.0.10', `2001:2:0:${base + 2}::1`, '2001:2:0:ffff::10']) {
    const r = spawnSync('ip', ['route', 'get', dst], { encoding: 'utf8' });
    t.not(r.status, 0, `the host has no route to ${dst}`);
    t.notMatch(r.stdout, / via /, `${dst} does not take a gateway`);
  }
  t.match(execFileSync('ip', ['route', 'get', `198.18.${base}.1`], { encoding: 'utf8' }), new RegExp(`dev nm-${name}-br`), 'a lab node stays reachable through its bridge');
  t.same(await heldLabRoutes(), [...LAB_RANGES], 'the host holds an unreachable route for each lab range');

  // up over an existing lab: refused, nothing changed.
  const again = nodemesh(['lab', 'up', '--name', name]);
  t.equal(again.code, 1);
  t.match(again.stderr, new RegExp(`lab ${name} already exists \\(2 nodes, 4 pods\\): use it, or remove it with \`nodemesh lab down --name ${name}\``));
  t.same(readLab(name)?.slot, listed.slot);

  server.kill('SIGKILL');
  const down = nodemesh(['lab', 'down', '--name', name]);
  t.equal(down.code, 0, down.stderr);
  t.same(leftovers(name), [], 'down leaves nothing');
  // Labs of other test files may be up (tests run side by side): read the routes first,
  // then look for other labs, since a lab claims its state file before it adds the routes.
  const held = await heldLabRoutes();
  const others =
    (execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).match(/: nm-[a-z0-9]+-br[:@]/g) ?? []).length +
    fs.readdirSync('/run/nodemesh/labs').filter((f) => f.endsWith('.json')).length;
  if (others === 0) t.same(held, [], 'down of the last lab removes the unreachable routes');
  else t.same(held, [...LAB_RANGES], `another lab is up (${others}): the unreachable routes stay`);
  const twice = nodemesh(['lab', 'down', '--name', name]);
  t.equal(twice.code, 0);
  t.match(twice.stdout, /nothing to remove/);
});

t.test('the unreachable routes stay while any other lab exists', async (t) => {
  t.equal(keepLabRoutes('a', [], []), false, 'last lab: removed');
  t.equal(keepLabRoutes('a', ['a'], ['a']), false, 'only its own bridge and state: removed');
  t.equal(keepLabRoutes('a', ['a', 'b'], ['a']), true, 'another bridge: kept');
  t.equal(keepLabRoutes('a', [], ['b']), true, 'another lab claimed a name and is coming up: kept');
});

bpfTest(t, 'two labs at once take different slots', async (t) => {
  const [a, b] = await Promise.all([testLab(t, 1, 1), testLab(t, 1, 1)]);
  t.not(a.slot, b.slot);
  t.not(a.nodes[0]!.ip, b.nodes[0]!.ip);
  t.not(a.pods[0]!.ip, b.pods[0]!.ip);
});

bpfTest(t, 'a failed up removes what it made', async (t) => {
  const name = labName();
  onCleanupAsync(t, () => labDown(name), () => void spawnSync(process.execPath, [BIN, 'lab', 'down', '--name', name]));
  // A namespace in the way of the second pod makes `ip netns add` fail half way.
  execFileSync('ip', ['netns', 'add', `nm-${name}-n1-p2`]);
  await t.rejects(labUp({ name, nodes: 2, podsPerNode: 2 }), {
    code: 'NM_ERR_LAB_STEP',
    message: new RegExp(`\`ip netns add nm-${name}-n1-p2\` failed: .*; lab up ${name} removed everything it had made`),
  });
  t.same(leftovers(name), [], 'nothing of the lab is left');
});

bpfTest(t, 'down after `lab up` was killed half way leaves nothing', async (t) => {
  const name = labName();
  onCleanupAsync(t, () => labDown(name), () => void spawnSync(process.execPath, [BIN, 'lab', 'down', '--name', name]));
  const child = spawn(process.execPath, [BIN, 'lab', 'up', '--name', name, '--nodes', '3', '--pods-per-node', '8'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  await new Promise<void>((resolve) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (/pod +n1-p2/.test(out)) resolve();
    });
    child.once('exit', () => resolve());
  });
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  t.notMatch(out, /is up/, 'killed before it finished');
  t.not(leftovers(name).length, 0, 'it had made something');
  const down = nodemesh(['lab', 'down', '--name', name]);
  t.equal(down.code, 0, down.stderr);
  t.same(leftovers(name), [], 'down swept it all');
});

/** Program ids attached to a cgroup (every hook), by bpftool. */
function attachedIds(cg: string): number[] {
  const out = execFileSync('bpftool', ['-j', 'cgroup', 'show', cg], { encoding: 'utf8' }).trim();
  return out ? (JSON.parse(out) as { id: number }[]).map((p) => p.id) : [];
}

bpfTest(t, 'down removes data path pins, processes left in the lab, and its programs at the cgroup root', async (t) => {
  const lab = await testLab(t, 1, 1);
  const n1 = lab.nodes[0]!;
  const root = findCgroup2Mount()!;
  const installed = nodemesh(['datapath', 'install', '--node', n1.name, '--proxy-ip', n1.ip]);
  t.equal(installed.code, 0, installed.stderr);
  t.match(installed.stdout, new RegExp(`attached to ${root}`), 'at the cgroup2 root by default');
  t.ok(fs.existsSync(`/sys/fs/bpf/nodemesh/${n1.name}`));
  const dp = Datapath.open(n1.name);
  const ids = dp.links().map((l) => l.progId!);
  dp.close();
  t.equal(attachedIds(root).filter((id) => ids.includes(id)).length, 5, 'five programs of this node on the root');
  // A stand-in proxy holds the links open while down runs.
  const echo = spawn(process.execPath, [BIN, 'lab', 'exec', '--name', lab.name, 'n1', '--', process.execPath, BIN, 'datapath', 'echo', '--node', n1.name], { stdio: 'ignore' });
  const sleeper = spawn(process.execPath, [BIN, 'lab', 'exec', '--name', lab.name, 'n1-p1', '--', 'sleep', '600'], { stdio: 'ignore' });
  t.teardown(() => {
    sleeper.kill('SIGKILL');
    echo.kill('SIGKILL');
  });
  await new Promise((r) => setTimeout(r, 500));
  const down = nodemesh(['lab', 'down', '--name', lab.name]);
  t.equal(down.code, 0, down.stderr);
  t.same(leftovers(lab.name), []);
  t.same(attachedIds(root).filter((id) => ids.includes(id)), [], 'none of its programs is left on the root cgroup');
});
