//! `peerd expose`, `peerd link`, `peerd unlink` and `peerd check --precheck`, run as the
//! real binary against emulated API servers (real HTTP on 127.0.0.1, one kubeconfig
//! context per cluster, as an operator would): the Gateways written are the ones peerd
//! reads, a second run writes nothing, and every bad input is refused before anything
//! is written in any cluster; a failure in the middle says which clusters were written
//! and a re-run completes it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use peerd::kube::gateways::parse_peer_gateway;
use peerd::kube::types::Gateway;
use peerd_testbed::emulator::{Emulator, EmulatorHandle, EmulatorOptions, Verb};
use peerd_testbed::pki::CertificateAuthority;

const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/istio-eastwest/gateways";
const GROUP: &str = "gateway.networking.k8s.io";

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

async fn label_network(emu: &EmulatorHandle, network: &str) {
    send(
        emu,
        http::Method::PATCH,
        "/api/v1/namespaces/istio-system",
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"topology.istio.io/network": network}}}),
    )
    .await;
}

/// An exposed cluster, as Istio leaves it: network label, root ConfigMap, the east-west
/// Gateway (labelled `gateway_network`) and, when `address` is given, its status address.
async fn expose(
    emu: &EmulatorHandle,
    network: &str,
    gateway_network: &str,
    address: Option<&str>,
    root_pem: &str,
) {
    label_network(emu, network).await;
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
                             "labels": {"topology.istio.io/network": gateway_network}},
                "spec": {"gatewayClassName": "istio-eastwest",
                         "listeners": [{"name": "cross-network", "port": 15008, "protocol": "HBONE"}]}})).await;
    if let Some(address) = address {
        program(emu, address).await;
    }
}

/// What istiod writes once the east-west gateway is deployed.
async fn program(emu: &EmulatorHandle, address: &str) {
    send(
        emu,
        http::Method::PATCH,
        &format!("{GATEWAYS}/istio-eastwest/status?fieldManager=istiod&force=true"),
        "application/apply-patch+yaml",
        &json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "istio-eastwest", "namespace": "istio-eastwest"},
                "status": {"addresses": [{"type": "IPAddress", "value": address}],
                           "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed",
                                           "message": "deployed", "lastTransitionTime": "2026-01-01T00:00:00Z",
                                           "observedGeneration": 1}]}}),
    )
    .await;
}

