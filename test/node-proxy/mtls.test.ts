/**
 * Mutual TLS between node proxies, in a lab with 10-second workload
 * certificates: what crosses the node link is TLS, the tunnel port refuses
 * peers without a good certificate (checked with openssl s_client), the
 * destination decides, and certificates rotate under a long-lived stream.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { t } from 'tap';

import { CertificateAuthority, spiffeWorkloadId } from '../../src/controller/ca';
import { ControllerClient } from '../../src/controller/client';
import { podWorkload, type LabState } from '../../src/lab';
import { adminGet, adminSocketOf } from '../../src/node-proxy/admin';
import { generateKeyAndCsr } from '../../src/node-proxy/identity';
import { HbonePool, identityToSni } from '../../src/node-proxy/tunnel';
import { bpfTest } from '../helpers/bpf';
import { fixture } from '../helpers/child';
import { doc } from '../helpers/controller';
import { labProcess, labRun, testLab } from '../helpers/lab';
import { waitFor } from '../helpers/wait';

const A = 'nodemesh.io/v1alpha1';

async function client(lab: LabState, pod: string, args: (string | number)[]): Promise<Record<string, unknown>> {
  const r = await labRun(lab, pod, [process.execPath, fixture('mesh-client.js'), ...args.map(String)]);
  if (r.code !== 0 || !r.stdout.trim()) throw new Error(`mesh-client ${args.join(' ')} in ${pod}: ${r.code} ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

/**
 * openssl s_client that waits for the server to close (-ign_eof). A refused
 * peer is closed within moments (TLS 1.3 checks the client certificate right
 * after the client's Finished); an accepted one is still connected when we
 * stop waiting after 3 s.
 */
function sClient(args: string[]): { closedByServer: boolean; out: string } {
  const r = spawnSync('openssl', ['s_client', '-brief', '-tls1_3', '-alpn', 'h2', '-ign_eof', ...args], { input: '', encoding: 'utf8', timeout: 3_000 });
  return { closedByServer: r.signal === null, out: `${r.stdout}\n${r.stderr}` };
}

