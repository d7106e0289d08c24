// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The node's data path (see docs/architecture.md, 'The data path'): TCP
 * connects from enrolled pods are sent to the node proxy, and the proxy can
 * learn where each was going.
 *
 *   connect4/connect6  origin stored by socket cookie, destination rewritten
 *   sockops            on TCP_CONNECT_CB the origin is copied under the
 *                      4-tuple the proxy will see on accept; on close a flow
 *                      event is sent and the socket's entry removed
 *   cgroup_skb/ingress a SYN to a listener of a STRICT pod from anywhere but
 *                      the node proxy is dropped (PeerAuthentication STRICT)
 *   sock_release       removes what a socket that never connected left
 *                      (it runs before the TCP close, so a connected socket's
 *                      entry stays for the close event)
 *
 * Every program is attached at the root of the cgroup2 hierarchy by default
 * and acts only on sockets whose netns cookie is in this node's nm_pods:
 * capture follows the network namespace, as the pod's identity does, so a
 * process entered into a pod's netns from another cgroup (nsenter --net) is
 * redirected and STRICT-checked like the pod's own. Several nodes (labs) on one
 * machine attach their own sets side by side (bpf_link, BPF_F_ALLOW_MULTI);
 * a socket of a netns not enrolled here passes after one hash lookup.
 *
 * The proxy takes (looks up and deletes) the tuple entry after accept. The
 * close of a pod's socket does not delete it, because a short connection can
 * close before the proxy has accepted it; an entry the proxy never takes is
 * bounded by the LRU. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "nodemesh_abi.h"
#include "nm_net.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define NM_TCP_SYN_SENT 2
#define NM_TCP_CLOSE 7

/* [0]: struct nm_config, written by the proxy. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nm_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_config SEC(".maps");

/* Pod netns cookie -> struct nm_pod: the enrolled pods of this node. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct nm_pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_pods SEC(".maps");

/* Destinations never redirected (LPM over IPv4-mapped/IPv6) -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct nm_cidr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_exclude SEC(".maps");

/* Destination ports never redirected, per pod or for all (cookie 0) -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct nm_port_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_exclude_ports SEC(".maps");

/* Socket cookie -> struct nm_origin, for pod sockets that were redirected. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct nm_origin);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_orig_cookie SEC(".maps");

/* struct nm_tuple (as the proxy sees it) -> struct nm_origin, until the proxy takes it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct nm_tuple);
	__type(value, struct nm_origin);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_orig_tuple SEC(".maps");

/* struct nm_flow_event records. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_events SEC(".maps");

/* enum nm_stat -> per-CPU count. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NM_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_stats SEC(".maps");

NM_BTF_KEEP(nm_flow_event);
NM_BTF_KEEP_ENUM(nm_stat);

/* Context fields must be read one 32-bit load at a time: clang may merge
 * neighbouring __u32 reads into a 64-bit load the verifier refuses. */
#define CTX_U32(field) (*(volatile __u32 *)&(field))

static __always_inline void stat_inc(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&nm_stats, &which);
	if (c)
		*c += 1;
}

static __always_inline void ip4_mapped(__u8 out[16], __u32 ip4)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(&out[12], &ip4, 4);
}

static __always_inline int is_ip4_mapped(const __u8 a[16])
{
	for (int i = 0; i < 10; i++)
		if (a[i])
			return 0;
	return a[10] == 0xff && a[11] == 0xff;
}

/* Whether an IPv4 destination (network order) means "this host": 0.0.0.0/8
 * (Linux connects 0.0.0.0 to the local host) or 127/8. Such a connect stays
 * in the pod's own namespace; redirected, the proxy would dial it in its own
 * and reach the node's loopback services (the admin port). */
static __always_inline int this_host4(__u32 ip4)
{
	__u32 first = bpf_ntohl(ip4) >> 24;
	return first == 0 || first == 127;
}

/* The same for IPv6: ::, ::1, and the IPv4-mapped forms of this_host4
 * (::ffff:0.0.0.0/104, ::ffff:127.0.0.0/104). */
static __always_inline int this_host6(const __u32 w[4], int mapped)
{
	if (mapped)
		return this_host4(w[3]);
	return w[0] == 0 && w[1] == 0 && w[2] == 0 && (w[3] == 0 || w[3] == bpf_htonl(1));
}

static __always_inline int excluded(const __u8 dst[16], __u16 port, __u64 netns_cookie)
{
	struct nm_cidr_key ck = { .prefixlen = 128 };
	__builtin_memcpy(ck.addr, dst, 16);
	if (bpf_map_lookup_elem(&nm_exclude, &ck))
		return 1;
	struct nm_port_key pk = { .netns_cookie = netns_cookie, .port = port };
	if (bpf_map_lookup_elem(&nm_exclude_ports, &pk))
		return 1;
	pk.netns_cookie = 0;
	return bpf_map_lookup_elem(&nm_exclude_ports, &pk) != NULL;
}

