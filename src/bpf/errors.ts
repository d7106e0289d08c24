import { MeshError } from '../errors';

/** What the addon attaches to the errors it throws. */
interface RawBpfError {
  message: string;
  op?: string;
  errno?: number;
  code?: string;
  detail?: string;
  log?: string;
}

const PRIVILEGE_HINT = 'run as root or grant CAP_BPF and CAP_SYS_ADMIN (CAP_NET_ADMIN to attach to cgroups)';
const BPFFS_HINT = 'mount bpffs: mount -t bpf bpf /sys/fs/bpf';

/**
 * A failure in the BPF layer. `op` names the step (object_open, prog_load,
 * map_update, link_attach…), `errno`/`code` what the kernel or libbpf said
 * (EPERM), or an NM_ERR_BPF_* code for a condition found before any syscall.
 * The message ends with what to do about it.
 */
export class BpfError extends MeshError {
  readonly op: string;
  readonly errno: number;
  /** The verifier's last lines, when it rejected a program. */
  readonly verifierLog?: string;
  /** libbpf's own words during the failing call. */
  readonly libbpfLog?: string;

  constructor(
    op: string,
    code: string,
    errno: number,
    message: string,
    extra: { verifierLog?: string; libbpfLog?: string; cause?: unknown } = {},
  ) {
    super(code, message, { cause: extra.cause });
    this.op = op;
    this.errno = errno;
    if (extra.verifierLog) this.verifierLog = extra.verifierLog;
    if (extra.libbpfLog) this.libbpfLog = extra.libbpfLog;
  }
}

/** A condition we detect before calling the kernel. */
export function bpfError(op: string, code: string, message: string, errno = 0): BpfError {
  return new BpfError(op, code, errno, `bpf: ${op}: ${message}`);
}

const VERIFIER_BEGIN = '-- BEGIN PROG LOAD LOG --';
const VERIFIER_END = '-- END PROG LOAD LOG --';

/** The tail of the verifier log inside libbpf's output, if any. */
export function verifierTail(log: string, lines = 12): string | undefined {
  const start = log.lastIndexOf(VERIFIER_BEGIN);
  if (start < 0) return undefined;
  const end = log.indexOf(VERIFIER_END, start);
  const body = log.slice(start + VERIFIER_BEGIN.length, end < 0 ? undefined : end);
  const all = body.split('\n').filter((l) => l.trim() !== '');
  return all.slice(-lines).join('\n');
}

/**
 * libbpf reports one errno for a whole object load; its log says which step
 * failed. Returns the precise op and the object (map or program) named.
 */
export function refineLoadOp(log: string): { op: string; subject?: string } {
  let m = /prog '([^']+)': failed to load/.exec(log) ?? /prog '([^']+)':.*BEGIN PROG LOAD LOG/s.exec(log);
  if (m || log.includes(VERIFIER_BEGIN)) return { op: 'prog_load', subject: m?.[1] };
  m = /couldn't reuse pinned map at '([^']+)'/.exec(log) ?? /map '([^']+)': (?:failed to reuse|can't reuse)/.exec(log);
  if (m) return { op: 'map_reuse', subject: m[1] };
  m = /map '([^']+)': failed to (?:auto-)?pin/.exec(log) ?? /failed to pin map/.exec(log);
  if (m) return { op: 'map_pin', subject: m[1] };
  m = /map '([^']+)': failed to create/.exec(log);
  if (m) return { op: 'map_create', subject: m[1] };
  return { op: 'object_load' };
}

function hint(op: string, code: string, raw: RawBpfError, verifier: string | undefined): string {
  if (verifier) return `the verifier rejected the program; its last lines:\n${verifier}`;
  switch (code) {
    case 'EPERM':
    case 'EACCES':
      if (op.endsWith('_pin') || op === 'map_reuse') return `${PRIVILEGE_HINT}; pins must be on a bpffs (${BPFFS_HINT})`;
      return PRIVILEGE_HINT;
    case 'ENOENT':
      if (op === 'object_open') return 'no such BPF object: build it with `npm run build` (bpf/*.bpf.c → build/bpf/)';
      if (op === 'map_open' || op === 'link_open' || op === 'obj_get')
        return 'nothing is pinned there: install the data path first, or check the pin root';
      if (op === 'link_attach' || op === 'cgroup_id') return 'no such cgroup: create the cgroup v2 directory first';
      if (op === 'netns_cookie') return 'no such network namespace file (ip netns list shows the lab ones)';
      return 'not found';
    case 'ENOTDIR':
    case 'EBADF':
      if (op === 'link_attach') return 'not a cgroup v2 directory: attach to a directory under the cgroup2 mount';
      return 'it was closed: open it again';
    case 'EEXIST':
      return op.endsWith('_pin') ? 'something is pinned there already: unpin it or choose another path' : 'the key exists (flag noexist)';
    case 'E2BIG':
      return 'the map is full: raise max_entries or delete entries';
    case 'ENOTSUPP':
    case 'EOPNOTSUPP':
      return 'this kernel lacks the feature: nodemesh needs Linux 5.15+ with cgroup v2 and BTF';
    case 'EINVAL':
      if (op === 'map_reuse') return 'a map pinned under that name has another layout: remove the old pin (nodemesh datapath uninstall) or version the map name';
      if (raw.detail && /bytes|must be/.test(raw.detail)) return 'check the key and value codecs against bpf/include/nodemesh_abi.h';
      return 'the kernel refused the arguments';
    case 'LIBBPF_FORMAT':
    case 'LIBBPF_ELF':
      return 'not a BPF ELF object: rebuild with `npm run build`';
    default:
      return '';
  }
}

/** Turns whatever the addon threw into a BpfError; passes other errors through. */
export function fromAddon(err: unknown): unknown {
  if (!(err instanceof Error) || err instanceof BpfError) return err;
  const raw = err as Error & RawBpfError;
  if (typeof raw.op !== 'string' || typeof raw.code !== 'string') return err;
  const log = raw.log ?? '';
  let op = raw.op;
  let subject: string | undefined;
  if (op === 'object_load') ({ op, subject } = refineLoadOp(log));
  const verifier = op === 'prog_load' ? verifierTail(log) : undefined;
  const what = subject ? ` (${subject})` : '';
  const fix = hint(op, raw.code, raw, verifier);
  const message = `bpf: ${op}${what}: ${raw.message.replace(/^[a-z_]+: /, '')}${fix ? `: ${fix}` : ''}`;
  return new BpfError(op, raw.code, raw.errno ?? 0, message, { verifierLog: verifier, libbpfLog: log || undefined, cause: err });
}

/** Runs one addon call, converting its errors. */
export function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw fromAddon(err);
  }
}
