/**
 * Env teardown closes what JS left open: a worker thread attaches an unpinned
 * link and exits without closing it; the addon's env cleanup hook closes the
 * fd, so the program detaches while this process lives on.
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

import { t } from 'tap';

import { PACKAGE_ROOT, bpfObjectPath } from '../../src/paths';
import { bpfTest } from '../helpers/bpf';
import { tempCgroup } from '../helpers/scratch';

function attachedPrograms(cg: string): string[] {
  const out = execFileSync('bpftool', ['-j', 'cgroup', 'show', cg], { encoding: 'utf8' }).trim();
  return out ? (JSON.parse(out) as { name: string }[]).map((p) => p.name) : [];
}

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { loadObject } = require(workerData.bpf);
// Held in a global so no garbage collection can close them first.
globalThis.kept = { obj: loadObject(workerData.object) };
globalThis.kept.link = globalThis.kept.obj.attachCgroup('selftest_connect4', workerData.cgroup);
globalThis.kept.map = globalThis.kept.obj.map('nm_selftest_conns');
parentPort.postMessage('attached');
parentPort.once('message', () => process.exit(0));
`;

bpfTest(t, 'a worker that exits without close() leaves nothing attached', async (t) => {
  const cg = tempCgroup(t);
  const w = new Worker(WORKER, {
    eval: true,
    workerData: { bpf: path.join(PACKAGE_ROOT, 'dist', 'src', 'bpf'), object: bpfObjectPath('selftest'), cgroup: cg },
  });
  await new Promise<void>((resolve, reject) => {
    w.once('message', () => resolve());
    w.once('error', reject);
  });
  t.same(attachedPrograms(cg), ['selftest_connect4'], 'attached while the worker lives');
  const exited = new Promise<number>((resolve) => w.once('exit', resolve));
  w.postMessage('exit');
  t.equal(await exited, 0);
  t.same(attachedPrograms(cg), [], 'detached once the worker env was torn down');
});
