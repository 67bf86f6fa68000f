//! Three simulated clusters federating over mTLS on loopback (127.0.1.1, 127.0.2.1,
//! 127.0.3.1): c1 and c2 share the flat network "flat", c3 is on "net3". Each is wired
//! like `peerd run`: store fed by a simulated istiod population, federation, the shared
//! xDS listener, one client per imported peer.
//!
//! Links: c1 imports c2 and c3; c2 imports c3 only (asymmetric: c2 does NOT import c1);
//! c3 imports c1 and c2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod federation_support;

use std::sync::Arc;
use std::time::Duration;

use federation_support::*;
use peerd::federation::ExportFlavor;
use peerd::federation::naming::{global_key, is_global_hostname, is_global_key};
use peerd::identity::tls::{ClientTlsOptions, ServerIdentity, client_config};
use peerd::proto::istio::workload;
use peerd::store::Store;
use peerd::xds::client::{AdsClient, TokenSource};
use peerd::xds::{Resource, ResourceType};
use tokio_util::sync::CancellationToken;

fn specs() -> Vec<Spec> {
    vec![
        Spec::new("c1", 1, "flat", &["c2", "c3"]),
        Spec::new("c2", 2, "flat", &["c3"]),
        Spec::new("c3", 3, "net3", &["c1", "c2"]),
    ]
}

fn decode_workload(r: &Resource) -> workload::Workload {
    match r.decode_address().unwrap().r#type.unwrap() {
        workload::address::Type::Workload(w) => w,
        _ => panic!("{} is not a workload", r.name),
    }
}

fn gateway_of(w: &workload::Workload) -> Option<(Vec<u8>, u32)> {
    let g = w.network_gateway.as_ref()?;
    match g.destination.as_ref()? {
        workload::gateway_address::Destination::Address(a) => {
            Some((a.address.clone(), g.hbone_mtls_port))
        }
        workload::gateway_address::Destination::Hostname(_) => None,
    }
}

