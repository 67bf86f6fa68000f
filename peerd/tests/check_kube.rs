//! `peerd check`'s Kubernetes checks against two emulated API servers (real HTTP on
//! 127.0.0.1, read through a kubeconfig with one context per cluster, as an operator
//! would): all pass on a consistent pair, and each inconsistency an operator meets —
//! different roots, a peer Gateway naming the wrong network, a data plane that times out
//! on 15008 — fails with its reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::{Value, json};

use peerd::debug::check::Outcome;
use peerd::debug::check_kube::{ContextArg, gather, kube_checks};
use peerd_testbed::emulator::{Emulator, EmulatorHandle, EmulatorOptions};
use peerd_testbed::pki::CertificateAuthority;

const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/istio-eastwest/gateways";
const CONDITIONS: [&str; 5] = [
    "Accepted",
    "Programmed",
    "gloo.solo.io/PeerConnected",
    "gloo.solo.io/PeeringSucceeded",
    "gloo.solo.io/PeerDataPlaneProgrammed",
];

async fn emulator() -> EmulatorHandle {
    Emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        EmulatorOptions {
            namespaces: ["default", "istio-system", "istio-eastwest"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

async fn send(emu: &EmulatorHandle, method: http::Method, path: &str, ctype: &str, body: &Value) {
    emu.request_ok(method, path, ctype, body).await.unwrap();
}

async fn apply(emu: &EmulatorHandle, path: &str, body: &Value) {
    send(
        emu,
        http::Method::PATCH,
        &format!("{path}?fieldManager=test&force=true"),
        "application/apply-patch+yaml",
        body,
    )
    .await;
}

fn conditions(statuses: &[(&str, &str, &str)]) -> Value {
    let list: Vec<Value> = statuses
        .iter()
        .map(|(t, status, reason)| {
            json!({"type": t, "status": status, "reason": reason, "message": format!("{t} {reason}"),
                   "lastTransitionTime": "2026-11-26T00:00:00Z", "observedGeneration": 1})
        })
        .collect();
    json!({ "conditions": list })
}

/// A cluster as an installed Istio + peerd leaves it: network label, root ConfigMap, an
/// east-west Gateway (Programmed) and one peer Gateway per other cluster.
async fn seed(emu: &EmulatorHandle, network: &str, root_pem: &str, peers: &[(&str, &str)]) {
    apply(
        emu,
        "/api/v1/namespaces/istio-system",
        &json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "istio-system", "labels": {"topology.istio.io/network": network}}}),
    )
    .await;
    send(
        emu,
        http::Method::POST,
        "/api/v1/namespaces/istio-system/configmaps",
        "application/json",
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "istio-ca-root-cert", "namespace": "istio-system"},
                "data": {"root-cert.pem": root_pem}}),
    )
    .await;
    send(emu, http::Method::POST, GATEWAYS, "application/json",
        &json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "istio-eastwest", "namespace": "istio-eastwest",
                             "labels": {"topology.istio.io/network": network}},
                "spec": {"gatewayClassName": "istio-eastwest", "addresses": [{"value": "127.0.0.9"}],
                         "listeners": [{"name": "cross-network", "port": 15008, "protocol": "HBONE"}]}})).await;
    apply(
        emu,
        &format!("{GATEWAYS}/istio-eastwest/status"),
        &json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "istio-eastwest"},
                "status": conditions(&[("Programmed", "True", "Programmed")])}),
    )
    .await;
    for (cluster, peer_network) in peers {
        let name = format!("istio-remote-peer-{cluster}");
        send(emu, http::Method::POST, GATEWAYS, "application/json",
            &json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                    "metadata": {"name": name, "namespace": "istio-eastwest",
                                 "labels": {"topology.istio.io/cluster": cluster,
                                            "topology.istio.io/network": peer_network}},
                    "spec": {"gatewayClassName": "istio-remote", "addresses": [{"value": "127.0.0.8"}],
                             "listeners": [{"name": "xds-tls", "port": 15012, "protocol": "TLS"}]}})).await;
        let all_true: Vec<(&str, &str, &str)> =
            CONDITIONS.iter().map(|t| (*t, "True", "Ok")).collect();
        set_peer_conditions(emu, &name, &all_true).await;
    }
}

