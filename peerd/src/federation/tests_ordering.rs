//! The commit decision follows event order: a change an upstream applied during a healthy
//! session reaches the merged view even when federation handles it only after the stream
//! dropped; a change of the partial resync after the drop still waits for its sync.
//!
//! Each test holds federation back (store events queue up unhandled), lets the upstream
//! write and drop its stream exactly as `xds::client` does (`Store::apply`, then
//! `Store::mark_unsynced`), and only then lets federation handle the queue.

use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::broadcast::Receiver;

use super::*;
use crate::proto::istio::workload;
use crate::xds::resource::Resource;

const LOCAL: &str = "c1";
const PEER: &str = "c2";

fn config() -> FederationConfig {
    let mut c = FederationConfig::new(LOCAL, "net1");
    c.peers = vec![PeerPolicy {
        cluster: PEER.into(),
        network: "net1".into(),
        identity: crate::identity::spiffe::SpiffeId::new(
            &format!("{PEER}.local"),
            "istio-system",
            "peerd",
        )
        .unwrap(),
        flat: true,
        prefers_node_port: false,
        max_resources: 100,
        max_bytes: 1 << 20,
    }];
    c
}

fn uid(cluster: &str, name: &str) -> String {
    format!("{cluster}//Pod/default/{name}")
}

fn pod(cluster: &str, name: &str, last_octet: u8) -> Arc<Resource> {
    let subnet = if cluster == LOCAL { 1 } else { 2 };
    Arc::new(
        Resource::workload(&workload::Workload {
            uid: uid(cluster, name),
            name: name.into(),
            namespace: "default".into(),
            network: "net1".into(),
            cluster_id: cluster.into(),
            addresses: vec![Ipv4Addr::new(127, 50, subnet, last_octet).octets().to_vec()],
            ..Default::default()
        })
        .expect("a valid workload"),
    )
}

/// A federation whose events the test hands over itself (`drain`).
fn setup() -> (Arc<Store>, Arc<Federation>, Receiver<StoreEvent>) {
    let store = Store::new();
    let fed = Federation::new(config(), Arc::clone(&store));
    let rx = store.subscribe();
    (store, fed, rx)
}

/// Lets federation handle every queued event, in order.
fn drain(fed: &Federation, rx: &mut Receiver<StoreEvent>) {
    while let Ok(e) = rx.try_recv() {
        fed.handle(e);
    }
}

/// `origin`'s first complete sync of both types: `pods` and no policies.
fn initial_sync(store: &Store, origin: &str, pods: Vec<Arc<Resource>>) {
    store.apply(origin, ResourceType::Address, pods, vec![]);
    store.mark_synced(origin, ResourceType::Address);
    store.mark_synced(origin, ResourceType::Authorization);
}

fn served(fed: &Federation, cluster: &str, name: &str) -> bool {
    fed.merged()
        .snapshot()
        .get(ResourceType::Address, &uid(cluster, name))
        .is_some()
}

#[test]
fn local_change_applied_before_the_drop_is_merged() {
    let (store, fed, mut rx) = setup();
    initial_sync(&store, LOCAL, vec![pod(LOCAL, "a", 1)]);
    drain(&fed, &mut rx);
    assert!(served(&fed, LOCAL, "a"));

    // istiod sends a new pod, then its stream drops; federation has not run yet.
    store.apply(
        LOCAL,
        ResourceType::Address,
        vec![pod(LOCAL, "b", 2)],
        vec![],
    );
    store.mark_unsynced(LOCAL);
    drain(&fed, &mut rx);

    assert!(
        served(&fed, LOCAL, "b"),
        "a change of the healthy session is served while istiod is unreachable"
    );
    assert!(served(&fed, LOCAL, "a"));
}

#[test]
fn peer_change_applied_before_the_drop_is_merged() {
    let (store, fed, mut rx) = setup();
    initial_sync(&store, LOCAL, vec![pod(LOCAL, "a", 1)]);
    initial_sync(&store, PEER, vec![pod(PEER, "p", 1)]);
    drain(&fed, &mut rx);
    assert!(served(&fed, PEER, "p"));

    store.apply(PEER, ResourceType::Address, vec![pod(PEER, "q", 2)], vec![]);
    store.mark_unsynced(PEER);
    drain(&fed, &mut rx);

    assert!(served(&fed, PEER, "q"), "the peer's last change is merged");
    assert!(
        served(&fed, PEER, "p"),
        "the peer's state is kept while it is away"
    );
    let status = fed.peer_status();
    assert_eq!(status[0].imported.workloads, 2);
    assert!(!status[0].synced);
}

