//! The export view: what peers may read from this cluster (docs/design.md §5.1).
//!
//! Only global services, renamed `<svc>.<ns>.mesh.internal` (resource name
//! `ns/<svc>.<ns>.mesh.internal`), and the workloads backing them, whose `services` keys
//! are renamed the same way (keys of non-global services dropped), with `cluster_id` and
//! `network` set to the local cluster's. One view per [`ExportFlavor`]: flat peers get pod
//! IPs without a gateway, multi-network peers get `network_gateway` = the east-west
//! gateway with its HBONE port (or the NodePort target). No authorizations are exported.
//!
//! Incremental: a workload change recomputes that workload; a service change recomputes
//! that service and, when its exported name or global-ness changed, the workloads backing
//! it (found through a `service key → workloads` index). All edits go through
//! [`crate::xds::wire`] so fields unknown to our schema survive.
//!
//! Only the local cluster's own resources are exported, never what was imported from
//! peers (peering is not transitive).
//!
//! **Waypoints** (docs/design.md §5.4): a global service, or a workload backing one, that
//! names a waypoint (`waypoint`, `weighted_waypoints`) pulls that waypoint's Service and
//! its workloads into the export too, renamed like any global service; the reference is
//! rewritten (wire edit) to the waypoint's exported `ns/<wp>.<ns>.mesh.internal`. A
//! reference that cannot be honoured is dropped from the exported form and reported
//! ([`Exporter::dropped_waypoints`], gauge `peerd_federation_waypoint_references_dropped`):
//! a waypoint that is not a Service of this cluster (`unknown_service`), the waypoint's
//! own waypoint (`waypoint_chain`: only references of resources exported in their own
//! right are followed, so the closure is one level and cycles cannot arise), and every
//! reference in a multi-network form when no east-west gateway is configured
//! (`no_gateway`: the waypoint's pods would be unreachable).
//!
//! It must never export anything before the local upstream has synced (the [`Exporter::is_ready`]
//! gate: a restarted peerd would otherwise tell its peers to remove everything), never
//! export a non-global service or a workload backing none, and never change resource
//! bytes except through wire edits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message;
use serde::Serialize;

use super::naming::{global_hostname, global_key};
use super::settings::{ExportFlavor, FederationConfig, GatewayTarget};
use crate::config::ServiceRef;
use crate::half_empty_map::{HalfEmptyMap, HalfEmptySet};
use crate::proto::istio::workload::{GatewayAddress, WeightedWaypoint, gateway_address};
use crate::view::{View, ViewState};
use crate::xds::resource::{Resource, Summary, address_key, ip_from_bytes};
use crate::xds::types::ResourceType;
use crate::xds::wire::{self, Rewrite, WireError};

/// Names whose merged form an export change affects (for the merge of the local cluster).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportChange {
    /// Local workloads whose set of global service keys may have changed.
    pub workloads: BTreeSet<Arc<str>>,
    /// Exported service names (`ns/<svc>.<ns>.mesh.internal`) added, changed or removed.
    pub services: BTreeSet<Arc<str>>,
}

/// Why a waypoint reference was left out of an exported resource (metric label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaypointDrop {
    /// The waypoint is not a Service of this cluster (no such hostname or VIP).
    UnknownService,
    /// The resource is exported only as a waypoint: its own waypoint is not followed.
    WaypointChain,
    /// A multi-network form, and no east-west gateway is configured.
    NoGateway,
}

impl WaypointDrop {
    pub const ALL: [WaypointDrop; 3] = [
        WaypointDrop::UnknownService,
        WaypointDrop::WaypointChain,
        WaypointDrop::NoGateway,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WaypointDrop::UnknownService => "unknown_service",
            WaypointDrop::WaypointChain => "waypoint_chain",
            WaypointDrop::NoGateway => "no_gateway",
        }
    }
}

