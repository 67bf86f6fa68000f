//! Turns raw kernel map snapshots into per-destination cumulative counters, deltas, rates
//! and latency percentiles.
//!
//! Owns: the previous snapshot (to compute deltas), counter-reset handling (an LRU
//! eviction or a reload restarts an entry from zero), percentile estimation from the
//! log2 histogram, and the periodic reader task. Must never touch the kernel except
//! through `ProbeHandle::snapshot`; attribution to peers lives in `attribution`. Time
//! comes from `Instant` (monotonic), so wall-clock jumps do not distort rates; the kernel
//! side uses `bpf_ktime_get_ns` (monotonic) for latency.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerd_ebpf::{DestKey, DestStats, LATENCY_BUCKETS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::loader::{KernelSnapshot, MapHealth, ProbeHandle};

/// Connect counters (cumulative or over an interval) with their latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectCounts {
    pub attempts: u64,
    pub established: u64,
    pub refused: u64,
    pub timed_out: u64,
    pub unreachable: u64,
    pub aborted: u64,
    pub other_errors: u64,
    pub syn_retransmits: u64,
    pub latency_sum_us: u64,
    pub latency_hist: [u64; LATENCY_BUCKETS],
}

impl Default for ConnectCounts {
    fn default() -> Self {
        ConnectCounts::ZERO
    }
}

impl From<&DestStats> for ConnectCounts {
    fn from(s: &DestStats) -> Self {
        ConnectCounts {
            attempts: s.attempts,
            established: s.established,
            refused: s.refused,
            timed_out: s.timed_out,
            unreachable: s.unreachable,
            aborted: s.aborted,
            other_errors: s.other_errors,
            syn_retransmits: s.syn_retransmits,
            latency_sum_us: s.latency_sum_us,
            latency_hist: s.latency_hist,
        }
    }
}

