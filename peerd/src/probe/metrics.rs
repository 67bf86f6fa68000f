//! The probe metrics (docs/metrics.md, "Data-plane probes"):
//! `peerd_probe_connects_total{peer_cluster,port,result}`,
//! `peerd_probe_connect_duration_seconds{peer_cluster,port}`,
//! `peerd_probe_syn_retransmits_total{peer_cluster,port}`, `peerd_probe_ebpf_active`, and
//! the probe health `peerd_probe_map_evictions_total` /
//! `peerd_probe_map_insert_failures_total` / `peerd_probe_skipped_runs_total`.
//!
//! Owns: turning per-peer, per-port count *deltas* into those series. Must never be fed
//! the same delta twice (the caller emits once per new report), never label by address
//! (only by peer and port: no unbounded labels), and never decide conditions.

use std::collections::BTreeMap;

use super::aggregator::ConnectCounts;
use super::attribution::PeerProbe;

/// The `result` label values, with the count each takes from a delta.
fn results(delta: &ConnectCounts) -> [(&'static str, u64); 5] {
    [
        ("ok", delta.established),
        ("refused", delta.refused),
        ("timeout", delta.timed_out),
        ("unreachable", delta.unreachable + delta.other_errors),
        ("aborted", delta.aborted),
    ]
}

/// A representative latency in seconds for log2 µs bucket `b` ([2^(b-1), 2^b) µs): the
/// geometric middle of the bucket, so a Prometheus bucket boundary inside it splits
/// nothing unexpectedly far from the truth.
fn bucket_seconds(bucket: usize) -> f64 {
    if bucket == 0 {
        return 0.5e-6;
    }
    let lower = (1u64 << (bucket - 1).min(62)) as f64;
    lower * std::f64::consts::SQRT_2 * 1e-6
}

/// Adds one round of per-peer deltas to the counters and the duration histogram.
pub fn record_deltas(per_peer: &BTreeMap<String, PeerProbe>) {
    for (peer, probe) in per_peer {
        for (port, counts) in &probe.by_port {
            let delta = &counts.delta;
            let port = port.to_string();
            for (result, n) in results(delta) {
                if n > 0 {
                    metrics::counter!(
                        "peerd_probe_connects_total",
                        "peer_cluster" => peer.clone(),
                        "port" => port.clone(),
                        "result" => result
                    )
                    .increment(n);
                }
            }
            if delta.syn_retransmits > 0 {
                metrics::counter!(
                    "peerd_probe_syn_retransmits_total",
                    "peer_cluster" => peer.clone(),
                    "port" => port.clone()
                )
                .increment(delta.syn_retransmits);
            }
            let histogram = metrics::histogram!(
                "peerd_probe_connect_duration_seconds",
                "peer_cluster" => peer.clone(),
                "port" => port.clone()
            );
            for (bucket, &n) in delta.latency_hist.iter().enumerate() {
                if n > 0 {
                    histogram.record_many(bucket_seconds(bucket), n as usize);
                }
            }
        }
    }
}

/// Probe health since the previous call: destinations the LRU evicted (their counts
/// restart from zero if seen again), entries the kernel could not insert, and probe runs
/// the kernel skipped (each possibly a monitored connect's start or outcome).
pub fn record_map_health(evicted: u64, insert_failures: u64, skipped_runs: u64) {
    if evicted > 0 {
        metrics::counter!("peerd_probe_map_evictions_total").increment(evicted);
    }
    if insert_failures > 0 {
        metrics::counter!("peerd_probe_map_insert_failures_total").increment(insert_failures);
    }
    if skipped_runs > 0 {
        metrics::counter!("peerd_probe_skipped_runs_total").increment(skipped_runs);
    }
}

/// `peerd_probe_ebpf_active`: 1 while the kernel programs are attached.
pub fn set_ebpf_active(active: bool) {
    metrics::gauge!("peerd_probe_ebpf_active").set(if active { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::aggregator::latency_bucket;

    #[test]
    fn bucket_representatives_stay_inside_their_bucket() {
        for b in 1..peerd_ebpf::LATENCY_BUCKETS - 1 {
            let us = bucket_seconds(b) * 1e6;
            assert_eq!(latency_bucket(us as u64), b, "bucket {b}: {us} µs");
        }
        assert!(bucket_seconds(0) < 1e-6);
    }

    #[test]
    fn results_cover_every_outcome_once() {
        let delta = ConnectCounts {
            attempts: 15,
            established: 1,
            refused: 2,
            timed_out: 3,
            unreachable: 4,
            other_errors: 1,
            aborted: 4,
            ..ConnectCounts::default()
        };
        let total: u64 = results(&delta).iter().map(|(_, n)| n).sum();
        assert_eq!(total, 15);
        let labels: Vec<&str> = results(&delta).iter().map(|(l, _)| *l).collect();
        assert_eq!(
            labels,
            ["ok", "refused", "timeout", "unreachable", "aborted"]
        );
    }
}