/// One waypoint reference left out of the export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DroppedWaypoint {
    /// The local resource whose exported form lost the reference.
    pub resource: String,
    pub reason: WaypointDrop,
    /// The reference as sent (`ns/hostname` or `network/IP`).
    pub target: String,
}

/// Longest referenced target kept in a report (client-controlled text).
const MAX_TARGET_CHARS: usize = 256;

/// Maps with an entry per local workload: foldhash rather than SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

#[derive(Default)]
struct ExportIndex {
    global: HashSet<ServiceRef>,
    /// Local service name (`ns/hostname`, also its `services` key) → the Service it is.
    services: FastMap<Arc<str>, ServiceRef>,
    /// Local service key → exported key, for global services present locally.
    renamed: FastMap<Arc<str>, Arc<str>>,
    /// Local service name → the exported name it currently produces.
    exported_as: FastMap<Arc<str>, Arc<str>>,
    /// Local service key → workloads listing it.
    backing: FastMap<Arc<str>, HalfEmptySet<Arc<str>>>,
    /// Workload uid → its service keys.
    services_of: HalfEmptyMap<Arc<str>, Vec<Arc<str>>>,
    /// Workloads the export views hold (they back a global service). A workload that
    /// neither is nor becomes exported costs no export work and no view write.
    exported_workloads: HalfEmptySet<Arc<str>>,
    /// Waypoint Service (local name) → the exported resources whose references to it
    /// are honoured. A waypoint with users is exported even when it is not global.
    waypoint_users: FastMap<Arc<str>, FastSet<Arc<str>>>,
    /// Exported resource → the waypoints it uses (keys of `waypoint_users`).
    waypoints_of: FastMap<Arc<str>, Vec<Arc<str>>>,
    /// Referenced target (`ns/hostname`, `network/IP`) → resources naming it, resolved
    /// or not: recomputed when a Service by that name or VIP changes.
    waiters: FastMap<Arc<str>, FastSet<Arc<str>>>,
    /// Resource → its referenced targets (keys of `waiters`).
    targets_of: FastMap<Arc<str>, Vec<Arc<str>>>,
    /// Resource → the references its exported forms lack.
    dropped: BTreeMap<Arc<str>, Vec<DroppedWaypoint>>,
    /// Waypoints whose users went from none to some or back, to recompute.
    flipped: Vec<Arc<str>>,
}

/// How one reference is exported.
enum RefPlan {
    /// Rewrite to this waypoint (local Service name, namespace, exported hostname).
    Retarget(Arc<str>, String, String),
    Drop(WaypointDrop, String),
}

/// Builds and holds the export views.
pub struct Exporter {
    cluster: String,
    network: String,
    gateways: [Option<GatewayTarget>; 3],
    views: [Arc<View>; 3],
    index: Mutex<ExportIndex>,
    ready: AtomicBool,
    /// Whether a configured peer is on another network (else `no_gateway` is not
    /// reported: no peer would read the multi-network forms).
    multi_network_peers: bool,
}

impl Exporter {
    pub fn new(config: &FederationConfig) -> Exporter {
        Exporter {
            cluster: config.cluster.clone(),
            network: config.network.clone(),
            gateways: ExportFlavor::ALL.map(|f| config.gateway_for(f)),
            views: ExportFlavor::ALL.map(|f| View::new(f.label())),
            index: Mutex::new(ExportIndex {
                global: config.global_services.iter().cloned().collect(),
                ..Default::default()
            }),
            ready: AtomicBool::new(false),
            multi_network_peers: config.peers.iter().any(|p| !p.flat),
        }
    }

    /// Waypoint references the export currently leaves out, by resource.
    pub fn dropped_waypoints(&self) -> Vec<DroppedWaypoint> {
        self.lock().dropped.values().flatten().cloned().collect()
    }

    pub fn view(&self, flavor: ExportFlavor) -> &Arc<View> {
        &self.views[flavor.index()]
    }

