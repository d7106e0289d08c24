/**
 * The client's address across nodes: the destination's proxy evaluates
 * ipBlocks with the pod's own address (IPv4 and IPv6), carried on the
 * tunnel's CONNECT, and its flows show it.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t, type Test } from 'tap';

import { ControllerClient } from '../../src/controller/client';
import type { LabState } from '../../src/lab';
import { adminGet, adminSocketOf } from '../../src/node-proxy/admin';
import { bpfTest } from '../helpers/bpf';
import { fixture } from '../helpers/child';
import { doc } from '../helpers/controller';
import { labProcess, labRun, testLab } from '../helpers/lab';
import { waitFor } from '../helpers/wait';

const A = 'nodemesh.io/v1alpha1';

async function whoami(lab: LabState, pod: string, host: string): Promise<string> {
  const r = await labRun(lab, pod, [process.execPath, fixture('mesh-client.js'), 'whoami', host, '8081', '1']);
  if (r.code !== 0 || !r.stdout.trim()) throw new Error(`mesh-client whoami ${host} in ${pod}: ${r.code} ${r.stderr}`);
  return (JSON.parse(r.stdout) as { answers: string[] }).answers[0]!;
}

interface FlowRow {
  verdict: string;
  reason: string;
  policy?: string;
  source: { ip: string; identity?: string };
  destination: { workload?: string };
}

bpfTest(t, 'ipBlocks across nodes see the client pod', async (t) => {
  const lab = await testLab(t, 2, 2, true);
  const [n1] = lab.nodes;
  const pod = (name: string) => lab.pods.find((p) => p.name === name)!;
  const [server, inside, outside] = [pod('n1-p1'), pod('n2-p2'), pod('n2-p1')];
  const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials);
  t.teardown(() => admin.close());
  await labProcess(t, lab, 'n1-p1', [process.execPath, fixture('mesh-server.js'), 'n1-p1'], /serving/);
  t.ok(await waitFor(async () => (await whoami(lab, inside.name, server.ip)) === 'n1-p1', 10_000), 'the mesh carries n2-p2 to n1-p1');

  const apply = async (t: Test, action: 'ALLOW' | 'DENY', blocks: string[]): Promise<void> => {
    const r = await admin.apply([
      doc({ apiVersion: A, kind: 'AuthorizationPolicy', metadata: { name: 'by-ip', namespace: 'default' }, spec: { selector: { matchLabels: { pod: 'n1-p1' } }, action, rules: [{ from: [{ source: { ipBlocks: blocks } }] }] } }),
    ]);
    // The destination's proxy decides; only its node is sent a policy selecting its pod.
    t.ok(await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n1!.name)!.ackedVersion >= r.version, 5000), `${action} ipBlocks ${blocks.join(',')} is in place on n1`);
  };
  const flows = async (): Promise<FlowRow[]> => (JSON.parse(await adminGet(adminSocketOf(n1!.name), '/flows')) as FlowRow[]).filter((f) => f.destination.workload === 'n1-p1');
  const lastFrom = async (identity: string): Promise<FlowRow | undefined> => (await flows()).filter((f) => f.source.identity?.endsWith(`/sa/${identity}`)).at(-1);

  await t.test('ALLOW by ipBlocks admits the pod in the block and refuses the one outside (IPv4)', async (t) => {
    await apply(t, 'ALLOW', [`${inside.ip}/32`]);
    t.equal(await whoami(lab, inside.name, server.ip), 'n1-p1', `${inside.ip} is in the block: admitted across nodes`);
    t.match(await lastFrom(inside.name), { verdict: 'allowed', source: { ip: inside.ip } }, "n1's flow shows the client's address");
    t.equal(await whoami(lab, outside.name, server.ip), 'ECONNRESET', `${outside.ip} is outside it: refused`);
    t.match(await lastFrom(outside.name), { verdict: 'denied', reason: 'not-allowed', source: { ip: outside.ip } });
    const cli = spawnSync(process.execPath, [path.join(__dirname, '..', '..', '..', 'bin', 'nodemesh.js'), 'flows', '--node', n1!.name, '--to', 'n1-p1'], { encoding: 'utf8' });
    t.match(cli.stdout, new RegExp(`/sa/${inside.name} \\(${inside.ip.replace(/\./g, '\\.')}\\) -> .*ALLOWED`), 'nodemesh flows on the destination names the client address');
    const log = fs.readFileSync(lab.mesh!.proxies.find((p) => p.node === n1!.name)!.log, 'utf8');
    t.match(log, new RegExp(`"access":true.*"srcAddr":"${inside.ip.replace(/\./g, '\\.')}:0".*"verdict":"allowed"`), "and so does its access log");
  });

  await t.test('DENY by ipBlocks refuses the pod in the block and admits the others (IPv4)', async (t) => {
    await apply(t, 'DENY', [`${inside.ip}/32`]);
    t.equal(await whoami(lab, inside.name, server.ip), 'ECONNRESET', `${inside.ip} is in the block: refused across nodes`);
    t.match(await lastFrom(inside.name), { verdict: 'denied', reason: 'explicit-deny', policy: 'default/by-ip', source: { ip: inside.ip } });
    t.equal(await whoami(lab, outside.name, server.ip), 'n1-p1', `${outside.ip} is outside it: admitted`);
    t.match(await lastFrom(outside.name), { verdict: 'allowed', source: { ip: outside.ip } });
  });

  await t.test('IPv6: the pod is seen by the address it used', async (t) => {
    await apply(t, 'ALLOW', [`${inside.ip6}/128`]);
    t.equal(await whoami(lab, inside.name, server.ip6), 'n1-p1', `${inside.ip6} is in the block: admitted across nodes`);
    t.match(await lastFrom(inside.name), { verdict: 'allowed', source: { ip: inside.ip6 } });
    t.equal(await whoami(lab, inside.name, server.ip), 'ECONNRESET', 'the same pod over IPv4 is not in an IPv6 block');
    t.equal(await whoami(lab, outside.name, server.ip6), 'ECONNRESET', `${outside.ip6} is outside it: refused`);
    await apply(t, 'DENY', [`${inside.ip6}/128`]);
    t.equal(await whoami(lab, inside.name, server.ip6), 'ECONNRESET', 'DENY by its IPv6 address: refused');
    t.equal(await whoami(lab, inside.name, server.ip), 'n1-p1', 'over IPv4 it is admitted');
  });
  await admin.delete([{ kind: 'AuthorizationPolicy', namespace: 'default', name: 'by-ip' }]);
});