/* Whether the proxy is there to take a connect: ready, and (with the
 * watchdog on) its heartbeat recent. A proxy killed with SIGKILL leaves
 * ready set in the pinned map; its heartbeat stops, and after watchdog_ms the
 * node counts as having no proxy (docs/architecture.md, 'Fail closed, and
 * the watchdog'). */
static __always_inline int proxy_ready(const struct nm_config *cfg)
{
	if (!cfg->ready)
		return 0;
	if (!cfg->watchdog_ms)
		return 1;
	__u64 now = bpf_ktime_get_ns();
	if (now - cfg->heartbeat_ns <= (__u64)cfg->watchdog_ms * 1000000ULL)
		return 1;
	stat_inc(NM_STAT_PROXY_STALE);
	return 0;
}

/* No proxy takes this connect: refuse it (fail closed, the default) unless
 * the node or the pod chose to fail open. Returns 0 to refuse, 1 to let the
 * connect go to its own destination. */
static __always_inline int proxy_down(const struct nm_config *cfg, const struct nm_pod *pod)
{
	stat_inc(NM_STAT_PROXY_DOWN);
	if ((cfg && cfg->fail_open) || (pod && (pod->flags & NM_POD_FAIL_OPEN))) {
		stat_inc(NM_STAT_PROXY_DOWN_OPEN);
		return 1;
	}
	return 0;
}

/* Decides for one connect. Returns 1 to redirect, 0 to leave the socket
 * alone, -1 to refuse the connect. On 1, *cfg_out and *pod_out are the
 * config and the pod entry to use. */
static __always_inline int decide(struct bpf_sock_addr *ctx, const __u8 dst[16], __u16 port, int this_host,
				  struct nm_config **cfg_out, struct nm_pod **pod_out, __u64 *netns_cookie)
{
	if (ctx->protocol != NM_IPPROTO_TCP)
		return 0; /* UDP (DNS) untouched */

	/* Attached at the cgroup root, this runs for every connect of the
	 * machine: a socket of a netns not enrolled here leaves at once, with no
	 * counter written (NM_STAT_NOT_ENROLLED stays 0). */
	*netns_cookie = bpf_get_netns_cookie(ctx);
	struct nm_pod *pod = bpf_map_lookup_elem(&nm_pods, netns_cookie);
	if (!pod)
		return 0;
	/* The proxy's own delivery into this pod, from the client's address. */
	struct bpf_sock *sk = ctx->sk;
	if (sk && (sk->mark & NM_DELIVERY_MASK) == NM_DELIVERY_MARK)
		return 0;
	if (this_host || excluded(dst, port, *netns_cookie)) {
		stat_inc(NM_STAT_EXCLUDED);
		return 0;
	}
	__u32 zero = 0;
	struct nm_config *cfg = bpf_map_lookup_elem(&nm_config, &zero);
	if (!cfg || !proxy_ready(cfg))
		return proxy_down(cfg, pod) ? 0 : -1;
	*cfg_out = cfg;
	*pod_out = pod;
	return 1;
}

static __always_inline int record_origin(struct bpf_sock_addr *ctx, const __u8 dst[16], __u16 port,
					 __u64 netns_cookie, __u8 family)
{
	struct nm_origin o = {
		.netns_cookie = netns_cookie,
		.cgroup_id = bpf_get_current_cgroup_id(),
		.start_ns = bpf_ktime_get_ns(),
		.pid = bpf_get_current_pid_tgid() >> 32,
		.orig_port = port,
		.family = family,
	};
	__builtin_memcpy(o.orig_ip, dst, 16);
	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&nm_orig_cookie, &cookie, &o, BPF_ANY) != 0) {
		stat_inc(NM_STAT_MAP_FULL);
		return -1;
	}
	return 0;
}

SEC("cgroup/connect4")
int nm_connect4(struct bpf_sock_addr *ctx)
{
	__u8 dst[16];
	__u32 ip4 = ctx->user_ip4;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	ip4_mapped(dst, ip4);

	struct nm_config *cfg = NULL;
	struct nm_pod *pod = NULL;
	__u64 netns_cookie = 0;
	int verdict = decide(ctx, dst, port, this_host4(ip4), &cfg, &pod, &netns_cookie);
	if (verdict <= 0)
		return verdict < 0 ? 0 : 1;
	if (!cfg->proxy_ip4)
		return proxy_down(cfg, pod);
	/* Never loop the proxy's own address back into itself. */
	if (ip4 == cfg->proxy_ip4 && port == cfg->proxy_port)
		return 1;
	if (record_origin(ctx, dst, port, netns_cookie, 4) != 0)
		return 1; /* no room to remember the origin: do not redirect */
	ctx->user_ip4 = cfg->proxy_ip4;
	ctx->user_port = bpf_htons(cfg->proxy_port);
	stat_inc(NM_STAT_REDIRECTED);
	return 1;
}