impl ConnectCounts {
    pub const ZERO: ConnectCounts = ConnectCounts {
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

    /// Connects that ended without being established.
    pub fn failures(&self) -> u64 {
        self.refused + self.timed_out + self.unreachable + self.aborted + self.other_errors
    }

    /// `self - earlier`, or `self` when any counter went backwards (the kernel entry was
    /// evicted and recreated, or the programs were reloaded).
    pub fn since(&self, earlier: &ConnectCounts) -> ConnectCounts {
        let scalars_back = self.attempts < earlier.attempts
            || self.established < earlier.established
            || self.refused < earlier.refused
            || self.timed_out < earlier.timed_out
            || self.unreachable < earlier.unreachable
            || self.aborted < earlier.aborted
            || self.other_errors < earlier.other_errors
            || self.syn_retransmits < earlier.syn_retransmits
            || self.latency_sum_us < earlier.latency_sum_us;
        let hist_back = self
            .latency_hist
            .iter()
            .zip(earlier.latency_hist.iter())
            .any(|(a, b)| a < b);
        if scalars_back || hist_back {
            return *self;
        }
        let mut latency_hist = [0u64; LATENCY_BUCKETS];
        for (slot, (now, before)) in latency_hist
            .iter_mut()
            .zip(self.latency_hist.iter().zip(earlier.latency_hist.iter()))
        {
            *slot = now - before;
        }
        ConnectCounts {
            attempts: self.attempts - earlier.attempts,
            established: self.established - earlier.established,
            refused: self.refused - earlier.refused,
            timed_out: self.timed_out - earlier.timed_out,
            unreachable: self.unreachable - earlier.unreachable,
            aborted: self.aborted - earlier.aborted,
            other_errors: self.other_errors - earlier.other_errors,
            syn_retransmits: self.syn_retransmits - earlier.syn_retransmits,
            latency_sum_us: self.latency_sum_us - earlier.latency_sum_us,
            latency_hist,
        }
    }

    /// Records one established connect that took `latency`.
    pub fn record_established(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.established += 1;
        self.latency_sum_us = self.latency_sum_us.saturating_add(us);
        self.latency_hist[latency_bucket(us)] += 1;
    }

    /// Adds `other` into `self` (for per-peer sums).
    pub fn add(&mut self, other: &ConnectCounts) {
        self.attempts += other.attempts;
        self.established += other.established;
        self.refused += other.refused;
        self.timed_out += other.timed_out;
        self.unreachable += other.unreachable;
        self.aborted += other.aborted;
        self.other_errors += other.other_errors;
        self.syn_retransmits += other.syn_retransmits;
        self.latency_sum_us += other.latency_sum_us;
        for (slot, value) in self.latency_hist.iter_mut().zip(other.latency_hist.iter()) {
            *slot += value;
        }
    }

    /// Latency percentile in µs (`q` in 0..=1) from the log2 histogram, interpolating
    /// linearly inside the bucket; `None` without established connects.
    pub fn latency_percentile_us(&self, q: f64) -> Option<f64> {
        percentile_us(&self.latency_hist, q)
    }
}

/// The log2 bucket of a latency in µs, exactly as the kernel programs compute it.
pub fn latency_bucket(us: u64) -> usize {
    if us == 0 {
        0
    } else {
        ((u64::BITS - us.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1)
    }
}

/// Bucket bounds in µs: bucket 0 is [0, 1), bucket b is [2^(b-1), 2^b).
fn bucket_bounds(bucket: usize) -> (f64, f64) {
    if bucket == 0 {
        (0.0, 1.0)
    } else {
        let lower = (1u64 << (bucket - 1)) as f64;
        (lower, lower * 2.0)
    }
}

/// Percentile estimate from a log2 µs histogram.
pub fn percentile_us(hist: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    // Rank of the wanted sample, 1-based, at least the first sample.
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (bucket, &count) in hist.iter().enumerate() {
        if count == 0 {
            continue;
        }
        if seen + count >= rank {
            let (lower, upper) = bucket_bounds(bucket);
            let within = (rank - seen) as f64 / count as f64;
            return Some(lower + within * (upper - lower));
        }
        seen += count;
    }
    None
}

/// Rates per second over the last interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConnectRates {
    pub attempts_per_s: f64,
    pub established_per_s: f64,
    pub failures_per_s: f64,
    pub syn_retransmits_per_s: f64,
}

impl ConnectRates {
    fn over(delta: &ConnectCounts, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64();
        if secs <= 0.0 {
            return ConnectRates::default();
        }
        ConnectRates {
            attempts_per_s: delta.attempts as f64 / secs,
            established_per_s: delta.established as f64 / secs,
            failures_per_s: delta.failures() as f64 / secs,
            syn_retransmits_per_s: delta.syn_retransmits as f64 / secs,
        }
    }
}

/// Measurements for one destination.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationReport {
    pub destination: SocketAddr,
    pub total: ConnectCounts,
    /// Since the previous report (the whole total for the first one).
    pub delta: ConnectCounts,
    pub rates: ConnectRates,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

/// One aggregation round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeReport {
    /// Length of the interval the deltas cover (zero for the first report).
    pub interval: Duration,
    pub destinations: BTreeMap<SocketAddr, DestinationReport>,
    pub health: MapHealthReport,
}

/// Map health plus what changed since the previous report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapHealthReport {
    pub current: MapHealth,
    pub evicted_total: u64,
    pub insert_failures_total: u64,
    /// Probe runs the kernel skipped since the programs were loaded.
    pub skipped_total: u64,
}

impl ProbeReport {
    pub fn get(&self, destination: SocketAddr) -> Option<&DestinationReport> {
        self.destinations.get(&destination)
    }
}

/// The addresses reports carry: `None`, every address the kernel map holds.
pub type Scope = Option<Arc<HashSet<IpAddr>>>;

/// Sets which addresses the reports of an [`AggregatorTask`] carry, from the next map
/// read on. Whoever reads the reports sets it to what it can use: the kernel map holds up
/// to 4,096 destinations, most of them addresses nothing attributes any more (pods that
/// churned away), and a report of every one is ~1 KB each, rebuilt on every read.
#[derive(Clone, Debug)]
pub struct ReportScope(Arc<watch::Sender<Scope>>);

impl ReportScope {
    /// A scope and the receiver an aggregator reads it from.
    pub fn channel() -> (ReportScope, watch::Receiver<Scope>) {
        let (tx, rx) = watch::channel(None);
        (ReportScope(Arc::new(tx)), rx)
    }

    pub fn set(&self, addresses: HashSet<IpAddr>) {
        self.0.send_replace(Some(Arc::new(addresses)));
    }
}

