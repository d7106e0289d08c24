/**
 * Names and addresses of a lab's objects (see docs/architecture.md, 'The
 * lab'). Pure: the same inputs always give the same plan, so `down` can find
 * what `up` made.
 *
 * Lab slot k (0..15) owns 198.18.<16k>.0/20:
 *   the lab bridge (host netns)  nm-<lab>-br     198.18.<16k>.254/24
 *   node n (1..15)               netns nm-<lab>-n<n>, eth0 198.18.<16k>.<n>/24
 *   node n's pod bridge          cbr0 in the node   198.18.<16k+n>.254/24
 *   pod p (1..253) of node n     netns nm-<lab>-n<n>-p<p>, eth0 198.18.<16k+n>.<p>/24
 * IPv6 mirrors IPv4 inside the benchmarking range 2001:2::/48 (RFC 5180):
 * 198.18.X.Y is also 2001:2:0:X::Y (X and Y written as they read in decimal).
 * Interface names stay within 15 characters: lab names are 1-8 characters.
 */
import { LabError } from './errors';

export const MAX_SLOTS = 16;
export const MAX_NODES = 15;
export const MAX_PODS = 253;
export const LAB_NAME_RE = /^[a-z][a-z0-9]{0,7}$/;
/** Service VIPs: never routed, only redirected, so every lab may share them. */
export const VIP_RANGE = '198.19.0.0/16';
export const VIP_RANGE6 = '2001:2:0:ffff::/64';

/** The IPv6 twin of a lab IPv4 address 198.18.X.Y: 2001:2:0:X::Y. */
export function ip6Of(ip4: string): string {
  const [, , x, y] = ip4.split('.');
  return `2001:2:0:${x}::${y}`;
}

export interface NodePlan {
  /** Node name, unique on the host: <lab>-n<n>. */
  name: string;
  index: number;
  netns: string;
  /** The node's address on the lab bridge: its proxy listens here. */
  ip: string;
  ip6: string;
  /** The host-side veth on the lab bridge. */
  hostIf: string;
  podSubnet: string;
  podSubnet6: string;
  podGateway: string;
  podGateway6: string;
  cgroup: string;
}

export interface PodPlan {
  /** Pod name within the lab: n<n>-p<p>. */
  name: string;
  node: string;
  nodeIndex: number;
  index: number;
  netns: string;
  ip: string;
  ip6: string;
  /** The pod's veth in its node's netns (pod side is eth0). */
  nodeIf: string;
  cgroup: string;
}

export interface LabPlan {
  name: string;
  slot: number;
  bridge: string;
  bridgeIp: string;
  bridgeIp6: string;
  nodeSubnet: string;
  cgroupRoot: string;
  nodes: NodePlan[];
  pods: PodPlan[];
}

export function checkLabName(name: string): void {
  if (!LAB_NAME_RE.test(name))
    throw new LabError('NM_ERR_LAB_NAME', `lab name "${name}" must be 1-8 lowercase letters or digits, starting with a letter (it prefixes interface names, which are limited to 15 characters)`);
}

/** The whole plan of a lab. `cgroup2` is the cgroup v2 mount point. */
export function planLab(name: string, slot: number, nodes: number, podsPerNode: number, cgroup2: string): LabPlan {
  checkLabName(name);
  if (!Number.isInteger(slot) || slot < 0 || slot >= MAX_SLOTS) throw new LabError('NM_ERR_LAB_SLOT', `lab slot ${slot} is outside 0..${MAX_SLOTS - 1}`);
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > MAX_NODES) throw new LabError('NM_ERR_USAGE', `--nodes ${nodes}: a lab has 1 to ${MAX_NODES} nodes`);
  if (!Number.isInteger(podsPerNode) || podsPerNode < 0 || podsPerNode > MAX_PODS)
    throw new LabError('NM_ERR_USAGE', `--pods-per-node ${podsPerNode}: a node has 0 to ${MAX_PODS} pods`);
  const base = 16 * slot;
  const cgroupRoot = `${cgroup2}/nodemesh-lab`;
  const plan: LabPlan = {
    name,
    slot,
    bridge: `nm-${name}-br`,
    bridgeIp: `198.18.${base}.254`,
    bridgeIp6: ip6Of(`198.18.${base}.254`),
    nodeSubnet: `198.18.${base}.0/24`,
    cgroupRoot,
    nodes: [],
    pods: [],
  };
  for (let n = 1; n <= nodes; n++) {
    const nodeName = `${name}-n${n}`;
    plan.nodes.push({
      name: nodeName,
      index: n,
      netns: `nm-${nodeName}`,
      ip: `198.18.${base}.${n}`,
      ip6: ip6Of(`198.18.${base}.${n}`),
      hostIf: `nm-${nodeName}`,
      podSubnet: `198.18.${base + n}.0/24`,
      podSubnet6: `2001:2:0:${base + n}::/64`,
      podGateway: `198.18.${base + n}.254`,
      podGateway6: ip6Of(`198.18.${base + n}.254`),
      cgroup: `${cgroupRoot}/${nodeName}`,
    });
    for (let p = 1; p <= podsPerNode; p++) {
      plan.pods.push({
        name: `n${n}-p${p}`,
        node: nodeName,
        nodeIndex: n,
        index: p,
        netns: `nm-${nodeName}-p${p}`,
        ip: `198.18.${base + n}.${p}`,
        ip6: ip6Of(`198.18.${base + n}.${p}`),
        nodeIf: `p${p}`,
        cgroup: `${cgroupRoot}/${nodeName}/p${p}`,
      });
    }
  }
  return plan;
}
