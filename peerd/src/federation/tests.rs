//! Unit tests of the federation rules, one per rule, on in-memory stores.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::identity::spiffe::SpiffeId;
use crate::proto::istio::{security, workload};
use crate::xds::client::ResourceFilter;
use crate::xds::resource::Resource;
use crate::xds::wire::codec::len_field;

const LOCAL: &str = "c1";

fn ip(s: &str) -> Vec<u8> {
    match s.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn ports(list: &[(u32, u32)]) -> Vec<workload::Port> {
    list.iter()
        .map(|(s, t)| workload::Port {
            service_port: *s,
            target_port: *t,
            app_protocol: 0,
        })
        .collect()
}

fn service(ns: &str, name: &str, hostname: &str, vip: &str, p: &[(u32, u32)]) -> Arc<Resource> {
    Arc::new(
        Resource::service(&workload::Service {
            name: name.into(),
            namespace: ns.into(),
            hostname: hostname.into(),
            addresses: vec![workload::NetworkAddress {
                network: String::new(),
                address: ip(vip),
                length: None,
            }],
            ports: ports(p),
            ..Default::default()
        })
        .unwrap(),
    )
}

fn local_service(ns: &str, name: &str, vip: &str) -> Arc<Resource> {
    service(
        ns,
        name,
        &format!("{name}.{ns}.svc.cluster.local"),
        vip,
        &[(80, 8080)],
    )
}

fn workload_res(w: workload::Workload) -> Arc<Resource> {
    Arc::new(Resource::workload(&w).unwrap())
}

fn local_pod(name: &str, addr: &str, services: &[&str]) -> Arc<Resource> {
    workload_res(workload::Workload {
        uid: format!("{LOCAL}//Pod/default/{name}"),
        name: name.into(),
        namespace: "default".into(),
        addresses: vec![ip(addr)],
        cluster_id: LOCAL.into(),
        services: services
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    workload::PortList {
                        ports: ports(&[(80, 8080)]),
                    },
                )
            })
            .collect(),
        ..Default::default()
    })
}