    /// Whether the local upstream has completed its first full sync (export may be served).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!("federation: local upstream synced; export view is served to peers");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ExportIndex> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The exported key of a local service key, if that service is global.
    pub fn exported_key(&self, local_key: &str) -> Option<Arc<str>> {
        self.lock().renamed.get(local_key).cloned()
    }

    /// The exported keys of the given local service keys (in order, global ones only).
    pub fn exported_keys(&self, local_keys: &[Arc<str>]) -> Vec<(Arc<str>, Arc<str>)> {
        let index = self.lock();
        local_keys
            .iter()
            .filter_map(|k| {
                index
                    .renamed
                    .get(&**k)
                    .map(|g| (Arc::clone(k), Arc::clone(g)))
            })
            .collect()
    }

    /// Replaces the set of global services and recomputes the services whose global-ness
    /// changed (and their workloads) from `local` (the local cluster's committed state).
    pub fn set_global_services(
        &self,
        global: impl IntoIterator<Item = ServiceRef>,
        local: &ViewState,
    ) -> ExportChange {
        let names: Vec<Arc<str>> = {
            let mut index = self.lock();
            let new: HashSet<ServiceRef> = global.into_iter().collect();
            let changed: HashSet<&ServiceRef> = new.symmetric_difference(&index.global).collect();
            let names = index
                .services
                .iter()
                .filter(|(_, s)| changed.contains(s))
                .map(|(n, _)| Arc::clone(n))
                .collect();
            index.global = new;
            names
        };
        self.apply_local_change(local, ResourceType::Address, &names, true)
    }

    /// Follows a change of the local cluster's resources `names` of `kind`; `local` is
    /// the local cluster's state including that change.
    pub fn on_local_change(
        &self,
        local: &ViewState,
        kind: ResourceType,
        names: &[Arc<str>],
    ) -> ExportChange {
        self.apply_local_change(local, kind, names, false)
    }

