//! Bad peers, each against real clusters over mTLS on loopback (or a scripted upstream
//! standing in for a misbehaving peer): a certificate from another root, a trust domain
//! that does not match, a workload certificate of the shared root posing as a peer (as
//! client and as server), a peer claiming another peer's cluster, workloads claiming
//! another cluster, two flat peers claiming the same pod IP, a peer over its caps, a peer
//! pushing past the memory budget, a peer that disconnects mid-sync. Each test checks the
//! clear error and that nothing already stored (nor any other peer's state) is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod federation_support;
mod xds_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use federation_support::{
    Cluster, Identity, Spec, TOKEN, Topology, WAIT, client_options, eventually, identity,
    identity_as, peerd_identity, start_client, trust_domain,
};
use peerd::budget::stored_cost;
use peerd::federation::ConflictKind;
use peerd::identity::classify::{FailureReason, classify_tls};
use peerd::identity::spiffe::SpiffeId;
use peerd::identity::tls::{
    ClientAuth, ClientTlsOptions, ServerIdentity, ServerTlsOptions, client_config, server_config,
};
use peerd::peers::model::{SpecAddress, SpecListener, SpecSource};
use peerd::peers::{
    AdsClients, ConditionStatus, ConditionType, DownstreamAcks, HysteresisConfig, LocalCluster,
    MonitorConfig, MonitorSources, PeerMonitor, PeerSpec, PeerStatus, RecordedPeerVersions,
    UserspaceProbe,
};
use peerd::probe::prober::{Prober, ProberConfig, TargetGuard};
use peerd::proto::istio::workload;
use peerd::store::Store;
use peerd::xds::auth::StaticTokenVerifier;
use peerd::xds::client::{AdsClient, FailureKind};
use peerd::xds::server::{AdsServer, ServerOptions, Subscribers};
use peerd::xds::{Resource, ResourceType};
use peerd_testbed::pki::Pki;
use prost::Message;
use tokio_util::sync::CancellationToken;

fn synced(c: &Cluster, peer: &str) -> bool {
    c.store.get(peer).is_some_and(|o| o.is_fully_synced())
}

