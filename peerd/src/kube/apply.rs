//! The flat-sync **executor**: brings the WorkloadEntries and ServiceEntries of the control
//! namespace to the [`DesiredObjects`] computed by `flatsync.rs`.
//!
//! It owns the writes and the garbage collection rules (docs/design.md §7.3, §7.4):
//! - create (field manager `peerd`) for a name not seen yet, so a foreign object that
//!   appeared meanwhile makes it fail (409) rather than be merged into; then server-side
//!   apply with field manager `peerd` (forced: a hand edit of a field peerd sets is
//!   reconciled back); and **no request at all** for an object whose observed
//!   labels, annotations and spec already contain what peerd wants;
//! - observed state comes from reflectors over the whole control namespace (so a foreign
//!   object with a colliding name is seen), patched with the objects peerd's own writes
//!   returned until the watch catches up, so a lagging watch never causes a second write;
//! - GC deletes only objects labelled `app.kubernetes.io/managed-by=peerd` that are not
//!   desired **and** whose source peer has completed a full sync, or whose peer is absent
//!   from the input (its Gateway was deleted: an operator's explicit act, so at once; a
//!   peer that is merely down stays in the input, not synced). ServiceEntries (shared by
//!   peers) are collected only when every peer in the input is synced;
//! - a foreign object (without peerd's label) with a colliding name is never written: it is
//!   reported; a create that conflicts with a name the watch does not show yet is read
//!   back first, so peerd's own object behind a lagging watch is not reported as foreign;
//! - every write first checks [`Leadership`]: a replica that lost the lease stops at once.
//!
//! It must never delete or modify an object without peerd's label.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::flatsync::DesiredObjects;
use super::gateways::spawn_tracked_reflector;
use super::leader::Leadership;
use super::own_writes::{OwnWrites, rv_of};
use super::types::{
    ANNOTATION_PEERED_WORKLOAD_UID, FIELD_MANAGER, LABEL_MANAGED_BY, LABEL_SOURCE_CLUSTER,
    MANAGED_BY_PEERD, ServiceEntry, WorkloadEntry,
};
use crate::half_empty_map::HalfEmptyMap;

/// Sync state of one configured peer (every peer with a Gateway, connected or not, whose
/// last state is still kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSyncState {
    pub cluster: String,
    /// The peer's current stream has delivered a complete response for every type
    /// (`Origin::is_fully_synced`). False while connecting, reconnecting or disconnected.
    pub fully_synced: bool,
}

/// One pass's input: the desired objects and the state of every configured peer.
#[derive(Debug, Clone, Default)]
pub struct SyncInput {
    pub desired: DesiredObjects,
    pub peers: Vec<PeerSyncState>,
}

/// A peerd-generated name already taken by an object peerd does not manage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignObject {
    pub kind: &'static str,
    pub name: String,
    /// Its `app.kubernetes.io/managed-by` label, if any.
    pub managed_by: Option<String>,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// `Kind/name` of each object applied.
    pub applied: Vec<String>,
    pub deleted: Vec<String>,
    pub unchanged: usize,
    /// Not desired but kept: `(Kind/name, why)` (peer not fully synced).
    pub kept: Vec<(String, String)>,
    pub foreign: Vec<ForeignObject>,
    /// `(Kind/name, error)` of failed writes; retried on the next pass.
    pub errors: Vec<(String, String)>,
    /// The pass stopped because this replica is not (or no longer) the leader.
    pub not_leader: bool,
}

impl SyncReport {
    /// Nothing left to do: no error, no lost leadership.
    pub fn converged(&self) -> bool {
        self.errors.is_empty() && !self.not_leader
    }
}

/// Executor settings.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub control_namespace: String,
    /// How long an own write's result stands in for a watch that has not delivered it yet.
    pub settle: Duration,
}

impl ExecutorConfig {
    pub fn new(control_namespace: &str) -> ExecutorConfig {
        ExecutorConfig {
            control_namespace: control_namespace.to_string(),
            settle: Duration::from_secs(30),
        }
    }
}

