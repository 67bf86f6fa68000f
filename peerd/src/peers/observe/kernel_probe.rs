//! eBPF probe mode: the aggregator's per-destination kernel counters, attributed to
//! peers by gateway address (and, for flat peers, by every pod IP the store holds).
//!
//! Owns: the destination index and the per-(peer, port) deltas since the previous read.
//! Must never load or attach eBPF programs (the aggregator's owner does).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::probe::aggregator::{ConnectCounts, ProbeReport, ReportScope};
use crate::probe::prober::Prober;
use crate::store::Store;

use super::lock;
use super::probe::{
    PortVerdict, ProbeObservation, ProbeSource, ProbeStats, ProbeTargets, Reachability,
};
use super::userspace_probe::UserspaceProbe;

/// eBPF mode: the aggregator's per-destination kernel counters, attributed to peers by
/// their gateway addresses and, for flat peers, every pod IP the store holds for them
/// (so real traffic to any pod counts, not only the prober's sample). The active prober
/// still creates the connects the kernel sees; its own outcomes (the `fallback`) answer
/// for a port the kernel has not seen a finished connect on yet.
///
/// Verdicts and metric deltas come from what changed at each attributed address since the
/// previous fold, summed per (peer, port), so a report the monitor's tick did not see is
/// never lost. Per address, not per peer total: when a flat peer's pod IP leaves the index
/// (pod churn) its peer's total shrinks, which differencing per-peer totals read as a
/// counter reset, re-counting the peer's whole connect history as new connects (and as a
/// fresh verdict: a peer whose new connects time out showed reachable again).
pub struct KernelProbe {
    reports: watch::Receiver<Arc<ProbeReport>>,
    state: Mutex<KernelState>,
    fallback: Option<Arc<UserspaceProbe>>,
    store: Option<Arc<Store>>,
    /// Told the index's addresses whenever it is rebuilt, so reports carry only those.
    scope: Option<ReportScope>,
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
    /// Per address, its total when a report last carried it: kept after the address
    /// leaves the index and the reports (their scope follows the index), so a pod IP that
    /// comes back (a flat peer withdrawn past grace, then resynced) counts only what is
    /// new, not its history. At most [`SEEN_CAP`] entries.
    seen: HashMap<SocketAddr, ConnectCounts>,
    /// Last verdict per (peer, port), kept while no new connects are seen.
    last: HashMap<(String, u16), PortVerdict>,
    /// Map health totals at the previous fold (evicted, insert failures, skipped runs).
    health_seen: (u64, u64, u64),
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
            scope: None,
        })
    }

    /// As `peerd run` uses it: `prober` gets the targets (its connects are what the kernel
    /// counts when there is no traffic) and answers for ports without kernel verdicts;
    /// flat peers' pod IPs come from `store`; `scope`, when given, limits the reports to
    /// the addresses the index attributes.
    pub fn with_prober(
        reports: watch::Receiver<Arc<ProbeReport>>,
        prober: Arc<Prober>,
        store: Option<Arc<Store>>,
        scope: Option<ReportScope>,
    ) -> Arc<Self> {
        Arc::new(KernelProbe {
            reports,
            state: Mutex::default(),
            fallback: Some(UserspaceProbe::without_metrics(prober)),
            store,
            scope,
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
        let (changes, seen) = changes_since(&report, &state.index, &state.seen);
        for (peer, probe) in per_peer.iter_mut() {
            for (port, p) in probe.by_port.iter_mut() {
                let key = (peer.clone(), *port);
                let changed = changes.get(&key).copied().unwrap_or_default();
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
                // The metrics count what changed since the previous fold.
                p.delta = changed;
            }
        }
        crate::probe::metrics::record_deltas(&per_peer);
        // Totals restart when the programs are reloaded: a smaller total is all new.
        let health = (
            report.health.evicted_total,
            report.health.insert_failures_total,
            report.health.skipped_total,
        );
        let since = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
        crate::probe::metrics::record_map_health(
            since(health.0, state.health_seen.0),
            since(health.1, state.health_seen.1),
            since(health.2, state.health_seen.2),
        );
        state.health_seen = health;
        state.seen = seen;
        state.per_peer = per_peer;
        state.folded = Some(report);
    }
}

/// Addresses whose last total is remembered: twice the kernel map's default size, so
/// every address the map can hold plus as many that left it. Past that, addresses the
/// report no longer carries are forgotten first (one that returns then counts whole).
const SEEN_CAP: usize = 2 * peerd_ebpf::DEFAULT_MAX_DESTINATIONS as usize;

/// What changed at each attributed address of `report` since `seen` (its previous totals),
/// summed per (peer, port); and the totals to remember. An address seen for the first
/// time counts whole; a counter that went back (the kernel entry was evicted and
/// recreated, or the programs reloaded) restarts from zero. An address the report no
/// longer carries (it left the index, or the map) keeps its previous total, within
/// [`SEEN_CAP`].
fn changes_since(
    report: &ProbeReport,
    index: &HashMap<IpAddr, String>,
    seen: &HashMap<SocketAddr, ConnectCounts>,
) -> (
    HashMap<(String, u16), ConnectCounts>,
    HashMap<SocketAddr, ConnectCounts>,
) {
    let mut changes: HashMap<(String, u16), ConnectCounts> = HashMap::new();
    let mut remembered = HashMap::new();
    for (destination, dest) in &report.destinations {
        let before = seen.get(destination);
        let Some(peer) = index.get(&destination.ip()) else {
            if let Some(before) = before {
                remembered.insert(*destination, *before);
            }
            continue;
        };
        let change = match before {
            Some(before) => dest.total.since(before),
            None => dest.total,
        };
        changes
            .entry((peer.clone(), destination.port()))
            .or_default()
            .add(&change);
        remembered.insert(*destination, dest.total);
    }
    for (destination, before) in seen {
        if remembered.len() >= SEEN_CAP {
            break;
        }
        remembered.entry(*destination).or_insert(*before);
    }
    (changes, remembered)
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
            if let Some(scope) = &self.scope {
                scope.set(state.index.keys().copied().collect());
            }
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
