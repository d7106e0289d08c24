/**
 * The L4 data path benchmark (see docs/architecture.md, 'Performance
 * targets'), in one run on this machine through a lab: pod n1-p2 to pod
 * n2-p1 (across nodes), directly, through nodemesh (the node proxy of n1, the
 * mTLS tunnel, the node proxy of n2), and through HAProxy (mode tcp, one
 * thread) in node n1.
 *   - one TCP stream's throughput (iperf3)
 *   - request/response: a new connection per request, and round trips on
 *     long-lived connections (64 B each way)
 *   - the node proxy's CPU per 1,000 requests/s and its memory
 *
 *   npm run bench [-- --seconds 5]
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import { ControllerClient } from '../src/controller/client';
import { labDown, labSpawn, labUp, podWorkload, type LabState } from '../src/lab';
import { Datapath } from '../src/node-proxy/datapath';
import { PACKAGE_ROOT } from '../src/paths';

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '5' }, name: { type: 'string', default: 'bench' } } });
const SECONDS = Number(values.seconds);
const NAME = values.name!;
const VIP = '198.19.0.60';
const A = 'nodemesh.io/v1alpha1';
const BENCH = path.join(PACKAGE_ROOT, 'bench');

function cpuTicks(pid: number): number {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime
}
function rssMiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
}
const HZ = 100;

/** Runs argv in a lab pod or node to its end; its stdout. */
function run(lab: LabState, target: string, argv: string[]): Promise<string> {
  const child = labSpawn(lab, target, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) =>
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${argv.join(' ')} in ${target} failed (${code}): ${err}`)))),
  );
}

function proxyPid(lab: LabState, node: string): number {
  const ns = lab.nodes.find((n) => n.name === node)!.netns;
  for (const pid of execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).split('\n').filter(Boolean)) {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (cmd.includes('proxy') && cmd.includes(node)) return Number(pid);
  }
  throw new Error(`no proxy process in ${ns}`);
}

async function main(): Promise<void> {
  for (const tool of ['iperf3', 'haproxy']) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`]);
    } catch {
      throw new Error(`${tool} is missing: npm run bench installs it (apt-get install ${tool})`);
    }
  }
  await labDown(NAME);
  const lab = await labUp({ name: NAME, nodes: 2, podsPerNode: 2, mesh: true });
  const hcfg = path.join(os.tmpdir(), `nodemesh-bench-haproxy-${process.pid}.cfg`);
  const stop = async (): Promise<void> => {
    fs.rmSync(hcfg, { force: true });
    await labDown(NAME);
  };
  // The lab goes on an interrupt, a kill or a closed terminal as on success or failure.
  for (const [sig, n] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]] as const) process.once(sig, () => void stop().finally(() => process.exit(128 + n)));
  try {
    const [n1] = lab.nodes;
    const server = lab.pods.find((p) => p.name === 'n2-p1')!;
    const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials);
    const w = podWorkload(lab, server) as { metadata: { labels: Record<string, string> } };
    w.metadata.labels.role = 'sink';
    await admin.apply([
      { source: 'bench', index: 1, json: JSON.stringify(w) },
      {
        source: 'bench',
        index: 2,
        json: JSON.stringify({ apiVersion: A, kind: 'Service', metadata: { name: 'sink', namespace: 'default' }, spec: { selector: { role: 'sink' }, addresses: [VIP], ports: [{ port: 5201 }, { port: 7000 }] } }),
      },
    ]);
    admin.close();
    // Direct paths use ports the data path never redirects.
    const dp = Datapath.open(n1!.name);
    for (const p of [5202, 7001, 15101, 15102]) dp.excludePort(p);
    dp.close();

    const servers = [
      labSpawn(lab, 'n2-p1', ['iperf3', '-s', '-p', '5201'], { stdio: 'ignore' }),
      labSpawn(lab, 'n2-p1', ['iperf3', '-s', '-p', '5202'], { stdio: 'ignore' }),
      labSpawn(lab, 'n2-p1', [process.execPath, path.join(BENCH, 'rr-server.js'), '7000', '7001'], { stdio: 'ignore' }),
    ];
    fs.writeFileSync(
      hcfg,
      `global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n` +
        `listen iperf\n  bind ${n1!.ip}:15101\n  server s ${server.ip}:5201\n` +
        `listen rr\n  bind ${n1!.ip}:15102\n  server s ${server.ip}:7000\n`,
    );
    servers.push(labSpawn(lab, 'n1', ['haproxy', '-f', hcfg, '-db'], { stdio: 'ignore' }));
    await new Promise((r) => setTimeout(r, 1500));

    const pid = proxyPid(lab, n1!.name);
    const paths = [
      { name: 'direct', iperf: [server.ip, '5202'], rr: [server.ip, '7001'] },
      { name: 'nodemesh', iperf: [VIP, '5201'], rr: [VIP, '7000'] },
      { name: 'haproxy', iperf: [n1!.ip, '15101'], rr: [n1!.ip, '15102'] },
    ];
    const results: Record<string, Record<string, number>> = {};
    for (const p of paths) {
      const r: Record<string, number> = {};
      const iperf = JSON.parse(await run(lab, 'n1-p2', ['iperf3', '-c', p.iperf[0]!, '-p', p.iperf[1]!, '-t', String(SECONDS), '-J'])) as { end?: { sum_received?: { bits_per_second: number } }; error?: string };
      if (!iperf.end?.sum_received) throw new Error(`iperf3 to ${p.name} (${p.iperf.join(':')}) failed: ${iperf.error ?? 'no result'}`);
      r.gbps = iperf.end.sum_received.bits_per_second / 1e9;
      const paced = JSON.parse(await run(lab, 'n1-p2', [process.execPath, path.join(BENCH, 'rr-client.js'), p.rr[0]!, p.rr[1]!, String(SECONDS), '1', 'paced'])) as { requests: number; seconds: number; p50Ms: number; p99Ms: number };
      r.pacedP50 = paced.p50Ms;
      r.pacedP99 = paced.p99Ms;
      r.pacedRps = paced.requests / paced.seconds;
      for (const mode of ['connect', 'persistent'] as const) {
        const before = cpuTicks(pid);
        const out = JSON.parse(await run(lab, 'n1-p2', [process.execPath, path.join(BENCH, 'rr-client.js'), p.rr[0]!, p.rr[1]!, String(SECONDS), '16', mode])) as { requests: number; seconds: number; errors: number; p50Ms: number; p99Ms: number };
        const cpu = (cpuTicks(pid) - before) / HZ / out.seconds;
        const rps = out.requests / out.seconds;
        r[`${mode}Rps`] = rps;
        r[`${mode}P99`] = out.p99Ms;
        r[`${mode}Errors`] = out.errors;
        if (p.name === 'nodemesh') r[`${mode}CorePer1k`] = cpu / (rps / 1000);
      }
      results[p.name] = r;
    }
    const rss = rssMiB(pid);
    for (const s of servers) s.kill('SIGKILL');

    const d = results.direct!;
    const m = results.nodemesh!;
    const h = results.haproxy!;
    const row = (label: string, k: string, fmt: (x: number) => string): string =>
      `  ${label.padEnd(36)} ${fmt(d[k]!).padStart(11)} ${fmt(m[k]!).padStart(11)} ${fmt(h[k]!).padStart(11)}   ${(m[k]! / d[k]!).toFixed(2).padStart(5)}x direct, ${(m[k]! / h[k]!).toFixed(2).padStart(5)}x haproxy`;
    console.log(`L4 benchmark, pod n1-p2 -> pod n2-p1 across two lab nodes (nodemesh: both proxies and the mTLS tunnel), ${SECONDS} s per run, ${os.cpus().length} cores`);
    console.log(`  ${''.padEnd(36)} ${'direct'.padStart(11)} ${'nodemesh'.padStart(11)} ${'haproxy'.padStart(11)}`);
    console.log(row('one TCP stream (Gbit/s, iperf3)', 'gbps', (x) => x.toFixed(2)));
    console.log(row('new connection per request (req/s)', 'connectRps', (x) => x.toFixed(0)));
    console.log(row('  p99 latency (ms)', 'connectP99', (x) => x.toFixed(2)));
    console.log(row('round trips, 16 connections (req/s)', 'persistentRps', (x) => x.toFixed(0)));
    console.log(row('  p99 latency (ms)', 'persistentP99', (x) => x.toFixed(2)));
    console.log(
      `  1 KB request/response at ${m.pacedRps!.toFixed(0)}/s: p50 ${d.pacedP50!.toFixed(3)} / ${m.pacedP50!.toFixed(3)} / ${h.pacedP50!.toFixed(3)} ms, p99 ${d.pacedP99!.toFixed(3)} / ${m.pacedP99!.toFixed(3)} / ${h.pacedP99!.toFixed(3)} ms (direct / nodemesh / haproxy); nodemesh adds p50 ${(m.pacedP50! - d.pacedP50!).toFixed(3)} ms, p99 ${(m.pacedP99! - d.pacedP99!).toFixed(3)} ms`,
    );
    console.log(`  nodemesh proxy CPU per 1,000 req/s: ${m.connectCorePer1k!.toFixed(3)} core (new connections), ${m.persistentCorePer1k!.toFixed(3)} core (round trips); RSS ${rss.toFixed(0)} MiB`);
    const errs = paths.map((p) => results[p.name]!.connectErrors! + results[p.name]!.persistentErrors!).reduce((a, b) => a + b, 0);
    if (errs) console.log(`  (${errs} request errors in total)`);
  } finally {
    await stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