/// Observed objects of one kind: the reflector plus peerd's own writes not yet seen by it.
struct Observed<K: Resource<DynamicType = ()> + Clone + 'static> {
    api: Api<K>,
    namespace: String,
    /// Highest resourceVersion the watch has delivered.
    progress: Arc<AtomicU64>,
    store: Store<K>,
    own: OwnWrites<K>,
    /// Per name, the observed version and the desired object last found up to date:
    /// while both are the same, the next pass skips the comparison (it serializes both
    /// objects; at a pass per burst of churn that was every entry twice a second).
    /// One entry per WorkloadEntry, and pod churn renames them: see [`HalfEmptyMap`].
    up_to_date: HalfEmptyMap<String, (u64, Arc<K>)>,
}

impl<K> Observed<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    fn new(api: Api<K>, namespace: String, progress: Arc<AtomicU64>, store: Store<K>) -> Self {
        Observed {
            api,
            namespace,
            progress,
            store,
            own: OwnWrites::default(),
            up_to_date: HalfEmptyMap::default(),
        }
    }

    /// Whether `have` (the observed state of `name`) already carries `want`, remembered
    /// for as long as neither changes (`want` is the same `Arc`, `have` the same version).
    fn is_up_to_date(&mut self, name: &str, have: &K, want: &Arc<K>) -> bool {
        let version = rv_of(have);
        if let Some((seen, desired)) = self.up_to_date.get(name)
            && version != 0
            && *seen == version
            && Arc::ptr_eq(desired, want)
        {
            return true;
        }
        let current = up_to_date(have, want);
        if current && version != 0 {
            self.up_to_date
                .insert(name.to_string(), (version, Arc::clone(want)));
        } else {
            self.up_to_date.remove(name);
        }
        current
    }

    /// The freshest known state of `name` (None: absent).
    fn current(&mut self, name: &str, settle: Duration) -> Option<Arc<K>> {
        let from_watch = watched(&self.store, &self.namespace, name);
        let progress = self.progress.load(Ordering::SeqCst);
        self.own.resolve(name, from_watch, progress, settle)
    }

    /// Names of every object with peerd's managed-by label, watch and own writes merged.
    /// Forgets first the own writes the watch has caught up with.
    fn managed_names(&mut self, settle: Duration) -> BTreeSet<String> {
        let progress = self.progress.load(Ordering::SeqCst);
        let (store, namespace) = (&self.store, &self.namespace);
        self.own.forget_settled(
            |name| watched(store, namespace, name).map(|o| rv_of(&*o)),
            progress,
            settle,
        );
        let mut names: BTreeSet<String> = self
            .store
            .state()
            .iter()
            .map(|o| o.name_any())
            .chain(self.own.written_names().cloned())
            .collect();
        names.retain(|name| {
            self.current(name, settle)
                .is_some_and(|o| is_managed(o.meta()))
        });
        names
    }
}

/// Desired WorkloadEntry name of each pod, by its peered-workload uid.
fn desired_names_by_pod(desired: &BTreeMap<String, Arc<WorkloadEntry>>) -> BTreeMap<&str, &str> {
    desired
        .iter()
        .filter_map(|(name, we)| {
            let uid = we.annotations().get(ANNOTATION_PEERED_WORKLOAD_UID)?;
            Some((uid.as_str(), name.as_str()))
        })
        .collect()
}

/// What the watch holds for `name` in `namespace`.
fn watched<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

fn is_managed(meta: &kube::api::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY_PEERD)
}

/// True when every field of `want` is present with the same value in `have` (objects are
/// compared key by key, everything else exactly). Extra fields in `have` (other owners',
/// server defaults) do not count as a difference.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        _ => have == want,
    }
}

