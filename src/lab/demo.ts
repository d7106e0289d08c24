/**
 * `nodemesh lab demo`: nodemesh end to end on this machine. A lab of two
 * nodes with a controller and a proxy each; a Service with an endpoint on
 * both nodes; pods calling it through their node proxies; a DENY policy
 * applied live; then the flows and metrics the proxies recorded. The lab is
 * removed at the end, also when interrupted.
 */
import * as path from 'node:path';

import { API_VERSION } from '../api/kinds';
import { ControllerClient } from '../controller/client';
import { adminGet, adminSocketOf } from '../node-proxy/admin';
import { formatFlow, type Flow } from '../node-proxy/flows';
import { PACKAGE_ROOT } from '../paths';
import { labDown, labSpawn, labUp, type LabState } from './lab';
import { podWorkload } from './mesh';

export interface DemoOptions {
  name: string;
  out: (line: string) => void;
  signal?: AbortSignal;
}

const SERVER = path.join(PACKAGE_ROOT, 'dist', 'src', 'lab', 'demo-server.js');
const VIP = '198.19.0.10';

function runIn(lab: LabState, target: string, argv: string[]): Promise<string> {
  const child = labSpawn(lab, target, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve) => child.on('close', () => resolve(out.trim())));
}

const CALL = `const s=require('net').connect(${80},process.argv[1]);let a='';s.on('data',d=>a+=d).on('end',()=>console.log(a.trim()||'(closed without an answer)')).on('error',e=>console.log('refused: '+e.code))`;

export async function runDemo(opts: DemoOptions): Promise<void> {
  const { out } = opts;
  out(`== 1. a lab: 2 nodes, 2 pods each, a controller and a proxy per node (nodemesh lab up --name ${opts.name})`);
  const lab = await labUp({ name: opts.name, nodes: 2, podsPerNode: 2, mesh: true, signal: opts.signal, log: (l) => out(l) });
  const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials);
  try {
    out('');
    out(`== 2. a Service "web" (${VIP}:80) with an endpoint on each node (nodemesh apply)`);
    const web = lab.pods.filter((p) => p.index === 1);
    const docs = [
      ...web.map((p) => {
        const w = podWorkload(lab, p) as { metadata: { labels: Record<string, string> } };
        w.metadata.labels.app = 'web';
        return w;
      }),
      { apiVersion: API_VERSION, kind: 'Service', metadata: { name: 'web', namespace: 'default' }, spec: { selector: { app: 'web' }, addresses: [VIP], ports: [{ port: 80, targetPort: 8080, appProtocol: 'tcp' }] } },
    ];
    const applied = await admin.apply(docs.map((d, i) => ({ source: 'demo', index: i + 1, json: JSON.stringify(d) })));
    for (const r of applied.results) out(`  ${r.kind.toLowerCase()}.nodemesh.io/${r.name} ${r.action}`);
    for (const p of web) {
      const child = labSpawn(lab, p.name, [process.execPath, SERVER, p.name], { stdio: ['ignore', 'pipe', 'ignore'] });
      await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
      out(`  ${p.name} serves on :8080`);
    }
    await new Promise((r) => setTimeout(r, 300));

    const calls = async (): Promise<void> => {
      for (const pod of ['n1-p2', 'n2-p2']) out(`  ${pod} -> ${VIP}:80   ${await runIn(lab, pod, [process.execPath, '-e', CALL, VIP])}`);
    };
    out('');
    out('== 3. pods call the service; each proxy prefers the endpoint on its own node');
    await calls();
    const far = web.find((p) => p.nodeIndex === 2)!;
    const CALL_POD = CALL.replace('connect(80,', 'connect(8080,');
    out(`  n1-p2 -> ${far.ip}:8080 (${far.name}, the other node)   ${await runIn(lab, 'n1-p2', [process.execPath, '-e', CALL_POD, far.ip])}   (through the mTLS tunnel)`);

    out('');
    out('== 4. a DENY policy for n2-p2 (by its SPIFFE identity), applied while the mesh runs');
    await admin.apply([
      {
        source: 'demo',
        index: 1,
        json: JSON.stringify({
          apiVersion: API_VERSION,
          kind: 'AuthorizationPolicy',
          metadata: { name: 'deny-n2-p2', namespace: 'default' },
          spec: { selector: { matchLabels: { app: 'web' } }, action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/default/sa/n2-p2'] } }] }] },
        }),
      },
    ]);
    out('  authorizationpolicy.nodemesh.io/deny-n2-p2 created');
    await new Promise((r) => setTimeout(r, 300));
    await calls();

    out('');
    out('== 5. flows (nodemesh flows)');
    const flows: Flow[] = [];
    for (const n of lab.nodes) flows.push(...(JSON.parse(await adminGet(adminSocketOf(n.name), '/flows')) as Flow[]));
    flows.sort((a, b) => (a.start < b.start ? -1 : 1));
    for (const f of flows) out(`  ${formatFlow(f)}`);

    out('');
    out(`== 6. metrics of ${lab.nodes[1]!.name} (:15020/metrics, Istio label names)`);
    const metrics = await runIn(lab, 'n2', [process.execPath, '-e', "fetch('http://127.0.0.1:15020/metrics').then(r=>r.text()).then(t=>console.log(t))"]);
    for (const line of metrics.split('\n').filter((l) => /^nodemesh_tcp_(connections_opened|denied)_total\{/.test(l))) out(`  ${line}`);
    out('');
    out('Also there: PeerAuthentication STRICT, nodemesh explain, nodemesh node revoke (SECURITY.md: who can reach what). L7 routing comes next.');
  } finally {
    admin.close();
    out('');
    out(`== 7. teardown (nodemesh lab down --name ${opts.name})`);
    const r = await labDown(opts.name);
    out(`  removed ${r.removed.length} objects${r.errors.length ? `; errors: ${r.errors.join('; ')}` : ''}`);
  }
}
