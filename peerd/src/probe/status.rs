//! The per-peer probe summary shown in status JSON and the debug API:
//! `{"mode","attempts","established","refused","timeouts","aborted","syn_retransmits",
//! "p50_us","p99_us"}` (issue 4, sandbox status).
//!
//! Owns: that JSON shape only. Must never compute measurements (see `aggregator`,
//! `attribution`) or decide conditions.

use serde::Serialize;

use super::aggregator::ConnectCounts;
use super::mode::ProbeMode;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeStatus {
    /// `"ebpf"` or `"userspace"`.
    pub mode: &'static str,
    pub attempts: u64,
    pub established: u64,
    pub refused: u64,
    /// Kernel timeouts (ETIMEDOUT); application-side timeouts are `aborted`.
    pub timeouts: u64,
    pub aborted: u64,
    pub unreachable: u64,
    pub syn_retransmits: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
}

impl ProbeStatus {
    pub fn new(mode: &ProbeMode, counts: &ConnectCounts) -> Self {
        let round = |q: f64| counts.latency_percentile_us(q).map(|us| us.round() as u64);
        ProbeStatus {
            mode: mode.name(),
            attempts: counts.attempts,
            established: counts.established,
            refused: counts.refused,
            timeouts: counts.timed_out,
            aborted: counts.aborted,
            unreachable: counts.unreachable,
            syn_retransmits: counts.syn_retransmits,
            p50_us: round(0.50),
            p99_us: round(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::loader::AttachKind;

    #[test]
    fn json_has_the_documented_fields() {
        let mut counts = ConnectCounts::ZERO;
        counts.attempts = 5;
        counts.timed_out = 2;
        counts.syn_retransmits = 4;
        counts.record_established(std::time::Duration::from_micros(100));
        let status = ProbeStatus::new(
            &ProbeMode::Ebpf {
                attach: AttachKind::Tracepoint,
            },
            &counts,
        );
        let json = serde_json::to_value(&status).unwrap();
        for field in [
            "mode",
            "attempts",
            "established",
            "refused",
            "timeouts",
            "aborted",
            "syn_retransmits",
            "p50_us",
            "p99_us",
        ] {
            assert!(json.get(field).is_some(), "missing {field} in {json}");
        }
        assert_eq!(json["mode"], "ebpf");
        assert_eq!(json["timeouts"], 2);
        assert_eq!(json["established"], 1);
        let p50 = json["p50_us"].as_u64().unwrap();
        assert!((64..=128).contains(&p50), "{p50}");

        let idle = ProbeStatus::new(
            &ProbeMode::Userspace { reason: "x".into() },
            &ConnectCounts::ZERO,
        );
        let json = serde_json::to_value(&idle).unwrap();
        assert_eq!(json["mode"], "userspace");
        assert!(json["p50_us"].is_null());
    }
}
