/* shared.h: the layouts of the maps shared between the kernel programs and peerd.
 *
 * The Rust side (peerd-ebpf/src/layout.rs) declares the same types with #[repr(C)] and
 * asserts the same sizes and offsets at compile time; a unit test there reads the
 * _Static_asserts below and checks them against the Rust layout, so the two sides
 * cannot drift. Change both or neither. Never put implicit padding in a map key.
 */
#ifndef PEERD_SHARED_H
#define PEERD_SHARED_H

#define PEERD_LATENCY_BUCKETS 32
#define PEERD_MAX_PORTS 64
#define PEERD_DEFAULT_MAX_DESTINATIONS 4096
#define PEERD_DEFAULT_MAX_IN_FLIGHT 16384

/* Key of `dest_stats`: destination address (IPv4 as ::ffff:a.b.c.d), port in host order. */
struct dest_key {
	__u8 daddr[16];
	__u16 dport;
	__u16 family;
};

/* Value of `dest_stats`: cumulative since the entry was created. */
struct dest_stats {
	__u64 attempts;
	__u64 established;
	__u64 refused;
	__u64 timed_out;
	__u64 unreachable;
	__u64 aborted;
	__u64 other_errors;
	__u64 syn_retransmits;
	__u64 latency_sum_us;
	/* bucket 0: < 1 us; bucket b >= 1: [2^(b-1), 2^b) us; the last bucket is open. */
	__u64 latency_hist[PEERD_LATENCY_BUCKETS];
};

/* Value of `connect_start` (key: the socket's kernel address). */
struct connect_start {
	__u64 start_ns;
};

/* Indexes of the `counters` array. */
enum peerd_counter {
	PEERD_COUNTER_DEST_INSERTED = 0,
	PEERD_COUNTER_DEST_INSERT_FAILED = 1,
	PEERD_COUNTER_START_INSERT_FAILED = 2,
	PEERD_COUNTER_START_MISSING = 3,
	PEERD_COUNTER_COUNT = 8,
};

_Static_assert(sizeof(struct dest_key) == 20, "dest_key size");
_Static_assert(__builtin_offsetof(struct dest_key, daddr) == 0, "dest_key.daddr");
_Static_assert(__builtin_offsetof(struct dest_key, dport) == 16, "dest_key.dport");
_Static_assert(__builtin_offsetof(struct dest_key, family) == 18, "dest_key.family");
_Static_assert(sizeof(struct dest_stats) == 328, "dest_stats size");
_Static_assert(__builtin_offsetof(struct dest_stats, attempts) == 0, "dest_stats.attempts");
_Static_assert(__builtin_offsetof(struct dest_stats, established) == 8, "dest_stats.established");
_Static_assert(__builtin_offsetof(struct dest_stats, refused) == 16, "dest_stats.refused");
_Static_assert(__builtin_offsetof(struct dest_stats, timed_out) == 24, "dest_stats.timed_out");
_Static_assert(__builtin_offsetof(struct dest_stats, unreachable) == 32, "dest_stats.unreachable");
_Static_assert(__builtin_offsetof(struct dest_stats, aborted) == 40, "dest_stats.aborted");
_Static_assert(__builtin_offsetof(struct dest_stats, other_errors) == 48, "dest_stats.other_errors");
_Static_assert(__builtin_offsetof(struct dest_stats, syn_retransmits) == 56, "dest_stats.syn_retransmits");
_Static_assert(__builtin_offsetof(struct dest_stats, latency_sum_us) == 64, "dest_stats.latency_sum_us");
_Static_assert(__builtin_offsetof(struct dest_stats, latency_hist) == 72, "dest_stats.latency_hist");
_Static_assert(sizeof(struct connect_start) == 8, "connect_start size");

#endif
