//! The delta-ADS client over real TLS on loopback: against the real server (end to end,
//! store equals view) and against a scripted upstream (exact wire exchange, bad inputs,
//! failures). Every failure test also checks that what was stored before is intact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod xds_support;

use std::sync::Arc;
use std::time::Duration;

use peerd::proto::envoy::service::discovery::v3 as discovery;
use peerd::proto::istio::workload;
use peerd::store::Store;
use peerd::view::View;
use peerd::xds::ResourceType::{Address, Authorization};
use peerd::xds::auth::{BearerTokenSelector, StaticTokenVerifier};
use peerd::xds::client::{AdsClient, ClientOptions, FailureKind, ResourceFilter, TokenSource};
use peerd::xds::server::ServerOptions;
use peerd::xds::{Resource, ResourceType};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use xds_support::*;

const ORIGIN: &str = "cluster-b";

fn options(addr: std::net::SocketAddr, trust: &Pki) -> ClientOptions {
    let mut o = ClientOptions::new(
        ORIGIN,
        addr.to_string(),
        "127.0.0.1",
        client_tls(trust, None),
    );
    o.node.id = "peerd~127.0.0.1~peerd-x.istio-system~istio-system.svc.cluster.local".into();
    o.backoff_initial = Duration::from_millis(20);
    o.backoff_max = Duration::from_millis(200);
    o.token = Some(TokenSource::Literal("peer-token".into()));
    o.headers = vec![("clusterid".into(), "cluster-a".into())];
    o
}

