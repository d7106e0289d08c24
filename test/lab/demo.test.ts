/** `nodemesh lab demo` (what `npm run demo` runs): the mesh end to end, then nothing left behind. */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t } from 'tap';

import { labDown } from '../../src/lab';
import { PACKAGE_ROOT } from '../../src/paths';
import { bpfTest } from '../helpers/bpf';
import { labName } from '../helpers/lab';
import { onCleanupAsync } from '../helpers/scratch';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');

bpfTest(t, 'the demo runs end to end', async (t) => {
  const name = labName();
  onCleanupAsync(t, () => labDown(name), () => void spawnSync(process.execPath, [BIN, 'lab', 'down', '--name', name]));
  const r = spawnSync(process.execPath, [BIN, 'lab', 'demo', '--name', name], { encoding: 'utf8', timeout: 120_000 });
  t.equal(r.status, 0, r.stderr);
  const section = (n: number): string => r.stdout.split(`== ${n}.`)[1]?.split('\n== ')[0] ?? '';
  t.match(section(3), /n1-p2 -> 198\.19\.0\.10:80 +hello from n1-p1\n +n2-p2 -> 198\.19\.0\.10:80 +hello from n2-p1/, 'each pod reaches the endpoint on its node');
  t.match(section(4), /n1-p2 -> 198\.19\.0\.10:80 +hello from n1-p1\n +n2-p2 -> 198\.19\.0\.10:80 +refused: ECONNRESET/, 'the DENY takes effect for n2-p2 only');
  t.match(section(3), /n1-p2 -> 198\.18\.\d+\.1:8080 \(n2-p1, the other node\) +hello from n2-p1 +\(through the mTLS tunnel\)/, 'across nodes too');
  t.equal((section(5).match(/ ALLOWED /g) ?? []).length, 5, 'five allowed flows: three out, one across nodes seen by both proxies');
  t.equal((section(5).match(/  mTLS  /g) ?? []).length, 2, 'the cross-node one is mutual TLS on both sides');
  t.match(section(5), /default\/n2-p2 .* DENIED  explicit-deny \(default\/deny-n2-p2\)/);
  t.match(section(6), /nodemesh_tcp_denied_total\{[^}]*source_workload="n2-p2"[^}]*policy="default\/deny-n2-p2"\} 1/);
  t.match(r.stdout, /== 7\. teardown[\s\S]*removed \d+ objects\n/);
  t.notMatch(r.stdout, /errors:/);
  t.notMatch(r.stdout, /\.\.\/shared/, 'points only at what the repository has');
  t.notOk(fs.existsSync(`/run/nodemesh/labs/${name}.json`), 'the demo lab is gone');
  t.notOk(fs.existsSync(`/sys/fs/bpf/nodemesh/${name}-n1`), 'its pins are gone');
});
