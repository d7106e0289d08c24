/** RLIMIT_NOFILE as /proc/<pid>/limits states it. */
import { spawnSync } from 'node:child_process';

import { t } from 'tap';

import { openFileLimit, readOpenFileLimit } from '../../src/net';

const HEAD = 'Limit                     Soft Limit           Hard Limit           Units     \n';

t.test('openFileLimit reads the soft limit', async (t) => {
  t.equal(openFileLimit(`${HEAD}Max open files            20000                1048576              files     \n`), 20_000);
  t.equal(openFileLimit(`${HEAD}Max open files            unlimited            unlimited            files     \n`), Number.MAX_SAFE_INTEGER);
  t.equal(openFileLimit('Limit  Soft Limit Hard Limit Units\nMax open files            20000                20000                files\n'), 20_000);
  t.equal(openFileLimit('nothing here'), undefined);
  t.equal(openFileLimit(`${HEAD}Max open files            lots                 lots                 files     \n`), undefined);
});

t.test('readOpenFileLimit is the limit this process runs under (a child shell inherits it)', async (t) => {
  const shell = spawnSync('sh', ['-c', 'ulimit -Sn'], { encoding: 'utf8' }).stdout.trim();
  t.equal(readOpenFileLimit(), shell === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(shell));
});
