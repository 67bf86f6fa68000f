//! The observation inputs of the peer monitor, as small traits with plain-struct answers,
//! and their real implementations:
//! - [`UpstreamSource`]: the xDS client of each peer (connected, classified last failure)
//!   — real: [`AdsClients`] over `AdsClient::stats()` / `failure_handle()`;
//! - [`ImportSource`]: the store's sync flags and held resources of the peer's origin,
//!   and the peer's pod IPs for flat probing — real: [`Store`];
//! - [`AckSource`]: whether local downstreams (ztunnel) ACKed the merged-view version that
//!   carries the peer's latest change, with the NACK text — real: [`DownstreamAcks`] over
//!   `Subscribers`, told the versions by a [`PeerVersions`] (federation records them in
//!   [`RecordedPeerVersions`]);
//! - [`ProbeSource`]: HBONE 15008 (and xDS 15012) reachability — real: [`UserspaceProbe`]
//!   (the active prober's own connects) and [`KernelProbe`] (the eBPF aggregator's
//!   per-destination counters for the gateway address or the flat pod IPs).
//!
//! Owns: reading those sources and condensing them per peer. Must never decide
//! conditions (that is `monitor` + `hysteresis`), never write to any source, and never
//! probe anything itself (the prober owns connects and its target guard).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::watch;

use crate::probe::aggregator::{self, ConnectCounts, ProbeReport};
use crate::probe::prober::{ProbeOutcome, Prober};
use crate::store::Store;
use crate::xds::client::{AdsClient, Failure};
use crate::xds::resource::Summary;
use crate::xds::server::{Subscribers, nacked_names};
use crate::xds::stats::StreamStats;
use crate::xds::types::ResourceType;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------
// Upstream (xDS client to the peer)

/// The state of the xDS client of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamObservation {
    /// `host:port` the client dials.
    pub endpoint: String,
    pub connected: bool,
    /// The last failure, classified (`None` once a session works or before any attempt).
    pub failure: Option<UpstreamFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFailure {
    /// A `gloo.solo.io/PeerConnected` reason (`ConnectTimeout`, `ConnectionRefused`,
    /// `TLSError`, `IdentityMismatch`, `StreamError`).
    pub reason: &'static str,
    pub message: String,
}

impl From<&Failure> for UpstreamFailure {
    fn from(f: &Failure) -> Self {
        UpstreamFailure {
            reason: f.kind.condition_reason(),
            message: f.message.clone(),
        }
    }
}

pub trait UpstreamSource: Send + Sync {
    /// `None`: no client is configured for this peer.
    fn upstream(&self, peer: &str) -> Option<UpstreamObservation>;
}

struct ClientHandle {
    endpoint: String,
    stats: Arc<StreamStats>,
    failure: Arc<Mutex<Option<Failure>>>,
}

/// The running `AdsClient`s, by peer cluster.
#[derive(Default)]
pub struct AdsClients {
    clients: Mutex<HashMap<String, ClientHandle>>,
}

impl AdsClients {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Registers `client` (before spawning it) as the client of `peer`.
    pub fn register(&self, peer: &str, endpoint: &str, client: &AdsClient) {
        lock(&self.clients).insert(
            peer.to_string(),
            ClientHandle {
                endpoint: endpoint.to_string(),
                stats: client.stats(),
                failure: client.failure_handle(),
            },
        );
    }

    pub fn remove(&self, peer: &str) {
        lock(&self.clients).remove(peer);
    }
}

