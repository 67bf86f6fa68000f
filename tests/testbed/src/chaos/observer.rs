//! The independent observer of a chaos or soak run. It never reads peerd's own status,
//! debug API or metrics: what it judges comes from
//!
//! - one ztunnel-like downstream client per cluster (`chaos-observer-<cluster>`, delta
//!   xDS with ztunnel's rules, reconnecting with `initial_resource_versions`), i.e. what
//!   a node's ztunnel holds;
//! - each cluster's emulated API server store (WorkloadEntries in `istio-system`, the
//!   `istio-remote-peer-*` Gateways' conditions), read straight from the store so
//!   injected API faults never blind the observer;
//! - the simulated istiods' current populations (the truth), and the fault schedule the
//!   runner tells it about (which peer is down since when, which pair is unlinked).
//!
//! Invariants, checked on every tick:
//! - (a) a downstream never loses a workload its origin still exports, unless the origin
//!   has been down for at least the grace period or the pair is unlinked (the local
//!   cluster is never withdrawn);
//! - (b) no flat WorkloadEntry is deleted (with no replacement for the same workload)
//!   while its pod is still exported and its peer is within grace;
//! - for (a) and (b), a workload the origin itself removed within [`REMOVED_RECENTLY`]
//!   counts as not exported: it may be back under the same uid (a StatefulSet pod, a
//!   reused generated name) while its removal is still propagating;
//! - (c) per fault, each Gateway condition changes status at most once while the fault
//!   is active and at most once after it is lifted (no flapping);
//! - (d) after a fault, every downstream equals the expected merged view (the local
//!   population plus each linked peer's exported workloads), every flat WorkloadEntry
//!   set equals the peer's exported pods, every condition is True;
//! - (e) no peerd process exits unless the runner killed it (checked by the runner).
//!
//! It owns only its clients and its records; it never writes to an API server or a peerd.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::emulator::EmulatorHandle;
use crate::sandbox::layout::FLAT_NETWORK;
use crate::sandbox::ztunnel;
use peerd::store::{Store, StoreEvent};
use peerd::view::View;
use peerd::xds::stats::StreamStats;
use peerd::xds::types::ResourceType;

use super::rig::{PublishLog, Rig};

/// Gateway condition types watched for flapping.
pub const CONDITION_TYPES: [&str; 5] = [
    "Accepted",
    "Programmed",
    "gloo.solo.io/PeerConnected",
    "gloo.solo.io/PeeringSucceeded",
    "gloo.solo.io/PeerDataPlaneProgrammed",
];

/// A change younger than this may still be on its way; mismatches on it are not counted
/// when deciding convergence.
pub const IN_FLIGHT: Duration = Duration::from_secs(3);

/// A workload its origin removed less than this long ago may be missing downstream (or
/// lose its WorkloadEntry) even though the origin has it again: the removal propagated,
/// the re-add (same uid) is on its way. Generous, so a slow peerd's lag is covered; a
/// removal the origin never made is still caught.
pub const REMOVED_RECENTLY: Duration = Duration::from_secs(30);

/// One broken invariant.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Violation {
    /// `a` … `e`.
    pub invariant: &'static str,
    /// Seconds since the run started.
    pub at_seconds: f64,
    pub what: String,
}

/// One observed status change of a Gateway condition.
#[derive(Debug, Clone)]
pub struct Transition {
    pub at: Instant,
    /// (observing cluster, peer, condition type).
    pub key: (usize, usize, &'static str),
    pub from: String,
    pub to: String,
}

/// A propagation sample: how long a change of a peer's istiod took to reach another
/// cluster's downstream.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When the downstream applied it.
    pub at: Instant,
    pub latency: Duration,
    /// Applied while a fault was active or being recovered from (from injection until
    /// 2 s after convergence).
    pub during_fault: bool,
    /// The cluster (index) whose downstream applied it.
    pub downstream: usize,
}

struct Watched {
    name: String,
    flat: bool,
    store: Arc<Store>,
    stats: Arc<StreamStats>,
    sim_view: Arc<View>,
    /// `namespace/name` of the services this cluster exports.
    global: BTreeSet<String>,
    api: Arc<EmulatorHandle>,
}

/// What one check of a cluster found wrong for convergence (in-flight changes excluded).
#[derive(Debug, Default)]
pub struct Mismatch {
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub we_missing: Vec<String>,
    pub we_extra: Vec<String>,
    pub conditions: Vec<String>,
}

