//! Live peers in Kubernetes mode, through the real daemons: the home cluster's peer
//! clients follow the `istio-remote` Gateways of its emulated API server with no restart
//! (the same `Peerd` value throughout, so the same process). Added: the peer's workloads
//! reach a ztunnel-like downstream and the leader writes their WorkloadEntries.
//! Re-addressed: the client reconnects at the new address and the downstream is told to
//! remove nothing. Edited to an invalid address: conditions say `Invalid` and the last
//! valid client keeps running. Deleted: the downstream loses the peer's workloads, the
//! leader deletes its WorkloadEntries and ServiceEntries, and `/metrics` no longer has its
//! `peer_cluster` series, while the grace period (1 h) is far away: only the explicit
//! removal explains it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod live_support;
mod xds_support;

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use peerd::app::Peerd;
use peerd::kube::types::{
    ANNOTATION_TRUST_DOMAIN, GATEWAY_CLASS_REMOTE, LABEL_CLUSTER, LABEL_NETWORK,
};
use peerd::peers::conditions::reason;
use peerd_testbed::emulator::{Emulator, EmulatorHandle, EmulatorOptions};
use serde_json::{Value, json};

use live_support::{
    Forwarder, LOCALHOST, Lab, PEER_HOST, PEER_HOST_2, eventually, eventually_async, free_port,
    load, metrics_text, trust_domain,
};

const HOME: &str = "live-home";
const PEER: &str = "live-peer";
const GATEWAY: &str = "istio-remote-peer-live-peer";
const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/istio-eastwest/gateways";

/// The peer's Gateway at `address` (its xDS listener on 15012, as Gateways require).
fn peer_gateway(address: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": GATEWAY,
            "namespace": "istio-eastwest",
            "labels": {LABEL_CLUSTER: PEER, LABEL_NETWORK: "net-peer"},
            "annotations": {ANNOTATION_TRUST_DOMAIN: trust_domain(PEER)},
        },
        "spec": {
            "gatewayClassName": GATEWAY_CLASS_REMOTE,
            "addresses": [{"type": "IPAddress", "value": address}],
            "listeners": [
                {"name": "cross-network", "port": 15008, "protocol": "HBONE", "tls": {"mode": "Passthrough"}},
                {"name": "xds-tls", "port": 15012, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
            ],
        },
    })
}

async fn send(emu: &EmulatorHandle, method: Method, path: &str, content_type: &str, body: &Value) {
    emu.request_ok(method, path, content_type, body)
        .await
        .unwrap();
}

/// Moves the peer Gateway to `address` (a merge patch, as `kubectl edit` would).
async fn readdress(emu: &EmulatorHandle, address: &str) {
    let spec = &peer_gateway(address)["spec"];
    send(
        emu,
        Method::PATCH,
        &format!("{GATEWAYS}/{GATEWAY}"),
        "application/merge-patch+json",
        &json!({"spec": {"addresses": spec["addresses"]}}),
    )
    .await;
}

