/**
 * The lab: a cluster in one machine (see docs/architecture.md, 'The lab').
 * Nodes and pods are network namespaces joined by bridges and veths, pods
 * also get a cgroup each, all made with iproute2. Every object carries the lab's name, and a state file
 * under /run/nodemesh/labs records the lab, so `list`, `exec` and `down` find
 * it; `down` also sweeps by name, so it cleans up after a crashed `up` too.
 */
import { execFile, spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';

import { findCgroup2Mount } from '../bpf';
import { Datapath, DEFAULT_PIN_BASE } from '../node-proxy/datapath';
import { killPids, removeCgroupTree } from './cgroup';
import { holdLabRoutes, LAB_RANGES, releaseLabRoutes } from './host-routes';
import { PROXY_RUN_DIR, startLabMesh, stopLabController } from './mesh';
import { LabError } from './errors';
import { checkLabName, MAX_SLOTS, planLab, type LabPlan, type NodePlan, type PodPlan } from './naming';
import type { LabMesh, LabState } from './state';

const run = promisify(execFile);

export const DEFAULT_LAB_STATE_DIR = '/run/nodemesh/labs';

export { LabError };

export type { LabMesh, LabState };

export interface UpOptions {
  name: string;
  nodes: number;
  podsPerNode: number;
  stateDir?: string;
  /** Aborting stops `up` between steps and removes what it made. */
  signal?: AbortSignal;
  /** Progress lines, for the CLI. */
  log?: (line: string) => void;
  /** Also start a controller and a proxy per node, and register the pods as Workloads. */
  mesh?: boolean;
  /** Workload certificate lifetime for the lab controller (short ones exercise rotation). */
  workloadCertLifetimeSeconds?: number;
  /** Node certificate lifetime for the lab controller (short ones exercise renewal). */
  nodeCertLifetimeSeconds?: number;
}

function stateDirOf(dir?: string): string {
  return dir ?? DEFAULT_LAB_STATE_DIR;
}

function requireRoot(): void {
  if (process.getuid?.() !== 0)
    throw new LabError('NM_ERR_LAB_PRIVILEGE', 'the lab needs root (it makes network namespaces, veths, cgroups and BPF pins): run as root');
}

function cgroup2(): string {
  const m = findCgroup2Mount();
  if (!m) throw new LabError('NM_ERR_LAB_CGROUP', 'cgroup v2 is not mounted: mount -t cgroup2 none /sys/fs/cgroup');
  return m;
}

async function ip(args: string[]): Promise<void> {
  try {
    await run('ip', args);
  } catch (err) {
    const e = err as { stderr?: string; code?: string | number; message: string };
    if (e.code === 'ENOENT') throw new LabError('NM_ERR_LAB_TOOL', 'the `ip` command is missing: apt-get install iproute2');
    throw new LabError('NM_ERR_LAB_STEP', `\`ip ${args.join(' ')}\` failed: ${(e.stderr ?? e.message).trim()}`);
  }
}

async function ipQuiet(args: string[]): Promise<string> {
  try {
    return (await run('ip', args)).stdout;
  } catch {
    return '';
  }
}

/** Reads a lab's state file, or undefined when there is none. */
export function readLab(name: string, stateDir?: string): LabState | undefined {
  checkLabName(name);
  try {
    return JSON.parse(fs.readFileSync(path.join(stateDirOf(stateDir), `${name}.json`), 'utf8')) as LabState;
  } catch {
    return undefined;
  }
}

/** Every lab with a state file on this host. */
export function listLabs(stateDir?: string): LabState[] {
  const dir = stateDirOf(stateDir);
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => readLab(f.slice(0, -5), stateDir))
    .filter((l): l is LabState => l !== undefined && Array.isArray(l.nodes));
}

