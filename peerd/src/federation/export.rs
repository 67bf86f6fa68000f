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
//! It must never export anything before the local upstream has synced (the [`Exporter::is_ready`]
//! gate: a restarted peerd would otherwise tell its peers to remove everything), never
//! export a non-global service or a workload backing none, and never change resource
//! bytes except through wire edits.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::naming::{global_hostname, global_key};
use super::settings::{ExportFlavor, FederationConfig, GatewayTarget};
use crate::config::ServiceRef;
use crate::view::{View, ViewState};
use crate::xds::resource::{Resource, Summary};
use crate::xds::types::ResourceType;
use crate::xds::wire;

/// Names whose merged form an export change affects (for the merge of the local cluster).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportChange {
    /// Local workloads whose set of global service keys may have changed.
    pub workloads: BTreeSet<Arc<str>>,
    /// Exported service names (`ns/<svc>.<ns>.mesh.internal`) added, changed or removed.
    pub services: BTreeSet<Arc<str>>,
}

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
    backing: FastMap<Arc<str>, FastSet<Arc<str>>>,
    /// Workload uid → its service keys.
    services_of: FastMap<Arc<str>, Vec<Arc<str>>>,
    /// Workloads the export views hold (they back a global service). A workload that
    /// neither is nor becomes exported costs no export work and no view write.
    exported_workloads: FastSet<Arc<str>>,
}

/// Builds and holds the export views.
pub struct Exporter {
    cluster: String,
    network: String,
    gateways: [Option<GatewayTarget>; 3],
    views: [Arc<View>; 3],
    index: Mutex<ExportIndex>,
    ready: AtomicBool,
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
        }
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
        self.on_local_change(local, ResourceType::Address, &names)
    }

    /// Follows a change of the local cluster's resources `names` of `kind`; `local` is
    /// the local cluster's state including that change.
    pub fn on_local_change(
        &self,
        local: &ViewState,
        kind: ResourceType,
        names: &[Arc<str>],
    ) -> ExportChange {
        let mut change = ExportChange::default();
        if kind != ResourceType::Address {
            return change;
        }
        let mut touched_services: BTreeSet<Arc<str>> = BTreeSet::new();
        let mut index = self.lock();
        // This ends up about the local view's size: when that view is already whole (a
        // resync, a sync committed at once), sizing it once skips rehashing every entry
        // at each doubling.
        let expected = local.len(kind);
        let held = index.services_of.len();
        index.services_of.reserve(expected.saturating_sub(held));
        for name in names {
            match local.get(kind, name).map(|r| &*r.summary) {
                Some(Summary::Service(s)) => {
                    let service = ServiceRef {
                        namespace: s.namespace.clone(),
                        name: s.name.clone(),
                    };
                    let old_key = index.renamed.get(name).cloned();
                    let new_key: Option<Arc<str>> = index
                        .global
                        .contains(&service)
                        .then(|| Arc::from(global_key(&service.namespace, &service.name)));
                    index.services.insert(Arc::clone(name), service);
                    match &new_key {
                        Some(k) => index.renamed.insert(Arc::clone(name), Arc::clone(k)),
                        None => index.renamed.remove(name),
                    };
                    if old_key != new_key
                        && let Some(backers) = index.backing.get(name)
                    {
                        change.workloads.extend(backers.iter().cloned());
                    }
                    touched_services.insert(Arc::clone(name));
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
                        change.workloads.insert(Arc::clone(name));
                    }
                }
                Some(Summary::Authorization(_)) => {}
                None => {
                    if index.services.remove(name).is_some() {
                        if index.renamed.remove(name).is_some()
                            && let Some(backers) = index.backing.get(name)
                        {
                            change.workloads.extend(backers.iter().cloned());
                        }
                        touched_services.insert(Arc::clone(name));
                    } else if index.services_of.contains_key(name) {
                        unindex_workload(&mut index, name);
                        if index.exported_workloads.contains(name) {
                            change.workloads.insert(Arc::clone(name));
                        }
                    }
                }
            }
        }
        let mut upserts: [Vec<Arc<Resource>>; 3] = Default::default();
        let mut removals: Vec<Arc<str>> = Vec::new();
        for name in &touched_services {
            let exported = local
                .get(kind, name)
                .filter(|_| index.renamed.contains_key(name))
                .and_then(|r| self.export_service(r));
            let old = match &exported {
                Some(r) => index
                    .exported_as
                    .insert(Arc::clone(name), Arc::clone(&r.name)),
                None => index.exported_as.remove(name),
            };
            if let Some(old) = old
                && exported.as_ref().is_none_or(|r| r.name != old)
            {
                change.services.insert(Arc::clone(&old));
                removals.push(old);
            }
            if let Some(r) = exported {
                change.services.insert(Arc::clone(&r.name));
                for u in &mut upserts {
                    u.push(Arc::clone(&r));
                }
            }
        }
        for uid in &change.workloads {
            let exported = local
                .get(kind, uid)
                .and_then(|r| self.export_workload(&index, r));
            match exported {
                Some(forms) => {
                    index.exported_workloads.insert(Arc::clone(uid));
                    for (u, r) in upserts.iter_mut().zip(forms) {
                        u.push(r);
                    }
                }
                None => {
                    if index.exported_workloads.remove(uid) {
                        removals.push(Arc::clone(uid));
                    }
                }
            }
        }
        drop(index);
        for (view, ups) in self.views.iter().zip(upserts) {
            view.apply(kind, ups, removals.iter().cloned());
        }
        change
    }

    /// The exported form of a global service: hostname renamed, everything else kept.
    fn export_service(&self, r: &Resource) -> Option<Arc<Resource>> {
        let s = r.as_service()?;
        let hostname = global_hostname(&s.namespace, &s.name);
        let edited = wire::edit_service(&r.body, |e| {
            e.set_hostname(&hostname);
            Ok(())
        });
        match edited
            .map_err(|e| e.to_string())
            .and_then(|b| r.with_body(b).map_err(|e| e.to_string()))
        {
            Ok(out) => Some(Arc::new(out)),
            Err(e) => {
                tracing::warn!(service = %r.name, error = %e, "federation: cannot export service; skipped");
                None
            }
        }
    }

    /// The exported forms (one per flavor) of a workload, or `None` if it backs no
    /// global service.
    fn export_workload(&self, index: &ExportIndex, r: &Resource) -> Option<[Arc<Resource>; 3]> {
        let w = r.as_workload()?;
        if !w.services.iter().any(|k| index.renamed.contains_key(&**k)) {
            return None;
        }
        let build = |gateway: Option<GatewayTarget>| -> Result<Arc<Resource>, String> {
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
                Ok(())
            })
            .map_err(|e| e.to_string())?;
            r.with_body(body).map(Arc::new).map_err(|e| e.to_string())
        };
        let mut out: Vec<Arc<Resource>> = Vec::with_capacity(3);
        for (flavor, gateway) in ExportFlavor::ALL.iter().zip(self.gateways) {
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
            match build(gateway) {
                Ok(res) => out.push(res),
                Err(e) => {
                    tracing::warn!(workload = %r.name, error = %e, "federation: cannot export workload; skipped");
                    return None;
                }
            }
        }
        out.try_into().ok()
    }
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