struct Running {
    stats: Arc<peerd::xds::stats::StreamStats>,
    failure: Arc<std::sync::Mutex<Option<peerd::xds::client::Failure>>>,
    cancel: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Running {
    fn failure(&self) -> Option<FailureKind> {
        self.failure.lock().unwrap().as_ref().map(|f| f.kind)
    }

    fn failure_detail(&self) -> Option<peerd::xds::client::Failure> {
        self.failure.lock().unwrap().clone()
    }
}

fn run(client: AdsClient) -> Running {
    let cancel = CancellationToken::new();
    let r = Running {
        stats: client.stats(),
        failure: client.failure_handle(),
        cancel: cancel.clone(),
    };
    client.spawn(cancel);
    r
}

fn stored(store: &Store, kind: ResourceType) -> Held {
    Held::of_view(&store.origin(ORIGIN).view, kind)
}

/// Seeds the store as if an earlier session had received these.
fn seed(store: &Store) -> Held {
    store.apply(
        ORIGIN,
        Address,
        vec![wl("c2//Pod/default/old", [10, 8, 0, 1])],
        vec![],
    );
    stored(store, Address)
}

/// Receives both initial requests and answers them (Address with `resources`).
async fn sync(up: &mut UpstreamStream, resources: Vec<discovery::Resource>) {
    let a = up.recv().await;
    let b = up.recv().await;
    assert_eq!(a.type_url, Address.type_url(), "Address first");
    assert_eq!(b.type_url, Authorization.type_url());
    up.send(response(Address, "a1", resources, &[])).await;
    assert!(up.recv().await.error_detail.is_none());
    up.send(response(Authorization, "z1", vec![], &[])).await;
    assert!(up.recv().await.error_detail.is_none());
}

#[tokio::test]
async fn client_mirrors_a_served_view_end_to_end() {
    let view = View::new("export");
    view.apply(
        Address,
        [
            wl("c2//Pod/default/a", [10, 0, 0, 1]),
            svc("default", "echo.default.mesh.internal", [10, 96, 0, 1]),
        ],
        [],
    );
    // Authorization stays empty at first: the client must still sync it.
    let selector = Arc::new(BearerTokenSelector {
        verifier: Arc::new(StaticTokenVerifier::from_literal("peer-token", "peer")),
        view: Arc::clone(&view),
        label: "export".into(),
    });
    let server = start_server(selector, ServerOptions::default()).await;
    let store = Store::new();
    let client = run(AdsClient::new(
        options(server.addr, &server.pki),
        Arc::clone(&store),
    ));
    eventually("both types synced", || {
        store.origin(ORIGIN).is_fully_synced()
    })
    .await;
    assert_eq!(stored(&store, Address), Held::of_view(&view, Address));
    // Churn: adds, updates, removals of both types.
    for i in 0u8..10 {
        view.apply(
            Address,
            [wl(&format!("c2//Pod/default/p{i}"), [10, 1, 0, i])],
            [],
        );
        view.apply(Authorization, [authz("default", &format!("pol{i}"))], []);
    }
    view.apply(
        Address,
        [wl_named("c2//Pod/default/a", [10, 0, 0, 1], "updated")],
        [Arc::from("c2//Pod/default/p3")],
    );
    view.apply(Authorization, [], [Arc::from("default/pol7")]);
    eventually("store equals view", || {
        stored(&store, Address) == Held::of_view(&view, Address)
            && stored(&store, Authorization) == Held::of_view(&view, Authorization)
    })
    .await;
    let snap = client.stats.snapshot();
    assert!(snap.connected);
    assert!(snap.address_type.synced && snap.authorization_type.synced);
    assert_eq!(snap.address_type.nacks_sent, 0);
    assert!(snap.address_type.acks >= 1);
    assert_eq!(snap.authorization_type.resources, 9);
    // The server sees the client's node and ACKs.
    assert!(
        server
            .server
            .subscribers()
            .wait_all_acked("export", view.snapshot().version, WAIT)
            .await
    );
    assert_eq!(
        server.server.subscribers().list()[0].node_id,
        "peerd~127.0.0.1~peerd-x.istio-system~istio-system.svc.cluster.local"
    );
}

#[tokio::test]
async fn wire_exchange_matches_ztunnel_and_reconnect_offers_held_versions() {
    let mut upstream = ScriptedUpstream::start().await;
    let store = Store::new();
    let client = run(AdsClient::new(
        options(upstream.addr, &upstream.pki),
        Arc::clone(&store),
    ));
    let mut up = upstream.next_stream().await;
    // Headers like ztunnel's: bearer token and clusterid.
    assert_eq!(
        up.metadata.get("authorization").unwrap().to_str().unwrap(),
        "Bearer peer-token"
    );
    assert_eq!(
        up.metadata.get("clusterid").unwrap().to_str().unwrap(),
        "cluster-a"
    );
    let a = up.recv().await;
    assert_eq!(a.type_url, Address.type_url());
    assert!(a.node.as_ref().is_some_and(|n| n.id.starts_with("peerd~")));
    assert!(a.initial_resource_versions.is_empty());
    assert!(a.resource_names_subscribe.is_empty() && a.resource_names_unsubscribe.is_empty());
    let b = up.recv().await;
    assert_eq!(b.type_url, Authorization.type_url());
    let good = wl("c2//Pod/default/a", [10, 0, 0, 1]);
    let mut bad = wire(&wl("c2//Pod/default/bad", [10, 0, 0, 2]));
    bad.resource.as_mut().unwrap().value = vec![0xff, 0xff, 0xff].into();
    up.send(response(Address, "n1", vec![wire(&good), bad], &[]))
        .await;
    let nack = up.recv().await;
    // A NACK: type + nonce + error_detail with code 0; no node, no names.
    assert_eq!(nack.response_nonce, "n1");
    assert!(nack.node.is_none() && nack.resource_names_subscribe.is_empty());
    let detail = nack.error_detail.unwrap();
    assert_eq!(detail.code, 0);
    assert!(
        detail
            .message
            .starts_with("c2//Pod/default/bad: cannot decode"),
        "{}",
        detail.message
    );
    up.send(response(
        Authorization,
        "n2",
        vec![wire(&authz("default", "allow"))],
        &[],
    ))
    .await;
    let ack = up.recv().await;
    assert_eq!(ack.response_nonce, "n2");
    assert!(ack.error_detail.is_none() && ack.node.is_none());
    eventually("synced", || store.origin(ORIGIN).is_fully_synced()).await;

    // The upstream ends the stream: state stays, the client reconnects and offers exactly
    // what it holds (the rejected resource is not among it).
    drop(up);
    let mut up = upstream.next_stream().await;
    assert_eq!(
        stored(&store, Address).0.len(),
        1,
        "nothing lost on disconnect"
    );
    let a = up.recv().await;
    let want: std::collections::HashMap<String, String> =
        [(good.name.to_string(), good.version.to_string())].into();
    assert_eq!(a.initial_resource_versions, want);
    assert!(a.node.is_some());
    let b = up.recv().await;
    assert_eq!(b.initial_resource_versions.len(), 1);
    assert!(b.initial_resource_versions.contains_key("default/allow"));
    // Removals apply.
    up.send(response(Address, "n3", vec![], &["c2//Pod/default/a"]))
        .await;
    assert!(up.recv().await.error_detail.is_none());
    eventually("removal applied", || stored(&store, Address).0.is_empty()).await;
    assert!(client.stats.snapshot().reconnects >= 1);
    assert_eq!(client.stats.snapshot().address_type.nacks_sent, 1);
}

/// The peer's grace period ends just after its reconnected stream offered the versions it
/// held, so federation withdraws the origin while the upstream answers with a diff against
/// it. Storing that diff as the peer's whole state would lose everything unchanged for
/// good (found by `cargo xtask chaos`): the client must resubscribe from scratch instead.
#[tokio::test]
async fn a_withdrawal_during_a_resync_restarts_the_session_from_scratch() {
    let mut upstream = ScriptedUpstream::start().await;
    let store = Store::new();
    let a = wl("c2//Pod/default/a", [10, 0, 0, 1]);
    let b = wl("c2//Pod/default/b", [10, 0, 0, 2]);
    let c = wl("c2//Pod/default/c", [10, 0, 0, 3]);
    store.apply(ORIGIN, Address, vec![a.clone(), b.clone()], vec![]);
    let client = run(AdsClient::new(
        options(upstream.addr, &upstream.pki),
        Arc::clone(&store),
    ));
    let mut up = upstream.next_stream().await;
    assert_eq!(up.recv().await.initial_resource_versions.len(), 2);
    let _ = up.recv().await;
    // Federation's sweep: the grace period is over.
    assert!(store.remove(ORIGIN));
    // What changed since the offered versions: one new workload.
    up.send(response(Address, "diff", vec![wire(&c)], &[]))
        .await;
    let mut up = upstream.next_stream().await;
    let address = up.recv().await;
    assert!(
        address.initial_resource_versions.is_empty(),
        "the new session offers nothing: {:?}",
        address.initial_resource_versions
    );
    assert!(up.recv().await.initial_resource_versions.is_empty());
    up.send(response(
        Address,
        "full",
        vec![wire(&a), wire(&b), wire(&c)],
        &[],
    ))
    .await;
    assert!(up.recv().await.error_detail.is_none());
    up.send(response(Authorization, "z", vec![], &[])).await;
    assert!(up.recv().await.error_detail.is_none());
    eventually("synced again", || {
        store.get(ORIGIN).is_some_and(|o| o.is_fully_synced())
    })
    .await;
    let held: Vec<String> = stored(&store, Address).0.into_keys().collect();
    assert_eq!(
        held,
        [
            "c2//Pod/default/a",
            "c2//Pod/default/b",
            "c2//Pod/default/c"
        ]
    );
    assert!(client.stats.snapshot().reconnects >= 1);
}

#[tokio::test]
async fn a_large_response_is_stored_in_parts_then_marked_synced() {
    let mut upstream = ScriptedUpstream::start().await;
    let store = Store::new();
    let before = seed(&store);
    let mut events = store.subscribe();
    let _client = run(AdsClient::new(
        options(upstream.addr, &upstream.pki),
        Arc::clone(&store),
    ));
    let mut up = upstream.next_stream().await;
    let _ = up.recv().await;
    let _ = up.recv().await;
    let pods: Vec<Arc<Resource>> = (0..20_000u32)
        .map(|i| {
            let [_, _, hi, lo] = i.to_be_bytes();
            wl(&format!("c2//Pod/default/p{i}"), [10, 9, hi, lo])
        })
        .collect();
    // One removal of a held name, one of a name the response also sends (kept).
    up.send(response(
        Address,
        "big",
        pods.iter().map(|r| wire(r)).collect(),
        &["c2//Pod/default/old", "c2//Pod/default/p7"],
    ))
    .await;
    assert!(up.recv().await.error_detail.is_none(), "ACKed");
    let mut parts = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            peerd::store::StoreEvent::Changed { change, .. } => parts.push(change.names.len()),
            peerd::store::StoreEvent::Synced { kind, .. } => {
                assert_eq!(kind, Address);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // 20,000 upserts in parts of 8192, the removal with the last part; all of it before
    // the type is marked synced.
    assert_eq!(parts, vec![8192, 8192, 20_000 - 2 * 8192 + 1]);
    let held = stored(&store, Address);
    assert_eq!(held.0.len(), 20_000);
    assert!(held.0.contains_key("c2//Pod/default/p7"));
    assert!(!held.0.contains_key("c2//Pod/default/old"));
    assert!(
        before.0.contains_key("c2//Pod/default/old"),
        "the removal had something to remove"
    );
}

#[tokio::test]
async fn bad_resources_are_nacked_by_name_and_the_good_ones_applied() {
    let mut upstream = ScriptedUpstream::start().await;
    let store = Store::new();
    let client = run(AdsClient::new(
        options(upstream.addr, &upstream.pki),
        Arc::clone(&store),
    ));
    let mut up = upstream.next_stream().await;
    let a_v1 = wl("c2//Pod/default/a", [10, 0, 0, 1]);
    sync(&mut up, vec![wire(&a_v1)]).await;
    let before = stored(&store, Address);

    let good = wl("c2//Pod/default/good", [10, 0, 0, 3]);
    // An update of a stored resource that is malformed: the old version must stay.
    let mut a_broken = wire(&a_v1);
    a_broken.version = "v2".into();
    a_broken.resource.as_mut().unwrap().value = vec![0x0a, 0x05, 0x01].into();
    let mut wrong_type = wire(&wl("c2//Pod/default/wrong-type", [10, 0, 0, 4]));
    wrong_type.resource.as_mut().unwrap().type_url = Authorization.type_url().into();
    let mut no_payload = wire(&wl("c2//Pod/default/no-payload", [10, 0, 0, 5]));
    no_payload.resource = None;
    let bad_ip_body = workload::Address {
        r#type: Some(workload::address::Type::Workload(workload::Workload {
            uid: "c2//Pod/default/bad-ip".into(),
            addresses: vec![vec![10, 0, 0, 0, 6]],
            ..Default::default()
        })),
    }
    .encode_to_vec();
    let bad_ip = discovery::Resource {
        name: "c2//Pod/default/bad-ip".into(),
        version: "v1".into(),
        resource: Some(peerd::xds::any::Any {
            type_url: Address.type_url().into(),
            value: bad_ip_body.into(),
        }),
        ..Default::default()
    };
    let dup1 = wire(&wl("c2//Pod/default/dup", [10, 0, 0, 7]));
    let dup2 = wire(&wl_named("c2//Pod/default/dup", [10, 0, 0, 7], "other"));
    up.send(response(
        Address,
        "n9",
        vec![
            wire(&good),
            a_broken,
            wrong_type,
            no_payload,
            bad_ip,
            dup1,
            dup2,
        ],
        &[],
    ))
    .await;
    let nack = up.recv().await;
    assert_eq!(nack.response_nonce, "n9");
    let message = nack.error_detail.unwrap().message;
    let parts: Vec<&str> = message.split("; ").collect();
    assert_eq!(parts.len(), 5, "{message}");
    for (name, reason) in [
        ("c2//Pod/default/dup", "duplicate name"),
        ("c2//Pod/default/a", "cannot decode"),
        ("c2//Pod/default/wrong-type", "does not match response type"),
        ("c2//Pod/default/no-payload", "no payload"),
        ("c2//Pod/default/bad-ip", "5 bytes"),
    ] {
        assert!(
            parts
                .iter()
                .any(|p| p.starts_with(&format!("{name}: ")) && p.contains(reason)),
            "{name} / {reason} not in {message}"
        );
    }
    eventually("good resource applied", || {
        stored(&store, Address)
            .0
            .contains_key("c2//Pod/default/good")
    })
    .await;
    let now = stored(&store, Address);
    assert_eq!(now.0.len(), 2, "only a (old) and good: {:?}", now.0.keys());
    assert_eq!(
        now.0["c2//Pod/default/a"], before.0["c2//Pod/default/a"],
        "old a intact"
    );
    let snap = client.stats.snapshot();
    assert_eq!(snap.address_type.nacks_sent, 1);
    assert_eq!(snap.address_type.last_nack_message, message);
}

