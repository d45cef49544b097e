// SPDX-License-Identifier: Apache-2.0
/* Socket load balancing and mesh-VIP capture. See datapath.h for the maps'
 * layouts and the Datapath section of DESIGN.md for why this is done at the
 * socket layer: the destination is rewritten once, at connect()/sendmsg()
 * time, so there is no per-packet NAT and no conntrack entry. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "datapath.h"

#define AF_INET 2
#define AF_INET6 10

/* Return values of cgroup sock_addr programs. */
#define SOCK_ALLOW 1
#define SOCK_REJECT 0 /* the syscall fails with EPERM */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	/* Elements are freed after an RCU grace period, so a program holding a
	 * pointer to a service value never reads one being rewritten. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct service_key);
	__type(value, struct service_value);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1048576);
	__type(key, struct backend_slot_key);
	__type(value, struct backend);
} backend_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
} affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct reverse_nat_key);
	__type(value, struct service_key);
} reverse_nat SEC(".maps");

/* What each connected socket was translated to, by socket cookie. The entry is
 * deleted when the socket is released (sock_release below). A plain hash map:
 * inserting costs a fraction of an LRU insert with eviction or of creating
 * socket-local storage, and a live socket's entry is never evicted. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, __u64);
	__type(value, struct sock_translation);
} connected_sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 64);
	__type(key, struct mesh_vip_range_key);
	__type(value, __u8);
} mesh_vip_ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32); /* a socket fd when written from userspace */
} tunnel_listeners SEC(".maps");

/* --- addresses ---------------------------------------------------------- */

static __always_inline void addr_from_ip4(__u8 addr[16], __u32 ip4_be)
{
	__builtin_memset(addr, 0, 10);
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(addr + 12, &ip4_be, 4);
}

static __always_inline int addr_is_ip4(const __u8 addr[16])
{
	__u32 words[3];
	__builtin_memcpy(words, addr, 12);
	return words[0] == 0 && words[1] == 0 && words[2] == bpf_htonl(0x0000ffff);
}

static __always_inline __u32 addr_to_ip4(const __u8 addr[16])
{
	__u32 ip4_be;
	__builtin_memcpy(&ip4_be, addr + 12, 4);
	return ip4_be;
}

/* The sock_addr context must be read and written one 32-bit word at a time. */
static __always_inline void addr_from_ctx6(__u8 addr[16], struct bpf_sock_addr *ctx)
{
	__u32 words[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2],
			   ctx->user_ip6[3] };
	__builtin_memcpy(addr, words, 16);
}

static __always_inline void addr_to_ctx6(struct bpf_sock_addr *ctx, const __u8 addr[16])
{
	__u32 words[4];
	__builtin_memcpy(words, addr, 16);
	ctx->user_ip6[0] = words[0];
	ctx->user_ip6[1] = words[1];
	ctx->user_ip6[2] = words[2];
	ctx->user_ip6[3] = words[3];
}

/* --- backend selection -------------------------------------------------- */

enum lookup_result {
	NOT_A_SERVICE, /* leave the socket alone */
	NO_BACKEND, /* a service with no usable backend: refuse like kube-proxy */
	BACKEND_FOUND,
};

static __always_inline enum lookup_result
pick_backend(const struct service_key *service, const struct service_value *value,
		struct backend *picked)
{
	/* Uniformly random among the backends, which are the active ones: the
	 * agent decides which are. Two tries for services whose backends are in
	 * slots: userspace may flip the service to its other bank and delete the
	 * old one between our lookups of the service and the slot; looking the
	 * service up again then finds the new bank. */
	for (int attempt = 0; attempt < 2; attempt++) {
		if (attempt > 0) {
			value = bpf_map_lookup_elem(&services, service);
			if (!value)
				return NO_BACKEND;
		}
		__u16 count = value->backend_count;
		if (count == 0)
			return NO_BACKEND;
		__u32 index = bpf_get_prandom_u32() % count;
		if (count <= INLINE_BACKENDS) {
			if (index >= INLINE_BACKENDS) /* for the verifier */
				return NO_BACKEND;
			*picked = value->inline_backends[index];
			return BACKEND_FOUND;
		}
		struct backend_slot_key slot = {
			.service = *service,
			.bank = value->bank,
			.index = (__u16)index,
		};
		struct backend *backend = bpf_map_lookup_elem(&backend_slots, &slot);
		if (backend) {
			*picked = *backend;
			return BACKEND_FOUND;
		}
	}
	return NO_BACKEND;
}

