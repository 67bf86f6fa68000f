//! The flat-network / multi-network sync **reconciler**: a pure function from what peers
//! export (imported workloads and global services) to the WorkloadEntries and
//! ServiceEntries peerd wants in the control namespace (docs/design.md §7).
//!
//! It owns the naming rules (names, labels, annotations, the `hash12` rule) and nothing
//! else: it never talks to the API server, never decides deletions (that is `apply.rs`,
//! which needs sync state), and must never produce an object without the
//! `app.kubernetes.io/managed-by=peerd` label.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use kube::api::ObjectMeta;
use ring::digest::{SHA256, digest};

use super::types::{
    ANNOTATION_PEERED_WORKLOAD_UID, LABEL_MANAGED_BY, LABEL_SOURCE_CLUSTER, LABEL_SOURCE_WORKLOAD,
    MANAGED_BY_PEERD, ServiceEntry, ServiceEntryPort, ServiceEntrySpec, WorkloadEntry,
    WorkloadEntrySpec, WorkloadSelector,
};
use crate::xds::resource::WorkloadSummary;

/// Kubernetes object names are DNS subdomains: at most 253 characters.
pub const MAX_NAME_LEN: usize = 253;
/// Label values are at most 63 characters.
pub const MAX_LABEL_VALUE_LEN: usize = 63;
/// Suffix of exported global service hostnames (`<svc>.<ns>.mesh.internal`).
pub const GLOBAL_HOST_SUFFIX: &str = ".mesh.internal";
/// Label on generated WorkloadEntries (in `spec.labels`) that the ServiceEntry of each
/// global service selects: `<LABEL_PREFIX><svc>.<ns>` (or a hash when too long), value
/// `"true"`. peerd's own convention (docs/design.md §7.2).
pub const SERVICE_SELECTOR_PREFIX: &str = "service.peerd.io/";

/// How a peer's workloads are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerNetworkMode {
    /// Same network as ours and flat networks enabled: one WorkloadEntry per pod, pod IP.
    Flat,
    /// Different network: one address-less WorkloadEntry per global service, via the
    /// peer's east-west gateway.
    MultiNetwork,
}

impl PeerNetworkMode {
    /// docs/design.md §5.5: flat when the peer's network equals the local network and flat networks
    /// are enabled (`PEERING_ENABLE_FLAT_NETWORKS=true`); multi-network otherwise.
    pub fn decide(peer_network: &str, local_network: &str, flat_enabled: bool) -> Self {
        if flat_enabled && !peer_network.is_empty() && peer_network == local_network {
            PeerNetworkMode::Flat
        } else {
            PeerNetworkMode::MultiNetwork
        }
    }
}

/// A global service a peer exports (`<name>.<namespace>.mesh.internal`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GlobalService {
    pub namespace: String,
    pub name: String,
    pub ports: Vec<ServiceEntryPort>,
}

impl GlobalService {
    pub fn hostname(&self) -> String {
        format!("{}.{}{GLOBAL_HOST_SUFFIX}", self.name, self.namespace)
    }
}

/// One remote workload (pod) as imported from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedWorkload {
    /// Pod name and namespace in the source cluster.
    pub name: String,
    pub namespace: String,
    /// The workload's identity in its cluster: `<cluster>/<group>/<kind>/<ns>/<name>`
    /// (copied to the `solo.io/peered-workload-uid` annotation).
    pub uid: String,
    pub address: Option<IpAddr>,
    pub network: String,
    pub service_account: String,
    pub locality: String,
    /// The federated services it backs, as `(namespace, service name)`.
    pub services: BTreeSet<(String, String)>,
}

impl ImportedWorkload {
    /// From an imported WDS workload: its `services` keys `ns/<svc>.<ns>.mesh.internal`
    /// become `(ns, svc)`; keys of other hostnames are not federated and are skipped.
    pub fn from_summary(summary: &WorkloadSummary, locality: &str) -> ImportedWorkload {
        let services = summary
            .services
            .iter()
            .filter_map(|key| global_service_of_key(key))
            .collect();
        ImportedWorkload {
            name: summary.name.clone(),
            namespace: summary.namespace.to_string(),
            uid: summary.uid.clone(),
            address: summary.addresses.first().copied(),
            network: summary.network.to_string(),
            service_account: summary.service_account.to_string(),
            locality: locality.to_string(),
            services,
        }
    }
}

/// `ns/<svc>.<ns>.mesh.internal` → `(ns, svc)`; `None` for any other key.
pub fn global_service_of_key(key: &str) -> Option<(String, String)> {
    let (namespace, hostname) = key.split_once('/')?;
    let stem = hostname.strip_suffix(GLOBAL_HOST_SUFFIX)?;
    let (service, host_namespace) = stem.split_once('.')?;
    if host_namespace != namespace || service.is_empty() || namespace.is_empty() {
        return None;
    }
    Some((namespace.to_string(), service.to_string()))
}