impl Mismatch {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.extra.is_empty()
            && self.we_missing.is_empty()
            && self.we_extra.is_empty()
            && self.conditions.is_empty()
    }

    pub fn summary(&self) -> String {
        let head = |v: &[String]| v.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        let mut parts = Vec::new();
        for (what, list) in [
            ("downstream missing", &self.missing),
            ("downstream extra", &self.extra),
            ("WorkloadEntries missing", &self.we_missing),
            ("WorkloadEntries extra", &self.we_extra),
            ("conditions not True", &self.conditions),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what} {} ({})", list.len(), head(list)));
            }
        }
        parts.join("; ")
    }
}

pub struct Observer {
    watched: Vec<Watched>,
    grace: Duration,
    started: Instant,
    publish_log: Arc<PublishLog>,
    /// Per cluster: since when its peerd (or its xDS port) is unreachable for peers.
    down_since: Vec<Option<Instant>>,
    /// Unordered pairs currently unlinked (or being unlinked/relinked).
    unlinked: BTreeSet<(usize, usize)>,
    prev_downstream: Vec<HashMap<String, usize>>,
    prev_wes: Vec<HashMap<String, (usize, String)>>,
    conditions: HashMap<(usize, usize, &'static str), String>,
    pub transitions: Vec<Transition>,
    pub violations: Vec<Violation>,
    /// Workloads a downstream dropped while their origin still exported them, allowed
    /// because the peer was past its grace or unlinked (shows a fault really bit).
    pub withdrawn: usize,
    samples: Arc<Mutex<Vec<Sample>>>,
    fault_active: Arc<std::sync::atomic::AtomicBool>,
    cancel: CancellationToken,
}

impl Observer {
    /// Starts one downstream client per cluster of `rig`.
    pub fn start(rig: &Rig, started: Instant) -> anyhow::Result<Observer> {
        let cancel = rig.cancel.child_token();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let fault_active = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut watched = Vec::new();
        for (index, (c, api)) in rig.clusters.iter().zip(&rig.apis).enumerate() {
            let (store, stats) = ztunnel::spawn_with_stats(
                &c.layout,
                rig.node_paths[index],
                "chaos-observer",
                &rig.token_file,
                &rig.root_cert,
                cancel.clone(),
            )?;
            spawn_propagation_sampler(
                index,
                &store,
                Arc::clone(&rig.publish_log),
                Arc::clone(&samples),
                Arc::clone(&fault_active),
                cancel.clone(),
            );
            watched.push(Watched {
                name: c.layout.name.clone(),
                flat: c.layout.network == FLAT_NETWORK,
                store,
                stats,
                sim_view: Arc::clone(&c.sim_view),
                global: c.global_services.iter().cloned().collect(),
                api: Arc::clone(api),
            });
        }
        let n = watched.len();
        Ok(Observer {
            watched,
            grace: rig.grace,
            started,
            publish_log: Arc::clone(&rig.publish_log),
            down_since: vec![None; n],
            unlinked: BTreeSet::new(),
            prev_downstream: vec![HashMap::new(); n],
            prev_wes: vec![HashMap::new(); n],
            conditions: HashMap::new(),
            transitions: Vec::new(),
            violations: Vec::new(),
            withdrawn: 0,
            samples,
            fault_active,
            cancel,
        })
    }

    pub fn elapsed_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn violate(&mut self, invariant: &'static str, what: String) {
        let at_seconds = self.elapsed_seconds();
        eprintln!("chaos: VIOLATION ({invariant}) at {at_seconds:.1}s: {what}");
        self.violations.push(Violation {
            invariant,
            at_seconds,
            what,
        });
    }

    /// Cluster `i` is unreachable for its peers from now (kept if already down).
    pub fn peer_down(&mut self, i: usize) {
        self.down_since[i].get_or_insert_with(Instant::now);
    }

    /// Every peer is synced again (called once a fault has converged).
    pub fn all_up(&mut self) {
        self.down_since.iter_mut().for_each(|d| *d = None);
    }

    pub fn set_unlinked(&mut self, a: usize, b: usize, unlinked: bool) {
        let pair = (a.min(b), a.max(b));
        if unlinked {
            self.unlinked.insert(pair);
        } else {
            self.unlinked.remove(&pair);
        }
    }

    /// Forgets the recorded conditions between `a` and `b` (their Gateways are deleted
    /// and created again by unlink/relink: new objects, new initial conditions).
    pub fn forget_pair(&mut self, a: usize, b: usize) {
        self.conditions
            .retain(|(i, j, _), _| !((*i == a && *j == b) || (*i == b && *j == a)));
    }

