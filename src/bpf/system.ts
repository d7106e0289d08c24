/**
 * Where the kernel's pieces are on this host (cgroup2, bpffs), the ids BPF
 * programs key on (cgroup id, netns cookie, socket cookie) and a readable
 * report of what the kernel supports.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import type * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { bpfError, call, fromAddon } from './errors';
import { native, tryNative } from './native';

export interface MountEntry {
  source: string;
  target: string;
  type: string;
  options: string;
}

const BPF_FS_MAGIC = 0xcafe4a11;
const CGROUP2_SUPER_MAGIC = 0x63677270;

/** Parses /proc/mounts text (octal escapes such as \040 for a space). */
export function parseMounts(text: string): MountEntry[] {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length < 4) continue;
    out.push({ source: unescape(f[0]!), target: unescape(f[1]!), type: f[2]!, options: f[3]! });
  }
  return out;
}

function mounts(): MountEntry[] {
  try {
    return parseMounts(fs.readFileSync('/proc/self/mounts', 'utf8'));
  } catch {
    return [];
  }
}

/**
 * The cgroup v2 mount point: /sys/fs/cgroup on unified hosts,
 * /sys/fs/cgroup/unified on hybrid ones. The first cgroup2 mount wins.
 */
export function findCgroup2Mount(entries: MountEntry[] = mounts()): string | undefined {
  return entries.find((m) => m.type === 'cgroup2')?.target;
}

/** bpffs mount points, /sys/fs/bpf first when it is one. */
export function findBpffs(entries: MountEntry[] = mounts()): string[] {
  const all = entries.filter((m) => m.type === 'bpf').map((m) => m.target);
  return [...new Set(all)].sort((a, b) => (a === '/sys/fs/bpf' ? -1 : b === '/sys/fs/bpf' ? 1 : 0));
}

function statfsType(p: string): number | undefined {
  try {
    return Number(fs.statfsSync(p).type);
  } catch {
    return undefined;
  }
}

export function isBpffs(p: string): boolean {
  return statfsType(p) === BPF_FS_MAGIC;
}

export function isCgroup2(p: string): boolean {
  return statfsType(p) === CGROUP2_SUPER_MAGIC;
}

/** Mounts bpffs at `target` (root only). Does nothing when it is one already. */
export function mountBpffs(target = '/sys/fs/bpf'): void {
  if (isBpffs(target)) return;
  fs.mkdirSync(target, { recursive: true });
  const r = spawnSync('mount', ['-t', 'bpf', 'bpf', target], { encoding: 'utf8' });
  if (r.status !== 0)
    throw bpfError('bpffs_mount', 'NM_ERR_BPF_NO_BPFFS', `mount -t bpf bpf ${target} failed: ${(r.stderr || r.error?.message || '').trim()} (run as root)`);
}

/**
 * Makes a pin directory (mkdir -p) after checking it lies on a bpffs, so a
 * pin never fails half way with a bare EPERM.
 */
export function ensurePinDir(dir: string): void {
  let probe = path.resolve(dir);
  while (!fs.existsSync(probe)) probe = path.dirname(probe);
  if (!isBpffs(probe))
    throw bpfError('pin_dir', 'NM_ERR_BPF_NO_BPFFS', `${dir} is not on a bpffs (${probe} is not one): mount it with \`mount -t bpf bpf /sys/fs/bpf\` or pin under a bpffs mount`);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
}

/** The id bpf_get_current_cgroup_id() returns for tasks in this cgroup v2 directory. */
export function cgroupId(cgroupPath: string): bigint {
  return call(() => native().cgroupId(cgroupPath));
}

/**
 * The netns cookie of a network namespace file (/proc/<pid>/ns/net,
 * /run/netns/<name>). setns() happens on a short-lived thread of its own,
 * never on Node's main thread or its pool.
 */
export async function netnsCookie(netnsPath: string): Promise<bigint> {
  try {
    return await native().netnsCookie(netnsPath);
  } catch (err) {
    throw fromAddon(err);
  }
}

/** Where replies to the proxy's delivery sockets are sent in a pod's netns: a fwmark rule to a table that delivers every address locally. */
export interface DeliveryRouting {
  mark: number;
  mask: number;
  table: number;
  priority: number;
}

/**
 * Prepares (`on`) or clears a pod's netns for delivery from the client's
 * address: net.ipv4.tcp_fwmark_accept=1, and for IPv4 and IPv6 a rule
 * `fwmark mark/mask lookup table` with a `local default dev lo` route in that
 * table. Idempotent. setns() happens on a short-lived thread of its own.
 */
export async function netnsDelivery(netnsPath: string, on: boolean, r: DeliveryRouting): Promise<void> {
  try {
    await native().netnsDelivery(netnsPath, on, r.mark, r.mask, r.table, r.priority);
  } catch (err) {
    throw fromAddon(err);
  }
}

/**
 * A TCP socket fd made in the netns open at `netnsFd`, bound to `source`
 * (its port chosen at connect) with IP_TRANSPARENT and SO_MARK `mark`, not
 * connected: `new net.Socket({ fd })` takes it.
 */
export function transparentSocket(netnsFd: number, family: 4 | 6, source: string, mark: number): number {
  return call(() => native().transparentSocket(netnsFd, family, source, mark));
}

