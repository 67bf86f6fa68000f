//! The naming rules of generated objects, on fixed vectors (docs/design.md §7.1).

use std::collections::BTreeSet;
use std::net::IpAddr;

use peerd::kube::flatsync::{
    GlobalService, ImportedWorkload, PeerExports, PeerNetworkMode, desired_objects,
    global_service_of_key, services_hash12, source_workload_label,
};
use peerd::xds::resource::WorkloadSummary;

fn svc(ns: &str, name: &str) -> GlobalService {
    GlobalService {
        namespace: ns.into(),
        name: name.into(),
        ports: vec![],
    }
}

fn pod(name: &str, ns: &str, ip: &str, services: &[(&str, &str)]) -> ImportedWorkload {
    ImportedWorkload {
        name: name.into(),
        namespace: ns.into(),
        uid: format!("c2/core/Pod/{ns}/{name}"),
        address: Some(ip.parse::<IpAddr>().unwrap()),
        network: "shared".into(),
        service_account: "sa1".into(),
        locality: "region1/zone1".into(),
        services: services
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    }
}

fn flat_peer(
    cluster: &str,
    workloads: Vec<ImportedWorkload>,
    services: Vec<GlobalService>,
) -> PeerExports {
    PeerExports {
        cluster: cluster.into(),
        network: "shared".into(),
        mode: PeerNetworkMode::Flat,
        workloads,
        services,
    }
}

#[test]
fn reference_vector_name_labels_and_annotation() {
    let peer = flat_peer(
        "c2",
        vec![pod("pod1", "default", "10.1.0.5", &[("default", "svc1")])],
        vec![svc("default", "svc1")],
    );
    let out = desired_objects("istio-system", &[peer]);
    let names: Vec<_> = out.workload_entries.keys().cloned().collect();
    assert_eq!(names, vec!["autogenflat.c2.default.pod1.f2396f15c5c2"]);
    let we = &out.workload_entries["autogenflat.c2.default.pod1.f2396f15c5c2"];
    let labels = we.metadata.labels.clone().unwrap();
    assert_eq!(labels["solo.io/source-cluster"], "c2");
    assert_eq!(
        labels["solo.io/source-workload"],
        "autogenflat.c2.default.pod1"
    );
    assert_eq!(labels["app.kubernetes.io/managed-by"], "peerd");
    assert_eq!(
        we.metadata.annotations.clone().unwrap()["solo.io/peered-workload-uid"],
        "c2/core/Pod/default/pod1"
    );
    assert_eq!(we.metadata.namespace.as_deref(), Some("istio-system"));
    assert_eq!(we.spec.address, "10.1.0.5");
    assert_eq!(we.spec.network, "shared");
    assert_eq!(we.spec.service_account, "sa1");
    assert_eq!(we.spec.locality, "region1/zone1");

    let se = &out.service_entries["autogen.default.svc1"];
    assert_eq!(se.spec.hosts, vec!["svc1.default.mesh.internal"]);
    assert_eq!(se.spec.resolution, "STATIC");
    let json = serde_json::to_value(&**se).unwrap();
    assert!(
        json["spec"].get("addresses").is_none(),
        "no addresses: {json}"
    );
    assert_eq!(
        se.metadata.labels.clone().unwrap()["app.kubernetes.io/managed-by"],
        "peerd"
    );
    // The ServiceEntry selects the WorkloadEntry.
    let selector = se.spec.workload_selector.clone().unwrap().labels;
    for (k, v) in &selector {
        assert_eq!(we.spec.labels.get(k), Some(v));
    }
}

