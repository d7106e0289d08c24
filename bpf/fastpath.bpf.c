// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The same-node fast path (see docs/architecture.md, 'The same-node fast
 * path'): once the node proxy has authorized a plaintext connection between
 * two pods of its node, it puts its two sockets (the pod's, accepted on
 * 15001, and its own toward the destination pod) into nm_fp_socks and each
 * socket's peer into nm_fp_pairs. From then on every segment either socket
 * receives is handed by this program to the other socket's send queue in the
 * kernel, without waking the proxy's copy; the proxy still sees each FIN,
 * RST and error, and reads nm_fp_pairs for the bytes.
 *
 * The kernel sends a redirected segment later, from a work item, and queues
 * without limit while the peer's send queue is full. So this program bounds
 * it: once more than NM_FP_MAX_PENDING bytes are taken and not yet on the
 * peer's send queue (the peer's write_seq says how far it got), that
 * direction is passed up to the proxy for good, and the proxy, which waits
 * for the kernel's copy to settle before writing, copies it with ordinary TCP
 * backpressure. A segment for a socket whose peer is gone (or not in yet)
 * sends its direction up the same way.
 *
 * Nothing is pinned: the maps belong to the proxy process, and when it exits
 * the kernel frees them and detaches this program, so a dead proxy leaves
 * nothing behind on the node (its sockets die with it anyway). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "nodemesh_abi.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The one field read from the peer: offset from the kernel's BTF at load (CO-RE). */
struct tcp_sock {
	__u32 write_seq;
} __attribute__((preserve_access_index));

/* Set by the proxy at load (FastPath.open); NM_FP_MAX_PENDING unless told. */
const volatile __u32 max_pending = NM_FP_MAX_PENDING;

/* Socket cookie -> the socket (the proxy's end of a fast-path connection). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, NM_FP_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u64);
} nm_fp_socks SEC(".maps");

/* Socket cookie -> one direction: its peer and the bytes handed over. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NM_FP_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct nm_fp_pair);
} nm_fp_pairs SEC(".maps");

/* Up to the proxy, for good and counted. For good: a byte passed up is copied
 * by the proxy later, so no later byte of this direction may take the
 * kernel's shorter way past it (the peer missing for a moment while the two
 * sockets join is enough for that). Counted: the proxy reads this many bytes
 * from the socket before it believes its end (a segment passed up can wait
 * in the kernel's queue behind others while the FIN is already seen). */
static __always_inline int pass_up(struct nm_fp_pair *p, struct __sk_buff *skb)
{
	p->flags |= NM_FP_PROXIED;
	p->passed += skb->len;
	return SK_PASS;
}

SEC("sk_skb/stream_verdict")
int nm_fp_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct nm_fp_pair *p = bpf_map_lookup_elem(&nm_fp_pairs, &cookie);
	struct bpf_sock *peer;
	struct tcp_sock *tp;
	__u32 seq, pending;

	/* A bare FIN: TCP has already taken its state (the proxy reads the end
	 * from it), and there is nothing to copy. Passed on, an empty segment is
	 * worse than useless: redirected it would be sent after the proxy shut
	 * the peer, and queued behind other segments of this socket the kernel
	 * counts its zero bytes as a broken pipe, stops the socket's queue for
	 * good and fails it with EPIPE. */
	if (skb->len == 0)
		return SK_DROP;
	if (!p)
		return SK_PASS; /* not ours */
	if (p->flags & NM_FP_PROXIED)
		return pass_up(p, skb);
	peer = bpf_map_lookup_elem(&nm_fp_socks, &p->peer);
	if (!peer)
		return pass_up(p, skb); /* the peer is gone: the proxy reads it */
	tp = bpf_skc_to_tcp_sock(peer);
	seq = tp ? tp->write_seq : 0;
	bpf_sk_release(peer);
	if (!tp)
		return pass_up(p, skb);
	if (!(p->flags & NM_FP_BASE)) {
		p->base_seq = seq;
		p->flags |= NM_FP_BASE;
	}
	/* Taken but not yet on the peer's send queue (u32 sequence arithmetic). */
	pending = (__u32)p->bytes - (seq - p->base_seq);
	if (pending + skb->len > max_pending)
		return pass_up(p, skb);
	/* Egress of the peer: its send queue, after what is already there. */
	if (bpf_sk_redirect_hash(skb, &nm_fp_socks, &p->peer, 0) != SK_PASS)
		return pass_up(p, skb);
	p->bytes += skb->len;
	return SK_PASS;
}
