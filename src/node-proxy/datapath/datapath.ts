/**
 * The node's data path (see docs/architecture.md, 'The data path'): loads
 * bpf/redirect.bpf.c, attaches it at the root of the cgroup2 hierarchy (or a
 * given cgroup), pins maps and links under /sys/fs/bpf/nodemesh/<node>/ so
 * redirection outlives the proxy process, enrolls pods, and answers "where
 * was this connection going?" for the proxy.
 *
 * Install adopts what an earlier run pinned: the maps are reused as they are
 * and each pinned link is switched to the newly loaded program atomically, so
 * a proxy restart never leaves a moment without redirection.
 *
 * Capture follows the network namespace, not the cgroup: at the cgroup root
 * the programs see every socket of the machine and act on those of an
 * enrolled netns, wherever the process sits in the cgroup tree (a process
 * that entered a pod's netns with nsenter --net from another cgroup is
 * captured like the pod's own). A narrower cgroup (`cgroup` option) is still
 * accepted, for hosts where attaching at the root is not wanted; then
 * processes outside it that enter a pod's netns are not captured.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

import { abi, BpfError, BpfMap, cgroupId, findCgroup2Mount, isCgroup2, Link, loadObject, netnsCookie, RingBuffer, scalar, type BpfObject } from '../../bpf';
import { native } from '../../bpf/native';
import { MeshError } from '../../errors';
import { bpfObjectPath } from '../../paths';

export const DEFAULT_PIN_BASE = '/sys/fs/bpf/nodemesh';
export const DEFAULT_STATE_DIR = '/run/nodemesh/datapath';
export const DEFAULT_PROXY_PORT = 15001;
/**
 * How old the proxy's heartbeat in nm_config may be before the kernel counts
 * the node as having no proxy (a SIGKILLed proxy leaves `ready` set). The
 * proxy beats every HEARTBEAT_MS; the margin absorbs a busy event loop.
 */
export const DEFAULT_WATCHDOG_MS = 3_000;
export const HEARTBEAT_MS = 1_000;

/** Programs of redirect.bpf.o and the pinned link name of each. */
const PROGRAMS = ['nm_connect4', 'nm_connect6', 'nm_sockops', 'nm_ingress', 'nm_sock_release'] as const;
type Program = (typeof PROGRAMS)[number];

const MAPS = {
  config: 'nm_config',
  pods: 'nm_pods',
  exclude: 'nm_exclude',
  excludePorts: 'nm_exclude_ports',
  origCookie: 'nm_orig_cookie',
  origTuple: 'nm_orig_tuple',
  events: 'nm_events',
  stats: 'nm_stats',
} as const;

export class DatapathError extends MeshError {}

export interface DatapathConfig {
  proxyIp: string | null;
  proxyIp6: string | null;
  proxyPort: number;
  ready: boolean;
  /** While no proxy is ready: true lets pod connects around the proxy, false (the default) refuses them with EPERM. */
  failOpen: boolean;
  /** CLOCK_MONOTONIC ns (bpf_ktime_get_ns) of the proxy's latest heartbeat; 0n: none yet. */
  heartbeatNs: bigint;
  /** `ready` lapses once the heartbeat is older than this; 0: no watchdog. */
  watchdogMs: number;
}

export interface InstallOptions {
  node: string;
  /**
   * cgroup v2 directory to attach to. Default: the root of the cgroup2
   * hierarchy, so every socket of an enrolled netns is captured.
   */
  cgroup?: string;
  proxyIp: string;
  proxyIp6?: string;
  proxyPort?: number;
  /** Let pod connects around the proxy while none is ready. Default: what an earlier install set, else false (refuse them, EPERM). */
  failOpen?: boolean;
  /** Mark the proxy ready now. Default: keep what an earlier run set, else not ready. */
  ready?: boolean;
  pinBase?: string;
  stateDir?: string;
}

export interface OpenOptions {
  pinBase?: string;
  stateDir?: string;
}

export interface PodEntry {
  netnsCookie: bigint;
  index: number;
  flags: number;
}

/** The origin of a redirected connection, as the kernel recorded it. */
export interface Origin {
  /** Where the pod was connecting: the original destination. */
  ip: string;
  port: number;
  netnsCookie: bigint;
  cgroupId: bigint;
  pid: number;
  family: 4 | 6;
  startNs: bigint;
}