/// True when `observed` already carries `desired`'s labels, annotations and spec.
fn up_to_date<K: Resource + Serialize>(observed: &K, desired: &K) -> bool {
    let (Ok(have), Ok(want)) = (
        serde_json::to_value(observed),
        serde_json::to_value(desired),
    ) else {
        return false;
    };
    ["labels", "annotations"].iter().all(|field| {
        contains(
            &have["metadata"][field],
            want["metadata"].get(*field).unwrap_or(&Value::Null),
        ) || want["metadata"].get(*field).is_none()
    }) && contains(&have["spec"], &want["spec"])
}

/// The executor. One per cluster; only the leader's passes write.
pub struct FlatSyncExecutor {
    config: ExecutorConfig,
    leadership: Leadership,
    workload_entries: Observed<WorkloadEntry>,
    service_entries: Observed<ServiceEntry>,
    /// Notified on every watch event of either kind (a hand edit wakes the loop).
    pub changed: Arc<Notify>,
    /// Source clusters the WorkloadEntry gauges were last set for.
    gauged: BTreeSet<String>,
    _tasks: JoinSet<()>,
}

impl FlatSyncExecutor {
    /// Starts the watches over the control namespace.
    pub fn start(client: Client, config: ExecutorConfig, leadership: Leadership) -> Self {
        let mut tasks = JoinSet::new();
        let changed = Arc::new(Notify::new());
        let ns = config.control_namespace.clone();
        let we_api: Api<WorkloadEntry> = Api::namespaced(client.clone(), &ns);
        let se_api: Api<ServiceEntry> = Api::namespaced(client, &ns);
        let (we_progress, se_progress) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let we_store = spawn_tracked_reflector(
            we_api.clone(),
            watcher::Config::default(),
            changed.clone(),
            we_progress.clone(),
            &mut tasks,
        );
        let se_store = spawn_tracked_reflector(
            se_api.clone(),
            watcher::Config::default(),
            changed.clone(),
            se_progress.clone(),
            &mut tasks,
        );
        FlatSyncExecutor {
            config,
            leadership,
            workload_entries: Observed::new(we_api, ns.clone(), we_progress, we_store),
            service_entries: Observed::new(se_api, ns, se_progress, se_store),
            changed,
            gauged: BTreeSet::new(),
            _tasks: tasks,
        }
    }

    /// Waits until both watches have listed once (a pass before that would see nothing).
    pub async fn ready(&self) -> anyhow::Result<()> {
        self.workload_entries.store.wait_until_ready().await?;
        self.service_entries.store.wait_until_ready().await?;
        Ok(())
    }

