// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Test fixture: a program the verifier must reject (it dereferences a map
 * lookup without a NULL check), to check how a rejection is reported. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} reject_values SEC(".maps");

SEC("cgroup/connect4")
int reject_unchecked_lookup(struct bpf_sock_addr *ctx)
{
	__u32 key = 0;
	__u64 *v = bpf_map_lookup_elem(&reject_values, &key);
	return *v == 0; /* no NULL check: invalid mem access */
}
