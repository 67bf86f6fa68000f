//! [`KernelProbe`] as `peerd run` wires it: kernel reports (scripted here, real in
//! `tests/ebpf_netns.rs` and `tests/sandbox_faults.rs`), the active prober as fallback,
//! flat peers' pod IPs from the store, and the probe metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::observe::*;
use crate::probe::aggregator::{ConnectCounts, DestinationReport, ProbeReport, ReportScope};
use crate::probe::prober::{Prober, ProberConfig, TargetGuard};
use crate::proto::istio::workload;
use crate::store::Store;
use crate::xds::resource::Resource;
use crate::xds::types::ResourceType;

fn report(entries: &[(SocketAddr, ConnectCounts)]) -> Arc<ProbeReport> {
    let mut r = ProbeReport::default();
    for (dest, total) in entries {
        r.destinations.insert(
            *dest,
            DestinationReport {
                destination: *dest,
                total: *total,
                // Deliberately wrong: the probe must use its own change-since-last-read.
                delta: ConnectCounts::default(),
                rates: Default::default(),
                p50_us: None,
                p99_us: None,
            },
        );
    }
    Arc::new(r)
}

fn counts(established: u64, refused: u64, aborted: u64) -> ConnectCounts {
    let mut c = ConnectCounts {
        attempts: established + refused + aborted,
        refused,
        aborted,
        ..ConnectCounts::default()
    };
    for _ in 0..established {
        c.record_established(Duration::from_micros(150));
    }
    c
}

fn prober() -> Arc<Prober> {
    Prober::new(ProberConfig {
        enabled: true,
        interval: Duration::from_secs(3600),
        jitter: Duration::ZERO,
        timeout: Duration::from_secs(10),
        guard: TargetGuard::loopback_only(),
    })
    .unwrap()
}

fn gateway_targets(peer: &str, hbone: SocketAddr) -> BTreeMap<String, ProbeTargets> {
    let mut targets = BTreeMap::new();
    targets.insert(
        peer.to_string(),
        ProbeTargets {
            hbone: vec![hbone],
            xds: vec![SocketAddr::new(hbone.ip(), 15012)],
            flat: false,
        },
    );
    targets
}

#[tokio::test]
async fn prober_outcome_answers_until_the_kernel_saw_a_connect() {
    // Nothing listens on this loopback port: the prober is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (tx, rx) = watch::channel(Arc::new(ProbeReport::default()));
    let prober = prober();
    let probe = KernelProbe::with_prober(rx, Arc::clone(&prober), None, None);
    let targets = gateway_targets("cluster-3", closed);
    probe.set_targets(&targets);
    assert_eq!(
        prober.targets().len(),
        2,
        "the prober got the peer's HBONE and xDS targets"
    );
    assert_eq!(probe.observe("cluster-3").hbone, None, "nothing seen yet");
    prober.probe_once().await;
    let obs = probe.observe("cluster-3");
    assert_eq!(obs.hbone.unwrap().reachability, Reachability::Refused);
    assert_eq!(obs.stats.mode, "ebpf");

    // The kernel's verdict wins once it has one.
    tx.send(report(&[(closed, counts(2, 0, 0))])).unwrap();
    probe.set_targets(&targets);
    let obs = probe.observe("cluster-3");
    assert_eq!(obs.hbone.unwrap().reachability, Reachability::Reachable);
    assert_eq!((obs.stats.attempts, obs.stats.established), (2, 2));
    assert!(obs.stats.p50_us.is_some());
}

#[test]
fn a_report_the_tick_did_not_see_is_not_lost() {
    let gw: SocketAddr = "127.0.3.1:15008".parse().unwrap();
    let (tx, rx) = watch::channel(report(&[(gw, counts(5, 0, 0))]));
    let probe = KernelProbe::new(rx);
    probe.set_targets(&gateway_targets("cluster-3", gw));
    assert_eq!(
        probe.observe("cluster-3").hbone.unwrap().reachability,
        Reachability::Reachable
    );
    // Two reports between ticks: the first holds a timeout (aborted by the prober's
    // timeout), the second nothing new. The verdict still sees the timeout.
    tx.send(report(&[(gw, counts(5, 0, 1))])).unwrap();
    tx.send(report(&[(gw, counts(5, 0, 1))])).unwrap();
    assert_eq!(
        probe.observe("cluster-3").hbone.unwrap().reachability,
        Reachability::TimedOut
    );
    // No new connect: the verdict stays.
    tx.send(report(&[(gw, counts(5, 0, 1))])).unwrap();
    assert_eq!(
        probe.observe("cluster-3").hbone.unwrap().reachability,
        Reachability::TimedOut
    );
}

