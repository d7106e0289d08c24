/**
 * The mesh of a lab: a controller on the host (listening on the lab bridge,
 * so only this lab's nodes reach it) and one proxy per node inside the node's
 * namespace. Each pod is registered as a Workload (its netns, IPs, node), so
 * its proxy enrolls it. Processes run detached with their logs in the lab's
 * runtime dir; `lab down` stops them.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { API_VERSION } from '../api/kinds';
import { ControllerClient } from '../controller/client';
import { adminGet, adminSocketOf, PROXY_RUN_DIR } from '../node-proxy/admin';
import { PROXY_ENV, PROXY_NODE_FLAGS } from '../node-proxy/memory-reclaim';
import { PACKAGE_ROOT } from '../paths';
import { LabError } from './errors';
import type { LabMesh, LabState } from './state';

export { PROXY_RUN_DIR };

const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');

function tail(file: string, lines = 15): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

async function until<T>(what: string, log: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new LabError('NM_ERR_LAB_MESH', `${what} did not come up within ${timeoutMs / 1000} s; last lines of ${log}:\n${tail(log)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function startDetached(argv: string[], logFile: string, env?: Readonly<Record<string, string>>): number {
  const fd = fs.openSync(logFile, 'a');
  try {
    const child = spawn(argv[0]!, argv.slice(1), { detached: true, stdio: ['ignore', fd, fd], env: { ...process.env, ...env } });
    child.unref();
    if (child.pid === undefined) throw new LabError('NM_ERR_LAB_MESH', `cannot start ${argv.join(' ')}`);
    return child.pid;
  } finally {
    fs.closeSync(fd);
  }
}

/** The Workload a lab pod is registered as. */
export function podWorkload(lab: LabState, pod: LabState['pods'][number]): Record<string, unknown> {
  return {
    apiVersion: API_VERSION,
    kind: 'Workload',
    metadata: { name: pod.name, namespace: 'default', labels: { pod: pod.name, node: `n${pod.nodeIndex}`, lab: lab.name } },
    spec: { node: pod.node, serviceAccount: pod.name, addresses: [pod.ip, pod.ip6], netns: `/run/netns/${pod.netns}` },
  };
}

/** Starts the lab's controller and proxies; resolves once every proxy is ready. */
export async function startLabMesh(
  lab: LabState,
  dir: string,
  record: (mesh: LabMesh) => void,
  log: (l: string) => void = () => {},
  certLifetimesSeconds: { workload?: number; node?: number } = {},
): Promise<LabMesh> {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const dataDir = path.join(dir, 'controller');
  const ctlLog = path.join(dir, 'controller.log');
  const address = `${lab.bridgeIp}:15010`;
  const lifetime = [
    ...(certLifetimesSeconds.workload ? ['--workload-cert-lifetime', `${certLifetimesSeconds.workload}s`] : []),
    ...(certLifetimesSeconds.node ? ['--node-cert-lifetime', `${certLifetimesSeconds.node}s`] : []),
  ];
  const pid = startDetached([process.execPath, BIN, 'controller', '--data-dir', dataDir, '--listen', address, '--metrics-listen', `${lab.bridgeIp}:15014`, ...lifetime], ctlLog);
  const mesh: LabMesh = {
    controller: { pid, address, credentials: path.join(dataDir, 'admin.json'), caFile: path.join(dataDir, 'ca', 'ca.crt'), log: ctlLog, metrics: `${lab.bridgeIp}:15014` },
    proxies: [],
  };
  // Recorded before anything can fail, so `lab down` finds the controller.
  record(mesh);
  const admin = await until('the lab controller', ctlLog, 30_000, async () => {
    if (!fs.existsSync(mesh.controller.credentials)) return undefined;
    const c = ControllerClient.fromCredentials(mesh.controller.credentials, { timeoutMs: 2000 });
    try {
      await c.list('workloads');
      return c;
    } catch (err) {
      c.close();
      throw err;
    }
  });
  try {
    log(`  controller ${address} (pid ${pid}); credentials ${mesh.controller.credentials}`);
    if (lab.pods.length) await admin.apply(lab.pods.map((p, i) => ({ source: 'lab', index: i + 1, json: JSON.stringify(podWorkload(lab, p)) })));
    for (const node of lab.nodes) {
      const { token } = await admin.createToken(node.name, 600);
      const stateDir = path.join(dir, `proxy-${node.name}`);
      // In a file only root reads, never on the command line (ps shows argv to every user).
      const tokenFile = path.join(dir, `token-${node.name}`);
      fs.writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
      const proxyLog = path.join(dir, `proxy-${node.name}.log`);
      startDetached(
        [
          'nsenter',
          `--net=/run/netns/${node.netns}`,
          process.execPath,
          ...PROXY_NODE_FLAGS,
          BIN,
          'proxy',
          '--node', node.name,
          '--controller', address,
          '--token-file', tokenFile,
          '--ca-file', mesh.controller.caFile,
          '--state-dir', stateDir,
          '--proxy-ip', node.ip,
          '--proxy-ip6', node.ip6,
        ],
        proxyLog,
        PROXY_ENV,
      );
      mesh.proxies.push({ node: node.name, log: proxyLog, stateDir, adminSocket: adminSocketOf(node.name) });
      record(mesh);
    }
    for (const p of mesh.proxies) {
      await until(`the proxy of ${p.node}`, p.log, 30_000, async () => ((JSON.parse(await adminGet(p.adminSocket, '/status')) as { ready: boolean }).ready ? true : undefined));
      log(`  proxy ${p.node} ready (log ${p.log})`);
    }
    return mesh;
  } finally {
    admin.close();
  }
}

/** Stops the lab controller recorded in the lab's state, if it still runs; whether it did. */
export function stopLabController(name: string, stateDir: string): boolean {
  let pid: number | undefined;
  try {
    pid = (JSON.parse(fs.readFileSync(path.join(stateDir, `${name}.json`), 'utf8')) as LabState).mesh?.controller.pid;
  } catch {
    return false;
  }
  if (!pid) return false;
  // Only if that pid is still our controller (pids are reused).
  let cmdline = '';
  try {
    cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return false;
  }
  if (!cmdline.includes('controller') || !cmdline.includes(path.join(stateDir, name))) return false;
  process.kill(pid, 'SIGKILL');
  return true;
}
