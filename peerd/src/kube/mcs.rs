//! The Multi-Cluster Services API (`multicluster.x-k8s.io/v1alpha1`, KEP-1645) on the
//! Kubernetes side (docs/design.md §5.3):
//!
//! - **ServiceExport → global.** A Service with a `ServiceExport` of the same name and
//!   namespace is global, like one labelled `solo.io/service-scope=global`, unless the
//!   Service is labelled `solo.io/service-scope=local`: the label on the Service itself
//!   wins over a separate export object ([`exported_services`]). A ServiceExport without
//!   a Service makes nothing global that exists: nothing is exported until the Service
//!   appears (the same as a global label on nothing).
//! - **ServiceImport ← imported global services.** When `kubernetes.serviceImports` is on,
//!   the leader keeps one `ServiceImport` (type `ClusterSetIP`, the merged ports, the
//!   clusters exporting it in `status.clusters`) per global service peers export, in the
//!   service's namespace, labelled `app.kubernetes.io/managed-by=peerd`; it deletes its
//!   own ServiceImports that no longer match and never touches others'.
//!
//! Clusters without the MCS CRDs (or RBAC to read them): the ServiceExport watch is
//! considered synced (empty) so startup does not wait on it, and keeps retrying.
//! This file never writes anything but ServiceImports, and only while leader.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client, CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::leader::Leadership;
use super::types::{FIELD_MANAGER, LABEL_MANAGED_BY, LABEL_SERVICE_SCOPE, MANAGED_BY_PEERD};
use crate::config::ServiceRef;
use crate::federation::naming::is_global_key;
use crate::federation::{ExportFlavor, Federation};
use crate::store::Store as XdsStore;
use crate::xds::resource::Summary;
use crate::xds::types::ResourceType;

/// `ServiceImport.spec.type` of a service with a cluster-set VIP.
pub const CLUSTER_SET_IP: &str = "ClusterSetIP";

/// A `multicluster.x-k8s.io/v1alpha1` ServiceExport: its name and namespace name the
/// Service. Written by hand rather than derived: the MCS API defines no `spec` (only a
/// status peerd does not read), so real objects carry none and a derived type, which
/// requires one, would fail to decode every list.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ServiceExport {
    pub metadata: ObjectMeta,
}

impl ServiceExport {
    pub fn new(namespace: &str, name: &str) -> ServiceExport {
        ServiceExport {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
        }
    }
}

impl kube::Resource for ServiceExport {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "ServiceExport".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "multicluster.x-k8s.io".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1alpha1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "serviceexports".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// `spec` of a ServiceImport (the fields peerd writes).
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceImport",
    namespaced,
    status = "ServiceImportStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub port: u32,
    pub protocol: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ServiceImportStatus {
    #[serde(default)]
    pub clusters: Vec<ClusterStatus>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterStatus {
    pub cluster: String,
}

/// The MCS watches: ServiceExports (all namespaces) and the Services labelled
/// `solo.io/service-scope=local` (which override a ServiceExport).
#[derive(Clone)]
pub struct McsWatches {
    pub exports: Store<ServiceExport>,
    pub local_scoped: Store<Service>,
    /// True once listing ServiceExports failed (no such resource, no RBAC, or any other
    /// error): startup stops waiting for them.
    crd_absent: watch::Receiver<bool>,
}

impl McsWatches {
    /// The Services global through a ServiceExport, as [`exported_services`] decides.
    pub fn global_services(&self) -> BTreeSet<ServiceRef> {
        exported_services(&self.exports.state(), &self.local_scoped.state())
    }

    /// Waits for the first list of both watches (ServiceExports that cannot be listed
    /// count as listed: startup must not hang on an optional API).
    pub async fn ready(&self) -> anyhow::Result<()> {
        self.local_scoped.wait_until_ready().await?;
        let mut absent = self.crd_absent.clone();
        tokio::select! {
            r = self.exports.wait_until_ready() => r?,
            _ = absent.wait_for(|a| *a) => {}
        }
        Ok(())
    }
}

/// ServiceExports minus the Services labelled `solo.io/service-scope=local`.
pub fn exported_services(
    exports: &[Arc<ServiceExport>],
    local_scoped: &[Arc<Service>],
) -> BTreeSet<ServiceRef> {
    let local: BTreeSet<(String, String)> = local_scoped
        .iter()
        .filter(|s| {
            s.labels()
                .get(LABEL_SERVICE_SCOPE)
                .is_some_and(|v| v == "local")
        })
        .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
        .collect();
    exports
        .iter()
        .map(|e| (e.namespace().unwrap_or_default(), e.name_any()))
        .filter(|key| !local.contains(key))
        .map(|(namespace, name)| ServiceRef { namespace, name })
        .collect()
}

/// Starts the MCS watches; `changed` is notified on every event.
pub fn start_watches(client: Client, changed: Arc<Notify>, tasks: &mut JoinSet<()>) -> McsWatches {
    let local_scoped = super::gateways::spawn_reflector(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().labels(&format!("{LABEL_SERVICE_SCOPE}=local")),
        Arc::clone(&changed),
        tasks,
    );
    let (absent_tx, crd_absent) = watch::channel(false);
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(
            Api::<ServiceExport>::all(client),
            watcher::Config::default(),
        )
        .modify(super::gateways::drop_bookkeeping),
    )
    .default_backoff()
    .touched_objects();
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(err) = event {
                // Startup never waits on ServiceExports that cannot be listed: labelled
                // Services still make services global; exports join once listed.
                let first = !absent_tx.send_replace(true);
                if is_unavailable(&err) {
                    if first {
                        tracing::warn!(error = %err, "ServiceExports cannot be listed (MCS CRDs not installed, or no RBAC); ignored until they can");
                    }
                } else {
                    tracing::warn!(error = %err, "ServiceExport watch error; retrying");
                }
            }
            changed.notify_waiters();
            changed.notify_one();
        }
    });
    McsWatches {
        exports: reader,
        local_scoped,
        crd_absent,
    }
}