/// A workload as peer `cluster` exports it.
fn peer_pod(cluster: &str, network: &str, name: &str, addr: &str, gateway: bool) -> Arc<Resource> {
    workload_res(workload::Workload {
        uid: format!("{cluster}//Pod/default/{name}"),
        name: name.into(),
        namespace: "default".into(),
        addresses: vec![ip(addr)],
        cluster_id: cluster.into(),
        network: network.into(),
        network_gateway: gateway.then(|| {
            crate::xds::wire::gateway_address(network, "127.0.9.1".parse().unwrap(), 15008)
        }),
        services: [(
            "default/echo.default.mesh.internal".to_string(),
            workload::PortList {
                ports: ports(&[(80, 8080)]),
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    })
}

fn peer(cluster: &str, network: &str, flat: bool) -> PeerPolicy {
    PeerPolicy {
        cluster: cluster.into(),
        network: network.into(),
        identity: SpiffeId::new(&format!("{cluster}.local"), "istio-system", "peerd").unwrap(),
        flat,
        prefers_node_port: false,
        max_resources: 100,
        max_bytes: 1 << 20,
    }
}

fn config() -> FederationConfig {
    let mut c = FederationConfig::new(LOCAL, "net1");
    c.global_services.insert(ServiceRef {
        namespace: "default".into(),
        name: "echo".into(),
    });
    c.gateway = Some(GatewayTarget {
        address: "127.0.1.1".parse().unwrap(),
        hbone_port: 15008,
    });
    c.node_port_gateway = Some(GatewayTarget {
        address: "127.0.1.2".parse().unwrap(),
        hbone_port: 31008,
    });
    c.peers = vec![
        peer("c2", "net1", true),
        peer("c3", "net3", false),
        peer("c4", "net1", true),
    ];
    c
}

/// Writes resources as `origin`'s upstream would and marks both types synced.
fn feed(store: &Store, origin: &str, address: Vec<Arc<Resource>>, authz: Vec<Arc<Resource>>) {
    store.apply(origin, ResourceType::Address, address, vec![]);
    store.apply(origin, ResourceType::Authorization, authz, vec![]);
    store.mark_synced(origin, ResourceType::Address);
    store.mark_synced(origin, ResourceType::Authorization);
}

/// Processes every pending store event.
fn drain(fed: &Federation, rx: &mut tokio::sync::broadcast::Receiver<StoreEvent>) {
    while let Ok(e) = rx.try_recv() {
        fed.handle(e);
    }
}

fn setup() -> (
    Arc<Store>,
    Arc<Federation>,
    tokio::sync::broadcast::Receiver<StoreEvent>,
) {
    let store = Store::new();
    let rx = store.subscribe();
    let fed = Federation::new(config(), Arc::clone(&store));
    (store, fed, rx)
}

fn local_population(store: &Store) {
    feed(
        store,
        LOCAL,
        vec![
            local_service("default", "echo", "127.10.0.1"),
            local_service("default", "private", "127.10.0.2"),
            local_pod(
                "echo-1",
                "127.1.1.1",
                &["default/echo.default.svc.cluster.local"],
            ),
            local_pod(
                "both-1",
                "127.1.1.2",
                &[
                    "default/echo.default.svc.cluster.local",
                    "default/private.default.svc.cluster.local",
                ],
            ),
            local_pod(
                "private-1",
                "127.1.1.3",
                &["default/private.default.svc.cluster.local"],
            ),
        ],
        vec![Arc::new(
            Resource::authorization(&security::Authorization {
                name: "allow".into(),
                namespace: "default".into(),
                ..Default::default()
            })
            .unwrap(),
        )],
    );
}

fn decoded_workload(r: &Resource) -> workload::Workload {
    match r.decode_address().unwrap().r#type.unwrap() {
        workload::address::Type::Workload(w) => w,
        _ => panic!("not a workload"),
    }
}

fn decoded_service(r: &Resource) -> workload::Service {
    match r.decode_address().unwrap().r#type.unwrap() {
        workload::address::Type::Service(s) => s,
        _ => panic!("not a service"),
    }
}

// ---------------------------------------------------------------------------- export

#[test]
fn export_has_only_global_services_renamed_and_their_workloads() {
    let (store, fed, mut rx) = setup();
    local_population(&store);
    drain(&fed, &mut rx);
    let flat = fed.export_view(ExportFlavor::Flat).snapshot();
    let names: Vec<String> = flat
        .resources(ResourceType::Address)
        .keys()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(
        names,
        vec![
            "c1//Pod/default/both-1",
            "c1//Pod/default/echo-1",
            "default/echo.default.mesh.internal"
        ]
    );
    assert_eq!(
        flat.len(ResourceType::Authorization),
        0,
        "no authorizations exported"
    );
    let svc = decoded_service(
        flat.get(ResourceType::Address, "default/echo.default.mesh.internal")
            .unwrap(),
    );
    assert_eq!(svc.hostname, "echo.default.mesh.internal");
    let both = decoded_workload(
        flat.get(ResourceType::Address, "c1//Pod/default/both-1")
            .unwrap(),
    );
    assert_eq!(
        both.services.keys().cloned().collect::<Vec<_>>(),
        vec!["default/echo.default.mesh.internal".to_string()],
        "keys renamed, non-global key dropped"
    );
    assert_eq!(both.cluster_id, LOCAL);
    assert_eq!(both.network, "net1");
    assert!(
        both.network_gateway.is_none(),
        "flat variant has no gateway"
    );
}

#[test]
fn gateway_and_node_port_variants_carry_the_east_west_gateway() {
    let (store, fed, mut rx) = setup();
    local_population(&store);
    drain(&fed, &mut rx);
    for (flavor, addr, port) in [
        (ExportFlavor::Gateway, "127.0.1.1", 15008),
        (ExportFlavor::NodePort, "127.0.1.2", 31008),
    ] {
        let view = fed.export_view(flavor).snapshot();
        let w = decoded_workload(
            view.get(ResourceType::Address, "c1//Pod/default/echo-1")
                .unwrap(),
        );
        let gw = w.network_gateway.expect("gateway set");
        assert_eq!(gw.hbone_mtls_port, port);
        match gw.destination.unwrap() {
            workload::gateway_address::Destination::Address(a) => {
                assert_eq!(a.address, ip(addr));
                assert_eq!(a.network, "net1");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(w.addresses, vec![ip("127.1.1.1")], "pod IP kept");
    }
}

#[test]
fn export_keeps_unknown_fields() {
    let (store, fed, mut rx) = setup();
    let base = local_pod(
        "echo-1",
        "127.1.1.1",
        &["default/echo.default.svc.cluster.local"],
    );
    // Append an unknown field (number 999, string) inside Address.workload.
    let mut body = base.body.to_vec();
    body.extend(len_field(1, &len_field(999, b"from-the-future")));
    let body = crate::xds::wire::edit_workload(&body, |_| Ok(())).unwrap();
    let with_unknown = Arc::new(Resource::from_body(ResourceType::Address, body).unwrap());
    feed(
        &store,
        LOCAL,
        vec![local_service("default", "echo", "127.10.0.1"), with_unknown],
        vec![],
    );
    drain(&fed, &mut rx);
    for flavor in ExportFlavor::ALL {
        let r = Arc::clone(
            fed.export_view(flavor)
                .snapshot()
                .get(ResourceType::Address, "c1//Pod/default/echo-1")
                .unwrap(),
        );
        let needle = len_field(999, b"from-the-future");
        assert!(
            r.body.windows(needle.len()).any(|w| w == needle.as_slice()),
            "{flavor:?} export lost the unknown field"
        );
    }
    let merged = fed.merged().snapshot();
    let r = merged
        .get(ResourceType::Address, "c1//Pod/default/echo-1")
        .unwrap();
    let needle = len_field(999, b"from-the-future");
    assert!(
        r.body.windows(needle.len()).any(|w| w == needle.as_slice()),
        "merged lost the unknown field"
    );
}

#[test]
fn export_recomputes_only_touched_names_and_follows_global_changes() {
    let (store, fed, mut rx) = setup();
    local_population(&store);
    drain(&fed, &mut rx);
    let view = fed.export_view(ExportFlavor::Flat);
    let mut changes = view.subscribe();
    // A workload change touches only that workload.
    store.apply(
        LOCAL,
        ResourceType::Address,
        vec![local_pod(
            "echo-1",
            "127.1.1.9",
            &["default/echo.default.svc.cluster.local"],
        )],
        vec![],
    );
    drain(&fed, &mut rx);
    let c = changes.try_recv().unwrap();
    assert_eq!(c.names, vec![Arc::<str>::from("c1//Pod/default/echo-1")]);
    // Making "private" global exports it and re-exports its workloads (and only those).
    fed.set_global_services([
        ServiceRef {
            namespace: "default".into(),
            name: "echo".into(),
        },
        ServiceRef {
            namespace: "default".into(),
            name: "private".into(),
        },
    ]);
    let snap = view.snapshot();
    assert!(
        snap.get(
            ResourceType::Address,
            "default/private.default.mesh.internal"
        )
        .is_some()
    );
    assert!(
        snap.get(ResourceType::Address, "c1//Pod/default/private-1")
            .is_some()
    );
    let both = decoded_workload(
        snap.get(ResourceType::Address, "c1//Pod/default/both-1")
            .unwrap(),
    );
    assert_eq!(both.services.len(), 2);
    // Removing "echo" from the global set withdraws it; echo-1 backs nothing global any more.
    fed.set_global_services([ServiceRef {
        namespace: "default".into(),
        name: "private".into(),
    }]);
    let snap = view.snapshot();
    assert!(
        snap.get(ResourceType::Address, "default/echo.default.mesh.internal")
            .is_none()
    );
    assert!(
        snap.get(ResourceType::Address, "c1//Pod/default/echo-1")
            .is_none()
    );
    assert!(
        snap.get(ResourceType::Address, "c1//Pod/default/both-1")
            .is_some()
    );
    // Deleting the service withdraws it and its workload.
    store.apply(
        LOCAL,
        ResourceType::Address,
        vec![],
        vec![Arc::from("default/private.default.svc.cluster.local")],
    );
    drain(&fed, &mut rx);
    let snap = view.snapshot();
    assert_eq!(snap.len(ResourceType::Address), 0, "nothing global left");
}

#[test]
fn export_is_not_ready_before_the_local_upstream_synced() {
    let (store, fed, mut rx) = setup();
    store.apply(
        LOCAL,
        ResourceType::Address,
        vec![local_service("default", "echo", "127.10.0.1")],
        vec![],
    );
    drain(&fed, &mut rx);
    assert!(!fed.exporter().is_ready());
    store.mark_synced(LOCAL, ResourceType::Address);
    drain(&fed, &mut rx);
    assert!(!fed.exporter().is_ready(), "authorizations not synced yet");
    store.mark_synced(LOCAL, ResourceType::Authorization);
    drain(&fed, &mut rx);
    assert!(fed.exporter().is_ready());
    assert!(
        fed.export_view(ExportFlavor::Flat)
            .snapshot()
            .get(ResourceType::Address, "default/echo.default.mesh.internal")
            .is_some()
    );
}

// ---------------------------------------------------------------------------- import

fn check(fed: &Federation, peer: &str, r: &Resource) -> Result<(), String> {
    fed.import_filter(peer).unwrap().check(peer, r)
}

#[test]
fn import_accepts_a_proper_export() {
    let (_, fed, _) = setup();
    assert_eq!(
        check(&fed, "c2", &peer_pod("c2", "net1", "a", "127.2.1.1", false)),
        Ok(())
    );
    assert_eq!(
        check(&fed, "c3", &peer_pod("c3", "net3", "a", "127.3.1.1", true)),
        Ok(())
    );
    let svc = service(
        "default",
        "echo",
        "echo.default.mesh.internal",
        "127.20.0.1",
        &[(80, 8080)],
    );
    assert_eq!(check(&fed, "c2", &svc), Ok(()));
}

#[test]
fn import_rejects_cluster_claims_of_another_cluster() {
    let (_, fed, _) = setup();
    let err = check(&fed, "c2", &peer_pod("c3", "net1", "a", "127.2.1.1", false)).unwrap_err();
    assert!(err.contains("claims another cluster"), "{err}");
    let mut w = decoded_workload(&peer_pod("c2", "net1", "a", "127.2.1.1", false));
    w.cluster_id = "c3".into();
    let err = check(&fed, "c2", &workload_res(w.clone())).unwrap_err();
    assert!(err.contains("cluster_id \"c3\""), "{err}");
    w.cluster_id = "c2".into();
    w.network = "net9".into();
    let err = check(&fed, "c2", &workload_res(w)).unwrap_err();
    assert!(err.contains("network \"net9\""), "{err}");
    let status = fed.import_filter("c2").unwrap().status();
    assert_eq!(status.rejected_total, 3);
    assert!(status.recent.iter().all(|r| r.rule == "cluster_claim"));
}

#[test]
fn import_rejects_what_a_peer_may_not_export() {
    let (_, fed, _) = setup();
    let local_name = service(
        "default",
        "echo",
        "echo.default.svc.cluster.local",
        "127.20.0.1",
        &[(80, 8080)],
    );
    assert!(
        check(&fed, "c2", &local_name)
            .unwrap_err()
            .contains("not an exported")
    );
    let authz = Resource::authorization(&security::Authorization {
        name: "x".into(),
        namespace: "default".into(),
        ..Default::default()
    })
    .unwrap();
    assert!(
        check(&fed, "c2", &authz)
            .unwrap_err()
            .contains("exports no authorizations")
    );
    let mut w = decoded_workload(&peer_pod("c2", "net1", "a", "127.2.1.1", false));
    w.services.insert(
        "default/secret.default.svc.cluster.local".into(),
        Default::default(),
    );
    assert!(
        check(&fed, "c2", &workload_res(w.clone()))
            .unwrap_err()
            .contains("secret.default.svc.cluster.local")
    );
    w.services.clear();
    assert!(
        check(&fed, "c2", &workload_res(w))
            .unwrap_err()
            .contains("backs no exported service")
    );
}

#[test]
fn import_rejects_insane_addresses_and_gatewayless_multi_network_workloads() {
    let (_, fed, _) = setup();
    for bad in ["0.0.0.0", "224.0.0.1", "255.255.255.255"] {
        let err = check(&fed, "c2", &peer_pod("c2", "net1", "a", bad, false)).unwrap_err();
        assert!(err.contains("forbidden address"), "{bad}: {err}");
    }
    let err = check(&fed, "c3", &peer_pod("c3", "net3", "a", "127.3.1.1", false)).unwrap_err();
    assert!(err.contains("no network_gateway"), "{err}");
}

#[test]
fn import_caps_count_and_bytes_and_recounts_after_removals() {
    let store = Store::new();
    let mut cfg = config();
    cfg.peers[0].max_resources = 2;
    let fed = Federation::new(cfg, Arc::clone(&store));
    let filter = fed.import_filter("c2").unwrap();
    let a = peer_pod("c2", "net1", "a", "127.2.1.1", false);
    let b = peer_pod("c2", "net1", "b", "127.2.1.2", false);
    let c = peer_pod("c2", "net1", "c", "127.2.1.3", false);
    for r in [&a, &b] {
        filter.check("c2", r).unwrap();
        store.apply("c2", ResourceType::Address, vec![Arc::clone(r)], vec![]);
    }
    // Resources accepted from the response being checked count before they are stored.
    let (d, e) = (
        peer_pod("c2", "net1", "d", "127.2.1.4", false),
        peer_pod("c2", "net1", "e", "127.2.1.5", false),
    );
    let fresh = Federation::new(
        {
            let mut c = config();
            c.peers[0].max_resources = 1;
            c
        },
        Store::new(),
    );
    let f2 = fresh.import_filter("c2").unwrap();
    f2.check("c2", &d).unwrap();
    assert!(f2.check("c2", &e).unwrap_err().contains("resource count"));
    // Re-sending a held name is not a new resource.
    assert_eq!(filter.check("c2", &a), Ok(()));
    let err = filter.check("c2", &c).unwrap_err();
    assert!(err.contains("resource count"), "{err}");
    assert_eq!(filter.status().recent.last().unwrap().rule, "cap");
    // After the peer removed one, there is room again.
    store.apply(
        "c2",
        ResourceType::Address,
        vec![],
        vec![Arc::clone(&a.name)],
    );
    assert_eq!(filter.check("c2", &c), Ok(()));
    // Bytes.
    let mut cfg = config();
    cfg.peers[0].max_bytes = a.body.len() + 1;
    let store = Store::new();
    let fed = Federation::new(cfg, Arc::clone(&store));
    let filter = fed.import_filter("c2").unwrap();
    filter.check("c2", &a).unwrap();
    store.apply("c2", ResourceType::Address, vec![Arc::clone(&a)], vec![]);
    assert!(filter.check("c2", &b).unwrap_err().contains("bytes"));
    // Another peer is unaffected by c2's cap.
    assert_eq!(
        fed.import_filter("c4")
            .unwrap()
            .check("c4", &peer_pod("c4", "net1", "x", "127.4.1.1", false)),
        Ok(())
    );
}

#[test]
fn import_tally_forgets_names_the_peer_replaced_without_reaching_a_cap() {
    // Pods replaced under new names (the soak's churn): the peer holds 10 at a time, and
    // 5,000 names come and go. The tally must track what the peer holds, not every name
    // it ever sent (it used to keep all of them until the 100k count cap).
    let store = Store::new();
    let mut cfg = config();
    cfg.peers[0].max_resources = 100_000;
    let fed = Federation::new(cfg, Arc::clone(&store));
    let filter = fed.import_filter("c2").unwrap();
    let mut held: std::collections::VecDeque<Arc<Resource>> = Default::default();
    for i in 0..5_000u32 {
        let addr = format!("127.2.{}.{}", i / 250, 1 + i % 250);
        let pod = peer_pod("c2", "net1", &format!("pod-{i}"), &addr, false);
        filter.check("c2", &pod).unwrap();
        let gone: Vec<_> = if held.len() == 10 {
            held.pop_front()
                .map(|r| Arc::clone(&r.name))
                .into_iter()
                .collect()
        } else {
            vec![]
        };
        store.apply("c2", ResourceType::Address, vec![Arc::clone(&pod)], gone);
        held.push_back(pod);
    }
    let len = filter.tally_len();
    assert!(
        (10..=2 * import::MIN_TALLY_RECOUNT).contains(&len),
        "tally holds {len} names for a peer holding 10"
    );
    // What the peer still holds is still counted: re-sending one is not a new resource.
    let mut cfg = config();
    cfg.peers[0].max_resources = 10;
    let fed = Federation::new(cfg, Arc::clone(&store));
    let capped = fed.import_filter("c2").unwrap();
    for r in &held {
        assert_eq!(capped.check("c2", r), Ok(()));
    }
    let one_more = peer_pod("c2", "net1", "pod-new", "127.2.99.1", false);
    assert!(
        capped
            .check("c2", &one_more)
            .unwrap_err()
            .contains("resource count")
    );
}

// ---------------------------------------------------------------------------- merge

#[test]
fn global_service_merges_workloads_ports_and_vips_from_all_clusters() {
    let (store, fed, mut rx) = setup();
    local_population(&store);
    let name = "default/echo.default.mesh.internal";
    feed(
        &store,
        "c2",
        vec![
            service(
                "default",
                "echo",
                "echo.default.mesh.internal",
                "127.20.0.1",
                &[(80, 8080), (9090, 9090)],
            ),
            peer_pod("c2", "net1", "echo-a", "127.2.1.1", false),
        ],
        vec![],
    );
    feed(
        &store,
        "c3",
        vec![
            // Port 80 maps elsewhere (conflict); its VIP is the local "private" VIP (conflict).
            service(
                "default",
                "echo",
                "echo.default.mesh.internal",
                "127.10.0.2",
                &[(80, 8081)],
            ),
            peer_pod("c3", "net3", "echo-b", "127.3.1.1", true),
        ],
        vec![],
    );
    drain(&fed, &mut rx);
    let merged = fed.merged().snapshot();
    let svc = decoded_service(merged.get(ResourceType::Address, name).unwrap());
    let ports: Vec<(u32, u32)> = svc
        .ports
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect();
    assert_eq!(
        ports,
        vec![(80, 8080), (9090, 9090)],
        "local mapping wins; new ports added"
    );
    let vips: Vec<Vec<u8>> = svc.addresses.iter().map(|a| a.address.clone()).collect();
    assert_eq!(vips, vec![ip("127.10.0.1"), ip("127.20.0.1")]);
    assert_eq!(
        fed.origin_of(ResourceType::Address, name).as_deref(),
        Some(LOCAL)
    );
    // Workloads of the global service come from every cluster.
    let backing: Vec<String> = merged
        .resources(ResourceType::Address)
        .values()
        .filter_map(|r| r.as_workload())
        .filter(|w| w.services.iter().any(|k| **k == *name))
        .map(|w| w.uid.clone())
        .collect();
    assert_eq!(
        backing,
        vec![
            "c1//Pod/default/both-1",
            "c1//Pod/default/echo-1",
            "c2//Pod/default/echo-a",
            "c3//Pod/default/echo-b"
        ]
    );
    // Local workloads keep their own key too.
    let echo1 = decoded_workload(
        merged
            .get(ResourceType::Address, "c1//Pod/default/echo-1")
            .unwrap(),
    );
    assert!(
        echo1
            .services
            .contains_key("default/echo.default.svc.cluster.local")
    );
    // Conflicts are reported, with the losing cluster.
    let conflicts = fed.conflicts();
    assert!(
        conflicts
            .iter()
            .any(|c| c.kind == ConflictKind::Port && c.loser == "c3"),
        "{conflicts:?}"
    );
    assert!(
        conflicts
            .iter()
            .any(|c| c.kind == ConflictKind::Vip && c.loser == "c3"),
        "{conflicts:?}"
    );
    assert_eq!(fed.conflict_count("c3", ConflictKind::Port), 1);
    // The local raw view passes through.
    assert!(
        merged
            .get(
                ResourceType::Address,
                "default/private.default.svc.cluster.local"
            )
            .is_some()
    );
    assert_eq!(merged.len(ResourceType::Authorization), 1);
    // c3 fixes its port: the conflict goes.
    store.apply(
        "c3",
        ResourceType::Address,
        vec![service(
            "default",
            "echo",
            "echo.default.mesh.internal",
            "127.30.0.1",
            &[(80, 8080)],
        )],
        vec![],
    );
    drain(&fed, &mut rx);
    assert!(fed.conflicts().is_empty(), "{:?}", fed.conflicts());
    assert_eq!(fed.conflict_count("c3", ConflictKind::Port), 0);
}

#[test]
fn same_pod_ip_from_two_flat_peers_serves_the_first_by_precedence() {
    // The outcome does not depend on which peer arrives first.
    for c2_first in [false, true] {
        same_pod_ip_case(c2_first);
    }
}

fn same_pod_ip_case(c2_first: bool) {
    let (store, fed, mut rx) = setup();
    feed(&store, LOCAL, vec![], vec![]);
    let order = if c2_first { ["c2", "c4"] } else { ["c4", "c2"] };
    for peer in order {
        let pod = if peer == "c2" { "y" } else { "x" };
        feed(
            &store,
            peer,
            vec![peer_pod(peer, "net1", pod, "127.9.9.9", false)],
            vec![],
        );
        drain(&fed, &mut rx);
    }
    let merged = fed.merged().snapshot();
    assert!(
        merged
            .get(ResourceType::Address, "c2//Pod/default/y")
            .is_some(),
        "c2 precedes c4"
    );
    assert!(
        merged
            .get(ResourceType::Address, "c4//Pod/default/x")
            .is_none(),
        "c4 withheld"
    );
    assert_eq!(
        &*merged.resolve_address_key("net1/127.9.9.9").unwrap().name,
        "c2//Pod/default/y"
    );
    let c = fed.conflicts();
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].kind, c[0].loser.as_str(), c[0].winner.as_str()),
        (ConflictKind::PodIp, "c4", "c2")
    );
    // The winner goes: the other is served again and the conflict clears.
    store.apply(
        "c2",
        ResourceType::Address,
        vec![],
        vec![Arc::from("c2//Pod/default/y")],
    );
    drain(&fed, &mut rx);
    let merged = fed.merged().snapshot();
    assert!(
        merged
            .get(ResourceType::Address, "c4//Pod/default/x")
            .is_some()
    );
    assert!(fed.conflicts().is_empty());
}

