//! peerd's kernel connect probes: the compiled object (when clang was available at build
//! time) and the map layouts shared with the C programs in `src/*.bpf.c`.
//!
//! Owns: the embedded object bytes, the reason when there is none, the names of maps and
//! programs, and the `#[repr(C)]` key/value types of each map. Must never load or attach
//! anything (that is `peerd::probe::loader`), and never change a layout without changing
//! `src/shared.h` the same way (compile-time assertions and a unit test enforce it).

pub mod layout;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/probes.rs"));
}

pub use layout::{ConnectStart, Counter, DestKey, DestStats, LATENCY_BUCKETS};

/// The connect-probe object, or why it was not built.
pub fn connect_object() -> Result<&'static [u8], &'static str> {
    match (generated::CONNECT_OBJECT, generated::UNAVAILABLE_REASON) {
        (Some(bytes), _) => Ok(bytes),
        (None, Some(reason)) => Err(reason),
        (None, None) => Err("eBPF object missing for an unknown reason"),
    }
}

/// Map names, as declared in `connect.bpf.c`.
pub mod maps {
    /// `HASH<u16 port (host order), u8>`: destination ports counted by the programs.
    pub const PORTS: &str = "ports";
    /// `LRU_HASH<DestKey, DestStats>`: per-destination counters.
    pub const DEST_STATS: &str = "dest_stats";
    /// `LRU_HASH<u64 socket address, ConnectStart>`: connects in flight.
    pub const CONNECT_START: &str = "connect_start";
    /// `ARRAY<u32, u64>` indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "counters";
}

/// Program names (C function names) and the hook each one attaches to.
pub mod programs {
    /// Classic tracepoint on `sock/inet_sock_set_state`.
    pub const TP_STATE: &str = "peerd_tp_state";
    /// Classic tracepoint on `tcp/tcp_retransmit_skb`.
    pub const TP_RETRANSMIT: &str = "peerd_tp_retrans";
    /// BTF tracepoint on `inet_sock_set_state`.
    pub const BTF_STATE: &str = "peerd_btf_state";
    /// BTF tracepoint on `tcp_retransmit_skb`.
    pub const BTF_RETRANSMIT: &str = "peerd_btf_retrans";
}

/// Capacity of the `ports` map.
pub const MAX_PORTS: u32 = 64;
/// Default capacity of `dest_stats` (the loader may change it before load).
pub const DEFAULT_MAX_DESTINATIONS: u32 = 4096;
/// Default capacity of `connect_start`.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 16384;
/// Default monitored destination ports: HBONE and istiod xDS.
pub const DEFAULT_PORTS: [u16; 2] = [15008, 15012];
