//! Each simulated cluster's Kubernetes API: an emulated API server on 127.0.k.1:6443
//! (no real kube-apiserver can run here), seeded like a peered cluster (docs/design.md
//! §6.1, §11) but not linked: the network label on `istio-system`, the local east-west
//! Gateway `istio-eastwest` with the status istiod would write (Programmed, its
//! address), the mesh root ConfigMap, and a Service labelled `solo.io/service-scope=global`
//! per global service of the simulated istiod (the first also with a `ServiceExport`). The `istio-remote-peer-<cluster>` Gateways
//! come from `peerd link` (see `sandbox::linking`). That cluster's peerd reads peers and
//! global services from it and writes Gateway conditions, WorkloadEntries and
//! ServiceEntries to it; `kubectl --server http://127.0.k.1:6443` shows them.
//!
//! It owns seeding only; it never writes after start (that is peerd's job, and
//! `peerd link`'s) and never listens outside 127.0.0.0/8.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use http::Method;
use serde_json::{Value, json};

use crate::emulator::{Emulator, EmulatorHandle, EmulatorOptions};
use crate::sandbox::layout::{ClusterLayout, HBONE_PORT, XDS_PORT};
use peerd::kube::types::{GATEWAY_CLASS_EASTWEST, LABEL_NETWORK, LABEL_SERVICE_SCOPE};

/// Namespace of the east-west and peer Gateways.
pub const PEERING_NAMESPACE: &str = "istio-eastwest";
const GATEWAYS_PATH: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/istio-eastwest/gateways";

/// The emulator's defaults with at most `events_kept` events in its history and in each
/// watch's buffer (an older resourceVersion gets 410, a watch that lags more is closed,
/// as a real API server's watch cache and compaction do).
fn retention(events_kept: Option<usize>) -> EmulatorOptions {
    let defaults = EmulatorOptions::default();
    match events_kept {
        Some(n) => EmulatorOptions {
            history_window: n,
            watch_buffer: n,
            ..defaults
        },
        None => defaults,
    }
}

/// Starts `me`'s emulated API server and seeds it. `global_services` are `ns/name`.
/// `events_kept` bounds the server's watch history and per-watch buffer (events of
/// whole objects, tens of KB each); `None` keeps the emulator's defaults.
pub async fn start(
    me: &ClusterLayout,
    global_services: &[String],
    root_pem: &str,
    events_kept: Option<usize>,
) -> anyhow::Result<EmulatorHandle> {
    if !me.host.is_loopback() {
        bail!(
            "{}: the emulated API server must listen on loopback",
            me.name
        );
    }
    let mut namespaces: BTreeSet<String> =
        ["default", "kube-system", "istio-system", PEERING_NAMESPACE]
            .map(String::from)
            .into_iter()
            .collect();
    let services: Vec<(&str, &str)> = global_services
        .iter()
        .filter_map(|s| s.split_once('/'))
        .collect();
    namespaces.extend(services.iter().map(|(ns, _)| ns.to_string()));
    let emulator = Emulator::start(
        me.kube_api(),
        EmulatorOptions {
            namespaces: namespaces.into_iter().collect(),
            ..retention(events_kept)
        },
    )
    .await
    .with_context(|| format!("{}: emulated Kubernetes API server", me.name))?;

    send(
        &emulator,
        Method::PATCH,
        "/api/v1/namespaces/istio-system",
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {LABEL_NETWORK: me.network}}}),
    )
    .await?;
    send(
        &emulator,
        Method::POST,
        GATEWAYS_PATH,
        "application/json",
        &eastwest_gateway(me),
    )
    .await?;
    // What istiod would publish: the east-west Gateway programmed at its address, and the
    // mesh root in istio-system/istio-ca-root-cert (`peerd check --kubeconfig` reads both).
    send(
        &emulator,
        Method::PATCH,
        &format!("{GATEWAYS_PATH}/istio-eastwest/status?fieldManager=istiod&force=true"),
        "application/apply-patch+yaml",
        &eastwest_programmed(me),
    )
    .await?;
    send(
        &emulator,
        Method::POST,
        "/api/v1/namespaces/istio-system/configmaps",
        "application/json",
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "istio-ca-root-cert", "namespace": "istio-system"},
                "data": {"root-cert.pem": root_pem}}),
    )
    .await?;
    for &(namespace, name) in &services {
        send(
            &emulator,
            Method::POST,
            &format!("/api/v1/namespaces/{namespace}/services"),
            "application/json",
            &global_service(namespace, name),
        )
        .await?;
    }
    // The first global service is also exported the MCS way (a ServiceExport of the same
    // name), so `kubectl get serviceexports -A` shows one.
    if let Some((namespace, name)) = services.first() {
        send(
            &emulator,
            Method::POST,
            &format!("/apis/multicluster.x-k8s.io/v1alpha1/namespaces/{namespace}/serviceexports"),
            "application/json",
            &json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
                    "metadata": {"name": name, "namespace": namespace}}),
        )
        .await?;
    }
    Ok(emulator)
}

