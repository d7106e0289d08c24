/**
 * The TypeScript side of bpf/include/nodemesh_abi.h: one codec per shared
 * struct, in the header's field order. test/bpf/abi.test.ts checks every
 * codec listed in ABI_STRUCTS against the BTF of the object that uses it.
 */
import { struct, type Codec } from './codec';

// --- selftest.bpf.o ---

export const SelftestKey = struct('nm_selftest_key', {
  dst_ip: 'ipv4',
  dst_port: 'u16',
  _pad: 'pad2',
});

export const SelftestCount = struct('nm_selftest_count', {
  connects: 'u64',
  last_cookie: 'u64',
});

export const SelftestEvent = struct('nm_selftest_event', {
  cookie: 'u64',
  cgroup_id: 'u64',
  pid: 'u32',
  dst_ip: 'ipv4',
  dst_port: 'u16',
  variant: 'u8',
  verdict: 'u8',
  _pad: 'pad4',
});

// --- redirect.bpf.o: the node's data path ---

export const Config = struct('nm_config', {
  proxy_ip6: 'ipv6',
  proxy_ip4: 'ipv4',
  proxy_port: 'u16',
  ready: 'u8',
  fail_open: 'u8',
  heartbeat_ns: 'u64',
  watchdog_ms: 'u32',
  _pad: 'pad4',
});

export const Pod = struct('nm_pod', {
  index: 'u32',
  flags: 'u32',
});

export const CidrKey = struct('nm_cidr_key', {
  prefixlen: 'u32',
  addr: 'ip',
});

export const PortKey = struct('nm_port_key', {
  netns_cookie: 'u64',
  port: 'u16',
  _pad: 'pad6',
});

export const Origin = struct('nm_origin', {
  orig_ip: 'ip',
  netns_cookie: 'u64',
  cgroup_id: 'u64',
  start_ns: 'u64',
  pid: 'u32',
  orig_port: 'u16',
  family: 'u8',
  flags: 'u8',
});

export const Tuple = struct('nm_tuple', {
  src_ip: 'ip',
  dst_ip: 'ip',
  src_port: 'u16',
  dst_port: 'u16',
  _pad: 'pad4',
});

export const FlowEvent = struct('nm_flow_event', {
  origin: 'bytes48', // struct nm_origin: decode with Origin
  src_ip: 'ip',
  socket_cookie: 'u64',
  end_ns: 'u64',
  bytes_sent: 'u64',
  bytes_received: 'u64',
  src_port: 'u16',
  established: 'u8',
  kind: 'u8',
  _pad: 'pad4',
});

/** nm_flow_event.kind */
export const EVENT_CLOSE = 0;
export const EVENT_STRICT_DROP = 1;
/** nm_pod.flags */
export const POD_STRICT = 1;
/** nm_pod.flags: MeshConfig failOpen selects this pod; its connects go around the proxy while none is ready. */
export const POD_FAIL_OPEN = 2;
/** SO_MARK of the proxy's delivery sockets in a pod's netns (NM_DELIVERY_MARK/MASK): not redirected, let into STRICT pods. */
export const DELIVERY_MARK = 0x0e4d;
export const DELIVERY_MASK = 0x0fff;

/** enum nm_stat, in order: the index of each per-CPU counter in nm_stats. */
export const STATS = ['redirected', 'excluded', 'not_enrolled', 'proxy_down', 'lookup_miss', 'map_full', 'closed', 'strict_drop', 'proxy_down_open', 'proxy_stale'] as const;
export type StatName = (typeof STATS)[number];

// --- fastpath.bpf.o: the same-node fast path ---

export const FastPathPair = struct('nm_fp_pair', {
  peer: 'u64',
  bytes: 'u64',
  passed: 'u64',
  base_seq: 'u32',
  flags: 'u32',
});
/** nm_fp_pair.flags: the direction went back to the proxy (NM_FP_MAX_PENDING reached). */
export const FP_PROXIED = 2;

/** NM_FP_MAX_SOCKETS: sockets the fast path holds at once, two per connection. */
export const FP_MAX_SOCKETS = 65536;

/** Every shared struct, with the object (bpf/<object>.bpf.c) whose BTF has it. */
export const ABI_STRUCTS: readonly { object: string; codec: Codec<unknown> }[] = [
  { object: 'selftest', codec: SelftestKey as Codec<unknown> },
  { object: 'selftest', codec: SelftestCount as Codec<unknown> },
  { object: 'selftest', codec: SelftestEvent as Codec<unknown> },
  { object: 'redirect', codec: Config as Codec<unknown> },
  { object: 'redirect', codec: Pod as Codec<unknown> },
  { object: 'redirect', codec: CidrKey as Codec<unknown> },
  { object: 'redirect', codec: PortKey as Codec<unknown> },
  { object: 'redirect', codec: Origin as Codec<unknown> },
  { object: 'redirect', codec: Tuple as Codec<unknown> },
  { object: 'redirect', codec: FlowEvent as Codec<unknown> },
  { object: 'fastpath', codec: FastPathPair as Codec<unknown> },
];