    /// [`Exporter::on_local_change`]; `global_changed`: the global-ness of the services
    /// among `names` changed (their workloads follow their own references now, or no
    /// longer).
    fn apply_local_change(
        &self,
        local: &ViewState,
        kind: ResourceType,
        names: &[Arc<str>],
        global_changed: bool,
    ) -> ExportChange {
        let mut change = ExportChange::default();
        if kind != ResourceType::Address {
            return change;
        }
        let mut pending_services: BTreeSet<Arc<str>> = BTreeSet::new();
        let mut pending_workloads: BTreeSet<Arc<str>> = BTreeSet::new();
        let mut index = self.lock();
        // This ends up about the local view's size: when that view is already whole (a
        // resync, a sync committed at once), sizing it once skips rehashing every entry
        // at each doubling.
        let expected = local.len(kind);
        index.services_of.size_for(expected);
        for name in names {
            match local.get(kind, name).map(|r| &*r.summary) {
                Some(Summary::Service(s)) => {
                    let service = ServiceRef {
                        namespace: s.namespace.clone(),
                        name: s.name.clone(),
                    };
                    index.services.insert(Arc::clone(name), service);
                    if refresh_key(&mut index, name) || global_changed {
                        push_backers(&index, name, &mut pending_workloads);
                    }
                    pending_services.insert(Arc::clone(name));
                    // Resources naming this Service (by name or VIP) resolve differently now.
                    let mut keys: Vec<&str> = vec![&**name];
                    keys.extend(s.address_keys.iter().map(|k| &**k));
                    push_waiters(&index, &keys, &mut pending_services, &mut pending_workloads);
                }
                Some(Summary::Workload(w)) => {
                    // Service keys are interned: one copy, shared with the summaries.
                    let keys: Vec<Arc<str>> = w.services.clone();
                    unindex_workload(&mut index, name);
                    let exportable = keys.iter().any(|k| index.renamed.contains_key(k));
                    for k in &keys {
                        index
                            .backing
                            .entry(Arc::clone(k))
                            .or_default()
                            .insert(Arc::clone(name));
                    }
                    index.services_of.insert(Arc::clone(name), keys);
                    if exportable || index.exported_workloads.contains(name) {
                        pending_workloads.insert(Arc::clone(name));
                    }
                }
                Some(Summary::Authorization(_)) => {}
                None => {
                    if index.services.remove(name).is_some() {
                        if index.renamed.remove(name).is_some() {
                            push_backers(&index, name, &mut pending_workloads);
                        }
                        pending_services.insert(Arc::clone(name));
                        push_waiters(
                            &index,
                            &[&**name],
                            &mut pending_services,
                            &mut pending_workloads,
                        );
                        if let Some(users) = index.waypoint_users.get(name) {
                            for u in users {
                                if index.services.contains_key(u) {
                                    pending_services.insert(Arc::clone(u));
                                } else {
                                    pending_workloads.insert(Arc::clone(u));
                                }
                            }
                        }
                    } else if index.services_of.contains_key(name) {
                        unindex_workload(&mut index, name);
                        if index.exported_workloads.contains(name) {
                            pending_workloads.insert(Arc::clone(name));
                        }
                    }
                }
            }
        }
        // Exported forms by name (`None`: removed); the last computation of a name wins.
        let mut out: BTreeMap<Arc<str>, Option<[Arc<Resource>; 3]>> = BTreeMap::new();
        // Services first, then workloads, until no waypoint gained or lost its users
        // (only references of resources exported in their own right count, so this ends
        // after at most one more round).
        while !pending_services.is_empty() || !pending_workloads.is_empty() {
            while let Some(name) = pending_services.pop_first() {
                let exported = local
                    .get(kind, &name)
                    .filter(|_| index.renamed.contains_key(&name))
                    .and_then(|r| self.export_service(&mut index, local, r));
                if exported.is_none() {
                    self.forget_refs(&mut index, &name);
                }
                let old = match &exported {
                    Some([flat, ..]) => index
                        .exported_as
                        .insert(Arc::clone(&name), Arc::clone(&flat.name)),
                    None => index.exported_as.remove(&name),
                };
                if let Some(old) = old
                    && exported.as_ref().is_none_or(|[flat, ..]| flat.name != old)
                {
                    change.services.insert(Arc::clone(&old));
                    out.insert(old, None);
                }
                if let Some(forms) = exported {
                    change.services.insert(Arc::clone(&forms[0].name));
                    out.insert(Arc::clone(&forms[0].name), Some(forms));
                }
                // A waypoint whose users came or went is (no longer) exported: its key and
                // its workloads follow.
                for w in std::mem::take(&mut index.flipped) {
                    if refresh_key(&mut index, &w) {
                        push_backers(&index, &w, &mut pending_workloads);
                    }
                    pending_services.insert(w);
                }
            }
            while let Some(uid) = pending_workloads.pop_first() {
                change.workloads.insert(Arc::clone(&uid));
                let exported = local
                    .get(kind, &uid)
                    .and_then(|r| self.export_workload(&mut index, local, r));
                match exported {
                    Some(forms) => {
                        index.exported_workloads.insert(Arc::clone(&uid));
                        out.insert(uid, Some(forms));
                    }
                    None => {
                        self.forget_refs(&mut index, &uid);
                        if index.exported_workloads.remove(&uid) {
                            out.insert(uid, None);
                        }
                    }
                }
                for w in std::mem::take(&mut index.flipped) {
                    if refresh_key(&mut index, &w) {
                        push_backers(&index, &w, &mut pending_workloads);
                    }
                    pending_services.insert(w);
                }
            }
        }
        let counts = drop_counts(&index);
        drop(index);
        for reason in WaypointDrop::ALL {
            metrics::gauge!("peerd_federation_waypoint_references_dropped", "reason" => reason.as_str())
                .set(counts[reason as usize] as f64);
        }
        let mut upserts: [Vec<Arc<Resource>>; 3] = Default::default();
        let mut removals: Vec<Arc<str>> = Vec::new();
        for (name, forms) in out {
            match forms {
                Some(forms) => {
                    for (u, r) in upserts.iter_mut().zip(forms) {
                        u.push(r);
                    }
                }
                None => removals.push(name),
            }
        }
        for (view, ups) in self.views.iter().zip(upserts) {
            view.apply(kind, ups, removals.iter().cloned());
        }
        change
    }