/// No such resource (404) or not allowed to list it (403): waiting will not help.
fn is_unavailable(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::InitialListFailed(kube::Error::Api(e))
        | watcher::Error::WatchStartFailed(kube::Error::Api(e)) => matches!(e.code, 403 | 404),
        watcher::Error::WatchError(e) => matches!(e.code, 403 | 404),
        _ => false,
    }
}

/// The ServiceImports peerd wants: one per global service that a peer exports, with the
/// union of its ports and every cluster exporting it (this one too, when it does).
pub fn desired_imports(store: &XdsStore, federation: &Federation) -> Vec<ServiceImport> {
    let local = &federation.config().cluster;
    // (namespace, name) → (ports, clusters)
    type Entry = (BTreeSet<ServicePort>, BTreeSet<String>);
    let mut by_service: BTreeMap<(String, String), Entry> = BTreeMap::new();
    for origin in store.origins() {
        if *origin.name == **local {
            continue;
        }
        let snapshot = origin.view.snapshot();
        for (name, r) in snapshot.resources(ResourceType::Address) {
            let Summary::Service(s) = &*r.summary else {
                continue;
            };
            if !is_global_key(name) {
                continue;
            }
            let entry = by_service
                .entry((s.namespace.clone(), s.name.clone()))
                .or_default();
            entry.0.extend(s.ports.iter().map(|(port, _)| ServicePort {
                port: *port,
                protocol: "TCP".to_string(),
            }));
            entry.1.insert(origin.name.to_string());
        }
    }
    let exported = federation.export_view(ExportFlavor::Flat).snapshot();
    by_service
        .into_iter()
        .map(|((namespace, name), (ports, mut clusters))| {
            let key = crate::federation::naming::global_key(&namespace, &name);
            if exported.get(ResourceType::Address, &key).is_some() {
                clusters.insert(local.clone());
            }
            ServiceImport {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(namespace),
                    labels: Some(BTreeMap::from([(
                        LABEL_MANAGED_BY.to_string(),
                        MANAGED_BY_PEERD.to_string(),
                    )])),
                    ..Default::default()
                },
                spec: ServiceImportSpec {
                    type_: CLUSTER_SET_IP.to_string(),
                    ports: ports.into_iter().collect(),
                },
                status: Some(ServiceImportStatus {
                    clusters: clusters
                        .into_iter()
                        .map(|cluster| ClusterStatus { cluster })
                        .collect(),
                }),
            }
        })
        .collect()
}

/// How often the leader re-applies every ServiceImport, changed or not (repairing edits
/// by others, retrying what failed).
const IMPORT_RESYNC: Duration = Duration::from_secs(30);
/// Coalesces a burst of store changes into one pass.
const IMPORT_DEBOUNCE: Duration = Duration::from_millis(500);

/// What the writer last applied, per ServiceImport (namespace, name): a pass after a store
/// change writes only the imports whose content changed since. Under churn the store
/// changes several times a second while the imports rarely do, and re-applying all of
/// them on every pass would put the API server under constant load.
#[derive(Debug, Default)]
pub struct AppliedImports(HashMap<(String, String), Value>);