/** The file descriptor of a connected socket, or -1 (not connected, closed, or not a kernel socket). */
export function socketFd(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

/** The socket cookie of a connected socket (what the BPF programs key on). */
export function socketCookie(socket: net.Socket | number): bigint {
  const fd = typeof socket === 'number' ? socket : socketFd(socket);
  if (fd < 0) throw bpfError('socket_cookie', 'EBADF', 'the socket has no file descriptor (not connected, or closed)', 9);
  return call(() => native().socketCookie(fd));
}

/** Every byte ever queued to send on a TCP socket fd, by the process or the kernel (acknowledged + SIOCOUTQ). */
export function tcpQueued(fd: number): bigint {
  return call(() => native().tcpQueued(fd));
}

/** One non-blocking recv(2) into `buf`: bytes read, 0 at the end, or a negative errno (-11: nothing waits). */
export function recvInto(fd: number, buf: Buffer): number {
  return call(() => native().recvInto(fd, buf));
}

/** Runs a socket fd's data-ready callback once if bytes wait in its receive queue (see the addon). */
export function kickReceive(fd: number): void {
  call(() => native().kickReceive(fd));
}

/** malloc_trim(0): hands the memory malloc holds free back to the kernel; whether any was returned. */
export function mallocTrim(): boolean {
  return native().mallocTrim();
}

// --- the feature report ---

/** Program and map types nodemesh's data path needs. */
export const REQUIRED_PROG_TYPES = ['cgroup_sock_addr', 'sock_ops', 'cgroup_sock', 'cgroup_skb'] as const;
export const REQUIRED_MAP_TYPES = ['hash', 'array', 'percpu_array', 'lru_hash', 'lpm_trie', 'ringbuf'] as const;
const MIN_KERNEL: [number, number] = [5, 15];

export type ProbeResult = 'yes' | 'no' | string; // or an errno name when the probe itself failed

export interface FeatureReport {
  kernel: string;
  libbpf: string | null;
  btf: boolean;
  cgroup2: string | null;
  bpffs: string | null;
  progTypes: Record<string, ProbeResult>;
  mapTypes: Record<string, ProbeResult>;
  /** True when everything above is present and BPF may be used by this process. */
  usable: boolean;
  /** Each missing piece, with the fix. Empty when usable. */
  problems: string[];
}

const ERRNO_NAMES = new Map(Object.entries(os.constants.errno).map(([name, n]) => [n, name]));

function probeWord(n: number): ProbeResult {
  if (n === 1) return 'yes';
  if (n === 0) return 'no';
  return ERRNO_NAMES.get(-n) ?? `E${-n}`;
}

/** What this host and process can do with BPF, and what to fix when not. */
export function probeFeatures(): FeatureReport {
  const problems: string[] = [];
  const kernel = os.release();
  const [maj, min] = kernel.split(/[.-]/).map(Number);
  if (maj! < MIN_KERNEL[0] || (maj === MIN_KERNEL[0] && min! < MIN_KERNEL[1]))
    problems.push(`kernel ${kernel} is older than ${MIN_KERNEL.join('.')}: upgrade the kernel`);
  const btf = fs.existsSync('/sys/kernel/btf/vmlinux');
  if (!btf) problems.push('kernel BTF (/sys/kernel/btf/vmlinux) is missing: use a kernel built with CONFIG_DEBUG_INFO_BTF=y');
  const entries = mounts();
  const cgroup2 = findCgroup2Mount(entries) ?? null;
  if (!cgroup2) problems.push('cgroup v2 is not mounted: mount -t cgroup2 none /sys/fs/cgroup (or boot with systemd.unified_cgroup_hierarchy=1)');
  const bpffs = findBpffs(entries)[0] ?? null;
  if (!bpffs) problems.push('bpffs is not mounted: mount -t bpf bpf /sys/fs/bpf');

  const progTypes: Record<string, ProbeResult> = {};
  const mapTypes: Record<string, ProbeResult> = {};
  const addon = tryNative();
  let libbpf: string | null = null;
  if (!addon) {
    problems.push('the libbpf addon is not built: run `npm run build`');
  } else {
    libbpf = addon.libbpfVersion();
    const access = addon.bpfAccess();
    if (access !== 0) {
      // Without bpf() every probe says "no"; name the real cause once.
      const why = probeWord(access);
      for (const t of REQUIRED_PROG_TYPES) progTypes[t] = why;
      for (const t of REQUIRED_MAP_TYPES) mapTypes[t] = why;
      problems.push(
        why === 'EPERM' || why === 'EACCES'
          ? `bpf() is not permitted to this process (${why}): run as root or grant CAP_BPF and CAP_SYS_ADMIN`
          : `bpf() fails here (${why}): the kernel may lack CONFIG_BPF_SYSCALL`,
      );
    } else {
      for (const t of REQUIRED_PROG_TYPES) {
        progTypes[t] = probeWord(addon.probeProgType(t));
        if (progTypes[t] !== 'yes') problems.push(`the kernel lacks BPF program type ${t} (${progTypes[t]})`);
      }
      for (const t of REQUIRED_MAP_TYPES) {
        mapTypes[t] = probeWord(addon.probeMapType(t));
        if (mapTypes[t] !== 'yes') problems.push(`the kernel lacks BPF map type ${t} (${mapTypes[t]})`);
      }
    }
  }
  return { kernel, libbpf, btf, cgroup2, bpffs, progTypes, mapTypes, usable: problems.length === 0, problems };
}
