/**
 * What a pod can reach of its own node, and what a process in a pod's network
 * namespace is subject to, in a lab with its controller and proxies:
 * - "this host" addresses (0.0.0.0, ::, ::ffff:0.0.0.0, ::ffff:127.0.0.1...)
 *   stay in the pod, and the node's own addresses are refused by the proxy:
 *   nothing of the proxy's admin, metrics or readiness ports answers a pod;
 * - a process that entered a pod's netns from outside its cgroup
 *   (nsenter --net) is captured like the pod: redirected, identified as the
 *   pod, bound by its policies, and a listener it opens is STRICT-checked.
 * Normal pod-to-service traffic keeps flowing throughout.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';

import { t } from 'tap';

import { netnsCookie } from '../../src/bpf';
import { ControllerClient } from '../../src/controller/client';
import { podWorkload, type LabState } from '../../src/lab';
import { adminGet, adminSocketOf } from '../../src/node-proxy/admin';
import { Datapath } from '../../src/node-proxy/datapath';
import type { Flow } from '../../src/node-proxy/flows';
import { bpfTest } from '../helpers/bpf';
import { fixture } from '../helpers/child';
import { doc } from '../helpers/controller';
import { labProcess, labRun, testLab } from '../helpers/lab';
import { onCleanup } from '../helpers/scratch';
import { waitFor } from '../helpers/wait';

const A = 'nodemesh.io/v1alpha1';
const VIP = '198.19.0.60';

async function flows(node: string, q = ''): Promise<Flow[]> {
  return JSON.parse(await adminGet(adminSocketOf(node), `/flows?limit=10000${q}`)) as Flow[];
}

/** One HTTP GET per URL from inside a pod: the status, or the error code. */
async function httpFrom(lab: LabState, pod: string, urls: string[]): Promise<Record<string, string>> {
  const script = `
    const urls = JSON.parse(process.argv[1]);
    (async () => {
      const out = {};
      for (const u of urls) {
        try {
          const r = await fetch(u, { signal: AbortSignal.timeout(5000) });
          out[u] = String(r.status);
        } catch (e) {
          out[u] = (e.cause && e.cause.code) || e.name;
        }
      }
      process.stdout.write(JSON.stringify(out));
    })();`;
  const r = await labRun(lab, pod, [process.execPath, '-e', script, JSON.stringify(urls)]);
  if (r.code !== 0) throw new Error(`http client in ${pod}: ${r.code} ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, string>;
}

/** Runs argv in a pod's network namespace only: this process's cgroup, not the pod's. */
function inNetnsOnly(netns: string, argv: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn('nsenter', [`--net=/run/netns/${netns}`, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

async function whoamiNetnsOnly(netns: string, host: string, port: number): Promise<string> {
  const r = await inNetnsOnly(netns, [process.execPath, fixture('mesh-client.js'), 'whoami', host, String(port), '1']);
  if (r.code !== 0) throw new Error(`mesh-client in netns ${netns}: ${r.code} ${r.stderr}`);
  return (JSON.parse(r.stdout) as { answers: string[] }).answers[0]!;
}

async function whoami(lab: LabState, pod: string, host: string, port: number): Promise<string> {
  const r = await labRun(lab, pod, [process.execPath, fixture('mesh-client.js'), 'whoami', host, String(port), '1']);
  if (r.code !== 0) throw new Error(`mesh-client in ${pod}: ${r.code} ${r.stderr}`);
  return (JSON.parse(r.stdout) as { answers: string[] }).answers[0]!;
}

bpfTest(t, 'the boundary between a pod and its node', async (t) => {
  const lab = await testLab(t, 2, 2, true);
  const [n1, n2] = lab.nodes;
  const n1p1 = lab.pods.find((p) => p.name === 'n1-p1')!;
  const n1p2 = lab.pods.find((p) => p.name === 'n1-p2')!;
  const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials);
  t.teardown(() => admin.close());
  const w = podWorkload(lab, n1p1) as { metadata: { labels: Record<string, string> } };
  w.metadata.labels.role = 'echo';
  await admin.apply([doc(w, 1), doc({ apiVersion: A, kind: 'Service', metadata: { name: 'echo', namespace: 'default' }, spec: { selector: { role: 'echo' }, addresses: [VIP], ports: [{ port: 81, targetPort: 8081 }] } }, 2)]);
  await labProcess(t, lab, 'n1-p1', [process.execPath, fixture('mesh-server.js'), 'n1-p1'], /serving/);
  t.ok(await waitFor(async () => (await whoami(lab, 'n1-p2', VIP, 81)) === 'n1-p1', 10_000), 'the service is in place');

  await t.test('a pod reaches nothing of its proxy through "this host" addresses', async (t) => {
    const urls = [
      'http://0.0.0.0:15000/config_dump',
      'http://0.0.0.0:15000/flows',
      'http://0.0.0.0:15000/status',
      'http://127.0.0.1:15000/config_dump',
      'http://[::]:15000/config_dump',
      'http://[::1]:15000/config_dump',
      'http://[::ffff:0.0.0.0]:15000/config_dump',
      'http://[::ffff:127.0.0.1]:15000/config_dump',
      'http://0.0.0.0:15020/metrics',
      'http://[::ffff:0.0.0.0]:15021/healthz/ready',
    ];
    const before = (await flows(n1!.name)).length;
    const got = await httpFrom(lab, 'n1-p2', urls);
    t.same(got, Object.fromEntries(urls.map((u) => [u, 'ECONNREFUSED'])), "every one is refused by the pod's own loopback");
    t.equal((await flows(n1!.name)).length, before, 'none of them even reached the proxy');
    t.equal(await whoami(lab, 'n1-p2', VIP, 81), 'n1-p1', 'the service still answers');
  });

  await t.test("the node's own addresses: the proxy refuses to dial them for a pod", async (t) => {
    const urls = [15000, 15020, 15021, 15008].flatMap((port) => [`http://${n1!.ip}:${port}/`, `http://[${n1!.ip6}]:${port}/`, `http://[::ffff:${n1!.ip}]:${port}/`]);
    urls.push(`http://${n1!.podGateway}:15020/metrics`);
    const got = await httpFrom(lab, 'n1-p2', urls);
    // A reset answers the request: the client sees ECONNRESET (or undici's "other side closed" when the RST wins the race with its write).
    for (const u of urls) t.match(got[u], /^(ECONNRESET|UND_ERR_SOCKET)$/, `${u}: reset, no status line from any proxy port`);
    const denied = (await flows(n1!.name, '&from=n1-p2&verdict=denied')).filter((f) => f.reason === 'dial-own-address');
    t.equal(denied.length, urls.length, 'each is a denied flow naming why (dial-own-address)');
    t.match(denied[0], { source: { workload: 'n1-p2' }, destination: { originalAddress: `${n1!.ip}:15000` }, verdict: 'denied', reason: 'dial-own-address' });
    const m = await labRun(lab, 'n1', [process.execPath, '-e', "fetch('http://127.0.0.1:15020/metrics').then(r=>r.text()).then(t=>process.stdout.write(t))"]);
    t.match(m.stdout, /nodemesh_tcp_denied_total\{[^}]*source_workload="n1-p2"[^}]*reason="dial-own-address"[^}]*\} [1-9]/, 'and counted');
    t.equal(await whoami(lab, 'n1-p2', VIP, 81), 'n1-p1', 'the service still answers');
    t.equal(await whoami(lab, 'n2-p2', VIP, 81), 'n1-p1', 'from the other node too');
  });

  await t.test("a Workload registered at the node's address does not make a proxy dial itself, on the node or through the tunnel", async (t) => {
    const applied = await admin.apply([doc({ apiVersion: A, kind: 'Workload', metadata: { name: 'squatter', namespace: 'default' }, spec: { node: n1!.name, serviceAccount: 'squatter', addresses: [n1!.ip] } })]);
    t.ok(await waitFor(async () => (await admin.listNodes()).every((n) => n.ackedVersion >= applied.version), 5000), 'every node has it');
    const url = `http://${n1!.ip}:15020/metrics`;
    t.match((await httpFrom(lab, 'n2-p2', [url]))[url], /^(ECONNRESET|UND_ERR_SOCKET)$/, 'from the other node: refused');
    t.match((await flows(n1!.name, '&verdict=denied')).filter((f) => f.security === 'mutual_tls').at(-1), { source: { identity: 'spiffe://cluster.local/ns/default/sa/n2-p2' }, reason: 'dial-own-address' }, "the node's tunnel refused to deliver to its own address");
    t.match((await flows(n2!.name, '&from=n2-p2&verdict=denied')).at(-1), { destination: { workload: 'squatter' }, reason: 'dial-own-address', security: 'mutual_tls' }, 'and the source flow says why');
    t.match((await httpFrom(lab, 'n1-p2', [url]))[url], /^(ECONNRESET|UND_ERR_SOCKET)$/, 'from the same node: refused');
    t.match((await flows(n1!.name, '&from=n1-p2&verdict=denied')).at(-1), { destination: { workload: 'squatter' }, reason: 'dial-own-address' });
    t.equal(await whoami(lab, 'n2-p2', VIP, 81), 'n1-p1', 'the service still answers across nodes');
    await admin.delete([{ kind: 'Workload', namespace: 'default', name: 'squatter' }]);
  });

  await t.test("a Workload naming the node's own netns is not enrolled: the proxy's own sockets stay uncaptured", async (t) => {
    const applied = await admin.apply([
      doc({ apiVersion: A, kind: 'Workload', metadata: { name: 'nodens', namespace: 'default' }, spec: { node: n1!.name, serviceAccount: 'nodens', addresses: [n1p2.ip.replace(/\.\d+$/, '.77')], netns: `/run/netns/${n1!.netns}` } }),
    ]);
    t.ok(await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n1!.name)!.ackedVersion >= applied.version, 5000), 'the node took the config');
    const proxyLog = lab.mesh!.proxies.find((p) => p.node === n1!.name)!.log;
    const verdict = (): string | undefined =>
      fs
        .readFileSync(proxyLog, 'utf8')
        .split('\n')
        .filter((l) => l.includes('Workload/default/nodens'))
        .map((l) => (JSON.parse(l) as { msg: string; err?: string }))
        .map((l) => `${l.msg}${l.err ? `: ${l.err}` : ''}`)[0];
    t.ok(await waitFor(() => verdict() !== undefined, 5000), 'the proxy decided about it');
    t.match(verdict(), /^cannot enroll: .*own network namespace/, 'and refused it, saying why');
    const nodeCookie = await netnsCookie(`/run/netns/${n1!.netns}`);
    const dp = Datapath.open(n1!.name);
    t.teardown(() => dp.close());
    t.notOk(dp.pods().some((p) => p.netnsCookie === nodeCookie), "the node's netns is not in nm_pods");
    t.equal(await whoami(lab, 'n1-p2', VIP, 81), 'n1-p1', 'same-node delivery still works');
    t.equal(await whoami(lab, 'n2-p2', VIP, 81), 'n1-p1', "and the tunnel's delivery");
    await admin.delete([{ kind: 'Workload', namespace: 'default', name: 'nodens' }]);
  });

  await t.test('a process entered into the pod netns only (nsenter --net) is captured as the pod', async (t) => {
    t.equal(await whoamiNetnsOnly(n1p2.netns, VIP, 81), 'n1-p1', 'redirected: the VIP has no route without the proxy');
    const f = (await flows(n1!.name, '&from=n1-p2&verdict=allowed')).at(-1)!;
    t.match(f, { source: { workload: 'n1-p2', identity: 'spiffe://cluster.local/ns/default/sa/n1-p2' }, destination: { service: 'echo', workload: 'n1-p1' } }, 'identified as the pod (by its netns)');
    t.equal((await httpFrom(lab, 'n1-p2', ['http://0.0.0.0:15000/config_dump']))['http://0.0.0.0:15000/config_dump'], 'ECONNREFUSED');
    const r = await inNetnsOnly(n1p2.netns, [process.execPath, '-e', "fetch('http://0.0.0.0:15000/config_dump').then(r=>console.log(r.status),e=>console.log(e.cause&&e.cause.code))"]);
    t.equal(r.stdout.trim(), 'ECONNREFUSED', 'and it cannot reach the admin API either');

    const applied = await admin.apply([
      doc({
        apiVersion: A,
        kind: 'AuthorizationPolicy',
        metadata: { name: 'deny-n1-p2', namespace: 'default' },
        spec: { selector: { matchLabels: { role: 'echo' } }, action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/default/sa/n1-p2'] } }] }] },
      }),
    ]);
    t.ok(await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n1!.name)!.ackedVersion >= applied.version, 5000), 'the policy reached the destination node');
    t.equal(await whoamiNetnsOnly(n1p2.netns, VIP, 81), 'ECONNRESET', "the pod's DENY applies to it");
    t.match((await flows(n1!.name, '&from=n1-p2&verdict=denied')).at(-1), { reason: 'explicit-deny', policy: 'default/deny-n1-p2' });
    t.equal(await whoami(lab, 'n2-p2', VIP, 81), 'n1-p1', 'other sources are still allowed');
    await admin.delete([{ kind: 'AuthorizationPolicy', namespace: 'default', name: 'deny-n1-p2' }]);
    t.ok(await waitFor(async () => (await whoamiNetnsOnly(n1p2.netns, VIP, 81)) === 'n1-p1', 5000), 'allowed again once the policy is gone');
  });

  await t.test('STRICT applies to a listener opened from outside the pod cgroup', async (t) => {
    // A server in n1-p1's netns, started from this process's cgroup.
    const server = spawn('nsenter', [`--net=/run/netns/${n1p1.netns}`, process.execPath, fixture('mesh-server.js'), 'sneaky', '9081', '9080'], { stdio: ['ignore', 'pipe', 'pipe'] });
    onCleanup(t, () => {
      if (server.exitCode === null) server.kill('SIGKILL');
    });
    await new Promise<void>((resolve, reject) => {
      let out = '';
      server.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (/serving/.test(out)) resolve();
      });
      server.once('exit', (code) => reject(new Error(`server exited (${code}): ${out}`)));
    });
    t.equal(await whoami(lab, 'n2-p2', n1p1.ip, 9081), 'sneaky', 'PERMISSIVE: reachable through the mesh');
    const applied = await admin.apply([doc({ apiVersion: A, kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'default' }, spec: { selector: { matchLabels: { pod: 'n1-p1' } }, mtls: { mode: 'STRICT' } } })]);
    t.ok(await waitFor(async () => (await admin.listNodes()).find((n) => n.node === n1!.name)!.ackedVersion >= applied.version, 5000), 'STRICT reached the node');
    const plain = await labRun(lab, 'n2', [process.execPath, fixture('mesh-client.js'), 'whoami', n1p1.ip, '9081', '1']);
    t.same((JSON.parse(plain.stdout) as { answers: string[] }).answers, ['ETIMEDOUT'], 'plaintext from the other node is dropped in the kernel');
    t.match((await flows(n1!.name, '&verdict=dropped')).at(-1), { destination: { workload: 'n1-p1', address: `${n1p1.ip}:9081` }, source: { ip: n2!.ip }, reason: 'strict-plaintext' }, 'shown as a dropped flow');
    t.equal(await whoami(lab, 'n2-p2', n1p1.ip, 9081), 'sneaky', 'through the mesh it still answers');
    t.equal(await whoami(lab, 'n1-p2', VIP, 81), 'n1-p1', 'and so does the service');
    await admin.delete([{ kind: 'PeerAuthentication', namespace: 'default', name: 'strict' }]);
  });
});
