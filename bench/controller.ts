/**
 * Controller push benchmark (issue 10: 100 node streams at 10,000 and 50,000
 * workloads, 10 per service). For each size: a real controller process on
 * loopback, the workloads and services applied in requests of at most 1,000
 * documents, 100 simulated nodes joined (each with its own key, certificate
 * and config stream, all in this process), then per change the time from the
 * apply call to every affected node holding the version it produced.
 *
 * Every wait has a deadline. When one runs out the benchmark prints what did
 * not happen (which nodes do not hold which version, what they hold, whether
 * their stream is connected, their last stream error, and the controller's
 * view of them), cleans up and exits 1.
 *
 *   npm run bench:controller [-- --workloads 10000] [--nodes 100 --per-service 10 --samples 100]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import * as v8 from 'node:v8';

import type { NodeStatusMessage } from '../src/api/proto';
import { spiffeNodeId } from '../src/controller/ca';
import { ControllerClient, loadCredentials } from '../src/controller/client';
import { generateKeyAndCsr } from '../src/node-proxy/identity';
import { ConfigStream } from '../src/node-proxy/state';
import { PACKAGE_ROOT } from '../src/paths';
import { cpuSeconds, DeadlineError, fetchText, metricSample, mib, ms, onExit, pct, rss, withDeadline } from './common';

const USAGE = 'usage: npm run bench:controller [-- --workloads N (one size; default both 10000 and 50000)] [--services N] [--per-service 10] [--nodes 100] [--samples 100] [--snapshot-deadline 180] [--change-deadline 10] [--join-deadline 120]';

function options(): {
  sizes: { workloads: number; services: number }[];
  nodes: number;
  samples: number;
  snapshotDeadlineMs: number;
  changeDeadlineMs: number;
  joinDeadlineMs: number;
} {
  let values;
  try {
    values = parseArgs({
      options: {
        workloads: { type: 'string' },
        services: { type: 'string' },
        'per-service': { type: 'string', default: '10' },
        nodes: { type: 'string', default: '100' },
        samples: { type: 'string', default: '100' },
        'snapshot-deadline': { type: 'string', default: '180' },
        'change-deadline': { type: 'string', default: '10' },
        'join-deadline': { type: 'string', default: '120' },
      },
    }).values;
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${USAGE}`);
  }
  const int = (flag: keyof typeof values, min = 1): number => {
    const n = Number(values[flag]);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${flag} must be a whole number of at least ${min}, not ${JSON.stringify(values[flag])}\n${USAGE}`);
    return n;
  };
  const perService = int('per-service');
  const sizes = (values.workloads ? [int('workloads')] : [10_000, 50_000]).map((workloads) => ({
    workloads,
    services: values.services ? int('services') : Math.max(1, Math.ceil(workloads / perService)),
  }));
  for (const s of sizes) {
    if (s.services > s.workloads) throw new Error(`--services (${s.services}) must not exceed --workloads (${s.workloads}): every service selects at least one workload\n${USAGE}`);
    // The address plans below: 250 per /24 of 198.18.0.0/16 and 198.19.0.0/16.
    if (s.workloads > 64_000 || s.services > 64_000) throw new Error(`at most 64000 workloads and services (their addresses come from 198.18.0.0/16 and 198.19.0.0/16)\n${USAGE}`);
  }
  // The simulated nodes each hold every item, about 1 KiB apiece in this process (4.8 GiB at 100 x 55,000): refuse up front rather than die out of memory, which runs no cleanup.
  const nodes = int('nodes');
  const needMiB = Math.max(...sizes.map((s) => (nodes * (s.workloads + s.services)) / 1024));
  const heapMiB = v8.getHeapStatistics().heap_size_limit / 2 ** 20;
  if (needMiB > heapMiB * 0.9)
    throw new Error(
      `the ${nodes} simulated nodes need about ${(needMiB / 1024).toFixed(1)} GiB of heap in this process, over its limit of ${(heapMiB / 1024).toFixed(1)} GiB: run it as node --max-old-space-size=${Math.ceil((needMiB * 1.5) / 1024) * 1024} dist/bench/controller.js (npm run bench:controller gives 8 GiB), or with fewer --nodes or --workloads`,
    );
  return {
    sizes,
    nodes,
    samples: int('samples'),
    snapshotDeadlineMs: int('snapshot-deadline') * 1000,
    changeDeadlineMs: int('change-deadline') * 1000,
    joinDeadlineMs: int('join-deadline') * 1000,
  };
}

const A = 'nodemesh.io/v1alpha1';
const APPLY_MAX = 1000; // the controller's limit of documents per request

/** Issue 10's targets: at 10,000 workloads p99 ≤ 100 ms for both; at 50,000 readiness p99 ≤ 250 ms, policy ≤ 100 ms, RSS ≤ 1 GiB. */
function targetsFor(workloads: number): { at: number; readinessP99: number; policyP99: number; rssMiB?: number } {
  return workloads <= 10_000 ? { at: 10_000, readinessP99: 100, policyP99: 100 } : { at: 50_000, readinessP99: 250, policyP99: 100, rssMiB: 1024 };
}