    /// Whether `name`'s own waypoint references are followed: it is a global service,
    /// or a workload backing one (not something exported only as a waypoint).
    fn follows_refs(index: &ExportIndex, r: &Resource) -> bool {
        match &*r.summary {
            Summary::Service(_) => index
                .services
                .get(&r.name)
                .is_some_and(|s| index.global.contains(s)),
            Summary::Workload(w) => w.services.iter().any(|k| {
                index
                    .services
                    .get(&**k)
                    .is_some_and(|s| index.global.contains(s))
            }),
            Summary::Authorization(_) => false,
        }
    }

    /// How each reference of `r` is exported, for a form with (`reachable`) or without
    /// a way to the waypoint's pods.
    fn plan_ref(
        &self,
        index: &ExportIndex,
        local: &ViewState,
        follows: bool,
        reachable: bool,
        gateway: &[u8],
    ) -> (Arc<str>, RefPlan) {
        let (target, resolved) = resolve_target(index, local, gateway);
        let plan = match resolved {
            _ if !follows => RefPlan::Drop(WaypointDrop::WaypointChain, target.to_string()),
            None => RefPlan::Drop(WaypointDrop::UnknownService, target.to_string()),
            Some(_) if !reachable => RefPlan::Drop(WaypointDrop::NoGateway, target.to_string()),
            Some((name, service)) => RefPlan::Retarget(
                name,
                service.namespace.clone(),
                global_hostname(&service.namespace, &service.name),
            ),
        };
        (target, plan)
    }

    /// Records what `name`'s flat form references: its targets (for waiters), the
    /// waypoints it uses (their users), and the drops of every form.
    fn record_refs(
        &self,
        index: &mut ExportIndex,
        name: &Arc<str>,
        targets: Vec<Arc<str>>,
        used: Vec<Arc<str>>,
        mut dropped: Vec<DroppedWaypoint>,
    ) {
        set_links(&mut index.waiters, &mut index.targets_of, name, targets);
        let before: Vec<Arc<str>> = index.waypoints_of.get(name).cloned().unwrap_or_default();
        let mut used = used;
        used.sort();
        used.dedup();
        for w in &before {
            if !used.contains(w)
                && let Some(set) = index.waypoint_users.get_mut(w)
            {
                set.remove(name);
                if set.is_empty() {
                    index.waypoint_users.remove(w);
                    index.flipped.push(Arc::clone(w));
                }
            }
        }
        for w in &used {
            let set = index.waypoint_users.entry(Arc::clone(w)).or_default();
            if set.is_empty() {
                index.flipped.push(Arc::clone(w));
            }
            set.insert(Arc::clone(name));
        }
        if used.is_empty() {
            index.waypoints_of.remove(name);
        } else {
            index.waypoints_of.insert(Arc::clone(name), used);
        }
        dropped.sort_by(|a, b| (a.reason, &a.target).cmp(&(b.reason, &b.target)));
        dropped.dedup();
        if dropped.is_empty() {
            index.dropped.remove(name);
        } else {
            index.dropped.insert(Arc::clone(name), dropped);
        }
    }

    /// `name` is no longer exported: it uses no waypoint and loses nothing.
    fn forget_refs(&self, index: &mut ExportIndex, name: &Arc<str>) {
        if index.targets_of.contains_key(name) || index.waypoints_of.contains_key(name) {
            self.record_refs(index, name, Vec::new(), Vec::new(), Vec::new());
        }
        index.dropped.remove(name);
    }

