/** The controller process's policy for errors nothing caught: rejections are logged and counted and it keeps serving; exceptions exit 70. */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t, type Test } from 'tap';

import { PACKAGE_ROOT } from '../../src/paths';
import { tempDir } from '../helpers/controller';

/** A process with the policy installed that runs `body`, then prints its counters after a while unless it died first. */
function run(t: Test, body: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const script = path.join(tempDir(t, 'nodemesh-policy-'), 'policy.js');
  const dist = path.join(PACKAGE_ROOT, 'dist', 'src');
  fs.writeFileSync(
    script,
    `const { installProcessPolicy } = require(${JSON.stringify(path.join(dist, 'controller', 'process-policy.js'))});
const { ControllerMetrics } = require(${JSON.stringify(path.join(dist, 'controller', 'metrics.js'))});
const { createLogger } = require(${JSON.stringify(path.join(dist, 'log.js'))});
const metrics = new ControllerMetrics();
installProcessPolicy(createLogger({ level: 'info' }), metrics);
${body}
setTimeout(async () => {
  const text = await metrics.registry.metrics();
  process.stdout.write(text.split('\\n').filter((l) => l.startsWith('nodemesh_controller_unhandled_errors_total{')).join('\\n') + '\\nstill running\\n');
}, 500);
`,
  );
  const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

t.test('unhandled rejections are logged (rate-limited), counted, and the process keeps running', async (t) => {
  const r = await run(t, `for (let i = 0; i < 5; i++) Promise.reject(new Error('lost promise ' + i));`);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /nodemesh_controller_unhandled_errors_total\{kind="rejection"\} 5\nstill running/);
  const lines = r.stderr.split('\n').filter((l) => l.includes('unhandled promise rejection'));
  t.equal(lines.length, 1, 'one log line for five rejections within 10 s');
  t.match(lines[0], /lost promise 0/);
});

t.test('an uncaught exception is logged and counted, and the process exits with 70', async (t) => {
  const r = await run(t, `setImmediate(() => { throw new Error('broken invariant'); });`);
  t.equal(r.code, 70);
  t.notMatch(r.stdout, /still running/);
  t.match(r.stderr, /"level":60.*broken invariant.*uncaught exception \(a controller bug; exiting so a restart begins from the store/);
});
