/**
 * The node proxy's memory at cluster scale (issue 10): a real proxy in a
 * one-node lab, with 0, 10,000 and 50,000 workloads in the mesh (10 per
 * service). The workloads are placed on simulated node names, so only the
 * proxy's lookup tables grow, not what it enrolls. Measures its RSS (from
 * /proc) at each size and the time from the first apply to the proxy holding
 * the last version (its admin /status controller.configVersion), then the
 * time for one readiness change at the largest size.
 *
 * Needs root and BPF (it runs a lab); says so and skips otherwise.
 *
 *   node dist/bench/proxy-scale.js [-- --sizes 10000,50000 --per-service 10 --deadline 300]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import { probeFeatures } from '../src/bpf';
import { ControllerClient } from '../src/controller/client';
import { labDown, labUp, type LabState } from '../src/lab';
import { adminGet } from '../src/node-proxy/admin';
import { PACKAGE_ROOT } from '../src/paths';
import { cpuSeconds, DeadlineError, mib, onExit, rss, until } from './common';

const USAGE = 'usage: node dist/bench/proxy-scale.js [--sizes 10000,50000] [--per-service 10] [--deadline 300] [--name pscale]';
const A = 'nodemesh.io/v1alpha1';
const APPLY_MAX = 1000; // the controller's limit of documents per request
const SIM_NODES = 100;

function options(): { sizes: number[]; perService: number; deadlineMs: number; name: string } {
  let values;
  try {
    values = parseArgs({ options: { sizes: { type: 'string', default: '10000,50000' }, 'per-service': { type: 'string', default: '10' }, deadline: { type: 'string', default: '300' }, name: { type: 'string', default: 'pscale' } } }).values;
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${USAGE}`);
  }
  const sizes = values.sizes!.split(',').map(Number);
  if (!sizes.every((n) => Number.isInteger(n) && n > 0 && n <= 1_000_000) || sizes.some((n, i) => i > 0 && n <= sizes[i - 1]!))
    throw new Error(`--sizes must be rising whole numbers of workloads up to 1000000, comma-separated, not ${JSON.stringify(values.sizes)}\n${USAGE}`);
  const perService = Number(values['per-service']);
  const deadline = Number(values.deadline);
  if (!Number.isInteger(perService) || perService < 1) throw new Error(`--per-service must be a whole number of at least 1, not ${JSON.stringify(values['per-service'])}\n${USAGE}`);
  if (!Number.isInteger(deadline) || deadline < 1) throw new Error(`--deadline must be a whole number of seconds, not ${JSON.stringify(values.deadline)}\n${USAGE}`);
  return { sizes, perService, deadlineMs: deadline * 1000, name: values.name! };
}

/** Why this cannot run here, or undefined. */
function unavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root';
  const f = probeFeatures();
  return f.usable ? undefined : f.problems.join('; ');
}

function proxyPid(lab: LabState): number {
  const node = lab.nodes[0]!;
  for (const pid of execFileSync('ip', ['netns', 'pids', node.netns], { encoding: 'utf8' }).split('\n').filter(Boolean)) {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    if (cmd.includes('proxy') && cmd.includes(node.name)) return Number(pid);
  }
  throw new Error(`no proxy process in the network namespace ${node.netns}`);
}

