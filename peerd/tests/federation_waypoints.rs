//! Waypoints across clusters (docs/design.md §5.4), in memory: three clusters, each a
//! [`Store`] and a [`Federation`] fed by a simulated istiod population with realistic
//! fields; each cluster's export view is handed to its peers through their import
//! filters, as the xDS streams would. Checks that the merged view is closed (every
//! waypoint reference, service key and network gateway resolves) over many seeds, and
//! the bad inputs: unknown waypoint, waypoint chains, no gateway, locality kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use peerd::config::ServiceRef;
use peerd::federation::{
    ExportFlavor, Federation, FederationConfig, GatewayTarget, PeerPolicy, WaypointDrop,
};
use peerd::proto::istio::workload::{self, gateway_address::Destination};
use peerd::store::{Store, StoreEvent};
use peerd::xds::{Resource, ResourceType};
use peerd_testbed::sim::population::{Population, PopulationOptions};
use tokio::sync::broadcast::Receiver;

/// (name, index, network): c1 and c2 share a flat network, c3 is behind its gateway.
const CLUSTERS: [(&str, u8, &str); 3] = [("c1", 1, "net1"), ("c2", 2, "net1"), ("c3", 3, "net3")];

fn gateway_of(index: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, index, 1))
}

struct Cluster {
    name: &'static str,
    network: &'static str,
    store: Arc<Store>,
    fed: Arc<Federation>,
    rx: Receiver<StoreEvent>,
}

impl Cluster {
    fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.fed.handle(e);
        }
    }
}

fn policy(name: &str, network: &str, flat: bool) -> PeerPolicy {
    PeerPolicy {
        cluster: name.into(),
        network: network.into(),
        identity: peerd::identity::spiffe::SpiffeId::new("cluster.local", "istio-system", "peerd")
            .unwrap(),
        flat,
        prefers_node_port: false,
        max_resources: 1_000_000,
        max_bytes: 1 << 30,
    }
}

fn config(name: &str, index: u8, network: &str, gateway: bool) -> FederationConfig {
    let mut c = FederationConfig::new(name, network);
    if gateway {
        c.gateway = Some(GatewayTarget {
            address: gateway_of(index),
            hbone_port: 15008,
        });
    }
    c.peers = CLUSTERS
        .iter()
        .filter(|(n, _, _)| *n != name)
        .map(|(n, _, net)| policy(n, net, *net == network))
        .collect();
    c
}

fn cluster(name: &'static str, network: &'static str, config: FederationConfig) -> Cluster {
    let store = Store::new();
    let rx = store.subscribe();
    let fed = Federation::new(config, Arc::clone(&store));
    Cluster {
        name,
        network,
        store,
        fed,
        rx,
    }
}

fn feed(c: &mut Cluster, origin: &str, address: Vec<Arc<Resource>>, authz: Vec<Arc<Resource>>) {
    c.store
        .apply(origin, ResourceType::Address, address, vec![]);
    c.store
        .apply(origin, ResourceType::Authorization, authz, vec![]);
    c.store.mark_synced(origin, ResourceType::Address);
    c.store.mark_synced(origin, ResourceType::Authorization);
    c.drain();
}

