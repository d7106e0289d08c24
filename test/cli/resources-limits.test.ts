/** nodemesh apply against the limits: huge files and stdin, deep nesting, many documents, lone surrogates (a real controller, the real CLI). */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t, type Test } from 'tap';

import { PACKAGE_ROOT } from '../../src/paths';
import { tempDir, testController } from '../helpers/controller';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');

/** Runs nodemesh and reports its peak resident memory (MiB), written by a preload script as the process exits. */
async function nodemeshPeak(t: Test, args: string[], env: NodeJS.ProcessEnv, stdin?: string): Promise<{ code: number | null; stdout: string; stderr: string; peakMiB: number }> {
  const dir = tempDir(t, 'nodemesh-rss-');
  const preload = path.join(dir, 'peak.js');
  const out = path.join(dir, 'peak.txt');
  fs.writeFileSync(preload, `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(out)}, String(process.resourceUsage().maxRSS)));\n`);
  const child = spawn(process.execPath, ['--require', preload, BIN, ...args], { env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  // The CLI stops reading at its limit: the rest of stdin is refused with EPIPE.
  child.stdin.on('error', () => {});
  child.stdin.end(stdin ?? '');
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  return { code, stdout, stderr, peakMiB: Number(fs.readFileSync(out, 'utf8')) / 1024 };
}

t.test('apply of a 50 MB file, a 10,000-level document, too many documents: clear errors naming the limit, little memory', async (t) => {
  const c = await testController(t);
  const env = { NODEMESH_CREDENTIALS: c.controller.credentialsPath };
  const dir = tempDir(t, 'nodemesh-manifests-');
  const big = path.join(dir, 'big.yaml');
  // 50 MiB of valid documents (each a distinct Workload).
  const one = (i: number): string => `---\napiVersion: nodemesh.io/v1alpha1\nkind: Workload\nmetadata: {name: w-${i}, annotations: {pad: "${'x'.repeat(1000)}"}}\nspec: {node: n1, addresses: [198.18.1.1]}\n`;
  const fd = fs.openSync(big, 'w');
  for (let i = 0, n = 0; n < 50 * 1024 * 1024; i++) n += fs.writeSync(fd, one(i));
  fs.closeSync(fd);
  let r = await nodemeshPeak(t, ['apply', '-f', big], env);
  t.equal(r.code, 1);
  t.equal(r.stderr, 'error: -f ' + big + ': 50.0 MiB of manifests, over the 4 MiB limit of one command (the largest request the controller takes by default): split them and apply the parts one by one\n');
  t.ok(r.peakMiB < 256, `peak RSS ${r.peakMiB.toFixed(0)} MiB for a 50 MB file`);
  t.comment(`nodemesh apply -f 50MB.yaml: peak RSS ${r.peakMiB.toFixed(0)} MiB`);

  r = await nodemeshPeak(t, ['apply', '-f', '-'], env, fs.readFileSync(big, 'utf8'));
  t.equal(r.code, 1);
  t.equal(r.stderr, 'error: stdin: more than 4 MiB of manifests, over the 4 MiB limit of one command (the largest request the controller takes by default): split them and apply the parts one by one\n');
  t.ok(r.peakMiB < 256, `stdin: peak RSS ${r.peakMiB.toFixed(0)} MiB`);
  t.comment(`nodemesh apply -f - < 50MB.yaml: peak RSS ${r.peakMiB.toFixed(0)} MiB`);

  // Just under the limit still goes through, all or nothing, with the document count checked.
  const many = Array.from({ length: 1001 }, (_, i) => one(i).replace('x'.repeat(1000), 'x')).join('');
  r = await nodemeshPeak(t, ['apply', '-f', '-'], env, many);
  t.equal(r.code, 1);
  t.equal(r.stderr, 'error: stdin: more than 1000 documents, the limit per command (split the file and apply the parts one by one)\n');

  const deep = `apiVersion: nodemesh.io/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec: ${'['.repeat(10_000)}${']'.repeat(10_000)}\n`;
  fs.writeFileSync(path.join(dir, 'deep.yaml'), deep);
  r = await nodemeshPeak(t, ['apply', '-f', path.join(dir, 'deep.yaml')], env);
  t.equal(r.code, 1);
  t.equal(r.stderr, 'error: deep.yaml doc 1: line 4: nested deeper than 32 levels, the limit (no nodemesh resource needs more than about 10: look for unbalanced brackets or a generated document)\n', 'no stack overflow');

  // A lone surrogate (a YAML \u escape) reaches the controller, which refuses it and keeps serving.
  r = await nodemeshPeak(t, ['apply', '-f', '-'], env, 'apiVersion: nodemesh.io/v1alpha1\nkind: Service\nmetadata: {name: "web\\ud800"}\nspec: {selector: {app: web}, addresses: [198.19.0.10], ports: [{port: 80}]}\n');
  t.equal(r.code, 1);
  t.equal(r.stderr, 'error: stdin doc 1 (Service default/"web\\ud800"): metadata.name: must be well-formed Unicode: lone surrogate \\ud800 at character 4 (save the file as UTF-8; a \\uD800-\\uDFFF escape must be half of a pair)\n');

  r = await nodemeshPeak(t, ['apply', '-f', '-'], env, one(1));
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'workload.nodemesh.io/w-1 created\n', 'a normal apply still works');
});
