//! What peerd reads from the cluster: peer and east-west **Gateways** in the peering
//! namespace, **global Services** (for the export view; labelled, or named by a
//! ServiceExport, see [`super::mcs`]), and the **local network** (label
//! `topology.istio.io/network` on the `istio-system` namespace); and the translation of a
//! peer Gateway into a [`PeerSpec`] (docs/design.md §6.1).
//!
//! Invalid peer Gateways become a [`SpecError`] naming the field, for an `Accepted=False`
//! condition. Hostnames are resolved through an injectable [`Resolver`]; the system one
//! fails fast on `.invalid` names (RFC 6761) without asking DNS. This file must never
//! write to the API server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tonic::async_trait;

use super::types::{
    ANNOTATION_DATA_PLANE_SERVICE_TYPE, ANNOTATION_TRUST_DOMAIN, GATEWAY_CLASS_EASTWEST,
    GATEWAY_CLASS_REMOTE, Gateway, LABEL_CLUSTER, LABEL_ISTIO_GLOBAL, LABEL_NETWORK,
    LABEL_SERVICE_SCOPE,
};

pub const HBONE_PORT: u16 = 15008;
pub const XDS_TLS_PORT: u16 = 15012;

/// How a peer's Gateway addresses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddress {
    Ip(IpAddr),
    /// A hostname, with the addresses it resolved to.
    Hostname {
        name: String,
        resolved: Vec<IpAddr>,
    },
}

/// A usable peer, from a valid `istio-remote` Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Gateway name (`istio-remote-peer-<cluster>`).
    pub gateway: String,
    pub cluster: String,
    pub network: String,
    pub trust_domain: String,
    pub address: PeerAddress,
    /// HBONE port (15008) and xDS TLS port (15012) as listed by the Gateway.
    pub hbone_port: u16,
    pub xds_port: u16,
    /// `peering.solo.io/preferred-data-plane-service-type: NodePort`.
    pub prefers_node_port: bool,
}

/// Why a peer Gateway is not usable: the field at fault and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    fn new(field: &str, message: impl Into<String>) -> SpecError {
        SpecError {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Resolves peer hostnames. Injectable so tests never reach DNS.
#[async_trait]
pub trait Resolver: Send + Sync + 'static {
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String>;
}

/// The system resolver, bounded by a timeout; `.invalid` names fail without a lookup.
pub struct SystemResolver {
    pub timeout: Duration,
}

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        if let Some(reason) = never_resolves(host) {
            return Err(reason);
        }
        let lookup = tokio::net::lookup_host((host, 0));
        match tokio::time::timeout(self.timeout, lookup).await {
            Err(_) => Err(format!("resolving {host} timed out")),
            Ok(Err(err)) => Err(format!("resolving {host} failed: {err}")),
            Ok(Ok(addrs)) => {
                let ips: BTreeSet<IpAddr> = addrs.map(|a| a.ip()).collect();
                if ips.is_empty() {
                    Err(format!("{host} has no addresses"))
                } else {
                    Ok(ips.into_iter().collect())
                }
            }
        }
    }
}

/// A fixed table (tests, sandbox). Unknown names fail.
#[derive(Default)]
pub struct StaticResolver {
    pub table: BTreeMap<String, Vec<IpAddr>>,
}

#[async_trait]
impl Resolver for StaticResolver {
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        if let Some(reason) = never_resolves(host) {
            return Err(reason);
        }
        self.table
            .get(host)
            .filter(|ips| !ips.is_empty())
            .cloned()
            .ok_or_else(|| format!("{host} does not resolve"))
    }
}