SEC("cgroup/connect6")
int nm_connect6(struct bpf_sock_addr *ctx)
{
	__u8 dst[16];
	__u32 w[4] = { CTX_U32(ctx->user_ip6[0]), CTX_U32(ctx->user_ip6[1]), CTX_U32(ctx->user_ip6[2]),
		       CTX_U32(ctx->user_ip6[3]) };
	__builtin_memcpy(dst, w, 16);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	int mapped = is_ip4_mapped(dst);

	struct nm_config *cfg = NULL;
	struct nm_pod *pod = NULL;
	__u64 netns_cookie = 0;
	int verdict = decide(ctx, dst, port, this_host6(w, mapped), &cfg, &pod, &netns_cookie);
	if (verdict <= 0)
		return verdict < 0 ? 0 : 1;

	/* A dual-stack socket reaching an IPv4 destination goes to the IPv4
	 * proxy address, mapped; a native IPv6 one to the IPv6 address. */
	__u32 p[4];
	if (mapped) {
		if (!cfg->proxy_ip4)
			return proxy_down(cfg, pod);
		p[0] = 0;
		p[1] = 0;
		p[2] = bpf_htonl(0xffff);
		p[3] = cfg->proxy_ip4;
	} else {
		__builtin_memcpy(p, cfg->proxy_ip6, 16);
		if (!(p[0] | p[1] | p[2] | p[3]))
			return proxy_down(cfg, pod);
	}
	if (w[0] == p[0] && w[1] == p[1] && w[2] == p[2] && w[3] == p[3] && port == cfg->proxy_port)
		return 1;
	if (record_origin(ctx, dst, port, netns_cookie, 6) != 0)
		return 1;
	ctx->user_ip6[0] = p[0];
	ctx->user_ip6[1] = p[1];
	ctx->user_ip6[2] = p[2];
	ctx->user_ip6[3] = p[3];
	ctx->user_port = bpf_htons(cfg->proxy_port);
	stat_inc(NM_STAT_REDIRECTED);
	return 1;
}

/* The 4-tuple of a sock_ops socket, as seen from its peer (the proxy). */
static __always_inline void sockops_tuple(struct bpf_sock_ops *skops, struct nm_tuple *t)
{
	__builtin_memset(t, 0, sizeof(*t));
	if (skops->family == NM_AF_INET) {
		ip4_mapped(t->src_ip, skops->local_ip4);
		ip4_mapped(t->dst_ip, skops->remote_ip4);
	} else {
		__u32 l[4] = { CTX_U32(skops->local_ip6[0]), CTX_U32(skops->local_ip6[1]),
			       CTX_U32(skops->local_ip6[2]), CTX_U32(skops->local_ip6[3]) };
		__u32 r[4] = { CTX_U32(skops->remote_ip6[0]), CTX_U32(skops->remote_ip6[1]),
			       CTX_U32(skops->remote_ip6[2]), CTX_U32(skops->remote_ip6[3]) };
		__builtin_memcpy(t->src_ip, l, 16);
		__builtin_memcpy(t->dst_ip, r, 16);
	}
	t->src_port = (__u16)skops->local_port;
	/* remote_port holds the network-order port in its upper 16 bits. */
	t->dst_port = bpf_ntohs((__u16)(skops->remote_port >> 16));
}

static __always_inline void on_connect(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct nm_origin *o = bpf_map_lookup_elem(&nm_orig_cookie, &cookie);
	if (!o)
		return; /* not a redirected socket */
	struct nm_tuple t;
	sockops_tuple(skops, &t);
	o->flags |= NM_ORIGIN_CONNECTED;
	if (bpf_map_update_elem(&nm_orig_tuple, &t, o, BPF_ANY) != 0) {
		stat_inc(NM_STAT_MAP_FULL);
		return;
	}
	/* Ask for state changes, to see the close. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void on_close(struct bpf_sock_ops *skops, __u32 old_state)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct nm_origin *o = bpf_map_lookup_elem(&nm_orig_cookie, &cookie);
	if (!o)
		return;
	struct nm_tuple t;
	sockops_tuple(skops, &t);
	int established = old_state != NM_TCP_SYN_SENT;
	/* A connect that never completed will never be accepted: drop its tuple. */
	if (!established)
		bpf_map_delete_elem(&nm_orig_tuple, &t);

	struct nm_flow_event *e = bpf_ringbuf_reserve(&nm_events, sizeof(*e), 0);
	if (e) {
		__builtin_memcpy(&e->origin, o, sizeof(*o));
		__builtin_memcpy(e->src_ip, t.src_ip, 16);
		e->socket_cookie = cookie;
		e->end_ns = bpf_ktime_get_ns();
		e->bytes_sent = skops->bytes_acked;
		e->bytes_received = skops->bytes_received;
		e->src_port = t.src_port;
		e->established = established;
		e->kind = NM_EVENT_CLOSE;
		__builtin_memset(e->_pad, 0, sizeof(e->_pad));
		bpf_ringbuf_submit(e, 0);
	}
	bpf_map_delete_elem(&nm_orig_cookie, &cookie);
	stat_inc(NM_STAT_CLOSED);
}

