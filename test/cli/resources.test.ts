/** nodemesh apply/get/delete/status/controller token against a real controller, as a user runs them. */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t } from 'tap';

import { PACKAGE_ROOT } from '../../src/paths';
import { tempDir, testController } from '../helpers/controller';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');

function nodemesh(args: string[], env: NodeJS.ProcessEnv, stdin?: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdin.end(stdin ?? '');
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

const GOOD = `apiVersion: nodemesh.io/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {node: n1, serviceAccount: web, addresses: [198.18.1.1]}
---
apiVersion: nodemesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  addresses: [198.19.0.10]
  ports: [{port: 80, appProtocol: http}]
`;
const POLICIES = `apiVersion: nodemesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{from: [{source: {namespaces: [shop]}}]}]
---
apiVersion: nodemesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-db, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {ports: ["5432", 6379]}}]
`;

t.test('apply, get, delete, status from the command line', async (t) => {
  const c = await testController(t);
  const env = { NODEMESH_CREDENTIALS: c.controller.credentialsPath };
  const dir = tempDir(t, 'nodemesh-manifests-');
  fs.writeFileSync(path.join(dir, 'app.yaml'), GOOD);

  let r = await nodemesh(['apply', '-f', path.join(dir, 'app.yaml')], env);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'workload.nodemesh.io/web-1 created\nservice.nodemesh.io/web created\n');
  r = await nodemesh(['apply', '-f', dir], env);
  t.equal(r.stdout, 'workload.nodemesh.io/web-1 unchanged\nservice.nodemesh.io/web unchanged\n', 'a directory applies its files');
  r = await nodemesh(['apply', '-f', '-'], env, GOOD.replace('app: web}}', 'app: web, tier: front}}'));
  t.equal(r.stdout, 'workload.nodemesh.io/web-1 configured\nservice.nodemesh.io/web unchanged\n', 'stdin');

  // A file with one invalid document applies nothing, and names the document and path.
  fs.writeFileSync(path.join(dir, 'policies.yaml'), POLICIES);
  r = await nodemesh(['apply', '-f', path.join(dir, 'policies.yaml')], env);
  t.equal(r.code, 1);
  t.equal(r.stderr, 'error: policies.yaml doc 2 (AuthorizationPolicy default/deny-db): spec.rules[0].to[0].operation.ports[1]: must be string\n');
  r = await nodemesh(['get', 'authorizationpolicies', '-A'], env);
  t.equal(r.code, 0);
  t.match(r.stderr, /no authorizationpolicies found/, 'the valid first document was not applied either');

  fs.writeFileSync(path.join(dir, 'policies.yaml'), POLICIES.replace('6379]', '"6379"]'));
  r = await nodemesh(['apply', '-f', path.join(dir, 'policies.yaml')], env);
  t.equal(r.stdout, 'authorizationpolicy.nodemesh.io/allow-web created\nauthorizationpolicy.nodemesh.io/deny-db created\n');

  r = await nodemesh(['get', 'ap', '-A'], env);
  t.match(r.stdout, /^NAMESPACE +NAME +ACTION +RULES +SELECTOR +AGE\ndefault +deny-db +DENY +1 +\(namespace\) +\d+s\nshop +allow-web +ALLOW +1 +app=web +\d+s\n$/);
  r = await nodemesh(['get', 'svc', 'web', '-n', 'shop', '-o', 'json'], env);
  t.match(JSON.parse(r.stdout), { kind: 'Service', metadata: { name: 'web', resourceVersion: '1' }, spec: { addresses: ['198.19.0.10'] } });
  r = await nodemesh(['get', 'workloads', '-n', 'shop', '-l', 'tier=front', '-o', 'yaml'], env);
  t.match(r.stdout, /^apiVersion: nodemesh.io\/v1alpha1\nkind: Workload\nmetadata:\n  name: web-1\n/);
  r = await nodemesh(['get', 'svc', 'nope', '-n', 'shop'], env);
  t.equal(r.code, 1);
  t.match(r.stderr, /service shop\/nope not found/);
  r = await nodemesh(['get', 'gizmos'], env);
  t.equal(r.code, 64);
  t.match(r.stderr, /unknown kind "gizmos"/);

  r = await nodemesh(['delete', '-f', path.join(dir, 'policies.yaml')], env);
  t.equal(r.stdout, 'authorizationpolicy.nodemesh.io/allow-web deleted\nauthorizationpolicy.nodemesh.io/deny-db deleted\n');
  r = await nodemesh(['delete', 'service', 'web', '-n', 'shop'], env);
  t.equal(r.stdout, 'service.nodemesh.io/web deleted\n');

  r = await nodemesh(['controller', 'token', 'create', '--node', 'n1', '--ttl', '1h'], env);
  t.equal(r.code, 0);
  t.match(r.stdout, /^[0-9a-f]{8}\.[0-9a-f]{32}\n$/);
  t.match(r.stderr, /token for node n1, 1 join, valid until .* --token-file FILE/);

  r = await nodemesh(['status'], env);
  t.equal(r.code, 0);
  t.match(r.stdout, /controller 127\.0\.0\.1:\d+: 0 of 0 nodes connected/);
});

t.test('exit codes: 2 when the controller cannot be reached, 1 for bad credentials', async (t) => {
  const c = await testController(t);
  const env = { NODEMESH_CREDENTIALS: c.controller.credentialsPath };
  let r = await nodemesh(['get', 'svc', '--controller', '127.0.0.1:1'], env);
  t.equal(r.code, 2);
  t.match(r.stderr, /cannot reach the controller at 127\.0\.0\.1:1/);
  r = await nodemesh(['get', 'svc'], { NODEMESH_CREDENTIALS: '/nonexistent/admin.json' });
  t.equal(r.code, 1);
  t.match(r.stderr, /no credentials at \/nonexistent\/admin\.json: the controller writes admin\.json into its --data-dir/);
  r = await nodemesh(['apply'], env);
  t.equal(r.code, 64);
  t.match(r.stderr, /-f FILE\|DIR\|- is required/);
  r = await nodemesh(['apply', '-f', '/nonexistent.yaml'], env);
  t.equal(r.code, 64);
  t.match(r.stderr, /no such file or directory/);
});
