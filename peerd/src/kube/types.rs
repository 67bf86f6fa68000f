//! Typed structs for the few fields peerd reads or writes of Gateway
//! (`gateway.networking.k8s.io/v1`), WorkloadEntry and ServiceEntry
//! (`networking.istio.io/v1`), plus the label, annotation and condition names of the
//! peering protocol (docs/design.md §6, §7).
//!
//! Only the fields peerd uses are modelled; unknown fields are ignored when reading and
//! never sent when applying, so server-side apply leaves other owners' fields alone. This
//! file must never grow into a copy of the Istio or Gateway API.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// Field manager of every write peerd makes.
pub const FIELD_MANAGER: &str = "peerd";

pub const GATEWAY_CLASS_REMOTE: &str = "istio-remote";
pub const GATEWAY_CLASS_EASTWEST: &str = "istio-eastwest";

pub const LABEL_CLUSTER: &str = "topology.istio.io/cluster";
pub const LABEL_NETWORK: &str = "topology.istio.io/network";
pub const ANNOTATION_TRUST_DOMAIN: &str = "gateway.istio.io/trust-domain";
pub const ANNOTATION_DATA_PLANE_SERVICE_TYPE: &str =
    "peering.solo.io/preferred-data-plane-service-type";
/// The SPIFFE ID the peer's peerd presents, when not the default
/// `spiffe://<peer trust domain>/ns/<our namespace>/sa/<our service account>`.
pub const ANNOTATION_PEERD_IDENTITY: &str = crate::peers::model::PEERD_IDENTITY_ANNOTATION;
pub const LABEL_SERVICE_SCOPE: &str = "solo.io/service-scope";
pub const LABEL_ISTIO_GLOBAL: &str = "istio.io/global";

pub const LABEL_SOURCE_CLUSTER: &str = "solo.io/source-cluster";
pub const LABEL_SOURCE_WORKLOAD: &str = "solo.io/source-workload";
pub const ANNOTATION_PEERED_WORKLOAD_UID: &str = "solo.io/peered-workload-uid";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_PEERD: &str = "peerd";

pub const CONDITION_ACCEPTED: &str = "Accepted";
pub const CONDITION_PROGRAMMED: &str = "Programmed";
pub const CONDITION_PEER_CONNECTED: &str = "gloo.solo.io/PeerConnected";
pub const CONDITION_PEERING_SUCCEEDED: &str = "gloo.solo.io/PeeringSucceeded";
pub const CONDITION_DATA_PLANE_PROGRAMMED: &str = "gloo.solo.io/PeerDataPlaneProgrammed";

/// The five condition types peerd owns on a peer Gateway; no other type is ever written.
pub const PEER_CONDITION_TYPES: [&str; 5] = [
    CONDITION_ACCEPTED,
    CONDITION_PROGRAMMED,
    CONDITION_PEER_CONNECTED,
    CONDITION_PEERING_SUCCEEDED,
    CONDITION_DATA_PLANE_PROGRAMMED,
];

/// `spec` of a Gateway: class, addresses and listeners.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    status = "GatewayStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub gateway_class_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<GatewayListener>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// `IPAddress` (the default when absent) or `Hostname`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default)]
    pub value: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayListener {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub protocol: String,
}

/// The part of a Gateway's status peerd writes, conditions (list-map keyed by `type`),
/// and the addresses it reads.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The addresses istiod reports for a deployed gateway (read only: peerd never
    /// writes them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
}

/// `spec` of an Istio WorkloadEntry. An empty `address` means "reach it through the
/// network's east-west gateway" (multi-network per-service entries).
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadEntry",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub locality: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
}

/// `spec` of an Istio ServiceEntry (hosts, ports, resolution, location; never addresses:
/// istiod auto-allocates them).
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "ServiceEntry",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServiceEntryPort>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resolution: String,
    /// Selects the WorkloadEntries backing the service (`solo.io/service-key` label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntryPort {
    pub number: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}
