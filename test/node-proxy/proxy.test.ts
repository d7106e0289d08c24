/**
 * The node proxies in a lab with its controller: pods reach a Service on both
 * nodes through their proxies; policy, REGISTRY_ONLY, endpoint failure and a
 * lost controller behave as a user expects; flows and metrics say so.
 */
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t } from 'tap';

import { ControllerClient } from '../../src/controller/client';
import { podWorkload, type LabState } from '../../src/lab';
import { adminGet, adminSocketOf, PROXY_RUN_DIR } from '../../src/node-proxy/admin';
import type { Flow } from '../../src/node-proxy/flows';
import { PACKAGE_ROOT } from '../../src/paths';
import { bpfTest } from '../helpers/bpf';
import { fixture } from '../helpers/child';
import { doc } from '../helpers/controller';
import { labProcess, labRun, testLab } from '../helpers/lab';
import { waitFor } from '../helpers/wait';

const A = 'nodemesh.io/v1alpha1';
const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');
const VIP = '198.19.0.50';

async function client(lab: LabState, pod: string, args: (string | number)[]): Promise<Record<string, unknown>> {
  const r = await labRun(lab, pod, [process.execPath, fixture('mesh-client.js'), ...args.map(String)]);
  if (r.code !== 0 || !r.stdout.trim()) throw new Error(`mesh-client ${args.join(' ')} in ${pod}: ${r.code} ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}
const whoami = async (lab: LabState, pod: string, host: string, port: number, n: number): Promise<string[]> =>
  (await client(lab, pod, ['whoami', host, port, n])).answers as string[];

async function flows(node: string, q = ''): Promise<Flow[]> {
  return JSON.parse(await adminGet(adminSocketOf(node), `/flows?limit=10000${q}`)) as Flow[];
}

bpfTest(t, 'node proxies in a lab', async (t) => {
  const lab = await testLab(t, 2, 2, true);
  const [n1, n2] = lab.nodes;
  const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials);
  t.teardown(() => admin.close());

  // An "echo" service with an endpoint on each node.
  const echoPods = lab.pods.filter((p) => p.index === 1);
  await admin.apply([
    ...echoPods.map((p, i) => {
      const w = podWorkload(lab, p) as { metadata: { labels: Record<string, string> } };
      w.metadata.labels.role = 'echo';
      return doc(w, i + 1);
    }),
    doc({ apiVersion: A, kind: 'Service', metadata: { name: 'echo', namespace: 'default' }, spec: { selector: { role: 'echo' }, addresses: [VIP], ports: [{ port: 80, targetPort: 8080 }, { port: 81, targetPort: 8081 }] } }, 9),
  ]);
  // The servers, by pod: killed one by one below (pkill would hit other labs' servers of the same name).
  const servers = new Map<string, ChildProcess>();
  for (const p of echoPods) servers.set(p.name, (await labProcess(t, lab, p.name, [process.execPath, fixture('mesh-server.js'), p.name], /serving/)).child);

  await t.test('pods reach the service through their node proxy, same-node endpoints first', async (t) => {
    t.ok(await waitFor(async () => (await whoami(lab, 'n1-p2', VIP, 81, 1))[0] === 'n1-p1', 10_000), 'the service is in place');
    t.same(await whoami(lab, 'n1-p2', VIP, 81, 10), new Array(10).fill('n1-p1'), 'n1-p2 reaches the endpoint on its own node');
    t.same(await whoami(lab, 'n2-p2', VIP, 81, 10), new Array(10).fill('n2-p1'), 'n2-p2 reaches the one on its node');
    const f = (await flows(n1!.name, '&from=n1-p2')).at(-1)!;
    t.match(f, { node: n1!.name, source: { workload: 'n1-p2', namespace: 'default', identity: 'spiffe://cluster.local/ns/default/sa/n1-p2' }, destination: { service: 'echo', workload: 'n1-p1' }, verdict: 'allowed', closeReason: 'closed' });
    t.equal(f.bytesReceived, 6, 'the flow counts bytes: "n1-p1\\n"');
  });

  await t.test('bytes come back intact: 16 MB each way, then half-close', async (t) => {
    const r = await client(lab, 'n1-p2', ['echo', VIP, 80, 16 * 1024 * 1024]);
    t.same(r, { sent: 16 * 1024 * 1024, received: 16 * 1024 * 1024, same: true });
    const crossNode = await client(lab, 'n2-p2', ['echo', lab.pods.find((p) => p.name === 'n1-p1')!.ip, 8080, 1024 * 1024]);
    t.same(crossNode, { sent: 1048576, received: 1048576, same: true }, 'to a pod on the other node by its address');
    const out = (await flows(n2!.name, '&from=n2-p2')).at(-1)!;
    t.match(out, { security: 'mutual_tls', verdict: 'allowed', destination: { workload: 'n1-p1', identity: 'spiffe://cluster.local/ns/default/sa/n1-p1' } }, 'across nodes it went through the tunnel');
    const inbound = (await flows(n1!.name)).filter((f) => f.source.identity === 'spiffe://cluster.local/ns/default/sa/n2-p2').at(-1)!;
    t.match(inbound, { security: 'mutual_tls', verdict: 'allowed', destination: { workload: 'n1-p1' }, bytesSent: 1048576 }, 'and the destination proxy saw the source identity');
  });

  await t.test('across nodes the destination decides: a DENY on a principal blocks exactly that identity', async (t) => {
    const n1p1 = lab.pods.find((p) => p.name === 'n1-p1')!;
    const r = await admin.apply([
      doc({
        apiVersion: A,
        kind: 'AuthorizationPolicy',
        metadata: { name: 'deny-n2-p2', namespace: 'default' },
        spec: { selector: { matchLabels: { pod: 'n1-p1' } }, action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/default/sa/n2-p2'] } }] }] },
      }),
    ]);
    t.ok(await waitFor(async () => (await admin.listNodes()).every((n) => n.ackedVersion >= r.version || n.node !== n1!.name), 5000));
    t.same(await whoami(lab, 'n2-p2', n1p1.ip, 8081, 1), ['ECONNRESET'], 'n2-p2 is refused');
    t.same(await whoami(lab, 'n2-p1', n1p1.ip, 8081, 1), ['n1-p1'], 'n2-p1 is not');
    const src = (await flows(n2!.name, '&from=n2-p2&verdict=denied')).at(-1)!;
    t.match(src, { reason: 'explicit-deny', policy: 'default/deny-n2-p2', security: 'mutual_tls' }, 'the source flow names the policy the destination applied');
    const dst = (await flows(n1!.name, '&verdict=denied')).at(-1)!;
    t.match(dst, { source: { identity: 'spiffe://cluster.local/ns/default/sa/n2-p2' }, reason: 'explicit-deny', policy: 'default/deny-n2-p2', security: 'mutual_tls' }, 'so does the destination flow');
    await admin.delete([{ kind: 'AuthorizationPolicy', namespace: 'default', name: 'deny-n2-p2' }]);
  });

  await t.test('a DENY applies within a second to new connections, and closes the open ones it denies', async (t) => {
    const held = client(lab, 'n1-p2', ['hold', VIP, 80, 4000]);
    // The held connection is open (the proxy shows it live) before the policy arrives.
    t.ok(await waitFor(async () => (await flows(n1!.name, '&from=n1-p2&live=true')).some((f) => f.destination.originalAddress.endsWith(':80')), 5000), 'the long-lived connection is open');
    const applied = Date.now();
    await admin.apply([
      doc({
        apiVersion: A,
        kind: 'AuthorizationPolicy',
        metadata: { name: 'deny-n1-p2', namespace: 'default' },
        spec: { selector: { matchLabels: { role: 'echo' } }, action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/default/sa/n1-p2'] } }] }] },
      }),
    ]);
    let deniedAt = 0;
    for (;;) {
      const [a] = await whoami(lab, 'n1-p2', VIP, 81, 1);
      if (a !== 'n1-p1') {
        deniedAt = Date.now();
        t.match(a, /^(ECONNRESET|EMPTY)$/, 'refused at once');
        break;
      }
      if (Date.now() - applied > 5000) break;
    }
    t.ok(deniedAt > 0 && deniedAt - applied < 1000, `denied ${deniedAt - applied} ms after the apply`);
    t.same(await whoami(lab, 'n2-p2', VIP, 81, 3), ['n2-p1', 'n2-p1', 'n2-p1'], 'other sources are still allowed');
    const h = await held;
    t.ok(h.failed !== null, `the connection opened before the policy was closed (${String(h.failed)}), as ztunnel closes what a new policy denies`);
    t.ok((h.roundTrips as number) >= 1, `after ${String(h.roundTrips)} round trips on it`);
    const cut = (await flows(n1!.name, '&from=n1-p2')).filter((f) => f.closeReason?.includes('policy changed while connected'));
    t.ok(cut.length > 0 || (await flows(n2!.name, '&from=n1-p2')).some((f) => f.closeReason?.includes('policy changed while connected')), 'the deciding proxy\'s flow says why');
    const denied = (await flows(n1!.name, '&verdict=denied')).at(-1)!;
    t.match(denied, { source: { workload: 'n1-p2' }, destination: { service: 'echo' }, verdict: 'denied', reason: 'explicit-deny', policy: 'default/deny-n1-p2' });
    await admin.delete([{ kind: 'AuthorizationPolicy', namespace: 'default', name: 'deny-n1-p2' }]);
    t.ok(await waitFor(async () => (await whoami(lab, 'n1-p2', VIP, 81, 1))[0] === 'n1-p1', 5000), 'allowed again once the policy is gone');
  });

  await t.test('ALLOW_ANY passes unknown destinations through; REGISTRY_ONLY refuses them', async (t) => {
    // A server in node n2 itself: not a mesh workload, not a service.
    await labProcess(t, lab, 'n2', [process.execPath, fixture('mesh-server.js'), 'outside', '9081', '9080'], /serving/);
    t.same(await whoami(lab, 'n1-p2', n2!.ip, 9081, 1), ['outside'], 'passthrough under ALLOW_ANY');
    await admin.apply([doc({ apiVersion: A, kind: 'MeshConfig', metadata: { name: 'default' }, spec: { outboundTrafficPolicy: { mode: 'REGISTRY_ONLY' } } })]);
    t.ok(await waitFor(async () => (await whoami(lab, 'n1-p2', n2!.ip, 9081, 1))[0] !== 'outside', 5000), 'refused under REGISTRY_ONLY');
    t.same(await whoami(lab, 'n1-p2', VIP, 81, 1), ['n1-p1'], 'registered services still work');
    t.match((await flows(n1!.name, '&verdict=denied')).at(-1), { reason: 'registry-only', destination: { originalAddress: `${n2!.ip}:9081` } });
    await admin.apply([doc({ apiVersion: A, kind: 'MeshConfig', metadata: { name: 'default' }, spec: { outboundTrafficPolicy: { mode: 'ALLOW_ANY' } } })]);
  });

  await t.test('killing an endpoint sends new connections to the others', async (t) => {
    servers.get('n1-p1')!.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
    const answers = await whoami(lab, 'n1-p2', VIP, 81, 10);
    t.same(answers, new Array(10).fill('n2-p1'), 'every connection reached the endpoint on the other node');
    const failed = (await flows(n1!.name, '&from=n1-p2')).filter((f) => f.verdict !== 'allowed');
    t.same(failed.filter((f) => f.reason === 'connect-failed'), [], 'no client saw the dead endpoint: the proxy retried elsewhere');
  });

  await t.test('a config the proxy cannot apply is NACKed; the previous one stays', async (t) => {
    const bad = { apiVersion: A, kind: 'Workload', metadata: { name: 'ghost', namespace: 'default' }, spec: { node: n1!.name, serviceAccount: 'ghost', addresses: ['198.18.9.9'], netns: '/run/netns/nodemesh-test-no-such-netns' } };
    const r = await admin.apply([doc(bad)]);
    t.ok(await waitFor(async () => (await admin.listNodes()).some((n) => n.node === n1!.name && n.nackedVersion === r.version), 5000), 'the node refused the version');
    const n = (await admin.listNodes()).find((x) => x.node === n1!.name)!;
    t.match(n.nackReason, /Workload\/default\/ghost: its netns \/run\/netns\/nodemesh-test-no-such-netns does not exist/);
    t.same(await whoami(lab, 'n1-p2', VIP, 81, 2), ['n2-p1', 'n2-p1'], 'and keeps serving the config it had (n1-p1 is down since the last test)');
    const cli = await labRun(lab, 'n1', [process.execPath, BIN, 'status', '--credentials', lab.mesh!.controller.credentials]);
    t.match(cli.stdout, new RegExp(`${n1!.name} +yes +fail-closed +\\d+ +\\d+ +${r.version} .*does not exist`), `nodemesh status shows the refusal: ${cli.stdout}${cli.stderr}`);
    await admin.delete([{ kind: 'Workload', namespace: 'default', name: 'ghost' }]);
    t.ok(await waitFor(async () => (await admin.listNodes()).find((x) => x.node === n1!.name)!.ackedVersion > r.version, 5000), 'the next good version is taken');
  });

  await t.test('nodemesh flows and status from the host', async (t) => {
    const text = await labRun(lab, 'n1', [process.execPath, BIN, 'flows', '--node', n1!.name, '--from', 'n1-p2', '--verdict', 'denied']);
    t.match(text.stdout, new RegExp(`  ${n1!.name}  default/n1-p2 \\(198\\.18\\.\\d+\\.2:\\d+\\) -> default/echo -> n1-p1 \\S+  DENIED  explicit-deny \\(default/deny-n1-p2\\)  0 B out, 0 B in`));
    const json = JSON.parse((await labRun(lab, 'n1', [process.execPath, BIN, 'flows', '-o', 'json', '--to', 'echo'])).stdout) as Flow[];
    t.ok(json.length > 10 && json.every((f) => f.destination.service === 'echo'), 'all nodes merged, filtered by service');
    t.ok(new Set(json.map((f) => f.node)).size === 2, 'from both proxies');
    // A proxy found on the host that does not answer (stopping, restarting) is skipped with a warning; the others still show.
    const gone = `${n1!.name}-gone`;
    fs.mkdirSync(path.join(PROXY_RUN_DIR, gone), { recursive: true });
    fs.writeFileSync(adminSocketOf(gone), ''); // a file where a socket would be: nothing answers there
    t.teardown(() => fs.rmSync(path.join(PROXY_RUN_DIR, gone), { recursive: true, force: true }));
    const partial = await labRun(lab, 'n1', [process.execPath, BIN, 'flows', '-o', 'json', '--to', 'echo']);
    t.equal(partial.code, 0, 'nodemesh flows still answers');
    t.ok(new Set((JSON.parse(partial.stdout) as Flow[]).map((f) => f.node)).size === 2, 'with both live proxies');
    t.match(partial.stderr, new RegExp(`nodemesh flows: skipped node ${gone}: cannot reach the proxy admin socket`), 'and says which it skipped');
    const named = await labRun(lab, 'n1', [process.execPath, BIN, 'flows', '--node', gone]);
    t.not(named.code, 0, 'asked by name, a proxy that does not answer is an error');
    const status = await labRun(lab, 'n1', [process.execPath, BIN, 'status', '--node', n1!.name]);
    t.match(status.stdout, /proxy\n  health      ready/);
    t.match(status.stdout, /config      1 services, 0 authorization policies, 2 local workloads/);
    t.match(status.stdout, /workload    Workload\/default\/n1-p2  spiffe:\/\/cluster.local\/ns\/default\/sa\/n1-p2/);
  });

  await t.test('traffic keeps flowing while the controller is away', async (t) => {
    process.kill(lab.mesh!.controller.pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 500));
    t.same(await whoami(lab, 'n2-p2', VIP, 81, 5), new Array(5).fill('n2-p1'));
    const status = JSON.parse(await adminGet(adminSocketOf(n2!.name), '/status')) as { ready: boolean; controller: { connected: boolean; configVersion: number; summary: string } };
    t.match(status, { ready: true, controller: { connected: false } }, 'still ready, serving the last config');
    t.match(
      status.controller.summary,
      new RegExp(`^not connected \\(\\d+ attempts? failed, last error \\d+ (ms|s) ago: 14 UNAVAILABLE: .*\\), holds version ${status.controller.configVersion}: serving it until the controller is back`),
      '/status says why and what it serves meanwhile',
    );
    const cli = await labRun(lab, 'n2', [process.execPath, BIN, 'status', '--node', n2!.name]);
    t.match(cli.stdout, /\n  controller  \S+: not connected \(\d+ attempts? failed, last error .* ago: 14 UNAVAILABLE: /, `nodemesh status --node says so: ${cli.stdout}${cli.stderr}`);
  });

  await t.test('metrics name what happened, with Istio label names', async (t) => {
    const r = await labRun(lab, 'n1', [process.execPath, '-e', "fetch('http://127.0.0.1:15020/metrics').then(r=>r.text()).then(t=>process.stdout.write(t))"]);
    const m = r.stdout;
    t.match(m, /nodemesh_tcp_connections_opened_total\{reporter="source",source_workload="n1-p2",source_namespace="default",source_principal="spiffe:\/\/cluster.local\/ns\/default\/sa\/n1-p2",destination_service="echo.default",destination_service_namespace="default",destination_workload="n1-p1",destination_namespace="default",connection_security_policy="none"\} \d+/);
    t.match(m, /nodemesh_tcp_denied_total\{[^}]*source_workload="n1-p2"[^}]*reason="explicit-deny",policy="default\/deny-n1-p2"\} [1-9]/);
    t.match(m, /nodemesh_tcp_denied_total\{[^}]*reason="registry-only"[^}]*\} [1-9]/);
    t.match(m, /nodemesh_tcp_sent_bytes_total\{[^}]*destination_workload="n1-p1"[^}]*\} (1677\d{4}|[2-9]\d{7})/);
    t.match(m, /nodemesh_datapath_events\{counter="redirected"\} [1-9]/);
    t.match(m, /nodemesh_proxy_nodejs_eventloop_lag_seconds/);
    t.match(m, /nodemesh_proxy_ready 1/);
  });
});
