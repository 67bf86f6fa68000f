//! Map key/value layouts shared with `shared.h`, with compile-time size/offset checks.
//!
//! Owns: the `#[repr(C)]` types and their (native-endian) byte encodings, which the loader
//! uses with aya's byte-array map views so no `unsafe` is needed. Must never diverge from
//! `src/shared.h`: the `const` assertions below pin every size and offset, and the unit
//! test `layout_matches_c_static_asserts` checks the C `_Static_assert`s against them.

use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Buckets of the log2 latency histogram (`PEERD_LATENCY_BUCKETS`).
pub const LATENCY_BUCKETS: usize = 32;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Key of `dest_stats`: destination address (IPv4 as `::ffff:a.b.c.d`) and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestKey {
    pub daddr: [u8; 16],
    /// Host byte order.
    pub dport: u16,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
}

/// Value of `dest_stats`: cumulative counters since the entry was created.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestStats {
    pub attempts: u64,
    pub established: u64,
    pub refused: u64,
    pub timed_out: u64,
    pub unreachable: u64,
    pub aborted: u64,
    pub other_errors: u64,
    pub syn_retransmits: u64,
    pub latency_sum_us: u64,
    /// Bucket 0: < 1 µs; bucket b ≥ 1: [2^(b-1), 2^b) µs; the last bucket is open-ended.
    pub latency_hist: [u64; LATENCY_BUCKETS],
}

/// Value of `connect_start`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectStart {
    pub start_ns: u64,
}

/// Indexes of the `counters` array (`enum peerd_counter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    /// New destinations inserted into `dest_stats` (inserted − live entries = evicted).
    DestInserted = 0,
    /// `dest_stats` inserts that failed (map full and not evictable, or no memory).
    DestInsertFailed = 1,
    /// `connect_start` inserts that failed.
    StartInsertFailed = 2,
    /// Outcomes seen without a recorded start (evicted, or in flight at load time).
    StartMissing = 3,
}

/// Entries of the `counters` array (`PEERD_COUNTER_COUNT`).
pub const COUNTER_SLOTS: u32 = 8;

pub const DEST_KEY_SIZE: usize = 20;
pub const DEST_STATS_SIZE: usize = 328;
pub const CONNECT_START_SIZE: usize = 8;

const _: () = {
    assert!(size_of::<DestKey>() == DEST_KEY_SIZE);
    assert!(offset_of!(DestKey, daddr) == 0);
    assert!(offset_of!(DestKey, dport) == 16);
    assert!(offset_of!(DestKey, family) == 18);
    assert!(size_of::<DestStats>() == DEST_STATS_SIZE);
    assert!(offset_of!(DestStats, attempts) == 0);
    assert!(offset_of!(DestStats, established) == 8);
    assert!(offset_of!(DestStats, refused) == 16);
    assert!(offset_of!(DestStats, timed_out) == 24);
    assert!(offset_of!(DestStats, unreachable) == 32);
    assert!(offset_of!(DestStats, aborted) == 40);
    assert!(offset_of!(DestStats, other_errors) == 48);
    assert!(offset_of!(DestStats, syn_retransmits) == 56);
    assert!(offset_of!(DestStats, latency_sum_us) == 64);
    assert!(offset_of!(DestStats, latency_hist) == 72);
    assert!(size_of::<ConnectStart>() == CONNECT_START_SIZE);
    assert!((Counter::StartMissing as u32) < COUNTER_SLOTS);
};

impl DestKey {
    /// The key the kernel writes for a connect to `addr:port`.
    pub fn new(addr: IpAddr, port: u16) -> Self {
        let (daddr, family) = match addr {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), AF_INET),
            IpAddr::V6(v6) => (v6.octets(), AF_INET6),
        };
        DestKey {
            daddr,
            dport: port,
            family,
        }
    }

    /// The destination address (IPv4 for `AF_INET` keys).
    pub fn addr(&self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.daddr);
        match (self.family, v6.to_ipv4_mapped()) {
            (AF_INET, Some(v4)) => IpAddr::V4(v4),
            (AF_INET, None) => IpAddr::V4(Ipv4Addr::new(
                self.daddr[12],
                self.daddr[13],
                self.daddr[14],
                self.daddr[15],
            )),
            _ => IpAddr::V6(v6),
        }
    }

    pub fn to_bytes(&self) -> [u8; DEST_KEY_SIZE] {
        let mut out = [0u8; DEST_KEY_SIZE];
        out[0..16].copy_from_slice(&self.daddr);
        out[16..18].copy_from_slice(&self.dport.to_ne_bytes());
        out[18..20].copy_from_slice(&self.family.to_ne_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8; DEST_KEY_SIZE]) -> Self {
        let mut daddr = [0u8; 16];
        daddr.copy_from_slice(&bytes[0..16]);
        DestKey {
            daddr,
            dport: u16::from_ne_bytes([bytes[16], bytes[17]]),
            family: u16::from_ne_bytes([bytes[18], bytes[19]]),
        }
    }
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_ne_bytes(word)
}

