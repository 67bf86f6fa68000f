//! What a cluster publishes for others to peer with it: the address in its east-west
//! Gateway's status (where istiod reports the deployed gateway), its network (the
//! `istio-system` namespace's `topology.istio.io/network` label, which the east-west
//! Gateway's label must not contradict), its trust domain (the mesh config's
//! `trustDomain`, Istio's default `cluster.local`), whether it prefers a NodePort data
//! plane, and the `istio-system` namespace's uid (two contexts reaching one cluster
//! share it). The cluster's name is the context's (`--context NAME=CLUSTER`).
//!
//! Reads only; must never write to a cluster.

use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ApiResource, DynamicObject};
use serde::Deserialize;

use super::shown;
use crate::debug::check_kube::{ContextArg, ISTIO_SYSTEM};
use crate::kube::types::{
    ANNOTATION_DATA_PLANE_SERVICE_TYPE, GATEWAY_CLASS_EASTWEST, Gateway, GatewayAddress,
    LABEL_NETWORK,
};

/// The east-west Gateway's name (in the peering namespace).
pub const EASTWEST_GATEWAY: &str = "istio-eastwest";
/// The mesh config: ConfigMap `istio-system/istio`, key `mesh` (YAML).
const MESH_CONFIGMAP: &str = "istio";
const MESH_KEY: &str = "mesh";
/// Istio's trust domain when the mesh config sets none.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// One cluster as its peers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterEndpoint {
    pub context: String,
    pub cluster: String,
    pub network: String,
    pub trust_domain: String,
    /// The east-west Gateway's first status address (`IPAddress` or `Hostname`).
    pub address: GatewayAddress,
    /// The east-west Gateway prefers a NodePort data plane.
    pub node_port: bool,
    /// The `istio-system` namespace's uid.
    pub namespace_uid: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StatusAddresses {
    #[serde(default)]
    addresses: Vec<GatewayAddress>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MeshConfig {
    #[serde(default)]
    trust_domain: Option<String>,
}

/// The `istio-system` namespace's network label and uid, or an error naming what is
/// missing.
pub async fn istio_system(
    client: &kube::Client,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = namespaces
        .get_opt(ISTIO_SYSTEM)
        .await
        .with_context(|| format!("reading namespace {ISTIO_SYSTEM}"))?
        .with_context(|| format!("no namespace {ISTIO_SYSTEM}: is Istio installed?"))?;
    let network = namespace
        .metadata
        .labels
        .unwrap_or_default()
        .remove(LABEL_NETWORK);
    Ok((network, namespace.metadata.uid))
}

/// Reads `target`'s endpoint; the error says what the operator must fix.
pub async fn read(
    client: &kube::Client,
    target: &ContextArg,
    peering_namespace: &str,
) -> anyhow::Result<ClusterEndpoint> {
    let (namespace_network, namespace_uid) = istio_system(client).await?;
    let resource = ApiResource::erase::<Gateway>(&());
    let gateways: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), peering_namespace, &resource);
    let gateway = gateways
        .get_opt(EASTWEST_GATEWAY)
        .await
        .with_context(|| format!("reading Gateway {peering_namespace}/{EASTWEST_GATEWAY}"))?
        .with_context(|| {
            format!(
                "no east-west Gateway {peering_namespace}/{EASTWEST_GATEWAY}: expose the cluster first (`peerd expose --context {}`)",
                target.context
            )
        })?;
    let class = gateway
        .data
        .pointer("/spec/gatewayClassName")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if class != GATEWAY_CLASS_EASTWEST {
        anyhow::bail!(
            "Gateway {peering_namespace}/{EASTWEST_GATEWAY} has class {}, expected {GATEWAY_CLASS_EASTWEST:?}",
            shown(class)
        );
    }
    let status: StatusAddresses = gateway
        .data
        .get("status")
        .map(|s| serde_json::from_value(s.clone()))
        .transpose()
        .with_context(|| format!("Gateway {peering_namespace}/{EASTWEST_GATEWAY}: status"))?
        .unwrap_or_default();
    let address = status
        .addresses
        .into_iter()
        .find(|a| !a.value.is_empty())
        .with_context(|| {
            format!(
                "the east-west Gateway {peering_namespace}/{EASTWEST_GATEWAY} has no address in its status yet (not Programmed: is the gateway deployed and its Service given an address?)"
            )
        })?;
    let labels = gateway.metadata.labels.clone().unwrap_or_default();
    let gateway_network = labels.get(LABEL_NETWORK).cloned();
    let network = match (namespace_network, gateway_network) {
        (Some(ns), Some(gw)) if ns != gw => anyhow::bail!(
            "networks disagree: namespace {ISTIO_SYSTEM} is labelled {LABEL_NETWORK}={} but the east-west Gateway {}",
            shown(&ns),
            shown(&gw)
        ),
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => anyhow::bail!(
            "no network: label namespace {ISTIO_SYSTEM} (and the east-west Gateway) with {LABEL_NETWORK}"
        ),
    };
    let node_port = gateway
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_DATA_PLANE_SERVICE_TYPE))
        .is_some_and(|v| v == "NodePort");
    Ok(ClusterEndpoint {
        context: target.context.clone(),
        cluster: target.cluster.clone(),
        network,
        trust_domain: trust_domain(client).await?,
        address,
        node_port,
        namespace_uid,
    })
}

/// The mesh config's `trustDomain`, else Istio's default.
async fn trust_domain(client: &kube::Client) -> anyhow::Result<String> {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ISTIO_SYSTEM);
    let mesh = configmaps
        .get_opt(MESH_CONFIGMAP)
        .await
        .with_context(|| format!("reading ConfigMap {ISTIO_SYSTEM}/{MESH_CONFIGMAP}"))?
        .and_then(|cm| cm.data.unwrap_or_default().remove(MESH_KEY));
    let Some(text) = mesh else {
        return Ok(DEFAULT_TRUST_DOMAIN.to_string());
    };
    let config: MeshConfig = yaml_serde::from_str(&text).with_context(|| {
        format!("ConfigMap {ISTIO_SYSTEM}/{MESH_CONFIGMAP} key {MESH_KEY}: not a mesh config")
    })?;
    Ok(config
        .trust_domain
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_string()))
}
