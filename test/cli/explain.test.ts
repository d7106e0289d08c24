/** nodemesh explain against a real controller: the policies, the verdict and the deciding rule. */
import { spawn } from 'node:child_process';
import * as path from 'node:path';

import { t } from 'tap';

import { PACKAGE_ROOT } from '../../src/paths';
import { doc, testController } from '../helpers/controller';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');
const A = 'nodemesh.io/v1alpha1';

function nodemesh(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

const wl = (name: string, ns: string, labels: Record<string, string>) => ({
  apiVersion: A,
  kind: 'Workload',
  metadata: { name, namespace: ns, labels },
  spec: { node: 'n1', serviceAccount: name, addresses: ['198.18.1.1'] },
});

t.test('explain names the policies, the verdict and the rule', async (t) => {
  const c = await testController(t);
  const env = { NODEMESH_CREDENTIALS: c.controller.credentialsPath };
  await c.admin.apply(
    [
      wl('db', 'shop', { app: 'db' }),
      wl('web', 'shop', { app: 'web' }),
      wl('batch', 'jobs', { app: 'batch' }),
      { apiVersion: A, kind: 'Service', metadata: { name: 'db', namespace: 'shop' }, spec: { selector: { app: 'db' }, addresses: ['198.19.0.20'], ports: [{ port: 5432 }, { port: 9999 }] } },
      {
        apiVersion: A,
        kind: 'AuthorizationPolicy',
        metadata: { name: 'db-from-shop', namespace: 'shop' },
        spec: { selector: { matchLabels: { app: 'db' } }, action: 'ALLOW', rules: [{ from: [{ source: { namespaces: ['ops'] } }] }, { from: [{ source: { namespaces: ['shop'] } }], to: [{ operation: { ports: ['5432'] } }] }] },
      },
      {
        apiVersion: A,
        kind: 'AuthorizationPolicy',
        metadata: { name: 'no-web-admin', namespace: 'shop' },
        spec: { selector: { matchLabels: { app: 'db' } }, action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/web'] } }], to: [{ operation: { ports: ['9999'] } }] }] },
      },
    ].map((d, i) => doc(d, i + 1)),
  );

  let r = await nodemesh(['explain', '--from', 'web', '--to', 'db', '-n', 'shop'], env);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /from  shop\/web \(spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web\)\nto    service shop\/db port 5432\n/);
  t.match(r.stdout, /policies selecting it: shop\/db-from-shop \(ALLOW\), shop\/no-web-admin \(DENY\)/);
  t.match(r.stdout, /verdict: ALLOWED \(allowed-by-policy by shop\/db-from-shop rule 1\)/, 'the second rule (namespace shop, port 5432) decided');

  r = await nodemesh(['explain', '--from', 'jobs/batch', '--to', 'shop/db:5432'], env);
  t.match(r.stdout, /verdict: DENIED \(not-allowed\)\n {4}ALLOW policies that did not match: shop\/db-from-shop/, 'ALLOW by namespace admits only that namespace');

  r = await nodemesh(['explain', '--from', 'web', '--to', 'db:9999', '-n', 'shop'], env);
  t.match(r.stdout, /service shop\/db port 9999/);
  t.match(r.stdout, /verdict: DENIED \(explicit-deny by shop\/no-web-admin rule 0\)/, 'DENY on the principal, before any ALLOW');
  r = await nodemesh(['explain', '--from', 'db', '--to', 'web:8080', '-n', 'shop'], env);
  t.match(r.stdout, /to    workload shop\/web port 8080\n[\s\S]*policies selecting it: none\n {4}verdict: ALLOWED \(no-allow-policy\)/, 'a workload and port as the destination');

  r = await nodemesh(['explain', '--from', 'spiffe://cluster.local/ns/ops/sa/anyone', '--to', 'shop/db', '-o', 'json'], env);
  t.match(JSON.parse(r.stdout), { results: [{ workload: 'shop/db', decision: { allowed: true, reason: 'allowed-by-policy', policy: 'shop/db-from-shop' }, rule: 0 }] }, 'a SPIFFE ID as the source');

  r = await nodemesh(['explain', '--from', 'nobody', '--to', 'db', '-n', 'shop'], env);
  t.equal(r.code, 64);
  t.match(r.stderr, /no workload shop\/nobody \(see nodemesh get workloads -A\), and it is not a SPIFFE ID/);
  r = await nodemesh(['explain', '--from', 'web', '--to', 'nothing', '-n', 'shop'], env);
  t.match(r.stderr, /no service or workload shop\/nothing/);
  r = await nodemesh(['explain', '--from', 'web', '--to', 'db:1234', '-n', 'shop'], env);
  t.match(r.stderr, /service shop\/db has no port 1234 \(ports: 5432, 9999\)/);
});