SEC("sockops")
int nm_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		on_connect(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == NM_TCP_CLOSE)
			on_close(skops, skops->args[0]);
		break;
	}
	return 1;
}

#define NM_TCP_LISTEN 10
#define NM_ETH_P_IP 0x0800
#define NM_ETH_P_IPV6 0x86DD

/* A new inbound connection (a packet for a listening socket) to a pod in
 * STRICT mode is let in only from the node proxy: a SYN of its delivery
 * socket in the pod's netns (it carries NM_DELIVERY_MARK, which nothing from
 * outside the netns can), or one from the proxy's own addresses (delivery
 * from the proxy's address); anything else is plaintext that bypassed the
 * mesh.
 * Packets of established connections (replies to the pod's own outbound
 * connections included) never meet a listener and pass. */
SEC("cgroup_skb/ingress")
int nm_ingress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != NM_IPPROTO_TCP || sk->state != NM_TCP_LISTEN)
		return 1;
	__u64 netns_cookie = bpf_get_netns_cookie(skb);
	struct nm_pod *pod = bpf_map_lookup_elem(&nm_pods, &netns_cookie);
	if (!pod || !(pod->flags & NM_POD_STRICT))
		return 1;
	if ((skb->mark & NM_DELIVERY_MASK) == NM_DELIVERY_MARK)
		return 1;
	__u32 zero = 0;
	struct nm_config *cfg = bpf_map_lookup_elem(&nm_config, &zero);
	if (!cfg)
		return 1;

	__u8 src[16];
	__u8 dst[16];
	__u16 ports[2]; /* source, destination: network order */
	if (skb->protocol == bpf_htons(NM_ETH_P_IP)) {
		__u32 s4, d4;
		__u8 ihl;
		if (bpf_skb_load_bytes(skb, 0, &ihl, 1) || bpf_skb_load_bytes(skb, 12, &s4, 4) || bpf_skb_load_bytes(skb, 16, &d4, 4))
			return 1;
		if (s4 == cfg->proxy_ip4)
			return 1;
		if (bpf_skb_load_bytes(skb, (ihl & 0x0f) * 4, ports, 4))
			return 1;
		ip4_mapped(src, s4);
		ip4_mapped(dst, d4);
	} else if (skb->protocol == bpf_htons(NM_ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, 8, src, 16) || bpf_skb_load_bytes(skb, 24, dst, 16))
			return 1;
		__u32 a[4], p[4];
		__builtin_memcpy(a, src, 16);
		__builtin_memcpy(p, cfg->proxy_ip6, 16);
		if (a[0] == p[0] && a[1] == p[1] && a[2] == p[2] && a[3] == p[3])
			return 1;
		/* No extension headers expected before TCP here; others pass. */
		__u8 next;
		if (bpf_skb_load_bytes(skb, 6, &next, 1) || next != NM_IPPROTO_TCP || bpf_skb_load_bytes(skb, 40, ports, 4))
			return 1;
	} else {
		return 1;
	}

	stat_inc(NM_STAT_STRICT_DROP);
	struct nm_flow_event *e = bpf_ringbuf_reserve(&nm_events, sizeof(*e), 0);
	if (e) {
		__builtin_memset(e, 0, sizeof(*e));
		__builtin_memcpy(e->origin.orig_ip, dst, 16);
		e->origin.orig_port = bpf_ntohs(ports[1]);
		e->origin.netns_cookie = netns_cookie;
		e->origin.start_ns = bpf_ktime_get_ns();
		__builtin_memcpy(e->src_ip, src, 16);
		e->src_port = bpf_ntohs(ports[0]);
		e->end_ns = e->origin.start_ns;
		e->kind = NM_EVENT_STRICT_DROP;
		bpf_ringbuf_submit(e, 0);
	}
	return 0;
}

SEC("cgroup/sock_release")
int nm_sock_release(struct bpf_sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie(sk);
	struct nm_origin *o = bpf_map_lookup_elem(&nm_orig_cookie, &cookie);
	if (o && !(o->flags & NM_ORIGIN_CONNECTED))
		bpf_map_delete_elem(&nm_orig_cookie, &cookie);
	return 1;
}