export interface FlowRecord {
  /** close: a redirected connection ended; strict-drop: plaintext to a STRICT pod was dropped (origin = the pod's listener, src = the sender). */
  kind: 'close' | 'strict-drop';
  origin: Origin;
  srcIp: string;
  srcPort: number;
  socketCookie: bigint;
  endNs: bigint;
  bytesSent: bigint;
  bytesReceived: bigint;
  established: boolean;
}

export interface LinkStatus {
  program: string;
  pinPath: string;
  pinned: boolean;
  attached: boolean;
  cgroupId?: string;
  progId?: number;
}

export interface DatapathStatus {
  node: string;
  pinDir: string;
  cgroup: string | null;
  /** netns: attached at the cgroup2 root, every socket of an enrolled netns is captured; cgroup: only those of processes below `cgroup`. */
  capture: 'netns' | 'cgroup' | null;
  config: DatapathConfig;
  /** What the kernel does with a pod's connect now: redirect to the proxy, or (no proxy ready) refuse or let it around. */
  proxy: ProxyLiveness;
  links: LinkStatus[];
  pods: PodEntry[];
  excludedCidrs: string[];
  excludedPorts: { port: number; netnsCookie: bigint }[];
  maps: { name: string; entries: number; maxEntries: number }[];
  counters: Record<abi.StatName, bigint>;
}

export interface ProxyLiveness {
  /** ready and, with the watchdog on, a heartbeat younger than watchdogMs: what the kernel checks. */
  alive: boolean;
  /** Age of the latest heartbeat, ms; null: none written. */
  heartbeatAgeMs: number | null;
  /** fail-open: pods' connects go around the proxy while none is alive; fail-closed: they are refused. */
  mode: 'fail-open' | 'fail-closed';
}

/** The mode a node's data path is in, as `nodemesh status` and the proxy's /status say it. */
export function failMode(c: Pick<DatapathConfig, 'failOpen'>): 'fail-open' | 'fail-closed' {
  return c.failOpen ? 'fail-open' : 'fail-closed';
}

/** CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns() reads. */
export function monotonicNs(): bigint {
  return process.hrtime.bigint();
}

/** What proxy_ready() in bpf/redirect.bpf.c decides, for a config read now. */
export function proxyLiveness(c: DatapathConfig, nowNs = monotonicNs()): ProxyLiveness {
  const heartbeatAgeMs = c.heartbeatNs === 0n ? null : Number((nowNs - c.heartbeatNs) / 1_000_000n);
  const fresh = c.watchdogMs === 0 || (heartbeatAgeMs !== null && heartbeatAgeMs <= c.watchdogMs);
  return { alive: c.ready && fresh, heartbeatAgeMs, mode: failMode(c) };
}

interface InstallRecord {
  node: string;
  cgroup: string;
  cgroupId: string;
  installedAt: string;
}

/** Parses "198.18.0.0/24" or "fd00::/8" into the LPM key (IPv4 mapped). */
export function parseCidr(cidr: string): { prefixlen: number; addr: string } {
  const [ip, lenText] = cidr.split('/');
  const family = net.isIP(ip ?? '');
  if (!family) throw new DatapathError('NM_ERR_DATAPATH_CIDR', `"${cidr}" is not a CIDR (e.g. 198.18.0.0/24 or fd00::/8)`);
  const max = family === 4 ? 32 : 128;
  const len = lenText === undefined ? max : Number(lenText);
  if (!Number.isInteger(len) || len < 0 || len > max || (lenText !== undefined && !/^\d+$/.test(lenText)))
    throw new DatapathError('NM_ERR_DATAPATH_CIDR', `"${cidr}": prefix length must be 0..${max}`);
  return { prefixlen: family === 4 ? 96 + len : len, addr: ip! };
}

function formatCidr(k: { prefixlen: number; addr: string }): string {
  return net.isIPv4(k.addr) ? `${k.addr}/${k.prefixlen - 96}` : `${k.addr}/${k.prefixlen}`;
}

function toOrigin(o: ReturnType<typeof abi.Origin.decode>): Origin {
  return {
    ip: o.orig_ip,
    port: o.orig_port,
    netnsCookie: o.netns_cookie,
    cgroupId: o.cgroup_id,
    pid: o.pid,
    family: o.family === 6 ? 6 : 4,
    startNs: o.start_ns,
  };
}

/** Strips the ::ffff: of an IPv4 peer seen on a dual-stack socket. */
export function plainIp(ip: string): string {
  return ip.startsWith('::ffff:') && net.isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}