    pub fn set_fault_active(&self, active: bool) {
        self.fault_active
            .store(active, std::sync::atomic::Ordering::Relaxed);
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        !self.unlinked.contains(&(a.min(b), a.max(b)))
    }

    /// Whether cluster `i` may have dropped what peer `j` contributed.
    fn removal_allowed(&self, i: usize, j: usize) -> bool {
        i != j
            && (!self.linked(i, j)
                || self.down_since[j].is_some_and(|since| since.elapsed() >= self.grace))
    }

    /// uid → origin index of every workload cluster `i`'s downstream holds.
    fn downstream(&self, i: usize) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for origin in self.watched[i].store.origins() {
            let snapshot = origin.view.snapshot();
            for r in snapshot.resources(ResourceType::Address).values() {
                if let Some(w) = r.as_workload() {
                    let from = self.index_of(&w.cluster_id).unwrap_or(usize::MAX);
                    out.insert(w.uid.clone(), from);
                }
            }
        }
        out
    }

    fn index_of(&self, cluster: &str) -> Option<usize> {
        self.watched.iter().position(|w| w.name == cluster)
    }

    /// uids of the workloads cluster `j`'s istiod serves now: all of them, or only what
    /// it exports (docs/design.md §5.1, §5.9): the workloads backing a global service,
    /// and the workloads of each waypoint a global service or such a workload names (one
    /// level: a waypoint's own waypoint is not followed).
    fn population(&self, j: usize, exported_only: bool) -> HashSet<String> {
        let w = &self.watched[j];
        let snapshot = w.sim_view.snapshot();
        let resources = snapshot.resources(ResourceType::Address);
        let workloads = resources.values().filter_map(|r| r.as_workload());
        if !exported_only {
            return workloads.map(|wl| wl.uid.clone()).collect();
        }
        let mut by_vip: HashMap<(String, std::net::IpAddr), String> = HashMap::new();
        let mut global_keys: HashSet<String> = HashSet::new();
        let mut global_services: HashSet<&str> = HashSet::new();
        for r in resources.values() {
            let Some(s) = r.as_service() else { continue };
            let key = format!("{}/{}", s.namespace, s.hostname);
            for vip in &s.vips {
                by_vip.insert(vip.clone(), key.clone());
            }
            if w.global.contains(&format!("{}/{}", s.namespace, s.name)) {
                global_keys.insert(key);
                if s.has_waypoint {
                    global_services.insert(&r.name);
                }
            }
        }
        let mut exported = global_keys.clone();
        let backing = |wl: &peerd::xds::resource::WorkloadSummary| {
            wl.services.iter().any(|k| global_keys.contains(&**k))
        };
        for r in resources.values() {
            let named_by_export = match r.as_workload() {
                Some(wl) => wl.has_waypoint && backing(wl),
                None => global_services.contains(&*r.name),
            };
            if named_by_export {
                exported.extend(waypoint_keys(&r.body, &by_vip));
            }
        }
        resources
            .values()
            .filter_map(|r| r.as_workload())
            .filter(|wl| wl.services.iter().any(|k| exported.contains(&**k)))
            .map(|wl| wl.uid.clone())
            .collect()
    }