/// Keeps the previous snapshot to compute deltas.
#[derive(Debug, Default)]
pub struct Aggregator {
    previous: HashMap<DestKey, ConnectCounts>,
    previous_at: Option<Instant>,
    scope: Scope,
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits the next reports to `scope` (`None`: every address). An address that leaves
    /// the scope is forgotten; when it comes back, its first delta is its whole total.
    pub fn set_scope(&mut self, scope: Scope) {
        self.scope = scope;
    }

    /// Folds one kernel snapshot taken at `now` into a report.
    pub fn update(&mut self, snapshot: &KernelSnapshot, now: Instant) -> ProbeReport {
        let entries = snapshot
            .destinations
            .iter()
            .map(|(key, stats)| (*key, ConnectCounts::from(stats)));
        self.update_from_counts(entries, snapshot.health, now)
    }

    /// Folds cumulative per-destination counts from any source (the kernel maps, or the
    /// active prober in userspace mode) into a report of the same shape.
    pub fn update_from_counts(
        &mut self,
        entries: impl IntoIterator<Item = (DestKey, ConnectCounts)>,
        health: MapHealth,
        now: Instant,
    ) -> ProbeReport {
        let interval = self
            .previous_at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        let mut destinations = BTreeMap::new();
        let mut next = HashMap::new();
        for (key, total) in entries {
            // An IPv6 socket connecting to `::ffff:a.b.c.d` reaches the IPv4 destination:
            // report (and attribute) both kinds of key under the IPv4 address.
            let address = key.addr().to_canonical();
            if let Some(scope) = &self.scope
                && !scope.contains(&address)
            {
                continue;
            }
            let delta = match self.previous.get(&key) {
                Some(before) => total.since(before),
                None => total,
            };
            let destination = SocketAddr::new(address, key.dport);
            let entry = destinations
                .entry(destination)
                .or_insert_with(|| DestinationReport {
                    destination,
                    total: ConnectCounts::ZERO,
                    delta: ConnectCounts::ZERO,
                    rates: ConnectRates::default(),
                    p50_us: None,
                    p99_us: None,
                });
            entry.total.add(&total);
            entry.delta.add(&delta);
            next.insert(key, total);
        }
        for report in destinations.values_mut() {
            report.rates = ConnectRates::over(&report.delta, interval);
            report.p50_us = report.total.latency_percentile_us(0.50);
            report.p99_us = report.total.latency_percentile_us(0.99);
        }
        self.previous = next;
        self.previous_at = Some(now);
        ProbeReport {
            interval,
            destinations,
            health: MapHealthReport {
                current: health,
                evicted_total: health.dest_evicted(),
                insert_failures_total: health.dest_insert_failed + health.start_insert_failed,
                skipped_total: health.skipped_runs,
            },
        }
    }
}

/// Reads the maps every `interval` and publishes reports until the handle is dropped.
/// Dropping the returned [`AggregatorTask`] stops the task; dropping the last handle
/// reference detaches the programs.
pub fn spawn(handle: Arc<Mutex<ProbeHandle>>, interval: Duration) -> AggregatorTask {
    let (tx, rx) = watch::channel(Arc::new(ProbeReport::default()));
    let (scope, scope_rx) = ReportScope::channel();
    let task = tokio::spawn(async move {
        let mut aggregator = Aggregator::new();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            // Thousands of map syscalls: keep them off the async workers.
            let reader = Arc::clone(&handle);
            let snapshot = tokio::task::spawn_blocking(move || match reader.lock() {
                Ok(guard) => guard.snapshot(),
                Err(poisoned) => poisoned.into_inner().snapshot(),
            })
            .await;
            let snapshot = match snapshot {
                Ok(result) => result,
                Err(join_error) => {
                    tracing::warn!(%join_error, "eBPF map reader task failed");
                    continue;
                }
            };
            match snapshot {
                Ok(snapshot) => {
                    aggregator.set_scope(scope_rx.borrow().clone());
                    let report = aggregator.update(&snapshot, Instant::now());
                    if tx.send(Arc::new(report)).is_err() {
                        return;
                    }
                }
                Err(err) => tracing::warn!(%err, "reading eBPF maps failed"),
            }
        }
    });
    AggregatorTask {
        task,
        reports: rx,
        scope,
    }
}

