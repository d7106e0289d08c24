/**
 * Controller push benchmark (issue: "100 node streams, 10,000 workloads in
 * 1,000 services"). Starts a real controller process on loopback, joins 100
 * simulated nodes (each with its own certificate and config stream, all in
 * this process), loads the workloads and services, then measures, per change,
 * the time from the apply call to every affected node holding the version it
 * produced. Prints p50/p99 and the controller's memory.
 *
 *   npm run bench:controller [-- --nodes 100 --workloads 10000 --services 1000 --samples 100]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import { spiffeNodeId } from '../src/controller/ca';
import { ControllerClient, loadCredentials } from '../src/controller/client';
import { generateKeyAndCsr } from '../src/node-proxy/identity';
import { ConfigStream } from '../src/node-proxy/state';
import { PACKAGE_ROOT } from '../src/paths';

const { values } = parseArgs({
  options: {
    nodes: { type: 'string', default: '100' },
    workloads: { type: 'string', default: '10000' },
    services: { type: 'string', default: '1000' },
    samples: { type: 'string', default: '100' },
  },
});
const NODES = Number(values.nodes);
const WORKLOADS = Number(values.workloads);
const SERVICES = Number(values.services);
const SAMPLES = Number(values.samples);
const A = 'nodemesh.io/v1alpha1';

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

const workload = (i: number, extra: Record<string, string> = {}) => ({
  apiVersion: A,
  kind: 'Workload',
  metadata: { name: `w${i}`, namespace: 'bench', labels: { app: `svc-${i % SERVICES}`, ...extra } },
  spec: { node: `node-${i % NODES}`, serviceAccount: `sa-${i % SERVICES}`, addresses: [`198.18.${Math.floor(i / 250) % 256}.${(i % 250) + 1}`] },
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
const doc = (v: unknown, i = 1) => ({ source: 'bench', index: i, json: JSON.stringify(v) });

async function main(): Promise<void> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-bench-'));
  const child: ChildProcess = spawn(process.execPath, [path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js'), 'controller', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--metrics-listen', '127.0.0.1:0', '--log-level', 'warn'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const cleanup = (): void => {
    child.kill('SIGKILL');
    fs.rmSync(dataDir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => {
    cleanup();
    process.exit(130);
  });
  try {
    let metricsPort = 0;
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => {
        const m = /controller serving on port \d+ \(metrics (\d+)\)/.exec(d.toString());
        if (m) {
          metricsPort = Number(m[1]);
          resolve();
        }
      });
      child.once('exit', (code) => reject(new Error(`controller exited (${code})`)));
    });
    /** The controller's V8 heap in use, from its own /metrics. */
    const heapMiB = async (): Promise<number> => {
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      const m = /^nodemesh_controller_nodejs_heap_size_used_bytes (\S+)$/m.exec(text);
      return m ? Number(m[1]) / 2 ** 20 : NaN;
    };
    const credsFile = path.join(dataDir, 'admin.json');
    const creds = loadCredentials(credsFile);
    const admin = ControllerClient.fromCredentials(credsFile, { timeoutMs: 120_000 });
    const idle = rssKiB(child.pid!);

    // Load.
    let t0 = Date.now();
    const all = [...Array.from({ length: SERVICES }, (_, s) => service(s)), ...Array.from({ length: WORKLOADS }, (_, i) => workload(i))];
    for (let i = 0; i < all.length; i += 1000) await admin.apply(all.slice(i, i + 1000).map((v, j) => doc(v, j + 1)));
    const loadMs = Date.now() - t0;
    const loaded = rssKiB(child.pid!);

    // Join and connect the nodes.
    t0 = Date.now();
    const anon = new ControllerClient({ address: creds.controller, ca: creds.ca });
    const streams: ConfigStream[] = [];
    const clients: ControllerClient[] = [anon];
    for (let n = 0; n < NODES; n++) {
      const node = `node-${n}`;
      const { token } = await admin.createToken(node);
      const { keyPem, csrPem } = await generateKeyAndCsr(spiffeNodeId('cluster.local', node));
      const cert = await anon.join(token, node, csrPem);
      const client = new ControllerClient({ address: creds.controller, ca: cert.trustBundlePem, cert: cert.certificateChainPem, key: keyPem }, { timeoutMs: 120_000 });
      clients.push(client);
      streams.push(new ConfigStream({ client, node }));
    }
    const holds = (): number => streams.filter((s) => s.state.version > 0).length;
    for (const s of streams) s.start();
    while (holds() < NODES) await new Promise((r) => setTimeout(r, 10));
    const snapshotMs = Date.now() - t0;
    const itemsPerNode = streams[0]!.state.items.size;
    const connected = rssKiB(child.pid!);

    /** Applies `v` and waits until every node in `affected` holds the resulting version. */
    const measure = async (v: unknown, affected: number[]): Promise<number> => {
      const start = process.hrtime.bigint();
      const r = await admin.apply([doc(v)]);
      const pending = new Set(affected.filter((n) => streams[n]!.state.version < r.version));
      if (pending.size) {
        await new Promise<void>((resolve) => {
          const listeners = [...pending].map((n) => {
            const l = (): void => {
              if (streams[n]!.state.version >= r.version && pending.delete(n) && pending.size === 0) resolve();
            };
            streams[n]!.on('update', l);
            return [n, l] as const;
          });
          const timer = setTimeout(() => resolve(), 30_000);
          void Promise.resolve().then(() => {
            for (const [n, l] of listeners) if (streams[n]!.state.version >= r.version) l();
          });
          timer.unref();
        }).finally(() => {
          for (const s of streams) s.removeAllListeners('update');
        });
      }
      if (pending.size) throw new Error(`${pending.size} nodes did not get version ${r.version}`);
      return Number(process.hrtime.bigint() - start) / 1e6;
    };

    // (a) A workload changes readiness: its Service's endpoints change on every node.
    const wlLat: number[] = [];
    for (let k = 0; k < SAMPLES; k++) {
      const i = (k * 97) % WORKLOADS;
      wlLat.push(await measure({ ...workload(i), spec: { ...workload(i).spec, ready: k % 2 === 0 ? false : true } }, streams.map((_, n) => n)));
    }
    // (b) A policy for one app: only the nodes running that app's workloads.
    const polLat: number[] = [];
    for (let k = 0; k < SAMPLES; k++) {
      const s = (k * 7) % SERVICES;
      const nodes = [...new Set(Array.from({ length: WORKLOADS }, (_, i) => i).filter((i) => i % SERVICES === s).map((i) => i % NODES))];
      polLat.push(await measure(policy(s, String(1000 + k)), nodes));
    }
    const after = rssKiB(child.pid!);
    const heapAfter = await heapMiB();

    wlLat.sort((a, b) => a - b);
    polLat.sort((a, b) => a - b);
    const fmt = (xs: number[]): string => `p50 ${pct(xs, 50).toFixed(1)} ms, p99 ${pct(xs, 99).toFixed(1)} ms, max ${xs.at(-1)!.toFixed(1)} ms`;
    console.log(`controller push benchmark: ${NODES} node streams, ${WORKLOADS} workloads, ${SERVICES} services (${itemsPerNode} items per node), ${SAMPLES} samples each`);
    console.log(`  load: ${all.length} objects applied in ${loadMs} ms; ${NODES} nodes joined and got snapshots in ${snapshotMs} ms`);
    console.log(`  workload readiness change -> all ${NODES} nodes hold it: ${fmt(wlLat)}`);
    console.log(`  policy for one app -> the nodes running it hold it:     ${fmt(polLat)}`);
    console.log(`  controller RSS: idle ${(idle / 1024).toFixed(0)} MiB, loaded ${(loaded / 1024).toFixed(0)} MiB, ${NODES} nodes connected ${(connected / 1024).toFixed(0)} MiB, after ${(after / 1024).toFixed(0)} MiB (V8 heap in use at the end: ${heapAfter.toFixed(0)} MiB)`);
    for (const s of streams) s.stop();
    for (const c of clients) c.close();
    admin.close();
  } finally {
    cleanup();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