/** Takes the lowest free slot, atomically (a slot file made with O_EXCL). */
function reserveSlot(dir: string, name: string): number {
  for (let k = 0; k < MAX_SLOTS; k++) {
    try {
      fs.writeFileSync(path.join(dir, `slot-${k}`), name, { flag: 'wx' });
      return k;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  throw new LabError('NM_ERR_LAB_FULL', `all ${MAX_SLOTS} lab slots are taken: remove a lab with \`nodemesh lab down --name NAME\` (see \`nodemesh lab list\`)`);
}

async function buildNode(plan: LabPlan, node: NodePlan): Promise<void> {
  const ns = node.netns;
  await ip(['netns', 'add', ns]);
  await ip(['link', 'add', node.hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  await ip(['link', 'set', node.hostIf, 'master', plan.bridge, 'up']);
  await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
  await ip(['-n', ns, 'addr', 'add', `${node.ip}/24`, 'dev', 'eth0']);
  // nodad: usable at once, no duplicate address detection wait.
  await ip(['-n', ns, 'addr', 'add', `${node.ip6}/64`, 'dev', 'eth0', 'nodad']);
  await ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
  await ip(['-n', ns, 'link', 'add', 'cbr0', 'type', 'bridge']);
  await ip(['-n', ns, 'addr', 'add', `${node.podGateway}/24`, 'dev', 'cbr0']);
  await ip(['-n', ns, 'addr', 'add', `${node.podGateway6}/64`, 'dev', 'cbr0', 'nodad']);
  await ip(['-n', ns, 'link', 'set', 'cbr0', 'up']);
  // Forward between the pods' bridge and the node link (per-netns sysctls).
  await ip(['netns', 'exec', ns, 'sh', '-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv6/conf/all/forwarding']);
  for (const other of plan.nodes) {
    if (other.index === node.index) continue;
    await ip(['-n', ns, 'route', 'add', other.podSubnet, 'via', other.ip]);
    await ip(['-n', ns, '-6', 'route', 'add', other.podSubnet6, 'via', other.ip6]);
  }
  fs.mkdirSync(node.cgroup, { recursive: true });
}

async function buildPod(plan: LabPlan, pod: PodPlan): Promise<void> {
  const node = plan.nodes.find((n) => n.name === pod.node)!;
  await ip(['netns', 'add', pod.netns]);
  await ip(['-n', node.netns, 'link', 'add', pod.nodeIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pod.netns]);
  await ip(['-n', node.netns, 'link', 'set', pod.nodeIf, 'master', 'cbr0', 'up']);
  await ip(['-n', pod.netns, 'link', 'set', 'lo', 'up']);
  await ip(['-n', pod.netns, 'addr', 'add', `${pod.ip}/24`, 'dev', 'eth0']);
  await ip(['-n', pod.netns, 'addr', 'add', `${pod.ip6}/64`, 'dev', 'eth0', 'nodad']);
  await ip(['-n', pod.netns, 'link', 'set', 'eth0', 'up']);
  await ip(['-n', pod.netns, 'route', 'add', 'default', 'via', node.podGateway]);
  await ip(['-n', pod.netns, '-6', 'route', 'add', 'default', 'via', node.podGateway6]);
  fs.mkdirSync(pod.cgroup, { recursive: true });
}

/**
 * Builds a lab. Fails with a clear error if one of that name exists; on any
 * failure (or abort) removes everything it made before throwing.
 */
export async function labUp(opts: UpOptions): Promise<LabState> {
  checkLabName(opts.name);
  requireRoot();
  const cg2 = cgroup2();
  const dir = stateDirOf(opts.stateDir);
  fs.mkdirSync(dir, { recursive: true });
  const statePath = path.join(dir, `${opts.name}.json`);
  const existing = readLab(opts.name, opts.stateDir);
  if (existing || (await ipQuiet(['link', 'show', `nm-${opts.name}-br`])).trim())
    throw new LabError(
      'NM_ERR_LAB_EXISTS',
      `lab ${opts.name} already exists${existing ? ` (${existing.nodes.length} nodes, ${existing.pods.length} pods)` : ''}: use it, or remove it with \`nodemesh lab down --name ${opts.name}\``,
    );
  // Validate sizes before reserving anything.
  planLab(opts.name, 0, opts.nodes, opts.podsPerNode, cg2);
  try {
    fs.writeFileSync(statePath, '{}', { flag: 'wx' }); // claims the name
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST')
      throw new LabError('NM_ERR_LAB_EXISTS', `lab ${opts.name} is being made by another process: wait for it, or \`nodemesh lab down --name ${opts.name}\``);
    throw err;
  }
  let plan: LabPlan | undefined;
  try {
    const slot = reserveSlot(dir, opts.name);
    plan = planLab(opts.name, slot, opts.nodes, opts.podsPerNode, cg2);
    const state: LabState = { ...plan, createdAt: new Date().toISOString() };
    // Written first, so a `down` after a crash knows the slot.
    fs.writeFileSync(statePath, JSON.stringify(state, null, 2) + '\n');
    const step = (): void => {
      if (opts.signal?.aborted) throw new LabError('NM_ERR_LAB_ABORTED', `lab up ${opts.name} was interrupted`);
    };
    opts.log?.(`lab ${plan.name}: slot ${slot}, nodes ${plan.nodeSubnet}, bridge ${plan.bridge}`);
    // Before anything of the lab is routable from the host: see host-routes.ts.
    await holdLabRoutes(dir);
    await ip(['link', 'add', plan.bridge, 'type', 'bridge']);
    // Bridged lab traffic must not meet the host's iptables (br_netfilter).
    await ipQuiet(['link', 'set', plan.bridge, 'type', 'bridge', 'nf_call_iptables', '0', 'nf_call_ip6tables', '0', 'nf_call_arptables', '0']);
    await ip(['addr', 'add', `${plan.bridgeIp}/24`, 'dev', plan.bridge]);
    await ip(['addr', 'add', `${plan.bridgeIp6}/64`, 'dev', plan.bridge, 'nodad']);
    await ip(['link', 'set', plan.bridge, 'up']);
    fs.mkdirSync(plan.cgroupRoot, { recursive: true });
    for (const node of plan.nodes) {
      step();
      await buildNode(plan, node);
      opts.log?.(`  node ${node.name}  ${node.ip}  pods ${node.podSubnet}`);
    }
    for (const pod of plan.pods) {
      step();
      await buildPod(plan, pod);
      opts.log?.(`  pod  ${pod.name}  ${pod.ip}  on ${pod.node}`);
    }
    step();
    if (opts.mesh) {
      opts.log?.(`lab ${plan.name}: starting the mesh`);
      await startLabMesh(
        state,
        path.join(dir, opts.name),
        (mesh) => {
          state.mesh = mesh;
          fs.writeFileSync(statePath, JSON.stringify(state, null, 2) + '\n');
        },
        opts.log,
        { workload: opts.workloadCertLifetimeSeconds, node: opts.nodeCertLifetimeSeconds },
      );
      step();
    }
    return state;
  } catch (err) {
    await labDown(opts.name, { stateDir: opts.stateDir });
    if (err instanceof LabError) {
      throw new LabError(err.code, `${err.message}; lab up ${opts.name} removed everything it had made`, { cause: err });
    }
    throw err;
  }
}

export interface DownResult {
  removed: string[];
  errors: string[];
}

/**
 * Removes every object of lab `name`: BPF pins of its nodes, processes in its
 * namespaces and cgroups, the namespaces, links, cgroups and state. Finds them
 * by name as well as from the state file. Idempotent.
 */
export async function labDown(name: string, opts: { stateDir?: string; pinBase?: string } = {}): Promise<DownResult> {
  checkLabName(name);
  requireRoot();
  const removed: string[] = [];
  const errors: string[] = [];
  const attempt = async (what: string, fn: () => unknown): Promise<void> => {
    try {
      await fn();
      removed.push(what);
    } catch (err) {
      errors.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
    }
  };
  const nodeRe = new RegExp(`^${name}-n\\d+$`);

  // 1. Processes in its namespaces (proxies, test servers) and its controller:
  // nothing may re-install what the next steps remove.
  const nsRe = new RegExp(`^nm-${name}-n\\d+(-p\\d+)?$`);
  const namespaces = (await ipQuiet(['netns', 'list']))
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter((n) => nsRe.test(n))
    .sort((a, b) => b.length - a.length); // pods before nodes
  for (const ns of namespaces) killPids((await ipQuiet(['netns', 'pids', ns])).split('\n').filter(Boolean));
  try {
    if (stopLabController(name, stateDirOf(opts.stateDir))) removed.push(`lab ${name} controller`);
  } catch (err) {
    errors.push(`lab ${name} controller: ${err instanceof Error ? err.message : String(err)}`);
  }

  // 2. Data paths: detached before the cgroups they sit on go.
  const pinBase = opts.pinBase ?? DEFAULT_PIN_BASE;
  if (fs.existsSync(pinBase)) {
    for (const node of fs.readdirSync(pinBase).filter((n) => nodeRe.test(n)))
      await attempt(`bpf pins ${path.join(pinBase, node)}`, () => Datapath.uninstall(node, { pinBase }));
  }
  for (const node of fs.existsSync(PROXY_RUN_DIR) ? fs.readdirSync(PROXY_RUN_DIR).filter((n) => nodeRe.test(n)) : [])
    fs.rmSync(path.join(PROXY_RUN_DIR, node), { recursive: true, force: true });

  // 3. cgroups (their processes are moved out and killed).
  const cg2 = findCgroup2Mount();
  if (cg2) {
    const root = path.join(cg2, 'nodemesh-lab');
    if (fs.existsSync(root)) {
      for (const dir of fs.readdirSync(root).filter((n) => nodeRe.test(n)))
        await attempt(`cgroup ${path.join(root, dir)}`, () => removeCgroupTree(path.join(root, dir), cg2));
      if (fs.existsSync(root) && fs.readdirSync(root, { withFileTypes: true }).every((e) => !e.isDirectory())) {
        try {
          fs.rmdirSync(root);
        } catch {
          // another lab is using it
        }
      }
    }
  }

  for (const ns of namespaces) await attempt(`netns ${ns}`, () => ip(['netns', 'delete', ns]));

  // 4. Host links: the bridge and any node veth left over.
  const linkRe = new RegExp(`^nm-${name}-(br|n\\d+)$`);
  const links = (await ipQuiet(['-o', 'link', 'show']))
    .split('\n')
    .map((l) => /^\d+: ([^:@]+)/.exec(l)?.[1])
    .filter((n): n is string => n !== undefined && linkRe.test(n));
  // A node veth may vanish on its own as its namespace goes.
  for (const l of links) await attempt(`link ${l}`, () => ip(['link', 'delete', l]).catch((e: Error) => void (/Cannot find device/.test(e.message) || Promise.reject(e))));

  // 5. State and slot.
  const dir = stateDirOf(opts.stateDir);
  if (fs.existsSync(dir)) {
    for (const f of fs.readdirSync(dir)) {
      const p = path.join(dir, f);
      if (f === name && fs.statSync(p).isDirectory()) {
        fs.rmSync(p, { recursive: true, force: true });
        removed.push(`lab dir ${p}`);
      } else if (f === `${name}.json` || (f.startsWith('slot-') && fs.readFileSync(p, 'utf8') === name)) {
        fs.rmSync(p, { force: true });
        removed.push(`state ${p}`);
      }
    }
  }
  // 6. The host's unreachable routes for the lab ranges, if this was the last lab.
  try {
    if (await releaseLabRoutes(name, dir)) removed.push(`host unreachable routes ${LAB_RANGES.join(', ')}`);
  } catch (err) {
    errors.push(`host routes: ${err instanceof Error ? err.message : String(err)}`);
  }
  return { removed, errors };
}

/** Finds a pod (n1-p1) or node (n1, or its full name) of a lab. */
export function findTarget(lab: LabState, target: string): { kind: 'pod'; pod: PodPlan } | { kind: 'node'; node: NodePlan } {
  const pod = lab.pods.find((p) => p.name === target || `${lab.name}-${p.name}` === target);
  if (pod) return { kind: 'pod', pod };
  const node = lab.nodes.find((n) => n.name === target || `n${n.index}` === target);
  if (node) return { kind: 'node', node };
  throw new LabError(
    'NM_ERR_LAB_TARGET',
    `lab ${lab.name} has no pod or node "${target}": pods are ${lab.pods.map((p) => p.name).join(', ') || 'none'}; nodes are ${lab.nodes.map((n) => `n${n.index}`).join(', ')}`,
  );
}

/**
 * Starts argv inside a pod (its netns and cgroup) or a node (its netns).
 * The caller owns the child.
 */
export function labSpawn(lab: LabState, target: string, argv: string[], opts: { stdio?: StdioOptions; env?: NodeJS.ProcessEnv } = {}): ChildProcess {
  requireRoot();
  if (argv.length === 0) throw new LabError('NM_ERR_USAGE', 'nothing to run: nodemesh lab exec POD -- COMMAND [ARGS...]');
  const t = findTarget(lab, target);
  const netns = t.kind === 'pod' ? t.pod.netns : t.node.netns;
  const cgroup = t.kind === 'pod' ? t.pod.cgroup : '';
  // The shell joins the cgroup first, so everything the command does is
  // inside it. nsenter, not `ip netns exec`: that one remounts /sys, which
  // would hide bpffs pins and the cgroup tree from the command.
  return spawn('sh', ['-c', '[ -z "$NM_CG" ] || echo $$ > "$NM_CG/cgroup.procs" || exit 125; exec nsenter --net="/run/netns/$NM_NS" "$@"', 'sh', ...argv], {
    stdio: opts.stdio ?? 'inherit',
    env: { ...process.env, ...opts.env, NM_CG: cgroup, NM_NS: netns },
  });
}

/** Runs argv in a pod or node with this process's stdio; resolves to its exit code. */
export function labExec(lab: LabState, target: string, argv: string[]): Promise<number> {
  const child = labSpawn(lab, target, argv);
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code, sig) => resolve(code ?? (sig ? 128 + os.constants.signals[sig] : 1)));
  });
}