static __always_inline enum lookup_result
select_backend(struct bpf_sock_addr *ctx, const struct service_key *service,
	       struct backend *picked)
{
	struct service_value *value = bpf_map_lookup_elem(&services, service);
	if (!value)
		return NOT_A_SERVICE;
	__u32 timeout_sec = value->affinity_timeout_sec;
	if (timeout_sec == 0)
		return pick_backend(service, value, picked);

	struct affinity_key key = {
		.netns_cookie = bpf_get_netns_cookie(ctx),
		.service = *service,
	};
	__u64 now = bpf_ktime_get_ns();
	struct affinity_value *remembered = bpf_map_lookup_elem(&affinity, &key);
	if (remembered && now - remembered->last_used_ns <= (__u64)timeout_sec * 1000000000ULL) {
		/* Userspace deletes entries whose backend left the service. */
		remembered->last_used_ns = now;
		*picked = remembered->backend;
		return BACKEND_FOUND;
	}
	enum lookup_result result = pick_backend(service, value, picked);
	if (result == BACKEND_FOUND) {
		struct affinity_value fresh = { .backend = *picked, .last_used_ns = now };
		bpf_map_update_elem(&affinity, &key, &fresh, BPF_ANY);
	}
	return result;
}

/* --- remembering translations for the reverse direction ------------------- */

/* Compares two structs of 20 bytes (backend, service_key) as 32-bit words. */
static __always_inline int equal20(const void *a, const void *b)
{
	__u32 x[5], y[5];
	__builtin_memcpy(x, a, 20);
	__builtin_memcpy(y, b, 20);
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4];
}

enum socket_kind {
	CONNECTING, /* connect(): the socket's one peer from now on */
	SENDING, /* sendmsg() on an unconnected UDP socket: one of many peers */
};

static __always_inline void remember_translation(struct bpf_sock_addr *ctx, enum socket_kind kind,
						 const struct service_key *service,
						 const struct backend *backend)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (kind == CONNECTING) {
		struct sock_translation translation = { .backend = *backend, .service = *service };
		bpf_map_update_elem(&connected_sockets, &cookie, &translation, BPF_ANY);
		return;
	}
	struct reverse_nat_key key = {
		.socket_cookie = cookie,
		.backend = *backend,
	};
	/* A socket sending many datagrams to one service keeps hitting the same
	 * few entries; skip the (costly) LRU update when nothing changes. */
	struct service_key *known = bpf_map_lookup_elem(&reverse_nat, &key);
	if (known && equal20(known, service))
		return;
	bpf_map_update_elem(&reverse_nat, &key, service, BPF_ANY);
}

/* A UDP socket connected to a service and then re-connected elsewhere must not
 * keep showing the old VIP. TCP sockets connect once. */
static __always_inline void forget_connected_translation(struct bpf_sock_addr *ctx,
							 enum socket_kind kind)
{
	if (kind == CONNECTING && ctx->protocol == IPPROTO_UDP) {
		__u64 cookie = bpf_get_socket_cookie(ctx);
		bpf_map_delete_elem(&connected_sockets, &cookie);
	}
}

/* The VIP a reply from `peer` should appear to come from, if any. */
static __always_inline const struct service_key *
find_translation(struct bpf_sock_addr *ctx, const struct backend *peer)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sock_translation *translation = bpf_map_lookup_elem(&connected_sockets, &cookie);
	if (translation && equal20(&translation->backend, peer))
		return &translation->service;
	struct reverse_nat_key key = {
		.socket_cookie = cookie,
		.backend = *peer,
	};
	return bpf_map_lookup_elem(&reverse_nat, &key);
}

/* --- forward translation: connect and sendmsg ----------------------------- */

static __always_inline int translate4(struct bpf_sock_addr *ctx, enum socket_kind kind)
{
	__u32 protocol = ctx->protocol;
	if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
		return SOCK_ALLOW;
	struct service_key service = {
		.port_be = (__u16)ctx->user_port,
		.protocol = (__u8)protocol,
	};
	addr_from_ip4(service.addr, ctx->user_ip4);

	struct backend backend = {};
	switch (select_backend(ctx, &service, &backend)) {
	case NOT_A_SERVICE:
		forget_connected_translation(ctx, kind);
		return SOCK_ALLOW;
	case NO_BACKEND:
		return SOCK_REJECT;
	case BACKEND_FOUND:
		break;
	}
	/* An IPv4 socket can only reach an IPv4 backend; userspace never
	 * writes a mixed-family service, so this is a guard, not a path. */
	if (!addr_is_ip4(backend.addr))
		return SOCK_REJECT;
	ctx->user_ip4 = addr_to_ip4(backend.addr);
	ctx->user_port = backend.port_be;
	remember_translation(ctx, kind, &service, &backend);
	return SOCK_ALLOW;
}

