// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// (The kernel only grants GPL-only helpers such as bpf_probe_read_kernel to GPL-compatible
// programs, so the kernel side is dual-licensed; the rest of peerd is Apache-2.0.)
/* connect.bpf.c: kernel side of peerd's connectivity probes.
 *
 * Owns: counting outbound TCP connects per (destination address, destination port) for
 * the ports listed in the `ports` map (filtered here, in the kernel): attempts, outcomes
 * (established / refused / timed out / unreachable / aborted / other), SYN retransmits,
 * and a log2 histogram of connect latency (SYN_SENT -> ESTABLISHED).
 * Two attachments of the same logic: classic tracepoints (record layout via CO-RE) and
 * tp_btf (reads the socket via CO-RE); the loader attaches exactly one pair.
 * Must never: block, allocate unbounded state (all maps are bounded; LRU where keys come
 * from traffic), look at payloads, or count ports that are not configured.
 */
#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "shared.h"

#define EEXIST 17
#define ECONNREFUSED 111
#define ETIMEDOUT 110
#define ENETUNREACH 101
#define EHOSTUNREACH 113

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Configured destination ports (host order) -> 1. Written by userspace only. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PEERD_MAX_PORTS);
	__type(key, __u16);
	__type(value, __u8);
} ports SEC(".maps");

/* Per-destination cumulative counters. LRU: destinations come from traffic. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PEERD_DEFAULT_MAX_DESTINATIONS);
	__type(key, struct dest_key);
	__type(value, struct dest_stats);
} dest_stats SEC(".maps");

/* In-flight connects: socket address -> SYN_SENT time. LRU: bounded under floods. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PEERD_DEFAULT_MAX_IN_FLIGHT);
	__type(key, __u64);
	__type(value, struct connect_start);
} connect_start SEC(".maps");

/* Health of the maps themselves (see enum peerd_counter). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PEERD_COUNTER_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static const struct dest_stats zero_stats;

static __always_inline void counter_inc(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &index);
	if (value)
		__sync_fetch_and_add(value, 1);
}

static __always_inline int port_monitored(__u16 dport)
{
	return bpf_map_lookup_elem(&ports, &dport) != 0;
}

static __always_inline struct dest_stats *dest_entry(const struct dest_key *key)
{
	struct dest_stats *stats = bpf_map_lookup_elem(&dest_stats, key);
	if (stats)
		return stats;
	long err = bpf_map_update_elem(&dest_stats, key, &zero_stats, BPF_NOEXIST);
	if (err == 0)
		counter_inc(PEERD_COUNTER_DEST_INSERTED);
	else if (err != -EEXIST) {
		counter_inc(PEERD_COUNTER_DEST_INSERT_FAILED);
		return 0;
	}
	return bpf_map_lookup_elem(&dest_stats, key);
}

/* floor(log2(v)) for v > 0, branch-free so the verifier sees a bounded result. */
static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0, shift;
	shift = (v > 0xffffffffULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xffff) << 4; v >>= shift; r |= shift;
	shift = (v > 0xff) << 3; v >>= shift; r |= shift;
	shift = (v > 0xf) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (__u32)(v >> 1);
	return r;
}

static __always_inline void record_latency(struct dest_stats *stats, __u64 elapsed_ns)
{
	__u64 us = elapsed_ns / 1000;
	__u32 bucket = us == 0 ? 0 : log2_u64(us) + 1;
	if (bucket >= PEERD_LATENCY_BUCKETS)
		bucket = PEERD_LATENCY_BUCKETS - 1;
	__sync_fetch_and_add(&stats->latency_sum_us, us);
	__sync_fetch_and_add(&stats->latency_hist[bucket & (PEERD_LATENCY_BUCKETS - 1)], 1);
}

static __always_inline void classify_close(struct dest_stats *stats, int sk_err)
{
	switch (sk_err) {
	case 0:
		__sync_fetch_and_add(&stats->aborted, 1);
		break;
	case ECONNREFUSED:
		__sync_fetch_and_add(&stats->refused, 1);
		break;
	case ETIMEDOUT:
		__sync_fetch_and_add(&stats->timed_out, 1);
		break;
	case ENETUNREACH:
	case EHOSTUNREACH:
		__sync_fetch_and_add(&stats->unreachable, 1);
		break;
	default:
		__sync_fetch_and_add(&stats->other_errors, 1);
		break;
	}
}

