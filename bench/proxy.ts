/**
 * The L4 data path benchmark (see docs/architecture.md, 'Performance
 * targets'), through a two-node lab on this machine, against HAProxy doing
 * the same work:
 *   - across nodes, pod n1-p2 -> pod n2-p1: directly; through nodemesh (the
 *     node proxy of n1, the mTLS tunnel, the node proxy of n2); through the
 *     fair peer, a pair of HAProxy instances (one per node, TLS 1.3 between
 *     them with client certificates, see ./haproxy); and through one
 *     plaintext HAProxy hop in n1;
 *   - on one node, pod n1-p1 -> pod n1-p2: directly, through nodemesh (one
 *     proxy, no tunnel), the same with the kernel fast path (MeshConfig
 *     sameNodeFastPath, switched on for that path only) and through one
 *     HAProxy hop, its fair peer;
 *   - per path: one TCP stream (iperf3), a new connection per request and
 *     round trips on 16 connections (64 B each way, with p99), 1 KB
 *     request/response at 1,000/s (latency), and the CPU of the path's proxies
 *     per 1,000 requests/s;
 *   - the node proxies' memory: idle, per idle connection with N held across
 *     nodes, and how soon it and the BPF maps are back after they close
 *     (./proxy-memory).
 * Every figure is the median of --runs runs (paths interleaved, so the
 * machine's load spreads over all of them) with the min–max; every run is
 * written to bench/results/<date-time>.json as it ends (with the failed step,
 * if one fails).
 *
 *   npm run bench [-- --seconds 2 --runs 3 --connections 10000 --settle 30]
 *   node dist/bench/proxy.js --runs 0     (the memory phase alone, about a minute)
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import { ControllerClient } from '../src/controller/client';
import { labDown, labSpawn, labUp, podWorkload, type LabState } from '../src/lab';
import { adminGet } from '../src/node-proxy/admin';
import { Datapath } from '../src/node-proxy/datapath';
import { PROXY_ENV } from '../src/node-proxy/memory-reclaim';
import { PACKAGE_ROOT } from '../src/paths';
import { cpuSeconds, DeadlineError, listeningPorts, onExit, rss, until, withDeadline } from './common';
import { makeCerts, originateConfig, plainConfig, startHaproxy, terminateConfig, type Forward } from './haproxy';
import { measureIdleConnections, type MemoryResult } from './proxy-memory';
import { memoryLines, sectionTable, summarize, type Metric, type RunRecord, type SectionDef } from './proxy-report';

const USAGE = 'usage: npm run bench [-- --seconds 2] [--runs 3] [--connections 10000] [--settle 30] [--name bench]';
const A = 'nodemesh.io/v1alpha1';
const BENCH = path.join(PACKAGE_ROOT, 'bench');
const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');
/** Service VIPs: sink selects n2-p1 (reached from n1-p2 across nodes), sink-local selects n1-p2 (from n1-p1 on its node; from n2-p2 in the memory phase). */
const VIP_CROSS = '198.19.0.60';
const VIP_SAME = '198.19.0.61';
/** The servers' ports: the mesh's (redirected to the proxy), and the direct ones every peer uses (excluded from redirection). */
const PORT = { iperf: 5201, rr: 7000, iperfDirect: 5202, rrDirect: 7001 };
/** HAProxy's listeners: the one hop across nodes and on the node, the pair's originating and terminating sides. */
const HOP_CROSS = { iperf: 15101, rr: 15102 };
const HOP_SAME = { iperf: 15121, rr: 15122 };
const PAIR_IN = { iperf: 15111, rr: 15112 };
const PAIR_TLS = { iperf: 15211, rr: 15212 };