impl UpstreamSource for AdsClients {
    fn upstream(&self, peer: &str) -> Option<UpstreamObservation> {
        let clients = lock(&self.clients);
        let handle = clients.get(peer)?;
        let snapshot = handle.stats.snapshot();
        let failure = lock(&handle.failure).as_ref().map(UpstreamFailure::from);
        Some(UpstreamObservation {
            endpoint: handle.endpoint.clone(),
            connected: snapshot.connected,
            failure,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Imports (the store)

/// Sync state of the peer's origin in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncObservation {
    /// Types that completed their first full response since the stream (re)connected.
    pub synced: Vec<ResourceType>,
    /// Resources held for the peer (kept across disconnects).
    pub held: usize,
}

impl SyncObservation {
    pub fn fully_synced(&self) -> bool {
        ResourceType::ALL.iter().all(|t| self.synced.contains(t))
    }

    pub fn pending(&self) -> Vec<ResourceType> {
        ResourceType::ALL
            .iter()
            .copied()
            .filter(|t| !self.synced.contains(t))
            .collect()
    }
}

pub trait ImportSource: Send + Sync {
    /// `None`: nothing was ever received from this peer.
    fn sync(&self, peer: &str) -> Option<SyncObservation>;
    /// Up to `limit` pod IPs of the peer's workloads (flat peers are probed on those).
    fn workload_ips(&self, peer: &str, limit: usize) -> Vec<IpAddr>;
}

impl ImportSource for Store {
    fn sync(&self, peer: &str) -> Option<SyncObservation> {
        let origin = self.get(peer)?;
        let state = origin.view.snapshot();
        Some(SyncObservation {
            synced: ResourceType::ALL
                .iter()
                .copied()
                .filter(|t| origin.is_synced(*t))
                .collect(),
            held: ResourceType::ALL.iter().map(|t| state.len(*t)).sum(),
        })
    }

    fn workload_ips(&self, peer: &str, limit: usize) -> Vec<IpAddr> {
        let Some(origin) = self.get(peer) else {
            return Vec::new();
        };
        let state = origin.view.snapshot();
        let mut ips = Vec::new();
        for r in state.resources(ResourceType::Address).values() {
            if let Summary::Workload(w) = &r.summary {
                for ip in &w.addresses {
                    if ips.len() >= limit {
                        return ips;
                    }
                    if !ips.contains(ip) {
                        ips.push(*ip);
                    }
                }
            }
        }
        ips
    }
}

// ---------------------------------------------------------------------------------------
// Downstream ACKs

/// Whether local downstreams hold the peer's latest change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckObservation {
    /// Nothing of the peer is served yet, or no downstream is connected.
    NothingToAck { downstreams: usize },
    /// Every downstream processed `version` without a standing NACK.
    Acked { version: u64, downstreams: usize },
    /// `behind` of `downstreams` have not yet processed `version`.
    Waiting {
        version: u64,
        behind: usize,
        downstreams: usize,
    },
    /// A downstream rejected a response touching the peer's resources.
    Rejected { node: String, text: String },
}

pub trait AckSource: Send + Sync {
    fn acks(&self, peer: &str) -> AckObservation;
}

/// Which merged-view version carries a peer's latest change (federation knows).
pub trait PeerVersions: Send + Sync {
    /// `None`: nothing of this peer is in the merged view yet.
    fn latest_version(&self, peer: &str) -> Option<u64>;
    /// Whether merged-view resource `name` came from `peer`; `None` when unknown (a NACK
    /// naming it is then attributed to every peer).
    fn owns(&self, _peer: &str, _name: &str) -> Option<bool> {
        None
    }
}

/// A [`PeerVersions`] that the publisher of the merged view fills in: after publishing
/// version `v` containing changes from `peer`, call `record(peer, v)`.
#[derive(Default)]
pub struct RecordedPeerVersions {
    versions: Mutex<HashMap<String, u64>>,
}

impl RecordedPeerVersions {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Versions only move forward.
    pub fn record(&self, peer: &str, version: u64) {
        let mut v = lock(&self.versions);
        let slot = v.entry(peer.to_string()).or_insert(version);
        *slot = (*slot).max(version);
    }

    pub fn forget(&self, peer: &str) {
        lock(&self.versions).remove(peer);
    }
}

impl PeerVersions for RecordedPeerVersions {
    fn latest_version(&self, peer: &str) -> Option<u64> {
        lock(&self.versions).get(peer).copied()
    }
}

/// [`AckSource`] over the downstream server's registry, for the view labelled
/// `view_label` (the merged view served to ztunnel).
pub struct DownstreamAcks {
    pub subscribers: Arc<Subscribers>,
    pub view_label: String,
    pub versions: Arc<dyn PeerVersions>,
}

impl AckSource for DownstreamAcks {
    fn acks(&self, peer: &str) -> AckObservation {
        let subs: Vec<_> = self
            .subscribers
            .list()
            .into_iter()
            .filter(|s| s.view_label == self.view_label)
            .collect();
        let downstreams = subs.len();
        // A standing NACK that names (or may name) the peer's resources.
        for s in &subs {
            for kind in ResourceType::ALL {
                if !s.progress(kind).rejected {
                    continue;
                }
                let text = s.stats.per_type(kind).last_nack_message.clone();
                let names = nacked_names(&text);
                let attributed = names.is_empty()
                    || names
                        .iter()
                        .any(|n| self.versions.owns(peer, n) != Some(false));
                if attributed {
                    return AckObservation::Rejected {
                        node: s.node_id.clone(),
                        text,
                    };
                }
            }
        }
        let Some(version) = self.versions.latest_version(peer) else {
            return AckObservation::NothingToAck { downstreams };
        };
        if downstreams == 0 {
            return AckObservation::NothingToAck { downstreams };
        }
        // A standing NACK not attributed to this peer still counts as processed: another
        // peer's bad resource must not hold this peer's condition back.
        let processed = |s: &crate::xds::server::SubscriberInfo| {
            let subscribed: Vec<_> = ResourceType::ALL
                .iter()
                .map(|t| s.progress(*t))
                .filter(|p| p.subscribed)
                .collect();
            !subscribed.is_empty()
                && subscribed
                    .iter()
                    .all(|p| p.acked_view_version.is_some_and(|v| v >= version))
        };
        let behind = subs.iter().filter(|s| !processed(s)).count();
        if behind == 0 {
            AckObservation::Acked {
                version,
                downstreams,
            }
        } else {
            AckObservation::Waiting {
                version,
                behind,
                downstreams,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Probes

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
}

impl UserspaceProbe {
    pub fn new(prober: Arc<Prober>) -> Arc<Self> {
        Arc::new(UserspaceProbe {
            prober,
            targets: Mutex::default(),
            latencies: Mutex::default(),
        })
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

/// eBPF mode: the aggregator's per-destination kernel counters, attributed to peers by
/// their targets' IPs (gateway address, or pod IPs when flat).
pub struct KernelProbe {
    reports: watch::Receiver<Arc<ProbeReport>>,
    state: Mutex<KernelState>,
}

#[derive(Default)]
struct KernelState {
    targets: BTreeMap<String, ProbeTargets>,
    index: HashMap<IpAddr, String>,
    /// Last verdict per (peer, port), kept while no new connects are seen.
    last: HashMap<(String, u16), PortVerdict>,
}

impl KernelProbe {
    pub fn new(reports: watch::Receiver<Arc<ProbeReport>>) -> Arc<Self> {
        Arc::new(KernelProbe {
            reports,
            state: Mutex::default(),
        })
    }
}

impl ProbeSource for KernelProbe {
    fn mode(&self) -> &'static str {
        "ebpf"
    }

    fn set_targets(&self, targets: &BTreeMap<String, ProbeTargets>) {
        let mut state = lock(&self.state);
        state.index = targets
            .iter()
            .flat_map(|(peer, t)| {
                t.hbone
                    .iter()
                    .chain(t.xds.iter())
                    .map(move |a| (a.ip(), peer.clone()))
            })
            .collect();
        state.targets = targets.clone();
        let live: HashSet<&String> = targets.keys().collect();
        state.last.retain(|(peer, _), _| live.contains(peer));
    }

    fn observe(&self, peer: &str) -> ProbeObservation {
        let report = Arc::clone(&self.reports.borrow());
        let mut state = lock(&self.state);
        let targets = state.targets.get(peer).cloned().unwrap_or_default();
        let per_peer = crate::probe::attribution::attribute(&report, &state.index);
        let probe = per_peer.get(peer).cloned().unwrap_or_default();
        let mut verdict_for = |list: &[SocketAddr]| -> Option<PortVerdict> {
            let first = *list.first()?;
            let port = first.port();
            let key = (peer.to_string(), port);
            if let Some(p) = probe.by_port.get(&port)
                && let Some(r) = Reachability::from_counts(&p.delta)
            {
                state.last.insert(
                    key.clone(),
                    PortVerdict {
                        reachability: r,
                        target: first,
                    },
                );
            }
            state.last.get(&key).copied()
        };
        let hbone = verdict_for(&targets.hbone);
        let xds = verdict_for(&targets.xds);
        let mut stats = ProbeStats {
            mode: self.mode().to_string(),
            ..ProbeStats::default()
        };
        if let Some(port) = targets.hbone.first().map(SocketAddr::port)
            && let Some(p) = probe.by_port.get(&port)
        {
            stats.attempts = p.total.attempts;
            stats.established = p.total.established;
            stats.refused = p.total.refused;
            stats.timeouts = p.total.timed_out;
            stats.aborted = p.total.aborted;
            stats.syn_retransmits = p.total.syn_retransmits;
            stats.p50_us = p.p50_us;
            stats.p99_us = p.p99_us;
        }
        ProbeObservation { hbone, xds, stats }
    }
}