impl DestStats {
    pub const ZERO: DestStats = DestStats {
        attempts: 0,
        established: 0,
        refused: 0,
        timed_out: 0,
        unreachable: 0,
        aborted: 0,
        other_errors: 0,
        syn_retransmits: 0,
        latency_sum_us: 0,
        latency_hist: [0; LATENCY_BUCKETS],
    };

    pub fn from_bytes(bytes: &[u8; DEST_STATS_SIZE]) -> Self {
        let mut latency_hist = [0u64; LATENCY_BUCKETS];
        for (bucket, slot) in latency_hist.iter_mut().enumerate() {
            *slot = read_u64(bytes, offset_of!(DestStats, latency_hist) + bucket * 8);
        }
        DestStats {
            attempts: read_u64(bytes, offset_of!(DestStats, attempts)),
            established: read_u64(bytes, offset_of!(DestStats, established)),
            refused: read_u64(bytes, offset_of!(DestStats, refused)),
            timed_out: read_u64(bytes, offset_of!(DestStats, timed_out)),
            unreachable: read_u64(bytes, offset_of!(DestStats, unreachable)),
            aborted: read_u64(bytes, offset_of!(DestStats, aborted)),
            other_errors: read_u64(bytes, offset_of!(DestStats, other_errors)),
            syn_retransmits: read_u64(bytes, offset_of!(DestStats, syn_retransmits)),
            latency_sum_us: read_u64(bytes, offset_of!(DestStats, latency_sum_us)),
            latency_hist,
        }
    }

