//! Peer Gateway translation and each bad input; the watches against the emulator.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};

use super::{PEERING_NS, client, create, emulator, eventually};
use peerd::kube::gateways::{
    PeerAddress, StaticResolver, SystemResolver, parse_peer_gateway, resolve_peer, start_watches,
};
use peerd::kube::types::Gateway;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn peer_gateway(cluster: &str, address: Value, listeners: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": format!("istio-remote-peer-{cluster}"),
            "namespace": PEERING_NS,
            "labels": {"topology.istio.io/cluster": cluster, "topology.istio.io/network": "net2"},
            "annotations": {"gateway.istio.io/trust-domain": "c2.local", "gateway.istio.io/service-account": "istio-eastwest"},
        },
        "spec": {"gatewayClassName": "istio-remote", "addresses": address, "listeners": listeners},
    })
}

fn both_listeners() -> Value {
    json!([
        {"name": "cross-network", "port": 15008, "protocol": "HBONE"},
        {"name": "xds-tls", "port": 15012, "protocol": "TLS"},
    ])
}

fn gw(v: Value) -> Gateway {
    serde_json::from_value(v).unwrap()
}

#[test]
fn valid_ip_gateway_becomes_a_peer() {
    let g = gw(peer_gateway(
        "c2",
        json!([{"type": "IPAddress", "value": "127.0.0.2"}]),
        both_listeners(),
    ));
    let spec = parse_peer_gateway(&g, "c1").unwrap();
    assert_eq!(spec.cluster, "c2");
    assert_eq!(spec.network, "net2");
    assert_eq!(spec.trust_domain, "c2.local");
    assert_eq!(spec.address, PeerAddress::Ip("127.0.0.2".parse().unwrap()));
    assert_eq!((spec.hbone_port, spec.xds_port), (15008, 15012));
    assert!(!spec.prefers_node_port);
    assert_eq!(spec.gateway, "istio-remote-peer-c2");
}

#[test]
fn gateway_without_address_names_the_field() {
    let g = gw(peer_gateway("c2", json!([]), both_listeners()));
    let err = parse_peer_gateway(&g, "c1").unwrap_err();
    assert_eq!(err.field, "spec.addresses");
}

#[test]
fn gateway_without_listeners_names_the_field() {
    let g = gw(peer_gateway(
        "c2",
        json!([{"value": "127.0.0.2"}]),
        json!([]),
    ));
    let err = parse_peer_gateway(&g, "c1").unwrap_err();
    assert_eq!(err.field, "spec.listeners");
    let only_hbone = json!([{"name": "cross-network", "port": 15008, "protocol": "HBONE"}]);
    let err = parse_peer_gateway(
        &gw(peer_gateway(
            "c2",
            json!([{"value": "127.0.0.2"}]),
            only_hbone,
        )),
        "c1",
    )
    .unwrap_err();
    assert_eq!(err.field, "spec.listeners");
    assert!(err.message.contains("15012"), "{err}");
}

#[test]
fn node_port_preference_does_not_need_the_hbone_listener() {
    let mut v = peer_gateway(
        "c2",
        json!([{"value": "127.0.0.2"}]),
        json!([{"name": "xds-tls", "port": 15012, "protocol": "TLS"}]),
    );
    v["metadata"]["annotations"]["peering.solo.io/preferred-data-plane-service-type"] =
        json!("NodePort");
    let spec = parse_peer_gateway(&gw(v), "c1").unwrap();
    assert!(spec.prefers_node_port);
}

#[test]
fn cluster_label_equal_to_local_cluster_is_refused() {
    let g = gw(peer_gateway(
        "c1",
        json!([{"value": "127.0.0.2"}]),
        both_listeners(),
    ));
    let err = parse_peer_gateway(&g, "c1").unwrap_err();
    assert_eq!(err.field, "metadata.labels[topology.istio.io/cluster]");
    assert!(err.message.contains("own name"), "{err}");
}

#[test]
fn bad_ip_and_missing_labels_name_the_field() {
    let g = gw(peer_gateway(
        "c2",
        json!([{"type": "IPAddress", "value": "not-an-ip"}]),
        both_listeners(),
    ));
    assert_eq!(
        parse_peer_gateway(&g, "c1").unwrap_err().field,
        "spec.addresses[0].value"
    );
    let mut v = peer_gateway("c2", json!([{"value": "127.0.0.2"}]), both_listeners());
    v["metadata"]["labels"] = json!({"topology.istio.io/cluster": "c2"});
    assert_eq!(
        parse_peer_gateway(&gw(v), "c1").unwrap_err().field,
        "metadata.labels[topology.istio.io/network]"
    );
}

