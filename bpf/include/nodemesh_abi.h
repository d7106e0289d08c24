/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Structs shared by the BPF programs and userspace. Fixed-width fields,
 * explicit padding, no implicit holes: src/bpf/abi.ts declares the same
 * layouts and test/bpf/abi.test.ts checks them against each object's BTF.
 * Change a layout here and there together, and version the map's name. */
#ifndef NODEMESH_ABI_H
#define NODEMESH_ABI_H

#include <linux/types.h>

/* Keeps a struct in the object's BTF when no map names it (ring buffer
 * records), so userspace can check its layout. The pointer lands in a section
 * libbpf skips: it costs no map and no memory in the kernel. */
#define NM_BTF_KEEP(name) \
	struct name *__nm_btf_keep_##name __attribute__((section(".nm_btf"), used))

/* --- selftest.bpf.o: the program the binding tests load --- */

/* nm_selftest_conns key: an IPv4 destination. */
struct nm_selftest_key {
	__u32 dst_ip;   /* network byte order */
	__u16 dst_port; /* host byte order */
	__u16 _pad;
};

/* nm_selftest_conns value. */
struct nm_selftest_count {
	__u64 connects;
	__u64 last_cookie; /* socket cookie of the latest connect */
};

/* nm_selftest_events record: one per connect4 call. */
struct nm_selftest_event {
	__u64 cookie;    /* socket cookie */
	__u64 cgroup_id; /* cgroup of the connecting task */
	__u32 pid;       /* tgid of the connecting task */
	__u32 dst_ip;    /* network byte order */
	__u16 dst_port;  /* host byte order */
	__u8 variant;    /* which program ran: 0 or 1 */
	__u8 verdict;    /* 1 allowed, 0 refused */
	__u8 _pad[4];
};

#endif /* NODEMESH_ABI_H */