interface SimNode {
  name: string;
  stream: ConfigStream;
  client: ControllerClient;
  /** Streams that ended after the controller had answered on them. */
  errors: number;
  lastNack?: { version: number; reason: string };
}

/** The controller as a child process; its stderr's last lines are kept for a failure report. */
class ControllerProcess {
  readonly dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-bench-'));
  readonly child: ChildProcess;
  readonly #stderr: string[] = [];
  metricsPort = 0;
  #closed = false;

  constructor(nodes: number) {
    // Every simulated node connects from 127.0.0.1, where real nodes each have their own address: the per-peer bounds are raised to the node count.
    const perPeer = String(nodes + 16);
    this.child = spawn(
      process.execPath,
      [path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js'), 'controller', '--data-dir', this.dataDir, '--listen', '127.0.0.1:0', '--metrics-listen', '127.0.0.1:0', '--log-level', 'warn', '--max-connections-per-peer', perPeer, '--max-handshakes-per-peer', perPeer],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child.stderr!.on('data', (d: Buffer) => {
      this.#stderr.push(...d.toString().split('\n').filter(Boolean));
      this.#stderr.splice(0, Math.max(0, this.#stderr.length - 20));
    });
    onExit(() => this.close());
  }

  get pid(): number {
    return this.child.pid!;
  }

  async started(deadlineMs: number): Promise<void> {
    let out = '';
    await withDeadline(
      new Promise<void>((resolve, reject) => {
        this.child.stdout!.on('data', (d: Buffer) => {
          out += d.toString();
          const m = /controller serving on port \d+ \(metrics (\d+)\)/.exec(out);
          if (m) {
            this.metricsPort = Number(m[1]);
            resolve();
          }
        });
        this.child.once('exit', (code, sig) => reject(new Error(`the controller exited (${code ?? sig}) before serving:\n${this.stderrTail()}`)));
      }),
      deadlineMs,
      'controller start ("controller serving" on its stdout)',
    );
  }

  stderrTail(): string {
    return this.#stderr.length ? this.#stderr.map((l) => `    ${l.length > 400 ? `${l.slice(0, 400)}…` : l}`).join('\n') : '    (nothing on stderr)';
  }