#[test]
fn refusals_between_timeouts_do_not_flip_the_verdict_until_a_success() {
    let gw: SocketAddr = "127.0.3.1:15008".parse().unwrap();
    let (tx, rx) = watch::channel(report(&[(gw, counts(3, 0, 0))]));
    let probe = KernelProbe::new(rx);
    probe.set_targets(&gateway_targets("cluster-3", gw));
    let verdict = || probe.observe("cluster-3").hbone.unwrap().reachability;
    assert_eq!(verdict(), Reachability::Reachable);
    // Refused first (another process connecting), then our connects time out, then
    // more refusals: the peer is timing out.
    tx.send(report(&[(gw, counts(3, 1, 0))])).unwrap();
    assert_eq!(verdict(), Reachability::Refused);
    tx.send(report(&[(gw, counts(3, 1, 1))])).unwrap();
    assert_eq!(verdict(), Reachability::TimedOut);
    tx.send(report(&[(gw, counts(3, 4, 1))])).unwrap();
    assert_eq!(verdict(), Reachability::TimedOut);
    // A success resets it; refusals alone then say refused.
    tx.send(report(&[(gw, counts(4, 4, 1))])).unwrap();
    assert_eq!(verdict(), Reachability::Reachable);
    tx.send(report(&[(gw, counts(4, 6, 1))])).unwrap();
    assert_eq!(verdict(), Reachability::Refused);
}

fn pod(uid: &str, ip: [u8; 4]) -> Arc<Resource> {
    Arc::new(
        Resource::workload(&workload::Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "default".into(),
            addresses: vec![ip.to_vec()],
            ..Default::default()
        })
        .unwrap(),
    )
}

#[test]
fn every_pod_of_a_flat_peer_counts_and_strangers_do_not() {
    let store = Store::new();
    store.apply(
        "cluster-2",
        ResourceType::Address,
        vec![
            pod("cluster-2//Pod/default/a", [127, 2, 1, 7]),
            pod("cluster-2//Pod/default/b", [127, 2, 1, 8]),
        ],
        vec![],
    );
    let sampled: SocketAddr = "127.2.1.7:15008".parse().unwrap();
    let other_pod: SocketAddr = "127.2.1.8:15008".parse().unwrap();
    let stranger: SocketAddr = "127.9.9.9:15008".parse().unwrap();
    let (tx, rx) = watch::channel(Arc::new(ProbeReport::default()));
    let (scope, scoped) = ReportScope::channel();
    let probe = KernelProbe::with_prober(rx, prober(), Some(Arc::clone(&store)), Some(scope));
    let mut targets = BTreeMap::new();
    targets.insert(
        "cluster-2".to_string(),
        ProbeTargets {
            hbone: vec![sampled],
            xds: vec!["127.0.2.1:15012".parse().unwrap()],
            flat: true,
        },
    );
    probe.set_targets(&targets);
    // The reports are limited to what the index attributes: the peer's pods and gateway.
    let scope_now = || {
        let mut ips: Vec<String> = scoped
            .borrow()
            .as_ref()
            .expect("a scope is set")
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        ips.sort();
        ips
    };
    assert_eq!(scope_now(), ["127.0.2.1", "127.2.1.7", "127.2.1.8"]);
    // Real traffic to a pod the prober does not sample, and to a non-peer address.
    tx.send(report(&[
        (other_pod, counts(0, 3, 0)),
        (stranger, counts(50, 0, 0)),
    ]))
    .unwrap();
    let obs = probe.observe("cluster-2");
    assert_eq!(obs.stats.attempts, 3, "only the peer's pod is attributed");
    assert_eq!(obs.stats.refused, 3);
    assert_eq!(obs.hbone.unwrap().reachability, Reachability::Refused);

    // A pod that appears later in the store is indexed at the next set_targets.
    store.apply(
        "cluster-2",
        ResourceType::Address,
        vec![pod("cluster-2//Pod/default/c", [127, 2, 1, 9])],
        vec![],
    );
    probe.set_targets(&targets);
    assert_eq!(
        scope_now(),
        ["127.0.2.1", "127.2.1.7", "127.2.1.8", "127.2.1.9"]
    );
    tx.send(report(&[
        (other_pod, counts(0, 3, 0)),
        ("127.2.1.9:15008".parse().unwrap(), counts(1, 0, 0)),
    ]))
    .unwrap();
    let obs = probe.observe("cluster-2");
    assert_eq!(obs.stats.attempts, 4);
    assert_eq!(obs.hbone.unwrap().reachability, Reachability::Reachable);
}

