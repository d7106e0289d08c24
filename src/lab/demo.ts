/**
 * `nodemesh lab demo`: what nodemesh does today, end to end, on this machine.
 * Builds a lab, installs the data path on every node with a stand-in proxy
 * (`nodemesh datapath echo`) on the proxy port, has pods connect to Service
 * VIPs, prints what the proxy learned about each connection, the flow records
 * and counters, and removes the lab — also when interrupted.
 */
import type { ChildProcess } from 'node:child_process';
import * as path from 'node:path';

import { Datapath, type FlowRecord } from '../node-proxy/datapath';
import { PACKAGE_ROOT } from '../paths';
import { labDown, labSpawn, labUp, type LabState } from './lab';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');

export interface DemoOptions {
  name: string;
  out: (line: string) => void;
  signal?: AbortSignal;
}

function runIn(lab: LabState, target: string, argv: string[]): Promise<string> {
  const child = labSpawn(lab, target, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve) => child.on('close', () => resolve(out.trim())));
}

const CLIENT = `
const net = require('net');
const [host, port] = [process.argv[1], Number(process.argv[2])];
const s = net.connect(port, host);
let a = '';
s.on('data', (d) => (a += d)).on('end', () => console.log(a.trim())).on('error', (e) => console.log(JSON.stringify({ error: e.code })));
`;

export async function runDemo(opts: DemoOptions): Promise<void> {
  const { out } = opts;
  const children: ChildProcess[] = [];
  const datapaths: Datapath[] = [];
  out(`== 1. a lab: 2 nodes, 2 pods each (nodemesh lab up --name ${opts.name})`);
  const lab = await labUp({ name: opts.name, nodes: 2, podsPerNode: 2, signal: opts.signal, log: (l) => out(l) });
  try {
    out('');
    out('== 2. the data path on each node: eBPF on the pods cgroup, pinned; pods enrolled by netns');
    for (const node of lab.nodes) {
      const dp = Datapath.install({ node: node.name, cgroup: node.cgroup, proxyIp: node.ip, proxyIp6: node.ip6 });
      datapaths.push(dp);
      for (const [i, pod] of lab.pods.filter((p) => p.node === node.name).entries()) {
        const cookie = await dp.enroll(`/run/netns/${pod.netns}`, { index: i + 1 });
        out(`  ${node.name}: enrolled ${pod.name} (${pod.ip}, netns cookie ${cookie})`);
      }
      const echo = labSpawn(lab, `n${node.index}`, [process.execPath, BIN, 'datapath', 'echo', '--node', node.name], { stdio: ['ignore', 'pipe', 'inherit'] });
      children.push(echo);
      await new Promise<void>((resolve, reject) => {
        echo.stdout!.on('data', (d: Buffer) => /listening on/.test(d.toString()) && resolve());
        echo.once('exit', (code) => reject(new Error(`the stand-in proxy on ${node.name} exited (${code})`)));
      });
      out(`  ${node.name}: stand-in proxy listening on ${node.ip}:15001`);
    }
    const flows: FlowRecord[] = [];
    const rings = datapaths.map((dp) => dp.flowEvents((r) => flows.push(...r)));

    out('');
    out('== 3. pods connect to Service VIPs (198.19.0.0/16, routed nowhere); the kernel sends them to their node proxy');
    const calls: [string, string, number][] = [
      ['n1-p1', '198.19.0.10', 80],
      ['n1-p2', '198.19.0.20', 5432],
      ['n2-p1', '198.19.0.10', 80],
      ['n2-p2', '198.19.1.1', 443],
    ];
    for (const [pod, host, port] of calls) {
      const answer = await runIn(lab, pod, [process.execPath, '-e', CLIENT, host, String(port)]);
      let shown = answer;
      try {
        const a = JSON.parse(answer) as { peer: string; origin: { ip: string; port: number; netnsCookie: string; pid: number } | null };
        shown = a.origin ? `proxy saw ${a.peer}, original destination ${a.origin.ip}:${a.origin.port}, netns ${a.origin.netnsCookie}, pid ${a.origin.pid}` : `proxy saw ${a.peer}, no origin`;
      } catch {
        // show it as it came
      }
      out(`  ${pod} -> ${host}:${port}   ${shown}`);
    }
    await new Promise((r) => setTimeout(r, 200));

    out('');
    out('== 4. flow records (from the kernel, on close)');
    for (const f of flows)
      out(`  ${f.srcIp}:${f.srcPort} -> ${f.origin.ip}:${f.origin.port}  ${((Number(f.endNs - f.origin.startNs)) / 1e6).toFixed(2)} ms  received ${f.bytesReceived} B  ${f.established ? 'established' : 'failed'}`);
    for (const r of rings) r.close();

    out('');
    out('== 5. counters (nodemesh status --node N)');
    for (const dp of datapaths) {
      const c = dp.counters();
      out(`  ${dp.node}: ${Object.entries(c).map(([k, v]) => `${k}=${v}`).join(' ')}`);
    }
    out('');
    out('The proxy, the controller and mTLS between nodes come next (see ../shared/DESIGN.md).');
  } finally {
    for (const c of children) c.kill('SIGTERM');
    await Promise.all(children.map((c) => (c.exitCode === null ? new Promise((r) => c.once('exit', r)) : undefined)));
    for (const dp of datapaths) dp.close();
    out('');
    out(`== 6. teardown (nodemesh lab down --name ${opts.name})`);
    const r = await labDown(opts.name);
    out(`  removed ${r.removed.length} objects${r.errors.length ? `; errors: ${r.errors.join('; ')}` : ''}`);
  }
}