#[test]
fn removal_applied_before_the_drop_is_merged() {
    let (store, fed, mut rx) = setup();
    initial_sync(
        &store,
        LOCAL,
        vec![pod(LOCAL, "a", 1), pod(LOCAL, "gone", 2)],
    );
    drain(&fed, &mut rx);
    assert!(served(&fed, LOCAL, "gone"));

    store.apply(
        LOCAL,
        ResourceType::Address,
        vec![],
        vec![Arc::from(uid(LOCAL, "gone"))],
    );
    store.mark_unsynced(LOCAL);
    drain(&fed, &mut rx);

    assert!(
        !served(&fed, LOCAL, "gone"),
        "a deleted pod is not served while istiod is unreachable"
    );
    assert!(served(&fed, LOCAL, "a"));
}

#[test]
fn a_partial_resync_after_the_drop_still_waits_for_its_sync() {
    let (store, fed, mut rx) = setup();
    initial_sync(&store, LOCAL, vec![pod(LOCAL, "a", 1), pod(LOCAL, "b", 2)]);
    drain(&fed, &mut rx);

    // Healthy change, drop, then a reconnect whose partial resync removes `a` (a
    // restarting istiod that has not seen every pod yet) and adds `c`: all before
    // federation runs.
    store.apply(
        LOCAL,
        ResourceType::Address,
        vec![pod(LOCAL, "new", 3)],
        vec![],
    );
    store.mark_unsynced(LOCAL);
    store.apply(
        LOCAL,
        ResourceType::Address,
        vec![pod(LOCAL, "c", 4)],
        vec![Arc::from(uid(LOCAL, "a"))],
    );
    drain(&fed, &mut rx);

    assert!(served(&fed, LOCAL, "new"), "the healthy change is merged");
    assert!(
        served(&fed, LOCAL, "a"),
        "the partial resync's removal is not (yet) merged"
    );
    assert!(!served(&fed, LOCAL, "c"), "nor its upsert");
    let committed = fed
        .commits()
        .committed(LOCAL, ResourceType::Address)
        .cloned()
        .expect("committed state");
    assert!(
        committed
            .get(ResourceType::Address, &uid(LOCAL, "c"))
            .is_none(),
        "the committed state is the one the healthy session left, not the live one"
    );

    store.mark_synced(LOCAL, ResourceType::Address);
    drain(&fed, &mut rx);
    assert!(!served(&fed, LOCAL, "a"));
    assert!(served(&fed, LOCAL, "c"));
    assert!(served(&fed, LOCAL, "new"));
}

#[test]
fn a_first_sync_handled_after_the_drop_makes_the_merged_view_ready() {
    let (store, fed, mut rx) = setup();
    // The whole first sync, then the drop, before federation handles any of it.
    store.apply(
        LOCAL,
        ResourceType::Address,
        vec![pod(LOCAL, "a", 1)],
        vec![],
    );
    store.apply(
        LOCAL,
        ResourceType::Address,
        vec![pod(LOCAL, "b", 2)],
        vec![],
    );
    store.mark_synced(LOCAL, ResourceType::Address);
    store.mark_synced(LOCAL, ResourceType::Authorization);
    store.mark_unsynced(LOCAL);
    // The reconnect's partial resync removes `b`.
    store.apply(
        LOCAL,
        ResourceType::Address,
        vec![],
        vec![Arc::from(uid(LOCAL, "b"))],
    );
    drain(&fed, &mut rx);

    assert!(fed.merged().is_ready(), "the completed sync is merged");
    assert!(served(&fed, LOCAL, "a"));
    assert!(served(&fed, LOCAL, "b"), "the partial resync is held back");
}

#[test]
fn sessions_that_ended_before_a_full_recompute_are_not_replayed() {
    let (store, fed, mut rx) = setup();
    initial_sync(&store, LOCAL, vec![pod(LOCAL, "a", 1)]);
    drain(&fed, &mut rx);

    // The session ends, the next one resyncs completely with `a` removed; federation
    // recomputes everything (as after missed events) and then meets the queued events.
    store.apply(
        LOCAL,
        ResourceType::Address,
        vec![pod(LOCAL, "b", 2)],
        vec![],
    );
    store.mark_unsynced(LOCAL);
    store.apply(
        LOCAL,
        ResourceType::Address,
        vec![],
        vec![Arc::from(uid(LOCAL, "a"))],
    );
    store.mark_synced(LOCAL, ResourceType::Address);
    store.mark_synced(LOCAL, ResourceType::Authorization);
    fed.recompute_all();
    assert!(!served(&fed, LOCAL, "a"));
    drain(&fed, &mut rx);

    assert!(
        !served(&fed, LOCAL, "a"),
        "the ended session's state does not come back"
    );
    assert!(served(&fed, LOCAL, "b"));
}