    /// The exported forms (one per flavor) of a global service or of a waypoint in use:
    /// hostname renamed, waypoint references rewritten or dropped, everything else kept.
    fn export_service(
        &self,
        index: &mut ExportIndex,
        local: &ViewState,
        r: &Resource,
    ) -> Option<[Arc<Resource>; 3]> {
        let s = r.as_service()?;
        let hostname = global_hostname(&s.namespace, &s.name);
        let follows = Self::follows_refs(index, r);
        let mut refs = RefRecord::default();
        let mut forms: Vec<Arc<Resource>> = Vec::with_capacity(3);
        // (reachable, form): a form depends only on whether the waypoint is reachable.
        let mut built: Vec<(bool, Arc<Resource>)> = Vec::with_capacity(2);
        for (flavor, gateway) in ExportFlavor::ALL.iter().zip(self.gateways) {
            let reachable = !s.has_waypoint || *flavor == ExportFlavor::Flat || gateway.is_some();
            if let Some((_, form)) = built.iter().find(|(r, _)| *r == reachable) {
                forms.push(Arc::clone(form));
                continue;
            }
            let first = built.is_empty();
            let edited = wire::edit_service(&r.body, |e| {
                e.set_hostname(&hostname);
                if !s.has_waypoint {
                    return Ok(());
                }
                if let Some(gateway) = e.waypoint()? {
                    let (target, plan) = self.plan_ref(index, local, follows, reachable, &gateway);
                    let retargeted = refs.apply(first, &r.name, target, plan, |ns, host| {
                        wire::retarget_gateway(&gateway, ns, host)
                    })?;
                    e.set_waypoint(retargeted.as_deref());
                }
                e.rewrite_weighted_waypoints(|entry| {
                    let destination = WeightedWaypoint::decode(entry)
                        .ok()
                        .and_then(|w| w.destination)
                        .unwrap_or_default()
                        .encode_to_vec();
                    let (target, plan) =
                        self.plan_ref(index, local, follows, reachable, &destination);
                    let retargeted = refs.apply(first, &r.name, target, plan, |ns, host| {
                        wire::retarget_weighted_waypoint(entry, ns, host)
                    })?;
                    Ok(retargeted.map_or(Rewrite::Drop, Rewrite::Replace))
                })?;
                Ok(())
            });
            match edited
                .map_err(|e| e.to_string())
                .and_then(|b| r.with_body(b).map_err(|e| e.to_string()))
            {
                Ok(out) => {
                    let out = Arc::new(out);
                    built.push((reachable, Arc::clone(&out)));
                    forms.push(out);
                }
                Err(e) => {
                    tracing::warn!(service = %r.name, error = %e, "federation: cannot export service; skipped");
                    return None;
                }
            }
        }
        self.finish_refs(index, &r.name, refs);
        forms.try_into().ok()
    }

