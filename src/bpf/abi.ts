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

/** Every shared struct, with the object (bpf/<object>.bpf.c) whose BTF has it. */
export const ABI_STRUCTS: readonly { object: string; codec: Codec<unknown> }[] = [
  { object: 'selftest', codec: SelftestKey as Codec<unknown> },
  { object: 'selftest', codec: SelftestCount as Codec<unknown> },
  { object: 'selftest', codec: SelftestEvent as Codec<unknown> },
];