impl AppliedImports {
    /// Forgets everything: the next pass applies every import.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// The leader's ServiceImport writer: a pass after store changes (debounced, writing what
/// changed) and every [`IMPORT_RESYNC`] (writing everything); does nothing while not
/// leader. A failure is logged when it first happens or changes, not on every pass.
pub async fn write_service_imports(
    client: Client,
    store: Arc<XdsStore>,
    federation: Arc<Federation>,
    leadership: Leadership,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut events = store.subscribe();
    let mut applied = AppliedImports::default();
    let mut last_full: Option<tokio::time::Instant> = None;
    let mut failing: Option<String> = None;
    loop {
        if !leadership.is_leader() {
            applied.clear();
            last_full = None;
        } else {
            if last_full.is_none_or(|t| t.elapsed() >= IMPORT_RESYNC) {
                applied.clear();
                last_full = Some(tokio::time::Instant::now());
            }
            match sync_service_imports(&client, &store, &federation, &mut applied).await {
                Ok(()) => {
                    if failing.take().is_some() {
                        tracing::info!("ServiceImports written again");
                    }
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    if failing.as_ref() != Some(&error) {
                        tracing::warn!(error = %error, "writing ServiceImports failed; retrying (logged again only if the failure changes)");
                    }
                    failing = Some(error);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(IMPORT_RESYNC) => {}
            event = events.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = event {
                    return Ok(());
                }
                tokio::time::sleep(IMPORT_DEBOUNCE).await;
                while events.try_recv().is_ok() {}
            }
        }
    }
}

/// One pass: the desired ServiceImports from the store, written by [`apply_imports`].
pub async fn sync_service_imports(
    client: &Client,
    store: &XdsStore,
    federation: &Federation,
    applied: &mut AppliedImports,
) -> anyhow::Result<()> {
    let desired = desired_imports(store, federation);
    apply_imports(client, &desired, applied).await
}

/// Applies every desired ServiceImport (spec, then status) whose content changed since
/// `applied`, then deletes peerd's own that are no longer desired. One import that cannot
/// be written (its namespace does not exist in this cluster, a webhook refuses it) does
/// not stop the others nor the deletions; the error names how many failed and the first.
pub async fn apply_imports(
    client: &Client,
    desired: &[ServiceImport],
    applied: &mut AppliedImports,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut keep: BTreeSet<(String, String)> = BTreeSet::new();
    let mut failures: Vec<String> = Vec::new();
    for import in desired {
        let key = (import.namespace().unwrap_or_default(), import.name_any());
        keep.insert(key.clone());
        let mut body = serde_json::to_value(import).context("encoding a ServiceImport")?;
        if let Some(obj) = body.as_object_mut() {
            obj.insert("apiVersion".into(), "multicluster.x-k8s.io/v1alpha1".into());
            obj.insert("kind".into(), "ServiceImport".into());
        }
        if applied.0.get(&key) == Some(&body) {
            continue;
        }
        let status = serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceImport",
            "status": import.status,
        });
        let (namespace, name) = &key;
        let api: Api<ServiceImport> = Api::namespaced(client.clone(), namespace);
        let written = async {
            api.patch(name, &params, &Patch::Apply(&body))
                .await
                .with_context(|| format!("applying ServiceImport {namespace}/{name}"))?;
            api.patch_status(name, &params, &Patch::Apply(&status))
                .await
                .with_context(|| format!("applying ServiceImport {namespace}/{name} status"))?;
            anyhow::Ok(())
        }
        .await;
        match written {
            Ok(()) => {
                applied.0.insert(key, body);
            }
            Err(e) => {
                applied.0.remove(&key);
                failures.push(format!("{e:#}"));
            }
        }
    }
    let all: Api<ServiceImport> = Api::all(client.clone());
    let owned = all
        .list(&ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY_PEERD}")))
        .await
        .context("listing peerd's ServiceImports")?;
    for stale in owned.items {
        let key = (stale.namespace().unwrap_or_default(), stale.name_any());
        if keep.contains(&key) {
            continue;
        }
        applied.0.remove(&key);
        let api: Api<ServiceImport> = Api::namespaced(client.clone(), &key.0);
        match api.delete(&key.1, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => failures.push(format!("deleting ServiceImport {}/{}: {e}", key.0, key.1)),
        }
    }
    match failures.first() {
        None => Ok(()),
        Some(first) => anyhow::bail!(
            "{} of {} ServiceImport writes failed; the others were written. First: {first}",
            failures.len(),
            desired.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(ns: &str, name: &str) -> Arc<ServiceExport> {
        Arc::new(ServiceExport::new(ns, name))
    }

    /// The MCS API's ServiceExport has no `spec`: an object as the API server lists it
    /// (as the emulator and real clusters do) decodes.
    #[test]
    fn a_service_export_without_spec_decodes() {
        let json = r#"{"apiVersion":"multicluster.x-k8s.io/v1alpha1","kind":"ServiceExport",
            "metadata":{"name":"profile","namespace":"default","resourceVersion":"12"},
            "status":{"conditions":[]}}"#;
        let e: ServiceExport = serde_json::from_str(json).unwrap();
        assert_eq!(e.name_any(), "profile");
        assert_eq!(e.namespace().as_deref(), Some("default"));
    }

    fn service(ns: &str, name: &str, scope: &str) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([(LABEL_SERVICE_SCOPE.into(), scope.into())])),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    #[test]
    fn service_exports_are_global_unless_the_service_says_local() {
        let global = exported_services(
            &[
                export("shop", "cart"),
                export("shop", "ledger"),
                export("ads", "cart"),
            ],
            &[
                service("shop", "ledger", "local"),
                service("ads", "other", "local"),
            ],
        );
        let names: Vec<String> = global
            .iter()
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .collect();
        assert_eq!(names, vec!["ads/cart", "shop/cart"]);
    }
}