#[test]
fn duplicate_name_keeps_the_local_cluster() {
    let (store, fed, mut rx) = setup();
    let a = local_pod("dup", "127.1.1.1", &[]);
    feed(&store, LOCAL, vec![Arc::clone(&a)], vec![]);
    feed(
        &store,
        "c2",
        vec![local_pod("dup", "127.1.1.7", &[])],
        vec![],
    );
    drain(&fed, &mut rx);
    assert_eq!(
        fed.origin_of(ResourceType::Address, &a.name).as_deref(),
        Some(LOCAL)
    );
    let c = fed.conflicts();
    assert_eq!(
        (c[0].kind, c[0].loser.as_str()),
        (ConflictKind::DuplicateName, "c2")
    );
}

// ---------------------------------------------------------------------------- grace

#[test]
fn changes_while_resyncing_are_parked_until_the_sync_completes() {
    let (store, fed, mut rx) = setup();
    feed(&store, LOCAL, vec![], vec![]);
    feed(
        &store,
        "c2",
        vec![peer_pod("c2", "net1", "old", "127.2.1.1", false)],
        vec![],
    );
    drain(&fed, &mut rx);
    // The stream drops; a reconnect writes part of a new state (as a chunked first
    // response would) and then drops again before completing.
    store.mark_unsynced("c2");
    store.apply(
        "c2",
        ResourceType::Address,
        vec![peer_pod("c2", "net1", "new", "127.2.1.2", false)],
        vec![Arc::from("c2//Pod/default/old")],
    );
    drain(&fed, &mut rx);
    let merged = fed.merged().snapshot();
    assert!(
        merged
            .get(ResourceType::Address, "c2//Pod/default/old")
            .is_some(),
        "old state kept"
    );
    assert!(
        merged
            .get(ResourceType::Address, "c2//Pod/default/new")
            .is_none(),
        "partial state not served"
    );
    // The sync completes: the new state replaces the old one.
    store.mark_synced("c2", ResourceType::Address);
    drain(&fed, &mut rx);
    let merged = fed.merged().snapshot();
    assert!(
        merged
            .get(ResourceType::Address, "c2//Pod/default/old")
            .is_none()
    );
    assert!(
        merged
            .get(ResourceType::Address, "c2//Pod/default/new")
            .is_some()
    );
}