/// What one peer currently exports to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerExports {
    pub cluster: String,
    /// The peer's network (flat peers: the shared network).
    pub network: String,
    pub mode: PeerNetworkMode,
    pub workloads: Vec<ImportedWorkload>,
    pub services: Vec<GlobalService>,
}

/// The objects peerd wants, by name. Shared (`Arc`): successive inputs of the flat sync
/// hold the same entry of an unchanged workload (see `flat_input`).
#[derive(Debug, Clone, Default)]
pub struct DesiredObjects {
    pub workload_entries: BTreeMap<String, Arc<WorkloadEntry>>,
    pub service_entries: BTreeMap<String, Arc<ServiceEntry>>,
}

/// `hash12`: first 12 hex digits of sha256 of the services written `<namespace>/<service>`,
/// sorted, joined by `,`.
pub fn services_hash12(services: &BTreeSet<(String, String)>) -> String {
    let joined = services
        .iter()
        .map(|(ns, svc)| format!("{ns}/{svc}"))
        .collect::<Vec<_>>()
        .join(",");
    hex_prefix(joined.as_bytes(), 12)
}

fn hex_prefix(input: &[u8], digits: usize) -> String {
    let sum = digest(&SHA256, input);
    let mut out = String::with_capacity(64);
    for byte in sum.as_ref() {
        out.push_str(&format!("{byte:02x}"));
    }
    out.truncate(digits);
    out
}

/// Cuts a name to [`MAX_NAME_LEN`], never leaving a trailing `.` or `-`.
pub fn cap_name(name: String) -> String {
    if name.len() <= MAX_NAME_LEN {
        return name;
    }
    let mut cut: String = name.chars().take(MAX_NAME_LEN).collect();
    while cut.ends_with(['.', '-']) {
        cut.pop();
    }
    cut
}

/// `autogenflat.<cluster>.<podNs>.<pod>.<hash12>`, capped at 253 characters.
pub fn flat_workload_entry_name(cluster: &str, workload: &ImportedWorkload) -> String {
    cap_name(format!(
        "autogenflat.{cluster}.{}.{}.{}",
        workload.namespace,
        workload.name,
        services_hash12(&workload.services)
    ))
}

/// `solo.io/source-workload`: `autogenflat.<cluster>.<ns>.<pod>`, or past 63 characters
/// `autogenflat.<first 8 hex of sha256(X)>` where X is that same long value
/// `autogenflat.<cluster>.<ns>.<pod>`.
pub fn source_workload_label(cluster: &str, namespace: &str, pod: &str) -> String {
    let full = format!("autogenflat.{cluster}.{namespace}.{pod}");
    if full.len() <= MAX_LABEL_VALUE_LEN {
        full
    } else {
        format!("autogenflat.{}", hex_prefix(full.as_bytes(), 8))
    }
}

/// `autogen.<ns>.<svc>`.
pub fn service_entry_name(service: &GlobalService) -> String {
    cap_name(format!("autogen.{}.{}", service.namespace, service.name))
}

/// `autogen.<cluster>.<ns>.<svc>` (multi-network per-service WorkloadEntry).
pub fn service_workload_entry_name(cluster: &str, service: &GlobalService) -> String {
    cap_name(format!(
        "autogen.{cluster}.{}.{}",
        service.namespace, service.name
    ))
}

/// The `spec.labels` key by which the ServiceEntry of `namespace/service` selects its
/// WorkloadEntries: `service.peerd.io/<svc>.<ns>`, or `service.peerd.io/<first 16 hex of
/// sha256("<ns>/<svc>")>` when the name part would exceed 63 characters.
pub fn service_selector_key(namespace: &str, service: &str) -> String {
    let plain = format!("{service}.{namespace}");
    if plain.len() <= MAX_LABEL_VALUE_LEN {
        format!("{SERVICE_SELECTOR_PREFIX}{plain}")
    } else {
        let hash = hex_prefix(format!("{namespace}/{service}").as_bytes(), 16);
        format!("{SERVICE_SELECTOR_PREFIX}{hash}")
    }
}

fn managed_meta(name: String, namespace: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    let mut labels = labels;
    labels.insert(LABEL_MANAGED_BY.to_string(), MANAGED_BY_PEERD.to_string());
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_string()),
        labels: Some(labels),
        ..Default::default()
    }
}