struct ClusterClaim;

impl ResourceFilter for ClusterClaim {
    fn check(&self, origin: &str, r: &Resource) -> Result<(), String> {
        match r.as_workload() {
            Some(w) if !w.uid.starts_with(&format!("{origin}//")) => {
                Err(format!("claims a cluster other than {origin}"))
            }
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn resource_filter_rejections_are_nacked_and_not_stored() {
    let mut upstream = ScriptedUpstream::start().await;
    let store = Store::new();
    let _client = run(
        AdsClient::new(options(upstream.addr, &upstream.pki), Arc::clone(&store))
            .with_filter(Arc::new(ClusterClaim)),
    );
    let mut up = upstream.next_stream().await;
    up.recv().await;
    up.recv().await;
    up.send(response(
        Address,
        "n1",
        vec![
            wire(&wl("cluster-b//Pod/default/ok", [10, 0, 0, 1])),
            wire(&wl("c9//Pod/default/x", [10, 0, 0, 2])),
        ],
        &[],
    ))
    .await;
    let nack = up.recv().await;
    assert_eq!(
        nack.error_detail.unwrap().message,
        "c9//Pod/default/x: claims a cluster other than cluster-b"
    );
    let held = stored(&store, Address);
    assert_eq!(
        held.0.keys().collect::<Vec<_>>(),
        vec!["cluster-b//Pod/default/ok"]
    );
}

#[tokio::test]
async fn unknown_response_type_is_acked_and_ignored() {
    let mut upstream = ScriptedUpstream::start().await;
    let store = Store::new();
    let seeded = seed(&store);
    let _client = run(AdsClient::new(
        options(upstream.addr, &upstream.pki),
        Arc::clone(&store),
    ));
    let mut up = upstream.next_stream().await;
    up.recv().await;
    up.recv().await;
    let mut r = response(Address, "u1", vec![], &[]);
    r.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
    up.send(r).await;
    let ack = up.recv().await;
    assert_eq!(
        ack.type_url,
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(ack.response_nonce, "u1");
    assert!(ack.error_detail.is_none());
    assert_eq!(stored(&store, Address), seeded);
}

#[tokio::test]
async fn oversized_response_fails_the_stream_and_keeps_state() {
    let mut upstream = ScriptedUpstream::start().await;
    let store = Store::new();
    let mut o = options(upstream.addr, &upstream.pki);
    o.max_message_size = 64 * 1024;
    let client = run(AdsClient::new(o, Arc::clone(&store)));
    let mut up = upstream.next_stream().await;
    sync(&mut up, vec![wire(&wl("c2//Pod/default/a", [10, 0, 0, 1]))]).await;
    let before = stored(&store, Address);
    let huge = wl_named(
        "c2//Pod/default/huge",
        [10, 0, 0, 2],
        &"z".repeat(200 * 1024),
    );
    up.send(response(Address, "big", vec![wire(&huge)], &[]))
        .await;
    // The client drops the stream and comes back.
    let _again = upstream.next_stream().await;
    eventually("error recorded", || {
        client.failure() == Some(FailureKind::MessageTooLarge)
    })
    .await;
    let err = client.stats.snapshot().last_error;
    assert!(err.contains("too large"), "{err}");
    assert_eq!(stored(&store, Address), before);
}

#[tokio::test]
async fn silent_upstream_is_reported_and_a_late_answer_still_syncs() {
    let mut upstream = ScriptedUpstream::start().await;
    let store = Store::new();
    let seeded = seed(&store);
    let mut o = options(upstream.addr, &upstream.pki);
    o.response_timeout = Duration::from_millis(300);
    let client = run(AdsClient::new(o, Arc::clone(&store)));
    let mut up = upstream.next_stream().await;
    let a = up.recv().await;
    assert_eq!(
        a.initial_resource_versions.len(),
        1,
        "held resources are offered"
    );
    up.recv().await;
    eventually("no-response error", || {
        client.failure() == Some(FailureKind::NoResponse)
    })
    .await;
    let snap = client.stats.snapshot();
    assert!(
        snap.last_error
            .contains("no response for address, authorization"),
        "{}",
        snap.last_error
    );
    assert!(snap.connected, "the stream is kept");
    assert_eq!(stored(&store, Address), seeded);
    assert!(!store.origin(ORIGIN).is_synced(Address));
    // A late answer is applied on the same stream.
    up.send(response(Address, "late", vec![], &[])).await;
    up.recv().await;
    up.send(response(Authorization, "late2", vec![], &[])).await;
    up.recv().await;
    eventually("synced", || store.origin(ORIGIN).is_fully_synced()).await;
    assert_eq!(client.failure(), None);
    assert_eq!(client.stats.snapshot().last_error, "");
    assert_eq!(
        stored(&store, Address),
        seeded,
        "empty responses remove nothing"
    );
}

#[tokio::test]
async fn connection_refused_is_classified_and_keeps_state() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let store = Store::new();
    let seeded = seed(&store);
    let pki = Pki::new("any");
    let client = run(AdsClient::new(options(addr, &pki), Arc::clone(&store)));
    eventually("refused", || {
        client.failure() == Some(FailureKind::ConnectionRefused)
    })
    .await;
    assert!(client.stats.snapshot().last_error.contains("refused"));
    assert!(!client.stats.snapshot().connected);
    assert_eq!(stored(&store, Address), seeded);
    // Each failed attempt is recorded anew, with its own time: the condition monitor
    // counts only failures it has not seen (one kept through a backoff is no news).
    let first = client.failure_detail().unwrap().at;
    eventually("a later attempt fails too", || {
        client.failure_detail().is_some_and(|f| f.at > first)
    })
    .await;
    assert_eq!(client.failure(), Some(FailureKind::ConnectionRefused));
}

#[tokio::test]
async fn tls_failure_is_classified_and_keeps_state() {
    let mut upstream = ScriptedUpstream::start().await;
    let store = Store::new();
    let seeded = seed(&store);
    let wrong = Pki::new("wrong-root");
    let client = run(AdsClient::new(
        options(upstream.addr, &wrong),
        Arc::clone(&store),
    ));
    eventually("tls failure", || client.failure() == Some(FailureKind::Tls)).await;
    let detail = client.failure_detail().unwrap();
    assert_eq!(detail.kind.condition_reason(), "TLSError");
    assert!(
        matches!(
            detail.tls,
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{:?}",
        detail.tls
    );
    let err = client.stats.snapshot().last_error;
    assert!(err.contains("TLS handshake"), "{err}");
    assert_eq!(stored(&store, Address), seeded);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), upstream.streams.recv())
            .await
            .is_err(),
        "no stream was opened"
    );
}

#[tokio::test]
async fn rejected_token_is_classified_as_unauthenticated() {
    let view = View::new("export");
    let selector = Arc::new(BearerTokenSelector {
        verifier: Arc::new(StaticTokenVerifier::from_literal("other-token", "peer")),
        view,
        label: "export".into(),
    });
    let server = start_server(selector, ServerOptions::default()).await;
    let store = Store::new();
    let seeded = seed(&store);
    let client = run(AdsClient::new(
        options(server.addr, &server.pki),
        Arc::clone(&store),
    ));
    eventually("unauthenticated", || {
        client.failure() == Some(FailureKind::Unauthenticated)
    })
    .await;
    let err = client.stats.snapshot().last_error;
    assert!(
        err.contains("Unauthenticated") && !err.contains("peer-token"),
        "{err}"
    );
    assert_eq!(stored(&store, Address), seeded);
}

#[tokio::test]
async fn handshake_that_never_completes_is_a_connect_timeout() {
    // Accepts TCP, never answers the TLS ClientHello.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held_open = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            sockets.push(s);
        }
    });
    let store = Store::new();
    let seeded = seed(&store);
    let pki = Pki::new("any");
    let mut o = options(addr, &pki);
    o.connect_timeout = Duration::from_millis(300);
    let client = run(AdsClient::new(o, Arc::clone(&store)));
    eventually("connect timeout", || {
        client.failure() == Some(FailureKind::ConnectTimeout)
    })
    .await;
    assert!(client.stats.snapshot().last_error.contains("timed out"));
    assert_eq!(stored(&store, Address), seeded);
    held_open.abort();
}