fn service_ref(key: &str) -> ServiceRef {
    let (namespace, name) = key.split_once('/').unwrap();
    ServiceRef {
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// Per exporting cluster, the resources it serves each peer.
type Exports = Vec<(String, BTreeMap<String, Vec<Arc<Resource>>>)>;

/// Hands every cluster's export (the flavor it serves each peer) to that peer, through
/// the peer's import filter; every resource must pass it.
fn exchange(clusters: &mut [Cluster]) {
    let exports: Exports = clusters
        .iter()
        .map(|c| {
            let per_peer = c
                .fed
                .config()
                .peers
                .iter()
                .map(|p| {
                    let view = c.fed.export_view(p.flavor()).snapshot();
                    let all: Vec<Arc<Resource>> = view
                        .resources(ResourceType::Address)
                        .values()
                        .cloned()
                        .collect();
                    (p.cluster.clone(), all)
                })
                .collect();
            (c.name.to_string(), per_peer)
        })
        .collect();
    for (exporter, per_peer) in exports {
        for (importer, resources) in per_peer {
            let c = clusters.iter_mut().find(|c| c.name == importer).unwrap();
            let filter = c.fed.import_filter(&exporter).unwrap();
            for r in &resources {
                if let Err(e) = filter.check_content(r) {
                    panic!("{importer} refuses {} from {exporter}: {e}", r.name);
                }
            }
            feed(c, &exporter, resources, vec![]);
        }
    }
}

fn decode(r: &Resource) -> workload::address::Type {
    r.decode_address().unwrap().r#type.unwrap()
}

/// Every waypoint reference, service key and network gateway of `c`'s merged view
/// resolves; returns the number of waypoint references checked.
fn assert_merged_view_is_closed(c: &Cluster) -> usize {
    let view = c.fed.merged().snapshot();
    let mut services: HashSet<String> = HashSet::new();
    let mut vips: HashSet<(String, Vec<u8>)> = HashSet::new();
    let mut decoded = Vec::new();
    for r in view.resources(ResourceType::Address).values() {
        let d = decode(r);
        if let workload::address::Type::Service(s) = &d {
            services.insert(format!("{}/{}", s.namespace, s.hostname));
            for a in &s.addresses {
                vips.insert((a.network.clone(), a.address.clone()));
            }
        }
        decoded.push((Arc::clone(&r.name), d));
    }
    let resolves = |g: &workload::GatewayAddress| match &g.destination {
        Some(Destination::Hostname(h)) => {
            services.contains(&format!("{}/{}", h.namespace, h.hostname))
        }
        Some(Destination::Address(a)) => vips.contains(&(a.network.clone(), a.address.clone())),
        None => false,
    };
    let mut checked = 0;
    for (name, d) in &decoded {
        match d {
            workload::address::Type::Service(s) => {
                let refs = s.waypoint.iter().chain(
                    s.weighted_waypoints
                        .iter()
                        .filter_map(|w| w.destination.as_ref()),
                );
                for g in refs {
                    checked += 1;
                    assert!(
                        resolves(g),
                        "{}: service {name}: waypoint {g:?} does not resolve",
                        c.name
                    );
                }
            }
            workload::address::Type::Workload(w) => {
                if let Some(g) = &w.waypoint {
                    checked += 1;
                    assert!(
                        resolves(g),
                        "{}: workload {name}: waypoint {g:?} does not resolve",
                        c.name
                    );
                }
                for key in w.services.keys() {
                    assert!(
                        services.contains(key),
                        "{}: workload {name}: service key {key} does not resolve",
                        c.name
                    );
                }
                if w.network != c.network {
                    let index = CLUSTERS
                        .iter()
                        .find(|(n, _, _)| *n == w.cluster_id)
                        .unwrap()
                        .1;
                    let gateway = w.network_gateway.as_ref().unwrap_or_else(|| {
                        panic!(
                            "{}: workload {name} on {} has no network_gateway",
                            c.name, w.network
                        )
                    });
                    let Some(Destination::Address(a)) = &gateway.destination else {
                        panic!("{}: workload {name}: gateway is not an address", c.name);
                    };
                    let expected = match gateway_of(index) {
                        IpAddr::V4(v4) => v4.octets().to_vec(),
                        IpAddr::V6(v6) => v6.octets().to_vec(),
                    };
                    assert_eq!(
                        a.address, expected,
                        "{}: {name}: gateway of {}",
                        c.name, w.cluster_id
                    );
                    assert_eq!(a.network, w.network, "{}: {name}: gateway network", c.name);
                }
            }
        }
    }
    checked
}

/// Three clusters from one seed (same namespaces and service names everywhere, like
/// waypoints of the same name in every cluster), federated both ways.
fn federate(seed: u64, workloads: usize, services: usize) -> Vec<Cluster> {
    let mut clusters: Vec<Cluster> = Vec::new();
    for (name, index, network) in CLUSTERS {
        let population = Population::generate(&PopulationOptions {
            network: network.into(),
            global_fraction: 0.5,
            realistic_fraction: 0.6,
            ..PopulationOptions::new(name, index, workloads, services, seed)
        })
        .unwrap();
        let mut c = cluster(name, network, config(name, index, network, true));
        c.fed
            .set_global_services(population.global_services().iter().map(|k| service_ref(k)));
        feed(
            &mut c,
            name,
            population.address_resources().unwrap(),
            population.authorization_resources().unwrap(),
        );
        clusters.push(c);
    }
    exchange(&mut clusters);
    clusters
}

#[test]
fn merged_views_resolve_every_reference_over_many_seeds() {
    let mut references = 0;
    let mut dropped = 0;
    for seed in 0..200u64 {
        let clusters = federate(seed, 40, 14);
        for c in &clusters {
            references += assert_merged_view_is_closed(c);
            dropped += c.fed.exporter().dropped_waypoints().len();
        }
    }
    // The populations do carry waypoints (the property is not vacuous).
    assert!(
        references > 200,
        "only {references} waypoint references checked"
    );
    // Generated populations reference only their own namespace waypoints, which have no
    // waypoint: nothing is dropped.
    assert_eq!(dropped, 0);
}

// ------------------------------------------------------------------------- bad inputs

fn ip(a: [u8; 4]) -> Vec<u8> {
    a.to_vec()
}

fn svc(name: &str, vip: [u8; 4], waypoint: Option<workload::GatewayAddress>) -> Arc<Resource> {
    Arc::new(
        Resource::service(&workload::Service {
            name: name.into(),
            namespace: "shop".into(),
            hostname: format!("{name}.shop.svc.cluster.local"),
            addresses: vec![workload::NetworkAddress {
                network: "net3".into(),
                address: ip(vip),
                length: None,
            }],
            ports: vec![workload::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: 0,
            }],
            waypoint,
            ..Default::default()
        })
        .unwrap(),
    )
}

fn pod(
    name: &str,
    addr: [u8; 4],
    service: &str,
    waypoint: Option<workload::GatewayAddress>,
) -> Arc<Resource> {
    Arc::new(
        Resource::workload(&workload::Workload {
            uid: format!("c3//Pod/shop/{name}"),
            name: name.into(),
            namespace: "shop".into(),
            addresses: vec![ip(addr)],
            network: "net3".into(),
            cluster_id: "c3".into(),
            waypoint,
            locality: Some(workload::Locality {
                region: "europe-west1".into(),
                zone: "europe-west1-b".into(),
                subzone: "rack-7".into(),
            }),
            services: [(
                format!("shop/{service}.shop.svc.cluster.local"),
                workload::PortList::default(),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        })
        .unwrap(),
    )
}

fn by_host(name: &str) -> Option<workload::GatewayAddress> {
    Some(workload::GatewayAddress {
        destination: Some(Destination::Hostname(workload::NamespacedHostname {
            namespace: "shop".into(),
            hostname: format!("{name}.shop.svc.cluster.local"),
        })),
        hbone_mtls_port: 15008,
    })
}

fn by_vip(vip: [u8; 4]) -> Option<workload::GatewayAddress> {
    Some(workload::GatewayAddress {
        destination: Some(Destination::Address(workload::NetworkAddress {
            network: "net3".into(),
            address: ip(vip),
            length: None,
        })),
        hbone_mtls_port: 15008,
    })
}

/// c3 (net3) exports `resources` with `global` global to c1 (net1); returns both.
fn two_clusters(
    resources: Vec<Arc<Resource>>,
    global: &[&str],
    c3_gateway: bool,
) -> (Cluster, Cluster) {
    let mut c1 = cluster("c1", "net1", config("c1", 1, "net1", true));
    let mut c3 = cluster("c3", "net3", config("c3", 3, "net3", c3_gateway));
    c3.fed
        .set_global_services(global.iter().map(|g| service_ref(&format!("shop/{g}"))));
    feed(&mut c3, "c3", resources, vec![]);
    feed(&mut c1, "c1", vec![], vec![]);
    let flavor = c3.fed.config().peer("c1").unwrap().flavor();
    let exported: Vec<Arc<Resource>> = c3
        .fed
        .export_view(flavor)
        .snapshot()
        .resources(ResourceType::Address)
        .values()
        .cloned()
        .collect();
    let filter = c1.fed.import_filter("c3").unwrap();
    for r in &exported {
        filter.check_content(r).unwrap();
    }
    feed(&mut c1, "c3", exported, vec![]);
    (c1, c3)
}

fn merged_service(c: &Cluster, name: &str) -> workload::Service {
    let view = c.fed.merged().snapshot();
    let r = view
        .get(ResourceType::Address, name)
        .unwrap_or_else(|| panic!("{name} not in {}'s merged view", c.name));
    match decode(r) {
        workload::address::Type::Service(s) => s,
        other => panic!("{name} is not a service: {other:?}"),
    }
}

fn merged_workload(c: &Cluster, uid: &str) -> workload::Workload {
    let view = c.fed.merged().snapshot();
    match decode(view.get(ResourceType::Address, uid).unwrap()) {
        workload::address::Type::Workload(w) => w,
        other => panic!("{uid} is not a workload: {other:?}"),
    }
}

#[test]
fn global_service_brings_its_waypoint_from_another_network() {
    let (c1, c3) = two_clusters(
        vec![
            svc("cart", [127, 3, 0, 2], by_vip([127, 3, 0, 9])),
            svc("waypoint", [127, 3, 0, 9], None),
            pod("cart-1", [127, 3, 1, 1], "cart", by_host("waypoint")),
            pod("waypoint-1", [127, 3, 1, 2], "waypoint", None),
            namespace_visible("ledger", [127, 3, 0, 12]),
        ],
        &["cart", "ledger"],
        true,
    );
    // NAMESPACE visibility is exported as is: ztunnel applies it to the global service
    // (namespaces are the same across the clusters of one mesh).
    assert_eq!(
        merged_service(&c1, "shop/ledger.shop.mesh.internal").visibility,
        workload::service::Visibility::Namespace as i32
    );
    let cart = merged_service(&c1, "shop/cart.shop.mesh.internal");
    assert_eq!(
        cart.waypoint,
        by_host_global("waypoint"),
        "the VIP reference is renamed"
    );
    let waypoint = merged_service(&c1, "shop/waypoint.shop.mesh.internal");
    assert_eq!(waypoint.hostname, "waypoint.shop.mesh.internal");
    let wp_pod = merged_workload(&c1, "c3//Pod/shop/waypoint-1");
    assert!(
        wp_pod
            .services
            .contains_key("shop/waypoint.shop.mesh.internal")
    );
    let gateway = wp_pod
        .network_gateway
        .expect("waypoint pod has c3's gateway");
    assert_eq!(
        gateway.destination,
        Some(Destination::Address(workload::NetworkAddress {
            network: "net3".into(),
            address: ip([127, 0, 3, 1]),
            length: None,
        }))
    );
    let cart_pod = merged_workload(&c1, "c3//Pod/shop/cart-1");
    assert_eq!(cart_pod.waypoint, by_host_global("waypoint"));
    // Locality survives export unchanged.
    assert_eq!(
        cart_pod.locality,
        Some(workload::Locality {
            region: "europe-west1".into(),
            zone: "europe-west1-b".into(),
            subzone: "rack-7".into(),
        })
    );
    assert!(c3.fed.exporter().dropped_waypoints().is_empty());
    assert_merged_view_is_closed(&c1);
}

fn namespace_visible(name: &str, vip: [u8; 4]) -> Arc<Resource> {
    let mut s = match decode(&svc(name, vip, None)) {
        workload::address::Type::Service(s) => s,
        other => panic!("{other:?}"),
    };
    s.visibility = workload::service::Visibility::Namespace as i32;
    Arc::new(Resource::service(&s).unwrap())
}

fn by_host_global(name: &str) -> Option<workload::GatewayAddress> {
    Some(workload::GatewayAddress {
        destination: Some(Destination::Hostname(workload::NamespacedHostname {
            namespace: "shop".into(),
            hostname: format!("{name}.shop.mesh.internal"),
        })),
        hbone_mtls_port: 15008,
    })
}

#[test]
fn waypoint_that_is_not_a_service_is_dropped_and_reported() {
    let (c1, c3) = two_clusters(
        vec![
            svc("cart", [127, 3, 0, 2], by_host("missing")),
            pod("cart-1", [127, 3, 1, 1], "cart", by_vip([127, 3, 0, 77])),
        ],
        &["cart"],
        true,
    );
    assert_eq!(
        merged_service(&c1, "shop/cart.shop.mesh.internal").waypoint,
        None
    );
    assert_eq!(merged_workload(&c1, "c3//Pod/shop/cart-1").waypoint, None);
    let dropped = c3.fed.exporter().dropped_waypoints();
    let reasons: BTreeSet<(String, WaypointDrop, String)> = dropped
        .iter()
        .map(|d| (d.resource.clone(), d.reason, d.target.clone()))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "c3//Pod/shop/cart-1".to_string(),
                WaypointDrop::UnknownService,
                "net3/127.3.0.77".to_string()
            ),
            (
                "shop/cart.shop.svc.cluster.local".to_string(),
                WaypointDrop::UnknownService,
                "shop/missing.shop.svc.cluster.local".to_string()
            ),
        ]
        .into_iter()
        .collect()
    );
    // The local view keeps the reference as istiod sent it.
    let local = c3.fed.merged().snapshot();
    match decode(
        local
            .get(ResourceType::Address, "shop/cart.shop.svc.cluster.local")
            .unwrap(),
    ) {
        workload::address::Type::Service(s) => assert_eq!(s.waypoint, by_host("missing")),
        other => panic!("{other:?}"),
    }
    assert_merged_view_is_closed(&c1);
}