async function main(): Promise<void> {
  const opts = options();
  const why = unavailable();
  if (why) {
    console.log(`proxy memory benchmark skipped: it runs a lab, which needs root and BPF (CAP_BPF, CAP_SYS_ADMIN): ${why}`);
    return;
  }
  const NAME = opts.name;
  const perService = opts.perService;
  // Workload i runs app svc-<i / perService> on simulated node sim-<i % 100>; its address is in 100.64.0.0/10, outside the lab's ranges.
  const workload = (i: number, ready?: boolean) => ({
    apiVersion: A,
    kind: 'Workload',
    metadata: { name: `w${i}`, namespace: 'scale', labels: { app: `svc-${Math.floor(i / perService)}` } },
    spec: { node: `sim-${i % SIM_NODES}`, serviceAccount: `sa-${Math.floor(i / perService)}`, addresses: [`100.${64 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`], ...(ready === undefined ? {} : { ready }) },
  });
  const service = (s: number) => ({
    apiVersion: A,
    kind: 'Service',
    metadata: { name: `svc-${s}`, namespace: 'scale' },
    spec: { selector: { app: `svc-${s}` }, addresses: [`198.19.${1 + Math.floor(s / 250)}.${(s % 250) + 1}`], ports: [{ port: 80, appProtocol: 'http' }] },
  });
  const servicesOf = (w: number): number => Math.ceil(w / perService);
  if (servicesOf(opts.sizes.at(-1)!) > 250 * 250) throw new Error(`at most ${250 * 250} services (their addresses come from 198.19.0.0/16): raise --per-service or lower --sizes`);

  await labDown(NAME);
  // Registered before up: an interrupted up is swept too. At exit only synchronous work runs: sweep from a child process.
  let down = false;
  onExit(() => {
    if (!down) spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js'), 'lab', 'down', '--name', NAME], { stdio: 'inherit' });
  });
  process.stderr.write(`bench: starting a one-node lab "${NAME}" with its controller and proxy\n`);
  const lab = await labUp({ name: NAME, nodes: 1, podsPerNode: 1, mesh: true });
  const admin = ControllerClient.fromCredentials(lab.mesh!.controller.credentials, { timeoutMs: 120_000 });
  onExit(() => admin.close());
  try {
    const socket = lab.mesh!.proxies[0]!.adminSocket;
    const pid = proxyPid(lab);
    const status = async (): Promise<{ controller?: { connected?: boolean; configVersion?: number } } & Record<string, unknown>> => JSON.parse(await adminGet(socket, '/status'));
    const heldVersion = async (): Promise<number> => (await status()).controller?.configVersion ?? 0;
    /** Waits until the proxy holds `version`; the time from `since`. */
    const holds = async (version: number, since: number, what: string): Promise<number> => {
      let last = '';
      await until(
        what,
        opts.deadlineMs,
        async () => {
          try {
            const s = await status();
            last = JSON.stringify({ controller: s.controller, ready: s.ready, reason: s.reason });
            return (s.controller?.configVersion ?? 0) >= version ? true : undefined;
          } catch (err) {
            last = (err as Error).message;
            return undefined;
          }
        },
        () => `  the proxy of ${lab.nodes[0]!.name} does not hold version ${version}; its /status: ${last}\n  last lines of its log (${lab.mesh!.proxies[0]!.log}):\n${tail(lab.mesh!.proxies[0]!.log)}`,
        10,
      );
      return Date.now() - since;
    };
    const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 2000));

    const rows: { workloads: number; services?: number; rss: number; peak: number; heap: number; applyMs: number; heldMs: number; cpu: number; version: number }[] = [];
    /** The proxy's V8 heap in use, as its /status says. */
    const heapUsed = async (): Promise<number> => ((await status()).memory as { heapUsedBytes?: number } | undefined)?.heapUsedBytes ?? NaN;
    await settle();
    let cpu0 = cpuSeconds(pid);
    const r0 = rss(pid);
    rows.push({ workloads: 0, rss: r0.now, peak: r0.peak, heap: await heapUsed(), applyMs: 0, heldMs: 0, cpu: 0, version: await heldVersion() });

    // Each step adds its workloads and their services (services before the workloads they select).
    let have = 0;
    for (const size of opts.sizes) {
      process.stderr.write(`bench: applying workloads up to ${size}\n`);
      const start = Date.now();
      const docs: unknown[] = [];
      for (let s = servicesOf(have); s < servicesOf(size); s++) docs.push(service(s));
      for (let i = have; i < size; i++) docs.push(workload(i));
      have = size;
      let version = 0;
      for (let k = 0; k < docs.length; k += APPLY_MAX)
        version = (await admin.apply(docs.slice(k, k + APPLY_MAX).map((v, j) => ({ source: 'bench', index: j + 1, json: JSON.stringify(v) })))).version;
      const applyMs = Date.now() - start;
      const heldMs = await holds(version, start, `the proxy holding ${size} workloads (version ${version})`);
      await settle();
      const r = rss(pid);
      const cpu = cpuSeconds(pid);
      rows.push({ workloads: size, services: servicesOf(size), rss: r.now, peak: r.peak, heap: await heapUsed(), applyMs, heldMs, cpu: cpu - cpu0, version });
      cpu0 = cpu;
    }

    // One readiness change at the largest size: apply to held.
    const changes: number[] = [];
    for (let k = 0; k < 20; k++) {
      const start = Date.now();
      const { version } = await admin.apply([{ source: 'bench', index: 1, json: JSON.stringify(workload((k * 97) % have, k % 2 === 1)) }]);
      changes.push(await holds(version, start, `the proxy holding a readiness change (version ${version})`));
    }
    changes.sort((a, b) => a - b);
    const base = rows[0]!.rss;
    console.log(`node proxy memory at scale: one lab node; the workloads run on ${SIM_NODES} simulated nodes, ${perService} per service`);
    console.log(`  ${'workloads'.padStart(9)} ${'services'.padStart(8)} ${'RSS'.padStart(9)} ${'+ over 0'.padStart(9)} ${'peak RSS'.padStart(9)} ${'V8 heap'.padStart(9)} ${'apply'.padStart(8)} ${'held'.padStart(8)} ${'proxy CPU'.padStart(9)}`);
    for (const r of rows)
      console.log(
        `  ${String(r.workloads).padStart(9)} ${String(r.services ?? 0).padStart(8)} ${mib(r.rss).padStart(9)} ${mib(r.rss - base).padStart(9)} ${mib(r.peak).padStart(9)} ${mib(r.heap / 2 ** 20).padStart(9)} ${`${(r.applyMs / 1000).toFixed(1)} s`.padStart(8)} ${`${(r.heldMs / 1000).toFixed(1)} s`.padStart(8)} ${`${r.cpu.toFixed(1)} s`.padStart(9)}`,
      );
    console.log(`  (apply: the applies of that step; held: from its first apply to the proxy's /status showing the last version; RSS and V8 heap in use 2 s after)`);
    console.log(`  one readiness change at ${have} workloads, apply to the proxy holding it: p50 ${changes[Math.floor(changes.length / 2)]} ms, max ${changes.at(-1)} ms (${changes.length} changes)`);
  } finally {
    admin.close();
    const r = await labDown(NAME);
    down = true;
    if (r.errors.length) console.error(`bench: lab down ${NAME}: ${r.errors.join('; ')}`);
  }
}

function tail(file: string, lines = 10): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).map((l) => `    ${l.length > 400 ? `${l.slice(0, 400)}…` : l}`).join('\n');
  } catch {
    return '    (no log)';
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err instanceof DeadlineError ? `proxy memory benchmark FAILED: ${err.message}` : `bench: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