#[test]
fn probe_metrics_count_each_connect_once() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let gw: SocketAddr = "127.0.3.1:15008".parse().unwrap();
    metrics::with_local_recorder(&recorder, || {
        let mut c = counts(2, 1, 1);
        c.syn_retransmits = 3;
        let (tx, rx) = watch::channel(report(&[(gw, c)]));
        let probe = KernelProbe::new(rx);
        let targets = gateway_targets("cluster-3", gw);
        // Several ticks over the same report: counted once.
        probe.set_targets(&targets);
        probe.set_targets(&targets);
        probe.observe("cluster-3");
        let mut later = c;
        later.attempts += 1;
        later.timed_out += 1;
        // The LRU evicted 4 destinations (a full map) and the kernel skipped 2 runs:
        // counted, nothing fails.
        let mut evicting = (*report(&[(gw, later)])).clone();
        evicting.health.evicted_total = 4;
        evicting.health.skipped_total = 2;
        tx.send(Arc::new(evicting.clone())).unwrap();
        probe.set_targets(&targets);
        probe.observe("cluster-3");
        evicting.health.evicted_total = 6;
        evicting.health.skipped_total = 5;
        tx.send(Arc::new(evicting)).unwrap();
        assert_eq!(
            probe.observe("cluster-3").stats.attempts,
            later.attempts,
            "survivors still count"
        );
    });
    let text = handle.render();
    let has = |line: &str| text.lines().any(|l| l == line);
    for line in [
        "peerd_probe_connects_total{peer_cluster=\"cluster-3\",port=\"15008\",result=\"ok\"} 2",
        "peerd_probe_connects_total{peer_cluster=\"cluster-3\",port=\"15008\",result=\"refused\"} 1",
        "peerd_probe_connects_total{peer_cluster=\"cluster-3\",port=\"15008\",result=\"aborted\"} 1",
        "peerd_probe_connects_total{peer_cluster=\"cluster-3\",port=\"15008\",result=\"timeout\"} 1",
        "peerd_probe_syn_retransmits_total{peer_cluster=\"cluster-3\",port=\"15008\"} 3",
        "peerd_probe_connect_duration_seconds_count{peer_cluster=\"cluster-3\",port=\"15008\"} 2",
        "peerd_probe_map_evictions_total 6",
        "peerd_probe_skipped_runs_total 5",
    ] {
        assert!(has(line), "missing {line}\n{text}");
    }
    assert!(!text.contains("127.0.3.1"), "no address labels: {text}");
}

#[test]
fn userspace_probe_exports_the_prober_counts_once() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let prober = prober();
            let probe = UserspaceProbe::new(Arc::clone(&prober));
            let targets = gateway_targets("cluster-2", open);
            probe.set_targets(&targets);
            prober.probe_once().await;
            probe.set_targets(&targets);
            probe.set_targets(&targets);
            assert_eq!(probe.mode(), "userspace");
        })
    });
    drop(listener);
    let text = handle.render();
    assert!(
        text.lines().any(|l| l
            == "peerd_probe_connects_total{peer_cluster=\"cluster-2\",port=\"{PORT}\",result=\"ok\"} 1"
                .replace("{PORT}", &open.port().to_string())),
        "{text}"
    );
}