interface Handles {
  config: BpfMap<number, ReturnType<typeof abi.Config.decode>>;
  pods: BpfMap<bigint, ReturnType<typeof abi.Pod.decode>>;
  exclude: BpfMap<ReturnType<typeof abi.CidrKey.decode>, number>;
  excludePorts: BpfMap<ReturnType<typeof abi.PortKey.decode>, number>;
  origCookie: BpfMap<bigint, ReturnType<typeof abi.Origin.decode>>;
  origTuple: BpfMap<ReturnType<typeof abi.Tuple.decode>, ReturnType<typeof abi.Origin.decode>>;
  events: BpfMap;
  stats: BpfMap<number, bigint>;
}

function openMaps(open: (name: string, codecs: { key?: unknown; value?: unknown }) => BpfMap<unknown, unknown>): Handles {
  const opened: BpfMap<unknown, unknown>[] = [];
  const o = <K, V>(name: string, key?: unknown, value?: unknown): BpfMap<K, V> => {
    const m = open(name, { key, value }) as BpfMap<K, V>;
    opened.push(m as BpfMap<unknown, unknown>);
    return m;
  };
  try {
    return {
      config: o(MAPS.config, scalar('u32'), abi.Config),
      pods: o(MAPS.pods, scalar('u64'), abi.Pod),
      exclude: o(MAPS.exclude, abi.CidrKey, scalar('u8')),
      excludePorts: o(MAPS.excludePorts, abi.PortKey, scalar('u8')),
      origCookie: o(MAPS.origCookie, scalar('u64'), abi.Origin),
      origTuple: o(MAPS.origTuple, abi.Tuple, abi.Origin),
      events: o(MAPS.events),
      stats: o(MAPS.stats, scalar('u32'), scalar('u64')),
    };
  } catch (err) {
    for (const m of opened) m.close();
    throw err;
  }
}

/**
 * Maps pinned by an install of another layout (nm_config before the
 * heartbeat, nm_stats before its newer counters) cannot be reused by the new
 * object: libbpf refuses to load it. Their pins are removed so the load
 * creates them anew; the old programs keep the old maps until their links
 * switch. A new nm_config starts all zero: no proxy, fail closed.
 */
function dropIncompatiblePins(pinDir: string): void {
  const want: Record<string, { valueSize: number; maxEntries?: number }> = {
    [MAPS.config]: { valueSize: abi.Config.size },
    [MAPS.pods]: { valueSize: abi.Pod.size },
    [MAPS.stats]: { valueSize: 8, maxEntries: abi.STATS.length },
  };
  for (const [name, w] of Object.entries(want)) {
    const pin = path.join(pinDir, name);
    if (native().pinnedKind(pin) !== 'map') continue;
    const m = BpfMap.openPinned(pin);
    const fits = m.info.valueSize === w.valueSize && (w.maxEntries === undefined || m.info.maxEntries === w.maxEntries);
    m.close();
    if (!fits) fs.rmSync(pin);
  }
}

/** The root of the cgroup2 hierarchy: every socket of the machine is below it. */
export function defaultCgroup(): string {
  const root = findCgroup2Mount();
  if (!root) throw new DatapathError('NM_ERR_DATAPATH_CGROUP', 'cgroup v2 is not mounted: mount -t cgroup2 none /sys/fs/cgroup (or give --cgroup)');
  return root;
}

/** The kernel's cap on programs attached to one cgroup hook (BPF_CGROUP_MAX_PROGS). */
export const MAX_PROGRAMS_PER_HOOK = 64;

function attach(obj: BpfObject, program: Program, cgroup: string): Link {
  try {
    return obj.attachCgroup(program, cgroup);
  } catch (err) {
    if (err instanceof BpfError && err.code === 'E2BIG')
      throw new DatapathError(
        'NM_ERR_DATAPATH_ATTACH',
        `attach ${program} to ${cgroup}: ${MAX_PROGRAMS_PER_HOOK} programs (the kernel's limit per hook and cgroup) are attached there already, one per installed node: remove stale ones (\`nodemesh datapath uninstall --node N\`, \`nodemesh lab down --name L\`) or give --cgroup`,
        { cause: err },
      );
    throw err;
  }
}