  async metrics(): Promise<string> {
    return fetchText(`http://127.0.0.1:${this.metricsPort}/metrics`);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** Thrown when a wait ran out: the report is already printed. */
class BenchFailed extends Error {}

async function runSize(opts: ReturnType<typeof options>, size: { workloads: number; services: number }): Promise<void> {
  const { nodes: NODES, samples: SAMPLES } = opts;
  const { workloads: WORKLOADS, services: SERVICES } = size;
  const progress = (l: string): void => void process.stderr.write(`bench: [${WORKLOADS} workloads] ${l}\n`);

  const workload = (i: number, ready?: boolean) => ({
    apiVersion: A,
    kind: 'Workload',
    metadata: { name: `w${i}`, namespace: 'bench', labels: { app: `svc-${i % SERVICES}` } },
    spec: { node: `node-${nodeOf(i)}`, serviceAccount: `sa-${i % SERVICES}`, addresses: [`198.18.${Math.floor(i / 250)}.${(i % 250) + 1}`], ...(ready === undefined ? {} : { ready }) },
  });
  const service = (s: number) => ({
    apiVersion: A,
    kind: 'Service',
    metadata: { name: `svc-${s}`, namespace: 'bench' },
    spec: { selector: { app: `svc-${s}` }, addresses: [`198.19.${Math.floor(s / 250)}.${(s % 250) + 1}`], ports: [{ port: 80, appProtocol: 'http' }] },
  });
  const policy = (s: number, port: string) => ({
    apiVersion: A,
    kind: 'AuthorizationPolicy',
    metadata: { name: `deny-${s}`, namespace: 'bench' },
    spec: { selector: { matchLabels: { app: `svc-${s}` } }, action: 'DENY', rules: [{ to: [{ operation: { ports: [port] } }] }] },
  });
  // Workload i runs app i % SERVICES; an app's replicas go to consecutive nodes, so a policy reaches as many nodes as its app has replicas (up to NODES).
  const nodeOf = (i: number): number => (i + Math.floor(i / SERVICES)) % NODES;
  // The nodes each app runs on, worked out once.
  const nodesOfApp: Set<number>[] = Array.from({ length: SERVICES }, () => new Set());
  for (let i = 0; i < WORKLOADS; i++) nodesOfApp[i % SERVICES]!.add(nodeOf(i));

  const ctl = new ControllerProcess(NODES);
  const sims: SimNode[] = [];
  const clients: ControllerClient[] = [];
  const closeNodes = (): void => {
    for (const s of sims) s.stream.stop();
    for (const c of clients) c.close();
  };
  onExit(closeNodes);

  const cpu: { phase: string; cpu: number; wall: number }[] = [];
  let mark = { cpu: 0, at: Date.now() };
  const phase = (name: string): void => {
    const now = { cpu: cpuSeconds(ctl.pid), at: Date.now() };
    cpu.push({ phase: name, cpu: now.cpu - mark.cpu, wall: (now.at - mark.at) / 1000 });
    mark = now;
  };

  /** Groups nodes by what they hold, whether connected, and their last error; one line per group. */
  const describe = (missing: SimNode[], version: number, view?: Map<string, NodeStatusMessage>): string => {
    const groups = new Map<string, SimNode[]>();
    for (const s of missing) {
      const c = view?.get(s.name);
      const link = s.stream.link;
      const part = s.stream.state.receiving;
      const key = [
        `holds version ${s.stream.state.version}`,
        part ? `receiving ${part.type} ${part.version} (of ${part.totalItems} items)` : '',
        link.connected ? 'stream connected' : 'stream not connected',
        link.lastError ? `last stream error: "${link.lastError}"` : 'no stream error',
        s.lastNack ? `refused version ${s.lastNack.version}: "${s.lastNack.reason}"` : '',
        c ? `controller: ${c.connected ? 'connected' : 'not connected'}, sent ${c.sentVersion}, acked ${c.ackedVersion}${c.nackReason ? `, nack "${c.nackReason}"` : ''}` : view ? 'controller: unknown node' : '',
      ]
        .filter(Boolean)
        .join(', ');
      groups.set(key, [...(groups.get(key) ?? []), s]);
    }
    const names = (xs: SimNode[]): string => xs.slice(0, 12).map((s) => s.name).join(', ') + (xs.length > 12 ? ` and ${xs.length - 12} more` : '');
    const lines = [`  ${missing.length} of ${sims.length} nodes do not hold version ${version}:`];
    // Counts that differ from node to node go after the group, as a range.
    const range = (xs: number[], what: string): string => {
      const lo = Math.min(...xs);
      const hi = Math.max(...xs);
      return hi === 0 ? '' : `; ${lo === hi ? lo : `${lo} to ${hi}`} ${what}`;
    };
    for (const [key, xs] of groups) {
      lines.push(
        `    ${xs.length} node${xs.length === 1 ? '' : 's'} (${names(xs)}): ${key}` +
          range(xs.map((s) => s.stream.state.receiving?.items ?? 0), 'items received so far') +
          range(xs.map((s) => s.stream.link.failures), 'failed streams in a row') +
          range(xs.map((s) => s.errors), 'disconnects after the controller had answered'),
      );
    }
    return lines.join('\n');
  };

  /** Prints what did not happen (with the controller's view of the nodes), cleans up, and fails the run. */
  const fail = async (err: unknown, missing: () => { nodes: SimNode[]; version: number } | undefined): Promise<never> => {
    const m = missing();
    let view: Map<string, NodeStatusMessage> | undefined;
    let viewError = '';
    const running = ctl.child.exitCode === null && ctl.child.signalCode === null;
    if (m && ctl.metricsPort && running) {
      try {
        const admin = ControllerClient.fromCredentials(path.join(ctl.dataDir, 'admin.json'), { timeoutMs: 5000 });
        try {
          view = new Map((await admin.listNodes()).map((n) => [n.node, n]));
        } finally {
          admin.close();
        }
      } catch (e) {
        viewError = `  (the controller's ListNodes failed: ${(e as Error).message})`;
      }
    }
    let connectedMetric = '';
    if (running) try {
      const v = metricSample(await ctl.metrics(), 'nodemesh_controller_connected_nodes');
      if (v !== undefined) connectedMetric = `  controller metric nodemesh_controller_connected_nodes ${v}`;
    } catch {
      // the controller may be gone; its stderr below says why
    }
    const what = err instanceof DeadlineError ? err.message.split('\n')[0] : err instanceof Error ? err.message : String(err);
    console.log(`controller push benchmark FAILED at ${WORKLOADS} workloads, ${SERVICES} services, ${NODES} nodes: ${what}`);
    if (m) console.log(describe(m.nodes, m.version, view));
    if (viewError) console.log(viewError);
    if (connectedMetric) console.log(connectedMetric);
    console.log(`  controller ${running ? `pid ${ctl.pid} running` : `exited (${ctl.child.exitCode ?? ctl.child.signalCode})`}; last lines of its stderr:\n${ctl.stderrTail()}`);
    throw new BenchFailed(what);
  };

  /** Resolves once every node of `targets` holds `version`; a DeadlineError after `deadlineMs`. */
  const held = (targets: SimNode[], version: number, deadlineMs: number, what: string): Promise<void> => {
    const pending = new Set(targets.filter((s) => s.stream.state.version < version));
    if (!pending.size) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const offs: (() => void)[] = [];
      const done = (err?: Error): void => {
        clearTimeout(timer);
        for (const off of offs) off();
        if (err) reject(err);
        else resolve();
      };
      for (const s of pending) {
        const l = (): void => {
          if (s.stream.state.version >= version && pending.delete(s) && pending.size === 0) done();
        };
        s.stream.on('update', l);
        offs.push(() => s.stream.off('update', l));
      }
      const timer = setTimeout(() => done(new DeadlineError(`${what}: ${pending.size} of ${targets.length} nodes did not hold version ${version}`, deadlineMs)), deadlineMs);
    });
  };
  let awaiting: { nodes: SimNode[]; version: number } | undefined;
  const missingNow = (): { nodes: SimNode[]; version: number } | undefined =>
    awaiting && { nodes: awaiting.nodes.filter((s) => s.stream.state.version < awaiting!.version), version: awaiting.version };