/// Names reserved never to resolve (RFC 6761 `.invalid`) and syntactically broken ones.
fn never_resolves(host: &str) -> Option<String> {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    if lower == "invalid" || lower.ends_with(".invalid") {
        return Some(format!("{host} is under .invalid and never resolves"));
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if lower.is_empty() || lower.len() > 253 || !lower.split('.').all(valid_label) {
        return Some(format!("{host:?} is not a valid DNS name"));
    }
    None
}

/// Translates a peer Gateway, without resolving hostnames ([`resolve_peer`] does that).
pub fn parse_peer_gateway(gateway: &Gateway, local_cluster: &str) -> Result<PeerSpec, SpecError> {
    let labels = gateway.labels();
    let annotations = gateway.annotations();
    if gateway.spec.gateway_class_name != GATEWAY_CLASS_REMOTE {
        return Err(SpecError::new(
            "spec.gatewayClassName",
            format!(
                "is {:?}, expected {GATEWAY_CLASS_REMOTE:?}",
                gateway.spec.gateway_class_name
            ),
        ));
    }
    let cluster = labels.get(LABEL_CLUSTER).cloned().unwrap_or_default();
    if cluster.is_empty() {
        return Err(SpecError::new(
            &format!("metadata.labels[{LABEL_CLUSTER}]"),
            "missing: set it to the remote cluster's name",
        ));
    }
    if cluster == local_cluster {
        return Err(SpecError::new(
            &format!("metadata.labels[{LABEL_CLUSTER}]"),
            format!("{cluster:?} is this cluster's own name: a cluster cannot peer with itself"),
        ));
    }
    let network = labels.get(LABEL_NETWORK).cloned().unwrap_or_default();
    if network.is_empty() {
        return Err(SpecError::new(
            &format!("metadata.labels[{LABEL_NETWORK}]"),
            "missing: set it to the remote cluster's network",
        ));
    }
    let trust_domain = annotations
        .get(ANNOTATION_TRUST_DOMAIN)
        .cloned()
        .unwrap_or_else(|| "cluster.local".to_string());
    let Some(first) = gateway.spec.addresses.first() else {
        return Err(SpecError::new(
            "spec.addresses",
            "empty: set spec.addresses[0] to the remote east-west gateway's IP or hostname",
        ));
    };
    let kind = first.type_.as_deref().unwrap_or("IPAddress");
    let address = match kind {
        "IPAddress" => first
            .value
            .parse::<IpAddr>()
            .map(PeerAddress::Ip)
            .map_err(|_| {
                SpecError::new(
                    "spec.addresses[0].value",
                    format!("{:?} is not an IP address", first.value),
                )
            })?,
        "Hostname" => {
            if let Some(reason) = never_resolves(&first.value) {
                return Err(SpecError::new("spec.addresses[0].value", reason));
            }
            PeerAddress::Hostname {
                name: first.value.clone(),
                resolved: Vec::new(),
            }
        }
        other => {
            return Err(SpecError::new(
                "spec.addresses[0].type",
                format!("{other:?} is not supported (IPAddress or Hostname)"),
            ));
        }
    };
    let has_port = |port: u16| gateway.spec.listeners.iter().any(|l| l.port == port);
    if gateway.spec.listeners.is_empty() {
        return Err(SpecError::new(
            "spec.listeners",
            format!(
                "empty: a peer needs listeners on {HBONE_PORT} (HBONE) and {XDS_TLS_PORT} (xDS TLS)"
            ),
        ));
    }
    if !has_port(XDS_TLS_PORT) {
        return Err(SpecError::new(
            "spec.listeners",
            format!("no listener on port {XDS_TLS_PORT} (xDS TLS)"),
        ));
    }
    let prefers_node_port = annotations
        .get(ANNOTATION_DATA_PLANE_SERVICE_TYPE)
        .is_some_and(|v| v == "NodePort");
    // With a NodePort data plane the HBONE listener is unused (docs/design.md §6.2).
    if !prefers_node_port && !has_port(HBONE_PORT) {
        return Err(SpecError::new(
            "spec.listeners",
            format!("no listener on port {HBONE_PORT} (HBONE)"),
        ));
    }
    Ok(PeerSpec {
        gateway: gateway.name_any(),
        cluster,
        network,
        trust_domain,
        address,
        hbone_port: HBONE_PORT,
        xds_port: XDS_TLS_PORT,
        prefers_node_port,
    })
}

/// [`parse_peer_gateway`], then resolves a hostname address with `resolver`.
pub async fn resolve_peer(
    gateway: &Gateway,
    local_cluster: &str,
    resolver: &dyn Resolver,
) -> Result<PeerSpec, SpecError> {
    let mut spec = parse_peer_gateway(gateway, local_cluster)?;
    if let PeerAddress::Hostname { name, resolved } = &mut spec.address {
        *resolved = resolver
            .resolve(name)
            .await
            .map_err(|reason| SpecError::new("spec.addresses[0].value", reason))?;
    }
    Ok(spec)
}

/// True for the labels that make a Service global.
pub fn is_global_service(service: &Service) -> bool {
    let labels = service.labels();
    labels
        .get(LABEL_SERVICE_SCOPE)
        .is_some_and(|v| v == "global")
        || labels.get(LABEL_ISTIO_GLOBAL).is_some_and(|v| v == "true")
}

/// Reflector stores kept current by watches (relisting on `410 Gone` and errors, with
/// backoff), and a notification on every change.
#[derive(Clone)]
pub struct ClusterWatches {
    /// Gateways of class `istio-remote` and `istio-eastwest` in the peering namespace
    /// (other classes are filtered out by [`ClusterWatches::peer_gateways`]).
    pub gateways: Store<Gateway>,
    /// Services labelled `solo.io/service-scope=global`.
    pub scoped_services: Store<Service>,
    /// Services labelled `istio.io/global=true`.
    pub istio_global_services: Store<Service>,
    /// ServiceExports (and the `solo.io/service-scope=local` Services overriding them).
    pub mcs: super::mcs::McsWatches,
    /// The local network, from the `istio-system` namespace label.
    pub local_network: watch::Receiver<Option<String>>,
    pub changed: Arc<Notify>,
}

impl ClusterWatches {
    pub fn peer_gateways(&self) -> Vec<Arc<Gateway>> {
        self.gateways_of_class(GATEWAY_CLASS_REMOTE)
    }

    pub fn eastwest_gateways(&self) -> Vec<Arc<Gateway>> {
        self.gateways_of_class(GATEWAY_CLASS_EASTWEST)
    }

    fn gateways_of_class(&self, class: &str) -> Vec<Arc<Gateway>> {
        let mut out: Vec<_> = self
            .gateways
            .state()
            .into_iter()
            .filter(|g| g.spec.gateway_class_name == class)
            .collect();
        out.sort_by_key(|g| g.name_any());
        out
    }

    /// Global Services (either label, or a ServiceExport: then only its name and
    /// namespace are set), deduplicated, sorted by namespace/name.
    pub fn global_services(&self) -> Vec<Arc<Service>> {
        let mut by_key = BTreeMap::new();
        for service in self
            .scoped_services
            .state()
            .into_iter()
            .chain(self.istio_global_services.state())
        {
            let key = (service.namespace().unwrap_or_default(), service.name_any());
            by_key.insert(key, service);
        }
        for exported in self.mcs.global_services() {
            by_key
                .entry((exported.namespace.clone(), exported.name.clone()))
                .or_insert_with(|| {
                    Arc::new(Service {
                        metadata: kube::api::ObjectMeta {
                            name: Some(exported.name),
                            namespace: Some(exported.namespace),
                            ..Default::default()
                        },
                        ..Default::default()
                    })
                });
        }
        by_key.into_values().collect()
    }

    /// Waits until every store has completed its first list.
    pub async fn ready(&self) -> anyhow::Result<()> {
        self.gateways.wait_until_ready().await?;
        self.scoped_services.wait_until_ready().await?;
        self.istio_global_services.wait_until_ready().await?;
        self.mcs.ready().await?;
        Ok(())
    }
}

/// Starts the watches; they run until `tasks` is dropped.
pub fn start_watches(
    client: Client,
    peering_namespace: &str,
    tasks: &mut JoinSet<()>,
) -> ClusterWatches {
    let changed = Arc::new(Notify::new());
    let gateways = spawn_reflector(
        Api::<Gateway>::namespaced(client.clone(), peering_namespace),
        watcher::Config::default(),
        changed.clone(),
        tasks,
    );
    let scoped_services = spawn_reflector(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().labels(&format!("{LABEL_SERVICE_SCOPE}=global")),
        changed.clone(),
        tasks,
    );
    let istio_global_services = spawn_reflector(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().labels(&format!("{LABEL_ISTIO_GLOBAL}=true")),
        changed.clone(),
        tasks,
    );
    let mcs = super::mcs::start_watches(client.clone(), changed.clone(), tasks);
    let (network_tx, local_network) = watch::channel(None);
    let namespace_changed = Arc::new(Notify::new());
    let namespaces = spawn_reflector(
        Api::<Namespace>::all(client),
        watcher::Config::default().fields("metadata.name=istio-system"),
        namespace_changed.clone(),
        tasks,
    );
    let network_changed = changed.clone();
    tasks.spawn(async move {
        loop {
            let network = namespaces
                .get(&reflector::ObjectRef::new("istio-system"))
                .and_then(|ns| ns.labels().get(LABEL_NETWORK).cloned());
            let differs = network_tx.send_if_modified(|current| {
                let differs = *current != network;
                *current = network;
                differs
            });
            if differs {
                network_changed.notify_waiters();
                network_changed.notify_one();
            }
            namespace_changed.notified().await;
        }
    });
    ClusterWatches {
        gateways,
        scoped_services,
        istio_global_services,
        mcs,
        local_network,
        changed,
    }
}

/// A reflector over `api`, driven in a task; notifies `changed` on every event.
pub fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
    tasks: &mut JoinSet<()>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    spawn_tracked_reflector(api, config, changed, Arc::new(AtomicU64::new(0)), tasks)
}

