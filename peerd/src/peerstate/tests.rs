//! The snapshot written and restored through the real store and federation: what is
//! restored, what is refused, and that a bad file never stops a start.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::format::{self, OriginToWrite};
use super::*;
use crate::federation::{FederationConfig, PeerPolicy};
use crate::proto::istio::workload;
use crate::view::{View, ViewState};

const LOCAL: &str = "c1";

fn pod(cluster: &str, name: &str, last_octet: u8) -> Arc<Resource> {
    Arc::new(
        Resource::workload(&workload::Workload {
            uid: format!("{cluster}//Pod/default/{name}"),
            name: name.into(),
            namespace: "default".into(),
            addresses: vec![vec![127, 2, 1, last_octet]],
            cluster_id: cluster.into(),
            network: "net1".into(),
            services: [(
                "default/echo.default.mesh.internal".to_string(),
                workload::PortList {
                    ports: vec![workload::Port {
                        service_port: 80,
                        target_port: 8080,
                        app_protocol: 0,
                    }],
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        })
        .unwrap(),
    )
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    federation: Arc<Federation>,
    options: PeerStateOptions,
}

/// A fresh store and federation, as a (re)started peerd has them.
fn daemon(grace: Option<Duration>) -> (Arc<Store>, Arc<Federation>) {
    let mut config = FederationConfig::new(LOCAL, "net1");
    config.peers = vec![PeerPolicy {
        cluster: "c2".into(),
        network: "net1".into(),
        identity: crate::identity::spiffe::SpiffeId::new("c2.local", "istio-system", "peerd")
            .unwrap(),
        flat: true,
        prefers_node_port: false,
        max_resources: 100,
        max_bytes: 1 << 20,
    }];
    config.grace_period = grace;
    let store = Store::new();
    let federation = Federation::new(config, Arc::clone(&store));
    (store, federation)
}

fn rig(grace: Option<Duration>) -> Rig {
    let (store, federation) = daemon(grace);
    let dir = tempfile::tempdir().unwrap();
    let options = PeerStateOptions {
        dir: dir.path().join("state"),
        local_cluster: LOCAL.into(),
        max_file_bytes: 1 << 20,
        grace_period: grace,
    };
    Rig {
        _dir: dir,
        store,
        federation,
        options,
    }
}

fn state_of(resources: &[Arc<Resource>]) -> Arc<ViewState> {
    let view = View::new("test");
    view.apply(ResourceType::Address, resources.iter().cloned(), []);
    view.snapshot()
}

fn write(rig: &Rig, origin: &str, stale_since: Option<SystemTime>, resources: &[Arc<Resource>]) {
    let state = state_of(resources);
    write_atomically(
        &rig.options,
        &[OriginToWrite {
            origin: origin.into(),
            stale_since_unix_ms: stale_since.map(unix_ms),
            state: [Arc::clone(&state), state],
        }],
    )
    .unwrap();
}

fn held(store: &Store, origin: &str) -> usize {
    store
        .get(origin)
        .map_or(0, |o| o.view.snapshot().len(ResourceType::Address))
}

#[tokio::test]
async fn a_stale_peer_is_restored_with_its_versions_and_its_stale_time() {
    let rig = rig(Some(Duration::from_secs(300)));
    let went_stale = SystemTime::now() - Duration::from_secs(40);
    let a = pod("c2", "a", 1);
    write(
        &rig,
        "c2",
        Some(went_stale),
        &[Arc::clone(&a), pod("c2", "b", 2)],
    );
    let report = restore(&rig.options, &rig.store, &rig.federation).await;
    assert_eq!(report.ignored, None);
    assert_eq!(report.restored.len(), 1);
    let (name, count, stale) = &report.restored[0];
    assert_eq!((name.as_str(), *count), ("c2", 2));
    let stale = stale.unwrap();
    assert!(stale >= Duration::from_secs(40) && stale < Duration::from_secs(100));
    let origin = rig.store.get("c2").unwrap();
    assert!(
        !origin.is_fully_synced(),
        "restored state is not a live sync"
    );
    let restored = origin.view.snapshot();
    let r = restored.get(ResourceType::Address, &a.name).unwrap();
    assert_eq!((&r.version, &r.body), (&a.version, &a.body));
    // Federation serves it and reports it stale since before the restart.
    rig.federation.recompute_all();
    assert!(
        rig.federation
            .merged()
            .snapshot()
            .get(ResourceType::Address, &a.name)
            .is_some()
    );
    let status = rig.federation.peer_status();
    assert!(status[0].stale_seconds.is_some_and(|s| s >= 40));
}

#[tokio::test]
async fn a_peer_synced_when_written_is_stale_from_the_restart() {
    let rig = rig(Some(Duration::from_secs(300)));
    write(&rig, "c2", None, &[pod("c2", "a", 1)]);
    let report = restore(&rig.options, &rig.store, &rig.federation).await;
    assert_eq!(report.restored, vec![("c2".to_string(), 1, None)]);
}

#[tokio::test]
async fn past_its_grace_or_not_configured_is_not_restored() {
    let rig = rig(Some(Duration::from_secs(30)));
    write(
        &rig,
        "c2",
        Some(SystemTime::now() - Duration::from_secs(31)),
        &[pod("c2", "a", 1)],
    );
    let report = restore(&rig.options, &rig.store, &rig.federation).await;
    assert!(report.restored.is_empty());
    assert_eq!(report.skipped[0].1, "grace period already over");
    assert_eq!(held(&rig.store, "c2"), 0);

    write(&rig, "c9", None, &[pod("c9", "a", 1)]);
    let report = restore(&rig.options, &rig.store, &rig.federation).await;
    assert_eq!(
        report.skipped,
        vec![("c9".to_string(), "not a configured peer".to_string())]
    );
    assert!(rig.store.get("c9").is_none());
}

#[tokio::test]
async fn a_resource_failing_validation_is_dropped_and_the_rest_restored() {
    let rig = rig(None);
    // Claims another cluster: the import filter refuses it, as it would live.
    let foreign = pod("c3", "x", 9);
    write(&rig, "c2", None, &[pod("c2", "a", 1), foreign]);
    let report = restore(&rig.options, &rig.store, &rig.federation).await;
    assert_eq!(report.rejected, 1);
    assert_eq!(report.restored, vec![("c2".to_string(), 1, None)]);
    assert_eq!(held(&rig.store, "c2"), 1);
}

#[tokio::test]
async fn a_corrupt_foreign_or_oversized_file_is_ignored_and_nothing_restored() {
    let rig = rig(None);
    write(&rig, "c2", None, &[pod("c2", "a", 1)]);
    let path = rig.options.file();
    let good = std::fs::read(&path).unwrap();

    // One flipped byte in a body.
    let mut bad = good.clone();
    let at = good.len() - 20;
    bad[at] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    let report = restore(&rig.options, &rig.store, &rig.federation).await;
    assert!(report.ignored.unwrap().contains("checksum"));
    assert!(rig.store.get("c2").is_none());

    // Garbage, and an empty file.
    for junk in [&b"not a snapshot at all, just text"[..], &b""[..]] {
        std::fs::write(&path, junk).unwrap();
        let report = restore(&rig.options, &rig.store, &rig.federation).await;
        assert!(report.ignored.unwrap().contains("bad magic"));
    }

    // Another format version.
    let mut other = good.clone();
    other[format::MAGIC.len()] = 9;
    std::fs::write(&path, &other).unwrap();
    let report = restore(&rig.options, &rig.store, &rig.federation).await;
    assert!(report.ignored.unwrap().contains("format version 9"));

    // Written by another cluster's peerd.
    let foreign = PeerStateOptions {
        local_cluster: "c7".into(),
        ..rig.options.clone()
    };
    std::fs::write(&path, &good).unwrap();
    let report = restore(&foreign, &rig.store, &rig.federation).await;
    assert!(
        report
            .ignored
            .unwrap()
            .contains("written by cluster \"c1\"")
    );

    // Larger than the caps allow.
    let small = PeerStateOptions {
        max_file_bytes: 16,
        ..rig.options.clone()
    };
    let report = restore(&small, &rig.store, &rig.federation).await;
    assert!(report.ignored.unwrap().contains("more than the 16"));
    assert!(rig.store.get("c2").is_none());

    // A directory where the file should be: an error, not a crash.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let report = restore(&rig.options, &rig.store, &rig.federation).await;
    assert!(report.ignored.is_some());
}

#[tokio::test]
async fn the_writer_records_complete_peers_and_rewrites_only_on_change() {
    let rig = rig(Some(Duration::from_secs(300)));
    let mut rx = rig.store.subscribe();
    for origin in [LOCAL, "c2"] {
        let address = if origin == "c2" {
            vec![pod("c2", "a", 1)]
        } else {
            vec![]
        };
        rig.store
            .apply(origin, ResourceType::Address, address, vec![]);
        rig.store.mark_synced(origin, ResourceType::Address);
        rig.store.mark_synced(origin, ResourceType::Authorization);
    }
    while let Ok(e) = rx.try_recv() {
        rig.federation.handle(e);
    }
    let written = write_if_changed(&rig.options, &rig.federation, None, None).await;
    let first = std::fs::metadata(rig.options.file())
        .unwrap()
        .modified()
        .unwrap();
    let read = format::decode(&std::fs::read(rig.options.file()).unwrap(), LOCAL).unwrap();
    assert_eq!(read.origins.len(), 1, "the local cluster is not written");
    assert_eq!(read.origins[0].origin, "c2");
    assert_eq!(read.origins[0].stale_since_unix_ms, None);
    // Unchanged: no write (the file is removed to see it is not recreated).
    std::fs::remove_file(rig.options.file()).unwrap();
    let written = write_if_changed(&rig.options, &rig.federation, written, None).await;
    assert!(!rig.options.file().exists());
    // The peer goes stale: rewritten with its stale time.
    rig.store.mark_unsynced("c2");
    while let Ok(e) = rx.try_recv() {
        rig.federation.handle(e);
    }
    rig.federation.sweep();
    write_if_changed(&rig.options, &rig.federation, written, None).await;
    let read = format::decode(&std::fs::read(rig.options.file()).unwrap(), LOCAL).unwrap();
    let since = read.origins[0].stale_since_unix_ms.unwrap();
    assert!(since >= unix_ms(first) - 1_000);
}

fn stale_since_in_file(rig: &Rig, origin: &str) -> Option<u64> {
    let read = format::decode(&std::fs::read(rig.options.file()).unwrap(), LOCAL).unwrap();
    let peer = read.origins.iter().find(|o| o.origin == origin);
    peer.unwrap_or_else(|| panic!("{origin} is not in the snapshot"))
        .stale_since_unix_ms
}

/// Chaos "local SIGKILL, peer down": a peerd restarted while a peer is down, stopped
/// again before federation ran, and restarted once more, still serves the peer stale
/// since the time recorded first (the writer must not replace the file with one lacking
/// the restored peer).
#[tokio::test]
async fn restarted_twice_a_down_peer_keeps_its_first_stale_time() {
    let grace = Some(Duration::from_secs(300));
    let rig = rig(grace);
    let went_stale = SystemTime::now() - Duration::from_secs(40);
    write(
        &rig,
        "c2",
        Some(went_stale),
        &[pod("c2", "a", 1), pod("c2", "b", 2)],
    );
    let recorded = unix_ms(went_stale);

    // First restart, stopped before federation took in the restored state.
    let report = restore(&rig.options, &rig.store, &rig.federation).await;
    assert_eq!(report.restored.len(), 1);
    let stopped = CancellationToken::new();
    stopped.cancel();
    run_writer(rig.options.clone(), Arc::clone(&rig.federation), stopped).await;
    assert_eq!(stale_since_in_file(&rig, "c2"), Some(recorded));

    // Second restart: the peer is restored stale since before the first one; federation
    // runs, and the writer's rewrite keeps that time.
    let (store, federation) = daemon(grace);
    let report = restore(&rig.options, &store, &federation).await;
    assert_eq!(report.restored.len(), 1, "{report:?}");
    let (name, count, stale) = &report.restored[0];
    assert_eq!((name.as_str(), *count), ("c2", 2));
    assert!(stale.is_some_and(|s| s >= Duration::from_secs(40)));
    federation.recompute_all();
    federation.sweep();
    assert!(
        federation.peer_status()[0]
            .stale_seconds
            .is_some_and(|s| s >= 40)
    );
    std::fs::remove_file(rig.options.file()).unwrap();
    let stopped = CancellationToken::new();
    stopped.cancel();
    run_writer(rig.options.clone(), Arc::clone(&federation), stopped).await;
    // Through Instant and back: within a second of the recorded wall-clock time.
    let rewritten = stale_since_in_file(&rig, "c2").unwrap();
    assert!(
        rewritten.abs_diff(recorded) < 1_000,
        "{rewritten} vs {recorded}"
    );

    // Third restart: still stale since then.
    let (store, federation) = daemon(grace);
    let report = restore(&rig.options, &store, &federation).await;
    assert!(
        report.restored[0]
            .2
            .is_some_and(|s| s >= Duration::from_secs(40))
    );
    assert_eq!(held(&store, "c2"), 2);
}
