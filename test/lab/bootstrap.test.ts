/**
 * Bootstrap and revocation in a real 2-node lab (proxies, BPF redirect, mTLS
 * tunnels), with 10-second node certificates: no token in `ps`, the lab's
 * used token cannot join again, each proxy's controller connection moves to
 * its renewed certificate, and after `nodemesh node revoke` of n1 its stream
 * ends and tunnels from and to it are refused while n2's own traffic flows.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t } from 'tap';

import { main } from '../../src/cli/main';
import { spiffeNodeId, spiffeWorkloadId } from '../../src/controller/ca';
import { ClientError, ControllerClient } from '../../src/controller/client';
import type { LabState } from '../../src/lab';
import { adminGet, adminSocketOf } from '../../src/node-proxy/admin';
import { generateKeyAndCsr } from '../../src/node-proxy/identity';
import { bpfTest } from '../helpers/bpf';
import { doc } from '../helpers/controller';
import { fixture } from '../helpers/child';
import { labProcess, labRun, testLab } from '../helpers/lab';
import { waitFor } from '../helpers/wait';

async function whoami(lab: LabState, pod: string, ip: string): Promise<string> {
  const r = await labRun(lab, pod, [process.execPath, fixture('mesh-client.js'), 'whoami', ip, '8081', '1']);
  if (r.code !== 0 || !r.stdout.trim()) throw new Error(`mesh-client in ${pod}: ${r.code} ${r.stderr}`);
  return (JSON.parse(r.stdout) as { answers: string[] }).answers[0]!;
}

bpfTest(t, 'bootstrap tokens and node revocation in a lab', async (t) => {
  const lab = await testLab(t, 2, 2, true, undefined, 10);
  const [n1, n2] = lab.nodes as [LabState['nodes'][number], LabState['nodes'][number]];
  const mesh = lab.mesh!;
  const admin = ControllerClient.fromCredentials(mesh.controller.credentials);
  t.teardown(() => admin.close());
  const pod = (name: string) => lab.pods.find((p) => p.name === name)!;
  const runtimeDir = path.dirname(mesh.proxies[0]!.stateDir);

  await t.test('no token in ps; the lab token, once used, joins no more', async (t) => {
    const ps = spawnSync('ps', ['-eo', 'pid,args', '--no-headers'], { encoding: 'utf8' }).stdout;
    const lines = ps.split('\n').filter((l) => l.includes(' proxy --node ') && l.includes(runtimeDir));
    t.equal(lines.length, 2, 'both proxies of this lab are in ps');
    t.notMatch(lines.join('\n'), /[0-9a-f]{8}\.[0-9a-f]{32}/, 'no argv of a proxy holds anything shaped like a token');
    for (const node of [n1, n2]) {
      const token = fs.readFileSync(path.join(runtimeDir, `token-${node.name}`), 'utf8').trim();
      t.match(token, /^[0-9a-f]{8}\.[0-9a-f]{32}$/);
      t.notOk(ps.includes(token) || ps.includes(token.split('.')[1]!), `the token of ${node.name} is in no process's argv`);
      t.equal((fs.statSync(path.join(runtimeDir, `token-${node.name}`)).mode & 0o077), 0, 'its file is readable by its owner only');
      const anon = new ControllerClient({ address: mesh.controller.address, ca: fs.readFileSync(mesh.controller.caFile, 'utf8') });
      const { csrPem } = await generateKeyAndCsr(spiffeNodeId('cluster.local', node.name));
      const err = await anon.join(token, node.name, csrPem).then(
        () => undefined,
        (e: unknown) => e,
      );
      anon.close();
      t.ok(err instanceof ClientError, `the used token of ${node.name} does not join again`);
      t.match(err, { code: 'NM_ERR_GRPC_UNAUTHENTICATED', message: /was already used \(1 of 1 join\)/ });
    }
    t.ok(lines.every((l) => l.includes('--token-file')), 'the proxies got their token in a file');
  });

  await t.test('each proxy moves its controller connection to its renewed certificate', async (t) => {
    const first = await admin.listNodes();
    const firstSerial = new Map(first.map((n) => [n.node, n.certificateSerial]));
    const firstExpiry = Math.max(...first.map((n) => n.certificateExpiresUnixMs));
    t.ok(
      await waitFor(async () => {
        const now = await admin.listNodes();
        return now.length === 2 && now.every((n) => n.connected && n.certificateSerial !== firstSerial.get(n.node) && n.streamCertificateSerial === n.certificateSerial);
      }, 20_000, 200),
      'every config stream presents the newest node certificate',
    );
    await new Promise((r) => setTimeout(r, Math.max(0, firstExpiry - Date.now()) + 1_000));
    const status = JSON.parse(await adminGet(adminSocketOf(n1.name), '/status')) as { controller: { connected: boolean }; identity: { renewals: number } };
    t.ok(status.controller.connected, 'n1 is still connected after its first certificate expired');
    t.ok(status.identity.renewals >= 1, 'n1 renewed its node certificate');
    t.ok((await admin.listNodes()).every((n) => n.connected));
    // A certificate for a new workload needs a call the controller accepts now, after the first node certificate expired.
    await admin.apply([doc({ apiVersion: 'nodemesh.io/v1alpha1', kind: 'Workload', metadata: { name: 'late', namespace: 'default' }, spec: { node: n1.name, serviceAccount: 'late', addresses: ['198.18.250.1'] } })]);
    const late = spiffeWorkloadId('cluster.local', 'default', 'late');
    let certs: { identity: string; notAfter?: string; lastError?: string }[] = [];
    const got = await waitFor(async () => {
      certs = (JSON.parse(await adminGet(adminSocketOf(n1.name), '/status')) as { workloadCertificates: typeof certs }).workloadCertificates;
      return certs.some((c) => c.identity === late && c.notAfter);
    }, 10_000, 200);
    t.ok(got, `n1 got a workload certificate after its first node certificate expired (${JSON.stringify(certs.find((c) => c.identity === late))})`);
  });

  await t.test('revoking n1: its stream ends, tunnels from and to it are refused, n2 flows on', async (t) => {
    for (const p of ['n1-p1', 'n2-p1']) await labProcess(t, lab, p, [process.execPath, fixture('mesh-server.js'), p], /serving/);
    t.equal(await whoami(lab, 'n1-p2', pod('n2-p1').ip), 'n2-p1', 'before: n1 -> n2 through the tunnel');
    t.equal(await whoami(lab, 'n2-p2', pod('n1-p1').ip), 'n1-p1', 'before: n2 -> n1 through the tunnel');

    const out: string[] = [];
    t.equal(await main(['node', 'revoke', n1.name, '--credentials', mesh.controller.credentials], { out: (s) => void out.push(s), err: (s) => void out.push(s) }), 0);
    t.match(out.join(''), new RegExp(`node ${n1.name} revoked: \\d+ certificates on the revocation list`));

    t.ok(await waitFor(async () => (await admin.listNodes()).some((n) => n.node === n1.name && n.revoked && !n.connected), 10_000), 'n1 is revoked and its stream is gone');
    t.ok(
      await waitFor(async () => fs.readFileSync(mesh.proxies.find((p) => p.node === n1.name)!.log, 'utf8').includes('PERMISSION_DENIED') || /was revoked/.test(fs.readFileSync(mesh.proxies.find((p) => p.node === n1.name)!.log, 'utf8')), 10_000),
      "n1's proxy was told it was revoked",
    );
    t.ok(
      await waitFor(async () => {
        const dump = JSON.parse(await adminGet(adminSocketOf(n2.name), '/config_dump')) as { items: Record<string, { serials?: string[] }> };
        return (dump.items['RevocationList//revoked']?.serials?.length ?? 0) >= 2;
      }, 10_000),
      'n2 holds the revocation list',
    );

    t.not(await whoami(lab, 'n1-p2', pod('n2-p1').ip), 'n2-p1', 'a tunnel from the revoked node to n2 is refused');
    // Either n2 refuses the revoked client certificate, or n1 no longer presents it: when the revocation list reached n1
    // before its stream was cut, n1 drops its revoked workload certificates and, refused a new one, opens no tunnel.
    const logOf = (node: string): string => fs.readFileSync(mesh.proxies.find((p) => p.node === node)!.log, 'utf8');
    t.ok(
      await waitFor(() => logOf(n2.name).includes('is on the revocation list') || logOf(n1.name).includes('workload certificate revoked by the controller'), 5_000),
      'n2 refused the client certificate as revoked, or n1 stopped presenting it',
    );
    t.not(await whoami(lab, 'n2-p2', pod('n1-p1').ip), 'n1-p1', 'n2 does not tunnel to the revoked node');
    t.equal(await whoami(lab, 'n2-p2', pod('n2-p1').ip), 'n2-p1', "n2's own traffic keeps flowing");
  });
});