async fn send(
    emulator: &EmulatorHandle,
    method: Method,
    path: &str,
    content_type: &str,
    body: &Value,
) -> anyhow::Result<()> {
    let (code, reply) = emulator
        .request(method.clone(), path, content_type, body.to_string())
        .await?;
    if !(200..300).contains(&code) {
        bail!("seeding the emulated API server: {method} {path}: {code} {reply}");
    }
    Ok(())
}

fn listeners() -> Value {
    json!([
        {"name": "cross-network", "port": HBONE_PORT, "protocol": "HBONE",
         "tls": {"mode": "Passthrough"}},
        {"name": "xds-tls", "port": XDS_PORT, "protocol": "TLS",
         "tls": {"mode": "Passthrough"}},
    ])
}

/// The cluster's own east-west gateway (class `istio-eastwest`).
pub fn eastwest_gateway(me: &ClusterLayout) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": "istio-eastwest",
            "namespace": PEERING_NAMESPACE,
            "labels": {
                LABEL_NETWORK: me.network,
                "istio.io/expose-istiod": XDS_PORT.to_string(),
            },
        },
        "spec": {
            "gatewayClassName": GATEWAY_CLASS_EASTWEST,
            "addresses": [{"type": "IPAddress", "value": me.host.to_string()}],
            "listeners": listeners(),
        },
    })
}

/// The east-west Gateway's status as istiod writes it once the gateway is deployed.
fn eastwest_programmed(me: &ClusterLayout) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "istio-eastwest", "namespace": PEERING_NAMESPACE},
        "status": {
            "addresses": [{"type": "IPAddress", "value": me.host.to_string()}],
            "conditions": [{
                "type": "Programmed", "status": "True", "reason": "Programmed",
                "message": "simulated: the east-west gateway is deployed",
                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1,
            }],
        },
    })
}

/// A kubeconfig with one context per cluster, named like the cluster, for `kubectl
/// --context` and `peerd check --kubeconfig … --context …`.
pub fn kubeconfig(all: &[ClusterLayout]) -> String {
    let mut text = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for c in all {
        text += &format!(
            "- name: {}\n  cluster:\n    server: {}\n",
            c.name,
            c.kube_api_url()
        );
    }
    text += "contexts:\n";
    for c in all {
        text += &format!(
            "- name: {0}\n  context:\n    cluster: {0}\n    user: sandbox\n    namespace: istio-system\n",
            c.name
        );
    }
    let current = all.first().map(|c| c.name.as_str()).unwrap_or_default();
    text += &format!("current-context: {current}\nusers:\n- name: sandbox\n  user: {{}}\n");
    text
}

/// A Service marked global. Its spec only needs to exist: the simulated istiod serves the
/// workloads, the label makes peerd export it.
fn global_service(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_SERVICE_SCOPE: "global", "app": name},
        },
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_bounds_the_history_and_every_watch_buffer_alike() {
        let bounded = retention(Some(4096));
        assert_eq!((bounded.history_window, bounded.watch_buffer), (4096, 4096));
        let defaults = EmulatorOptions::default();
        let unbounded = retention(None);
        assert_eq!(
            (unbounded.history_window, unbounded.watch_buffer),
            (defaults.history_window, defaults.watch_buffer)
        );
    }
}
