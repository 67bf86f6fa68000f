//! Active prober: plain TCP connects to each target (peers' 15008/15012) on an interval,
//! so there is a signal without traffic; the eBPF programs count these connects too.
//!
//! Owns: the target list, the schedule (interval + random jitter), per-connect timeout,
//! the off switch, per-target userspace outcomes (the only signal in userspace mode), and
//! the target guard. Must never connect to a target the guard refuses: in sandbox/test
//! mode only 127.0.0.0/8, ::1, or explicitly allow-listed test-namespace addresses.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerd_ebpf::DestKey;
use rand::Rng;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::aggregator::ConnectCounts;

/// Which destinations the prober may connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetGuard {
    /// Production: any address.
    Unrestricted,
    /// Sandbox and tests: loopback (127.0.0.0/8, ::1) plus these exact addresses (e.g.
    /// addresses inside a network namespace the test created).
    LoopbackOr { allow: Vec<IpAddr> },
}

impl TargetGuard {
    /// The sandbox/test guard with no extra addresses.
    pub fn loopback_only() -> Self {
        TargetGuard::LoopbackOr { allow: Vec::new() }
    }

    pub fn permits(&self, target: SocketAddr) -> bool {
        match self {
            TargetGuard::Unrestricted => true,
            TargetGuard::LoopbackOr { allow } => {
                let ip = canonical(target.ip());
                ip.is_loopback() || allow.iter().any(|a| canonical(*a) == ip)
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProberError {
    #[error(
        "probe targets refused by the sandbox guard (only loopback or allow-listed test addresses): {0:?}"
    )]
    TargetRefused(Vec<SocketAddr>),
    #[error("invalid prober configuration: {0}")]
    Config(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProberConfig {
    /// Off switch: when false, `spawn` does nothing and `probe_once` probes nothing.
    pub enabled: bool,
    pub interval: Duration,
    /// Each round starts after `interval + uniform(0, jitter)`.
    pub jitter: Duration,
    /// Per-connect timeout; a connect still pending is closed (the kernel counts it as aborted).
    pub timeout: Duration,
    pub guard: TargetGuard,
}

impl Default for ProberConfig {
    fn default() -> Self {
        ProberConfig {
            enabled: true,
            interval: Duration::from_secs(10),
            jitter: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            guard: TargetGuard::loopback_only(),
        }
    }
}

/// The userspace view of one connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    Established {
        latency: Duration,
    },
    Refused,
    /// The kernel gave up (ETIMEDOUT).
    TimedOut,
    /// Our own timeout fired first (the kernel sees an abort in SYN_SENT).
    Aborted,
    Unreachable,
    Other(String),
}

impl ProbeOutcome {
    fn from_error(err: &io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => ProbeOutcome::Refused,
            io::ErrorKind::TimedOut => ProbeOutcome::TimedOut,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                ProbeOutcome::Unreachable
            }
            _ => ProbeOutcome::Other(err.to_string()),
        }
    }
}

/// Per-target userspace counters, in the same shape as the kernel's (no SYN
/// retransmits: userspace cannot see them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetStats {
    pub counts: ConnectCounts,
    pub last: Option<ProbeOutcome>,
}

impl TargetStats {
    fn record(&mut self, outcome: &ProbeOutcome) {
        let counts = &mut self.counts;
        counts.attempts += 1;
        match outcome {
            ProbeOutcome::Established { latency } => counts.record_established(*latency),
            ProbeOutcome::Refused => counts.refused += 1,
            ProbeOutcome::TimedOut => counts.timed_out += 1,
            ProbeOutcome::Aborted => counts.aborted += 1,
            ProbeOutcome::Unreachable => counts.unreachable += 1,
            ProbeOutcome::Other(_) => counts.other_errors += 1,
        }
        self.last = Some(outcome.clone());
    }
}

#[derive(Debug)]
pub struct Prober {
    config: ProberConfig,
    targets: Mutex<Vec<SocketAddr>>,
    stats: Mutex<BTreeMap<SocketAddr, TargetStats>>,
}