function validNode(node: string): void {
  if (!/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$/.test(node))
    throw new DatapathError('NM_ERR_DATAPATH_NODE', `node name "${node}" must be 1-63 letters, digits, ".", "_" or "-"`);
}

export class Datapath {
  readonly node: string;
  readonly pinDir: string;
  readonly #stateFile: string;
  readonly #maps: Handles;
  readonly #links: Map<Program, Link>;
  /** Reused for every origin lookup: no allocation per key. */
  readonly #tupleKey = Buffer.alloc(abi.Tuple.size);
  /** This process's netns cookie, learnt at the first enroll(). */
  #ownNetns: bigint | undefined;

  private constructor(node: string, pinDir: string, stateFile: string, maps: Handles, links: Map<Program, Link>) {
    this.node = node;
    this.pinDir = pinDir;
    this.#stateFile = stateFile;
    this.#maps = maps;
    this.#links = links;
  }

  static pinDirOf(node: string, pinBase = DEFAULT_PIN_BASE): string {
    return path.join(pinBase, node);
  }

  /**
   * Loads, attaches and pins the data path for `node`, or adopts an earlier
   * install of it (same cgroup): maps kept, links switched to the new programs.
   * On failure, whatever this call added is removed again.
   */
  static install(opts: InstallOptions): Datapath {
    validNode(opts.node);
    const pinDir = Datapath.pinDirOf(opts.node, opts.pinBase);
    const stateFile = path.join(opts.stateDir ?? DEFAULT_STATE_DIR, `${opts.node}.json`);
    if (!net.isIPv4(opts.proxyIp)) throw new DatapathError('NM_ERR_DATAPATH_CONFIG', `--proxy-ip "${opts.proxyIp}" is not an IPv4 address`);
    if (opts.proxyIp6 !== undefined && !net.isIPv6(opts.proxyIp6))
      throw new DatapathError('NM_ERR_DATAPATH_CONFIG', `--proxy-ip6 "${opts.proxyIp6}" is not an IPv6 address`);
    const port = opts.proxyPort ?? DEFAULT_PROXY_PORT;
    if (!Number.isInteger(port) || port < 1 || port > 65535)
      throw new DatapathError('NM_ERR_DATAPATH_CONFIG', `--proxy-port ${port} is not a port (1-65535)`);
    const cgroup = opts.cgroup ?? defaultCgroup();
    if (!fs.existsSync(cgroup) || !isCgroup2(cgroup))
      throw new DatapathError('NM_ERR_DATAPATH_CGROUP', `${cgroup} is not a cgroup v2 directory: give a cgroup v2 directory, or leave --cgroup out for the cgroup2 root`);
    const cgid = cgroupId(cgroup);

    const linkPath = (p: Program): string => path.join(pinDir, 'links', p);
    const existing = new Map<Program, Link>();
    try {
      for (const p of PROGRAMS) if (native().pinnedKind(linkPath(p)) === 'link') existing.set(p, Link.openPinned(linkPath(p)));
    } catch (err) {
      for (const l of existing.values()) l.close();
      throw err;
    }

    const hadPins = fs.existsSync(pinDir);
    dropIncompatiblePins(pinDir);
    const made: Link[] = [];
    let obj: BpfObject | undefined;
    try {
      obj = loadObject(bpfObjectPath('redirect'), { pinRoot: pinDir });
      const links = new Map<Program, Link>();
      // A link on this cgroup switches program in place. Anywhere else (an
      // install on another cgroup, e.g. before the root became the default),
      // the new link is attached first and the old one detached only once
      // every new one is in: moving never leaves a moment without redirection.
      const replaced: Link[] = [];
      for (const p of PROGRAMS) {
        const old = existing.get(p);
        const info = old?.info();
        if (old && info?.attached && info.cgroupId === cgid) {
          old.update(obj, p);
          links.set(p, old);
          continue;
        }
        const link = attach(obj, p, cgroup);
        made.push(link);
        links.set(p, link);
        if (old) replaced.push(old);
      }
      for (const old of replaced) {
        if (old.info().attached) old.detach();
        old.unpin();
        old.close();
      }
      for (const p of PROGRAMS) {
        const link = links.get(p)!;
        if (made.includes(link)) link.pin(linkPath(p));
      }
      const maps = openMaps((name, codecs) => obj!.map(name, codecs as never));
      const dp = new Datapath(opts.node, pinDir, stateFile, maps, links);
      obj.close();
      obj = undefined;

      const cur = dp.config();
      dp.configure({
        proxyIp: opts.proxyIp,
        proxyIp6: opts.proxyIp6 ?? null,
        proxyPort: port,
        failOpen: opts.failOpen ?? cur.failOpen,
        // An adopted `ready` comes with the old proxy's heartbeat: once that
        // is stale the kernel treats the node as having no proxy until this
        // one beats (docs/architecture.md, 'Fail closed, and the watchdog').
        ready: opts.ready ?? (cur.proxyPort === 0 ? false : cur.ready),
        // Marked ready by hand (`datapath install --ready`): no proxy beats for it.
        ...(opts.ready === true ? { watchdogMs: 0 } : {}),
      });
      const record: InstallRecord = { node: opts.node, cgroup, cgroupId: String(cgid), installedAt: new Date().toISOString() };
      fs.mkdirSync(path.dirname(stateFile), { recursive: true });
      fs.writeFileSync(stateFile, JSON.stringify(record, null, 2) + '\n');
      return dp;
    } catch (err) {
      for (const l of made) {
        try {
          l.detach();
          if (l.pinPath !== null) l.unpin();
        } catch {
          // keep rolling back
        }
        l.close();
      }
      for (const l of existing.values()) l.close();
      obj?.close();
      if (!hadPins) fs.rmSync(pinDir, { recursive: true, force: true });
      throw err;
    }
  }