#[test]
fn a_first_sync_is_merged_part_by_part_and_parked_only_once_complete() {
    let (store, fed, mut rx) = setup();
    let served = |name: &str| {
        fed.merged()
            .snapshot()
            .get(ResourceType::Address, name)
            .is_some()
    };
    // The local cluster's first response arrives in parts: each part is served at once,
    // but the export gate waits for the completed sync.
    store.apply(
        LOCAL,
        ResourceType::Address,
        vec![local_pod("a", "127.1.0.1", &[])],
        vec![],
    );
    drain(&fed, &mut rx);
    assert!(
        served(&format!("{LOCAL}//Pod/default/a")),
        "first part served"
    );
    assert!(!fed.exporter().is_ready(), "not complete yet");
    store.apply(
        LOCAL,
        ResourceType::Address,
        vec![local_pod("b", "127.1.0.2", &[])],
        vec![],
    );
    store.mark_synced(LOCAL, ResourceType::Address);
    store.mark_synced(LOCAL, ResourceType::Authorization);
    drain(&fed, &mut rx);
    assert!(served(&format!("{LOCAL}//Pod/default/b")));
    assert!(fed.exporter().is_ready());
    // Same for a peer; once its sync has completed, a resync is parked again.
    store.apply(
        "c2",
        ResourceType::Address,
        vec![peer_pod("c2", "net1", "x", "127.2.1.1", false)],
        vec![],
    );
    drain(&fed, &mut rx);
    assert!(served("c2//Pod/default/x"), "a peer's first part served");
    store.mark_synced("c2", ResourceType::Address);
    store.mark_synced("c2", ResourceType::Authorization);
    drain(&fed, &mut rx);
    store.mark_unsynced("c2");
    store.apply(
        "c2",
        ResourceType::Address,
        vec![],
        vec![Arc::from("c2//Pod/default/x")],
    );
    drain(&fed, &mut rx);
    assert!(served("c2//Pod/default/x"), "a partial resync is parked");
    store.mark_synced("c2", ResourceType::Address);
    drain(&fed, &mut rx);
    assert!(
        !served("c2//Pod/default/x"),
        "applied once the resync completed"
    );
}