/// Computes every object peerd wants in `control_namespace` for the given peers.
/// Deterministic: the same input always gives the same output, whatever its order.
pub fn desired_objects(control_namespace: &str, peers: &[PeerExports]) -> DesiredObjects {
    let mut out = DesiredObjects::default();
    // ServiceEntries are shared by every peer exporting the same global service: ports
    // are the sorted union so the result does not depend on peer order.
    let mut services: BTreeMap<(String, String), BTreeSet<ServiceEntryPort>> = BTreeMap::new();
    for peer in peers {
        for service in &peer.services {
            let ports = services
                .entry((service.namespace.clone(), service.name.clone()))
                .or_default();
            ports.extend(service.ports.iter().cloned());
        }
        match peer.mode {
            PeerNetworkMode::Flat => add_flat_entries(control_namespace, peer, &mut out),
            PeerNetworkMode::MultiNetwork => {
                add_service_entries_for_network(control_namespace, peer, &mut out)
            }
        }
    }
    for ((namespace, name), ports) in services {
        let service = GlobalService {
            namespace,
            name,
            ports: ports.into_iter().collect(),
        };
        let entry_name = service_entry_name(&service);
        let selector_key = service_selector_key(&service.namespace, &service.name);
        let entry = ServiceEntry {
            metadata: managed_meta(entry_name.clone(), control_namespace, BTreeMap::new()),
            spec: ServiceEntrySpec {
                hosts: vec![service.hostname()],
                ports: service.ports.clone(),
                location: "MESH_INTERNAL".to_string(),
                resolution: "STATIC".to_string(),
                workload_selector: Some(WorkloadSelector {
                    labels: BTreeMap::from([(selector_key, "true".to_string())]),
                }),
            },
        };
        out.service_entries.insert(entry_name, Arc::new(entry));
    }
    out
}

fn add_flat_entries(control_namespace: &str, peer: &PeerExports, out: &mut DesiredObjects) {
    let exported = exported_names(&peer.services);
    for workload in &peer.workloads {
        if let Some((name, entry)) = flat_entry(
            control_namespace,
            &peer.cluster,
            &peer.network,
            workload,
            &exported,
        ) {
            out.workload_entries.insert(name, Arc::new(entry));
        }
    }
}

/// The `(namespace, name)` of each service in `services`.
pub fn exported_names(services: &[GlobalService]) -> BTreeSet<(String, String)> {
    services
        .iter()
        .map(|s| (s.namespace.clone(), s.name.clone()))
        .collect()
}

/// The WorkloadEntry (and its name) of one workload of the flat peer `cluster` on
/// `network`: `None` unless the workload has an IP and backs a service in `exported`
/// (the `(namespace, name)` of the global services the peer exports).
pub fn flat_entry(
    control_namespace: &str,
    cluster: &str,
    network: &str,
    workload: &ImportedWorkload,
    exported: &BTreeSet<(String, String)>,
) -> Option<(String, WorkloadEntry)> {
    let Some(address) = workload.address else {
        tracing::debug!(peer = %cluster, uid = %workload.uid, "flat peer workload without an address: no WorkloadEntry");
        return None;
    };
    let backed: BTreeSet<(String, String)> =
        workload.services.intersection(exported).cloned().collect();
    if backed.is_empty() {
        tracing::debug!(peer = %cluster, uid = %workload.uid, services = ?workload.services, "flat peer workload backs no global service the peer exports: no WorkloadEntry");
        return None;
    }
    let workload = ImportedWorkload {
        services: backed,
        ..workload.clone()
    };
    let name = flat_workload_entry_name(cluster, &workload);
    let labels = BTreeMap::from([
        (LABEL_SOURCE_CLUSTER.to_string(), cluster.to_string()),
        (
            LABEL_SOURCE_WORKLOAD.to_string(),
            source_workload_label(cluster, &workload.namespace, &workload.name),
        ),
    ]);
    let mut metadata = managed_meta(name.clone(), control_namespace, labels);
    metadata.annotations = Some(BTreeMap::from([(
        ANNOTATION_PEERED_WORKLOAD_UID.to_string(),
        workload.uid.clone(),
    )]));
    let spec_labels = workload
        .services
        .iter()
        .map(|(ns, svc)| (service_selector_key(ns, svc), "true".to_string()))
        .collect();
    let network = if workload.network.is_empty() {
        network.to_string()
    } else {
        workload.network.clone()
    };
    let entry = WorkloadEntry {
        metadata,
        spec: WorkloadEntrySpec {
            address: address.to_string(),
            labels: spec_labels,
            network,
            locality: workload.locality.clone(),
            service_account: workload.service_account.clone(),
        },
    };
    Some((name, entry))
}

fn add_service_entries_for_network(
    control_namespace: &str,
    peer: &PeerExports,
    out: &mut DesiredObjects,
) {
    for service in &peer.services {
        let name = service_workload_entry_name(&peer.cluster, service);
        let labels = BTreeMap::from([(LABEL_SOURCE_CLUSTER.to_string(), peer.cluster.clone())]);
        let entry = WorkloadEntry {
            metadata: managed_meta(name.clone(), control_namespace, labels),
            spec: WorkloadEntrySpec {
                // No address: istiod routes through the network's east-west gateway.
                address: String::new(),
                labels: BTreeMap::from([(
                    service_selector_key(&service.namespace, &service.name),
                    "true".to_string(),
                )]),
                network: peer.network.clone(),
                locality: String::new(),
                service_account: String::new(),
            },
        };
        out.workload_entries.insert(name, Arc::new(entry));
    }
}