/** The printed tables: their paths in column order and the fair peer each ratio is against. */
const SECTIONS: SectionDef[] = [
  {
    id: 'cross',
    title: `Across nodes: pod n1-p2 -> pod n2-p1. nodemesh: proxy n1, mTLS tunnel, proxy n2; HAProxy pair: n1 originates TLS 1.3 with a client certificate, n2 verifies and terminates it (mode tcp, nbthread 1 each); HAProxy hop: one plaintext instance in n1`,
    paths: [
      { id: 'direct', label: 'direct' },
      { id: 'nodemesh', label: 'nodemesh' },
      { id: 'haproxy-pair', label: 'HAProxy pair TLS' },
      { id: 'haproxy-hop', label: 'HAProxy hop' },
    ],
    peer: 'haproxy-pair',
    subject: 'nodemesh',
  },
  {
    id: 'same',
    title: `On one node: pod n1-p1 -> pod n1-p2. nodemesh: proxy n1 only (no tunnel); kernel fast path: the same with MeshConfig sameNodeFastPath on (the kernel copies, off by default); HAProxy hop: one plaintext instance in n1 (mode tcp, nbthread 1)`,
    paths: [
      { id: 'direct', label: 'direct' },
      { id: 'nodemesh', label: 'nodemesh' },
      { id: 'nodemesh-fast', label: 'kernel fast path' },
      { id: 'haproxy-hop', label: 'HAProxy hop' },
    ],
    peer: 'haproxy-hop',
    subject: 'nodemesh',
  },
];

function options(): { seconds: number; runs: number; connections: number; settleMs: number; name: string } {
  // --connections: idle connections held at once (half each way across nodes); 0 skips the memory phase. --runs 0: only the memory phase.
  let values;
  try {
    values = parseArgs({
      options: {
        seconds: { type: 'string', default: '2' },
        runs: { type: 'string', default: '3' },
        connections: { type: 'string', default: '10000' },
        settle: { type: 'string', default: '30' },
        name: { type: 'string', default: 'bench' },
      },
    }).values;
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${USAGE}`);
  }
  const int = (flag: 'seconds' | 'runs' | 'connections' | 'settle', min: number, max: number): number => {
    const n = Number(values[flag]);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${flag} must be a whole number from ${min} to ${max}, not ${JSON.stringify(values[flag])}\n${USAGE}`);
    return n;
  };
  return { seconds: int('seconds', 1, 600), runs: int('runs', 0, 50), connections: int('connections', 0, 30_000), settleMs: int('settle', 1, 3600) * 1000, name: values.name! };
}

/** The step running now, so a failure says which one. */
let step = 'starting';
const progress = (line: string): void => void process.stderr.write(`bench: ${line}\n`);
const begin = (s: string): void => {
  step = s;
  progress(s);
};