async fn set_peer_conditions(emu: &EmulatorHandle, name: &str, statuses: &[(&str, &str, &str)]) {
    apply(
        emu,
        &format!("{GATEWAYS}/{name}/status"),
        &json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": name}, "status": conditions(statuses)}),
    )
    .await;
}

fn kubeconfig(dir: &std::path::Path, clusters: &[(&str, &EmulatorHandle)]) -> PathBuf {
    let mut text = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (name, emu) in clusters {
        text += &format!("- name: {name}\n  cluster:\n    server: {}\n", emu.url());
    }
    text += "contexts:\n";
    for (name, _) in clusters {
        text += &format!("- name: ctx-{name}\n  context:\n    cluster: {name}\n    user: u\n");
    }
    text += &format!(
        "current-context: ctx-{}\nusers:\n- name: u\n  user: {{}}\n",
        clusters[0].0
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

fn contexts() -> Vec<ContextArg> {
    ["ctx-c1=c1", "ctx-c2=c2"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

fn outcome_of<'a>(
    results: &'a [peerd::debug::check::CheckResult],
    name: &str,
) -> &'a peerd::debug::check::CheckResult {
    results
        .iter()
        .find(|r| r.name.starts_with(name))
        .unwrap_or_else(|| panic!("no check {name}: {results:#?}"))
}

#[tokio::test]
async fn consistent_clusters_pass_and_each_inconsistency_fails_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let root = CertificateAuthority::new_root("shared root").unwrap();
    let (c1, c2) = (emulator().await, emulator().await);
    seed(&c1, "net1", root.root_pem(), &[("c2", "net2")]).await;
    seed(&c2, "net2", root.root_pem(), &[("c1", "net1")]).await;
    let config = kubeconfig(dir.path(), &[("c1", &c1), ("c2", &c2)]);

    let facts = gather(Some(&config), &contexts()).await.unwrap();
    assert_eq!(
        facts.iter().map(|f| f.cluster.as_str()).collect::<Vec<_>>(),
        ["c1", "c2"]
    );
    let results = kube_checks(&facts, false);
    assert!(
        results.iter().all(|r| r.outcome == Outcome::Pass),
        "{results:#?}"
    );
    assert_eq!(
        results.len(),
        2 * 2 + 2,
        "east-west + one peer per cluster, roots, networks"
    );

    // The peer Gateway in c1 names the wrong network for c2.
    apply(
        &c1,
        &format!("{GATEWAYS}/istio-remote-peer-c2"),
        &json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "istio-remote-peer-c2", "namespace": "istio-eastwest",
                             "labels": {"topology.istio.io/network": "net-wrong"}}}),
    )
    .await;
    // c2's data plane to c1 times out on 15008.
    let mut statuses: Vec<(&str, &str, &str)> =
        CONDITIONS.iter().map(|t| (*t, "True", "Ok")).collect();
    statuses[4] = (
        "gloo.solo.io/PeerDataPlaneProgrammed",
        "False",
        "HBONEConnectTimeout",
    );
    set_peer_conditions(&c2, "istio-remote-peer-c1", &statuses).await;
    // c2 publishes another root.
    let other = CertificateAuthority::new_root("another root").unwrap();
    apply(
        &c2,
        "/api/v1/namespaces/istio-system/configmaps/istio-ca-root-cert",
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "istio-ca-root-cert", "namespace": "istio-system"},
                "data": {"root-cert.pem": other.root_pem()}}),
    )
    .await;

    let results = kube_checks(&gather(Some(&config), &contexts()).await.unwrap(), false);
    let network = outcome_of(&results, "network configuration (kubernetes)");
    assert_eq!(network.outcome, Outcome::Fail);
    assert!(
        network
            .reason
            .contains("says cluster c2 is on network \"net-wrong\""),
        "{}",
        network.reason
    );
    let data_plane = outcome_of(
        &results,
        "peer gateway istio-eastwest/istio-remote-peer-c1 (c2)",
    );
    assert_eq!(data_plane.outcome, Outcome::Fail);
    assert!(
        data_plane
            .reason
            .contains("PeerDataPlaneProgrammed is False (HBONEConnectTimeout"),
        "{}",
        data_plane.reason
    );
    let roots = outcome_of(&results, "root certificates (kubernetes)");
    assert_eq!(roots.outcome, Outcome::Fail);
    assert!(
        roots.reason.contains("unknown certificate authority"),
        "{}",
        roots.reason
    );
    assert_eq!(
        roots.details.len(),
        2,
        "one SHA256 line per distinct root: {:?}",
        roots.details
    );
    // Unaffected checks still pass.
    assert_eq!(
        outcome_of(&results, "east-west gateway (c1)").outcome,
        Outcome::Pass
    );
    assert_eq!(
        outcome_of(
            &results,
            "peer gateway istio-eastwest/istio-remote-peer-c2 (c1)"
        )
        .outcome,
        Outcome::Pass
    );
}