#[test]
fn hash12_sorts_and_joins_services() {
    // sha256("default/svc1,shop/cart") = d0338e4d7a9e… (computed independently).
    let unsorted: BTreeSet<_> = [
        ("shop".to_string(), "cart".to_string()),
        ("default".to_string(), "svc1".to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(services_hash12(&unsorted), "d0338e4d7a9e");
    let peer = flat_peer(
        "c2",
        vec![pod(
            "p",
            "default",
            "10.1.0.6",
            &[("shop", "cart"), ("default", "svc1")],
        )],
        vec![svc("shop", "cart"), svc("default", "svc1")],
    );
    let out = desired_objects("istio-system", &[peer]);
    assert!(
        out.workload_entries
            .contains_key("autogenflat.c2.default.p.d0338e4d7a9e")
    );
    assert_eq!(out.service_entries.len(), 2);
}

#[test]
fn long_source_workload_label_is_hashed() {
    // 77 chars > 63: sha256(value)[:8] = d8d4f828 (computed independently).
    let label = source_workload_label(
        "cluster-with-a-long-name",
        "namespace-long",
        "pod-name-abcdefghijklmnop",
    );
    assert_eq!(label, "autogenflat.d8d4f828");
    assert_eq!(
        source_workload_label("c2", "default", "pod1"),
        "autogenflat.c2.default.pod1"
    );
}

#[test]
fn names_are_capped_at_253() {
    let long_pod = "p".repeat(250);
    let peer = flat_peer(
        "c2",
        vec![pod(
            &long_pod,
            "default",
            "10.1.0.7",
            &[("default", "svc1")],
        )],
        vec![svc("default", "svc1")],
    );
    let out = desired_objects("istio-system", &[peer]);
    let name = out.workload_entries.keys().next().unwrap();
    assert_eq!(name.len(), 253);
    assert!(name.starts_with("autogenflat.c2.default.ppp"));
}

#[test]
fn only_pods_backing_exported_services_with_an_ip() {
    let mut no_ip = pod("noip", "default", "10.1.0.8", &[("default", "svc1")]);
    no_ip.address = None;
    let peer = flat_peer(
        "c2",
        vec![
            pod(
                "backs",
                "default",
                "10.1.0.9",
                &[("default", "svc1"), ("default", "private")],
            ),
            pod("other", "default", "10.1.0.10", &[("default", "private")]),
            no_ip,
        ],
        vec![svc("default", "svc1")],
    );
    let out = desired_objects("istio-system", &[peer]);
    // Hash over the exported services only: same as the documented vector (docs/design.md §7.1).
    assert_eq!(
        out.workload_entries.keys().cloned().collect::<Vec<_>>(),
        vec!["autogenflat.c2.default.backs.f2396f15c5c2"]
    );
}

#[test]
fn multi_network_peer_gets_one_addressless_entry_per_service() {
    let peer = PeerExports {
        cluster: "c3".into(),
        network: "net3".into(),
        mode: PeerNetworkMode::MultiNetwork,
        workloads: vec![pod(
            "ignored",
            "default",
            "10.3.0.1",
            &[("default", "svc1")],
        )],
        services: vec![svc("default", "svc1"), svc("shop", "cart")],
    };
    let out = desired_objects("istio-system", &[peer]);
    let names: Vec<_> = out.workload_entries.keys().cloned().collect();
    assert_eq!(
        names,
        vec!["autogen.c3.default.svc1", "autogen.c3.shop.cart"]
    );
    let we = &out.workload_entries["autogen.c3.default.svc1"];
    assert_eq!(we.spec.address, "");
    assert_eq!(we.spec.network, "net3");
    let json = serde_json::to_value(&**we).unwrap();
    assert!(json["spec"].get("address").is_none());
    assert_eq!(
        we.metadata.labels.clone().unwrap()["solo.io/source-cluster"],
        "c3"
    );
    assert!(out.service_entries.contains_key("autogen.shop.cart"));
    assert!(!names.iter().any(|n| n.starts_with("autogenflat.")));
}

#[test]
fn same_service_from_two_peers_is_one_service_entry_regardless_of_order() {
    let a = flat_peer(
        "c2",
        vec![pod("a", "default", "10.1.0.1", &[("default", "svc1")])],
        vec![svc("default", "svc1")],
    );
    let b = flat_peer(
        "c4",
        vec![pod("b", "default", "10.4.0.1", &[("default", "svc1")])],
        vec![svc("default", "svc1")],
    );
    let ab = desired_objects("istio-system", &[a.clone(), b.clone()]);
    let ba = desired_objects("istio-system", &[b, a]);
    assert_eq!(format!("{ab:?}"), format!("{ba:?}"));
    assert_eq!(ab.service_entries.len(), 1);
    assert_eq!(ab.workload_entries.len(), 2);
}

#[test]
fn imported_summary_keys_map_to_services() {
    assert_eq!(
        global_service_of_key("default/svc1.default.mesh.internal"),
        Some(("default".to_string(), "svc1".to_string()))
    );
    assert_eq!(
        global_service_of_key("default/svc1.default.svc.cluster.local"),
        None
    );
    assert_eq!(
        global_service_of_key("other/svc1.default.mesh.internal"),
        None
    );
    let summary = WorkloadSummary {
        uid: "c2/core/Pod/default/pod1".into(),
        name: "pod1".into(),
        namespace: "default".into(),
        cluster_id: "c2".into(),
        network: "shared".into(),
        addresses: vec!["10.1.0.5".parse().unwrap()],
        service_account: "sa1".into(),
        services: vec!["default/svc1.default.mesh.internal".into()],
        ..Default::default()
    };
    let w = ImportedWorkload::from_summary(&summary, "");
    let peer = flat_peer("c2", vec![w], vec![svc("default", "svc1")]);
    let out = desired_objects("istio-system", &[peer]);
    assert!(
        out.workload_entries
            .contains_key("autogenflat.c2.default.pod1.f2396f15c5c2")
    );
}

#[test]
fn flat_only_with_the_same_network_and_flat_networks_enabled() {
    assert_eq!(
        PeerNetworkMode::decide("shared", "shared", true),
        PeerNetworkMode::Flat
    );
    assert_eq!(
        PeerNetworkMode::decide("shared", "shared", false),
        PeerNetworkMode::MultiNetwork
    );
    assert_eq!(
        PeerNetworkMode::decide("net2", "net1", true),
        PeerNetworkMode::MultiNetwork
    );
    assert_eq!(
        PeerNetworkMode::decide("", "", true),
        PeerNetworkMode::MultiNetwork
    );
}
