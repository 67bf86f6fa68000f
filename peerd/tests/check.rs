//! `peerd check`'s rules on fixed reports, and certificate chains that verify across
//! clusters only with a shared root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use peerd::debug::check::*;
use peerd::debug::client::Report;
use peerd::debug::source::{PEER_CONNECTED, PEER_DATA_PLANE_PROGRAMMED, PEERING_SUCCEEDED};
use peerd::proto::debug::v1 as api;
use peerd_testbed::pki::CertificateAuthority;

fn peer(cluster: &str, network: &str, conditions: &[(&str, &str)]) -> api::Peer {
    api::Peer {
        cluster: cluster.into(),
        network: network.into(),
        conditions: conditions
            .iter()
            .map(|(kind, status)| api::Condition {
                r#type: (*kind).into(),
                status: (*status).into(),
                reason: if *status == "True" { "Ok" } else { "Pending" }.into(),
                message: "m".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn ready_report() -> Report {
    Report {
        info: api::ServerInfo {
            cluster: "c1".into(),
            network: "net1".into(),
            ready: true,
            ..Default::default()
        },
        upstreams: vec![api::StreamState {
            name: "c1".into(),
            connected: true,
            synced_types: vec!["address".into(), "authorization".into()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn outcome_of<'a>(results: &'a [CheckResult], name: &str) -> &'a CheckResult {
    results.iter().find(|r| r.name == name).unwrap()
}

#[test]
fn healthy_peers_pass_and_each_failure_names_its_reason() {
    let mut report = ready_report();
    report.peers = vec![
        peer(
            "c2",
            "net2",
            &[
                (PEER_CONNECTED, "True"),
                (PEERING_SUCCEEDED, "True"),
                (PEER_DATA_PLANE_PROGRAMMED, "True"),
            ],
        ),
        peer(
            "c3",
            "net3",
            &[(PEER_CONNECTED, "False"), (PEERING_SUCCEEDED, "False")],
        ),
    ];
    let results = run_checks(&report, &BTreeMap::new(), false);
    assert_eq!(outcome_of(&results, "config").outcome, Outcome::Pass);
    assert_eq!(outcome_of(&results, "local istiod").outcome, Outcome::Pass);
    assert_eq!(outcome_of(&results, "peer c2").outcome, Outcome::Pass);
    let c3 = outcome_of(&results, "peer c3");
    assert_eq!(c3.outcome, Outcome::Fail);
    assert!(
        c3.reason.starts_with("PeerConnected is False (Pending"),
        "{}",
        c3.reason
    );
    assert_eq!(
        outcome_of(&results, "peer c2 data plane").outcome,
        Outcome::Pass
    );
    assert_eq!(
        outcome_of(&results, "peer c3 data plane").outcome,
        Outcome::Warn
    );
    assert_eq!(
        outcome_of(&results, "network configuration").outcome,
        Outcome::Pass
    );

    // Precheck skips what needs established peers.
    let pre = run_checks(&report, &BTreeMap::new(), true);
    assert!(pre.iter().all(|r| !r.name.starts_with("peer ")));
    assert!(pre.iter().all(|r| r.outcome == Outcome::Pass));

    let text = render(&results, true);
    assert!(text.contains("❌ peer c3: PeerConnected is False"));
    assert!(text.contains("    gloo.solo.io/PeerConnected=False Pending: m"));
    assert!(!render(&results, false).contains("    gloo.solo.io"));
}

#[test]
fn not_ready_and_unsynced_upstream_fail() {
    let mut report = ready_report();
    report.info.ready = false;
    report.info.pending_gates = vec!["local upstream synced".into()];
    report.upstreams[0].connected = false;
    report.upstreams[0].last_error = "tls: unknown certificate authority".into();
    let results = run_checks(&report, &BTreeMap::new(), true);
    let config = outcome_of(&results, "config");
    assert_eq!(config.outcome, Outcome::Fail);
    assert!(config.reason.contains("local upstream synced"));
    let up = outcome_of(&results, "local istiod");
    assert_eq!(up.outcome, Outcome::Fail);
    assert!(
        up.reason.contains("unknown certificate authority"),
        "{}",
        up.reason
    );
    report.upstreams.clear();
    let results = run_checks(&report, &BTreeMap::new(), true);
    assert!(
        outcome_of(&results, "local istiod")
            .reason
            .contains("no upstream named")
    );
}

#[test]
fn shared_networks_fail_unless_flat() {
    let mut report = ready_report();
    report.peers = vec![peer("c2", "net1", &[])];
    let r = check_networks(&report.info, &report.peers);
    assert_eq!(r.outcome, Outcome::Fail);
    assert!(
        r.reason.contains("\"net1\" is used by c1 and c2"),
        "{}",
        r.reason
    );
    report.info.flat_networks = true;
    report.peers[0].flat = true;
    let r = check_networks(&report.info, &report.peers);
    assert_eq!(r.outcome, Outcome::Pass);
    assert!(r.reason.contains("1 peer(s)"), "{}", r.reason);
}

fn write_ca(dir: &std::path::Path, name: &str, root: &CertificateAuthority) -> (String, String) {
    let ca = root
        .new_intermediate(&format!("{name} intermediate"))
        .unwrap();
    let root_path = dir.join(format!("{name}-root.pem"));
    let chain_path = dir.join(format!("{name}-ca-cert.pem"));
    std::fs::write(&root_path, root.cert_pem()).unwrap();
    std::fs::write(&chain_path, ca.cert_pem()).unwrap();
    (
        format!("{name}={}", root_path.display()),
        format!("{name}={}", chain_path.display()),
    )
}

#[test]
fn intermediate_certificates_verify_across_clusters_only_with_a_shared_root() {
    let dir = tempfile::tempdir().unwrap();
    let shared = CertificateAuthority::new_root("shared root").unwrap();
    let (r1, c1) = write_ca(dir.path(), "c1", &shared);
    let (r2, c2) = write_ca(dir.path(), "c2", &shared);
    let certs = cert_args(&[r1.clone(), r2], &[c1.clone(), c2]).unwrap();
    let r = check_certificates(&certs);
    assert_eq!(r.outcome, Outcome::Pass, "{r:?}");
    assert_eq!(r.reason, "2 chain/root pair(s) verify across 2 cluster(s)");
    assert!(
        r.details
            .iter()
            .filter(|d| d.contains("root SHA256"))
            .count()
            == 2
    );

    let other = CertificateAuthority::new_root("other root").unwrap();
    let (r3, c3) = write_ca(dir.path(), "c3", &other);
    let certs = cert_args(&[r1, r3], &[c1, c3]).unwrap();
    let r = check_certificates(&certs);
    assert_eq!(r.outcome, Outcome::Fail);
    assert!(
        r.reason
            .starts_with("c1's CA chain does not verify against c3's root"),
        "{}",
        r.reason
    );

    // Bad inputs get clear errors.
    assert!(
        cert_args(&["c1".into()], &[])
            .unwrap_err()
            .to_string()
            .contains("CLUSTER=PATH")
    );
    assert!(
        cert_args(&["c1=a".into(), "c1=b".into()], &[])
            .unwrap_err()
            .to_string()
            .contains("given twice")
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let certs = cert_args(&[format!("c1={}", garbage.display())], &[]).unwrap();
    let r = check_certificates(&certs);
    assert_eq!(r.outcome, Outcome::Fail);
    assert!(r.reason.contains("no certificate"), "{}", r.reason);
}
