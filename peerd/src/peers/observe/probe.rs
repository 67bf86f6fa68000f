//! What the probe sources answer: per-port reachability verdicts, probe counters and
//! the targets to probe, and the [`ProbeSource`] trait both probe modes implement.
//!
//! Owns: the shared probe vocabulary only. Must never probe anything itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::probe::aggregator::ConnectCounts;

/// What connects to one port of a peer showed most recently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Reachability {
    Reachable,
    Refused,
    /// Timed out in the kernel, or our own connect timeout fired (aborted).
    TimedOut,
    Unreachable,
}

impl Reachability {
    /// The latest verdict from a set of connect counts; `None` when nothing happened.
    pub fn from_counts(c: &ConnectCounts) -> Option<Self> {
        if c.established > 0 {
            Some(Reachability::Reachable)
        } else if c.timed_out + c.aborted > 0 {
            Some(Reachability::TimedOut)
        } else if c.refused > 0 {
            Some(Reachability::Refused)
        } else if c.unreachable + c.other_errors > 0 {
            Some(Reachability::Unreachable)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortVerdict {
    pub reachability: Reachability,
    /// A destination the verdict is about (the first one of the peer's targets).
    pub target: SocketAddr,
}

/// Probe counters of a peer's HBONE port, as embedded in the status JSON under `"probe"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProbeStats {
    /// `ebpf` or `userspace`.
    pub mode: String,
    pub attempts: u64,
    pub established: u64,
    pub refused: u64,
    pub timeouts: u64,
    pub aborted: u64,
    pub syn_retransmits: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

/// Where to probe one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeTargets {
    /// The gateway's HBONE port, or the pod IPs on 15008 for a flat peer.
    pub hbone: Vec<SocketAddr>,
    /// The peer's xDS endpoint (15012).
    pub xds: Vec<SocketAddr>,
    /// A flat-network peer: its pod IPs are reached directly (all of them count as the
    /// peer's destinations, not only the probed sample).
    pub flat: bool,
}

/// A peer's probe results.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeObservation {
    pub hbone: Option<PortVerdict>,
    pub xds: Option<PortVerdict>,
    pub stats: ProbeStats,
}

pub trait ProbeSource: Send + Sync {
    /// `ebpf` or `userspace`.
    fn mode(&self) -> &'static str;
    /// Replaces the targets of every peer.
    fn set_targets(&self, targets: &BTreeMap<String, ProbeTargets>);
    /// The latest results for `peer` (verdicts stay until newer connects are seen).
    fn observe(&self, peer: &str) -> ProbeObservation;
}