  /** Opens an installed data path from its pins, changing nothing. */
  static open(node: string, opts: OpenOptions = {}): Datapath {
    validNode(node);
    const pinDir = Datapath.pinDirOf(node, opts.pinBase);
    const stateFile = path.join(opts.stateDir ?? DEFAULT_STATE_DIR, `${node}.json`);
    if (!fs.existsSync(path.join(pinDir, MAPS.config)))
      throw new DatapathError(
        'NM_ERR_DATAPATH_NOT_INSTALLED',
        `no data path is installed for node ${node} (nothing pinned at ${pinDir}): run \`nodemesh datapath install --node ${node} …\``,
      );
    const maps = openMaps((name, codecs) => BpfMap.openPinned(path.join(pinDir, name), codecs as never));
    const links = new Map<Program, Link>();
    for (const p of PROGRAMS) {
      const lp = path.join(pinDir, 'links', p);
      if (native().pinnedKind(lp) === 'link') links.set(p, Link.openPinned(lp));
    }
    return new Datapath(node, pinDir, stateFile, maps, links);
  }

  /** Whether something is pinned for `node`. */
  static installed(node: string, pinBase = DEFAULT_PIN_BASE): boolean {
    return fs.existsSync(path.join(Datapath.pinDirOf(node, pinBase), MAPS.config));
  }

  /**
   * Detaches every program and removes every pin and record of `node`, from
   * whatever is there (a full install, a half one, or nothing). Idempotent.
   */
  static uninstall(node: string, opts: OpenOptions = {}): void {
    validNode(node);
    const pinDir = Datapath.pinDirOf(node, opts.pinBase);
    const linksDir = path.join(pinDir, 'links');
    // Detach first, so redirection stops before its maps go.
    if (fs.existsSync(linksDir)) {
      for (const name of fs.readdirSync(linksDir)) {
        const lp = path.join(linksDir, name);
        if (native().pinnedKind(lp) !== 'link') continue;
        const link = Link.openPinned(lp);
        try {
          if (link.info().attached) link.detach();
        } finally {
          link.close();
        }
      }
    }
    fs.rmSync(pinDir, { recursive: true, force: true });
    fs.rmSync(path.join(opts.stateDir ?? DEFAULT_STATE_DIR, `${node}.json`), { force: true });
  }

