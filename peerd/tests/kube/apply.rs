//! The flat-sync executor against the emulator: exact objects, zero writes at steady
//! state, hand edits and deletes reconciled, foreign objects left alone, GC safety across
//! disconnect / reconnect / restart / removal, 5xx and watch expiry, lease loss mid-sync.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};

use super::{CONTROL_NS, client, create, emulator, eventually};
use peerd::kube::apply::{ExecutorConfig, FlatSyncExecutor, PeerSyncState, SyncInput, SyncReport};
use peerd::kube::flatsync::{
    GlobalService, ImportedWorkload, PeerExports, PeerNetworkMode, desired_objects,
    flat_workload_entry_name,
};
use peerd::kube::leader::{LeaderConfig, LeaderElector, Leadership};
use peerd_testbed::emulator::{EmulatorHandle, Verb};

const WE_PATH: &str = "/apis/networking.istio.io/v1/namespaces/istio-system/workloadentries";
const REF_NAME: &str = "autogenflat.c2.default.pod1.f2396f15c5c2";

fn svc(ns: &str, name: &str) -> GlobalService {
    GlobalService {
        namespace: ns.into(),
        name: name.into(),
        ports: vec![],
    }
}

fn pod(cluster: &str, name: &str, ip: &str) -> ImportedWorkload {
    ImportedWorkload {
        name: name.into(),
        namespace: "default".into(),
        uid: format!("{cluster}//Pod/default/{name}"),
        address: Some(ip.parse::<IpAddr>().unwrap()),
        network: "shared".into(),
        service_account: "default".into(),
        locality: String::new(),
        services: [("default".to_string(), "svc1".to_string())]
            .into_iter()
            .collect(),
    }
}

fn flat(cluster: &str, pods: &[(&str, &str)]) -> PeerExports {
    PeerExports {
        cluster: cluster.into(),
        network: "shared".into(),
        mode: PeerNetworkMode::Flat,
        workloads: pods.iter().map(|(n, ip)| pod(cluster, n, ip)).collect(),
        services: vec![svc("default", "svc1")],
    }
}

fn input(peers: &[PeerExports], synced: &[(&str, bool)]) -> SyncInput {
    SyncInput {
        desired: desired_objects(CONTROL_NS, peers),
        peers: synced
            .iter()
            .map(|(c, s)| PeerSyncState {
                cluster: c.to_string(),
                fully_synced: *s,
            })
            .collect(),
    }
}

fn config() -> ExecutorConfig {
    ExecutorConfig {
        ..ExecutorConfig::new(CONTROL_NS)
    }
}

async fn executor(emu: &EmulatorHandle, leadership: Leadership) -> FlatSyncExecutor {
    let exec = FlatSyncExecutor::start(client(emu).await, config(), leadership);
    exec.ready().await.unwrap();
    exec
}

fn we(emu: &EmulatorHandle, name: &str) -> Option<Value> {
    emu.object("networking.istio.io", "workloadentries", CONTROL_NS, name)
}

/// Deletes a WorkloadEntry by hand, as an operator would.
async fn delete_we(emu: &EmulatorHandle, name: &str) {
    let (code, _) = emu
        .request(http::Method::DELETE, &format!("{WE_PATH}/{name}"), "", "")
        .await
        .unwrap();
    assert_eq!(code, 200, "deleting {name}");
}

