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
#define NM_BTF_KEEP_ENUM(name) \
	enum name *__nm_btf_keep_##name __attribute__((section(".nm_btf"), used))

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

/* --- redirect.bpf.o: the node's data path (docs/architecture.md, 'The data path') --- */

/* Addresses are 16 bytes, network order; IPv4 as IPv4-mapped IPv6
 * (::ffff:a.b.c.d), so one layout serves both families. */

/* nm_config[0]: what the hooks redirect to, and whether to. All zero (a
 * map just created) means no proxy and fail closed: nothing goes around. */
struct nm_config {
	__u8 proxy_ip6[16];  /* native IPv6 proxy address; all zero: none */
	__u32 proxy_ip4;     /* IPv4 proxy address, network order; 0: none */
	__u16 proxy_port;    /* host order (15001) */
	__u8 ready;          /* 0: the proxy is not accepting; see fail_open */
	__u8 fail_open;      /* when no proxy is ready: 0 refuses pod connects (EPERM), 1 lets them around the proxy */
	__u64 heartbeat_ns;  /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the proxy's latest heartbeat */
	__u32 watchdog_ms;   /* ready lapses once heartbeat_ns is older than this; 0: no watchdog */
	__u32 _pad;
};

/* nm_pods value, keyed by the pod's netns cookie (__u64). */
struct nm_pod {
	__u32 index;  /* the proxy's index of this workload */
	__u32 flags;  /* NM_POD_* */
};

#define NM_POD_STRICT (1U << 0)    /* PeerAuthentication STRICT: TCP only from the node proxy */
#define NM_POD_FAIL_OPEN (1U << 1) /* MeshConfig failOpen: this pod's connects go around the proxy while none is ready */

/* SO_MARK of the proxy's delivery sockets, made in a pod's netns and bound to
 * the client's address (docs/architecture.md, 'Delivery from the client
 * address'): their connects are not redirected, and their SYNs are the
 * proxy's for STRICT. A mark set on the node side never crosses into a pod's
 * netns (veth clears it), so only a socket made in the pod's netns by a
 * process with CAP_NET_ADMIN there carries it. */
#define NM_DELIVERY_MARK 0x0e4d
#define NM_DELIVERY_MASK 0x0fff

/* nm_exclude key: an LPM trie over IPv4-mapped/IPv6 addresses. */
struct nm_cidr_key {
	__u32 prefixlen; /* 96 + n for an IPv4 /n */
	__u8 addr[16];
};

/* nm_exclude_ports key: a destination port never redirected, for one pod
 * (its netns cookie) or for every pod (netns_cookie 0). */
struct nm_port_key {
	__u64 netns_cookie;
	__u16 port; /* host order */
	__u8 _pad[6];
};

/* Where a redirected connection was going, and who opened it. */
struct nm_origin {
	__u8 orig_ip[16];     /* original destination */
	__u64 netns_cookie;   /* the pod's netns */
	__u64 cgroup_id;      /* cgroup of the connecting task */
	__u64 start_ns;       /* bpf_ktime_get_ns() at connect */
	__u32 pid;            /* tgid of the connecting task */
	__u16 orig_port;      /* host order */
	__u8 family;          /* 4 or 6: the socket's address family */
	__u8 flags;           /* NM_ORIGIN_* */
};

#define NM_ORIGIN_CONNECTED (1U << 0) /* sockops saw TCP_CONNECT_CB */

/* nm_orig_tuple key: the connection as the proxy sees it on accept. */
struct nm_tuple {
	__u8 src_ip[16];  /* the pod's address */
	__u8 dst_ip[16];  /* the proxy's address */
	__u16 src_port;   /* host order */
	__u16 dst_port;   /* host order */
	__u32 _pad;
};

/* nm_events record: one per redirected connection, when it closes. */
struct nm_flow_event {
	struct nm_origin origin;
	__u8 src_ip[16];
	__u64 socket_cookie;
	__u64 end_ns;
	__u64 bytes_sent;     /* bytes_acked of the pod's socket */
	__u64 bytes_received; /* bytes_received of the pod's socket */
	__u16 src_port;       /* host order */
	__u8 established;     /* 0: the connect never completed */
	__u8 kind;            /* NM_EVENT_* */
	__u8 _pad[4];
};

#define NM_EVENT_CLOSE 0       /* a redirected connection closed */
#define NM_EVENT_STRICT_DROP 1 /* plaintext to a STRICT pod dropped: origin.orig_* is the pod's listener, src_* the sender */

/* nm_stats index (per-CPU __u64 counters). */
enum nm_stat {
	NM_STAT_REDIRECTED = 0,
	NM_STAT_EXCLUDED,
	NM_STAT_NOT_ENROLLED, /* no longer counted: at the cgroup root it would count every connect of the machine; kept so the indexes stay */
	NM_STAT_PROXY_DOWN,   /* connects while no proxy was ready: refused, unless counted in NM_STAT_PROXY_DOWN_OPEN too */
	NM_STAT_LOOKUP_MISS,
	NM_STAT_MAP_FULL,
	NM_STAT_CLOSED,
	NM_STAT_STRICT_DROP,
	NM_STAT_PROXY_DOWN_OPEN, /* of NM_STAT_PROXY_DOWN: let through around the proxy (fail open, node or pod) */
	NM_STAT_PROXY_STALE,     /* of NM_STAT_PROXY_DOWN: ready was set but the heartbeat was older than watchdog_ms */
	NM_STAT_MAX,
};

/* --- fastpath.bpf.o: the same-node fast path (docs/architecture.md, 'The same-node fast path') --- */

/* Sockets the fast path holds at once: two per connection. */
#define NM_FP_MAX_SOCKETS 65536

/* Bytes the kernel may have taken from one socket and not yet put on its
 * peer's send queue (the copy is asynchronous and the kernel bounds it by
 * nothing else). Past it the direction goes back to the proxy, which copies
 * it with backpressure like any other connection. */
#define NM_FP_MAX_PENDING (1024 * 1024)

/* nm_fp_pair.flags */
#define NM_FP_BASE 1     /* base_seq holds the peer's write_seq at the first copy */
#define NM_FP_PROXIED 2  /* pending went past NM_FP_MAX_PENDING: the proxy copies this direction from now on */

/* nm_fp_pairs value, keyed by a socket's cookie: one direction of a connection. */
struct nm_fp_pair {
	__u64 peer;     /* cookie of the socket its segments go to */
	__u64 bytes;    /* bytes received on this socket and handed to the peer's send queue */
	__u64 passed;   /* bytes received on this socket and passed up to the proxy instead */
	__u32 base_seq; /* the peer's write_seq when the first segment was handed over */
	__u32 flags;    /* NM_FP_* */
};

#endif /* NODEMESH_ABI_H */
