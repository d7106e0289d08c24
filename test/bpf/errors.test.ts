/** What a user sees when something is wrong: each failure is a BpfError naming the step and the fix. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { t } from 'tap';

import { loadObject, openObject } from '../../src/bpf';
import { bpfObjectPath } from '../../src/paths';
import { bpfTest } from '../helpers/bpf';
import { thrown } from '../helpers/errors';
import { fixture, runNode } from '../helpers/child';
import { tempCgroup, tempPinDir } from '../helpers/scratch';

const SELFTEST = bpfObjectPath('selftest');


t.test('a missing object file says how to build it', async (t) => {
  const e = thrown(() => loadObject('/nonexistent/thing.bpf.o'));
  t.match(e, { name: 'BpfError', op: 'object_open', code: 'ENOENT', errno: 2 });
  t.match(e.message, /\/nonexistent\/thing\.bpf\.o/);
  t.match(e.message, /npm run build/);
});

t.test('a file that is not BPF ELF is refused at open', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const junk = path.join(dir, 'junk.bpf.o');
  fs.writeFileSync(junk, 'this is not an ELF file\n'.repeat(10));
  const e = thrown(() => loadObject(junk));
  t.equal(e.op, 'object_open');
  t.match(e.code, /^(LIBBPF_FORMAT|LIBBPF_ELF|EINVAL)$/);
  t.match(e.message, /junk\.bpf\.o/);
});

t.test('a pin root off bpffs is refused before anything is created', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const e = thrown(() => loadObject(SELFTEST, { pinRoot: path.join(dir, 'pins') }));
  t.match(e, { op: 'pin_dir', code: 'NM_ERR_BPF_NO_BPFFS' });
  t.match(e.message, /mount -t bpf bpf \/sys\/fs\/bpf/);
  t.notOk(fs.existsSync(path.join(dir, 'pins')), 'no directory was made');
});

bpfTest(t, 'the verifier rejection carries the last lines of its log', async (t) => {
  const e = thrown(() => loadObject(bpfObjectPath('test/reject')));
  t.equal(e.op, 'prog_load');
  t.match(e.code, /^(EACCES|EINVAL)$/);
  t.match(e.message, /reject_unchecked_lookup/, 'names the program');
  t.match(e.message, /the verifier rejected the program/);
  t.match(e.verifierLog, /invalid mem access 'map_value_or_null'/, 'the verifier verdict is in the error');
  t.match(e.message, /invalid mem access/);
});

bpfTest(t, 'globals: sized from BTF, range-checked, only before load', async (t) => {
  const obj = openObject(SELFTEST);
  t.teardown(() => obj.close());
  t.match(thrown(() => obj.setGlobal('no_such_global', 1)), { op: 'object_global', code: 'ENOENT' });
  t.match(thrown(() => obj.setGlobal('deny_port', 70000)), { code: 'ERANGE', message: /deny_port is 2 bytes/ });
  t.match(thrown(() => obj.setGlobal('deny_port', Buffer.alloc(4))), { code: 'EINVAL', message: /2 bytes, value is 4/ });
  obj.setGlobal('deny_port', 8080);
  obj.load();
  t.ok(obj.loaded);
  t.match(thrown(() => obj.setGlobal('deny_port', 1)), { code: 'EBUSY', message: /before load/ });
  t.match(thrown(() => obj.load()), { code: 'EALREADY' });
});

bpfTest(t, 'attach: not a cgroup, no such program', async (t) => {
  const obj = loadObject(SELFTEST);
  t.teardown(() => obj.close());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  let e = thrown(() => obj.attachCgroup('selftest_connect4', dir));
  t.equal(e.op, 'link_attach');
  t.match(e.message, new RegExp(`attach selftest_connect4 to ${dir}`));
  t.match(e.message, /not a cgroup v2 directory/);
  e = thrown(() => obj.attachCgroup('selftest_connect4', '/nonexistent-cgroup'));
  t.match(e, { op: 'link_attach', code: 'ENOENT' });
  e = thrown(() => obj.attachCgroup('no_such_program', tempCgroup(t)));
  t.match(e, { op: 'link_attach', code: 'ENOENT', message: /no program named no_such_program/ });
  const link = obj.attachCgroup('selftest_connect4', tempCgroup(t));
  t.teardown(() => link.close());
  t.match(thrown(() => link.update(obj, 'nope')), { op: 'link_update', code: 'ENOENT' });
});

bpfTest(t, 'a process without CAP_BPF gets EPERM and the fix', async (t) => {
  const pins = tempPinDir(t);
  // Same fixture, same object: as root it loads.
  const ok = await runNode(fixture('load-object.js'), [SELFTEST]);
  t.same(JSON.parse(ok.stdout), { ok: true }, 'loads with privileges');

  const dropped = await runNode(fixture('load-object.js'), [SELFTEST], {
    wrap: ['setpriv', '--bounding-set', '-bpf,-sys_admin,-perfmon,-net_admin', '--inh-caps', '-all', '--'],
  });
  const r = JSON.parse(dropped.stdout) as { ok: boolean; name: string; op: string; code: string; message: string };
  t.equal(r.ok, false);
  t.equal(r.name, 'BpfError');
  t.match(r.op, /^(object_load|map_create|prog_load)$/);
  t.match(r.code, /^(EPERM|EACCES)$/);
  t.match(r.message, /run as root or grant CAP_BPF and CAP_SYS_ADMIN/);
  t.same(fs.readdirSync(path.dirname(pins)).filter((n) => n === path.basename(pins)), [], 'nothing was pinned');
});