#[test]
fn queued_changes_of_one_origin_are_merged_in_one_recompute_in_order() {
    let (store, fed, mut rx) = setup();
    feed(&store, LOCAL, vec![], vec![]);
    drain(&fed, &mut rx);
    let before = fed.merged().snapshot().version;
    // c2's first response in three parts, its sync, then a removal: all queued before
    // federation looks.
    for i in 1..=3 {
        let pod = peer_pod(
            "c2",
            "net1",
            &format!("p{i}"),
            &format!("127.2.1.{i}"),
            false,
        );
        store.apply("c2", ResourceType::Address, vec![pod], vec![]);
    }
    store.mark_synced("c2", ResourceType::Address);
    store.mark_synced("c2", ResourceType::Authorization);
    store.apply(
        "c2",
        ResourceType::Address,
        vec![],
        vec![Arc::from("c2//Pod/default/p1")],
    );
    let first = rx.try_recv().unwrap();
    fed.handle_queued(first, &mut rx);
    assert!(rx.try_recv().is_err(), "every queued event handled");
    let merged = fed.merged().snapshot();
    assert!(
        merged
            .get(ResourceType::Address, "c2//Pod/default/p1")
            .is_none(),
        "removal applied last"
    );
    for name in ["c2//Pod/default/p2", "c2//Pod/default/p3"] {
        assert!(merged.get(ResourceType::Address, name).is_some(), "{name}");
    }
    // Each recompute reads the store's live state (the removal included): the three
    // parts are one publish, and the removal then changes nothing. Handled one by one,
    // p2 and p3 would be two publishes.
    assert_eq!(merged.version, before + 1);
}