/// A kubeconfig with context `ctx-<name>` per cluster.
fn kubeconfig(dir: &Path, clusters: &[(&str, &str)]) -> PathBuf {
    let mut text = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (name, url) in clusters {
        text += &format!("- name: {name}\n  cluster:\n    server: {url}\n");
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

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn peerd(kubeconfig: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_peerd"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn peer_gateways(emu: &EmulatorHandle) -> Vec<String> {
    let mut names: Vec<String> = ["c1", "c2", "c3", "c4"]
        .iter()
        .map(|c| format!("istio-remote-peer-{c}"))
        .filter(|name| {
            emu.object(GROUP, "gateways", "istio-eastwest", name)
                .is_some()
        })
        .collect();
    names.sort();
    names
}

fn gateway(emu: &EmulatorHandle, name: &str) -> Gateway {
    serde_json::from_value(
        emu.object(GROUP, "gateways", "istio-eastwest", name)
            .unwrap_or_else(|| panic!("no Gateway {name}")),
    )
    .unwrap()
}

struct Three {
    _dir: tempfile::TempDir,
    config: PathBuf,
    emus: Vec<EmulatorHandle>,
}

/// Three exposed clusters c1..c3 on networks net1..net3 at 192.0.2.1..3.
async fn three_exposed() -> Three {
    let dir = tempfile::tempdir().unwrap();
    let root = CertificateAuthority::new_root("shared root").unwrap();
    let mut emus = Vec::new();
    for k in 1..=3 {
        let emu = emulator().await;
        let network = format!("net{k}");
        expose(
            &emu,
            &network,
            &network,
            Some(&format!("192.0.2.{k}")),
            root.root_pem(),
        )
        .await;
        emus.push(emu);
    }
    let config = kubeconfig(
        dir.path(),
        &[
            ("c1", emus[0].url()),
            ("c2", emus[1].url()),
            ("c3", emus[2].url()),
        ],
    );
    Three {
        _dir: dir,
        config,
        emus,
    }
}

const LINK_ALL: [&str; 7] = [
    "link",
    "--context",
    "ctx-c1=c1",
    "--context",
    "ctx-c2=c2",
    "--context",
    "ctx-c3=c3",
];

fn writes(emus: &[EmulatorHandle]) -> Vec<u64> {
    emus.iter().map(|e| e.counters().writes()).collect()
}

#[tokio::test]
async fn link_writes_a_peer_gateway_per_other_cluster_and_a_second_run_writes_nothing() {
    let t = three_exposed().await;
    let run = peerd(&t.config, &LINK_ALL).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    for (k, emu) in t.emus.iter().enumerate() {
        let me = format!("c{}", k + 1);
        let expected: Vec<String> = ["c1", "c2", "c3"]
            .iter()
            .filter(|c| **c != me)
            .map(|c| format!("istio-remote-peer-{c}"))
            .collect();
        assert_eq!(peer_gateways(emu), expected, "{me}");
        for name in &expected {
            let spec = parse_peer_gateway(&gateway(emu, name), &me).unwrap();
            let peer = spec.cluster.trim_start_matches('c').to_string();
            assert_eq!(spec.network, format!("net{peer}"));
            assert_eq!(spec.trust_domain, "cluster.local");
            assert_eq!(
                spec.address,
                peerd::kube::gateways::PeerAddress::Ip(format!("192.0.2.{peer}").parse().unwrap())
            );
            let managers: Vec<Value> = emu
                .object(GROUP, "gateways", "istio-eastwest", name)
                .unwrap()["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .clone();
            assert!(
                managers.iter().any(|m| m["manager"] == "peerd"),
                "{managers:?}"
            );
        }
    }
    assert_eq!(run.stdout.matches(" created").count(), 6, "{}", run.stdout);

    let versions: Vec<u64> = t.emus.iter().map(|e| e.resource_version()).collect();
    for e in &t.emus {
        e.reset_counters();
    }
    let again = peerd(&t.config, &LINK_ALL).await;
    assert!(again.ok, "{}{}", again.stdout, again.stderr);
    assert_eq!(
        writes(&t.emus),
        vec![0, 0, 0],
        "a second link writes nothing"
    );
    assert_eq!(
        t.emus
            .iter()
            .map(|e| e.resource_version())
            .collect::<Vec<_>>(),
        versions
    );
    assert_eq!(
        again.stdout.matches(" unchanged").count(),
        6,
        "{}",
        again.stdout
    );
}

#[tokio::test]
async fn a_readdressed_cluster_is_updated_and_dry_run_writes_nothing() {
    let t = three_exposed().await;
    assert!(peerd(&t.config, &LINK_ALL).await.ok);
    program(&t.emus[2], "192.0.2.33").await;
    for e in &t.emus {
        e.reset_counters();
    }
    let dry = peerd(&t.config, &[&LINK_ALL[..], &["--dry-run"]].concat()).await;
    assert!(dry.ok, "{}", dry.stderr);
    assert_eq!(writes(&t.emus), vec![0, 0, 0], "--dry-run writes nothing");
    assert_eq!(
        dry.stdout.matches("kind: Gateway").count(),
        6,
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("192.0.2.33"), "{}", dry.stdout);

    let run = peerd(&t.config, &LINK_ALL).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        writes(&t.emus),
        vec![1, 1, 0],
        "only the peers of c3 change"
    );
    let g = gateway(&t.emus[0], "istio-remote-peer-c3");
    assert_eq!(g.spec.addresses[0].value, "192.0.2.33");
}

#[tokio::test]
async fn one_way_link_and_unlink_are_asymmetric_and_idempotent() {
    let t = three_exposed().await;
    let one_way = ["link", "--from", "ctx-c1=c1", "--to", "ctx-c2=c2"];
    let run = peerd(&t.config, &one_way).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert_eq!(peer_gateways(&t.emus[0]), ["istio-remote-peer-c2"]);
    assert!(
        peer_gateways(&t.emus[1]).is_empty(),
        "c2 does not peer back"
    );

    assert!(peerd(&t.config, &LINK_ALL).await.ok);
    let unlink = ["unlink", "--from", "ctx-c1=c1", "--to", "ctx-c2=c2"];
    let run = peerd(&t.config, &unlink).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("deleted"), "{}", run.stdout);
    assert_eq!(peer_gateways(&t.emus[0]), ["istio-remote-peer-c3"]);
    assert_eq!(
        peer_gateways(&t.emus[1]),
        ["istio-remote-peer-c1", "istio-remote-peer-c3"]
    );
    for e in &t.emus {
        e.reset_counters();
    }
    let again = peerd(&t.config, &unlink).await;
    assert!(again.ok, "{}{}", again.stdout, again.stderr);
    assert_eq!(
        writes(&t.emus),
        vec![0, 0, 0],
        "a second unlink writes nothing"
    );

    let mut unlink_all = LINK_ALL.to_vec();
    unlink_all[0] = "unlink";
    assert!(peerd(&t.config, &unlink_all).await.ok);
    assert!(t.emus.iter().all(|e| peer_gateways(e).is_empty()));
}

#[tokio::test]
async fn a_cluster_without_an_eastwest_gateway_or_address_fails_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let root = CertificateAuthority::new_root("root").unwrap();
    let (c1, c2, c3) = (emulator().await, emulator().await, emulator().await);
    expose(&c1, "net1", "net1", Some("192.0.2.1"), root.root_pem()).await;
    expose(&c2, "net2", "net2", None, root.root_pem()).await;
    label_network(&c3, "net3").await;
    let config = kubeconfig(
        dir.path(),
        &[("c1", c1.url()), ("c2", c2.url()), ("c3", c3.url())],
    );
    let emus = [c1, c2, c3];
    for e in &emus {
        e.reset_counters();
    }
    let run = peerd(&config, &LINK_ALL).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("nothing was written"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("c3 (context ctx-c3): no east-west Gateway istio-eastwest/istio-eastwest"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("c2 (context ctx-c2): the east-west Gateway istio-eastwest/istio-eastwest has no address"),
        "{}",
        run.stderr
    );
    assert_eq!(
        writes(&emus),
        vec![0, 0, 0],
        "nothing written in any cluster"
    );
}

#[tokio::test]
async fn self_links_shared_names_and_networks_are_refused_before_any_write() {
    let t = three_exposed().await;
    // c1 and c2 share a network; c3's namespace and east-west Gateway disagree.
    label_network(&t.emus[1], "net1").await;
    send(
        &t.emus[1],
        http::Method::PATCH,
        &format!("{GATEWAYS}/istio-eastwest"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"topology.istio.io/network": "net1"}}}),
    )
    .await;
    send(
        &t.emus[2],
        http::Method::PATCH,
        &format!("{GATEWAYS}/istio-eastwest"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"topology.istio.io/network": "other"}}}),
    )
    .await;
    for e in &t.emus {
        e.reset_counters();
    }
    let cases: [(&[&str], &str); 6] = [
        (
            &["link", "--context", "ctx-c1=c1", "--context", "ctx-c1=c1"],
            "cannot be linked to itself",
        ),
        (
            &["link", "--from", "ctx-c1=c1", "--to", "ctx-c1=c1"],
            "cannot be linked to itself",
        ),
        (
            &[
                "link",
                "--context",
                "ctx-c1=same",
                "--context",
                "ctx-c2=same",
            ],
            "both name cluster \"same\"",
        ),
        (
            &["link", "--context", "ctx-c1=c1", "--context", "ctx-c2=c2"],
            "are all on network \"net1\"",
        ),
        (
            &[
                "link",
                "--flat-networks",
                "--context",
                "ctx-c1=c1",
                "--context",
                "ctx-c3=c3",
            ],
            "networks disagree",
        ),
        (&["link", "--context", "ctx-c1=c1"], "at least two"),
    ];
    for (args, expected) in cases {
        let run = peerd(&t.config, args).await;
        assert!(!run.ok, "{args:?} must fail");
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("nothing was written"),
            "{args:?}: {}",
            run.stderr
        );
    }
    assert_eq!(writes(&t.emus), vec![0, 0, 0]);
    // Two contexts reaching one API server are one cluster.
    let dir = tempfile::tempdir().unwrap();
    let same = kubeconfig(
        dir.path(),
        &[("c1", t.emus[0].url()), ("c1b", t.emus[0].url())],
    );
    let run = peerd(
        &same,
        &["link", "--context", "ctx-c1=c1", "--context", "ctx-c1b=c9"],
    )
    .await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("reach the same cluster"),
        "{}",
        run.stderr
    );
    assert_eq!(t.emus[0].counters().writes(), 0);
    // Flat networks: c1 and c2 sharing net1 may be linked.
    let run = peerd(
        &t.config,
        &[
            "link",
            "--flat-networks",
            "--context",
            "ctx-c1=c1",
            "--context",
            "ctx-c2=c2",
        ],
    )
    .await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
}