    /// One reconcile pass. Call it whenever the input or [`Self::changed`] fires; it does
    /// nothing (no request) when everything is up to date.
    pub async fn sync(&mut self, input: &SyncInput) -> SyncReport {
        let mut report = SyncReport::default();
        if self.ready().await.is_err() {
            report
                .errors
                .push(("watch".to_string(), "watch stores not ready".to_string()));
            return report;
        }
        let settle = self.config.settle;
        let present: BTreeMap<&str, bool> = input
            .peers
            .iter()
            .map(|p| (p.cluster.as_str(), p.fully_synced))
            .collect();

        // Applies first, so a renamed object (new hash) exists before its old name goes.
        if !apply_all(
            &mut self.workload_entries,
            "WorkloadEntry",
            &input.desired.workload_entries,
            settle,
            &self.leadership,
            &mut report,
        )
        .await
            || !apply_all(
                &mut self.service_entries,
                "ServiceEntry",
                &input.desired.service_entries,
                settle,
                &self.leadership,
                &mut report,
            )
            .await
        {
            return report;
        }

        // GC of WorkloadEntries: per source peer, and make before break per pod.
        let replacements = desired_names_by_pod(&input.desired.workload_entries);
        let mut candidates = Vec::new();
        for name in self.workload_entries.managed_names(settle) {
            if input.desired.workload_entries.contains_key(&name) {
                continue;
            }
            let have = self.workload_entries.current(&name, settle);
            let owner = have
                .as_ref()
                .and_then(|o| o.labels().get(LABEL_SOURCE_CLUSTER).cloned())
                .unwrap_or_default();
            // A pod whose entry is renamed (its set of backed services changed) keeps
            // the old entry until the new one is peerd's: a create that did not land (an
            // API error, a foreign object holding the name) must not leave it with none.
            let replacement = have
                .as_ref()
                .and_then(|o| o.annotations().get(ANNOTATION_PEERED_WORKLOAD_UID))
                .and_then(|uid| replacements.get(uid.as_str()))
                .filter(|new| {
                    !self
                        .workload_entries
                        .current(new, settle)
                        .is_some_and(|o| is_managed(o.meta()))
                });
            let verdict = match (present.get(owner.as_str()), replacement) {
                (Some(false), _) => Err(format!("peer {owner} has not completed a full sync")),
                (_, Some(new)) => Err(format!("its replacement {new} is not written yet")),
                (Some(true), None) => Ok(()),
                // The peer's Gateway is gone: removed by an operator, collected now.
                (None, None) => Ok(()),
            };
            match verdict {
                Ok(()) => {
                    tracing::debug!(entry = %name, peer = %owner, "WorkloadEntry no longer desired; collecting it");
                    candidates.push(name);
                }
                Err(why) => report.kept.push((format!("WorkloadEntry/{name}"), why)),
            }
        }
        if !delete_all(
            &mut self.workload_entries,
            "WorkloadEntry",
            candidates,
            settle,
            &self.leadership,
            &mut report,
        )
        .await
        {
            return report;
        }

        // GC of ServiceEntries: shared, so only when every peer's state is settled.
        let settled = input.peers.iter().all(|p| p.fully_synced);
        let mut candidates = Vec::new();
        for name in self.service_entries.managed_names(settle) {
            if input.desired.service_entries.contains_key(&name) {
                continue;
            }
            if settled {
                candidates.push(name);
            } else {
                report.kept.push((
                    format!("ServiceEntry/{name}"),
                    "not every peer has completed a full sync".to_string(),
                ));
            }
        }
        delete_all(
            &mut self.service_entries,
            "ServiceEntry",
            candidates,
            settle,
            &self.leadership,
            &mut report,
        )
        .await;
        report
    }

    /// Per source cluster: (peerd-managed WorkloadEntries, of those not desired any more,
    /// i.e. awaiting GC), from the observed state.
    pub fn workload_entry_counts(
        &mut self,
        desired: &DesiredObjects,
    ) -> BTreeMap<String, (usize, usize)> {
        let settle = self.config.settle;
        let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for name in self.workload_entries.managed_names(settle) {
            let Some(cluster) = self
                .workload_entries
                .current(&name, settle)
                .and_then(|o| o.labels().get(LABEL_SOURCE_CLUSTER).cloned())
            else {
                continue;
            };
            let entry = counts.entry(cluster).or_default();
            entry.0 += 1;
            if !desired.workload_entries.contains_key(&name) {
                entry.1 += 1;
            }
        }
        counts
    }

    /// Sets `peerd_workloadentries_managed` / `_stale` per source cluster (0 for a
    /// cluster that has none left).
    fn export_gauges(&mut self, desired: &DesiredObjects) {
        let counts = self.workload_entry_counts(desired);
        for gone in self.gauged.iter().filter(|c| !counts.contains_key(*c)) {
            metrics::gauge!("peerd_workloadentries_managed", "peer_cluster" => gone.clone())
                .set(0.0);
            metrics::gauge!("peerd_workloadentries_stale", "peer_cluster" => gone.clone()).set(0.0);
        }
        for (cluster, (managed, stale)) in &counts {
            metrics::gauge!("peerd_workloadentries_managed", "peer_cluster" => cluster.clone())
                .set(*managed as f64);
            metrics::gauge!("peerd_workloadentries_stale", "peer_cluster" => cluster.clone())
                .set(*stale as f64);
        }
        self.gauged = counts.into_keys().collect();
    }
}