/* Shared state-change logic; `key` is complete, the port already filtered. */
static __always_inline void on_state_change(const struct sock *sk, int oldstate, int newstate,
					    const struct dest_key *key)
{
	__u64 sk_id = (__u64)(unsigned long)sk;
	struct dest_stats *stats;

	if (newstate == TCP_SYN_SENT) {
		struct connect_start start = { .start_ns = bpf_ktime_get_ns() };
		stats = dest_entry(key);
		if (!stats)
			return;
		__sync_fetch_and_add(&stats->attempts, 1);
		if (bpf_map_update_elem(&connect_start, &sk_id, &start, BPF_ANY) != 0)
			counter_inc(PEERD_COUNTER_START_INSERT_FAILED);
		return;
	}

	/* oldstate == TCP_SYN_SENT: an outcome. Only connects whose start we saw count, so
	 * attempts >= outcomes holds per destination (connects in flight at load time, or
	 * whose start was evicted, are only counted as START_MISSING). */
	struct connect_start *start = bpf_map_lookup_elem(&connect_start, &sk_id);
	if (!start) {
		counter_inc(PEERD_COUNTER_START_MISSING);
		return;
	}
	__u64 start_ns = start->start_ns;
	bpf_map_delete_elem(&connect_start, &sk_id);
	stats = dest_entry(key);
	if (!stats)
		return;

	if (newstate == TCP_ESTABLISHED) {
		__u64 now = bpf_ktime_get_ns();
		__sync_fetch_and_add(&stats->established, 1);
		record_latency(stats, now > start_ns ? now - start_ns : 0);
	} else if (newstate == TCP_CLOSE) {
		int sk_err = BPF_CORE_READ(sk, sk_err);
		classify_close(stats, sk_err);
	} else {
		__sync_fetch_and_add(&stats->other_errors, 1);
	}
}

static __always_inline void set_v4_mapped(struct dest_key *key)
{
	key->daddr[10] = 0xff;
	key->daddr[11] = 0xff;
}

/* ---- classic tracepoints ------------------------------------------------------------ */

SEC("tracepoint/sock/inet_sock_set_state")
int peerd_tp_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	int oldstate = ctx->oldstate;
	int newstate = ctx->newstate;
	if (newstate != TCP_SYN_SENT && oldstate != TCP_SYN_SENT)
		return 0;
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	__u16 dport = ctx->dport;
	if (!port_monitored(dport))
		return 0;

	struct dest_key key = {};
	key.dport = dport;
	key.family = ctx->family;
	if (key.family == AF_INET) {
		set_v4_mapped(&key);
		bpf_probe_read_kernel(&key.daddr[12], 4, ctx->daddr);
	} else if (key.family == AF_INET6) {
		bpf_probe_read_kernel(&key.daddr, 16, ctx->daddr_v6);
	} else {
		return 0;
	}
	on_state_change((const struct sock *)ctx->skaddr, oldstate, newstate, &key);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int peerd_tp_retrans(struct trace_event_raw_tcp_retransmit_skb *ctx)
{
	if (ctx->state != TCP_SYN_SENT)
		return 0;
	/* Retransmits the stack failed to send never reached the wire: not counted. */
	if (bpf_core_field_exists(ctx->err) && ctx->err != 0)
		return 0;
	__u16 dport = ctx->dport;
	if (!port_monitored(dport))
		return 0;

	struct dest_key key = {};
	key.dport = dport;
	key.family = ctx->family;
	if (key.family == AF_INET) {
		set_v4_mapped(&key);
		bpf_probe_read_kernel(&key.daddr[12], 4, ctx->daddr);
	} else if (key.family == AF_INET6) {
		bpf_probe_read_kernel(&key.daddr, 16, ctx->daddr_v6);
	} else {
		return 0;
	}
	struct dest_stats *stats = dest_entry(&key);
	if (stats)
		__sync_fetch_and_add(&stats->syn_retransmits, 1);
	return 0;
}

/* ---- tp_btf (no tracefs needed; reads the socket itself) ------------------------------ */

/* Fills `key` from the socket; returns 0 when the socket is not a monitored TCP connect. */
static __always_inline int key_from_sock(const struct sock *sk, struct dest_key *key)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u16 dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (!port_monitored(dport))
		return 0;
	key->dport = dport;
	key->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (key->family == AF_INET) {
		__be32 daddr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		set_v4_mapped(key);
		__builtin_memcpy(&key->daddr[12], &daddr, 4);
	} else if (key->family == AF_INET6) {
		BPF_CORE_READ_INTO(&key->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		return 0;
	}
	return 1;
}

SEC("tp_btf/inet_sock_set_state")
int peerd_btf_state(__u64 *ctx)
{
	const struct sock *sk = (const struct sock *)ctx[0];
	int oldstate = (int)ctx[1];
	int newstate = (int)ctx[2];
	if (newstate != TCP_SYN_SENT && oldstate != TCP_SYN_SENT)
		return 0;
	struct dest_key key = {};
	if (!key_from_sock(sk, &key))
		return 0;
	on_state_change(sk, oldstate, newstate, &key);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int peerd_btf_retrans(__u64 *ctx)
{
	const struct sock *sk = (const struct sock *)ctx[0];
	/* The socket's current state: SYN_SENT while its SYN is being retransmitted. */
	if (BPF_CORE_READ(sk, __sk_common.skc_state) != TCP_SYN_SENT)
		return 0;
	struct dest_key key = {};
	if (!key_from_sock(sk, &key))
		return 0;
	struct dest_stats *stats = dest_entry(&key);
	if (stats)
		__sync_fetch_and_add(&stats->syn_retransmits, 1);
	return 0;
}