    /// uid → origin of what cluster `i`'s downstream should hold.
    fn expected(&self, i: usize) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for j in 0..self.watched.len() {
            if j != i && !self.linked(i, j) {
                continue;
            }
            for uid in self.population(j, j != i) {
                out.insert(uid, j);
            }
        }
        out
    }

    /// Flat WorkloadEntries in cluster `i`: name → (source cluster, workload uid).
    fn workload_entries(&self, i: usize) -> HashMap<String, (usize, String)> {
        let mut out = HashMap::new();
        for we in self.watched[i].api.objects(
            "networking.istio.io",
            "workloadentries",
            Some("istio-system"),
        ) {
            let name = we["metadata"]["name"].as_str().unwrap_or_default();
            if !name.starts_with("autogenflat.") {
                continue;
            }
            let source = we["metadata"]["labels"]["solo.io/source-cluster"]
                .as_str()
                .and_then(|c| self.index_of(c));
            let uid = we["metadata"]["annotations"]["solo.io/peered-workload-uid"]
                .as_str()
                .unwrap_or_default();
            if let Some(source) = source {
                out.insert(name.to_string(), (source, uid.to_string()));
            }
        }
        out
    }

    /// (peer index, condition type) → status of cluster `i`'s peer Gateways.
    fn gateway_conditions(&self, i: usize) -> BTreeMap<(usize, &'static str), String> {
        let mut out = BTreeMap::new();
        for gw in self.watched[i]
            .api
            .objects("gateway.networking.k8s.io", "gateways", None)
        {
            let name = gw["metadata"]["name"].as_str().unwrap_or_default();
            let Some(peer) = name
                .strip_prefix("istio-remote-peer-")
                .and_then(|p| self.index_of(p))
            else {
                continue;
            };
            let conditions = gw["status"]["conditions"].as_array();
            for kind in CONDITION_TYPES {
                let status = conditions
                    .and_then(|list| list.iter().find(|c| c["type"] == kind))
                    .and_then(|c| c["status"].as_str())
                    .unwrap_or("Absent");
                out.insert((peer, kind), status.to_string());
            }
        }
        out
    }

    /// One round of invariant checks (a), (b) and the condition record for (c).
    pub fn tick(&mut self) {
        for i in 0..self.watched.len() {
            self.check_downstream(i);
            if self.watched[i].flat {
                self.check_workload_entries(i);
            }
            self.record_conditions(i);
        }
    }

    fn check_downstream(&mut self, i: usize) {
        let now = self.downstream(i);
        let prev = std::mem::replace(&mut self.prev_downstream[i], now);
        let removed: Vec<(String, usize)> = prev
            .into_iter()
            .filter(|(uid, _)| !self.prev_downstream[i].contains_key(uid))
            .collect();
        if removed.is_empty() {
            return;
        }
        let mut populations: HashMap<usize, HashSet<String>> = HashMap::new();
        let mut bad = Vec::new();
        for (uid, j) in removed {
            if j >= self.watched.len() {
                continue;
            }
            let still = populations
                .entry(j)
                .or_insert_with(|| self.population(j, j != i))
                .contains(&uid);
            if !still || self.publish_log.removed_within(&uid, REMOVED_RECENTLY) {
                continue;
            }
            if self.removal_allowed(i, j) {
                self.withdrawn += 1;
            } else {
                bad.push((uid, j));
            }
        }
        // One violation per origin and check, naming a few of the lost workloads.
        let mut by_origin: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (uid, j) in bad {
            by_origin.entry(j).or_default().push(uid);
        }
        for (j, uids) in by_origin {
            let down = self.down_since[j].map_or("up".to_string(), |t| {
                format!("down for {:.1}s", t.elapsed().as_secs_f64())
            });
            let what = format!(
                "{}'s downstream lost {} workload(s) of {} that it still exports ({down}, grace {}s), e.g. {}",
                self.watched[i].name,
                uids.len(),
                self.watched[j].name,
                self.grace.as_secs(),
                uids.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            );
            self.violate("a", what);
        }
    }

    fn check_workload_entries(&mut self, i: usize) {
        let now = self.workload_entries(i);
        let prev = std::mem::replace(&mut self.prev_wes[i], now);
        let still_held: HashSet<&String> = self.prev_wes[i].values().map(|(_, uid)| uid).collect();
        let removed: Vec<(String, usize, String)> = prev
            .into_iter()
            .filter(|(name, (_, uid))| {
                !self.prev_wes[i].contains_key(name) && !still_held.contains(uid)
            })
            .map(|(name, (j, uid))| (name, j, uid))
            .collect();
        let mut bad = Vec::new();
        for (name, j, uid) in removed {
            if self.removal_allowed(i, j)
                || !self.watched[j].flat
                || self.publish_log.removed_within(&uid, REMOVED_RECENTLY)
            {
                continue;
            }
            if self.population(j, true).contains(&uid) {
                bad.push((name, uid));
            }
        }
        for (name, uid) in bad {
            let what = format!(
                "{}: WorkloadEntry {name} deleted while its pod is still exported and its peer within grace ({})",
                self.watched[i].name,
                self.held_downstream(i, &uid)
            );
            self.violate("b", what);
        }
    }

    /// What cluster `i`'s downstream holds of workload `uid` (for a violation's detail):
    /// whether peerd still serves it and with which services, and which of those services
    /// the downstream holds.
    fn held_downstream(&self, i: usize, uid: &str) -> String {
        for origin in self.watched[i].store.origins() {
            let snapshot = origin.view.snapshot();
            let Some(w) = snapshot
                .get(ResourceType::Address, uid)
                .and_then(|r| r.as_workload())
            else {
                continue;
            };
            let services: Vec<String> = w
                .services
                .iter()
                .map(|key| {
                    // A service's xDS name is its key, `namespace/hostname`.
                    let held = snapshot
                        .get(ResourceType::Address, key)
                        .is_some_and(|r| r.as_service().is_some());
                    format!("{key}{}", if held { "" } else { " (service not held)" })
                })
                .collect();
            return format!(
                "the downstream holds the workload, addresses {:?}, services [{}]",
                w.addresses,
                services.join(", ")
            );
        }
        "the downstream does not hold the workload".to_string()
    }

    fn record_conditions(&mut self, i: usize) {
        for ((peer, kind), status) in self.gateway_conditions(i) {
            let key = (i, peer, kind);
            match self.conditions.get(&key) {
                Some(old) if *old == status => {}
                // A Gateway's first conditions are its initial write, not a transition.
                Some(old) if old == "Absent" => {
                    self.conditions.insert(key, status);
                }
                Some(old) => {
                    self.transitions.push(Transition {
                        at: Instant::now(),
                        key,
                        from: old.clone(),
                        to: status.clone(),
                    });
                    self.conditions.insert(key, status);
                }
                None => {
                    self.conditions.insert(key, status);
                }
            }
        }
    }

    /// (c) for one fault: at most one status change per condition while it was active
    /// (`start..lift`) and at most one after (`lift..end`).
    pub fn check_flapping(&mut self, fault: &str, start: Instant, lift: Instant, end: Instant) {
        // (condition key, after the lift) → the changes seen.
        type Phase = ((usize, usize, &'static str), bool);
        let mut counts: BTreeMap<Phase, Vec<String>> = BTreeMap::new();
        for t in &self.transitions {
            if t.at < start || t.at > end {
                continue;
            }
            counts
                .entry((t.key, t.at >= lift))
                .or_default()
                .push(format!("{}→{}", t.from, t.to));
        }
        let mut found = Vec::new();
        for (((i, j, kind), after), changes) in counts {
            if changes.len() > 1 {
                found.push(format!(
                    "{fault}: {} → {} {kind} changed {} times {} ({})",
                    self.watched[i].name,
                    self.watched[j].name,
                    changes.len(),
                    if after {
                        "after the lift"
                    } else {
                        "during the fault"
                    },
                    changes.join(", ")
                ));
            }
        }
        for what in found {
            self.violate("c", what);
        }
    }

    /// (d): what differs from the expected state now, changes in flight excluded.
    pub fn mismatch(&self) -> Mismatch {
        let mut m = Mismatch::default();
        let fresh = |uid: &str| self.publish_log.changed_within(uid, IN_FLIGHT);
        for i in 0..self.watched.len() {
            let held = self.downstream(i);
            let want = self.expected(i);
            let name = &self.watched[i].name;
            m.missing.extend(
                want.keys()
                    .filter(|uid| !held.contains_key(*uid) && !fresh(uid))
                    .map(|uid| format!("{name}:{uid}")),
            );
            m.extra.extend(
                held.keys()
                    .filter(|uid| !want.contains_key(*uid) && !fresh(uid))
                    .map(|uid| format!("{name}:{uid}")),
            );
            if self.watched[i].flat {
                let wes: HashSet<String> = self
                    .workload_entries(i)
                    .into_values()
                    .map(|(_, uid)| uid)
                    .collect();
                let mut want_wes = HashSet::new();
                for j in 0..self.watched.len() {
                    if j != i && self.watched[j].flat && self.linked(i, j) {
                        want_wes.extend(self.population(j, true));
                    }
                }
                m.we_missing.extend(
                    want_wes
                        .iter()
                        .filter(|uid| !wes.contains(*uid) && !fresh(uid))
                        .map(|uid| format!("{name}:{uid}")),
                );
                m.we_extra.extend(
                    wes.iter()
                        .filter(|uid| !want_wes.contains(*uid) && !fresh(uid))
                        .map(|uid| format!("{name}:{uid}")),
                );
            }
            for ((peer, kind), status) in self.gateway_conditions(i) {
                if self.linked(i, peer) && status != "True" {
                    m.conditions.push(format!(
                        "{name}→{} {kind}={status}",
                        self.watched[peer].name
                    ));
                }
            }
            for peer in 0..self.watched.len() {
                if peer != i
                    && self.linked(i, peer)
                    && !self.gateway_conditions(i).keys().any(|(p, _)| *p == peer)
                {
                    m.conditions
                        .push(format!("{name}→{} no Gateway", self.watched[peer].name));
                }
            }
        }
        m
    }

    /// NACKs the observer's downstream clients sent so far.
    pub fn nacks(&self) -> u64 {
        self.watched
            .iter()
            .map(|w| {
                let s = w.stats.snapshot();
                s.address_type.nacks_sent + s.authorization_type.nacks_sent
            })
            .sum()
    }

    /// Propagation samples since the last call.
    pub fn take_samples(&self) -> Vec<Sample> {
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Workloads held per downstream (for progress lines).
    pub fn held_counts(&self) -> Vec<usize> {
        (0..self.watched.len())
            .map(|i| self.prev_downstream[i].len())
            .collect()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The service keys (`namespace/hostname`) of the waypoints an Address body names
/// (`waypoint`, and `weighted_waypoints` of a service), by hostname or by VIP.
fn waypoint_keys(body: &[u8], by_vip: &HashMap<(String, std::net::IpAddr), String>) -> Vec<String> {
    use peerd::proto::istio::workload as pb;
    use prost::Message as _;
    let Ok(address) = pb::Address::decode(body) else {
        return Vec::new();
    };
    let refs: Vec<pb::GatewayAddress> = match address.r#type {
        Some(pb::address::Type::Workload(w)) => w.waypoint.into_iter().collect(),
        Some(pb::address::Type::Service(s)) => s
            .waypoint
            .into_iter()
            .chain(
                s.weighted_waypoints
                    .into_iter()
                    .filter_map(|w| w.destination),
            )
            .collect(),
        None => Vec::new(),
    };
    refs.into_iter()
        .filter_map(|g| match g.destination? {
            pb::gateway_address::Destination::Hostname(h) => {
                Some(format!("{}/{}", h.namespace, h.hostname))
            }
            pb::gateway_address::Destination::Address(a) => {
                let ip = match a.address.len() {
                    4 => <[u8; 4]>::try_from(a.address.as_slice())
                        .ok()
                        .map(std::net::IpAddr::from),
                    16 => <[u8; 16]>::try_from(a.address.as_slice())
                        .ok()
                        .map(std::net::IpAddr::from),
                    _ => None,
                }?;
                by_vip.get(&(a.network, ip)).cloned()
            }
        })
        .collect()
}

/// Records, for every change a downstream receives from another cluster's istiod, how
/// long after that istiod published it the downstream applied it.
fn spawn_propagation_sampler(
    index: usize,
    store: &Arc<Store>,
    log: Arc<PublishLog>,
    samples: Arc<Mutex<Vec<Sample>>>,
    fault_active: Arc<std::sync::atomic::AtomicBool>,
    cancel: CancellationToken,
) {
    let mut events = store.subscribe();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                event = events.recv() => event,
            };
            let (change, at) = match event {
                Ok(StoreEvent::Changed { change, at, .. }) => (change, at),
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let during_fault = fault_active.load(std::sync::atomic::Ordering::Relaxed);
            let mut found = Vec::new();
            for name in &change.names {
                if let Some((cluster, published)) = log.last(name)
                    && usize::from(cluster) != index + 1
                    && at >= published
                {
                    let latency = at - published;
                    if latency < Duration::from_secs(600) {
                        found.push(Sample {
                            at,
                            latency,
                            during_fault,
                            downstream: index,
                        });
                    }
                }
            }
            if !found.is_empty() {
                samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(found);
            }
        }
    });
}

/// The `q`-quantile (0..=1) of `values` in milliseconds; `None` when empty.
pub fn quantile_ms(values: &mut [Duration], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64 - 1.0) * q).round() as usize;
    values
        .get(rank.min(values.len() - 1))
        .map(|d| d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&mut v, 0.99), Some(99.0));
        assert_eq!(quantile_ms(&mut v, 0.0), Some(1.0));
        assert_eq!(quantile_ms(&mut [], 0.5), None);
    }

    #[test]
    fn mismatch_summary_names_what_differs() {
        let m = Mismatch {
            missing: vec!["cluster-1:a".into(), "cluster-1:b".into()],
            conditions: vec!["cluster-1→cluster-3 Programmed=False".into()],
            ..Mismatch::default()
        };
        assert!(!m.is_empty());
        let s = m.summary();
        assert!(s.contains("downstream missing 2"), "{s}");
        assert!(s.contains("conditions not True 1"), "{s}");
        assert!(Mismatch::default().is_empty());
    }
}