  try {
    progress(`starting a controller for ${NODES} nodes`);
    await ctl.started(30_000).catch((e: unknown) => fail(e, () => undefined));
    phase('start');
    const idle = rss(ctl.pid);
    const credsFile = path.join(ctl.dataDir, 'admin.json');
    const creds = loadCredentials(credsFile);
    const admin = ControllerClient.fromCredentials(credsFile, { timeoutMs: 120_000 });
    clients.push(admin);

    // Load, in requests of at most APPLY_MAX documents.
    progress(`applying ${SERVICES} services and ${WORKLOADS} workloads`);
    let t0 = Date.now();
    const total = SERVICES + WORKLOADS;
    const nth = (k: number): unknown => (k < SERVICES ? service(k) : workload(k - SERVICES));
    let applies = 0;
    let version = 0;
    for (let k = 0; k < total; k += APPLY_MAX) {
      const docs = [];
      for (let j = k; j < Math.min(total, k + APPLY_MAX); j++) docs.push({ source: 'bench', index: j - k + 1, json: JSON.stringify(nth(j)) });
      version = (await admin.apply(docs).catch((e: unknown) => fail(e, () => undefined))).version;
      applies++;
    }
    const loadMs = Date.now() - t0;
    phase('load');
    const loaded = rss(ctl.pid);

    // Join: a token, a key and a certificate per node.
    progress(`joining ${NODES} nodes`);
    t0 = Date.now();
    const anon = new ControllerClient({ address: creds.controller, ca: creds.ca });
    clients.push(anon);
    await withDeadline(
      (async () => {
        for (let n = 0; n < NODES; n++) {
          const name = `node-${n}`;
          const { token } = await admin.createToken(name);
          const { keyPem, csrPem } = await generateKeyAndCsr(spiffeNodeId('cluster.local', name));
          const cert = await anon.join(token, name, csrPem);
          const client = new ControllerClient({ address: creds.controller, ca: cert.trustBundlePem, cert: cert.certificateChainPem, key: keyPem }, { timeoutMs: 120_000 });
          clients.push(client);
          const s: SimNode = { name, client, stream: new ConfigStream({ client, node: name }), errors: 0 };
          // Every stream that ended, connected or not ('disconnected' only comes for a stream that had answered).
          s.stream.on('disconnected', () => s.errors++);
          s.stream.on('nack', (version, reason) => (s.lastNack = { version, reason }));
          sims.push(s);
        }
      })(),
      opts.joinDeadlineMs,
      `joining ${NODES} nodes (token, key, certificate each)`,
    ).catch((e: unknown) => fail(e, () => undefined));
    const joinMs = Date.now() - t0;
    const sentBefore = metricSample(await ctl.metrics(), 'nodemesh_controller_config_sent_bytes_total', { type: 'snapshot' });

    progress(`starting ${NODES} config streams`);
    t0 = Date.now();
    for (const s of sims) s.stream.start();
    awaiting = { nodes: sims, version };
    await held(sims, version, opts.snapshotDeadlineMs, `snapshots after join (version ${version})`).catch((e: unknown) => fail(e, missingNow));
    const snapshotMs = Date.now() - t0;
    phase('join + snapshots');
    const connected = rss(ctl.pid);
    const sentAfter = metricSample(await ctl.metrics(), 'nodemesh_controller_config_sent_bytes_total', { type: 'snapshot' });
    const itemsPerNode = (sims[0]!.stream.state as { items?: { size: number } }).items?.size;

    /** Applies `v`; the time until every node of `targets` holds the version it made. */
    const measure = async (v: unknown, targets: SimNode[], what: string): Promise<number> => {
      const start = process.hrtime.bigint();
      const r = await admin.apply([{ source: 'bench', index: 1, json: JSON.stringify(v) }]).catch((e: unknown) => fail(e, () => undefined));
      awaiting = { nodes: targets, version: r.version };
      await held(targets, r.version, opts.changeDeadlineMs, what).catch((e: unknown) => fail(e, missingNow));
      return Number(process.hrtime.bigint() - start) / 1e6;
    };

    // (a) A workload changes readiness: its Service's endpoints change on every node.
    progress(`${SAMPLES} readiness changes`);
    const readiness: number[] = [];
    for (let k = 0; k < SAMPLES; k++) {
      const i = (k * 97) % WORKLOADS;
      readiness.push(await measure(workload(i, k % 2 === 1), sims, `readiness change of workload w${i} (sample ${k + 1})`));
    }
    phase('readiness changes');
    // (b) A policy for one app: only the nodes running that app's workloads.
    progress(`${SAMPLES} policies`);
    const policies: number[] = [];
    let policyNodes = 0;
    for (let k = 0; k < SAMPLES; k++) {
      const s = (k * 7) % SERVICES;
      const targets = [...nodesOfApp[s]!].map((n) => sims[n]!);
      policyNodes += targets.length;
      policies.push(await measure(policy(s, String(1000 + k)), targets, `policy deny-${s} for app svc-${s} (sample ${k + 1})`));
    }
    phase('policies');
    const after = rss(ctl.pid);

    readiness.sort((a, b) => a - b);
    policies.sort((a, b) => a - b);
    const dist = (xs: number[]): string => `p50 ${ms(pct(xs, 50))}, p99 ${ms(pct(xs, 99))}, max ${ms(xs.at(-1)!)}`;
    const sent = sentBefore === undefined || sentAfter === undefined ? undefined : (sentAfter - sentBefore) / NODES;
    const bytesLine =
      sent === undefined
        ? 'n/a (the controller does not export nodemesh_controller_config_sent_bytes_total{type="snapshot"})'
        : `${(sent / 2 ** 20).toFixed(2)} MiB per node, ${(sent / WORKLOADS).toFixed(0)} bytes per workload (a node's snapshot bytes over the ${WORKLOADS} workloads, its services included)`;
    const t = targetsFor(WORKLOADS);
    const verdict = (v: number, max: number): string => (v <= max ? 'pass' : 'MISS');
    const peak = Math.max(idle.peak, loaded.peak, connected.peak, after.peak);
    const out = [
      `controller push benchmark: ${NODES} node streams, ${WORKLOADS} workloads in ${SERVICES} services, ${SAMPLES} samples per change (${os.cpus().length} cores, nodes simulated in the benchmark process)`,
      `  load: ${total} objects in ${applies} applies of at most ${APPLY_MAX}, ${(loadMs / 1000).toFixed(1)} s`,
      `  join: ${NODES} nodes joined in ${(joinMs / 1000).toFixed(1)} s; all hold the snapshot (version ${version}${itemsPerNode === undefined ? '' : `, ${itemsPerNode} items per node`}) ${(snapshotMs / 1000).toFixed(1)} s after their streams started`,
      `  snapshot sent: ${bytesLine}`,
      `  workload readiness change -> all ${NODES} nodes hold it:       ${dist(readiness)}`,
      `  policy for one app -> the nodes running it (${(policyNodes / SAMPLES).toFixed(0)} on average): ${dist(policies)}`,
      `  controller RSS: idle ${mib(idle.now)}, loaded ${mib(loaded.now)}, ${NODES} nodes connected ${mib(connected.now)}, after the changes ${mib(after.now)}, peak ${mib(peak)}`,
      `  controller CPU (utime+stime): ${cpu.map((c) => `${c.phase} ${c.cpu.toFixed(1)} s in ${c.wall.toFixed(1)} s`).join(', ')}`,
      `  benchmark process (the ${NODES} simulated nodes): RSS ${mib(rss(process.pid).now)}, CPU ${cpuSeconds(process.pid).toFixed(1)} s`,
      `  targets (issue 10, at ${t.at.toLocaleString('en-US')} workloads${t.at === WORKLOADS ? '' : `; this run has ${WORKLOADS}`}):`,
      `    readiness change to all nodes, p99   ${ms(pct(readiness, 99)).padStart(10)}  <= ${t.readinessP99} ms   ${verdict(pct(readiness, 99), t.readinessP99)}`,
      `    policy to its app's nodes, p99       ${ms(pct(policies, 99)).padStart(10)}  <= ${t.policyP99} ms   ${verdict(pct(policies, 99), t.policyP99)}`,
      ...(t.rssMiB ? [`    controller RSS (peak)                ${mib(peak).padStart(10)}  <= 1 GiB    ${verdict(peak, t.rssMiB)}`] : []),
    ];
    console.log(out.join('\n'));
  } finally {
    closeNodes();
    ctl.close();
  }
}

async function main(): Promise<void> {
  const opts = options();
  for (const [i, size] of opts.sizes.entries()) {
    try {
      await runSize(opts, size);
    } catch (err) {
      if (err instanceof BenchFailed && i < opts.sizes.length - 1) console.log(`  (not run: ${opts.sizes.slice(i + 1).map((s) => s.workloads).join(', ')} workloads, after this failure)`);
      throw err;
    }
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    if (!(err instanceof BenchFailed)) console.error(`bench: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