impl Prober {
    pub fn new(config: ProberConfig) -> Result<Arc<Self>, ProberError> {
        if config.interval.is_zero() {
            return Err(ProberError::Config("interval must be positive".into()));
        }
        if config.timeout.is_zero() {
            return Err(ProberError::Config("timeout must be positive".into()));
        }
        Ok(Arc::new(Prober {
            config,
            targets: Mutex::new(Vec::new()),
            stats: Mutex::new(BTreeMap::new()),
        }))
    }

    /// Replaces the targets. All-or-nothing: if the guard refuses any target, the previous
    /// list is kept and the refused targets are returned.
    pub fn set_targets(&self, targets: Vec<SocketAddr>) -> Result<(), ProberError> {
        let refused: Vec<SocketAddr> = targets
            .iter()
            .copied()
            .filter(|t| !self.config.guard.permits(*t))
            .collect();
        if !refused.is_empty() {
            tracing::warn!(?refused, "probe targets refused by guard");
            return Err(ProberError::TargetRefused(refused));
        }
        let mut sorted = targets;
        sorted.sort();
        sorted.dedup();
        *lock(&self.targets) = sorted;
        Ok(())
    }

    pub fn targets(&self) -> Vec<SocketAddr> {
        lock(&self.targets).clone()
    }

    /// Userspace outcome counters per target.
    pub fn stats(&self) -> BTreeMap<SocketAddr, TargetStats> {
        lock(&self.stats).clone()
    }

    /// Cumulative counts per target, keyed like the kernel map, for
    /// [`Aggregator::update_from_counts`](super::aggregator::Aggregator::update_from_counts)
    /// (the userspace-mode report).
    pub fn counts(&self) -> Vec<(DestKey, ConnectCounts)> {
        lock(&self.stats)
            .iter()
            .map(|(target, stats)| (DestKey::new(target.ip(), target.port()), stats.counts))
            .collect()
    }

    /// One connect to every target, concurrently; returns each outcome.
    pub async fn probe_once(&self) -> Vec<(SocketAddr, ProbeOutcome)> {
        if !self.config.enabled {
            return Vec::new();
        }
        let targets = self.targets();
        let connects = targets.iter().map(|target| self.connect(*target));
        let outcomes = futures::future::join_all(connects).await;
        let results: Vec<(SocketAddr, ProbeOutcome)> = targets.into_iter().zip(outcomes).collect();
        let mut stats = lock(&self.stats);
        for (target, outcome) in &results {
            stats.entry(*target).or_default().record(outcome);
        }
        results
    }

    async fn connect(&self, target: SocketAddr) -> ProbeOutcome {
        // Re-checked here so no code path can bypass the guard.
        if !self.config.guard.permits(target) {
            return ProbeOutcome::Other("refused by target guard".into());
        }
        let started = Instant::now();
        match tokio::time::timeout(self.config.timeout, TcpStream::connect(target)).await {
            Ok(Ok(stream)) => {
                drop(stream);
                ProbeOutcome::Established {
                    latency: started.elapsed(),
                }
            }
            Ok(Err(err)) => ProbeOutcome::from_error(&err),
            Err(_elapsed) => ProbeOutcome::Aborted,
        }
    }

    fn next_delay(&self) -> Duration {
        let jitter_ms = self.config.jitter.as_millis().min(u128::from(u64::MAX)) as u64;
        let extra = if jitter_ms == 0 {
            0
        } else {
            rand::rng().random_range(0..=jitter_ms)
        };
        self.config.interval + Duration::from_millis(extra)
    }