/// A workload as peer `cluster` would export it (flat form).
fn exported_pod(uid: &str, cluster: &str, network: &str, ip: [u8; 4]) -> Arc<Resource> {
    Arc::new(
        Resource::workload(&workload::Workload {
            uid: uid.into(),
            name: uid.rsplit('/').next().unwrap().into(),
            namespace: "default".into(),
            addresses: vec![ip.to_vec()],
            cluster_id: cluster.into(),
            network: network.into(),
            services: [(
                "default/echo.default.mesh.internal".to_string(),
                workload::PortList::default(),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        })
        .unwrap(),
    )
}

/// A peerd identity in a trust domain no cluster of the tests uses.
fn elsewhere() -> SpiffeId {
    SpiffeId::new("elsewhere.local", "istio-system", "peerd").unwrap()
}

/// c1 and c2 on one flat network, neither importing the other yet.
async fn two_flat_clusters() -> Topology {
    Topology::new(vec![
        Spec::new("c1", 1, "flat", &[]),
        Spec::new("c2", 2, "flat", &[]),
    ])
    .await
}

/// A client config presenting `me` and expecting `server`.
fn client_tls(me: &Identity, server: ServerIdentity) -> Arc<rustls::ClientConfig> {
    client_config(
        &ClientTlsOptions::new(Arc::clone(&me.roots), server).with_client_cert(me.cert.clone()),
    )
    .unwrap()
}

/// A client config for "c2", certified under the test root, expecting `server`.
fn c2_client_tls(topo: &Topology, server: ServerIdentity) -> Arc<rustls::ClientConfig> {
    let ca = topo.pki.cluster_ca("c2").unwrap();
    client_tls(
        &identity(topo.pki.dir(), &ca, "c2", &trust_domain("c2"), 2),
        server,
    )
}

/// An identity for "c2" (right trust domain) issued under a root c1 does not trust.
fn c2_from_another_root(topo: &Topology, pki_dir: &str) -> Identity {
    let other = Pki::load_or_create(&topo.dir.path().join(pki_dir), "another root").unwrap();
    identity(
        other.dir(),
        &other.cluster_ca("c2").unwrap(),
        "c2",
        &trust_domain("c2"),
        2,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_certificate_from_another_root_is_refused() {
    let mut topo = two_flat_clusters().await;
    let c1 = topo.start("c1", true).await;
    // A rogue "c2" whose certificate (right trust domain) chains to a different root.
    let rogue = c2_from_another_root(&topo, "rogue-pki");
    let tls = client_config(
        &ClientTlsOptions::new(
            Arc::clone(&c1.identity.roots),
            ServerIdentity::Spiffe(peerd_identity("c1")),
        )
        .with_client_cert(rogue.cert.clone()),
    )
    .unwrap();
    let store = Store::new();
    let client = AdsClient::new(client_options("c1", c1.addr, tls), Arc::clone(&store));
    let failure = client.failure_handle();
    let cancel = CancellationToken::new();
    client.spawn(cancel.clone());
    eventually("the rogue client fails", || {
        failure.lock().unwrap().is_some()
    })
    .await;
    let f = failure.lock().unwrap().clone().unwrap();
    assert!(
        matches!(f.kind, FailureKind::Tls | FailureKind::Stream),
        "unexpected failure {:?}: {}",
        f.kind,
        f.message
    );
    assert!(
        store.get("c1").is_none_or(|o| o.view.snapshot().is_empty()),
        "nothing exported to the rogue"
    );
    // And a peer serving a certificate of another root is refused by our client.
    let mut topo2 = Topology::new(vec![
        Spec::new("c3", 3, "flat", &[]),
        Spec::new("c4", 4, "flat", &["c3"]),
    ])
    .await;
    let _c3 = topo2.start("c3", true).await;
    let c4_with_wrong_trust = {
        let tls = client_config(
            &ClientTlsOptions::new(
                Arc::clone(&rogue.roots),
                ServerIdentity::Spiffe(peerd_identity("c3")),
            )
            .with_client_cert(rogue.cert.clone()),
        )
        .unwrap();
        let store = Store::new();
        let fed =
            peerd::federation::Federation::new(topo2.federation_config(1), Arc::clone(&store));
        let c = start_client(&store, &fed, "c3", topo2.addrs[0], tls, &cancel);
        (store, c)
    };
    eventually("our client refuses the unknown authority", || {
        c4_with_wrong_trust.1.failure.lock().unwrap().is_some()
    })
    .await;
    let f = c4_with_wrong_trust
        .1
        .failure
        .lock()
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(f.kind, FailureKind::Tls, "{}", f.message);
    assert!(c4_with_wrong_trust.0.get("c3").is_none());
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_domain_mismatch_is_refused_in_both_directions() {
    let mut topo = two_flat_clusters().await;
    let c1 = topo.start("c1", true).await;
    let cancel = CancellationToken::new();
    // Our side expects c1 in another trust domain: IdentityMismatch.
    let tls = c2_client_tls(&topo, ServerIdentity::Spiffe(elsewhere()));
    let store = Store::new();
    let client = AdsClient::new(client_options("c1", c1.addr, tls), Arc::clone(&store));
    let failure = client.failure_handle();
    client.spawn(cancel.clone());
    eventually("identity mismatch reported", || {
        failure.lock().unwrap().is_some()
    })
    .await;
    let f = failure.lock().unwrap().clone().unwrap();
    assert_eq!(f.kind, FailureKind::IdentityMismatch, "{}", f.message);
    assert_eq!(f.kind.condition_reason(), "IdentityMismatch");
    // The kept rustls error classifies the same way.
    let reason = classify_tls(f.tls.as_ref().expect("rustls error kept")).reason;
    assert_eq!(reason, FailureReason::IdentityMismatch, "{}", f.message);
    assert!(f.message.contains("elsewhere.local"), "{}", f.message);
    // A client with a valid chain but a SPIFFE ID in no peer's trust domain: c1 refuses.
    let ca = topo.pki.cluster_ca("c2").unwrap();
    let stranger = identity(topo.pki.dir(), &ca, "stranger", "stranger.local", 2);
    let tls = client_tls(&stranger, ServerIdentity::Spiffe(peerd_identity("c1")));
    let store = Store::new();
    let client = AdsClient::new(client_options("c1", c1.addr, tls), Arc::clone(&store));
    let failure = client.failure_handle();
    client.spawn(cancel.clone());
    eventually("stranger refused", || failure.lock().unwrap().is_some()).await;
    let f = failure.lock().unwrap().clone().unwrap();
    assert_eq!(f.kind, FailureKind::Unauthenticated, "{}", f.message);
    assert!(f.message.contains("stranger.local"), "{}", f.message);
    assert!(store.get("c1").is_none_or(|o| o.view.snapshot().is_empty()));
    cancel.cancel();
}

/// A real [`PeerMonitor`] of cluster `local` for the one `peer` at `addr`, reading
/// `clients` and `store`, with hysteresis that decides on the first observation.
fn monitor_of(
    local: &str,
    peer: &str,
    addr: SocketAddr,
    clients: Arc<AdsClients>,
    store: Arc<Store>,
) -> Arc<PeerMonitor> {
    let prober = Prober::new(ProberConfig {
        enabled: false,
        interval: Duration::from_secs(1),
        jitter: Duration::ZERO,
        timeout: Duration::from_secs(5),
        guard: TargetGuard::loopback_only(),
    })
    .unwrap();
    let sources = MonitorSources {
        upstreams: clients,
        imports: store,
        acks: Arc::new(DownstreamAcks {
            subscribers: Subscribers::new(),
            view_label: "merged".into(),
            versions: RecordedPeerVersions::new(),
        }),
        probe: UserspaceProbe::new(prober),
    };
    let config = MonitorConfig {
        hysteresis: HysteresisConfig {
            failure_window: Duration::ZERO,
            success_run: 1,
            first_probe_grace: Duration::ZERO,
        },
        ..MonitorConfig::default()
    };
    let spec = PeerSpec {
        source: SpecSource::Config { index: 0 },
        generation: 1,
        cluster: Some(peer.into()),
        network: Some("flat".into()),
        addresses: vec![SpecAddress {
            kind: "IPAddress".into(),
            value: addr.ip().to_string(),
        }],
        trust_domain: Some(trust_domain(peer)),
        listeners: vec![
            SpecListener {
                name: "cross-network".into(),
                port: 15008,
                protocol: "HBONE".into(),
            },
            SpecListener {
                name: "xds-tls".into(),
                port: addr.port(),
                protocol: "TLS".into(),
            },
        ],
        data_plane_service_type: None,
        peerd_identity: None,
    };
    let local = LocalCluster {
        cluster: local.into(),
        network: "flat".into(),
        flat_networks: true,
    };
    PeerMonitor::new(local, vec![spec], config, sources, Instant::now())
}

/// Runs `client` as the only xDS client of `peer` (at `addr`) under a real
/// [`PeerMonitor`] of cluster `local`, and ticks it until `PeerConnected` is False with a
/// failure reason; returns the peer's status as `peerd status` and the Gateway show it.
async fn peer_status_while_failing(
    local: &str,
    peer: &str,
    addr: SocketAddr,
    client: AdsClient,
    store: Arc<Store>,
    cancel: &CancellationToken,
) -> PeerStatus {
    let clients = AdsClients::new();
    clients.register(peer, &addr.to_string(), &client);
    client.spawn(cancel.clone());
    let monitor = monitor_of(local, peer, addr, clients, store);
    let deadline = Instant::now() + WAIT;
    loop {
        monitor.tick(Instant::now(), SystemTime::now()).await;
        let status = monitor.snapshot()[0].clone();
        let connected = status.condition(ConditionType::PeerConnected).unwrap();
        if connected.status == ConditionStatus::False && connected.reason != "Pending" {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "PeerConnected never failed; last: {connected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `PeerConnected` is False with `reason`, and `PeeringSucceeded` stays Pending naming the
/// same cause. Returns the `PeerConnected` message.
fn assert_not_connected(status: &PeerStatus, reason: &str) -> String {
    let connected = status.condition(ConditionType::PeerConnected).unwrap();
    assert_eq!(connected.status, ConditionStatus::False, "{connected:?}");
    assert_eq!(connected.reason, reason, "{}", connected.message);
    let succeeded = status.condition(ConditionType::PeeringSucceeded).unwrap();
    assert_eq!(succeeded.status, ConditionStatus::False, "{succeeded:?}");
    assert_eq!(succeeded.reason, "Pending", "{}", succeeded.message);
    assert!(
        succeeded
            .message
            .contains(&format!("not connected to peer ({reason}: ")),
        "{}",
        succeeded.message
    );
    connected.message.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_presenting_a_certificate_from_another_root_shows_tls_error_in_peer_status() {
    let mut topo = two_flat_clusters().await;
    let c1 = topo.start("c1", true).await;
    // We (c2) trust only another root: the real c1's certificate is from an authority we
    // do not know.
    let me = c2_from_another_root(&topo, "other-pki");
    let tls = client_tls(&me, ServerIdentity::Spiffe(peerd_identity("c1")));
    let store = Store::new();
    let client = AdsClient::new(client_options("c1", c1.addr, tls), Arc::clone(&store));
    let failure = client.failure_handle();
    let cancel = CancellationToken::new();
    let status =
        peer_status_while_failing("c2", "c1", c1.addr, client, Arc::clone(&store), &cancel).await;
    let message = assert_not_connected(&status, "TLSError");
    assert!(
        message.contains("certificate signed by unknown authority"),
        "{message}"
    );
    assert!(message.contains(&c1.addr.to_string()), "{message}");
    assert!(message.contains("same root"), "the hint: {message}");
    assert_eq!(
        failure.lock().unwrap().as_ref().unwrap().kind,
        FailureKind::Tls
    );
    assert!(store.get("c1").is_none_or(|o| o.view.snapshot().is_empty()));
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_whose_trust_domain_does_not_match_shows_identity_mismatch_in_peer_status() {
    let mut topo = two_flat_clusters().await;
    let c1 = topo.start("c1", true).await;
    // Right root, but we expect c1 in a trust domain it is not in.
    let tls = c2_client_tls(&topo, ServerIdentity::Spiffe(elsewhere()));
    let store = Store::new();
    let client = AdsClient::new(client_options("c1", c1.addr, tls), Arc::clone(&store));
    let cancel = CancellationToken::new();
    let status =
        peer_status_while_failing("c2", "c1", c1.addr, client, Arc::clone(&store), &cancel).await;
    let message = assert_not_connected(&status, "IdentityMismatch");
    // Names the expected and the presented identity.
    assert!(
        message.contains("expected spiffe://elsewhere.local/ns/istio-system/sa/peerd"),
        "{message}"
    );
    assert!(
        message.contains("spiffe://c1.local/ns/istio-system/sa/peerd"),
        "{message}"
    );
    assert!(
        message.contains("trust domain annotation"),
        "the hint: {message}"
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_whose_san_does_not_match_shows_identity_mismatch_in_peer_status() {
    let mut topo = two_flat_clusters().await;
    let c1 = topo.start("c1", true).await;
    // Right root and trust domain, but another service account than the one c1 presents.
    let expected = SpiffeId::new(&trust_domain("c1"), "istio-system", "istiod").unwrap();
    let tls = c2_client_tls(&topo, ServerIdentity::Spiffe(expected.clone()));
    let store = Store::new();
    let client = AdsClient::new(client_options("c1", c1.addr, tls), Arc::clone(&store));
    let cancel = CancellationToken::new();
    let status =
        peer_status_while_failing("c2", "c1", c1.addr, client, Arc::clone(&store), &cancel).await;
    let message = assert_not_connected(&status, "IdentityMismatch");
    assert!(
        message.contains(&format!("expected {expected}")),
        "{message}"
    );
    assert!(
        message.contains("spiffe://c1.local/ns/istio-system/sa/peerd"),
        "{message}"
    );
    cancel.cancel();
}

/// c1 imports the real c3 and a scripted "c2" that misbehaves. Returns (c1, c3, upstream,
/// the scripted stream).
async fn with_scripted_peer(
    c1_spec: Spec,
) -> (Topology, Cluster, Cluster, xds_support::ScriptedUpstream) {
    let mut topo = Topology::new(vec![
        c1_spec,
        Spec::new("c2", 2, "flat", &[]),
        Spec::new("c3", 3, "net3", &[]),
    ])
    .await;
    let c1 = topo.start("c1", true).await;
    let c3 = topo.start("c3", true).await;
    eventually("c1 synced with c3", || synced(&c1, "c3")).await;
    let upstream = xds_support::ScriptedUpstream::start().await;
    let tls = xds_support::client_tls(&upstream.pki, None);
    let mut opts = client_options("c2", upstream.addr, tls);
    opts.server_name = "127.0.0.1".into();
    let client = AdsClient::new(opts, Arc::clone(&c1.store))
        .with_filter(c1.fed.import_filter("c2").unwrap());
    client.spawn(c1.cancel.child_token());
    (topo, c1, c3, upstream)
}

async fn initial_requests(
    s: &mut xds_support::UpstreamStream,
) -> Vec<peerd::proto::envoy::service::discovery::v3::DeltaDiscoveryRequest> {
    vec![s.recv().await, s.recv().await]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_claiming_another_cluster_are_nacked_by_name_and_poison_nothing() {
    let (_topo, c1, c3, mut upstream) =
        with_scripted_peer(Spec::new("c1", 1, "flat", &["c3"])).await;
    let c3_before = c1.merged_workloads_from("c3");
    let mut s = upstream.next_stream().await;
    initial_requests(&mut s).await;
    let good = exported_pod("c2//Pod/default/good", "c2", "flat", [127, 0, 200, 1]);
    let other_uid = exported_pod("c9//Pod/default/liar", "c2", "flat", [127, 0, 200, 2]);
    let other_cluster_id = exported_pod("c2//Pod/default/liar2", "c9", "flat", [127, 0, 200, 3]);
    s.send(xds_support::response(
        ResourceType::Address,
        "1",
        vec![
            xds_support::wire(&good),
            xds_support::wire(&other_uid),
            xds_support::wire(&other_cluster_id),
        ],
        &[],
    ))
    .await;
    let nack = s.recv().await;
    let message = nack.error_detail.expect("NACK").message;
    assert!(message.contains("c9//Pod/default/liar: uid"), "{message}");
    assert!(
        message.contains("c2//Pod/default/liar2: cluster_id \"c9\""),
        "{message}"
    );
    assert!(!message.contains("good"), "{message}");
    s.send(xds_support::response(
        ResourceType::Authorization,
        "2",
        vec![],
        &[],
    ))
    .await;
    eventually("good workload merged", || {
        c1.fed
            .merged()
            .snapshot()
            .get(ResourceType::Address, "c2//Pod/default/good")
            .is_some()
    })
    .await;
    let merged = c1.fed.merged().snapshot();
    assert!(
        merged
            .get(ResourceType::Address, "c9//Pod/default/liar")
            .is_none()
    );
    assert!(
        merged
            .get(ResourceType::Address, "c2//Pod/default/liar2")
            .is_none()
    );
    let status = c1
        .fed
        .peer_status()
        .into_iter()
        .find(|p| p.cluster == "c2")
        .unwrap();
    assert_eq!(status.import.rejected_total, 2);
    assert!(
        status
            .import
            .recent
            .iter()
            .all(|r| r.rule == "cluster_claim")
    );
    // The other peer's state is intact.
    assert_eq!(c1.merged_workloads_from("c3"), c3_before);
    assert!(
        c3.fed
            .peer_status()
            .iter()
            .all(|p| p.import.rejected_total == 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_over_its_cap_is_nacked_for_the_excess_only() {
    let mut spec = Spec::new("c1", 1, "flat", &["c3"]);
    spec.peer_caps = vec![("c2".into(), 3)];
    let (_topo, c1, _c3, mut upstream) = with_scripted_peer(spec).await;
    let c3_before = c1.merged_workloads_from("c3");
    let mut s = upstream.next_stream().await;
    initial_requests(&mut s).await;
    let pods: Vec<_> = (1..=5u8)
        .map(|i| {
            exported_pod(
                &format!("c2//Pod/default/p{i}"),
                "c2",
                "flat",
                [127, 0, 201, i],
            )
        })
        .collect();
    s.send(xds_support::response(
        ResourceType::Address,
        "1",
        pods.iter().map(|r| xds_support::wire(r)).collect(),
        &[],
    ))
    .await;
    let message = s.recv().await.error_detail.expect("NACK").message;
    assert_eq!(
        message
            .matches("peer cap exceeded: resource count (limit 3)")
            .count(),
        2,
        "{message}"
    );
    s.send(xds_support::response(
        ResourceType::Authorization,
        "2",
        vec![],
        &[],
    ))
    .await;
    eventually("c2 synced", || synced(&c1, "c2")).await;
    assert_eq!(c1.held("c2", ResourceType::Address).len(), 3);
    assert_eq!(c1.merged_workloads_from("c2"), 3);
    let status = c1
        .fed
        .peer_status()
        .into_iter()
        .find(|p| p.cluster == "c2")
        .unwrap();
    assert_eq!(status.import.rejected_total, 2);
    assert!(status.import.recent.iter().all(|r| r.rule == "cap"));
    // c3 is not capped by c2's limit.
    assert_eq!(c1.merged_workloads_from("c3"), c3_before);
    assert!(c3_before > 3);
}

/// Polls a monitor of c1 for peer c2 until `PeeringSucceeded` has `reason`.
async fn peering_succeeded_reason(c1: &Cluster, addr: SocketAddr, reason: &str) -> String {
    let monitor = monitor_of("c1", "c2", addr, AdsClients::new(), Arc::clone(&c1.store));
    let deadline = Instant::now() + WAIT;
    loop {
        monitor.tick(Instant::now(), SystemTime::now()).await;
        let status = monitor.snapshot()[0].clone();
        let c = status
            .condition(ConditionType::PeeringSucceeded)
            .unwrap()
            .clone();
        if c.reason == reason {
            return c.message;
        }
        assert!(
            Instant::now() < deadline,
            "PeeringSucceeded never became {reason}; last: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_pushing_past_the_memory_budget_is_nacked_and_nothing_else_is_lost() {
    let (_topo, c1, c3, mut upstream) =
        with_scripted_peer(Spec::new("c1", 1, "flat", &["c3"])).await;
    eventually("c3 merged", || c1.merged_workloads_from("c3") > 0).await;
    let c3_before = c1.held("c3", ResourceType::Address);
    let local_before = c1.held("c1", ResourceType::Address).len();
    let pods: Vec<_> = (1..=5u8)
        .map(|i| {
            exported_pod(
                &format!("c2//Pod/default/p{i}"),
                "c2",
                "flat",
                [127, 0, 201, i],
            )
        })
        .collect();
    // Room for two of c2's pods on top of what c1 and c3 already hold.
    let budget = c1.store.memory_budget();
    let used = budget.stored_bytes();
    assert_eq!(
        used,
        budget.stored_bytes_of("c1") + budget.stored_bytes_of("c3"),
        "every origin's stored bytes are accounted"
    );
    let pod_cost = stored_cost(&pods[0]);
    let limit = used + 2 * pod_cost + pod_cost / 2;
    budget.set_limit(limit);

    let mut s = upstream.next_stream().await;
    initial_requests(&mut s).await;
    s.send(xds_support::response(
        ResourceType::Address,
        "1",
        pods.iter().map(|r| xds_support::wire(r)).collect(),
        &[],
    ))
    .await;
    let message = s.recv().await.error_detail.expect("NACK").message;
    for refused in ["p3", "p4", "p5"] {
        assert!(
            message.contains(&format!(
                "c2//Pod/default/{refused}: peer c2: memory budget exceeded"
            )),
            "{message}"
        );
    }
    assert!(!message.contains("default/p1:"), "{message}");
    assert!(!message.contains("default/p2:"), "{message}");
    assert!(
        message.contains(&format!("of the {limit}-byte budget")),
        "the NACK names the budget: {message}"
    );
    s.send(xds_support::response(
        ResourceType::Authorization,
        "2",
        vec![],
        &[],
    ))
    .await;
    assert!(
        s.recv().await.error_detail.is_none(),
        "ACK of the Authorization response"
    );
    eventually("c2 synced", || synced(&c1, "c2")).await;
    assert_eq!(c1.held("c2", ResourceType::Address).len(), 2);
    eventually("c2's two pods merged", || {
        c1.merged_workloads_from("c2") == 2
    })
    .await;
    let status = c1
        .fed
        .peer_status()
        .into_iter()
        .find(|p| p.cluster == "c2")
        .unwrap();
    assert_eq!(status.import.rejected_total, 3);
    assert!(status.import.recent.iter().all(|r| r.rule == "budget"));
    assert!(budget.stored_bytes() <= limit, "the budget held");
    // The peer's condition says why its state is incomplete.
    let condition = peering_succeeded_reason(&c1, upstream.addr, "MemoryBudgetExceeded").await;
    assert!(
        condition.contains("3 address resource(s)")
            && condition.contains(&format!("of {limit} bytes")),
        "{condition}"
    );

    // Nothing else is lost and everyone else keeps updating: the local cluster grows past
    // the budget (it is never refused), c3's same-size change is taken.
    assert_eq!(c1.held("c3", ResourceType::Address), c3_before);
    assert_eq!(c1.held("c1", ResourceType::Address).len(), local_before);
    let newcomer = exported_pod("c1//Pod/default/newcomer", "c1", "flat", [127, 0, 202, 1]);
    c1.store
        .apply("c1", ResourceType::Address, vec![newcomer], vec![]);
    assert!(
        budget.stored_bytes() > limit,
        "the local cluster is not refused"
    );
    eventually("the local newcomer is merged", || {
        c1.fed
            .merged()
            .snapshot()
            .get(ResourceType::Address, "c1//Pod/default/newcomer")
            .is_some()
    })
    .await;
    let moved = c3_before
        .iter()
        .find(|r| {
            r.as_workload()
                .is_some_and(|w| w.addresses.len() == 1 && w.addresses[0].is_ipv4())
        })
        .expect("a c3 workload with one IPv4 address");
    let original = c3
        .held("c3", ResourceType::Address)
        .into_iter()
        .find(|r| r.name == moved.name)
        .unwrap();
    let Some(workload::address::Type::Workload(mut w)) =
        workload::Address::decode(original.body.clone())
            .unwrap()
            .r#type
    else {
        panic!("{} is not a workload", original.name);
    };
    w.addresses[0][3] = w.addresses[0][3].wrapping_add(1);
    let new_ip = std::net::IpAddr::from(<[u8; 4]>::try_from(&w.addresses[0][..]).unwrap());
    c3.store.apply(
        "c3",
        ResourceType::Address,
        vec![Arc::new(Resource::workload(&w).unwrap())],
        vec![],
    );
    eventually("c3's change reaches c1", || {
        c1.store
            .get("c3")
            .and_then(|o| {
                o.view
                    .snapshot()
                    .get(ResourceType::Address, &moved.name)
                    .and_then(|r| r.as_workload().map(|w| w.addresses.contains(&new_ip)))
            })
            .unwrap_or(false)
    })
    .await;

    // With room again, c2's next push is stored whole and the condition clears.
    budget.set_limit(usize::MAX - 1);
    s.send(xds_support::response(
        ResourceType::Address,
        "3",
        pods[2..].iter().map(|r| xds_support::wire(r)).collect(),
        &[],
    ))
    .await;
    let ack = s.recv().await;
    assert_eq!(ack.type_url, ResourceType::Address.type_url());
    assert!(ack.error_detail.is_none(), "ACK: {:?}", ack.error_detail);
    assert_eq!(c1.held("c2", ResourceType::Address).len(), 5);
    peering_succeeded_reason(&c1, upstream.addr, "Succeeded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_disconnecting_mid_sync_does_not_replace_its_state() {
    let (_topo, c1, _c3, mut upstream) =
        with_scripted_peer(Spec::new("c1", 1, "flat", &["c3"])).await;
    let w1 = exported_pod("c2//Pod/default/w1", "c2", "flat", [127, 0, 202, 1]);
    let w2 = exported_pod("c2//Pod/default/w2", "c2", "flat", [127, 0, 202, 2]);
    let mut s = upstream.next_stream().await;
    initial_requests(&mut s).await;
    s.send(xds_support::response(
        ResourceType::Address,
        "1",
        vec![xds_support::wire(&w1), xds_support::wire(&w2)],
        &[],
    ))
    .await;
    s.send(xds_support::response(
        ResourceType::Authorization,
        "2",
        vec![],
        &[],
    ))
    .await;
    eventually("c2 synced", || {
        synced(&c1, "c2") && c1.merged_workloads_from("c2") == 2
    })
    .await;
    drop(s);
    // Reconnect: the client offers what it holds; the peer drops before answering.
    let mut s = upstream.next_stream().await;
    let reqs = initial_requests(&mut s).await;
    let address = reqs
        .iter()
        .find(|r| r.type_url == ResourceType::Address.type_url())
        .unwrap();
    assert_eq!(address.initial_resource_versions.len(), 2);
    drop(s);
    // And again, this time answering Address (a new state) but dropping before
    // Authorization: only the completed type is replaced.
    let mut s = upstream.next_stream().await;
    initial_requests(&mut s).await;
    eventually("c2 marked stale while resyncing", || {
        c1.fed
            .peer_status()
            .iter()
            .any(|p| p.cluster == "c2" && p.stale_seconds.is_some())
    })
    .await;
    assert_eq!(
        c1.merged_workloads_from("c2"),
        2,
        "old state kept while resyncing"
    );
    let w3 = exported_pod("c2//Pod/default/w3", "c2", "flat", [127, 0, 202, 3]);
    s.send(xds_support::response(
        ResourceType::Address,
        "1",
        vec![xds_support::wire(&w3)],
        &["c2//Pod/default/w1"],
    ))
    .await;
    let _ack = s.recv().await;
    drop(s);
    eventually("Address replaced by its complete response", || {
        let m = c1.fed.merged().snapshot();
        m.get(ResourceType::Address, "c2//Pod/default/w3").is_some()
            && m.get(ResourceType::Address, "c2//Pod/default/w1").is_none()
    })
    .await;
    assert!(
        c1.fed
            .merged()
            .snapshot()
            .get(ResourceType::Address, "c2//Pod/default/w2")
            .is_some()
    );
    let _ = WAIT;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_flat_peers_claiming_the_same_pod_ip_are_resolved_by_precedence() {
    let mut topo = Topology::new(vec![
        Spec::new("c1", 1, "flat", &[]),
        Spec::new("c2", 2, "flat", &[]),
        Spec::new("c3", 3, "flat", &["c1", "c2"]),
    ])
    .await;
    let c1 = topo.start("c1", true).await;
    let c2 = topo.start("c2", true).await;
    let c3 = topo.start("c3", true).await;
    eventually("c3 synced with c1 and c2", || {
        synced(&c3, "c1") && synced(&c3, "c2")
    })
    .await;
    // Both peers get a pod with the same IP backing a global service.
    let g = federation_support::global_services(&federation_support::population("c1", 1, "flat"))
        .into_iter()
        .next()
        .unwrap();
    let local_key = format!(
        "{}/{}.{}.svc.cluster.local",
        g.namespace, g.name, g.namespace
    );
    for c in [&c1, &c2] {
        let name = &c.spec.name;
        let w = Resource::workload(&workload::Workload {
            uid: format!("{name}//Pod/{}/twin", g.namespace),
            name: "twin".into(),
            namespace: g.namespace.clone(),
            addresses: vec![vec![127, 0, 250, 5]],
            cluster_id: name.clone(),
            network: "flat".into(),
            services: [(local_key.clone(), workload::PortList::default())]
                .into_iter()
                .collect(),
            ..Default::default()
        })
        .unwrap();
        c.store
            .apply(name, ResourceType::Address, vec![Arc::new(w)], vec![]);
    }
    let twin1 = format!("c1//Pod/{}/twin", g.namespace);
    let twin2 = format!("c2//Pod/{}/twin", g.namespace);
    eventually("c3 reports the pod IP conflict", || {
        c3.fed.conflict_count("c2", ConflictKind::PodIp) == 1
    })
    .await;
    let merged = c3.fed.merged().snapshot();
    assert!(
        merged.get(ResourceType::Address, &twin1).is_some(),
        "c1 precedes c2"
    );
    assert!(
        merged.get(ResourceType::Address, &twin2).is_none(),
        "c2's twin withheld"
    );
    assert_eq!(
        &*merged.resolve_address_key("flat/127.0.250.5").unwrap().name,
        twin1
    );
    let conflict = c3
        .fed
        .conflicts()
        .into_iter()
        .find(|c| c.kind == ConflictKind::PodIp)
        .unwrap();
    assert_eq!(
        (conflict.loser.as_str(), conflict.winner.as_str()),
        ("c2", "c1")
    );
    // c1's twin goes away: c2's is served and the conflict clears.
    c1.store.apply(
        "c1",
        ResourceType::Address,
        vec![],
        vec![Arc::from(twin1.as_str())],
    );
    eventually("c2's twin served after c1's left", || {
        c3.fed
            .merged()
            .snapshot()
            .get(ResourceType::Address, &twin2)
            .is_some()
            && c3.fed.conflict_count("c2", ConflictKind::PodIp) == 0
    })
    .await;
}

// ------------------------------------------------------------- peer identity (pinned)

/// A client of `addr` with certificate `me`, expecting `server`, sending `clusterid`.
fn client_with_header(
    me: &Identity,
    server: SpiffeId,
    addr: SocketAddr,
    clusterid: Option<&str>,
) -> (AdsClient, Arc<Store>) {
    let tls = client_tls(me, ServerIdentity::Spiffe(server));
    let mut options = client_options("c1", addr, tls);
    options.headers = clusterid
        .map(|c| vec![("clusterid".to_string(), c.to_string())])
        .unwrap_or_default();
    let store = Store::new();
    (AdsClient::new(options, Arc::clone(&store)), store)
}

/// A workload certificate from the shared root, in the trust domain of c1's peer c2
/// (`spiffe://c2.local/ns/bookinfo/sa/reviews`), is refused by c1's export listener:
/// without a header, and with `clusterid: c2` (the header can no longer choose a view).
/// c2's real peerd, on the same listener, is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_certificate_posing_as_a_peer_client_gets_no_export_view() {
    let mut topo = two_flat_clusters().await;
    let c1 = topo.start("c1", true).await;
    let ca = topo.pki.cluster_ca("c2").unwrap();
    let reviews = identity_as(
        topo.pki.dir(),
        &ca,
        "reviews",
        SpiffeId::new(&trust_domain("c2"), "bookinfo", "reviews").unwrap(),
        2,
    );
    let cancel = CancellationToken::new();
    for header in [None, Some("c2")] {
        let (client, store) = client_with_header(&reviews, peerd_identity("c1"), c1.addr, header);
        let failure = client.failure_handle();
        client.spawn(cancel.child_token());
        eventually("the workload is refused", || {
            failure.lock().unwrap().is_some()
        })
        .await;
        let f = failure.lock().unwrap().clone().unwrap();
        assert_eq!(
            f.kind,
            FailureKind::Unauthenticated,
            "{header:?}: {}",
            f.message
        );
        assert!(
            f.message.contains(
                "spiffe://c2.local/ns/bookinfo/sa/reviews is not the peerd identity of any configured peer"
            ),
            "{header:?}: {}",
            f.message
        );
        assert!(
            store.get("c1").is_none_or(|o| o.view.snapshot().is_empty()),
            "{header:?}: no export view reached the workload"
        );
    }
    // c2's peerd, pinned the same way, is served c1's export view.
    let c2 = identity(topo.pki.dir(), &ca, "c2", &trust_domain("c2"), 2);
    let (client, store) = client_with_header(&c2, peerd_identity("c1"), c1.addr, Some("c2"));
    client.spawn(cancel.child_token());
    eventually("c2's peerd synced c1's export", || {
        store
            .get("c1")
            .is_some_and(|o| o.is_fully_synced() && !o.view.snapshot().is_empty())
    })
    .await;
    cancel.cancel();
}

/// c2's real peerd certificate, claiming to be c1's other peer c3 with `clusterid: c3`,
/// is refused (it never gets c3's view, nor any); with its own cluster it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_another_peers_cluster_is_refused() {
    let mut topo = Topology::new(vec![
        Spec::new("c1", 1, "flat", &[]),
        Spec::new("c2", 2, "flat", &[]),
        Spec::new("c3", 3, "net3", &[]),
    ])
    .await;
    let c1 = topo.start("c1", true).await;
    let ca = topo.pki.cluster_ca("c2").unwrap();
    let c2 = identity(topo.pki.dir(), &ca, "c2", &trust_domain("c2"), 2);
    let cancel = CancellationToken::new();
    let (client, store) = client_with_header(&c2, peerd_identity("c1"), c1.addr, Some("c3"));
    let failure = client.failure_handle();
    client.spawn(cancel.child_token());
    eventually("the claim is refused", || failure.lock().unwrap().is_some()).await;
    let f = failure.lock().unwrap().clone().unwrap();
    assert_eq!(f.kind, FailureKind::Unauthenticated, "{}", f.message);
    assert!(
        f.message.contains(
            "clusterid c3 does not match the client certificate: spiffe://c2.local/ns/istio-system/sa/peerd is the peerd identity of c2"
        ),
        "{}",
        f.message
    );
    assert!(store.get("c1").is_none_or(|o| o.view.snapshot().is_empty()));
    let (client, store) = client_with_header(&c2, peerd_identity("c1"), c1.addr, Some("c2"));
    client.spawn(cancel.child_token());
    eventually("c2 is served as c2", || {
        store
            .get("c1")
            .is_some_and(|o| o.is_fully_synced() && !o.view.snapshot().is_empty())
    })
    .await;
    cancel.cancel();
}

/// A server presenting a workload certificate of the shared root
/// (`spiffe://c1.local/ns/bookinfo/sa/reviews`, e.g. someone intercepting traffic to the
/// east-west gateway) where c2 expects c1's peerd: c2's upstream client refuses it,
/// `PeerConnected` is False with `IdentityMismatch` naming the expected and the presented
/// IDs, and nothing is imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_certificate_posing_as_a_peer_server_is_identity_mismatch() {
    let mut topo = two_flat_clusters().await;
    let c1 = topo.start("c1", true).await;
    // The impostor serves c1's real views, so only the identity can make c2 refuse it.
    let ca = topo.pki.cluster_ca("c1").unwrap();
    let reviews = identity_as(
        topo.pki.dir(),
        &ca,
        "reviews-server",
        SpiffeId::new(&trust_domain("c1"), "bookinfo", "reviews").unwrap(),
        1,
    );
    let tls = server_config(
        reviews.cert.clone(),
        &ServerTlsOptions {
            client_auth: ClientAuth::Optional(Arc::clone(&reviews.roots).into()),
            allow_tls12: false,
        },
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = AdsServer::new(
        c1.fed
            .selector(Some(Arc::new(StaticTokenVerifier::from_literal(
                TOKEN, "ztunnel",
            )))),
        ServerOptions::default(),
    );
    let cancel = CancellationToken::new();
    let sd = cancel.clone();
    tokio::spawn(async move { server.serve(listener, tls, sd).await });

    let tls = c2_client_tls(&topo, ServerIdentity::Spiffe(peerd_identity("c1")));
    let store = Store::new();
    let client = AdsClient::new(client_options("c1", addr, tls), Arc::clone(&store));
    let failure = client.failure_handle();
    let status =
        peer_status_while_failing("c2", "c1", addr, client, Arc::clone(&store), &cancel).await;
    let message = assert_not_connected(&status, "IdentityMismatch");
    assert!(
        message.contains("expected spiffe://c1.local/ns/istio-system/sa/peerd"),
        "{message}"
    );
    assert!(
        message.contains("certificate presents spiffe://c1.local/ns/bookinfo/sa/reviews"),
        "{message}"
    );
    assert!(
        message.contains("peering.solo.io/peerd-identity"),
        "the hint: {message}"
    );
    assert_eq!(
        failure.lock().unwrap().as_ref().unwrap().kind,
        FailureKind::IdentityMismatch
    );
    assert!(store.get("c1").is_none_or(|o| o.view.snapshot().is_empty()));
    cancel.cancel();
}