/** Runs argv in a lab pod or node to its end (within `ms`); its stdout. */
function run(lab: LabState, target: string, argv: string[], ms: number): Promise<string> {
  const child = labSpawn(lab, target, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-2000)));
  const what = (argv[0] === process.execPath ? argv.slice(1) : argv).map((a, i) => (i === 0 ? path.basename(a) : a)).join(' ');
  const done = new Promise<string>((resolve, reject) =>
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${what} in ${target} failed (exit ${code}): ${(err || out).trim()}`)))),
  );
  return withDeadline(done, ms, `${what} in ${target}`).catch((e: unknown) => {
    child.kill('SIGKILL');
    throw e;
  });
}

/** Starts a long-running server in a lab pod; killed at exit. */
function serve(lab: LabState, target: string, argv: string[]): ChildProcess {
  const child = labSpawn(lab, target, argv, { stdio: 'ignore' });
  onExit(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return child;
}

interface ProxyStatus {
  pid: number;
  ready: boolean;
}
const proxyStatus = async (lab: LabState, node: string): Promise<ProxyStatus> => JSON.parse(await adminGet(lab.mesh!.proxies.find((p) => p.node === node)!.adminSocket, '/status')) as ProxyStatus;

/** The hard RLIMIT_NOFILE this process (and so a proxy it starts) may raise its limit to. */
function hardFileLimit(): number {
  const m = /^Max open files\s+\S+\s+(\S+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
  return m?.[1] === 'unlimited' ? 1_048_576 : Number(m?.[1] ?? 1024);
}

/**
 * The listener bounds a proxy needs to carry `perProxy` connections as the
 * source's proxy and as many as the destination's, and the file descriptors
 * its start-up check counts for them (fdBudget in src/node-proxy/listeners/limits.ts:
 * two per outbound connection, one per tunnel stream, and the fixed parts at their defaults).
 */
function roomFor(perProxy: number): { room: number; fds: number } {
  const room = Math.max(4096, perProxy + 200);
  return { room, fds: 3 * room + 128 + 1024 + 2 * 64 + 2 * 64 + 1024 };
}

/**
 * Replaces a lab proxy by one with room for the idle-connection phase: the
 * same flags plus larger listener bounds and the file limit raised to the
 * hard one, through `nodemesh proxy --upgrade` (see docs/architecture.md,
 * 'Upgrades that drop nothing'), so the node never goes without a proxy. Its pid.
 */
async function roomyProxy(lab: LabState, node: string, room: number, dir: string): Promise<number> {
  const old = await proxyStatus(lab, node);
  const argv = fs.readFileSync(`/proc/${old.pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  // The runtime's flags (between it and the script) and the proxy's.
  const nodeFlags = argv.slice(1, argv.indexOf(BIN));
  const flags = argv.slice(argv.indexOf('proxy') + 1);
  const log = path.join(dir, `proxy-${node}.log`);
  const fd = fs.openSync(log, 'a');
  const r = String(room);
  const child = labSpawn(
    lab,
    node,
    ['prlimit', `--nofile=${hardFileLimit()}`, process.execPath, ...nodeFlags, BIN, 'proxy', ...flags, '--max-outbound-connections', r, '--max-outbound-connections-per-pod', r, '--max-tunnel-streams', r, '--upgrade', '--upgrade-drain', '5s'],
    { stdio: ['ignore', fd, fd], env: { ...PROXY_ENV } },
  );
  fs.closeSync(fd);
  onExit(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const text = (): string => fs.readFileSync(log, 'utf8');
  await until(
    `the proxy of ${node} taking over with room for ${room} connections each way (nodemesh proxy --upgrade)`,
    90_000,
    () => {
      if (child.exitCode !== null) throw new Error(`the new proxy of ${node} exited (${child.exitCode}) before taking over:\n${text().trim().split('\n').slice(-10).join('\n')}`);
      return /took over from pid \d+/.test(text()) ? true : undefined;
    },
    () => `  its log (${log}):\n${text().trim().split('\n').slice(-10).join('\n')}`,
    100,
  );
  const now = await until(`the new proxy of ${node} answering /status`, 10_000, async () => {
    const s = await proxyStatus(lab, node).catch(() => undefined);
    return s && s.pid === child.pid && s.ready ? s : undefined;
  });
  await until(`the old proxy of ${node} (pid ${old.pid}) exiting after the hand-over`, 30_000, () => (fs.existsSync(`/proc/${old.pid}`) ? undefined : true), () => '', 200);
  return now.pid;
}

interface PathDef {
  section: 'cross' | 'same';
  id: string;
  client: string;
  iperf: [string, number];
  rr: [string, number];
  /** The processes doing the path's proxying, whose CPU is counted. */
  pids: number[];
  /** Measured with MeshConfig sameNodeFastPath on (switched back off after). */
  fastPath?: boolean;
}

/** Switches MeshConfig sameNodeFastPath and waits (bounded) until `node`'s proxy says it took it. */
async function fastPath(lab: LabState, node: string, on: boolean): Promise<void> {
  step = `MeshConfig sameNodeFastPath ${on ? 'on' : 'off'}`;
  const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials);
  try {
    await admin.apply([{ source: 'bench', index: 1, json: JSON.stringify({ apiVersion: A, kind: 'MeshConfig', metadata: { name: 'default' }, spec: { sameNodeFastPath: on } }) }]);
  } finally {
    admin.close();
  }
  const said = async (): Promise<{ available: boolean; enabled?: boolean; error?: string } | undefined> =>
    ((await proxyStatus(lab, node)) as ProxyStatus & { fastPath?: { available: boolean; enabled?: boolean; error?: string } }).fastPath;
  const f = await said();
  if (on && f && !f.available) throw new Error(`the proxy of ${node} has no fast path: ${f.error ?? 'see its log'}`);
  await until(`the proxy of ${node} taking sameNodeFastPath ${on}`, 10_000, async () => ((await said())?.enabled === on ? true : undefined));
}

async function measurePath(lab: LabState, p: PathDef, seconds: number): Promise<Partial<Record<Metric, number>>> {
  const f: Partial<Record<Metric, number>> = {};
  const ms = (seconds + 30) * 1000;
  const label = `${p.section === 'cross' ? 'across nodes' : 'on one node'}, ${p.id}`;
  step = `iperf3 ${label} (${p.iperf.join(':')})`;
  const iperf = JSON.parse(await run(lab, p.client, ['iperf3', '-c', p.iperf[0], '-p', String(p.iperf[1]), '-t', String(seconds), '-J'], ms)) as { end?: { sum_received?: { bits_per_second: number } }; error?: string };
  if (!iperf.end?.sum_received) throw new Error(`iperf3 to ${p.id} (${p.iperf.join(':')}) gave no result: ${iperf.error ?? 'no sum_received'}`);
  f.gbps = iperf.end.sum_received.bits_per_second / 1e9;
  const rr = async (conc: number, mode: string): Promise<{ requests: number; seconds: number; errors: number; p50Ms: number; p99Ms: number }> =>
    JSON.parse(await run(lab, p.client, [process.execPath, path.join(BENCH, 'rr-client.js'), p.rr[0], String(p.rr[1]), String(seconds), String(conc), mode], ms)) as {
      requests: number;
      seconds: number;
      errors: number;
      p50Ms: number;
      p99Ms: number;
    };
  step = `1 KB at 1,000/s ${label} (${p.rr.join(':')})`;
  const paced = await rr(1, 'paced');
  f.pacedP50 = paced.p50Ms;
  f.pacedP99 = paced.p99Ms;
  f.pacedRps = paced.requests / paced.seconds;
  let errors = paced.errors;
  for (const mode of ['connect', 'persistent'] as const) {
    step = `${mode === 'connect' ? 'new connection per request' : 'round trips'} ${label} (${p.rr.join(':')})`;
    const before = p.pids.map(cpuSeconds);
    const out = await rr(16, mode);
    const cpu = p.pids.reduce((sum, pid, i) => sum + cpuSeconds(pid) - before[i]!, 0) / out.seconds;
    const rps = out.requests / out.seconds;
    f[`${mode}Rps`] = rps;
    f[`${mode}P99`] = out.p99Ms;
    if (p.pids.length) f[`${mode}CorePer1k`] = cpu / (rps / 1000);
    errors += out.errors;
  }
  f.errors = errors;
  return f;
}

/** How busy the whole machine was over a stretch: from /proc/stat. */
function cpuBusy(): () => { busyCores: number; loadavgAtStart: number[]; loadavg: number[] } {
  const loadAtStart = os.loadavg();
  const read = (): { busy: number; total: number } => {
    const c = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const idle = c[3]! + c[4]!;
    const total = c.reduce((a, b) => a + b, 0);
    return { busy: total - idle, total };
  };
  const a = read();
  return () => {
    const b = read();
    return { busyCores: ((b.busy - a.busy) / (b.total - a.total)) * os.cpus().length, loadavgAtStart: loadAtStart, loadavg: os.loadavg() };
  };
}

async function main(): Promise<void> {
  const opts = options();
  const started = new Date();
  const wallStart = Date.now();
  if (process.getuid?.() !== 0) throw new Error('the L4 benchmark runs a lab: run it as root (sudo npm run bench)');
  for (const tool of ['iperf3', 'haproxy', 'openssl', 'prlimit']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`${tool} is missing: npm run bench installs it (apt-get install ${tool === 'prlimit' ? 'util-linux' : tool})`);
  }
  const NAME = opts.name;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-bench-'));
  onExit(() => fs.rmSync(dir, { recursive: true, force: true }));
  const machine = cpuBusy();
  const results = path.join(BENCH, 'results');
  fs.mkdirSync(results, { recursive: true });
  // ISO 8601 basic format: sortable, and no ':' in a file name.
  const file = path.join(results, `${started.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}.json`);
  const runs: RunRecord[] = [];
  /** What the results file holds; written after every run, so a benchmark that fails or is stopped leaves the runs it made. */
  const record: Record<string, unknown> & { machine: Record<string, unknown> } = {
    benchmark: 'proxy',
    startedAt: started.toISOString(),
    complete: false,
    options: opts,
    machine: { cores: os.cpus().length, cpu: os.cpus()[0]?.model, kernel: os.release(), node: process.version, haproxy: spawnSync('haproxy', ['-v'], { encoding: 'utf8' }).stdout.split('\n')[0] },
    sections: SECTIONS,
    runs,
  };
  const save = (): void => fs.writeFileSync(file, `${JSON.stringify(record, null, 2)}\n`);
  onExit(() => {
    if (record.complete || record.failed) return;
    record.failed = { step, error: 'ended before it finished (a signal, or a failure before the lab was up)' };
    save();
  });

  begin(`starting a two-node lab "${NAME}" with its controller and proxies`);
  await labDown(NAME);
  // Registered before up: an interrupted up is swept too. At exit only synchronous work runs: sweep from a child process.
  let down = false;
  onExit(() => {
    if (!down) spawnSync(process.execPath, [BIN, 'lab', 'down', '--name', NAME], { stdio: 'inherit' });
  });
  const lab = await labUp({ name: NAME, nodes: 2, podsPerNode: 2, mesh: true });
  try {
    const [n1, n2] = lab.nodes as [LabState['nodes'][number], LabState['nodes'][number]];
    const pod = (name: string): LabState['pods'][number] => lab.pods.find((p) => p.name === name)!;
    const cross = pod('n2-p1');
    const same = pod('n1-p2');

    begin('applying the Services sink (n2-p1) and sink-local (n1-p2)');
    const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials);
    try {
      const docs: unknown[] = [];
      for (const [p, role, vip] of [[cross, 'sink', VIP_CROSS], [same, 'sink-local', VIP_SAME]] as const) {
        const w = podWorkload(lab, p) as { metadata: { labels: Record<string, string> } };
        w.metadata.labels.role = role;
        docs.push(w, { apiVersion: A, kind: 'Service', metadata: { name: role, namespace: 'default' }, spec: { selector: { role }, addresses: [vip], ports: [{ port: PORT.iperf }, { port: PORT.rr }] } });
      }
      await admin.apply(docs.map((d, i) => ({ source: 'bench', index: i + 1, json: JSON.stringify(d) })));
    } finally {
      admin.close();
    }

    // Half the idle connections go each way across nodes, so each proxy is the source's for half and the destination's for the other half.
    const half = Math.ceil(opts.connections / 2);
    const { room, fds } = roomFor(half);
    if (fds > hardFileLimit())
      throw new Error(`--connections ${opts.connections} needs proxies that may open ${fds} files, over this machine's hard limit of ${hardFileLimit()} (ulimit -Hn; raising it needs CAP_SYS_RESOURCE): lower --connections`);
    begin(`upgrading both node proxies to ones with room for ${room} connections each way`);
    const pid1 = await roomyProxy(lab, n1.name, room, dir);
    const pid2 = await roomyProxy(lab, n2.name, room, dir);

    // Direct paths and HAProxy's listeners use ports the data path never redirects.
    const dp = Datapath.open(n1.name);
    try {
      for (const p of [PORT.iperfDirect, PORT.rrDirect, ...Object.values(HOP_CROSS), ...Object.values(HOP_SAME), ...Object.values(PAIR_IN)]) dp.excludePort(p);
    } finally {
      dp.close();
    }

    begin('starting the servers (iperf3, echo) in n2-p1 and n1-p2');
    const servers: [string, ChildProcess, number[]][] = [];
    for (const p of [cross, same]) {
      servers.push([p.name, serve(lab, p.name, ['iperf3', '-s', '-p', String(PORT.iperf)]), [PORT.iperf]]);
      servers.push([p.name, serve(lab, p.name, ['iperf3', '-s', '-p', String(PORT.iperfDirect)]), [PORT.iperfDirect]]);
      servers.push([p.name, serve(lab, p.name, [process.execPath, path.join(BENCH, 'rr-server.js'), String(PORT.rr), String(PORT.rrDirect)]), [PORT.rr, PORT.rrDirect]]);
    }
    for (const [where, child, ports] of servers)
      await until(`a server in ${where} listening on ${ports.join(', ')}`, 10_000, () => {
        if (child.exitCode !== null) throw new Error(`a server in ${where} (ports ${ports.join(', ')}) exited (${child.exitCode})`);
        const open = listeningPorts(child.pid!);
        return ports.every((p) => open.has(p)) ? true : undefined;
      });

    begin('making the throwaway CA and certificates; starting HAProxy: one hop in n1, the TLS pair in n1 and n2');
    const certs = makeCerts(dir);
    const fw = (name: string, bind: string, port: number, to: string, toPort: number): Forward => ({ name, bind, port, to, toPort });
    const hopF = [
      fw('cross-iperf', n1.ip, HOP_CROSS.iperf, cross.ip, PORT.iperfDirect),
      fw('cross-rr', n1.ip, HOP_CROSS.rr, cross.ip, PORT.rrDirect),
      fw('same-iperf', n1.ip, HOP_SAME.iperf, same.ip, PORT.iperfDirect),
      fw('same-rr', n1.ip, HOP_SAME.rr, same.ip, PORT.rrDirect),
    ];
    const originF = [fw('iperf', n1.ip, PAIR_IN.iperf, n2.ip, PAIR_TLS.iperf), fw('rr', n1.ip, PAIR_IN.rr, n2.ip, PAIR_TLS.rr)];
    const terminateF = [fw('iperf', n2.ip, PAIR_TLS.iperf, cross.ip, PORT.iperfDirect), fw('rr', n2.ip, PAIR_TLS.rr, cross.ip, PORT.rrDirect)];
    const haproxies = [
      await startHaproxy(lab, n1.name, 'hop-n1', plainConfig(hopF), hopF, dir),
      await startHaproxy(lab, n1.name, 'originate-n1', originateConfig(originF, certs), originF, dir),
      await startHaproxy(lab, n2.name, 'terminate-n2', terminateConfig(terminateF, certs), terminateF, dir),
    ];
    for (const h of haproxies)
      onExit(() => {
        if (h.child.exitCode === null) h.child.kill('SIGKILL');
      });
    const [hop, originate, terminate] = haproxies as [(typeof haproxies)[number], (typeof haproxies)[number], (typeof haproxies)[number]];

    const paths: PathDef[] = [
      { section: 'cross', id: 'direct', client: 'n1-p2', iperf: [cross.ip, PORT.iperfDirect], rr: [cross.ip, PORT.rrDirect], pids: [] },
      { section: 'cross', id: 'nodemesh', client: 'n1-p2', iperf: [VIP_CROSS, PORT.iperf], rr: [VIP_CROSS, PORT.rr], pids: [pid1, pid2] },
      { section: 'cross', id: 'haproxy-pair', client: 'n1-p2', iperf: [n1.ip, PAIR_IN.iperf], rr: [n1.ip, PAIR_IN.rr], pids: [originate.pid, terminate.pid] },
      { section: 'cross', id: 'haproxy-hop', client: 'n1-p2', iperf: [n1.ip, HOP_CROSS.iperf], rr: [n1.ip, HOP_CROSS.rr], pids: [hop.pid] },
      { section: 'same', id: 'direct', client: 'n1-p1', iperf: [same.ip, PORT.iperfDirect], rr: [same.ip, PORT.rrDirect], pids: [] },
      { section: 'same', id: 'nodemesh', client: 'n1-p1', iperf: [VIP_SAME, PORT.iperf], rr: [VIP_SAME, PORT.rr], pids: [pid1] },
      { section: 'same', id: 'nodemesh-fast', client: 'n1-p1', iperf: [VIP_SAME, PORT.iperf], rr: [VIP_SAME, PORT.rr], pids: [pid1], fastPath: true },
      { section: 'same', id: 'haproxy-hop', client: 'n1-p1', iperf: [n1.ip, HOP_SAME.iperf], rr: [n1.ip, HOP_SAME.rr], pids: [hop.pid] },
    ];
    // Idle means after the proxy's own start-up clean-up (its first memory reclaim, 2 s after ready; see src/node-proxy/memory-reclaim.ts), if it says it made one within 10 s.
    begin('waiting for both proxies to settle after their start (their first memory reclaim in /status)');
    for (const node of [n1.name, n2.name])
      await until(`the proxy of ${node} settling`, 10_000, async () => (((await proxyStatus(lab, node)) as ProxyStatus & { memory?: { reclaims?: number } }).memory?.reclaims ?? 0) >= 1 || undefined).catch(() => undefined);
    const idleRss = { [n1.name]: rss(pid1), [n2.name]: rss(pid2) };
    const idle = Object.fromEntries(Object.entries(idleRss).map(([n, r]) => [n, r.now]));
    const idleSplit = Object.fromEntries(Object.entries(idleRss).map(([n, r]) => [n, { anon: r.anon, file: r.file }]));

    let memory: MemoryResult | undefined;
    if (opts.connections > 0) {
      begin(`memory: ${opts.connections} idle connections across nodes through the mesh`);
      memory = await measureIdleConnections(
        lab,
        [
          { client: 'n1-p2', host: VIP_CROSS, port: PORT.rr, count: half },
          { client: 'n2-p2', host: VIP_SAME, port: PORT.rr, count: opts.connections - half },
        ],
        [{ node: n1.name, pid: pid1 }, { node: n2.name, pid: pid2 }],
        opts.settleMs,
        progress,
      );
    }

    record.memory = memory;
    save();
    for (let r = 1; r <= opts.runs; r++) {
      for (const p of paths) {
        begin(`run ${r}/${opts.runs}: ${p.section === 'cross' ? 'across nodes' : 'on one node'}, ${p.id}`);
        if (p.fastPath) await fastPath(lab, n1.name, true);
        const startedAt = new Date().toISOString();
        runs.push({ section: p.section, path: p.id, run: r, startedAt, figures: await measurePath(lab, p, opts.seconds) });
        if (p.fastPath) await fastPath(lab, n1.name, false);
        save();
      }
    }
    const afterRuns = { [n1.name]: rss(pid1).now, [n2.name]: rss(pid2).now };
    const busy = machine();

    const summary = summarize(runs);
    const out: string[] = [];
    // --runs 0: the memory phase alone (a quick look while working on it); no table.
    if (opts.runs > 0) out.push(
      `L4 benchmark: median of ${opts.runs} runs (min–max), ${opts.seconds} s per measurement, ${os.cpus().length} cores; the machine was busy ${busy.busyCores.toFixed(2)} cores on average over the benchmark (this one included), load average ${busy.loadavgAtStart.map((x) => x.toFixed(2)).join(' ')} at the start, ${busy.loadavg.map((x) => x.toFixed(2)).join(' ')} at the end`,
    );
    if (opts.runs > 0) for (const s of SECTIONS) out.push('', ...sectionTable(s, summary));
    if (opts.runs > 0) out.push(
      '',
      '  rates: higher is better; latency and CPU: lower. Proxy CPU counts the path\'s proxies: both node proxies or both HAProxy instances across nodes.',
      '  HAProxy mode http (the L7 comparison) is not measured yet: nodemesh has no L7 (docs/architecture.md, \'Not built yet\').',
    );
    if (memory) out.push('', ...memoryLines(memory, idle, afterRuns, idleSplit));
    console.log(out.join('\n'));

    Object.assign(record, { complete: true, wallSeconds: (Date.now() - wallStart) / 1000, summary, machine: { ...record.machine, ...busy }, memory: memory && { ...memory, idleMiB: idle, idleSplitMiB: idleSplit, afterRunsMiB: afterRuns } });
    save();
    console.log(`\n  every run: ${path.relative(process.cwd(), file)} (${((Date.now() - wallStart) / 1000).toFixed(0)} s in all)`);
  } catch (err) {
    record.failed = { step, error: err instanceof Error ? err.message : String(err) };
    save();
    throw err;
  } finally {
    const r = await labDown(NAME);
    down = true;
    if (r.errors.length) console.error(`bench: lab down ${NAME}: ${r.errors.join('; ')}`);
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    const why = err instanceof DeadlineError || err instanceof Error ? err.message : String(err);
    console.error(`L4 benchmark FAILED at "${step}": ${why}`);
    process.exit(1);
  },
);
