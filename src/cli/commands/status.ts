import { probeFeatures, type FeatureReport } from '../../bpf';
import { Datapath, DatapathError, type DatapathStatus } from '../../node-proxy/datapath';
import { defineCommand, EXIT, type Io } from '../command';
import { withAdmin } from './controller';
import { adminGet, adminSocketOf } from '../../node-proxy/admin';
import { outputFormat, requiredFlag, table, toJson } from '../output';
import { configState, nodeProblem } from '../node-health';
import { formatAge } from '../../node-proxy/state';

export function formatStatus(s: DatapathStatus, f: FeatureReport): string {
  const out: string[] = [];
  const c = s.config;
  out.push(`kernel    ${f.kernel}, libbpf ${f.libbpf ?? '-'}, BPF ${f.usable ? 'usable' : 'NOT usable'}, cgroup2 ${f.cgroup2 ?? '-'}, bpffs ${f.bpffs ?? '-'}`);
  out.push(`node      ${s.node}`);
  const capture = { netns: ' (cgroup2 root: every socket of an enrolled pod netns)', cgroup: ' (only processes below this cgroup are captured)' } as const;
  out.push(`cgroup    ${s.cgroup ?? 'unknown (no install record)'}${s.capture ? capture[s.capture] : ''}`);
  out.push(`pins      ${s.pinDir}`);
  const p = s.proxy;
  // What the kernel decides: ready with a heartbeat older than the watchdog is a dead proxy.
  const live = p.alive ? 'ready' : c.ready ? `NOT ready (heartbeat ${p.heartbeatAgeMs === null ? 'never written' : `${formatAge(p.heartbeatAgeMs)} old`}: proxy gone)` : 'NOT ready';
  const down = p.mode === 'fail-open' ? "pods' connects go around the proxy while none is ready" : "pods' connects are refused with EPERM while no proxy is ready";
  out.push(`proxy     ${c.proxyIp ?? '-'}${c.proxyIp6 ? ` [${c.proxyIp6}]` : ''}:${c.proxyPort}  ${live}  ${p.mode}: ${down}`);
  out.push('', 'programs');
  out.push(table(['PROGRAM', 'ATTACHED', 'PROG ID', 'PIN'], s.links.map((l) => [l.program, l.attached ? 'yes' : 'NO', l.progId ?? '-', l.pinned ? l.pinPath : '-'])).trimEnd());
  out.push('', `pods (${s.pods.length} enrolled)`);
  if (s.pods.length) out.push(table(['NETNS COOKIE', 'INDEX', 'FLAGS'], s.pods.map((p) => [p.netnsCookie, p.index, p.flags])).trimEnd());
  if (s.excludedCidrs.length || s.excludedPorts.length) {
    out.push('', 'excluded');
    for (const x of s.excludedCidrs) out.push(`  ${x}`);
    for (const p of s.excludedPorts) out.push(`  port ${p.port}${p.netnsCookie ? ` (netns ${p.netnsCookie})` : ''}`);
  }
  out.push('', 'maps');
  out.push(table(['MAP', 'ENTRIES', 'MAX', 'FILL'], s.maps.map((m) => [m.name, m.entries, m.maxEntries, `${((100 * m.entries) / m.maxEntries).toFixed(1)}%`])).trimEnd());
  out.push('', 'counters');
  out.push(table(['COUNTER', 'VALUE'], Object.entries(s.counters).map(([k, v]) => [k, v])).trimEnd());
  return out.join('\n') + '\n';
}

/** The controller's view: every node, what config it holds, and why when that is not the current one. */
async function controllerStatus(values: Record<string, unknown>, io: Io, format: 'text' | 'json'): Promise<number> {
  return withAdmin(values, io, async (c) => {
    const { nodes, version } = await c.nodeList();
    if (format === 'json') {
      io.out(toJson({ controller: c.address, version, nodes }));
      return EXIT.ok;
    }
    const empty = nodes.filter((n) => n.ackedVersion === 0).length;
    io.out(
      `controller ${c.address}: ${nodes.filter((n) => n.connected).length} of ${nodes.length} nodes connected` +
        `${empty ? `, ${empty} ${empty === 1 ? 'holds' : 'hold'} no config` : ''} (store version ${version})\n`,
    );
    if (nodes.length === 0) return EXIT.ok;
    const now = Date.now();
    io.out(
      table(
        ['NODE', 'CONNECTED', 'MODE', 'SENT', 'ACKED', 'NACKED', 'CONFIG', 'STREAMS', 'LAST SEEN', 'LAST ERROR'],
        nodes.map((n) => [
          n.node,
          n.connected ? 'yes' : 'NO',
          n.failMode || '-',
          n.sentVersion,
          n.ackedVersion,
          n.nackedVersion || '-',
          configState(n),
          n.streamsOpened,
          n.lastSeenUnixMs ? `${formatAge(now - n.lastSeenUnixMs)} ago` : 'never',
          nodeProblem(n, now),
        ]),
      ),
    );
    return EXIT.ok;
  });
}

interface ProxyStatus {
  ready: boolean;
  failMode?: string;
  version: string;
  controller: { address: string; connected: boolean; configVersion: number; summary?: string };
  identity: { notAfter: string } | null;
  connections: { live: number };
  workloads: { workload: string; identity: string }[];
  workloadCertificates: { identity: string; notAfter?: string; renewals: number; lastError?: string }[];
  tunnels: { sessions: number; streams: number };
  services: number;
  policies: number;
  /** Where the config it serves came from (proxies that say). */
  config?: { summary?: string };
  /** Where its pods see mesh clients connect from (proxies that say). */
  delivery?: { mode: 'client' | 'proxy'; pods: number; failed: number; firstFailure?: string; fallbacks: number };
  /** The same-node fast path (proxies that say). */
  fastPath?: { available: boolean; error?: string; enabled?: boolean; open?: number; joined?: number; proxied?: number; fallback?: Record<string, number> };
}