impl FlatSyncExecutor {
    /// The sync loop: a pass whenever the input changes, a watched object changes (a hand
    /// edit or delete), or `resync` passes; while not leader it only waits for
    /// leadership; failed passes are retried with a capped exponential backoff. Each
    /// report is sent to `reports` when given. Ends when the input sender is dropped.
    pub async fn run(
        mut self,
        mut inputs: tokio::sync::watch::Receiver<Arc<SyncInput>>,
        resync: Duration,
        reports: Option<tokio::sync::mpsc::UnboundedSender<SyncReport>>,
    ) {
        let mut leadership = self.leadership.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            leadership.acquired().await;
            let input = inputs.borrow_and_update().clone();
            let report = self.sync(&input).await;
            if !report.not_leader {
                self.export_gauges(&input.desired);
            }
            let failed = !report.converged();
            if !report.foreign.is_empty() {
                tracing::warn!(objects = ?report.foreign, "generated names taken by objects peerd does not manage; left alone");
            }
            if !report.errors.is_empty() {
                tracing::warn!(errors = ?report.errors, "flat sync writes failed; retrying");
            }
            if let Some(tx) = &reports {
                let _ = tx.send(report);
            }
            let changed = self.changed.clone();
            let wait = if failed { backoff } else { resync };
            tokio::select! {
                result = inputs.changed() => if result.is_err() { return },
                _ = changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = if failed {
                (backoff * 2).min(Duration::from_secs(30))
            } else {
                Duration::from_millis(100)
            };
        }
    }
}

/// Applies every desired object that is not up to date. False when leadership was lost.
async fn apply_all<K>(
    observed: &mut Observed<K>,
    kind: &'static str,
    desired: &BTreeMap<String, Arc<K>>,
    settle: Duration,
    leadership: &Leadership,
    report: &mut SyncReport,
) -> bool
where
    K: Resource<DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let create_params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    // Only names still desired are remembered as up to date.
    observed
        .up_to_date
        .retain(|name, _| desired.contains_key(name));
    for (name, want) in desired {
        let have = observed.current(name, settle);
        let exists = have.is_some();
        if let Some(have) = have {
            if !is_managed(have.meta()) {
                report.foreign.push(ForeignObject {
                    kind,
                    name: name.clone(),
                    managed_by: have.labels().get(LABEL_MANAGED_BY).cloned(),
                });
                continue;
            }
            if observed.is_up_to_date(name, &have, want) {
                report.unchanged += 1;
                continue;
            }
        }
        if !leadership.is_leader() {
            report.not_leader = true;
            return false;
        }
        let mut body = match serde_json::to_value(&**want) {
            Ok(v) => v,
            Err(err) => {
                report
                    .errors
                    .push((format!("{kind}/{name}"), err.to_string()));
                continue;
            }
        };
        // Apply bodies carry no server-owned metadata.
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
        // A name not seen yet is created, not applied: if a foreign object took it
        // meanwhile (the watch lags), creation fails with 409 instead of merging into it.
        let result = if exists {
            observed
                .api
                .patch(name, &params, &Patch::Apply(&body))
                .await
        } else {
            observed.api.create(&create_params, want).await
        };
        match result {
            Ok(obj) => {
                metrics::counter!("peerd_workloadentries_writes_total", "op" => "apply")
                    .increment(1);
                observed.own.applied(name, obj);
                report.applied.push(format!("{kind}/{name}"));
            }
            Err(kube::Error::Api(status)) if !exists && status.code == 409 => {
                // The name exists though neither the watch nor our own writes show it.
                // A lagging watch (relisting after an expiry or API errors) hides our own
                // objects too, so read it before calling it foreign.
                match observed.api.get(name).await {
                    Ok(obj) if is_managed(obj.meta()) => {
                        // Ours (an earlier pass or process); the next pass sees it and
                        // applies what is missing.
                        observed.own.applied(name, obj);
                        report.errors.push((
                            format!("{kind}/{name}"),
                            "exists but the watch has not shown it yet".to_string(),
                        ));
                    }
                    Ok(obj) => report.foreign.push(ForeignObject {
                        kind,
                        name: name.clone(),
                        managed_by: obj.labels().get(LABEL_MANAGED_BY).cloned(),
                    }),
                    Err(err) => report.errors.push((
                        format!("{kind}/{name}"),
                        format!("create conflicted and reading it failed: {err}"),
                    )),
                }
            }
            Err(err) => report
                .errors
                .push((format!("{kind}/{name}"), err.to_string())),
        }
    }
    true
}

