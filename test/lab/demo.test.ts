/** `nodemesh lab demo` (what `npm run demo` runs) shows redirection and leaves nothing behind. */
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
  for (const pod of ['n1-p1', 'n1-p2', 'n2-p1', 'n2-p2'])
    t.match(r.stdout, new RegExp(`  ${pod} -> 198\\.19\\.\\d+\\.\\d+:\\d+ +proxy saw 198\\.18\\.\\d+\\.\\d+:\\d+, original destination 198\\.19\\.`), `${pod} was redirected with its origin`);
  t.equal((r.stdout.match(/ established$/gm) ?? []).length, 4, 'four flow records');
  t.match(r.stdout, new RegExp(`${name}-n1: redirected=2 `));
  t.match(r.stdout, /== 6\. teardown[\s\S]*removed \d+ objects\n/);
  t.notMatch(r.stdout, /errors:/);
  t.notOk(fs.existsSync(`/run/nodemesh/labs/${name}.json`), 'the demo lab is gone');
  t.notOk(fs.existsSync(`/sys/fs/bpf/nodemesh/${name}-n1`), 'its pins are gone');
});