#[test]
fn waypoint_of_a_waypoint_is_not_followed() {
    // cart → waypoint-a → waypoint-b (a waypoint that uses a waypoint), and two global
    // services that are each other's waypoint (a cycle).
    let (c1, c3) = two_clusters(
        vec![
            svc("cart", [127, 3, 0, 2], by_host("waypoint-a")),
            svc("waypoint-a", [127, 3, 0, 3], by_host("waypoint-b")),
            svc("waypoint-b", [127, 3, 0, 4], None),
            pod(
                "waypoint-a-1",
                [127, 3, 1, 3],
                "waypoint-a",
                by_host("waypoint-b"),
            ),
            pod("waypoint-b-1", [127, 3, 1, 4], "waypoint-b", None),
            svc("ping", [127, 3, 0, 5], by_host("pong")),
            svc("pong", [127, 3, 0, 6], by_host("ping")),
        ],
        &["cart", "ping", "pong"],
        true,
    );
    let merged = c1.fed.merged().snapshot();
    assert!(
        merged
            .get(ResourceType::Address, "shop/waypoint-a.shop.mesh.internal")
            .is_some()
    );
    assert!(
        merged
            .get(ResourceType::Address, "shop/waypoint-b.shop.mesh.internal")
            .is_none(),
        "the waypoint's own waypoint is not exported"
    );
    assert_eq!(
        merged_service(&c1, "shop/waypoint-a.shop.mesh.internal").waypoint,
        None
    );
    assert_eq!(
        merged_workload(&c1, "c3//Pod/shop/waypoint-a-1").waypoint,
        None
    );
    assert_eq!(
        merged_service(&c1, "shop/ping.shop.mesh.internal").waypoint,
        by_host_global("pong")
    );
    assert_eq!(
        merged_service(&c1, "shop/pong.shop.mesh.internal").waypoint,
        by_host_global("ping")
    );
    let chain: Vec<String> = c3
        .fed
        .exporter()
        .dropped_waypoints()
        .into_iter()
        .filter(|d| d.reason == WaypointDrop::WaypointChain)
        .map(|d| d.resource)
        .collect();
    assert_eq!(
        chain,
        vec![
            "c3//Pod/shop/waypoint-a-1",
            "shop/waypoint-a.shop.svc.cluster.local"
        ]
    );
    assert_merged_view_is_closed(&c1);
}

