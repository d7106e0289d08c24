/** A lab made for one test and removed at its end (and on exit or signal). */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import type { Test } from 'tap';

import { labDown, labSpawn, labUp, type LabState } from '../../src/lab';
import { PACKAGE_ROOT } from '../../src/paths';
import { onCleanup, onCleanupAsync } from './scratch';

/** A lab name unique to this test run (lab names are 1-8 characters). */
export function labName(): string {
  return `t${randomBytes(3).toString('hex')}`;
}

export async function testLab(t: Test, nodes = 2, podsPerNode = 2, mesh = false, workloadCertLifetimeSeconds?: number, nodeCertLifetimeSeconds?: number): Promise<LabState> {
  const name = labName();
  // Registered before up: a failed up is swept too.
  onCleanupAsync(
    t,
    async () => {
      // A failed test keeps the lab's logs (controller, proxies) for a look.
      const logs = path.join('/run/nodemesh/labs', name);
      if (!t.passing() && fs.existsSync(logs)) {
        const keep = path.join(os.tmpdir(), `nodemesh-failed-${name}`);
        fs.mkdirSync(keep, { recursive: true });
        for (const f of fs.readdirSync(logs).filter((x) => x.endsWith('.log'))) fs.copyFileSync(path.join(logs, f), path.join(keep, f));
        t.comment(`lab logs kept in ${keep}`);
      }
      const r = await labDown(name);
      if (r.errors.length) t.fail(`lab down ${name}: ${r.errors.join('; ')}`);
    },
    // At exit or on a signal only synchronous work runs: sweep from a child process of its own session, which
    // finishes even when this one is killed right after (tap follows a timed-out file's SIGTERM with SIGKILL).
    () => spawn(process.execPath, [path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js'), 'lab', 'down', '--name', name], { stdio: 'ignore', detached: true }).unref(),
  );
  return labUp({ name, nodes, podsPerNode, mesh, workloadCertLifetimeSeconds, nodeCertLifetimeSeconds });
}

/** Starts argv in a lab pod or node; resolves once it prints `readyLine`, killed at teardown. */
export async function labProcess(t: Test, lab: LabState, target: string, argv: string[], readyLine?: RegExp): Promise<{ child: ChildProcess; output: () => string }> {
  const child = labSpawn(lab, target, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  onCleanup(t, () => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  if (readyLine) {
    await new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (readyLine.test(out)) resolve();
      };
      child.stdout!.on('data', check);
      child.once('exit', (code) => reject(new Error(`${argv.join(' ')} exited (${code}) before it was ready: ${out}`)));
      check();
    });
  }
  return { child, output: () => out };
}

/** Runs argv in a lab pod or node to completion; resolves to its exit code and output. */
export function labRun(lab: LabState, target: string, argv: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = labSpawn(lab, target, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