#[test]
fn stale_peer_is_withdrawn_only_after_the_grace_period() {
    let store = Store::new();
    let mut rx = store.subscribe();
    let fed = Federation::new(config(), Arc::clone(&store));
    feed(&store, LOCAL, vec![], vec![]);
    feed(
        &store,
        "c2",
        vec![peer_pod("c2", "net1", "a", "127.2.1.1", false)],
        vec![],
    );
    drain(&fed, &mut rx);
    let mut commits = grace::Commits::new(LOCAL);
    let t0 = Instant::now();
    assert!(
        commits
            .sweep(&store, t0, Some(Duration::from_secs(10)))
            .is_empty()
    );
    store.mark_unsynced("c2");
    assert!(
        commits
            .sweep(&store, t0, Some(Duration::from_secs(10)))
            .is_empty()
    );
    assert_eq!(
        commits.stale_for("c2", t0 + Duration::from_secs(3)),
        Some(Duration::from_secs(3))
    );
    assert!(
        commits
            .sweep(
                &store,
                t0 + Duration::from_secs(9),
                Some(Duration::from_secs(10))
            )
            .is_empty()
    );
    // grace None = forever.
    assert!(
        commits
            .sweep(&store, t0 + Duration::from_secs(3600), None)
            .is_empty()
    );
    assert!(store.get("c2").is_some());
    let gone = commits.sweep(
        &store,
        t0 + Duration::from_secs(10),
        Some(Duration::from_secs(10)),
    );
    assert_eq!(gone, vec![Arc::<str>::from("c2")]);
    drain(&fed, &mut rx);
    assert!(
        fed.merged()
            .snapshot()
            .get(ResourceType::Address, "c2//Pod/default/a")
            .is_none()
    );
    // The local cluster is never withdrawn.
    store.mark_unsynced(LOCAL);
    assert!(
        commits
            .sweep(
                &store,
                t0 + Duration::from_secs(99_999),
                Some(Duration::ZERO)
            )
            .is_empty()
    );
}

/// A peer restored from the peer-state snapshot is stale since the recorded time, not
/// since the restart: withdrawn at that time + grace. Once it syncs the record is gone: a
/// later disconnect counts from then.
#[test]
fn restored_peer_is_withdrawn_at_its_recorded_stale_time_plus_grace() {
    let grace = Some(Duration::from_secs(30));
    let store = Store::new();
    let mut rx = store.subscribe();
    let fed = Federation::new(config(), Arc::clone(&store));
    feed(&store, LOCAL, vec![], vec![]);
    // As the restore fills it: a session that synced and ended.
    feed(
        &store,
        "c2",
        vec![peer_pod("c2", "net1", "a", "127.2.1.1", false)],
        vec![],
    );
    store.mark_unsynced("c2");
    drain(&fed, &mut rx);
    let restart = Instant::now();
    let went_stale = restart - Duration::from_secs(20);
    let mut commits = grace::Commits::new(LOCAL);
    commits.restore_stale_since("c2", went_stale);
    assert_eq!(
        commits.stale_for("c2", restart),
        Some(Duration::from_secs(20)),
        "stale since the recorded time from the start"
    );
    assert!(commits.sweep(&store, restart, grace).is_empty());
    assert!(
        commits
            .sweep(&store, went_stale + Duration::from_secs(29), grace)
            .is_empty()
    );
    assert_eq!(
        commits.sweep(&store, went_stale + Duration::from_secs(30), grace),
        vec![Arc::<str>::from("c2")],
        "withdrawn 10 s after the restart, 30 s after it went stale"
    );

    // Restored, then synced again, then disconnected: the grace counts from the new
    // disconnect.
    feed(
        &store,
        "c3",
        vec![peer_pod("c3", "net3", "b", "127.3.1.1", true)],
        vec![],
    );
    store.mark_unsynced("c3");
    let mut commits = grace::Commits::new(LOCAL);
    commits.restore_stale_since("c3", went_stale);
    commits.sweep(&store, restart, grace);
    store.mark_synced("c3", ResourceType::Address);
    store.mark_synced("c3", ResourceType::Authorization);
    let later = restart + Duration::from_secs(5);
    assert!(commits.sweep(&store, later, grace).is_empty());
    assert_eq!(commits.stale_for("c3", later), None);
    store.mark_unsynced("c3");
    assert!(commits.sweep(&store, later, grace).is_empty());
    assert!(
        commits
            .sweep(&store, later + Duration::from_secs(29), grace)
            .is_empty(),
        "the old record no longer shortens anything"
    );
    assert_eq!(
        commits.sweep(&store, later + Duration::from_secs(30), grace),
        vec![Arc::<str>::from("c3")]
    );
}

/// The restored state counts as complete: a resync after it is parked until it completes
/// (never a partial state served), and it is what the merge serves meanwhile.
#[test]
fn restored_peer_state_is_complete_and_a_partial_resync_is_parked() {
    let (store, fed, mut rx) = setup();
    feed(&store, LOCAL, vec![], vec![]);
    let a = peer_pod("c2", "net1", "a", "127.2.1.1", false);
    let b = peer_pod("c2", "net1", "b", "127.2.1.2", false);
    feed(&store, "c2", vec![Arc::clone(&a), Arc::clone(&b)], vec![]);
    store.mark_unsynced("c2");
    // Federation starts after the restore (as in `peerd run`): it reads the store.
    fed.restored("c2", Instant::now());
    while rx.try_recv().is_ok() {}
    fed.recompute_all();
    assert!(fed.commits().is_complete("c2", ResourceType::Address));
    assert_eq!(fed.complete_peers().len(), 1);
    assert!(fed.complete_peers()[0].stale_since.is_some());
    // The peer's client reconnects; its first response removes one name, then drops.
    store.apply(
        "c2",
        ResourceType::Address,
        vec![],
        vec![Arc::clone(&b.name)],
    );
    drain(&fed, &mut rx);
    let merged = fed.merged().snapshot();
    assert!(merged.get(ResourceType::Address, &a.name).is_some());
    assert!(
        merged.get(ResourceType::Address, &b.name).is_some(),
        "parked until the resync completes"
    );
    store.mark_synced("c2", ResourceType::Address);
    store.mark_synced("c2", ResourceType::Authorization);
    drain(&fed, &mut rx);
    assert!(
        fed.merged()
            .snapshot()
            .get(ResourceType::Address, &b.name)
            .is_none()
    );
}

