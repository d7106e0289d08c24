// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* A small program for the binding tests: counts IPv4 connects per destination,
 * reports each one on a ring buffer, and refuses one port set at load time.
 * Two variants of the same hook let a test swap a link's program atomically. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "nodemesh_abi.h"
#include "nm_net.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Connects to this port (host order) are refused; 0 refuses nothing. */
const volatile __u16 deny_port = 0;

/* Destination -> how many connects. Pinned by name, so a second load with the
 * same pin root reuses it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct nm_selftest_key);
	__type(value, struct nm_selftest_count);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_selftest_conns SEC(".maps");

/* Per-CPU connect counters, one slot per program variant. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} nm_selftest_stats SEC(".maps");

/* One struct nm_selftest_event per connect. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} nm_selftest_events SEC(".maps");


NM_BTF_KEEP(nm_selftest_event);

static __always_inline void count(struct nm_selftest_key *key, __u64 cookie)
{
	struct nm_selftest_count *c = bpf_map_lookup_elem(&nm_selftest_conns, key);
	if (c) {
		__sync_fetch_and_add(&c->connects, 1);
		c->last_cookie = cookie;
		return;
	}
	struct nm_selftest_count fresh = { .connects = 1, .last_cookie = cookie };
	/* Lost race with another CPU: count on the entry it made. */
	if (bpf_map_update_elem(&nm_selftest_conns, key, &fresh, BPF_NOEXIST) != 0) {
		c = bpf_map_lookup_elem(&nm_selftest_conns, key);
		if (c)
			__sync_fetch_and_add(&c->connects, 1);
	}
}

static __always_inline int handle_connect4(struct bpf_sock_addr *ctx, __u32 variant)
{
	if (ctx->type != NM_SOCK_STREAM)
		return 1;

	struct nm_selftest_key key = {
		.dst_ip = ctx->user_ip4,
		.dst_port = bpf_ntohs((__u16)ctx->user_port),
	};
	__u64 cookie = bpf_get_socket_cookie(ctx);
	count(&key, cookie);

	__u64 *slot = bpf_map_lookup_elem(&nm_selftest_stats, &variant);
	if (slot)
		*slot += 1;

	int allow = !(deny_port != 0 && key.dst_port == deny_port);

	struct nm_selftest_event *e = bpf_ringbuf_reserve(&nm_selftest_events, sizeof(*e), 0);
	if (e) {
		e->cookie = cookie;
		e->cgroup_id = bpf_get_current_cgroup_id();
		e->pid = bpf_get_current_pid_tgid() >> 32;
		e->dst_ip = key.dst_ip;
		e->dst_port = key.dst_port;
		e->variant = variant;
		e->verdict = allow;
		__builtin_memset(e->_pad, 0, sizeof(e->_pad));
		bpf_ringbuf_submit(e, 0);
	}
	return allow;
}

SEC("cgroup/connect4")
int selftest_connect4(struct bpf_sock_addr *ctx)
{
	return handle_connect4(ctx, 0);
}

SEC("cgroup/connect4")
int selftest_connect4_v2(struct bpf_sock_addr *ctx)
{
	return handle_connect4(ctx, 1);
}
