/**
 * What a pod or a peer with a valid certificate can make a node proxy do, in
 * a lab (2 nodes, 3 pods each), all traffic sent from inside the lab:
 * - the tunnel port (15008) dials only workloads of its own node: with a valid
 *   workload certificate, a CONNECT for the controller, loopback, unspecified
 *   or the node's own addresses, the proxy's ports, a host name or a pod on
 *   another node is a 404, and nothing there is ever dialed;
 * - a pod that takes another pod's IPv4 or IPv6 address (a secondary address
 *   plus a gratuitous ARP or Neighbor Advertisement from a raw socket, so the
 *   spoofed connection completes) is still itself to the proxies: its
 *   identity comes from its netns cookie, so an ALLOW for the other pod does
 *   not admit it, on the same node or across nodes, and the flows name the
 *   real pod;
 * - a peer node speaks only for its own pods: the client address it claims on
 *   a CONNECT (Forwarded: for=) is refused unless it is the address of a
 *   workload with the certificate's identity on the node the tunnel comes
 *   from, and a missing or malformed one is refused too.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { t } from 'tap';

import { CertificateAuthority, spiffeWorkloadId } from '../../src/controller/ca';
import { ControllerClient } from '../../src/controller/client';
import type { LabState } from '../../src/lab';
import { adminGet, adminSocketOf } from '../../src/node-proxy/admin';
import type { Flow } from '../../src/node-proxy/flows';
import { generateKeyAndCsr } from '../../src/node-proxy/identity';
import { identityToSni } from '../../src/node-proxy/tunnel';
import { bpfTest } from '../helpers/bpf';
import { fixture } from '../helpers/child';
import { doc } from '../helpers/controller';
import { labProcess, labRun, testLab } from '../helpers/lab';
import { waitFor } from '../helpers/wait';

const A = 'nodemesh.io/v1alpha1';
const CANARY_PORT = 18999;

type Pod = LabState['pods'][number];
type Probe = { authority: string; status: number | null; reason: string | null; body: string; error?: string };

async function flows(node: string, q = ''): Promise<Flow[]> {
  return JSON.parse(await adminGet(adminSocketOf(node), `/flows?limit=10000${q}`)) as Flow[];
}

async function whoami(lab: LabState, pod: string, host: string, port: number, from?: string): Promise<string> {
  const bind = from ? `,localAddress:'${from}'` : '';
  const r = await labRun(lab, pod, [
    process.execPath,
    '-e',
    `const s=require('net').connect({host:'${host}',port:${port}${bind}});let a='';s.setTimeout(5000,()=>{console.log('ETIMEDOUT');process.exit(0)});s.on('data',d=>a+=d).on('end',()=>console.log(a.trim()||'EMPTY')).on('error',e=>console.log(e.code||e.message))`,
  ]);
  return r.stdout.trim();
}

/** An address in the form Node.js reports it (IPv6 compressed, lowercase). */
function canonical(ip: string): string {
  return ip.includes(':') ? new URL(`http://[${ip}]/`).hostname.slice(1, -1) : ip;
}

const python = spawnSync('python3', ['-c', 'import socket; socket.AF_PACKET'], { encoding: 'utf8' }).status === 0 ? 'python3' : undefined;