/// The annotation `kubectl apply` keeps a whole copy of the object in.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what only the API server's own bookkeeping needs (`metadata.managedFields`, the
/// `kubectl apply` copy) from an object before a store keeps it; nothing in peerd reads
/// either. Why: they are the larger part of a small object (a WorkloadEntry's
/// managedFields list every field path it sets), so each store held them for every
/// object and each relist (a `410 Gone`, an API error) parsed them all again next to
/// the old copies.
pub fn drop_bookkeeping<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// [`spawn_reflector`], also recording in `progress` the highest (numeric)
/// resourceVersion the watch has delivered: once it reaches the version a write returned,
/// the store reflects that write.
pub fn spawn_tracked_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
    progress: Arc<AtomicU64>,
    tasks: &mut JoinSet<()>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config).modify(drop_bookkeeping))
        .default_backoff()
        .touched_objects();
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(obj) => {
                    let rv = obj
                        .meta()
                        .resource_version
                        .as_deref()
                        .and_then(|rv| rv.parse::<u64>().ok())
                        .unwrap_or(0);
                    progress.fetch_max(rv, Ordering::SeqCst);
                }
                Err(err) => tracing::warn!(error = %err, "Kubernetes watch error; retrying"),
            }
            changed.notify_waiters();
            changed.notify_one();
        }
    });
    reader
}