#[tokio::test]
async fn token_file_is_reread_on_every_connect() {
    let view = View::new("export");
    view.apply(Authorization, [authz("default", "allow")], []);
    let selector = Arc::new(BearerTokenSelector {
        verifier: Arc::new(StaticTokenVerifier::from_literal("rotated-token", "peer")),
        view: Arc::clone(&view),
        label: "export".into(),
    });
    let server = start_server(selector, ServerOptions::default()).await;
    let path = std::env::temp_dir().join(format!("peerd-xds-token-{}", std::process::id()));
    std::fs::write(&path, "stale-token\n").unwrap();
    let store = Store::new();
    let mut o = options(server.addr, &server.pki);
    o.token = Some(TokenSource::File(path.clone()));
    let client = run(AdsClient::new(o, Arc::clone(&store)));
    eventually("unauthenticated", || {
        client.failure() == Some(FailureKind::Unauthenticated)
    })
    .await;
    std::fs::write(&path, "rotated-token\n").unwrap();
    eventually("synced after rotation", || {
        store.origin(ORIGIN).is_fully_synced()
    })
    .await;
    assert_eq!(
        stored(&store, Authorization),
        Held::of_view(&view, Authorization)
    );
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn server_certificate_for_another_name_is_an_identity_mismatch() {
    let mut upstream = ScriptedUpstream::start().await;
    let store = Store::new();
    let seeded = seed(&store);
    let mut o = options(upstream.addr, &upstream.pki);
    o.server_name = "istiod.istio-system.svc".into();
    let client = run(AdsClient::new(o, Arc::clone(&store)));
    eventually("identity mismatch", || {
        client.failure() == Some(FailureKind::IdentityMismatch)
    })
    .await;
    assert_eq!(
        client.failure_detail().unwrap().kind.condition_reason(),
        "IdentityMismatch"
    );
    assert!(client.stats.snapshot().last_error.contains("TLS handshake"));
    assert_eq!(stored(&store, Address), seeded);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), upstream.streams.recv())
            .await
            .is_err()
    );
}