    /// The exported forms (one per flavor) of a workload, or `None` if it backs no
    /// exported service.
    fn export_workload(
        &self,
        index: &mut ExportIndex,
        local: &ViewState,
        r: &Resource,
    ) -> Option<[Arc<Resource>; 3]> {
        let w = r.as_workload()?;
        if !w.services.iter().any(|k| index.renamed.contains_key(&**k)) {
            return None;
        }
        let follows = w.has_waypoint && Self::follows_refs(index, r);
        let mut refs = RefRecord::default();
        let mut out: Vec<Arc<Resource>> = Vec::with_capacity(3);
        for (i, (flavor, gateway)) in ExportFlavor::ALL.iter().zip(self.gateways).enumerate() {
            let gateway = match (flavor, gateway) {
                (ExportFlavor::Flat, _) => None,
                (_, Some(g)) => Some(g),
                // A multi-network peer with no gateway configured cannot reach pod IPs;
                // serve the flat form and say so once per workload change.
                (_, None) => {
                    tracing::debug!(workload = %r.name, "federation: no east-west gateway configured; multi-network export has no network_gateway");
                    None
                }
            };
            let reachable = *flavor == ExportFlavor::Flat || gateway.is_some();
            let body = wire::edit_workload(&r.body, |e| {
                e.set_cluster_id(&self.cluster).set_network(&self.network);
                e.rewrite_service_keys(|key| index.renamed.get(key).map(|g| g.to_string()))?;
                match gateway {
                    Some(g) => e.set_network_gateway(&wire::gateway_address(
                        &self.network,
                        g.address,
                        u32::from(g.hbone_port),
                    )),
                    None => e.clear_network_gateway(),
                };
                if w.has_waypoint
                    && let Some(waypoint) = e.waypoint()?
                {
                    let (target, plan) = self.plan_ref(index, local, follows, reachable, &waypoint);
                    let retargeted = refs.apply(i == 0, &r.name, target, plan, |ns, host| {
                        wire::retarget_gateway(&waypoint, ns, host)
                    })?;
                    e.set_waypoint(retargeted.as_deref());
                }
                Ok(())
            })
            .map_err(|e| e.to_string())
            .and_then(|body| r.with_body(body).map_err(|e| e.to_string()));
            match body {
                Ok(res) => out.push(Arc::new(res)),
                Err(e) => {
                    tracing::warn!(workload = %r.name, error = %e, "federation: cannot export workload; skipped");
                    return None;
                }
            }
        }
        self.finish_refs(index, &r.name, refs);
        out.try_into().ok()
    }

    /// Stores what one export computation found about `name`'s references.
    fn finish_refs(&self, index: &mut ExportIndex, name: &Arc<str>, refs: RefRecord) {
        let RefRecord {
            targets,
            used,
            mut dropped,
        } = refs;
        if !self.multi_network_peers {
            dropped.retain(|d| d.reason != WaypointDrop::NoGateway);
        }
        if targets.is_empty()
            && !index.targets_of.contains_key(name)
            && !index.dropped.contains_key(name)
            && !index.waypoints_of.contains_key(name)
        {
            return;
        }
        self.record_refs(index, name, targets, used, dropped);
    }
}

/// What the forms of one resource reference: targets and used waypoints of the first
/// (flat) form, drops of every form.
#[derive(Default)]
struct RefRecord {
    targets: Vec<Arc<str>>,
    used: Vec<Arc<str>>,
    dropped: Vec<DroppedWaypoint>,
}

impl RefRecord {
    /// Applies `plan` to one reference: the retargeted bytes (via `retarget`), or `None`
    /// when dropped. `first`: this is the flat form (targets and users come from it).
    fn apply(
        &mut self,
        first: bool,
        resource: &Arc<str>,
        target: Arc<str>,
        plan: RefPlan,
        retarget: impl FnOnce(&str, &str) -> Result<Vec<u8>, WireError>,
    ) -> Result<Option<Vec<u8>>, WireError> {
        if first {
            self.targets.push(target);
        }
        match plan {
            RefPlan::Retarget(name, namespace, hostname) => {
                if first {
                    self.used.push(name);
                }
                retarget(&namespace, &hostname).map(Some)
            }
            RefPlan::Drop(reason, target) => {
                self.dropped.push(DroppedWaypoint {
                    resource: resource.to_string(),
                    reason,
                    target,
                });
                Ok(None)
            }
        }
    }
}

