/**
 * nodemesh proxy refuses to start, before it joins, installs or listens,
 * when its own address is not one of this namespace's (the data path would
 * send every pod connection to a port nobody listens on), and when its
 * drain timeout, watchdog or delivery mode is not one it can use. No root needed: these checks come first.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { t } from 'tap';

import { PACKAGE_ROOT } from '../../src/paths';
import { proxyAddressProblem } from '../../src/node-proxy/proxy';

function run(dir: string, ...flags: string[]) {
  return spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js'), 'proxy', '--node', 'x', '--controller', '127.0.0.1:9', '--cgroup', dir, '--state-dir', path.join(dir, 'state'), ...flags], {
    encoding: 'utf8',
    timeout: 30_000,
  });
}

t.test('a --proxy-ip that is not an address here stops the proxy with the fix, and nothing is made', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-proxy-start-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // 198.18.250.77 is in the lab's range, and no interface of the test's namespace has it.
  const foreign = run(dir, '--proxy-ip', '198.18.250.77');
  t.not(foreign.status, 0, 'it exits with an error');
  t.match(foreign.stderr, /--proxy-ip 198\.18\.250\.77 is not an address of this network namespace \(it has .*127\.0\.0\.1.*\): pods would be redirected to a port nobody listens on; give this node's own address/);
  const v6 = run(dir, '--proxy-ip', '127.0.0.1', '--proxy-ip6', '2001:2:ff::77');
  t.not(v6.status, 0);
  t.match(v6.stderr, /--proxy-ip6 2001:2:ff::77 is not an address of this network namespace/);
  const notIp = run(dir, '--proxy-ip', 'node-1');
  t.match(notIp.stderr, /--proxy-ip "node-1" is not an IPv4 address/);
  t.notOk(fs.existsSync(path.join(dir, 'state')), 'no state dir was made: it stopped before joining');
});

t.test('a bad --drain-timeout is a usage error naming the form', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-proxy-start-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const bad = run(dir, '--proxy-ip', '127.0.0.1', '--drain-timeout', 'a while');
  t.equal(bad.status, 64);
  t.match(bad.stderr, /--drain-timeout must be a duration like 500ms, 2s or 1m, not "a while"/);
});

t.test('a bad --watchdog or --deliver-from is a usage error naming the choices', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-proxy-start-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const w of ['soon', '200ms', '2h']) {
    const bad = run(dir, '--proxy-ip', '127.0.0.1', '--watchdog', w);
    t.equal(bad.status, 64, `--watchdog ${w}`);
    t.match(bad.stderr, new RegExp(`--watchdog must be 0 \\(off\\) or a duration from 1s to 1h such as 3s, not "${w}"`));
  }
  const from = run(dir, '--proxy-ip', '127.0.0.1', '--deliver-from', 'pod');
  t.equal(from.status, 64);
  t.match(from.stderr, /--deliver-from must be client or proxy, not "pod"/);
  t.notOk(fs.existsSync(path.join(dir, 'state')), 'and it made nothing');
});

t.test('proxyAddressProblem: own addresses pass in any spelling, others are named', async (t) => {
  t.equal(proxyAddressProblem('--proxy-ip', '127.0.0.1', 4), undefined, 'loopback is an address of every namespace');
  const v6 = Object.values(os.networkInterfaces()).flat().find((i) => i?.family === 'IPv6' && i.address === '::1');
  if (v6) t.equal(proxyAddressProblem('--proxy-ip6', '0:0:0:0:0:0:0:1', 6), undefined, '::1 spelled out in full is still ::1');
  t.match(proxyAddressProblem('--proxy-ip', '::1', 4), /is not an IPv4 address/);
  t.match(proxyAddressProblem('--proxy-ip', '198.18.250.77', 4), /not an address of this network namespace/);
});

t.test('--upgrade: a bad --upgrade-drain is a usage error, and with no proxy running there is nothing to take over', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-proxy-start-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const bad = run(dir, '--proxy-ip', '127.0.0.1', '--upgrade', '--upgrade-drain', 'soon');
  t.equal(bad.status, 64);
  t.match(bad.stderr, /--upgrade-drain must be a duration like 30s, 5m or 1h, not "soon"/);
  const none = run(dir, '--proxy-ip', '127.0.0.1', '--upgrade');
  t.not(none.status, 0, 'it exits with an error');
  t.match(none.stderr, /nothing to upgrade: no proxy answers on \/run\/nodemesh\/proxy\/x\/admin\.sock \(ENOENT\); start it without --upgrade/);
  t.notOk(fs.existsSync(path.join(dir, 'state')), 'and it made nothing');
});