/// The periodic reader; aborted on drop.
#[derive(Debug)]
pub struct AggregatorTask {
    task: JoinHandle<()>,
    reports: watch::Receiver<Arc<ProbeReport>>,
    scope: ReportScope,
}

impl AggregatorTask {
    /// Where the reports' scope is set (every address until it is).
    pub fn scope(&self) -> ReportScope {
        self.scope.clone()
    }

    /// The latest report (a default, empty report before the first read).
    pub fn subscribe(&self) -> watch::Receiver<Arc<ProbeReport>> {
        self.reports.clone()
    }
}

impl Drop for AggregatorTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(attempts: u64, established: u64, hist: &[(usize, u64)]) -> DestStats {
        let mut s = DestStats::ZERO;
        s.attempts = attempts;
        s.established = established;
        for &(bucket, count) in hist {
            s.latency_hist[bucket] = count;
        }
        s
    }

    fn snapshot(entries: Vec<(DestKey, DestStats)>) -> KernelSnapshot {
        let live = entries.len() as u64;
        KernelSnapshot {
            destinations: entries,
            health: MapHealth {
                dest_inserted: live,
                live_destinations: live,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_scope_limits_the_report_and_a_returning_address_starts_whole() {
        let peer = DestKey::new("127.0.0.1".parse().unwrap(), 15008);
        let gone = DestKey::new("127.0.0.2".parse().unwrap(), 15008);
        let mut agg = Aggregator::new();
        let t0 = Instant::now();
        let both = |a, b| snapshot(vec![(peer, stats(a, a, &[])), (gone, stats(b, b, &[]))]);
        let all = agg.update(&both(1, 5), t0);
        assert_eq!(all.destinations.len(), 2, "no scope: every address");
        let only_peer: HashSet<IpAddr> = ["127.0.0.1".parse().unwrap()].into();
        agg.set_scope(Some(Arc::new(only_peer)));
        let scoped = agg.update(&both(2, 6), t0 + Duration::from_secs(1));
        let kept: Vec<SocketAddr> = scoped.destinations.keys().copied().collect();
        assert_eq!(kept, ["127.0.0.1:15008".parse::<SocketAddr>().unwrap()]);
        assert_eq!(scoped.destinations[&kept[0]].delta.attempts, 1);
        assert_eq!(
            agg.previous.len(),
            1,
            "nothing kept for addresses out of scope"
        );
        // Back in scope: its first delta is its whole total.
        agg.set_scope(None);
        let back = agg.update(&both(3, 7), t0 + Duration::from_secs(2));
        let gone_at: SocketAddr = "127.0.0.2:15008".parse().unwrap();
        assert_eq!(back.destinations[&gone_at].delta.attempts, 7);
    }

    #[test]
    fn deltas_and_rates_over_the_interval() {
        let key = DestKey::new("127.0.0.1".parse().unwrap(), 15008);
        let dest: SocketAddr = "127.0.0.1:15008".parse().unwrap();
        let mut agg = Aggregator::new();
        let t0 = Instant::now();
        let first = agg.update(&snapshot(vec![(key, stats(10, 8, &[(5, 8)]))]), t0);
        assert_eq!(first.get(dest).unwrap().delta.attempts, 10);
        assert_eq!(first.interval, Duration::ZERO);
        let second = agg.update(
            &snapshot(vec![(key, stats(30, 28, &[(5, 28)]))]),
            t0 + Duration::from_secs(2),
        );
        let report = second.get(dest).unwrap();
        assert_eq!(report.total.attempts, 30);
        assert_eq!(report.delta.attempts, 20);
        assert_eq!(report.delta.established, 20);
        assert_eq!(report.delta.latency_hist[5], 20);
        assert!((report.rates.attempts_per_s - 10.0).abs() < 1e-9);
    }

    #[test]
    fn counter_going_backwards_is_a_reset_not_a_huge_delta() {
        let key = DestKey::new("fd00::2".parse().unwrap(), 15012);
        let dest: SocketAddr = "[fd00::2]:15012".parse().unwrap();
        let mut agg = Aggregator::new();
        let t0 = Instant::now();
        agg.update(&snapshot(vec![(key, stats(100, 100, &[]))]), t0);
        let after = agg.update(
            &snapshot(vec![(key, stats(3, 2, &[]))]),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(after.get(dest).unwrap().delta.attempts, 3);
        assert_eq!(after.get(dest).unwrap().delta.established, 2);
    }

    #[test]
    fn clock_going_backwards_gives_zero_rates_not_a_panic() {
        let key = DestKey::new("127.0.0.1".parse().unwrap(), 15008);
        let dest: SocketAddr = "127.0.0.1:15008".parse().unwrap();
        let mut agg = Aggregator::new();
        let later = Instant::now() + Duration::from_secs(10);
        agg.update(&snapshot(vec![(key, stats(1, 1, &[]))]), later);
        let report = agg.update(
            &snapshot(vec![(key, stats(5, 5, &[]))]),
            later - Duration::from_secs(5),
        );
        assert_eq!(report.interval, Duration::ZERO);
        assert_eq!(report.get(dest).unwrap().delta.attempts, 4);
        assert_eq!(report.get(dest).unwrap().rates, ConnectRates::default());
    }

    #[test]
    fn ipv4_mapped_ipv6_keys_merge_into_the_ipv4_destination() {
        let v4 = DestKey::new("127.0.0.1".parse().unwrap(), 15008);
        let mapped = DestKey::new("::ffff:127.0.0.1".parse().unwrap(), 15008);
        assert_ne!(v4, mapped, "the kernel keys differ by family");
        let mut agg = Aggregator::new();
        let report = agg.update(
            &snapshot(vec![
                (v4, stats(5, 5, &[(4, 5)])),
                (mapped, stats(2, 2, &[(6, 2)])),
            ]),
            Instant::now(),
        );
        assert_eq!(report.destinations.len(), 1);
        let merged = report.get("127.0.0.1:15008".parse().unwrap()).unwrap();
        assert_eq!((merged.total.attempts, merged.total.established), (7, 7));
        assert_eq!(
            merged.total.latency_hist[4] + merged.total.latency_hist[6],
            7
        );
        assert!(merged.p99_us.unwrap() >= 32.0);
    }

    #[test]
    fn latency_buckets_match_the_kernel_definition() {
        // bucket 0: < 1 µs; bucket b: [2^(b-1), 2^b) µs; the last bucket is open.
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 1);
        assert_eq!(latency_bucket(2), 2);
        assert_eq!(latency_bucket(3), 2);
        assert_eq!(latency_bucket(4), 3);
        assert_eq!(latency_bucket(1023), 10);
        assert_eq!(latency_bucket(1024), 11);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
        for b in 1..LATENCY_BUCKETS - 1 {
            let (lower, upper) = bucket_bounds(b);
            assert_eq!(latency_bucket(lower as u64), b);
            assert_eq!(latency_bucket(upper as u64 - 1), b);
        }
    }

    #[test]
    fn evicted_destination_disappears_and_eviction_is_counted() {
        let a = DestKey::new("10.0.0.1".parse().unwrap(), 15008);
        let mut agg = Aggregator::new();
        let snap = KernelSnapshot {
            destinations: vec![(a, stats(1, 1, &[]))],
            health: MapHealth {
                dest_inserted: 5,
                live_destinations: 1,
                ..Default::default()
            },
        };
        let report = agg.update(&snap, Instant::now());
        assert_eq!(report.destinations.len(), 1);
        assert_eq!(report.health.evicted_total, 4);
    }

    #[test]
    fn percentiles_interpolate_inside_log2_buckets() {
        // 50 samples in [64,128) µs, 50 in [1024,2048) µs.
        let mut hist = [0u64; LATENCY_BUCKETS];
        hist[7] = 50;
        hist[11] = 50;
        let p50 = percentile_us(&hist, 0.5).unwrap();
        assert!((64.0..=128.0).contains(&p50), "{p50}");
        assert_eq!(p50, 128.0);
        let p99 = percentile_us(&hist, 0.99).unwrap();
        assert!((1024.0..=2048.0).contains(&p99), "{p99}");
        assert_eq!(percentile_us(&[0; LATENCY_BUCKETS], 0.5), None);
        assert_eq!(percentile_us(&hist, 1.5), None);
        let mut zero_bucket = [0u64; LATENCY_BUCKETS];
        zero_bucket[0] = 4;
        assert!(percentile_us(&zero_bucket, 0.5).unwrap() <= 1.0);
    }
}
