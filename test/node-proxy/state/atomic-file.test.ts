/**
 * The state dir's files are replaced whole (writeFileAtomic), and what a
 * process killed mid-write leaves behind is removed at the next start
 * (removeStaleTemps), except a live process's: the old proxy of an upgrade
 * may be saving beside the new one.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t } from 'tap';

import { removeStaleTemps, writeFileAtomic } from '../../../src/node-proxy/state';
import { tempDir } from '../../helpers/controller';

t.test('writeFileAtomic replaces the file whole, mode 0600, and leaves no temporary file', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'config.bin');
  await writeFileAtomic(file, 'one');
  await writeFileAtomic(file, 'two');
  t.equal(fs.readFileSync(file, 'utf8'), 'two');
  t.equal(fs.statSync(file).mode & 0o777, 0o600, 'readable by its owner only');
  t.same(fs.readdirSync(dir), ['config.bin'], 'nothing else beside it');
});

t.test("removeStaleTemps removes a dead writer's temporary files, not a live one's, nor other files", async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'config.bin');
  // A pid that surely is not running: a child that has exited.
  const dead = spawnSync(process.execPath, ['-e', '']).pid!;
  const names = [`.config.bin.${dead}.1.tmp`, `.config.bin.${dead}.2.tmp`, `.config.bin.${process.pid}.1.tmp`, '.workload-certs.json.1.1.tmp', 'config.bin', 'notes.tmp'];
  for (const n of names) fs.writeFileSync(path.join(dir, n), 'x');
  t.same(removeStaleTemps(file).sort(), [`.config.bin.${dead}.1.tmp`, `.config.bin.${dead}.2.tmp`], "the dead writer's two");
  t.same(fs.readdirSync(dir).sort(), [`.config.bin.${process.pid}.1.tmp`, '.workload-certs.json.1.1.tmp', 'config.bin', 'notes.tmp'].sort(), 'the rest stays');
  t.same(removeStaleTemps(path.join(dir, 'missing', 'config.bin')), [], 'a state dir that does not exist yet is no error');
});