/// Deletes `names` (all peerd-managed), each with a precondition on the observed
/// resourceVersion so an object changed meanwhile is left for the next pass.
async fn delete_all<K>(
    observed: &mut Observed<K>,
    kind: &'static str,
    names: Vec<String>,
    settle: Duration,
    leadership: &Leadership,
    report: &mut SyncReport,
) -> bool
where
    K: Resource<DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    for name in names {
        let Some(have) = observed.current(&name, settle) else {
            continue;
        };
        if !is_managed(have.meta()) {
            continue;
        }
        if !leadership.is_leader() {
            report.not_leader = true;
            return false;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: have.meta().resource_version.clone(),
                uid: have.meta().uid.clone(),
            }),
            ..Default::default()
        };
        match observed.api.delete(&name, &params).await {
            Ok(_) => {
                metrics::counter!("peerd_workloadentries_writes_total", "op" => "delete")
                    .increment(1);
                observed.own.deleted(&name, rv_of(&*have));
                report.deleted.push(format!("{kind}/{name}"));
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                observed.own.deleted(&name, rv_of(&*have));
            }
            Err(err) => report
                .errors
                .push((format!("{kind}/{name}"), err.to_string())),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::types::WorkloadEntrySpec;

    fn entry(address: &str, rv: u64) -> WorkloadEntry {
        let spec = WorkloadEntrySpec {
            address: address.to_string(),
            ..Default::default()
        };
        let mut we = WorkloadEntry::new("we", spec);
        we.metadata.resource_version = Some(rv.to_string());
        we
    }

    async fn observed() -> Observed<WorkloadEntry> {
        // No request is made: only the comparison memo is exercised.
        let client = crate::kube::client::connect(
            &crate::kube::client::ClientSource::Url("http://127.0.0.1:9".into()),
            "ns",
        )
        .await
        .unwrap();
        let (store, _writer) = kube::runtime::reflector::store();
        Observed::new(
            Api::namespaced(client, "ns"),
            "ns".into(),
            Arc::new(AtomicU64::new(0)),
            store,
        )
    }

    /// The remembered verdict holds only while the observed version and the desired
    /// `Arc` are both unchanged; any other change compares again.
    #[tokio::test]
    async fn an_up_to_date_verdict_is_reused_only_while_neither_side_changes() {
        let mut observed = observed().await;
        let want = Arc::new(entry("10.0.0.1", 0));
        assert!(observed.is_up_to_date("we", &entry("10.0.0.1", 5), &want));
        assert_eq!(observed.up_to_date.len(), 1);
        // Same version, same Arc: remembered (the object is not even looked at).
        assert!(observed.is_up_to_date("we", &entry("ignored", 5), &want));
        // A hand edit (new version) is compared again and found out of date.
        assert!(!observed.is_up_to_date("we", &entry("10.9.9.9", 6), &want));
        assert!(observed.up_to_date.is_empty());
        // A new desired object with the same content is compared again (and matches).
        let same_content = Arc::new(entry("10.0.0.1", 0));
        assert!(observed.is_up_to_date("we", &entry("10.0.0.1", 7), &same_content));
        let moved = Arc::new(entry("10.0.0.2", 0));
        assert!(!observed.is_up_to_date("we", &entry("10.0.0.1", 7), &moved));
        // An object without a version (never from the API) is never remembered.
        assert!(observed.is_up_to_date("other", &entry("10.0.0.1", 0), &want));
        assert!(!observed.up_to_date.contains_key("other"));
    }
}
