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
            if let Summary::Workload(w) = &*r.summary {
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

    /// The fallback inside [`KernelProbe`]: the kernel counts the same connects, so this
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
    fn apply_targets(&self, targets: &BTreeMap<String, ProbeTargets>) {
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

/// eBPF mode: the aggregator's per-destination kernel counters, attributed to peers by
/// their gateway addresses and, for flat peers, every pod IP the store holds for them
/// (so real traffic to any pod counts, not only the prober's sample). The active prober
/// still creates the connects the kernel sees; its own outcomes (the `fallback`) answer
/// for a port the kernel has not seen a finished connect on yet.
///
/// Verdicts and metric deltas come from the change of each (peer, port) total since the
/// previous read, so a report the monitor's tick did not see is never lost.
pub struct KernelProbe {
    reports: watch::Receiver<Arc<ProbeReport>>,
    state: Mutex<KernelState>,
    fallback: Option<Arc<UserspaceProbe>>,
    store: Option<Arc<Store>>,
}

/// What a destination index was built from: the targets and each flat origin's view
/// version.
type IndexSource = (BTreeMap<String, ProbeTargets>, Vec<(String, u64)>);

#[derive(Default)]
struct KernelState {
    targets: BTreeMap<String, ProbeTargets>,
    index: HashMap<IpAddr, String>,
    /// What the index was built from: the targets and each flat origin's view version.
    index_built_from: Option<IndexSource>,
    /// The report last folded in, and the per-peer sums it gave.
    folded: Option<Arc<ProbeReport>>,
    per_peer: BTreeMap<String, crate::probe::attribution::PeerProbe>,
    /// (peer, port) totals at the previous fold.
    seen: HashMap<(String, u16), ConnectCounts>,
    /// Last verdict per (peer, port), kept while no new connects are seen.
    last: HashMap<(String, u16), PortVerdict>,
    /// Map health totals at the previous fold (evicted, insert failures).
    health_seen: (u64, u64),
    /// The most telling failure per (peer, port) since its last established connect.
    worst_since_success: HashMap<(String, u16), Reachability>,
}

/// Which failure names a peer's problem best when connects fail in different ways:
/// timeouts (something filters SYNs) over unreachability over refusals (no listener).
fn failure_rank(r: Reachability) -> u8 {
    match r {
        Reachability::Reachable => 0,
        Reachability::Refused => 1,
        Reachability::Unreachable => 2,
        Reachability::TimedOut => 3,
    }
}

impl KernelProbe {
    /// Kernel counters only (no fallback, targets' own addresses as the index).
    pub fn new(reports: watch::Receiver<Arc<ProbeReport>>) -> Arc<Self> {
        Arc::new(KernelProbe {
            reports,
            state: Mutex::default(),
            fallback: None,
            store: None,
        })
    }

    /// As `peerd run` uses it: `prober` gets the targets (its connects are what the kernel
    /// counts when there is no traffic) and answers for ports without kernel verdicts;
    /// flat peers' pod IPs come from `store`.
    pub fn with_prober(
        reports: watch::Receiver<Arc<ProbeReport>>,
        prober: Arc<Prober>,
        store: Option<Arc<Store>>,
    ) -> Arc<Self> {
        Arc::new(KernelProbe {
            reports,
            state: Mutex::default(),
            fallback: Some(UserspaceProbe::without_metrics(prober)),
            store,
        })
    }

    fn flat_versions(&self, targets: &BTreeMap<String, ProbeTargets>) -> Vec<(String, u64)> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        targets
            .iter()
            .filter(|(_, t)| t.flat)
            .map(|(peer, _)| {
                let version = store.get(peer).map_or(0, |o| o.view.snapshot().version);
                (peer.clone(), version)
            })
            .collect()
    }

    fn build_index(&self, targets: &BTreeMap<String, ProbeTargets>) -> HashMap<IpAddr, String> {
        use crate::probe::attribution::{PeerTargets, build_index};
        let peers: Vec<PeerTargets> = targets
            .iter()
            .map(|(peer, t)| {
                let mut gateways: Vec<IpAddr> = t.xds.iter().map(SocketAddr::ip).collect();
                if !t.flat {
                    gateways.extend(t.hbone.iter().map(SocketAddr::ip));
                }
                PeerTargets {
                    peer: peer.clone(),
                    gateways,
                    flat_origin: t.flat.then(|| peer.clone()),
                }
            })
            .collect();
        let mut index = match &self.store {
            Some(store) => build_index(&peers, store),
            None => HashMap::new(),
        };
        // The probed targets always count (a flat peer's sampled pods, a resolved name).
        for (peer, t) in targets {
            for a in t.hbone.iter().chain(t.xds.iter()) {
                index.entry(a.ip()).or_insert_with(|| peer.clone());
            }
        }
        index
    }

    /// Folds the latest report in once: per-peer sums, verdicts from what changed since
    /// the previous fold, and the metric deltas.
    fn fold(&self, state: &mut KernelState) {
        let report = Arc::clone(&self.reports.borrow());
        if state
            .folded
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, &report))
        {
            return;
        }
        let mut per_peer = crate::probe::attribution::attribute(&report, &state.index);
        let mut seen = HashMap::new();
        for (peer, probe) in per_peer.iter_mut() {
            for (port, p) in probe.by_port.iter_mut() {
                let key = (peer.clone(), *port);
                let changed = match state.seen.get(&key) {
                    Some(before) => p.total.since(before),
                    None => p.total,
                };
                if let Some(latest) = Reachability::from_counts(&changed) {
                    // The kernel counts every connect to the address (other processes,
                    // other namespaces): once connects time out, a refusal in between
                    // does not hide that until a connect succeeds again.
                    let reachability = if latest == Reachability::Reachable {
                        state.worst_since_success.remove(&key);
                        latest
                    } else {
                        let worst = state
                            .worst_since_success
                            .entry(key.clone())
                            .or_insert(latest);
                        if failure_rank(latest) > failure_rank(*worst) {
                            *worst = latest;
                        }
                        *worst
                    };
                    let target = state
                        .targets
                        .get(peer)
                        .and_then(|t| {
                            t.hbone
                                .iter()
                                .chain(t.xds.iter())
                                .find(|a| a.port() == *port)
                        })
                        .copied();
                    if let Some(target) = target {
                        state.last.insert(
                            key.clone(),
                            PortVerdict {
                                reachability,
                                target,
                            },
                        );
                    }
                }
                seen.insert(key, p.total);
                // The metrics count what changed since the previous fold.
                p.delta = changed;
            }
        }
        crate::probe::metrics::record_deltas(&per_peer);
        // Totals restart when the programs are reloaded: a smaller total is all new.
        let health = (
            report.health.evicted_total,
            report.health.insert_failures_total,
        );
        let since = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
        crate::probe::metrics::record_map_health(
            since(health.0, state.health_seen.0),
            since(health.1, state.health_seen.1),
        );
        state.health_seen = health;
        state.seen = seen;
        state.per_peer = per_peer;
        state.folded = Some(report);
    }
}