    /// Probes forever on the schedule; `None` when the prober is switched off.
    pub fn spawn(self: &Arc<Self>) -> Option<JoinHandle<()>> {
        if !self.config.enabled {
            tracing::info!("active prober disabled");
            return None;
        }
        let prober = Arc::clone(self);
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(prober.next_delay()).await;
                prober.probe_once().await;
            }
        }))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(guard: TargetGuard) -> ProberConfig {
        ProberConfig {
            enabled: true,
            interval: Duration::from_millis(50),
            jitter: Duration::from_millis(10),
            timeout: Duration::from_secs(10),
            guard,
        }
    }

    #[test]
    fn guard_allows_loopback_and_allow_list_only() {
        let guard = TargetGuard::LoopbackOr {
            allow: vec!["10.200.1.2".parse().unwrap()],
        };
        assert!(guard.permits("127.0.0.1:15008".parse().unwrap()));
        assert!(guard.permits("127.3.1.7:15008".parse().unwrap()));
        assert!(guard.permits("[::1]:15012".parse().unwrap()));
        assert!(guard.permits("[::ffff:127.0.0.1]:15012".parse().unwrap()));
        assert!(guard.permits("10.200.1.2:15008".parse().unwrap()));
        assert!(!guard.permits("10.200.1.3:15008".parse().unwrap()));
        assert!(!guard.permits("8.8.8.8:443".parse().unwrap()));
        assert!(!guard.permits("[::ffff:8.8.8.8]:443".parse().unwrap()));
        assert!(!guard.permits("[2001:db8::1]:15008".parse().unwrap()));
        assert!(TargetGuard::Unrestricted.permits("192.0.2.1:15008".parse().unwrap()));
    }

    #[test]
    fn refused_targets_keep_previous_list() {
        let prober = Prober::new(config(TargetGuard::loopback_only())).unwrap();
        prober
            .set_targets(vec!["127.0.0.1:1".parse().unwrap()])
            .unwrap();
        let err = prober
            .set_targets(vec![
                "127.0.0.2:2".parse().unwrap(),
                "192.0.2.1:15008".parse().unwrap(),
            ])
            .unwrap_err();
        assert_eq!(
            err,
            ProberError::TargetRefused(vec!["192.0.2.1:15008".parse().unwrap()])
        );
        assert!(err.to_string().contains("192.0.2.1:15008"));
        assert_eq!(
            prober.targets(),
            vec!["127.0.0.1:1".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn zero_interval_or_timeout_is_rejected() {
        let mut bad = config(TargetGuard::loopback_only());
        bad.interval = Duration::ZERO;
        assert!(matches!(Prober::new(bad), Err(ProberError::Config(_))));
        let mut bad = config(TargetGuard::loopback_only());
        bad.timeout = Duration::ZERO;
        assert!(matches!(Prober::new(bad), Err(ProberError::Config(_))));
    }

    #[tokio::test]
    async fn probes_loopback_established_and_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        // A port that was just free: bind, read the port, close.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let prober = Prober::new(config(TargetGuard::loopback_only())).unwrap();
        prober.set_targets(vec![open, closed]).unwrap();
        let outcomes: BTreeMap<_, _> = prober.probe_once().await.into_iter().collect();
        assert!(
            matches!(outcomes[&open], ProbeOutcome::Established { .. }),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[&closed], ProbeOutcome::Refused);
        let stats = prober.stats();
        assert_eq!(stats[&open].counts.established, 1);
        assert_eq!(stats[&open].counts.latency_hist.iter().sum::<u64>(), 1);
        assert_eq!(stats[&closed].counts.refused, 1);
        // The same report shape as eBPF mode.
        let mut aggregator = crate::probe::aggregator::Aggregator::new();
        let report =
            aggregator.update_from_counts(prober.counts(), Default::default(), Instant::now());
        assert_eq!(report.get(open).unwrap().total.established, 1);
        assert!(report.get(open).unwrap().p50_us.is_some());
        assert_eq!(report.get(closed).unwrap().total.refused, 1);
        drop(listener);
    }

    #[tokio::test]
    async fn disabled_prober_does_nothing() {
        let mut cfg = config(TargetGuard::loopback_only());
        cfg.enabled = false;
        let prober = Prober::new(cfg).unwrap();
        prober
            .set_targets(vec!["127.0.0.1:9".parse().unwrap()])
            .unwrap();
        assert!(prober.probe_once().await.is_empty());
        assert!(prober.spawn().is_none());
        assert!(prober.stats().is_empty());
    }

    #[tokio::test]
    async fn spawned_prober_runs_on_its_schedule() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let prober = Prober::new(config(TargetGuard::loopback_only())).unwrap();
        prober.set_targets(vec![open]).unwrap();
        let task = prober.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while prober
            .stats()
            .get(&open)
            .map_or(0, |s| s.counts.established)
            < 2
        {
            assert!(Instant::now() < deadline, "prober never ran twice");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        assert!(prober.stats()[&open].counts.established >= 2);
    }
}
