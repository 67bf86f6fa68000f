//! Userspace probe mode: verdicts and latency from the active prober's own connect
//! outcomes.
//!
//! Owns: turning the prober's counters into verdicts and metrics. Must never connect
//! anywhere itself (the prober owns connects and its target guard).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::probe::aggregator::{self};
use crate::probe::prober::{ProbeOutcome, Prober};

use super::lock;
use super::probe::{
    PortVerdict, ProbeObservation, ProbeSource, ProbeStats, ProbeTargets, Reachability,
};

/// Log2 µs bucket, as the kernel histogram counts it.
fn latency_bucket(us: u64) -> usize {
    let b = (u64::BITS - us.leading_zeros()) as usize;
    b.min(peerd_ebpf::LATENCY_BUCKETS - 1)
}

#[derive(Default)]
struct UserspaceTarget {
    seen_attempts: u64,
    hist: [u64; peerd_ebpf::LATENCY_BUCKETS],
}

/// Userspace mode: the active prober's own connect outcomes.
pub struct UserspaceProbe {
    prober: Arc<Prober>,
    targets: Mutex<BTreeMap<String, ProbeTargets>>,
    latencies: Mutex<HashMap<SocketAddr, UserspaceTarget>>,
    /// Turns the prober's cumulative counts into metric deltas; `None` when another
    /// source (the kernel) exports the probe metrics.
    metrics: Option<Mutex<aggregator::Aggregator>>,
}

impl UserspaceProbe {
    /// The probe source of userspace mode (exports the probe metrics).
    pub fn new(prober: Arc<Prober>) -> Arc<Self> {
        Arc::new(UserspaceProbe {
            prober,
            targets: Mutex::default(),
            latencies: Mutex::default(),
            metrics: Some(Mutex::new(aggregator::Aggregator::new())),
        })
    }

    /// The fallback inside [`KernelProbe`](super::KernelProbe): the kernel counts the same connects, so this
    /// one exports no metrics.
    pub fn without_metrics(prober: Arc<Prober>) -> Arc<Self> {
        Arc::new(UserspaceProbe {
            prober,
            targets: Mutex::default(),
            latencies: Mutex::default(),
            metrics: None,
        })
    }

    /// Gives the prober the targets of every peer (what the guard permits).
    pub(super) fn apply_targets(&self, targets: &BTreeMap<String, ProbeTargets>) {
        let all: Vec<SocketAddr> = targets
            .values()
            .flat_map(|t| t.hbone.iter().chain(t.xds.iter()).copied())
            .collect();
        if let Err(err) = self.prober.set_targets(all.clone()) {
            // Probe what the guard permits rather than nothing.
            if let crate::probe::prober::ProberError::TargetRefused(refused) = &err {
                let permitted: Vec<SocketAddr> =
                    all.into_iter().filter(|a| !refused.contains(a)).collect();
                if let Err(err) = self.prober.set_targets(permitted) {
                    tracing::warn!(%err, "probe targets not applied");
                }
            } else {
                tracing::warn!(%err, "probe targets not applied");
            }
        }
        *lock(&self.targets) = targets.clone();
    }

    /// Exports what the prober's connects did since the previous call.
    fn export_metrics(&self, targets: &BTreeMap<String, ProbeTargets>) {
        let Some(aggregator) = &self.metrics else {
            return;
        };
        let report = lock(aggregator).update_from_counts(
            self.prober.counts(),
            crate::probe::loader::MapHealth::default(),
            std::time::Instant::now(),
        );
        let index: HashMap<IpAddr, String> = targets
            .iter()
            .flat_map(|(peer, t)| {
                t.hbone
                    .iter()
                    .chain(t.xds.iter())
                    .map(move |a| (a.ip(), peer.clone()))
            })
            .collect();
        crate::probe::metrics::record_deltas(&crate::probe::attribution::attribute(
            &report, &index,
        ));
    }

    fn verdict(
        &self,
        targets: &[SocketAddr],
        stats: &BTreeMap<SocketAddr, crate::probe::prober::TargetStats>,
    ) -> Option<PortVerdict> {
        let lasts: Vec<(SocketAddr, &ProbeOutcome)> = targets
            .iter()
            .filter_map(|t| stats.get(t).and_then(|s| s.last.as_ref()).map(|o| (*t, o)))
            .collect();
        let pick = |want: fn(&ProbeOutcome) -> bool, r: Reachability| {
            lasts
                .iter()
                .find(|(_, o)| want(o))
                .map(|(t, _)| PortVerdict {
                    reachability: r,
                    target: *t,
                })
        };
        pick(
            |o| matches!(o, ProbeOutcome::Established { .. }),
            Reachability::Reachable,
        )
        .or_else(|| {
            pick(
                |o| matches!(o, ProbeOutcome::TimedOut | ProbeOutcome::Aborted),
                Reachability::TimedOut,
            )
        })
        .or_else(|| {
            pick(
                |o| matches!(o, ProbeOutcome::Refused),
                Reachability::Refused,
            )
        })
        .or_else(|| pick(|_| true, Reachability::Unreachable))
    }
}

impl ProbeSource for UserspaceProbe {
    fn mode(&self) -> &'static str {
        "userspace"
    }

    fn set_targets(&self, targets: &BTreeMap<String, ProbeTargets>) {
        self.apply_targets(targets);
        self.export_metrics(targets);
    }

    fn observe(&self, peer: &str) -> ProbeObservation {
        let targets = lock(&self.targets).get(peer).cloned().unwrap_or_default();
        let stats = self.prober.stats();
        let mut out = ProbeObservation {
            hbone: self.verdict(&targets.hbone, &stats),
            xds: self.verdict(&targets.xds, &stats),
            stats: ProbeStats {
                mode: self.mode().to_string(),
                ..ProbeStats::default()
            },
        };
        let mut latencies = lock(&self.latencies);
        let mut hist = [0u64; peerd_ebpf::LATENCY_BUCKETS];
        for t in &targets.hbone {
            let Some(s) = stats.get(t) else { continue };
            out.stats.attempts += s.counts.attempts;
            out.stats.established += s.counts.established;
            out.stats.refused += s.counts.refused;
            out.stats.timeouts += s.counts.timed_out;
            out.stats.aborted += s.counts.aborted;
            let entry = latencies.entry(*t).or_default();
            // The prober keeps only the last latency: record it once per new attempt.
            if s.counts.attempts > entry.seen_attempts {
                entry.seen_attempts = s.counts.attempts;
                if let Some(ProbeOutcome::Established { latency }) = &s.last {
                    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                    entry.hist[latency_bucket(us)] += 1;
                }
            }
            for (sum, n) in hist.iter_mut().zip(entry.hist.iter()) {
                *sum += n;
            }
        }
        out.stats.p50_us = aggregator::percentile_us(&hist, 0.50);
        out.stats.p99_us = aggregator::percentile_us(&hist, 0.99);
        out
    }
}