async fn list_names(emu: &EmulatorHandle, plural: &str) -> Vec<String> {
    let (code, list) = emu
        .request(
            http::Method::GET,
            &format!("/apis/networking.istio.io/v1/namespaces/istio-system/{plural}"),
            "",
            "",
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    let mut names: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Runs passes until `check` holds (bounded by a generous minute, not a speed assertion).
async fn sync_until(
    exec: &mut FlatSyncExecutor,
    input: &SyncInput,
    what: &str,
    check: impl Fn() -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        exec.sync(input).await;
        if check() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Syncs until a pass has nothing left to do (errors retried), returning every report.
async fn converge(exec: &mut FlatSyncExecutor, input: &SyncInput) -> Vec<SyncReport> {
    let mut reports = Vec::new();
    for _ in 0..50 {
        let report = exec.sync(input).await;
        let done = report.converged() && report.applied.is_empty() && report.deleted.is_empty();
        reports.push(report);
        if done {
            return reports;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no convergence: {reports:?}");
}

#[tokio::test]
async fn generated_objects_have_exact_names_labels_and_steady_state_makes_no_writes() {
    let emu = emulator().await;
    let mut exec = executor(&emu, Leadership::always()).await;
    let multi = PeerExports {
        cluster: "c3".into(),
        network: "net3".into(),
        mode: PeerNetworkMode::MultiNetwork,
        workloads: vec![],
        services: vec![svc("default", "svc1"), svc("shop", "cart")],
    };
    let input = input(
        &[
            flat("c2", &[("pod1", "10.1.0.5"), ("pod2", "10.1.0.6")]),
            multi,
        ],
        &[("c2", true), ("c3", true)],
    );
    let first = exec.sync(&input).await;
    assert!(first.converged(), "{first:?}");
    assert_eq!(first.applied.len(), 6, "{first:?}");
    assert_eq!(
        list_names(&emu, "workloadentries").await,
        vec![
            "autogen.c3.default.svc1",
            "autogen.c3.shop.cart",
            REF_NAME,
            "autogenflat.c2.default.pod2.f2396f15c5c2",
        ]
    );
    assert_eq!(
        list_names(&emu, "serviceentries").await,
        vec!["autogen.default.svc1", "autogen.shop.cart"]
    );
    let stored = we(&emu, REF_NAME).unwrap();
    assert_eq!(stored["spec"]["address"], "10.1.0.5");
    assert_eq!(stored["spec"]["network"], "shared");
    assert_eq!(stored["metadata"]["labels"]["solo.io/source-cluster"], "c2");
    assert_eq!(
        stored["metadata"]["labels"]["solo.io/source-workload"],
        "autogenflat.c2.default.pod1"
    );
    assert_eq!(
        stored["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "peerd"
    );
    assert_eq!(
        stored["metadata"]["annotations"]["solo.io/peered-workload-uid"],
        "c2//Pod/default/pod1"
    );
    assert_eq!(stored["metadata"]["managedFields"][0]["manager"], "peerd");
    let gateway_we = we(&emu, "autogen.c3.default.svc1").unwrap();
    assert!(gateway_we["spec"].get("address").is_none());
    assert_eq!(gateway_we["spec"]["network"], "net3");
    let se = emu
        .object(
            "networking.istio.io",
            "serviceentries",
            CONTROL_NS,
            "autogen.default.svc1",
        )
        .unwrap();
    assert_eq!(se["spec"]["hosts"], json!(["svc1.default.mesh.internal"]));
    assert_eq!(se["spec"]["resolution"], "STATIC");
    assert!(se["spec"].get("addresses").is_none());

    // Immediately again (the watch may not have caught up), then after it has: no writes.
    emu.reset_counters();
    let again = exec.sync(&input).await;
    assert!(
        again.applied.is_empty() && again.deleted.is_empty(),
        "{again:?}"
    );
    // Later passes (the watch has delivered our writes meanwhile): still none.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let steady = exec.sync(&input).await;
        assert_eq!(steady.unchanged, 6, "{steady:?}");
    }
    assert_eq!(emu.counters().writes(), 0, "{:?}", emu.counters());
}

#[tokio::test]
async fn hand_edits_and_deletes_are_reconciled_back() {
    let emu = emulator().await;
    let mut exec = executor(&emu, Leadership::always()).await;
    let input = input(&[flat("c2", &[("pod1", "10.1.0.5")])], &[("c2", true)]);
    converge(&mut exec, &input).await;

    // Edited by hand (another manager, merge patch): the address comes back.
    let (code, _) = emu
        .request(
            http::Method::PATCH,
            &format!("{WE_PATH}/{REF_NAME}?fieldManager=kubectl-edit"),
            "application/merge-patch+json",
            json!({"spec": {"address": "10.9.9.9"}}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    sync_until(&mut exec, &input, "edit reconciled", || {
        we(&emu, REF_NAME).unwrap()["spec"]["address"] == "10.1.0.5"
    })
    .await;

    // Deleted by hand: recreated.
    delete_we(&emu, REF_NAME).await;
    sync_until(&mut exec, &input, "delete reconciled", || {
        we(&emu, REF_NAME).is_some()
    })
    .await;
    assert_eq!(we(&emu, REF_NAME).unwrap()["spec"]["address"], "10.1.0.5");
}

#[tokio::test]
async fn foreign_object_with_colliding_name_is_reported_not_overwritten() {
    let emu = emulator().await;
    create(&emu, WE_PATH, &json!({
        "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
        "metadata": {"name": REF_NAME, "namespace": CONTROL_NS, "labels": {"app.kubernetes.io/managed-by": "someone-else"}},
        "spec": {"address": "10.7.7.7"},
    }))
    .await;
    let mut exec = executor(&emu, Leadership::always()).await;
    let input = input(&[flat("c2", &[("pod1", "10.1.0.5")])], &[("c2", true)]);
    let report = exec.sync(&input).await;
    assert_eq!(report.foreign.len(), 1, "{report:?}");
    assert_eq!(report.foreign[0].name, REF_NAME);
    assert_eq!(
        report.foreign[0].managed_by.as_deref(),
        Some("someone-else")
    );
    assert!(!report.applied.iter().any(|a| a.ends_with(REF_NAME)));
    let stored = we(&emu, REF_NAME).unwrap();
    assert_eq!(stored["spec"]["address"], "10.7.7.7");
    assert_eq!(
        stored["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "someone-else"
    );
    // And GC never deletes it either, even though it is not desired any more.
    let empty = super::apply::input(&[], &[("c2", true)]);
    let report = exec.sync(&empty).await;
    assert!(
        report.deleted.iter().all(|d| !d.ends_with(REF_NAME)),
        "{report:?}"
    );
    assert!(we(&emu, REF_NAME).is_some());
}

/// peerd's own object behind a stalled watch (it cannot relist: API errors) makes the
/// create conflict; it is read back and treated as peerd's, not reported as foreign, and
/// reconciled once the watch is back.
#[tokio::test]
async fn a_conflicting_create_of_peerds_own_object_behind_a_stalled_watch_is_not_foreign() {
    let emu = emulator().await;
    let mut exec = executor(&emu, Leadership::always()).await;
    const WES: &str = "workloadentries.networking.istio.io";
    let reconnects = || {
        let counters = emu.counters();
        counters.on(Verb::Watch, WES) + counters.on(Verb::List, WES)
    };
    let before = reconnects();
    emu.faults().fail_only(&[Verb::Watch, Verb::List]);
    emu.faults().fail_fraction(1.0);
    emu.faults().drop_watches();
    // A failed reconnect means the old watch is closed: nothing written now reaches it.
    eventually("the WorkloadEntry watch reconnects (and fails)", || async {
        reconnects() > before
    })
    .await;
    // Written by an earlier leader while this replica's watch is down.
    create(&emu, WE_PATH, &json!({
        "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
        "metadata": {"name": REF_NAME, "namespace": CONTROL_NS, "labels": {"app.kubernetes.io/managed-by": "peerd"}},
        "spec": {"address": "10.9.9.9"},
    }))
    .await;
    let input = input(&[flat("c2", &[("pod1", "10.1.0.5")])], &[("c2", true)]);
    let report = exec.sync(&input).await;
    assert!(report.foreign.is_empty(), "{report:?}");
    assert!(
        report
            .errors
            .iter()
            .any(|(what, why)| what.ends_with(REF_NAME) && why.contains("not shown it yet")),
        "{report:?}"
    );
    assert_eq!(
        emu.counters().outcome(Verb::Create, 409),
        1,
        "{:?}",
        emu.counters()
    );
    emu.faults().clear();
    converge(&mut exec, &input).await;
    assert_eq!(we(&emu, REF_NAME).unwrap()["spec"]["address"], "10.1.0.5");
}

#[tokio::test]
async fn a_renamed_entry_replaces_the_old_one_only_once_the_new_one_is_written() {
    // pod1 starts backing svc2 as well: its entry's name (hash of its services) changes.
    let emu = emulator().await;
    let mut exec = executor(&emu, Leadership::always()).await;
    converge(
        &mut exec,
        &input(&[flat("c2", &[("pod1", "10.1.0.5")])], &[("c2", true)]),
    )
    .await;
    assert!(we(&emu, REF_NAME).is_some());
    let mut both = flat("c2", &[("pod1", "10.1.0.5")]);
    both.services.push(svc("default", "svc2"));
    both.workloads[0]
        .services
        .insert(("default".to_string(), "svc2".to_string()));
    let renamed = flat_workload_entry_name("c2", &both.workloads[0]);
    assert_ne!(renamed, REF_NAME);
    // Someone else's object holds the new name, so the create does not land.
    create(&emu, WE_PATH, &json!({
        "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
        "metadata": {"name": renamed, "namespace": CONTROL_NS, "labels": {"app.kubernetes.io/managed-by": "someone-else"}},
        "spec": {"address": "10.7.7.7"},
    }))
    .await;
    let both = input(&[both], &[("c2", true)]);
    let reports = converge(&mut exec, &both).await;
    assert!(
        reports
            .iter()
            .any(|r| r.foreign.iter().any(|f| f.name == renamed)),
        "{reports:?}"
    );
    assert!(
        we(&emu, REF_NAME).is_some(),
        "the pod's only peerd entry was deleted: {reports:?}"
    );
    let last = reports.last().unwrap();
    assert!(
        last.kept
            .iter()
            .any(|(what, why)| what.ends_with(REF_NAME) && why.contains(&renamed)),
        "{last:?}"
    );
    // Once the name is free, the new entry is written and only then the old one goes.
    delete_we(&emu, &renamed).await;
    sync_until(&mut exec, &both, "the old entry replaced", || {
        we(&emu, REF_NAME).is_none()
    })
    .await;
    let new = we(&emu, &renamed).expect("the new entry");
    assert_eq!(
        new["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "peerd"
    );
}

#[tokio::test]
async fn gc_is_safe_across_disconnect_reconnect_and_restart() {
    let emu = emulator().await;
    let mut exec = executor(&emu, Leadership::always()).await;
    let both = input(
        &[flat("c2", &[("pod1", "10.1.0.5"), ("pod2", "10.1.0.6")])],
        &[("c2", true)],
    );
    converge(&mut exec, &both).await;
    let pod2 = "autogenflat.c2.default.pod2.f2396f15c5c2";
    assert!(we(&emu, pod2).is_some());

    // Disconnected, then reconnecting with a partial state: nothing is deleted.
    let nothing = input(&[flat("c2", &[])], &[("c2", false)]);
    let report = exec.sync(&nothing).await;
    assert!(report.deleted.is_empty(), "{report:?}");
    assert_eq!(report.kept.len(), 2, "{report:?}");
    let partial = input(&[flat("c2", &[("pod1", "10.1.0.5")])], &[("c2", false)]);
    let report = exec.sync(&partial).await;
    assert!(report.deleted.is_empty(), "{report:?}");
    assert!(we(&emu, pod2).is_some());

    // Restart (new executor) while the peer has not synced yet: nothing is deleted.
    drop(exec);
    let mut restarted = executor(&emu, Leadership::always()).await;
    let report = restarted.sync(&nothing).await;
    assert!(
        report.deleted.is_empty() && report.applied.is_empty(),
        "{report:?}"
    );
    assert_eq!(list_names(&emu, "workloadentries").await.len(), 2);

    // Full sync without pod2: now it goes, exactly once.
    let synced = input(&[flat("c2", &[("pod1", "10.1.0.5")])], &[("c2", true)]);
    emu.reset_counters();
    let reports = converge(&mut restarted, &synced).await;
    let deleted: Vec<_> = reports.iter().flat_map(|r| r.deleted.clone()).collect();
    assert_eq!(deleted, vec![format!("WorkloadEntry/{pod2}")]);
    assert_eq!(emu.counters().verb(Verb::Delete), 1);
    assert_eq!(emu.counters().verb(Verb::Apply), 0);
    assert_eq!(list_names(&emu, "workloadentries").await, vec![REF_NAME]);
}

/// A leader restarted while a peer is down (its Gateway still there, its stream not
/// synced) deletes none of the peer's WorkloadEntries, however many passes it makes,
/// whether peerd restored the peer's last state (the
/// same objects desired: no write at all) or not (nothing desired: all kept).
#[tokio::test]
async fn a_restarted_leader_keeps_a_down_peers_entries_past_the_grace() {
    let emu = emulator().await;
    let elect = |identity: &'static str, client: kube::Client| {
        LeaderElector::start(
            client,
            LeaderConfig {
                lease_duration: Duration::from_secs(2),
                renew_period: Duration::from_millis(100),
                ..LeaderConfig::new(CONTROL_NS, identity)
            },
        )
    };
    let first = elect("replica-a", client(&emu).await);
    let leadership = first.leadership();
    eventually("first leader", || async { leadership.is_leader() }).await;
    let mut exec = executor(&emu, leadership).await;
    let pods = [("pod1", "10.1.0.5"), ("pod2", "10.1.0.6")];
    converge(&mut exec, &input(&[flat("c2", &pods)], &[("c2", true)])).await;
    let before = list_names(&emu, "workloadentries").await;
    assert_eq!(before.len(), 2);

    // The leader's peerd restarts while c2 is down: a new replica takes the Lease.
    drop(exec);
    first.release().await;
    let second = elect("replica-b", client(&emu).await);
    let leadership = second.leadership();
    eventually("second leader", || async { leadership.is_leader() }).await;
    let mut restarted = executor(&emu, leadership).await;
    let restored = input(&[flat("c2", &pods)], &[("c2", false)]);
    let nothing = input(&[flat("c2", &[])], &[("c2", false)]);
    emu.reset_counters();
    // Removal is never timed for a present peer: a few seconds of passes show none.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        for state in [&restored, &nothing] {
            let report = restarted.sync(state).await;
            assert!(report.deleted.is_empty(), "{report:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = restarted.sync(&nothing).await;
    assert!(report.deleted.is_empty(), "{report:?}");
    assert!(
        report
            .kept
            .iter()
            .all(|(_, why)| why.contains("has not completed a full sync")),
        "{report:?}"
    );
    assert_eq!(report.kept.len(), 2, "{report:?}");
    assert_eq!(emu.counters().verb(Verb::Delete), 0);
    assert_eq!(
        emu.counters().verb(Verb::Apply),
        0,
        "restored state rewrites nothing"
    );
    assert_eq!(list_names(&emu, "workloadentries").await, before);
    drop(second);
}

#[tokio::test]
async fn removed_peer_is_collected_at_once_but_a_present_unsynced_one_is_kept() {
    let emu = emulator().await;
    let mut exec = executor(&emu, Leadership::always()).await;
    let with_c2 = input(&[flat("c2", &[("pod1", "10.1.0.5")])], &[("c2", true)]);
    converge(&mut exec, &with_c2).await;
    // Present (its Gateway exists) but not synced, nothing listed: everything is kept.
    let down = input(&[], &[("c2", false)]);
    let report = exec.sync(&down).await;
    assert!(report.deleted.is_empty(), "{report:?}");
    assert!(
        report
            .kept
            .iter()
            .any(|(n, why)| n.ends_with(REF_NAME) && why.contains("full sync")),
        "{report:?}"
    );
    // Removed (its Gateway deleted): the WorkloadEntry and the ServiceEntry go in one pass.
    let removed = input(&[], &[]);
    let report = exec.sync(&removed).await;
    assert_eq!(
        report.deleted,
        vec![
            format!("WorkloadEntry/{REF_NAME}"),
            "ServiceEntry/autogen.default.svc1".to_string()
        ],
        "{report:?}"
    );
    assert!(we(&emu, REF_NAME).is_none());
    assert!(
        emu.object(
            "networking.istio.io",
            "serviceentries",
            CONTROL_NS,
            "autogen.default.svc1",
        )
        .is_none()
    );
    assert!(list_names(&emu, "workloadentries").await.is_empty());
}

#[tokio::test]
async fn api_errors_and_watch_expiry_cause_no_duplicate_or_lost_writes() {
    let emu = emulator().await;
    let mut exec = executor(&emu, Leadership::always()).await;
    let pods: Vec<(String, String)> = (0..10)
        .map(|i| (format!("pod{i}"), format!("10.1.0.{}", i + 10)))
        .collect();
    let pod_refs: Vec<(&str, &str)> = pods.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let input = input(&[flat("c2", &pod_refs)], &[("c2", true)]);

    emu.faults().fail_only(&[Verb::Create]);
    // 500: kube-rs itself retries 503 and 504.
    emu.faults().fail_next(4, 500);
    let first = exec.sync(&input).await;
    assert_eq!(first.errors.len(), 4, "{first:?}");
    emu.faults().clear();
    converge(&mut exec, &input).await;
    // Every object written successfully exactly once.
    assert_eq!(
        emu.counters().successful_writes(),
        11,
        "{:?}",
        emu.counters()
    );
    assert_eq!(list_names(&emu, "workloadentries").await.len(), 10);

    // Watch expiry: history compacted and watches dropped; the reflector relists.
    emu.compact_history();
    emu.faults().drop_watches();
    let rv_before = emu.resource_version();
    let mut more = pod_refs.clone();
    more.push(("pod-new", "10.1.0.99"));
    let input2 = super::apply::input(&[flat("c2", &more)], &[("c2", true)]);
    emu.reset_counters();
    converge(&mut exec, &input2).await;
    assert_eq!(emu.counters().writes(), 1, "{:?}", emu.counters());
    assert!(emu.resource_version() > rv_before);
    // After the relist, a hand edit is still seen and reconciled (the watch is live again).
    let name = "autogenflat.c2.default.pod-new.f2396f15c5c2";
    delete_we(&emu, name).await;
    sync_until(&mut exec, &input2, "recreated after relist", || {
        we(&emu, name).is_some()
    })
    .await;
    assert_eq!(list_names(&emu, "workloadentries").await.len(), 11);
}

#[tokio::test]
async fn losing_the_lease_mid_sync_stops_writing_at_once() {
    let emu = emulator().await;
    let client = client(&emu).await;
    let elector = LeaderElector::start(
        client.clone(),
        LeaderConfig {
            lease_duration: Duration::from_secs(10),
            renew_period: Duration::from_millis(100),
            ..LeaderConfig::new(CONTROL_NS, "replica-a")
        },
    );
    let leadership = elector.leadership();
    eventually("leader", || async { leadership.is_leader() }).await;
    let mut exec = executor(&emu, leadership.clone()).await;
    let pods: Vec<(String, String)> = (0..200)
        .map(|i| {
            (
                format!("pod{i}"),
                format!("10.2.{}.{}", i / 200, i % 200 + 1),
            )
        })
        .collect();
    let pod_refs: Vec<(&str, &str)> = pods.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let input = input(&[flat("c2", &pod_refs)], &[("c2", true)]);

    emu.faults().set_delay(Duration::from_millis(10));
    let sync = tokio::spawn(async move { (exec.sync(&input).await, exec) });
    eventually("some writes", || async { emu.counters().writes() >= 5 }).await;
    // Another replica takes the Lease (as if ours had expired).
    let path = "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases/peerd-leader";
    // Read-modify-write; a 409 means our elector renewed in between: read again.
    let mut taken = false;
    for _ in 0..100 {
        let (_, mut lease) = emu.request(http::Method::GET, path, "", "").await.unwrap();
        lease["spec"]["holderIdentity"] = json!("replica-b");
        lease["spec"]["renewTime"] = json!(k8s_openapi::jiff::Timestamp::now().to_string());
        let (code, body) = emu
            .request(
                http::Method::PUT,
                path,
                "application/json",
                lease.to_string(),
            )
            .await
            .unwrap();
        if code == 200 {
            taken = true;
            break;
        }
        assert_eq!(code, 409, "{body}");
    }
    assert!(taken, "could not take the Lease");
    eventually("leadership lost", || async { !leadership.is_leader() }).await;
    let at_loss = emu.counters().writes();
    let (report, _exec) = sync.await.unwrap();
    emu.faults().clear();
    assert!(report.not_leader, "{report:?}");
    // At most the one request already in flight when leadership was lost.
    assert!(emu.counters().writes() <= at_loss + 1);
    assert!(report.applied.len() < 201, "{}", report.applied.len());
    drop(elector);
}

#[tokio::test]
async fn run_loop_follows_input_and_repairs_hand_deletes_without_being_asked() {
    let emu = emulator().await;
    let exec = executor(&emu, Leadership::always()).await;
    let (tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(input(&[], &[])));
    let (reports_tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(exec.run(rx, Duration::from_secs(3600), Some(reports_tx)));
    tx.send(std::sync::Arc::new(input(
        &[flat("c2", &[("pod1", "10.1.0.5")])],
        &[("c2", true)],
    )))
    .unwrap();
    eventually("created", || async { we(&emu, REF_NAME).is_some() }).await;
    delete_we(&emu, REF_NAME).await;
    // Only the watch event can wake the loop (resync is an hour away).
    eventually("recreated", || async { we(&emu, REF_NAME).is_some() }).await;
    assert!(reports.try_recv().is_ok());
    drop(tx);
    task.await.unwrap();
}