  /** The cgroup recorded at install, if the record is there. */
  cgroup(): string | null {
    try {
      return (JSON.parse(fs.readFileSync(this.#stateFile, 'utf8')) as InstallRecord).cgroup;
    } catch {
      return null;
    }
  }

  config(): DatapathConfig {
    const c = this.#maps.config.get(0)!;
    return {
      proxyIp: c.proxy_ip4 === '0.0.0.0' ? null : c.proxy_ip4,
      proxyIp6: c.proxy_ip6 === '::' ? null : c.proxy_ip6,
      proxyPort: c.proxy_port,
      ready: c.ready !== 0,
      failOpen: c.fail_open !== 0,
      heartbeatNs: c.heartbeat_ns,
      watchdogMs: c.watchdog_ms,
    };
  }

  /** Changes the config the hooks read; the kernel sees it at the next connect. */
  configure(change: Partial<DatapathConfig>): void {
    const next = { ...this.config(), ...change };
    this.#maps.config.set(0, {
      proxy_ip4: next.proxyIp ?? '0.0.0.0',
      proxy_ip6: next.proxyIp6 ?? '::',
      proxy_port: next.proxyPort,
      ready: next.ready ? 1 : 0,
      fail_open: next.failOpen ? 1 : 0,
      heartbeat_ns: next.heartbeatNs,
      watchdog_ms: next.watchdogMs,
    });
  }

  setReady(ready: boolean): void {
    this.configure({ ready });
  }

  /** The proxy is alive now: the kernel's watchdog reads this (every HEARTBEAT_MS from a running proxy). */
  heartbeat(nowNs = monotonicNs()): void {
    this.configure({ heartbeatNs: nowNs });
  }

  /**
   * Enrolls the pod whose network namespace is `netnsPath`; returns its netns
   * cookie. Refuses this process's own namespace: at the cgroup root every
   * socket of an enrolled netns is redirected, the proxy's own included, so
   * its deliveries would loop back into itself.
   */
  async enroll(netnsPath: string, pod: { index?: number; flags?: number } = {}): Promise<bigint> {
    this.#ownNetns ??= await netnsCookie('/proc/self/ns/net');
    const cookie = await netnsCookie(netnsPath);
    if (cookie === this.#ownNetns)
      throw new DatapathError(
        'NM_ERR_DATAPATH_ENROLL',
        `${netnsPath} is this process's own network namespace (the node's, where the proxy runs): only pod namespaces can be enrolled; fix the Workload's netns`,
      );
    this.enrollCookie(cookie, pod);
    return cookie;
  }

  /** Enrolls by cookie; this process's own namespace is refused once enroll() has learnt its cookie. */
  enrollCookie(cookie: bigint, pod: { index?: number; flags?: number } = {}): void {
    if (cookie === this.#ownNetns)
      throw new DatapathError('NM_ERR_DATAPATH_ENROLL', `netns cookie ${cookie} is this process's own network namespace: only pod namespaces can be enrolled`);
    this.#maps.pods.set(cookie, { index: pod.index ?? 0, flags: pod.flags ?? 0 });
  }

  /** Unenrolls a pod by netns path; false when it was not enrolled. */
  async unenroll(netnsPath: string): Promise<boolean> {
    return this.#maps.pods.delete(await netnsCookie(netnsPath));
  }

  unenrollCookie(cookie: bigint): boolean {
    return this.#maps.pods.delete(cookie);
  }

  pods(): PodEntry[] {
    return this.#maps.pods.entries().map(([netnsCookie, p]) => ({ netnsCookie, index: p.index, flags: p.flags }));
  }

  /** Destinations in `cidr` are never redirected. */
  excludeCidr(cidr: string): void {
    this.#maps.exclude.set(parseCidr(cidr), 1);
  }

  includeCidr(cidr: string): boolean {
    return this.#maps.exclude.delete(parseCidr(cidr));
  }

  excludedCidrs(): string[] {
    return [...this.#maps.exclude.keys()].map(formatCidr);
  }

  /** Destination `port` is never redirected, for one pod (netns cookie) or every pod (0n). */
  excludePort(port: number, netnsCookie = 0n): void {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new DatapathError('NM_ERR_DATAPATH_CONFIG', `${port} is not a port (1-65535)`);
    this.#maps.excludePorts.set({ netns_cookie: netnsCookie, port }, 1);
  }

  includePort(port: number, netnsCookie = 0n): boolean {
    return this.#maps.excludePorts.delete({ netns_cookie: netnsCookie, port });
  }

  excludedPorts(): { port: number; netnsCookie: bigint }[] {
    return [...this.#maps.excludePorts.keys()].map((k) => ({ port: k.port, netnsCookie: k.netns_cookie }));
  }

  /**
   * The origin of an accepted connection, by the 4-tuple the proxy sees
   * (peer = the pod, local = the proxy). Removes it from the kernel map:
   * each origin is handed out once. Counts a miss in nm_stats' lookup_miss.
   */
  takeOrigin(peerIp: string, peerPort: number, localIp: string, localPort: number): Origin | undefined {
    const key = this.#tupleKey;
    try {
      abi.Tuple.encode({ src_ip: plainIp(peerIp), dst_ip: plainIp(localIp), src_port: peerPort, dst_port: localPort }, key);
    } catch {
      return undefined;
    }
    const raw = this.#maps.origTuple.raw.lookupAndDelete(key);
    if (raw === null) {
      this.#countMiss();
      return undefined;
    }
    return toOrigin(abi.Origin.decode(raw));
  }

  /** takeOrigin() for an accepted socket. */
  originOf(socket: net.Socket): Origin | undefined {
    const { remoteAddress, remotePort, localAddress, localPort } = socket;
    if (!remoteAddress || !remotePort || !localAddress || !localPort) return undefined;
    return this.takeOrigin(remoteAddress, remotePort, localAddress, localPort);
  }

  #countMiss(): void {
    const idx = abi.STATS.indexOf('lookup_miss');
    const cur = this.#maps.stats.getPerCpu(idx) ?? [];
    cur[0] = (cur[0] ?? 0n) + 1n;
    this.#maps.stats.setPerCpu(idx, cur);
  }

  /** The data path's counters, summed over CPUs. */
  counters(): Record<abi.StatName, bigint> {
    const out = {} as Record<abi.StatName, bigint>;
    abi.STATS.forEach((name, i) => (out[name] = this.#maps.stats.getSum(i) ?? 0n));
    return out;
  }

  /** Entries waiting in the origin maps: [by socket cookie, by tuple]. */
  originEntries(): { byCookie: number; byTuple: number } {
    return { byCookie: this.#maps.origCookie.count(), byTuple: this.#maps.origTuple.count() };
  }

  /** Flow records of closed redirected connections, delivered in batches. */
  flowEvents(onRecords: (records: FlowRecord[]) => void, onError?: (err: Error) => void): RingBuffer<FlowRecord> {
    const codec = {
      ...abi.FlowEvent,
      decode: (buf: Buffer, at = 0): FlowRecord => {
        const e = abi.FlowEvent.decode(buf, at);
        return {
          kind: e.kind === abi.EVENT_STRICT_DROP ? 'strict-drop' : 'close',
          origin: toOrigin(abi.Origin.decode(e.origin)),
          srcIp: e.src_ip,
          srcPort: e.src_port,
          socketCookie: e.socket_cookie,
          endNs: e.end_ns,
          bytesSent: e.bytes_sent,
          bytesReceived: e.bytes_received,
          established: e.established !== 0,
        };
      },
      encode: () => {
        throw new TypeError('flow events are read-only');
      },
    };
    return new RingBuffer(this.#maps.events as BpfMap<unknown, unknown>, codec, { onRecords, onError });
  }

  links(): LinkStatus[] {
    return PROGRAMS.map((program) => {
      const pinPath = path.join(this.pinDir, 'links', program);
      const link = this.#links.get(program);
      if (!link) return { program, pinPath, pinned: false, attached: false };
      const info = link.info();
      return { program, pinPath, pinned: link.pinPath !== null, attached: info.attached === true, cgroupId: String(info.cgroupId), progId: info.progId };
    });
  }

  status(): DatapathStatus {
    const maps = Object.values(this.#maps) as BpfMap<unknown, unknown>[];
    const cgroup = this.cgroup();
    return {
      node: this.node,
      pinDir: this.pinDir,
      cgroup,
      capture: cgroup === null ? null : cgroup === findCgroup2Mount() ? 'netns' : 'cgroup',
      config: this.config(),
      proxy: proxyLiveness(this.config()),
      links: this.links(),
      pods: this.pods(),
      excludedCidrs: this.excludedCidrs(),
      excludedPorts: this.excludedPorts(),
      maps: maps
        .filter((m) => m.info.type !== 'ringbuf')
        .map((m) => ({ name: m.name, entries: m.count(), maxEntries: m.info.maxEntries })),
      counters: this.counters(),
    };
  }

  /** Detaches and removes everything of this node's data path, then closes. */
  uninstall(): void {
    this.close();
    Datapath.uninstall(this.node, { pinBase: path.dirname(this.pinDir), stateDir: path.dirname(this.#stateFile) });
  }

  /** Releases this process's handles; pins (and so redirection) stay. Safe twice. */
  close(): void {
    for (const m of Object.values(this.#maps) as BpfMap<unknown, unknown>[]) m.close();
    for (const l of this.#links.values()) l.close();
  }
}