static __always_inline int translate6(struct bpf_sock_addr *ctx, enum socket_kind kind)
{
	__u32 protocol = ctx->protocol;
	if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
		return SOCK_ALLOW;
	struct service_key service = {
		.port_be = (__u16)ctx->user_port,
		.protocol = (__u8)protocol,
	};
	addr_from_ctx6(service.addr, ctx);

	struct backend backend = {};
	switch (select_backend(ctx, &service, &backend)) {
	case NOT_A_SERVICE:
		forget_connected_translation(ctx, kind);
		return SOCK_ALLOW;
	case NO_BACKEND:
		return SOCK_REJECT;
	case BACKEND_FOUND:
		break;
	}
	addr_to_ctx6(ctx, backend.addr);
	ctx->user_port = backend.port_be;
	remember_translation(ctx, kind, &service, &backend);
	return SOCK_ALLOW;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	return translate4(ctx, CONNECTING);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	return translate6(ctx, CONNECTING);
}

/* Unconnected UDP: every sendto() to a VIP picks a backend. */
SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	return translate4(ctx, SENDING);
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	return translate6(ctx, SENDING);
}

/* --- reverse translation: recvmsg and getpeername ------------------------- */

static __always_inline void untranslate4(struct bpf_sock_addr *ctx)
{
	struct backend peer = { .port_be = (__u16)ctx->user_port };
	addr_from_ip4(peer.addr, ctx->user_ip4);
	const struct service_key *service = find_translation(ctx, &peer);
	if (!service || !addr_is_ip4(service->addr))
		return;
	ctx->user_ip4 = addr_to_ip4(service->addr);
	ctx->user_port = service->port_be;
}

static __always_inline void untranslate6(struct bpf_sock_addr *ctx)
{
	struct backend peer = { .port_be = (__u16)ctx->user_port };
	addr_from_ctx6(peer.addr, ctx);
	const struct service_key *service = find_translation(ctx, &peer);
	if (!service)
		return;
	addr_to_ctx6(ctx, service->addr);
	ctx->user_port = service->port_be;
}

/* recvmsg programs must return 1. */
SEC("cgroup/recvmsg4")
int recvmsg4(struct bpf_sock_addr *ctx)
{
	untranslate4(ctx);
	return 1;
}

SEC("cgroup/recvmsg6")
int recvmsg6(struct bpf_sock_addr *ctx)
{
	untranslate6(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx)
{
	untranslate4(ctx);
	return 1;
}

SEC("cgroup/getpeername6")
int getpeername6(struct bpf_sock_addr *ctx)
{
	untranslate6(ctx);
	return 1;
}

/* Forgets what a closing socket was translated to. */
SEC("cgroup/sock_release")
int sock_release(struct bpf_sock *sk)
{
	if (sk->family != AF_INET && sk->family != AF_INET6)
		return 1;
	if (sk->protocol != IPPROTO_TCP && sk->protocol != IPPROTO_UDP)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(sk);
	bpf_map_delete_elem(&connected_sockets, &cookie);
	return 1;
}

/* --- mesh-VIP capture --------------------------------------------------- */

/* A connection to a mesh virtual IP (a backend in another cluster) is handed
 * to the agent's tunnel listener. The listener accepts it with the mesh VIP
 * as its local address, which tells the agent which remote backend was meant.
 * The node routes the mesh ranges locally (`ip route add local <range> dev lo`)
 * so that these packets reach the socket lookup at all. */
SEC("sk_lookup")
int mesh_vip_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;

	struct mesh_vip_range_key key = {};
	key.prefixlen = 128;
	__u32 listener_index;
	if (ctx->family == AF_INET) {
		addr_from_ip4(key.addr, ctx->local_ip4);
		listener_index = TUNNEL_LISTENER_IPV4;
	} else if (ctx->family == AF_INET6) {
		__u32 words[4] = { ctx->local_ip6[0], ctx->local_ip6[1], ctx->local_ip6[2],
				   ctx->local_ip6[3] };
		__builtin_memcpy(key.addr, words, 16);
		listener_index = TUNNEL_LISTENER_IPV6;
	} else {
		return SK_PASS;
	}
	if (!bpf_map_lookup_elem(&mesh_vip_ranges, &key))
		return SK_PASS;

	struct bpf_sock *listener = bpf_map_lookup_elem(&tunnel_listeners, &listener_index);
	if (!listener)
		return SK_PASS; /* agent not listening (restarting): normal lookup */
	bpf_sk_assign(ctx, listener, 0);
	bpf_sk_release(listener);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Apache-2.0";