bpfTest(t, 'mutual TLS between nodes', async (t) => {
  const lab = await testLab(t, 2, 2, true, 10);
  const [n1, n2] = lab.nodes;
  const n1p1 = lab.pods.find((p) => p.name === 'n1-p1')!;
  const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials);
  t.teardown(() => admin.close());
  await labProcess(t, lab, 'n1-p1', [process.execPath, fixture('mesh-server.js'), 'n1-p1'], /serving/);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-mtls-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const ca = lab.mesh!.controller.caFile;
  const n1p1Id = spiffeWorkloadId('cluster.local', 'default', 'n1-p1');
  // The proxy of n1 holds n1-p1's certificate once its config is in.
  t.ok(await waitFor(async () => ((JSON.parse(await adminGet(adminSocketOf(n1!.name), '/status')) as { workloadCertificates: { identity: string; notAfter?: string }[] }).workloadCertificates.some((c) => c.identity === n1p1Id && c.notAfter)), 10_000));

  await t.test('what crosses the node link is TLS', async (t) => {
    const pcap = path.join(dir, 'link.pcap');
    const dump = spawn('tcpdump', ['-i', lab.bridge, '-U', '-s', '0', '-w', pcap, 'tcp'], { stdio: 'ignore' });
    t.teardown(() => dump.kill('SIGKILL'));
    await new Promise((r) => setTimeout(r, 1000));
    const r = await client(lab, 'n2-p2', ['echo', n1p1.ip, 8080, 256 * 1024]);
    t.same(r, { sent: 262144, received: 262144, same: true }, 'the bytes arrived');
    const marker = await labRun(lab, 'n2-p2', [process.execPath, '-e', `const s=require('net').connect(8080,'${n1p1.ip}');s.on('connect',()=>s.end('NODEMESH-PLAINTEXT-MARKER-'.repeat(64)));s.on('data',()=>{});`]);
    t.equal(marker.code, 0);
    await new Promise((r) => setTimeout(r, 500));
    dump.kill('SIGINT');
    await new Promise((r) => dump.once('exit', r));
    const bytes = fs.readFileSync(pcap);
    t.ok(bytes.length > 256 * 1024, `captured ${bytes.length} bytes on ${lab.bridge}`);
    t.notOk(bytes.includes(Buffer.from('NODEMESH-PLAINTEXT-MARKER-')), 'no plaintext payload on the wire');
    const ports = spawnSync('tcpdump', ['-nn', '-r', pcap], { encoding: 'utf8' }).stdout;
    t.match(ports, new RegExp(`${n1!.ip.replace(/\./g, '\\.')}\\.15008`), 'the traffic went to the tunnel port');
    t.notMatch(ports, new RegExp(`${n1p1.ip.replace(/\./g, '\\.')}\\.8080`), 'never to the pod in the clear');
    const m = await labRun(lab, 'n1', [process.execPath, '-e', "fetch('http://127.0.0.1:15020/metrics').then(r=>r.text()).then(t=>process.stdout.write(t))"]);
    t.match(
      m.stdout,
      /nodemesh_tcp_connections_opened_total\{reporter="destination",[^}]*source_principal="spiffe:\/\/cluster\.local\/ns\/default\/sa\/n2-p2"[^}]*destination_workload="n1-p1"[^}]*connection_security_policy="mutual_tls"\} [1-9]/,
      'the destination reports it too, as mutual_tls with the peer identity',
    );
  });

  await t.test('the tunnel port refuses peers without a good certificate (openssl s_client)', async (t) => {
    const target = [`-connect`, `${n1!.ip}:15008`, '-servername', identityToSni(n1p1Id), '-CAfile', ca];
    const none = sClient(target);
    t.ok(none.closedByServer, 'no client certificate: the server closes the connection');
    t.match(none.out, /alert|certificate required|unexpected eof/i, 'with a TLS alert or a bare close');

    const other = await CertificateAuthority.loadOrCreate(path.join(dir, 'other-ca'), { trustDomain: 'cluster.local' });
    const fake = await generateKeyAndCsr(spiffeWorkloadId('cluster.local', 'default', 'n2-p2'));
    const forged = await other.signCsr(fake.csrPem, { kind: 'workload', lifetimeSeconds: 3600, allowedUris: () => null });
    fs.writeFileSync(path.join(dir, 'forged.crt'), forged.chainPem);
    fs.writeFileSync(path.join(dir, 'forged.key'), fake.keyPem);
    const wrongCa = sClient([...target, '-cert', path.join(dir, 'forged.crt'), '-key', path.join(dir, 'forged.key')]);
    t.ok(wrongCa.closedByServer, 'a certificate from another CA: refused');

    const real = await CertificateAuthority.loadOrCreate(path.join(path.dirname(ca)), { trustDomain: 'cluster.local' });
    const expiredKey = await generateKeyAndCsr(spiffeWorkloadId('cluster.local', 'default', 'n2-p2'));
    const expired = await real.signCsr(expiredKey.csrPem, { kind: 'workload', lifetimeSeconds: 1, allowedUris: () => null });
    await new Promise((r) => setTimeout(r, 1500));
    fs.writeFileSync(path.join(dir, 'expired.crt'), expired.chainPem);
    fs.writeFileSync(path.join(dir, 'expired.key'), expiredKey.keyPem);
    const old = sClient([...target, '-cert', path.join(dir, 'expired.crt'), '-key', path.join(dir, 'expired.key')]);
    t.ok(old.closedByServer, 'an expired certificate: refused');

    // The same, with a good certificate of that identity: the tunnel port answers.
    const good = await real.signCsr(fake.csrPem, { kind: 'workload', lifetimeSeconds: 3600, allowedUris: () => null });
    fs.writeFileSync(path.join(dir, 'good.crt'), good.chainPem);
    const ok = sClient([...target, '-cert', path.join(dir, 'good.crt'), '-key', path.join(dir, 'forged.key')]);
    t.match(ok.out, /Verification: OK/, 'the client checked the server against the CA');
    t.notOk(ok.closedByServer, 'a valid certificate stays connected (so the refusals above are about the certificate)');

    // A valid certificate, asking this node for a pod on the other node: the CONNECT is refused.
    const pool = new HbonePool();
    t.teardown(() => pool.close());
    const n2p1 = lab.pods.find((p) => p.name === 'n2-p1')!;
    const err = await pool
      .connect({
        sourceIdentity: spiffeWorkloadId('cluster.local', 'default', 'n2-p2'),
        credentials: { certPem: good.chainPem, keyPem: fake.keyPem },
        trustBundle: fs.readFileSync(ca, 'utf8'),
        node: { address: n1!.ip, port: 15008 },
        destinationIdentity: n1p1Id,
        target: { host: n2p1.ip, port: 8081 },
      })
      .then(
        () => undefined,
        (e: unknown) => e as { status?: number; reason?: string },
      );
    t.match(err, { status: 404, reason: /not-on-this-node/ }, 'a pod on another node: 404');
  });

  await t.test('ALLOW by namespace admits only that namespace', async (t) => {
    const allow = (ns: string) =>
      doc({ apiVersion: A, kind: 'AuthorizationPolicy', metadata: { name: 'n1-p1-from-ns', namespace: 'default' }, spec: { selector: { matchLabels: { pod: 'n1-p1' } }, action: 'ALLOW', rules: [{ from: [{ source: { namespaces: [ns] } }] }] } });
    let r = await admin.apply([allow('ops')]);
    t.ok(await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n1!.name)!.ackedVersion >= r.version, 5000));
    t.same((await client(lab, 'n2-p2', ['whoami', n1p1.ip, 8081, 1])).answers, ['ECONNRESET'], 'namespace default is not ops: refused across nodes');
    r = await admin.apply([allow('default')]);
    t.ok(await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n1!.name)!.ackedVersion >= r.version, 5000));
    t.same((await client(lab, 'n2-p2', ['whoami', n1p1.ip, 8081, 1])).answers, ['n1-p1'], 'namespace default admitted');
    await admin.delete([{ kind: 'AuthorizationPolicy', namespace: 'default', name: 'n1-p1-from-ns' }]);
  });

  await t.test('STRICT: plaintext that bypasses the proxies is dropped in the kernel, counted and shown', async (t) => {
    // Node n2 itself (no pod, no proxy) dials n1-p1 straight: plaintext from another node.
    const direct = async (): Promise<string> =>
      (
        await labRun(lab, 'n2', [
          process.execPath,
          '-e',
          `const s=require('net').connect(8081,'${n1p1.ip}');let a='';s.setTimeout(1500,()=>{console.log('ETIMEDOUT');process.exit(0)});s.on('data',d=>a+=d).on('end',()=>console.log(a.trim())).on('error',e=>console.log(e.code))`,
        ])
      ).stdout.trim();
    const mode = async (m: 'STRICT' | 'PERMISSIVE'): Promise<void> => {
      const r = await admin.apply([doc({ apiVersion: A, kind: 'PeerAuthentication', metadata: { name: 'n1-p1', namespace: 'default' }, spec: { selector: { matchLabels: { pod: 'n1-p1' } }, mtls: { mode: m } } })]);
      t.ok(await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n1!.name)!.ackedVersion >= r.version, 5000), `${m} is in place`);
    };
    t.equal(await direct(), 'n1-p1', 'by default (PERMISSIVE) plaintext gets in');
    await mode('STRICT');
    const counters = async (): Promise<Record<string, string>> => (JSON.parse(await adminGet(adminSocketOf(n1!.name), '/status')) as { datapath: { counters: Record<string, string> } }).datapath.counters;
    const before = Number((await counters()).strict_drop);
    t.equal(await direct(), 'ETIMEDOUT', 'STRICT: the SYN is dropped, the connect never completes');
    t.ok(Number((await counters()).strict_drop) > before, 'counted in the kernel');
    t.same((await client(lab, 'n2-p2', ['whoami', n1p1.ip, 8081, 1])).answers, ['n1-p1'], 'through the tunnel it still works');
    t.same((await client(lab, 'n1-p2', ['whoami', n1p1.ip, 8081, 1])).answers, ['n1-p1'], 'from the same node through the proxy too');
    const dropped = JSON.parse(await adminGet(adminSocketOf(n1!.name), '/flows?verdict=dropped')) as { destination: { workload?: string; address: string }; source: { ip: string }; reason: string }[];
    t.match(dropped.at(-1), { destination: { workload: 'n1-p1', address: `${n1p1.ip}:8081` }, source: { ip: n2!.ip }, reason: 'strict-plaintext' }, 'nodemesh flows shows it as dropped');

    // A pod outside the mesh: n2-p2 without its Workload is no longer enrolled, so it dials in the clear.
    const n2p2 = lab.pods.find((p) => p.name === 'n2-p2')!;
    const gone = await admin.delete([{ kind: 'Workload', namespace: 'default', name: 'n2-p2' }]);
    t.ok(await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n2!.name)!.ackedVersion >= gone.version, 5000));
    const outside = await labRun(lab, 'n2-p2', [process.execPath, '-e', `const s=require('net').connect(8081,'${n1p1.ip}');s.setTimeout(1500,()=>{console.log('ETIMEDOUT');process.exit(0)});s.on('data',d=>console.log(String(d).trim())).on('error',e=>console.log(e.code))`]);
    t.equal(outside.stdout.trim(), 'ETIMEDOUT', 'a pod outside the mesh is dropped too');
    t.match((JSON.parse(await adminGet(adminSocketOf(n1!.name), '/flows?verdict=dropped')) as { source: { ip: string } }[]).at(-1), { source: { ip: n2p2.ip } });
    const back = await admin.apply([doc(podWorkload(lab, n2p2))]);
    t.ok(await waitFor(async () => (await admin.listNodes()).every((n) => n.ackedVersion >= back.version), 5000), 'n2-p2 is back in the mesh');
    await mode('PERMISSIVE');
    t.equal(await direct(), 'n1-p1', 'PERMISSIVE again: plaintext gets in (the mode changes live)');
    await admin.delete([{ kind: 'PeerAuthentication', namespace: 'default', name: 'n1-p1' }]);
  });

  await t.test('certificates rotate while a long-lived stream keeps flowing', async (t) => {
    const status = async (node: string) => JSON.parse(await adminGet(adminSocketOf(node), '/status')) as { workloadCertificates: { identity: string; renewals: number }[] };
    const before = (await status(n2!.name)).workloadCertificates.find((c) => c.identity.endsWith('/sa/n2-p2'))!.renewals;
    const held = await client(lab, 'n2-p2', ['hold', n1p1.ip, 8080, 12_000]);
    t.same(held.failed, null, 'the stream never broke');
    t.ok((held.roundTrips as number) > 60, `${String(held.roundTrips)} round trips over 12 s (slowest ${String(held.slowestMs)} ms)`);
    const after = (await status(n2!.name)).workloadCertificates.find((c) => c.identity.endsWith('/sa/n2-p2'))!.renewals;
    t.ok(after >= before + 2, `n2-p2's certificate was renewed ${after - before} times meanwhile (10 s lifetime)`);
    t.same((await client(lab, 'n2-p2', ['whoami', n1p1.ip, 8081, 1])).answers, ['n1-p1'], 'new tunnels use the new certificate');
    const cli = spawnSync(process.execPath, [path.join(__dirname, '..', '..', '..', 'bin', 'nodemesh.js'), 'status', '--node', n2!.name], { encoding: 'utf8' });
    t.match(cli.stdout, /certificate spiffe:\/\/cluster\.local\/ns\/default\/sa\/n2-p2 +valid until \S+, renewed \d+×/, 'nodemesh status lists identities and expiry');
  });
});
