/* Map key and value layouts shared by the eBPF programs (datapath.bpf.c) and,
 * through #[repr(C)] mirrors in src/maps.rs, by userspace. A test compiles this
 * header with the system C compiler and compares every size and offset with the
 * Rust structs, so change both together.
 *
 * Addresses are always 16 bytes: IPv6 as is, IPv4 as an IPv4-mapped IPv6
 * address (::ffff:a.b.c.d). That keeps one services map for both families and
 * lets a dual-stack IPv6 socket dialing ::ffff:a.b.c.d hit the IPv4 service.
 * Ports are in network byte order, as the kernel hands them to the programs.
 * Every padding byte is an explicit field so keys hash the same on both sides.
 */
#ifndef CLUSTERMESH_DATAPATH_H
#define CLUSTERMESH_DATAPATH_H

#include <linux/types.h>

/* A service frontend: what a client dials. Key of `services`. */
struct service_key {
	__u8 addr[16];
	__u16 port_be;
	__u8 protocol; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

/* Services with at most this many backends keep them in their service_value. */
#define INLINE_BACKENDS 8

/* A backend: where a connection to a service really goes. For a backend in
 * another cluster this is its mesh virtual IP. */
struct backend {
	__u8 addr[16];
	__u16 port_be;
	__u16 pad;
};

/* Value of `services`.
 *
 * Up to INLINE_BACKENDS backends live in the value itself, so that a
 * connect() costs one hash lookup, and one map update replaces the whole
 * backend set at once.
 *
 * Larger services keep their backends in `backend_slots` under
 * (service, bank, 0..backend_count). Userspace writes a new backend set into
 * the bank that is not in use, then flips `bank` and `backend_count` with one
 * map update, then deletes the old bank: a program never sees a half-written
 * service, and a removed backend is unreachable from the moment of the flip. */
struct service_value {
	__u16 backend_count;
	__u8 bank; /* 0 or 1; only used when backend_count > INLINE_BACKENDS */
	__u8 flags; /* reserved, 0 */
	__u32 affinity_timeout_sec; /* 0: no ClientIP session affinity */
	struct backend inline_backends[INLINE_BACKENDS];
};

/* Key of `backend_slots`. */
struct backend_slot_key {
	struct service_key service;
	__u16 bank;
	__u16 index;
};

/* The value of `backend_slots` is a struct backend. */

/* Key of `affinity` (LRU). ClientIP affinity for socket load balancing is per
 * client network namespace, i.e. per pod. */
struct affinity_key {
	__u64 netns_cookie;
	struct service_key service;
	__u32 pad;
};

struct affinity_value {
	struct backend backend;
	__u32 pad;
	__u64 last_used_ns; /* bpf_ktime_get_ns() */
};

/* Key of `reverse_nat` (LRU), for unconnected UDP: a socket that sent to a
 * service, and the backend the datagram went to. The value is the service_key
 * the application addressed, used by recvmsg to show the VIP as the source of
 * replies. Connected sockets use `connected_sockets` instead. */
struct reverse_nat_key {
	__u64 socket_cookie;
	struct backend backend;
	__u32 pad;
};

/* Value of `connected_sockets`, keyed by socket cookie (__u64): what a
 * connected socket (TCP, or UDP after connect()) was translated to. Deleted
 * when the socket is released. */
struct sock_translation {
	struct backend backend;
	struct service_key service;
};

/* Key of `mesh_vip_ranges` (LPM trie); the value is a __u8, always 1. */
struct mesh_vip_range_key {
	__u32 prefixlen; /* 96 + IPv4 prefix length for IPv4 ranges */
	__u8 addr[16];
};

/* Indexes into `tunnel_listeners` (sockmap). */
#define TUNNEL_LISTENER_IPV4 0
#define TUNNEL_LISTENER_IPV6 1

#endif