impl ProbeSource for KernelProbe {
    fn mode(&self) -> &'static str {
        "ebpf"
    }

    fn set_targets(&self, targets: &BTreeMap<String, ProbeTargets>) {
        if let Some(fallback) = &self.fallback {
            fallback.apply_targets(targets);
        }
        let versions = self.flat_versions(targets);
        let mut state = lock(&self.state);
        let stale = state
            .index_built_from
            .as_ref()
            .is_none_or(|(t, v)| t != targets || *v != versions);
        if stale {
            state.index = self.build_index(targets);
            state.index_built_from = Some((targets.clone(), versions));
            // Attribution changed: re-fold the current report with the new index.
            state.folded = None;
        }
        state.targets = targets.clone();
        let live: HashSet<&String> = targets.keys().collect();
        state.last.retain(|(peer, _), _| live.contains(peer));
        state
            .worst_since_success
            .retain(|(peer, _), _| live.contains(peer));
        self.fold(&mut state);
    }

    fn observe(&self, peer: &str) -> ProbeObservation {
        let mut state = lock(&self.state);
        self.fold(&mut state);
        let targets = state.targets.get(peer).cloned().unwrap_or_default();
        let probe = state.per_peer.get(peer).cloned().unwrap_or_default();
        let kernel_verdict = |list: &[SocketAddr]| -> Option<PortVerdict> {
            let port = list.first()?.port();
            state.last.get(&(peer.to_string(), port)).copied()
        };
        let mut hbone = kernel_verdict(&targets.hbone);
        let mut xds = kernel_verdict(&targets.xds);
        drop(state);
        if (hbone.is_none() || xds.is_none())
            && let Some(fallback) = &self.fallback
        {
            let userspace = fallback.observe(peer);
            hbone = hbone.or(userspace.hbone);
            xds = xds.or(userspace.xds);
        }
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