bpfTest(t, 'what a pod or a peer with a valid certificate can make a node proxy do', async (t) => {
  const lab = await testLab(t, 2, 3, true);
  const [n1, n2] = lab.nodes;
  const pod = (name: string) => lab.pods.find((p) => p.name === name)!;
  const [n1p1, n1p2, n1p3, n2p1, n2p2, n2p3] = ['n1-p1', 'n1-p2', 'n1-p3', 'n2-p1', 'n2-p2', 'n2-p3'].map(pod) as [Pod, Pod, Pod, Pod, Pod, Pod];
  const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials);
  t.teardown(() => admin.close());
  await labProcess(t, lab, 'n1-p1', [process.execPath, fixture('mesh-server.js'), 'n1-p1'], /serving/);
  await labProcess(t, lab, 'n2-p1', [process.execPath, fixture('mesh-server.js'), 'n2-p1'], /serving/);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-held-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const n1p1Id = spiffeWorkloadId('cluster.local', 'default', 'n1-p1');
  t.ok(await waitFor(async () => (await whoami(lab, 'n2-p2', n1p1.ip, 8081)) === 'n1-p1', 15_000), 'the mesh is up: n2-p2 reaches n1-p1 through the tunnel');

  await t.test('the tunnel dials only workloads of its own node: everything else is a 404, never dialed', async (t) => {
    // A listener on every address of node n1, on a port nothing in the mesh uses: it must never see a connection.
    const canary = await labProcess(
      t,
      lab,
      n1!.name,
      [process.execPath, '-e', `require('net').createServer(s=>{console.log('accepted '+s.remoteAddress);s.end('canary\\n')}).listen({port:${CANARY_PORT},host:'::',ipv6Only:false},()=>console.log('listening'))`],
      /listening/,
    );
    // n2 holds n2-p2's certificate: what a peer node has, issued by the mesh's CA.
    const real = await CertificateAuthority.loadOrCreate(path.dirname(lab.mesh!.controller.caFile), { trustDomain: 'cluster.local' });
    const key = await generateKeyAndCsr(spiffeWorkloadId('cluster.local', 'default', 'n2-p2'));
    const cert = await real.signCsr(key.csrPem, { kind: 'workload', lifetimeSeconds: 3600, allowedUris: () => null });
    const [ctlHost] = lab.mesh!.controller.address.split(':');
    const ports = [15000, 15001, 15006, 15008, 15020, 15021, CANARY_PORT];
    const v6 = (h: string, p: number): string => `[${h}]:${p}`;
    const refusedTargets = [
      `${n2p1.ip}:8081`, // a pod on another node
      `${n2p1.ip}:${CANARY_PORT}`,
      lab.mesh!.controller.address, // the controller's gRPC
      `${ctlHost}:15014`, // and its metrics
      `${lab.bridgeIp}:${CANARY_PORT}`,
      ...ports.map((p) => `127.0.0.1:${p}`),
      `127.0.0.2:${CANARY_PORT}`,
      ...ports.map((p) => v6('::1', p)),
      ...ports.map((p) => `0.0.0.0:${p}`),
      v6('::', CANARY_PORT),
      v6('::ffff:127.0.0.1', CANARY_PORT),
      v6('::ffff:0.0.0.0', CANARY_PORT),
      ...ports.map((p) => `${n1!.ip}:${p}`), // the node's own address and the proxy's ports
      v6(n1!.ip6, CANARY_PORT),
      `${n2!.ip}:${CANARY_PORT}`, // the other node
      v6(n2!.ip6, CANARY_PORT),
      `${n1!.podGateway}:${CANARY_PORT}`, // the node's address on its pod bridge
      v6(n1!.podGateway6, CANARY_PORT),
      // Host names, which a resolver would turn into loopback: a name is never a workload.
      `localhost:${CANARY_PORT}`,
      `localhost:15020`,
      `0:${CANARY_PORT}`,
      `2130706433:${CANARY_PORT}`,
    ];
    const config = path.join(dir, 'probe.json');
    fs.writeFileSync(
      config,
      JSON.stringify({
        host: n1!.ip,
        port: 15008,
        servername: identityToSni(n1p1Id),
        ca: fs.readFileSync(lab.mesh!.controller.caFile, 'utf8'),
        cert: cert.chainPem,
        key: key.keyPem,
        targets: [`${n1p1.ip}:8081`, ...refusedTargets, v6(n1p1.ip6, 8081)],
        forwarded: `for=${n2p2.ip}`,
      }),
    );
    // From inside node n2: a peer node that holds a valid workload certificate.
    const r = await labRun(lab, n2!.name, [process.execPath, fixture('hbone-probe.js'), config]);
    const out = JSON.parse(r.stdout.trim() || '{}') as { results?: Probe[]; error?: string };
    t.notOk(out.error, `the TLS connection was accepted (${out.error ?? r.stderr})`);
    const results = out.results ?? [];
    t.equal(results.length, refusedTargets.length + 2, 'every CONNECT got an answer on one connection');
    const first = results[0];
    t.match(first, { status: 200, body: 'n1-p1\n' }, 'a local workload is served (control, before)');
    for (const p of results.slice(1, -1)) t.match(p, { status: 404, reason: /^not-on-this-node / }, `${p.authority}: ${String(p.status)} ${p.reason ?? p.error ?? ''}`);
    t.match(results.at(-1), { status: 200, body: 'n1-p1\n' }, 'a local workload over IPv6 is served (control, after, same connection)');
    t.notMatch(canary.output(), /accepted/, 'nothing on node n1 was dialed for a refused CONNECT');

    const denied = (await flows(n1!.name, '&verdict=denied')).filter((f) => f.source.identity === spiffeWorkloadId('cluster.local', 'default', 'n2-p2'));
    t.ok(denied.length >= refusedTargets.length, `n1's flows show the ${denied.length} refused CONNECTs`);
    t.equal(await whoami(lab, 'n2-p2', n1p1.ip, 8081), 'n1-p1', 'pod traffic across the nodes still flows');
    t.equal(await whoami(lab, 'n1-p2', n1p1.ip, 8081), 'n1-p1', 'and on the node');
  });

  await t.test('a peer node speaks only for its own pods: any other client address it claims is refused', async (t) => {
    const real = await CertificateAuthority.loadOrCreate(path.dirname(lab.mesh!.controller.caFile), { trustDomain: 'cluster.local' });
    const probe = async (identity: string, targets: { authority: string; forwarded: string | null }[]): Promise<Probe[]> => {
      const key = await generateKeyAndCsr(spiffeWorkloadId('cluster.local', 'default', identity));
      const cert = await real.signCsr(key.csrPem, { kind: 'workload', lifetimeSeconds: 3600, allowedUris: () => null });
      const config = path.join(dir, `claims-${identity}.json`);
      const ca = fs.readFileSync(lab.mesh!.controller.caFile, 'utf8');
      fs.writeFileSync(config, JSON.stringify({ host: n1!.ip, port: 15008, servername: identityToSni(n1p1Id), ca, cert: cert.chainPem, key: key.keyPem, targets }));
      // From inside node n2, which holds a certificate of that identity.
      const r = await labRun(lab, n2!.name, [process.execPath, fixture('hbone-probe.js'), config]);
      const out = JSON.parse(r.stdout.trim() || '{}') as { results?: Probe[]; error?: string };
      t.notOk(out.error, `the TLS connection was accepted (${out.error ?? r.stderr})`);
      return out.results ?? [];
    };
    const to = `${n1p1.ip}:8081`;
    const rejected = async (): Promise<number> => {
      const m = await labRun(lab, n1!.name, [process.execPath, '-e', "fetch('http://127.0.0.1:15020/metrics').then(r=>r.text()).then(t=>process.stdout.write(t))"]);
      return Number(/nodemesh_listener_rejected_total\{listener="tunnel",reason="source-address"\} (\d+)/.exec(m.stdout)?.[1] ?? 0);
    };
    const before = await rejected();
    const claims = await probe('n2-p2', [
      { authority: to, forwarded: `for=${n2p2.ip}` },
      { authority: to, forwarded: `for="[${n2p2.ip6}]"` },
      { authority: to, forwarded: null },
      { authority: to, forwarded: `for=${n2p1.ip}` },
      { authority: to, forwarded: `for=${n1p2.ip}` },
      { authority: to, forwarded: 'for=203.0.113.7' },
      { authority: to, forwarded: 'for=unknown' },
      { authority: to, forwarded: `for=${n2p2.ip}, for=${n2p1.ip}` },
    ]);
    t.match(claims[0], { status: 200, body: 'n1-p1\n' }, 'its own pod n2-p2: served (control)');
    t.match(claims[1], { status: 200, body: 'n1-p1\n' }, "its own pod's IPv6 address: served");
    t.match(claims[2], { status: 403, reason: 'no-source-address' }, 'no client address: refused');
    t.match(claims[3], { status: 403, reason: 'source-address-unverified' }, 'n2-p1, another identity on its node: refused');
    t.match(claims[4], { status: 403, reason: 'source-address-unverified' }, "n1-p2, a pod of the destination's node: refused");
    t.match(claims[5], { status: 403, reason: 'source-address-unverified' }, 'an address outside the mesh: refused');
    t.match(claims[6], { status: 400, reason: /^bad-forwarded: .*for=unknown/ }, 'for=unknown: 400');
    t.match(claims[7], { status: 400, reason: /^bad-forwarded: .*more than one hop/ }, 'two addresses: 400');
    // A node broken into that also holds a certificate for n1-p2's identity (a service account with pods on both nodes) still cannot speak for n1-p2.
    const sameIdentity = await probe('n1-p2', [{ authority: to, forwarded: `for=${n1p2.ip}` }]);
    t.match(sameIdentity[0], { status: 403, reason: 'source-address-unverified' }, "n1-p2's address with n1-p2's identity, from node n2: refused");
    t.equal((await rejected()) - before, 5, 'each unverified claim is counted in nodemesh_listener_rejected_total{listener="tunnel",reason="source-address"}');
    const denied = (await flows(n1!.name, '&verdict=denied')).filter((f) => f.reason === 'source-address-unverified' || f.reason === 'no-source-address');
    t.equal(denied.length, 5, "n1's flows show the refused claims");
    t.ok(denied.every((f) => f.source.ip === ''), 'with no client address: an unverified claim is not shown as the client');
  });

  await t.test('a pod that takes another pod\'s address is still itself: its netns decides, not its source IP', { skip: python ? false : 'needs python3 with AF_PACKET for the gratuitous ARP' }, async (t) => {
    const p = (name: string) => `cluster.local/ns/default/sa/${name}`;
    // n1-p1 admits n1-p2 (same node) and n2-p2 (other node) only.
    const r = await admin.apply([
      doc({
        apiVersion: A,
        kind: 'AuthorizationPolicy',
        metadata: { name: 'n1-p1-trusted', namespace: 'default' },
        spec: { selector: { matchLabels: { pod: 'n1-p1' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: [p('n1-p2'), p('n2-p2')] } }] }] },
      }),
    ]);
    t.ok(await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n1!.name)!.ackedVersion >= r.version, 5000), "the policy is on n1-p1's node");
    t.teardown(() => admin.delete([{ kind: 'AuthorizationPolicy', namespace: 'default', name: 'n1-p1-trusted' }]).then(() => undefined, () => undefined));

    t.equal(await whoami(lab, 'n1-p2', n1p1.ip, 8081), 'n1-p1', 'n1-p2 is admitted (control)');
    t.equal(await whoami(lab, 'n2-p2', n1p1.ip, 8081), 'n1-p1', 'n2-p2 is admitted (control)');
    t.equal(await whoami(lab, 'n1-p3', n1p1.ip, 8081), 'ECONNRESET', 'n1-p3 is not (control)');
    t.equal(await whoami(lab, 'n2-p3', n1p1.ip, 8081), 'ECONNRESET', 'n2-p3 is not (control)');

    const attacks: { attacker: Pod; victim: Pod; node: typeof n1; where: string }[] = [
      { attacker: n1p3, victim: n1p2, node: n1, where: 'same node' },
      { attacker: n2p3, victim: n2p2, node: n2, where: 'across nodes' },
    ];
    for (const family of [4, 6] as const) {
      for (const { attacker, victim, node, where: at } of attacks) {
        const where = `${at}, IPv${family}`;
        const stolen = family === 4 ? victim.ip : victim.ip6;
        const dst = family === 4 ? n1p1.ip : n1p1.ip6;
        // The node must know the victim's address already, as it does for any pod that talks: the attacker overrides that.
        t.equal(await whoami(lab, victim.name, dst, 8081), 'n1-p1', `${where}: ${victim.name} is admitted (control)`);
        // The attacker takes the victim's address and tells the bridge so, so the proxy's answers come to it.
        const add = await labRun(lab, attacker.name, ['ip', 'addr', 'add', `${stolen}/${family === 4 ? 32 : 128}`, 'dev', 'eth0', ...(family === 6 ? ['nodad'] : [])]);
        t.equal(add.code, 0, `${where}: ${attacker.name} adds ${victim.name}'s address ${stolen} ${add.stderr.trim()}`);
        const giveBack = async (): Promise<void> => {
          await labRun(lab, attacker.name, ['ip', 'addr', 'del', `${stolen}/${family === 4 ? 32 : 128}`, 'dev', 'eth0']);
          await labRun(lab, node!.name, ['ip', 'neigh', 'del', stolen, 'dev', 'cbr0']);
        };
        t.teardown(giveBack);
        const announce = await labRun(lab, attacker.name, [python!, fixture('garp.py'), 'eth0', stolen]);
        t.equal(announce.code, 0, `${where}: ${announce.stdout.trim()}${announce.stderr.trim()}`);

        const victimFlows = (await flows(node!.name, `&from=${victim.name}`)).length;
        const deniedAtN1 = async (): Promise<number> => (await flows(n1!.name, '&verdict=denied')).filter((f) => f.source.identity === `spiffe://${p(attacker.name)}`).length;
        const deniedBefore = await deniedAtN1();
        const answer = await whoami(lab, attacker.name, dst, 8081, stolen);
        t.equal(answer, 'ECONNRESET', `${where}: ${attacker.name} from ${stolen} is refused (${answer})`);
        const src = (await flows(node!.name, `&from=${attacker.name}`)).filter((f) => canonical(f.source.ip ?? '') === canonical(stolen)).at(-1);
        t.match(src, { source: { workload: attacker.name, identity: `spiffe://${p(attacker.name)}` }, verdict: 'denied' }, `${where}: the connection from ${stolen} reached ${node!.name}'s proxy, which names the real pod ${attacker.name}`);
        t.equal((await flows(node!.name, `&from=${victim.name}`)).length, victimFlows, `${where}: no flow credits ${victim.name} with it`);
        t.equal(await deniedAtN1(), deniedBefore + 1, `${where}: n1 denied one more connection of ${attacker.name}'s identity`);

        // Give the address back: the victim announces itself again and is admitted as before.
        await giveBack();
        await labRun(lab, victim.name, [python!, fixture('garp.py'), 'eth0', stolen]);
        t.equal(await whoami(lab, victim.name, dst, 8081), 'n1-p1', `${where}: ${victim.name} is still admitted`);
      }
    }
  });
});