fn synced(c: &Cluster, peer: &str) -> bool {
    c.store.get(peer).is_some_and(|o| o.is_fully_synced())
        && c.fed
            .peer_status()
            .iter()
            .any(|p| p.cluster == peer && p.synced && p.stale_seconds.is_none())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_federate_with_export_rules_and_asymmetric_links() {
    let mut topo = Topology::new(specs()).await;
    let c1 = topo.start("c1", true).await;
    let c2 = topo.start("c2", true).await;
    let c3 = topo.start("c3", true).await;
    eventually("c1 synced with c2 and c3", || {
        synced(&c1, "c2") && synced(&c1, "c3")
    })
    .await;
    eventually("c3 synced with c1 and c2", || {
        synced(&c3, "c1") && synced(&c3, "c2")
    })
    .await;
    eventually("c2 synced with c3", || synced(&c2, "c3")).await;
    eventually("c1 merged holds c2 and c3 workloads", || {
        c1.merged_workloads_from("c2") > 0 && c1.merged_workloads_from("c3") > 0
    })
    .await;

    // Export filtering and naming: c1 holds from c2 exactly c2's flat export, and that is
    // only mesh.internal services and workloads backing them; no authorizations.
    let from_c2 = c1.held("c2", ResourceType::Address);
    let c2_export = c2.fed.export_view(ExportFlavor::Flat).snapshot();
    assert_eq!(from_c2.len(), c2_export.len(ResourceType::Address));
    assert!(c1.held("c2", ResourceType::Authorization).is_empty());
    let c2_local = c2.store.get("c2").unwrap().view.snapshot();
    assert!(
        c2_local.len(ResourceType::Address) > from_c2.len(),
        "non-global resources are not exported"
    );
    let globals = global_services(&population("c2", 2, "flat"));
    let mut exported_services: Vec<String> = from_c2
        .iter()
        .filter_map(|r| r.as_service())
        .map(|s| {
            assert!(is_global_hostname(&s.hostname), "{}", s.hostname);
            format!("{}/{}", s.namespace, s.hostname)
        })
        .collect();
    exported_services.sort();
    let mut expected: Vec<String> = globals
        .iter()
        .map(|g| global_key(&g.namespace, &g.name))
        .collect();
    expected.sort();
    assert_eq!(exported_services, expected);

    // Flat passthrough: c2's workloads reach c1 with their pod IPs and no gateway.
    for r in from_c2.iter().filter(|r| r.as_workload().is_some()) {
        let w = decode_workload(r);
        assert!(
            w.services.keys().all(|k| is_global_key(k)),
            "{:?}",
            w.services.keys()
        );
        assert_eq!(w.cluster_id, "c2");
        assert_eq!(w.network, "flat");
        assert!(
            w.network_gateway.is_none(),
            "flat peer workload {} has a gateway",
            w.uid
        );
        let local = c2_local.get(ResourceType::Address, &r.name).unwrap();
        assert_eq!(w.addresses, decode_workload(local).addresses, "pod IP kept");
    }
    // Gateway injection: c3 is on another network, so both directions carry the east-west
    // gateway of the exporting cluster with HBONE 15008.
    let from_c3 = c1.held("c3", ResourceType::Address);
    let c3_workloads: Vec<_> = from_c3
        .iter()
        .filter(|r| r.as_workload().is_some())
        .collect();
    assert!(!c3_workloads.is_empty());
    for r in c3_workloads {
        let w = decode_workload(r);
        assert_eq!(
            gateway_of(&w),
            Some((vec![127, 0, 3, 1], 15008)),
            "{}",
            w.uid
        );
        assert_eq!(w.network, "net3");
    }
    for r in c3
        .held("c1", ResourceType::Address)
        .iter()
        .filter(|r| r.as_workload().is_some())
    {
        assert_eq!(
            gateway_of(&decode_workload(r)),
            Some((vec![127, 0, 1, 1], 15008))
        );
    }

    // Merge: one Service per global hostname with workloads from all three clusters.
    let g = globals.iter().next().unwrap();
    let key = global_key(&g.namespace, &g.name);
    let merged = c1.fed.merged().snapshot();
    assert!(merged.get(ResourceType::Address, &key).is_some());
    let mut clusters: Vec<String> = merged
        .resources(ResourceType::Address)
        .values()
        .filter_map(|r| r.as_workload())
        .filter(|w| w.services.iter().any(|k| **k == *key))
        .map(|w| w.cluster_id.to_string())
        .collect();
    clusters.dedup();
    assert_eq!(
        clusters,
        vec!["c1", "c2", "c3"],
        "workloads of {key} from every cluster"
    );
    assert!(c1.fed.conflicts().is_empty(), "{:?}", c1.fed.conflicts());

    // Asymmetric link: c2 does not import c1, while c1 imports c2.
    assert!(c2.store.get("c1").is_none());
    assert_eq!(c2.merged_workloads_from("c1"), 0);
    assert!(c2.merged_workloads_from("c3") > 0);

    // A downstream with the bearer token gets c1's merged view over TLS.
    let downstream = Store::new();
    let tls = client_config(&ClientTlsOptions::new(
        Arc::clone(&c1.identity.roots),
        ServerIdentity::Name,
    ))
    .unwrap();
    let mut opts = client_options("ztunnel-view", c1.addr, tls);
    opts.token = Some(TokenSource::Literal(TOKEN.into()));
    let cancel = CancellationToken::new();
    AdsClient::new(opts, Arc::clone(&downstream)).spawn(cancel.clone());
    eventually("downstream receives the merged view", || {
        downstream.get("ztunnel-view").is_some_and(|o| {
            o.is_fully_synced()
                && o.view.snapshot().len(ResourceType::Address)
                    == c1.fed.merged().snapshot().len(ResourceType::Address)
        })
    })
    .await;
    let got = downstream.get("ztunnel-view").unwrap().view.snapshot();
    assert!(got.get(ResourceType::Address, &key).is_some());
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_peer_is_kept_stale_then_withdrawn_after_the_grace_period() {
    let mut specs = specs();
    specs[0].grace = Some(Duration::from_secs(5));
    let mut topo = Topology::new(specs).await;
    let c1 = topo.start("c1", true).await;
    let _c2 = topo.start("c2", true).await;
    let c3 = topo.start("c3", true).await;
    eventually("c1 synced with c3", || {
        synced(&c1, "c3") && c1.merged_workloads_from("c3") > 0
    })
    .await;
    let before = c1.merged_workloads_from("c3");
    c3.stop();
    eventually("c1 marks c3 stale", || {
        c1.fed
            .peer_status()
            .iter()
            .any(|p| p.cluster == "c3" && p.stale_seconds.is_some())
    })
    .await;
    let kept = c1.merged_workloads_from("c3");
    let stale = c1
        .fed
        .peer_status()
        .into_iter()
        .find(|p| p.cluster == "c3")
        .unwrap();
    if stale.stale_seconds.is_some_and(|s| s < 4) {
        assert_eq!(
            kept, before,
            "state kept while stale within the grace period"
        );
    }
    eventually("c3 withdrawn after the grace period", || {
        c1.merged_workloads_from("c3") == 0 && c1.store.get("c3").is_none()
    })
    .await;
    // The other peer is untouched.
    assert!(c1.merged_workloads_from("c2") > 0);
    assert!(synced(&c1, "c2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_peer_does_not_replace_state_before_its_local_sync() {
    let mut topo = Topology::new(specs()).await;
    let c1 = topo.start("c1", true).await;
    let c2 = topo.start("c2", true).await;
    eventually("c1 synced with c2", || {
        synced(&c1, "c2") && c1.merged_workloads_from("c2") > 0
    })
    .await;
    let before = c1.held("c2", ResourceType::Address).len();
    let merged_before = c1.merged_workloads_from("c2");
    c2.stop();
    drop(c2);
    // c2 restarts with an empty local store (its istiod not synced yet): its export is
    // gated, so c1 must keep c2's last state instead of receiving "remove everything".
    let mut restarted = None;
    for _ in 0..200 {
        if std::net::TcpListener::bind(topo.addrs[1]).is_ok() {
            restarted = Some(topo.start("c2", false).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c2 = restarted.expect("c2's address became free again");
    eventually("c1 is refused by the gated export", || {
        c1.last_failure("c2")
            .is_some_and(|f| f.message.contains("export not ready"))
    })
    .await;
    assert_eq!(c1.held("c2", ResourceType::Address).len(), before);
    assert_eq!(c1.merged_workloads_from("c2"), merged_before);
    // c2's istiod syncs: c1 is served again, with the same content.
    feed_local(&c2.store, &c2.spec);
    eventually("c1 synced with c2 again", || synced(&c1, "c2")).await;
    assert_eq!(c1.held("c2", ResourceType::Address).len(), before);
    assert_eq!(c1.merged_workloads_from("c2"), merged_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_changes_propagate_incrementally_to_importing_peers() {
    let mut topo = Topology::new(specs()).await;
    let c1 = topo.start("c1", true).await;
    let c2 = topo.start("c2", true).await;
    let _c3 = topo.start("c3", true).await;
    eventually("c1 synced with c2", || {
        synced(&c1, "c2") && c1.merged_workloads_from("c2") > 0
    })
    .await;
    let globals = global_services(&population("c2", 2, "flat"));
    let g = globals.iter().next().unwrap().clone();
    let key = global_key(&g.namespace, &g.name);
    let local_key = format!(
        "{}/{}.{}.svc.cluster.local",
        g.namespace, g.name, g.namespace
    );
    // A pod of c2 backing a global service moves to a new IP: c1 sees the new IP.
    let local = c2.store.get("c2").unwrap().view.snapshot();
    let pod = local
        .resources(ResourceType::Address)
        .values()
        .find(|r| {
            r.as_workload()
                .is_some_and(|w| w.services.iter().any(|k| **k == *local_key))
        })
        .cloned()
        .expect("a pod backs the global service");
    let mut w = decode_workload(&pod);
    w.addresses = vec![vec![127, 0, 240, 9]];
    c2.store.apply(
        "c2",
        ResourceType::Address,
        vec![Arc::new(Resource::workload(&w).unwrap())],
        vec![],
    );
    eventually("c1 sees the moved pod", || {
        c1.fed
            .merged()
            .snapshot()
            .get(ResourceType::Address, &pod.name)
            .is_some_and(|r| {
                r.as_workload().unwrap().addresses
                    == vec!["127.0.240.9".parse::<std::net::IpAddr>().unwrap()]
            })
    })
    .await;
    // The pod is deleted: c1 withdraws it.
    c2.store.apply(
        "c2",
        ResourceType::Address,
        vec![],
        vec![Arc::clone(&pod.name)],
    );
    eventually("c1 withdraws the deleted pod", || {
        c1.fed
            .merged()
            .snapshot()
            .get(ResourceType::Address, &pod.name)
            .is_none()
    })
    .await;
    // c2 stops exporting the service: c1 loses c2's contribution (c1's own stays).
    let rest: Vec<_> = globals.iter().filter(|s| **s != g).cloned().collect();
    c2.fed.set_global_services(rest);
    eventually(
        "c1 drops c2's workloads of the no-longer-global service",
        || {
            !c1.fed
                .merged()
                .snapshot()
                .resources(ResourceType::Address)
                .values()
                .filter_map(|r| r.as_workload())
                .any(|w| &*w.cluster_id == "c2" && w.services.iter().any(|k| **k == *key))
        },
    )
    .await;
    assert!(
        c1.held("c2", ResourceType::Address)
            .iter()
            .all(|r| *r.name != *key)
    );
    assert!(
        c1.fed
            .merged()
            .snapshot()
            .get(ResourceType::Address, &key)
            .is_some(),
        "c1 still exports it itself"
    );
}