#[tokio::test]
async fn an_api_server_failing_mid_link_is_named_and_a_rerun_completes_the_link() {
    let t = three_exposed().await;
    let faults = t.emus[1].faults();
    faults.fail_only(&[Verb::Apply]);
    faults.fail_next(1000, 500);
    let run = peerd(&t.config, &LINK_ALL).await;
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains("clusters written: c1, c3; not completed: c2"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains("c2: peer Gateway istio-remote-peer-c1 FAILED"),
        "{}",
        run.stdout
    );
    assert_eq!(peer_gateways(&t.emus[0]).len(), 2);
    assert!(peer_gateways(&t.emus[1]).is_empty());

    faults.clear();
    let run = peerd(&t.config, &LINK_ALL).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stdout.matches(" created").count(), 2, "{}", run.stdout);
    assert_eq!(
        run.stdout.matches(" unchanged").count(),
        4,
        "{}",
        run.stdout
    );
    assert_eq!(peer_gateways(&t.emus[1]).len(), 2);
}

#[tokio::test]
async fn expose_writes_the_eastwest_gateway_once_and_refuses_a_disagreeing_network() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator().await;
    label_network(&emu, "net1").await;
    let config = kubeconfig(dir.path(), &[("c1", emu.url())]);
    let run = peerd(&config, &["expose", "--context", "ctx-c1=c1"]).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    let g = gateway(&emu, "istio-eastwest");
    assert_eq!(g.spec.gateway_class_name, "istio-eastwest");
    assert_eq!(
        g.metadata.labels.as_ref().unwrap()["topology.istio.io/network"],
        "net1"
    );
    assert_eq!(
        g.metadata.labels.as_ref().unwrap()["istio.io/expose-istiod"],
        "15012"
    );
    let ports: Vec<u16> = g.spec.listeners.iter().map(|l| l.port).collect();
    assert_eq!(ports, [15008, 15012]);

    emu.reset_counters();
    assert!(
        peerd(&config, &["expose", "--context", "ctx-c1=c1"])
            .await
            .ok
    );
    assert_eq!(emu.counters().writes(), 0, "a second expose writes nothing");

    let run = peerd(
        &config,
        &["expose", "--context", "ctx-c1=c1", "--network", "net2"],
    )
    .await;
    assert!(!run.ok);
    assert!(run.stderr.contains("disagrees"), "{}", run.stderr);
    assert_eq!(emu.counters().writes(), 0);

    let node_port = [
        "expose",
        "--context",
        "ctx-c1=c1",
        "--service-type",
        "NodePort",
    ];
    assert!(peerd(&config, &node_port).await.ok);
    let annotation = |g: &Gateway| {
        g.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("peering.solo.io/preferred-data-plane-service-type"))
            .cloned()
    };
    assert_eq!(
        annotation(&gateway(&emu, "istio-eastwest")).as_deref(),
        Some("NodePort")
    );
    assert!(
        peerd(&config, &["expose", "--context", "ctx-c1=c1"])
            .await
            .ok
    );
    assert_eq!(
        annotation(&gateway(&emu, "istio-eastwest")),
        None,
        "back to LoadBalancer"
    );

    // Exposed but not programmed: no address to link to yet.
    let other = emulator().await;
    label_network(&other, "net2").await;
    let both = kubeconfig(dir.path(), &[("c1", emu.url()), ("c2", other.url())]);
    program(&emu, "192.0.2.1").await;
    let run = peerd(
        &both,
        &["link", "--context", "ctx-c1=c1", "--context", "ctx-c2=c2"],
    )
    .await;
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains("c2 (context ctx-c2): no east-west Gateway"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn precheck_reports_reachability_programmed_gateways_networks_and_roots() {
    let t = three_exposed().await;
    let dir = tempfile::tempdir().unwrap();
    // A fourth context whose API server is gone.
    let gone = emulator().await;
    let gone_url = gone.url().to_string();
    gone.shutdown().await;
    let config = kubeconfig(
        dir.path(),
        &[
            ("c1", t.emus[0].url()),
            ("c2", t.emus[1].url()),
            ("c4", &gone_url),
        ],
    );
    let precheck = |extra: &'static [&'static str]| {
        let mut args = vec!["check", "--precheck", "--addr", "127.0.0.1:9", "-v"];
        args.extend_from_slice(extra);
        args
    };
    let run = peerd(
        &config,
        &precheck(&["--context", "ctx-c1=c1", "--context", "ctx-c2=c2"]),
    )
    .await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    for line in [
        "✅ API server (c1)",
        "✅ API server (c2)",
        "✅ east-west gateway (c1)",
        "✅ root certificates (kubernetes)",
        "✅ networks before linking",
        "⚠ debug API",
    ] {
        assert!(run.stdout.contains(line), "{line}: {}", run.stdout);
    }
    let run = peerd(
        &config,
        &precheck(&["--context", "ctx-c1=c1", "--context", "ctx-c4=c4"]),
    )
    .await;
    assert!(!run.ok);
    assert!(run.stdout.contains("❌ API server (c4)"), "{}", run.stdout);

    // c2 moves onto c1's network: only flat networks allow it.
    label_network(&t.emus[1], "net1").await;
    send(
        &t.emus[1],
        http::Method::PATCH,
        &format!("{GATEWAYS}/istio-eastwest"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"topology.istio.io/network": "net1"}}}),
    )
    .await;
    let run = peerd(
        &config,
        &precheck(&["--context", "ctx-c1=c1", "--context", "ctx-c2=c2"]),
    )
    .await;
    assert!(!run.ok);
    assert!(
        run.stdout.contains("❌ networks before linking"),
        "{}",
        run.stdout
    );
    let run = peerd(
        &config,
        &precheck(&[
            "--flat-networks",
            "--context",
            "ctx-c1=c1",
            "--context",
            "ctx-c2=c2",
        ]),
    )
    .await;
    assert!(run.ok, "{}", run.stdout);
}