#[tokio::test]
async fn bad_kubeconfig_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = gather(Some(&missing), &[]).await.unwrap_err();
    assert!(format!("{err:#}").contains("reading kubeconfig"), "{err:#}");

    let emu = emulator().await;
    let config = kubeconfig(dir.path(), &[("c1", &emu)]);
    let err = gather(Some(&config), &["ctx-unknown".parse().unwrap()])
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("context ctx-unknown"),
        "{err:#}"
    );

    for bad in ["", "=c1", "ctx="] {
        assert!(
            bad.parse::<ContextArg>().is_err(),
            "{bad:?} must be refused"
        );
    }
}

#[tokio::test]
async fn a_cluster_without_istio_warns_instead_of_passing() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator().await;
    let config = kubeconfig(dir.path(), &[("c1", &emu)]);
    let results = kube_checks(&gather(Some(&config), &[]).await.unwrap(), false);
    for name in [
        "east-west gateway (ctx-c1)",
        "peer gateways (ctx-c1)",
        "root certificates",
        "network configuration",
    ] {
        assert_eq!(
            outcome_of(&results, name).outcome,
            Outcome::Warn,
            "{name}: {results:#?}"
        );
    }
}

#[test]
fn flat_entries_whose_pod_the_source_no_longer_sends_are_stale() {
    use peerd::debug::check_kube::{ClusterFacts, FlatEntry, check_stale_workloads};
    use std::collections::{BTreeMap, BTreeSet};
    let entry = |pod: &str| FlatEntry {
        name: format!("autogenflat.c2.default.{pod}.0123456789ab"),
        source_cluster: "c2".into(),
        workload_uid: format!("c2//Pod/default/{pod}"),
    };
    let facts = ClusterFacts {
        cluster: "c1".into(),
        flat_entries: vec![entry("pod1"), entry("pod2")],
        ..ClusterFacts::default()
    };
    let mut exported = BTreeMap::from([(
        "c2".to_string(),
        BTreeSet::from([
            "c2//Pod/default/pod1".to_string(),
            "c2//Pod/default/pod2".to_string(),
        ]),
    )]);
    let fresh = check_stale_workloads(&facts, &exported);
    assert_eq!(fresh.outcome, Outcome::Pass, "{fresh:?}");

    exported
        .get_mut("c2")
        .unwrap()
        .remove("c2//Pod/default/pod2");
    let stale = check_stale_workloads(&facts, &exported);
    assert_eq!(stale.outcome, Outcome::Warn);
    assert!(
        stale
            .reason
            .starts_with("1 of 2 autogenflat WorkloadEntries"),
        "{}",
        stale.reason
    );
    assert_eq!(
        stale.details,
        ["autogenflat.c2.default.pod2.0123456789ab (from c2: c2//Pod/default/pod2 is gone)"]
    );

    // A source cluster peerd has nothing from: all of its entries are stale.
    let none = check_stale_workloads(&facts, &BTreeMap::new());
    assert!(none.reason.starts_with("2 of 2"), "{}", none.reason);
}