function formatFastPath(f: NonNullable<ProxyStatus['fastPath']>): string {
  if (!f.available) return `unavailable in this kernel (${f.error ?? 'see the log'}): the proxy copies same-node connections`;
  const fell = Object.entries(f.fallback ?? {}).filter(([, n]) => n > 0);
  return [
    `${f.enabled ? 'on' : 'off (MeshConfig sameNodeFastPath)'}: ${f.open ?? 0} open, ${f.joined ?? 0} joined, ${f.proxied ?? 0} handed back to the proxy`,
    ...(fell.length ? [`not joined: ${fell.map(([why, n]) => `${n} ${why}`).join(', ')}`] : []),
  ].join('; ');
}

function formatDelivery(d: NonNullable<ProxyStatus['delivery']>): string {
  if (d.mode === 'proxy') return "from the proxy's address (--deliver-from proxy)";
  const parts = [`from the client's own address to ${d.pods} pods`];
  if (d.failed) parts.push(`from the proxy's address to ${d.failed} that could not be prepared (${d.firstFailure ?? 'see the log'})`);
  if (d.fallbacks) parts.push(`${d.fallbacks} connections fell back to the proxy's address`);
  return parts.join('; ');
}

async function proxyStatus(node: string): Promise<ProxyStatus | undefined> {
  try {
    return JSON.parse(await adminGet(adminSocketOf(node), '/status')) as ProxyStatus;
  } catch {
    return undefined;
  }
}

function formatProxy(p: ProxyStatus): string {
  return [
    `  health      ${p.ready ? 'ready' : 'NOT ready'} (nodemesh ${p.version})${p.failMode ? `, ${p.failMode}` : ''}`,
    `  controller  ${p.controller.address}: ${p.controller.summary ?? (p.controller.connected ? 'connected' : 'not connected')}`,
    `  node cert   valid until ${p.identity?.notAfter ?? '-'}`,
    `  config      ${p.services} services, ${p.policies} authorization policies, ${p.workloads.length} local workloads${p.config?.summary ? `; ${p.config.summary}` : ''}`,
    `  connections ${p.connections.live} open; tunnels: ${p.tunnels.sessions} connections, ${p.tunnels.streams} streams`,
    ...(p.delivery ? [`  delivery    ${formatDelivery(p.delivery)}`] : []),
    ...(p.fastPath ? [`  fast path   ${formatFastPath(p.fastPath)}`] : []),
    ...p.workloads.map((w) => `  workload    ${w.workload}  ${w.identity}`),
    ...p.workloadCertificates.map(
      (c) => `  certificate ${c.identity}  ${c.notAfter ? `valid until ${c.notAfter}` : 'NONE yet'}, renewed ${c.renewals}×${c.lastError ? `; last error: ${c.lastError}` : ''}`,
    ),
  ].join('\n') + '\n';
}

export const statusCommand = defineCommand({
  name: 'status',
  summary: "The mesh's nodes as the controller sees them, or one node's data path (--node)",
  usage: 'status [--node N] [-o text|json]',
  description:
    'Without --node: every node, whether it is connected, the config versions sent and\n' +
    'acknowledged, its fail mode (MODE: fail-closed or fail-open), what config it holds (CONFIG: NONE, receiving, current, applying N,\n' +
    'refused N, kept N while not connected), the streams it opened and why the last one failed\n' +
    '(admin credentials). With --node: that node\'s data path on this host: what is attached\n' +
    'where, enrolled pods, map fill, counters, and its proxy\'s link to the controller.',
  options: { node: { type: 'string' }, output: { type: 'string', short: 'o', default: 'text' }, credentials: { type: 'string' }, controller: { type: 'string' } },
  optionHelp: { node: 'a node of this host: show its data path', output: 'text or json', credentials: 'admin credentials file', controller: 'controller address IP:PORT' },
  async run(values, _p, io) {
    const format = outputFormat('nodemesh status', values.output);
    if (values.node === undefined) return controllerStatus(values, io, format);
    const node = requiredFlag('nodemesh status', 'node', values.node);
    const features = probeFeatures();
    if (!features.usable) {
      const report = { node, features };
      if (format === 'json') io.out(toJson(report));
      else io.out(`node ${node}: cannot read the data path here:\n${features.problems.map((p) => `  - ${p}`).join('\n')}\n`);
      return EXIT.rejected;
    }
    let dp: Datapath;
    try {
      dp = Datapath.open(node);
    } catch (err) {
      if (err instanceof DatapathError && err.code === 'NM_ERR_DATAPATH_NOT_INSTALLED') {
        if (format === 'json') io.out(toJson({ node, installed: false, features }));
        else io.out(`${err.message}\n`);
        return EXIT.rejected;
      }
      throw err;
    }
    try {
      const status = dp.status();
      const proxy = await proxyStatus(node);
      if (format === 'json') io.out(toJson({ ...status, installed: true, features, proxy }));
      else {
        io.out(formatStatus(status, features));
        io.out(proxy ? `\nproxy\n${formatProxy(proxy)}` : `\nproxy     not running here (no ${adminSocketOf(node)})\n`);
      }
    } finally {
      dp.close();
    }
    return EXIT.ok;
  },
});