/// Names of the objects of `plural` (networking.istio.io) in istio-system.
async fn istio_objects(emu: &EmulatorHandle, plural: &str) -> Vec<String> {
    let (code, list) = emu
        .request(
            Method::GET,
            &format!("/apis/networking.istio.io/v1/namespaces/istio-system/{plural}"),
            "",
            "",
        )
        .await
        .unwrap();
    assert_eq!(code, 200, "{list}");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn peer_entries(names: &[String]) -> usize {
    names
        .iter()
        .filter(|n| n.starts_with(&format!("autogen.{PEER}.")))
        .count()
}

async fn running_address(home: &Peerd) -> Option<String> {
    home.peer_clients
        .running()
        .await
        .get(PEER)
        .map(|p| p.address.to_string())
}

fn shows_invalid(home: &Peerd) -> bool {
    home.peers
        .snapshot()
        .iter()
        .any(|p| p.cluster == PEER && p.conditions.iter().any(|c| c.reason == reason::INVALID))
}

fn gateway_status_says_invalid(emu: &EmulatorHandle) -> bool {
    emu.object(
        "gateway.networking.k8s.io",
        "gateways",
        "istio-eastwest",
        GATEWAY,
    )
    .and_then(|g| g["status"]["conditions"].as_array().cloned())
    .is_some_and(|cs| cs.iter().any(|c| c["reason"] == reason::INVALID))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_clients_follow_the_istio_remote_gateways_without_a_restart() {
    let lab = Lab::new();
    let emu = Emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        EmulatorOptions {
            bookmark_interval: Duration::from_millis(100),
            namespaces: ["default", "istio-system", "istio-eastwest"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let home_xds = free_port();
    let (peer, _peer_sim) = lab
        .start_peer(
            PEER,
            21,
            "net-peer",
            SocketAddr::new(PEER_HOST, 15012),
            &[(HOME, "net-home", home_xds)],
        )
        .await;
    let home_sim = lab.sim(HOME, 22, "net-home");
    let kubernetes = format!(
        "kubernetes:\n  server: \"{}\"\n  leaderElection: {{ leaseDuration: 10s, renewPeriod: 2s }}\n",
        emu.url()
    );
    let home_addr = SocketAddr::new(LOCALHOST, home_xds);
    let path = lab.write_config(HOME, "net-home", home_addr, &home_sim, &kubernetes);
    let home = Peerd::start(load(&path)).await.unwrap();
    let downstream = lab.downstream(&home).await;
    eventually(
        "the home cluster's own workloads reach the downstream",
        || downstream.workloads_of(HOME) > 0,
    )
    .await;
    assert!(
        home.peer_clients.running().await.is_empty(),
        "no Gateway yet"
    );

    // Added at runtime.
    send(
        &emu,
        Method::POST,
        GATEWAYS,
        "application/json",
        &peer_gateway(&PEER_HOST.to_string()),
    )
    .await;
    eventually("the peer's workloads reach the downstream", || {
        downstream.workloads_of(PEER) > 0
    })
    .await;
    let imported = downstream.workloads_of(PEER);
    eventually("the peer's conditions appear", || {
        home.peers
            .snapshot()
            .iter()
            .any(|p| p.cluster == PEER && p.conditions.iter().next().is_some())
    })
    .await;
    eventually_async("the leader writes the peer's WorkloadEntries", || async {
        peer_entries(&istio_objects(&emu, "workloadentries").await) > 0
    })
    .await;
    assert!(!istio_objects(&emu, "serviceentries").await.is_empty());
    eventually_async("the peer's series are on /metrics", || async {
        metrics_text(home.metrics_addr)
            .await
            .contains(&format!("peer_cluster=\"{PEER}\""))
    })
    .await;

    // Re-addressed: same cluster and identity, another address (a forwarder to the peer).
    let forwarder = Forwarder::start(SocketAddr::new(PEER_HOST_2, 15012), peer.xds_addr).await;
    readdress(&emu, &PEER_HOST_2.to_string()).await;
    eventually_async("the client runs against the new address", || async {
        running_address(&home).await == Some(PEER_HOST_2.to_string())
    })
    .await;
    eventually(
        "the client reconnected through the new address and resynced",
        || {
            forwarder.accepted.load(std::sync::atomic::Ordering::SeqCst) > 0
                && home.store.get(PEER).is_some_and(|o| o.is_fully_synced())
        },
    )
    .await;
    assert_eq!(
        downstream.removals_of(PEER),
        Vec::<String>::new(),
        "re-addressing withdrew nothing"
    );
    assert_eq!(downstream.workloads_of(PEER), imported);

    // Edited to an invalid address: conditions say Invalid, the last valid client stays.
    readdress(&emu, "not-an-ip").await;
    eventually("the peer's conditions say Invalid", || shows_invalid(&home)).await;
    eventually("the Gateway's status says Invalid", || {
        gateway_status_says_invalid(&emu)
    })
    .await;
    assert_eq!(
        running_address(&home).await,
        Some(PEER_HOST_2.to_string()),
        "the last valid client keeps running"
    );
    assert!(home.store.get(PEER).is_some_and(|o| o.is_fully_synced()));
    assert_eq!(downstream.workloads_of(PEER), imported);
    assert!(downstream.removals_of(PEER).is_empty());

    // Deleted: withdrawn at once (the grace period is an hour), entries and series gone.
    send(
        &emu,
        Method::DELETE,
        &format!("{GATEWAYS}/{GATEWAY}"),
        "",
        &json!({}),
    )
    .await;
    eventually("the downstream loses the peer's workloads", || {
        downstream.workloads_of(PEER) == 0
    })
    .await;
    assert!(home.peer_clients.running().await.is_empty());
    assert!(home.federation.peers().is_empty());
    assert!(home.store.get(PEER).is_none());
    eventually_async(
        "the leader deletes the peer's WorkloadEntries and ServiceEntries",
        || async {
            peer_entries(&istio_objects(&emu, "workloadentries").await) == 0
                && istio_objects(&emu, "serviceentries").await.is_empty()
        },
    )
    .await;
    let metrics = metrics_text(home.metrics_addr).await;
    assert!(
        !metrics.contains(&format!("peer_cluster=\"{PEER}\"")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("peer_cluster=\"{HOME}\"")),
        "the local series stay"
    );
    assert!(
        downstream.workloads_of(HOME) > 0,
        "the local workloads stay"
    );
}