    pub fn to_bytes(&self) -> [u8; DEST_STATS_SIZE] {
        let mut out = [0u8; DEST_STATS_SIZE];
        let scalars = [
            (offset_of!(DestStats, attempts), self.attempts),
            (offset_of!(DestStats, established), self.established),
            (offset_of!(DestStats, refused), self.refused),
            (offset_of!(DestStats, timed_out), self.timed_out),
            (offset_of!(DestStats, unreachable), self.unreachable),
            (offset_of!(DestStats, aborted), self.aborted),
            (offset_of!(DestStats, other_errors), self.other_errors),
            (offset_of!(DestStats, syn_retransmits), self.syn_retransmits),
            (offset_of!(DestStats, latency_sum_us), self.latency_sum_us),
        ];
        for (offset, value) in scalars {
            out[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        }
        for (bucket, value) in self.latency_hist.iter().enumerate() {
            let offset = offset_of!(DestStats, latency_hist) + bucket * 8;
            out[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `_Static_assert(sizeof(struct X) == N, …)` and
    /// `_Static_assert(__builtin_offsetof(struct X, f) == N, …)` lines of shared.h into
    /// (type, field, value).
    fn c_assertions() -> Vec<(String, Option<String>, usize)> {
        let header = include_str!("shared.h");
        let mut found = Vec::new();
        for line in header.lines().filter(|l| l.starts_with("_Static_assert(")) {
            let (lhs, rest) = line["_Static_assert(".len()..].split_once("==").unwrap();
            let value: usize = rest.split(',').next().unwrap().trim().parse().unwrap();
            let lhs = lhs.trim().trim_end_matches(')');
            if let Some(ty) = lhs.strip_prefix("sizeof(struct ") {
                found.push((ty.to_string(), None, value));
            } else if let Some(inner) = lhs.strip_prefix("__builtin_offsetof(struct ") {
                let (ty, field) = inner.split_once(',').unwrap();
                found.push((ty.trim().to_string(), Some(field.trim().to_string()), value));
            } else {
                panic!("unrecognised assertion in shared.h: {line}");
            }
        }
        found
    }

    fn rust_layout(ty: &str, field: Option<&str>) -> usize {
        match (ty, field) {
            ("dest_key", None) => size_of::<DestKey>(),
            ("dest_key", Some("daddr")) => offset_of!(DestKey, daddr),
            ("dest_key", Some("dport")) => offset_of!(DestKey, dport),
            ("dest_key", Some("family")) => offset_of!(DestKey, family),
            ("dest_stats", None) => size_of::<DestStats>(),
            ("dest_stats", Some("attempts")) => offset_of!(DestStats, attempts),
            ("dest_stats", Some("established")) => offset_of!(DestStats, established),
            ("dest_stats", Some("refused")) => offset_of!(DestStats, refused),
            ("dest_stats", Some("timed_out")) => offset_of!(DestStats, timed_out),
            ("dest_stats", Some("unreachable")) => offset_of!(DestStats, unreachable),
            ("dest_stats", Some("aborted")) => offset_of!(DestStats, aborted),
            ("dest_stats", Some("other_errors")) => offset_of!(DestStats, other_errors),
            ("dest_stats", Some("syn_retransmits")) => offset_of!(DestStats, syn_retransmits),
            ("dest_stats", Some("latency_sum_us")) => offset_of!(DestStats, latency_sum_us),
            ("dest_stats", Some("latency_hist")) => offset_of!(DestStats, latency_hist),
            ("connect_start", None) => size_of::<ConnectStart>(),
            (ty, field) => panic!("shared.h asserts {ty}.{field:?}, which Rust does not know"),
        }
    }

    #[test]
    fn layout_matches_c_static_asserts() {
        let assertions = c_assertions();
        assert!(assertions.len() >= 15, "parsed only {assertions:?}");
        for (ty, field, c_value) in assertions {
            let rust_value = rust_layout(&ty, field.as_deref());
            assert_eq!(
                rust_value, c_value,
                "{ty}.{field:?}: Rust {rust_value}, C {c_value}"
            );
        }
    }

    #[test]
    fn c_constants_match_rust() {
        let header = include_str!("shared.h");
        let define = |name: &str| -> u64 {
            let line = header
                .lines()
                .find(|l| l.starts_with(&format!("#define {name} ")))
                .unwrap();
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert_eq!(define("PEERD_LATENCY_BUCKETS"), LATENCY_BUCKETS as u64);
        assert_eq!(define("PEERD_MAX_PORTS"), u64::from(crate::MAX_PORTS));
        assert_eq!(
            define("PEERD_DEFAULT_MAX_DESTINATIONS"),
            u64::from(crate::DEFAULT_MAX_DESTINATIONS)
        );
        assert_eq!(
            define("PEERD_DEFAULT_MAX_IN_FLIGHT"),
            u64::from(crate::DEFAULT_MAX_IN_FLIGHT)
        );
        for (name, counter) in [
            ("PEERD_COUNTER_DEST_INSERTED", Counter::DestInserted),
            (
                "PEERD_COUNTER_DEST_INSERT_FAILED",
                Counter::DestInsertFailed,
            ),
            (
                "PEERD_COUNTER_START_INSERT_FAILED",
                Counter::StartInsertFailed,
            ),
            ("PEERD_COUNTER_START_MISSING", Counter::StartMissing),
        ] {
            let line = header
                .lines()
                .find(|l| l.trim().starts_with(&format!("{name} =")))
                .unwrap();
            let value: u32 = line
                .split('=')
                .nth(1)
                .unwrap()
                .trim()
                .trim_end_matches(',')
                .parse()
                .unwrap();
            assert_eq!(value, counter as u32, "{name}");
        }
        let count = header
            .lines()
            .find(|l| l.trim().starts_with("PEERD_COUNTER_COUNT ="))
            .unwrap();
        let count: u32 = count
            .split('=')
            .nth(1)
            .unwrap()
            .trim()
            .trim_end_matches(',')
            .parse()
            .unwrap();
        assert_eq!(count, COUNTER_SLOTS);
    }

    #[test]
    fn keys_round_trip_and_map_ipv4() {
        let v4 = DestKey::new("10.200.1.2".parse().unwrap(), 15008);
        assert_eq!(&v4.daddr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(v4.family, 2);
        assert_eq!(v4.addr(), "10.200.1.2".parse::<IpAddr>().unwrap());
        assert_eq!(DestKey::from_bytes(&v4.to_bytes()), v4);
        let v6 = DestKey::new("fd00:200::2".parse().unwrap(), 15012);
        assert_eq!(v6.family, 10);
        assert_eq!(v6.addr(), "fd00:200::2".parse::<IpAddr>().unwrap());
        assert_eq!(DestKey::from_bytes(&v6.to_bytes()), v6);
    }

    #[test]
    fn stats_round_trip() {
        let mut stats = DestStats::ZERO;
        stats.attempts = 7;
        stats.syn_retransmits = 3;
        stats.latency_sum_us = 1234;
        stats.latency_hist[0] = 1;
        stats.latency_hist[31] = 9;
        assert_eq!(DestStats::from_bytes(&stats.to_bytes()), stats);
    }

    #[test]
    fn object_is_built_or_reason_given() {
        match crate::connect_object() {
            Ok(bytes) => assert_eq!(&bytes[..4], b"\x7fELF"),
            Err(reason) => assert!(!reason.is_empty()),
        }
    }
}
