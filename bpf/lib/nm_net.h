/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket constants the BPF programs need; glibc's headers are not for BPF. */
#ifndef NM_NET_H
#define NM_NET_H

#define NM_AF_INET 2
#define NM_AF_INET6 10
#define NM_SOCK_STREAM 1
#define NM_SOCK_DGRAM 2
#define NM_IPPROTO_TCP 6

#endif /* NM_NET_H */