/// A restart as `peerd run` does it: c2's workload `a` restored from the snapshot (a
/// session that synced and ended), federation started, then the local cluster synced.
/// Returns the restored workload and the restart time.
fn restarted_with_c2_restored() -> (
    Arc<Store>,
    Arc<Federation>,
    tokio::sync::broadcast::Receiver<StoreEvent>,
    Arc<Resource>,
    Instant,
) {
    let (store, fed, mut rx) = setup();
    let a = peer_pod("c2", "net1", "a", "127.2.1.1", false);
    feed(&store, "c2", vec![Arc::clone(&a)], vec![]);
    store.mark_unsynced("c2");
    let restart = Instant::now();
    fed.restored("c2", restart);
    while rx.try_recv().is_ok() {}
    fed.recompute_all();
    feed(&store, LOCAL, vec![], vec![]);
    drain(&fed, &mut rx);
    (store, fed, rx, a, restart)
}

/// A restart with peers restored from the snapshot: ztunnel's first answer waits for
/// them to resync, so it holds what a peer added after the snapshot was written (the
/// snapshot trails by about a second; answering from it removed such a workload from a
/// reconnecting ztunnel while the peer still had it: chaos invariant (a)).
#[test]
fn the_first_answer_after_a_restore_waits_for_the_restored_peers_to_resync() {
    let (store, fed, mut rx, a, _) = restarted_with_c2_restored();
    let added_since = peer_pod("c2", "net1", "b", "127.2.1.2", false);
    assert!(
        !fed.merged().is_ready(),
        "the local cluster synced, the restored peer not yet"
    );
    fed.sweep();
    assert!(
        !fed.merged().is_ready(),
        "a sweep within the wait changes nothing"
    );

    // The peer's client resyncs: its state now holds what it added since the snapshot.
    store.apply(
        "c2",
        ResourceType::Address,
        vec![Arc::clone(&added_since)],
        vec![],
    );
    drain(&fed, &mut rx);
    assert!(!fed.merged().is_ready(), "the resync is not complete yet");
    store.mark_synced("c2", ResourceType::Address);
    store.mark_synced("c2", ResourceType::Authorization);
    drain(&fed, &mut rx);
    assert!(fed.merged().is_ready());
    let merged = fed.merged().snapshot();
    assert!(merged.get(ResourceType::Address, &a.name).is_some());
    assert!(
        merged
            .get(ResourceType::Address, &added_since.name)
            .is_some()
    );
}

/// A restored peer that does not resync (it is down: what the snapshot is for) is served
/// from its restored state once the wait has passed, with nothing else happening.
#[test]
fn an_unreachable_restored_peer_is_answered_from_its_snapshot_after_the_wait() {
    let (_store, fed, _rx, a, restart) = restarted_with_c2_restored();
    assert!(!fed.merged().is_ready());
    assert!(
        fed.sweep_at(restart + settings::RESTORED_RESYNC_WAIT + Duration::from_secs(1))
            .is_empty()
    );
    assert!(fed.merged().is_ready());
    assert!(
        fed.merged()
            .snapshot()
            .get(ResourceType::Address, &a.name)
            .is_some()
    );
}

// ---------------------------------------------------------------------------- selector

mod selection {
    use super::*;
    use crate::identity::spiffe::SpiffeId;
    use crate::xds::auth::{ConnectionInfo, StaticTokenVerifier, ViewSelector};

    /// A self-signed leaf with the SPIFFE URI SAN is enough: the selector reads only the
    /// trust domain (chains are verified by the TLS layer, tested in `identity`).
    fn conn(td: Option<&str>, token: Option<&str>) -> ConnectionInfo {
        let certs = td.map(|td| {
            let id = SpiffeId::new(td, "istio-system", "peerd").unwrap();
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names =
                vec![rcgen::SanType::URI(id.to_string().try_into().unwrap())];
            let key = rcgen::KeyPair::generate().unwrap();
            Arc::new(vec![params.self_signed(&key).unwrap().der().clone()])
        });
        ConnectionInfo {
            remote_addr: None,
            bearer_token: token.map(crate::xds::auth::BearerToken::from),
            cluster_id: None,
            peer_certificates: certs,
        }
    }

    /// A client certificate carrying `id`, sending `clusterid: cluster_id` when given.
    fn conn_as(id: &str, cluster_id: Option<&str>) -> ConnectionInfo {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
        let key = rcgen::KeyPair::generate().unwrap();
        ConnectionInfo {
            remote_addr: None,
            bearer_token: None,
            cluster_id: cluster_id.map(str::to_string),
            peer_certificates: Some(Arc::new(vec![
                params.self_signed(&key).unwrap().der().clone(),
            ])),
        }
    }