/// The target a `GatewayAddress` names (`ns/hostname` or `network/IP`, bounded) and the
/// local Service it resolves to, if any.
fn resolve_target(
    index: &ExportIndex,
    local: &ViewState,
    gateway: &[u8],
) -> (Arc<str>, Option<(Arc<str>, ServiceRef)>) {
    let bounded =
        |s: String| -> Arc<str> { Arc::from(s.chars().take(MAX_TARGET_CHARS).collect::<String>()) };
    let destination = GatewayAddress::decode(gateway)
        .ok()
        .and_then(|g| g.destination);
    match destination {
        Some(gateway_address::Destination::Hostname(h)) => {
            let key = format!("{}/{}", h.namespace, h.hostname);
            let found = index
                .services
                .get_key_value(key.as_str())
                .map(|(n, s)| (Arc::clone(n), s.clone()));
            (bounded(key), found)
        }
        Some(gateway_address::Destination::Address(a)) => {
            match ip_from_bytes("GatewayAddress.address", &a.address) {
                Ok(ip) => {
                    let key = address_key(&a.network, &ip);
                    let found = local
                        .indexed_address_owner(&key)
                        .filter(|r| r.as_service().is_some())
                        .and_then(|r| index.services.get_key_value(&*r.name))
                        .map(|(n, s)| (Arc::clone(n), s.clone()));
                    (bounded(key.to_string()), found)
                }
                Err(_) => (Arc::from("<invalid address>"), None),
            }
        }
        None => (Arc::from("<no destination>"), None),
    }
}

/// Recomputes whether local Service `name` is exported (global, or a waypoint in use);
/// true when its exported key changed.
fn refresh_key(index: &mut ExportIndex, name: &Arc<str>) -> bool {
    let new_key: Option<Arc<str>> = index.services.get(name).and_then(|s| {
        let in_use = index
            .waypoint_users
            .get(name)
            .is_some_and(|u| !u.is_empty());
        (index.global.contains(s) || in_use).then(|| Arc::from(global_key(&s.namespace, &s.name)))
    });
    let old_key = match &new_key {
        Some(k) => index.renamed.insert(Arc::clone(name), Arc::clone(k)),
        None => index.renamed.remove(name),
    };
    old_key != new_key
}

fn push_backers(index: &ExportIndex, service: &str, pending: &mut BTreeSet<Arc<str>>) {
    if let Some(backers) = index.backing.get(service) {
        pending.extend(backers.iter().cloned());
    }
}

/// Queues the resources that reference any of `keys` (a Service's name and VIPs).
fn push_waiters(
    index: &ExportIndex,
    keys: &[&str],
    services: &mut BTreeSet<Arc<str>>,
    workloads: &mut BTreeSet<Arc<str>>,
) {
    if index.waiters.is_empty() {
        return;
    }
    for key in keys {
        for who in index.waiters.get(*key).into_iter().flatten() {
            if index.services.contains_key(who) {
                services.insert(Arc::clone(who));
            } else {
                workloads.insert(Arc::clone(who));
            }
        }
    }
}

/// Replaces `name`'s entries in a many-to-many link (`forward`: key → names,
/// `backward`: name → keys).
fn set_links(
    forward: &mut FastMap<Arc<str>, FastSet<Arc<str>>>,
    backward: &mut FastMap<Arc<str>, Vec<Arc<str>>>,
    name: &Arc<str>,
    mut keys: Vec<Arc<str>>,
) {
    keys.sort();
    keys.dedup();
    for old in backward.remove(name).unwrap_or_default() {
        if let Some(set) = forward.get_mut(&old) {
            set.remove(name);
            if set.is_empty() {
                forward.remove(&old);
            }
        }
    }
    for k in &keys {
        forward
            .entry(Arc::clone(k))
            .or_default()
            .insert(Arc::clone(name));
    }
    if !keys.is_empty() {
        backward.insert(Arc::clone(name), keys);
    }
}

/// Current dropped references per [`WaypointDrop`] (indexed by its discriminant).
fn drop_counts(index: &ExportIndex) -> [usize; 3] {
    let mut counts = [0usize; 3];
    for d in index.dropped.values().flatten() {
        counts[d.reason as usize] += 1;
    }
    counts
}

fn unindex_workload(index: &mut ExportIndex, uid: &Arc<str>) {
    if let Some(keys) = index.services_of.remove(uid) {
        for k in keys {
            if let Some(set) = index.backing.get_mut(&k) {
                set.remove(uid);
                if set.is_empty() {
                    index.backing.remove(&k);
                }
            }
        }
    }
}