#[test]
fn waypoint_on_a_network_without_gateway_is_dropped_for_multi_network_peers() {
    let resources = vec![
        svc("cart", [127, 3, 0, 2], by_host("waypoint")),
        svc("waypoint", [127, 3, 0, 9], None),
        pod("waypoint-1", [127, 3, 1, 2], "waypoint", None),
    ];
    let mut c3 = cluster("c3", "net3", config("c3", 3, "net3", false));
    c3.fed.set_global_services([service_ref("shop/cart")]);
    feed(&mut c3, "c3", resources, vec![]);
    let form = |flavor: ExportFlavor| -> workload::Service {
        let view = c3.fed.export_view(flavor).snapshot();
        match decode(
            view.get(ResourceType::Address, "shop/cart.shop.mesh.internal")
                .unwrap(),
        ) {
            workload::address::Type::Service(s) => s,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        form(ExportFlavor::Flat).waypoint,
        by_host_global("waypoint")
    );
    assert_eq!(form(ExportFlavor::Gateway).waypoint, None);
    let dropped = c3.fed.exporter().dropped_waypoints();
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].reason, WaypointDrop::NoGateway);
    assert_eq!(dropped[0].resource, "shop/cart.shop.svc.cluster.local");
}

#[test]
fn waypoint_export_follows_changes() {
    let (mut c1, mut c3) = two_clusters(
        vec![
            svc("cart", [127, 3, 0, 2], by_host("waypoint")),
            pod("cart-1", [127, 3, 1, 1], "cart", None),
        ],
        &["cart"],
        true,
    );
    assert_eq!(c3.fed.exporter().dropped_waypoints().len(), 1);
    // The waypoint appears: the reference is honoured and the waypoint exported.
    feed(
        &mut c3,
        "c3",
        vec![
            svc("waypoint", [127, 3, 0, 9], None),
            pod("waypoint-1", [127, 3, 1, 2], "waypoint", None),
        ],
        vec![],
    );
    assert!(c3.fed.exporter().dropped_waypoints().is_empty());
    let flat = c3.fed.export_view(ExportFlavor::Gateway).snapshot();
    assert!(
        flat.get(ResourceType::Address, "shop/waypoint.shop.mesh.internal")
            .is_some()
    );
    assert!(
        flat.get(ResourceType::Address, "c3//Pod/shop/waypoint-1")
            .is_some()
    );
    // cart loses its waypoint: the waypoint and its pod leave the export.
    feed(
        &mut c3,
        "c3",
        vec![svc("cart", [127, 3, 0, 2], None)],
        vec![],
    );
    let flat = c3.fed.export_view(ExportFlavor::Gateway).snapshot();
    assert!(
        flat.get(ResourceType::Address, "shop/waypoint.shop.mesh.internal")
            .is_none()
    );
    assert!(
        flat.get(ResourceType::Address, "c3//Pod/shop/waypoint-1")
            .is_none()
    );
    c1.drain();
}

/// A ServiceExport (or label, or config entry) naming a Service that does not exist:
/// the name is global, nothing is exported, and the Service is exported once it appears.
#[test]
fn global_name_without_a_service_exports_nothing_until_it_exists() {
    let mut c3 = cluster("c3", "net3", config("c3", 3, "net3", true));
    c3.fed
        .set_global_services([service_ref("shop/ghost"), service_ref("shop/cart")]);
    feed(
        &mut c3,
        "c3",
        vec![svc("cart", [127, 3, 0, 2], None)],
        vec![],
    );
    let names = |c: &Cluster| -> Vec<String> {
        c.fed
            .export_view(ExportFlavor::Gateway)
            .snapshot()
            .resources(ResourceType::Address)
            .keys()
            .map(|k| k.to_string())
            .collect()
    };
    assert_eq!(names(&c3), vec!["shop/cart.shop.mesh.internal"]);
    feed(
        &mut c3,
        "c3",
        vec![svc("ghost", [127, 3, 0, 3], None)],
        vec![],
    );
    assert_eq!(
        names(&c3),
        vec![
            "shop/cart.shop.mesh.internal",
            "shop/ghost.shop.mesh.internal"
        ]
    );
}