#[tokio::test]
async fn hostname_that_does_not_resolve_fails_fast() {
    // `.invalid` never resolves (RFC 6761): refused before any lookup, even by the system
    // resolver, so this test sends nothing to DNS.
    let g = gw(peer_gateway(
        "c2",
        json!([{"type": "Hostname", "value": "ew.c2.invalid"}]),
        both_listeners(),
    ));
    let system = SystemResolver {
        timeout: Duration::from_secs(5),
    };
    let err = resolve_peer(&g, "c1", &system).await.unwrap_err();
    assert_eq!(err.field, "spec.addresses[0].value");
    assert!(err.message.contains(".invalid"), "{err}");

    // A name the (injected) resolver does not know.
    let g = gw(peer_gateway(
        "c2",
        json!([{"type": "Hostname", "value": "ew.c2.example"}]),
        both_listeners(),
    ));
    let resolver = StaticResolver::default();
    let err = resolve_peer(&g, "c1", &resolver).await.unwrap_err();
    assert_eq!(err.field, "spec.addresses[0].value");
    assert!(err.message.contains("does not resolve"), "{err}");

    // And one it knows.
    let resolver = StaticResolver {
        table: BTreeMap::from([(
            "ew.c2.example".to_string(),
            vec!["127.0.0.9".parse::<IpAddr>().unwrap()],
        )]),
    };
    let spec = resolve_peer(&g, "c1", &resolver).await.unwrap();
    assert_eq!(
        spec.address,
        PeerAddress::Hostname {
            name: "ew.c2.example".into(),
            resolved: vec!["127.0.0.9".parse().unwrap()]
        }
    );
}

#[tokio::test]
async fn watches_follow_gateways_global_services_and_local_network_and_keep_no_bookkeeping() {
    let emu = emulator().await;
    let client = client(&emu).await;
    let gateways = format!("/apis/gateway.networking.k8s.io/v1/namespaces/{PEERING_NS}/gateways");
    // As `kubectl apply` leaves it: a copy of itself in an annotation.
    let mut c2 = peer_gateway("c2", json!([{"value": "127.0.0.2"}]), both_listeners());
    c2["metadata"]["annotations"][LAST_APPLIED] = json!(c2.to_string());
    let stored = create(&emu, &gateways, &c2).await;
    assert!(
        !stored["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the API server records managedFields: {stored}"
    );
    create(
        &emu,
        &gateways,
        &json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "istio-eastwest", "namespace": PEERING_NS},
            "spec": {"gatewayClassName": "istio-eastwest", "listeners": both_listeners()},
        }),
    )
    .await;
    create(
        &emu,
        &gateways,
        &json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "ingress", "namespace": PEERING_NS},
            "spec": {"gatewayClassName": "istio", "listeners": []},
        }),
    )
    .await;
    let service = |name: &str, labels: Value| {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"ports": [{"port": 80}]},
        })
    };
    let services = "/api/v1/namespaces/default/services";
    create(
        &emu,
        services,
        &service("scoped", json!({"solo.io/service-scope": "global"})),
    )
    .await;
    create(
        &emu,
        services,
        &service("community", json!({"istio.io/global": "true"})),
    )
    .await;
    create(&emu, services, &service("local", json!({}))).await;
    let (code, _) = emu
        .request(
            http::Method::PATCH,
            "/api/v1/namespaces/istio-system",
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"topology.istio.io/network": "net1"}}}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(code, 200);

    let mut tasks = tokio::task::JoinSet::new();
    let watches = start_watches(client, PEERING_NS, &mut tasks);
    watches.ready().await.unwrap();
    let names = |v: Vec<std::sync::Arc<Gateway>>| {
        v.iter()
            .map(|g| g.metadata.name.clone().unwrap())
            .collect::<Vec<_>>()
    };
    eventually("gateways listed", || async {
        watches.peer_gateways().len() == 1
    })
    .await;
    assert_eq!(names(watches.peer_gateways()), vec!["istio-remote-peer-c2"]);
    // The store keeps the object without the API server's bookkeeping, and the rest whole.
    let kept = &watches.peer_gateways()[0].metadata;
    assert_eq!(kept.managed_fields, None);
    let annotations = kept.annotations.as_ref().unwrap();
    assert!(!annotations.contains_key(LAST_APPLIED));
    assert_eq!(annotations["gateway.istio.io/trust-domain"], "c2.local");
    assert_eq!(names(watches.eastwest_gateways()), vec!["istio-eastwest"]);
    let global: Vec<_> = watches
        .global_services()
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(global, vec!["community", "scoped"]);
    let mut network = watches.local_network.clone();
    eventually("local network", || {
        let v = network.borrow_and_update().clone();
        async move { v.as_deref() == Some("net1") }
    })
    .await;

    // A new peer Gateway shows up through the watch.
    create(
        &emu,
        &gateways,
        &peer_gateway("c3", json!([{"value": "127.0.0.3"}]), both_listeners()),
    )
    .await;
    eventually("second peer", || async {
        watches.peer_gateways().len() == 2
    })
    .await;
}