    /// Only a peer's exact peerd identity reads an export view: a workload of the peer's
    /// trust domain is refused, with or without a `clusterid` header naming the peer.
    #[tokio::test]
    async fn a_workload_of_a_peers_trust_domain_gets_no_export_view() {
        let (store, fed, mut rx) = setup();
        local_population(&store);
        drain(&fed, &mut rx);
        let selector = fed.selector(None);
        for header in [None, Some("c2"), Some("c3")] {
            let err = selector
                .select(&conn_as("spiffe://c2.local/ns/bookinfo/sa/reviews", header))
                .await
                .err()
                .unwrap();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{header:?}");
            assert!(
                err.message().contains(
                    "spiffe://c2.local/ns/bookinfo/sa/reviews is not the peerd identity of any configured peer"
                ),
                "{}",
                err.message()
            );
        }
        let ok = selector
            .select(&conn_as(
                "spiffe://c2.local/ns/istio-system/sa/peerd",
                Some("c2"),
            ))
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&ok.view, fed.export_view(ExportFlavor::Flat)));
        assert!(ok.identity.contains("(peer c2)"), "{}", ok.identity);
    }

    /// c3's peerd (gateway variant) claiming to be c2 (flat variant) or c4 is refused; it
    /// never gets another peer's view.
    #[tokio::test]
    async fn a_peer_claiming_another_peers_cluster_is_refused() {
        let (store, fed, mut rx) = setup();
        local_population(&store);
        drain(&fed, &mut rx);
        let selector = fed.selector(None);
        let c3 = "spiffe://c3.local/ns/istio-system/sa/peerd";
        for claimed in ["c2", "c4", "c9"] {
            let err = selector
                .select(&conn_as(c3, Some(claimed)))
                .await
                .err()
                .unwrap();
            assert_eq!(err.code(), tonic::Code::PermissionDenied);
            assert!(
                err.message().contains(&format!(
                    "clusterid {claimed} does not match the client certificate: {c3} is the peerd identity of c3"
                )),
                "{}",
                err.message()
            );
        }
        let own = selector.select(&conn_as(c3, Some("c3"))).await.unwrap();
        assert!(Arc::ptr_eq(
            &own.view,
            fed.export_view(ExportFlavor::Gateway)
        ));
        let no_header = selector.select(&conn_as(c3, None)).await.unwrap();
        assert!(Arc::ptr_eq(
            &no_header.view,
            fed.export_view(ExportFlavor::Gateway)
        ));
    }

    /// Peers sharing one peerd identity (one root, `cluster.local` everywhere) are told
    /// apart only by the header, which must name one of them; a long header is bounded
    /// in the refusal.
    #[test]
    fn a_shared_identity_needs_the_header_and_it_must_name_one_of_its_peers() {
        let shared = SpiffeId::new("cluster.local", "istio-system", "peerd").unwrap();
        let mut peers = vec![
            peer("c2", "net1", true),
            peer("c3", "net3", false),
            peer("c5", "net5", false),
        ];
        peers[0].identity = shared.clone();
        peers[1].identity = shared.clone();
        let presented = [shared.clone()];
        let err = selector::peer_for(&peers, &presented, None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("several peers (c2, c3)"),
            "{}",
            err.message()
        );
        assert_eq!(
            selector::peer_for(&peers, &presented, Some("c3"))
                .unwrap()
                .cluster,
            "c3"
        );
        let err = selector::peer_for(&peers, &presented, Some("c5")).unwrap_err();
        assert!(
            err.message().contains("is the peerd identity of c2, c3"),
            "{}",
            err.message()
        );
        let long = "x".repeat(100_000);
        let err = selector::peer_for(&peers, &presented, Some(&long)).unwrap_err();
        assert!(err.message().len() < 1024, "{}", err.message().len());
        assert!(
            err.message().contains("(100000 bytes)"),
            "{}",
            err.message()
        );
        // A certificate with several SPIFFE IDs counts by the one that is a peer's.
        let workload = SpiffeId::new("cluster.local", "bookinfo", "reviews").unwrap();
        let both = [workload.clone(), shared];
        assert_eq!(
            selector::peer_for(&peers, &both, Some("c2"))
                .unwrap()
                .cluster,
            "c2"
        );
        let err = selector::peer_for(&peers, &[workload], Some("c2")).unwrap_err();
        assert!(
            err.message()
                .contains("spiffe://cluster.local/ns/bookinfo/sa/reviews")
        );
    }

    #[tokio::test]
    async fn peers_get_their_export_variant_tokens_get_the_merged_view() {
        let (store, fed, mut rx) = setup();
        let selector = fed.selector(Some(Arc::new(StaticTokenVerifier::from_literal(
            "t0k", "ztunnel",
        ))));
        let err = selector
            .select(&conn(Some("c2.local"), None))
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.code(),
            tonic::Code::Unavailable,
            "export gated until local sync"
        );
        local_population(&store);
        drain(&fed, &mut rx);
        let flat = selector
            .select(&conn(Some("c2.local"), None))
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&flat.view, fed.export_view(ExportFlavor::Flat)));
        let gw = selector
            .select(&conn(Some("c3.local"), None))
            .await
            .unwrap();
        assert!(Arc::ptr_eq(
            &gw.view,
            fed.export_view(ExportFlavor::Gateway)
        ));
        let err = selector
            .select(&conn(Some("stranger.local"), None))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("stranger.local"));
        let merged = selector.select(&conn(None, Some("t0k"))).await.unwrap();
        assert!(Arc::ptr_eq(&merged.view, fed.merged()));
        let err = selector
            .select(&conn(None, Some("wrong")))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = selector.select(&conn(None, None)).await.err().unwrap();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
}

/// A bulk load large enough to be published in parts by the merge's second thread ends
/// in the same merged view as a small one, including a pod-IP conflict resolved late in
/// the batch (the peer's pod was served before the local cluster synced).
#[test]
fn bulk_load_published_in_parts_matches_the_rules() {
    const PODS: usize = 20_000;
    let addr = |i: usize| format!("127.10.{}.{}", i / 250, i % 250 + 1);
    let (store, fed, mut rx) = setup();
    feed(
        &store,
        "c2",
        vec![
            peer_pod("c2", "net1", "clash", &addr(17_000), false),
            peer_pod("c2", "net1", "alone", "127.99.0.1", false),
        ],
        vec![],
    );
    drain(&fed, &mut rx);
    assert!(
        fed.merged()
            .snapshot()
            .get(ResourceType::Address, "c2//Pod/default/clash")
            .is_some()
    );
    let pods: Vec<Arc<Resource>> = (0..PODS)
        .map(|i| {
            workload_res(workload::Workload {
                uid: format!("{LOCAL}//Pod/default/p{i}"),
                name: format!("p{i}"),
                namespace: "default".into(),
                addresses: vec![ip(&addr(i))],
                cluster_id: LOCAL.into(),
                network: "net1".into(),
                ..Default::default()
            })
        })
        .collect();
    feed(&store, LOCAL, pods, vec![]);
    drain(&fed, &mut rx);
    let merged = fed.merged().snapshot();
    assert_eq!(merged.len(ResourceType::Address), PODS + 1);
    for i in (0..PODS).step_by(997) {
        let uid = format!("{LOCAL}//Pod/default/p{i}");
        assert!(merged.get(ResourceType::Address, &uid).is_some(), "{uid}");
    }
    assert!(
        merged
            .get(ResourceType::Address, "c2//Pod/default/clash")
            .is_none(),
        "the local pod wins the address"
    );
    assert!(
        merged
            .get(ResourceType::Address, "c2//Pod/default/alone")
            .is_some()
    );
    assert_eq!(
        &*merged
            .resolve_address_key(&format!("net1/{}", addr(17_000)))
            .unwrap()
            .name,
        format!("{LOCAL}//Pod/default/p17000")
    );
    assert_eq!(
        fed.origin_of(ResourceType::Address, "c2//Pod/default/alone")
            .as_deref(),
        Some("c2")
    );
    assert_eq!(
        fed.origin_of(ResourceType::Address, &format!("{LOCAL}//Pod/default/p5"))
            .as_deref(),
        Some(LOCAL)
    );
    let c = fed.conflicts();
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].kind, c[0].loser.as_str()),
        (ConflictKind::PodIp, "c2")
    );
}
