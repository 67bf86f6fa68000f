//! The delta-ADS server against a scripted ztunnel-like client, over real TLS on
//! loopback: initial sync, wildcard / on-demand / explicit subscriptions, pushes,
//! debounce, reconnect diffs, NACKs, slow clients, auth and bad inputs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod xds_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use peerd::debug::check::{Outcome, check_message_size};
use peerd::debug::convert::subscriber;
use peerd::view::View;
use peerd::xds::ResourceType;
use peerd::xds::ResourceType::{Address, Authorization};
use peerd::xds::auth::{
    BearerTokenSelector, ConnectionInfo, OpenSelector, Selected, StaticTokenVerifier, ViewSelector,
};
use peerd::xds::server::ServerOptions;
use xds_support::*;

fn open(view: &Arc<View>) -> Arc<dyn ViewSelector> {
    Arc::new(OpenSelector {
        view: Arc::clone(view),
        label: "downstream".into(),
    })
}

fn names(
    r: &peerd::proto::envoy::service::discovery::v3::DeltaDiscoveryResponse,
) -> BTreeSet<String> {
    r.resources.iter().map(|x| x.name.clone()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn ztunnel(server: &TestServer) -> Downstream {
    Downstream::connect(server.addr, client_tls(&server.pki, None), None)
        .await
        .unwrap()
}

#[tokio::test]
async fn initial_sync_answers_both_types_even_when_empty() {
    let view = View::new("merged");
    view.apply(
        Address,
        [
            wl("c1//Pod/default/a", [10, 0, 0, 1]),
            svc("default", "echo.default.svc.cluster.local", [10, 96, 0, 1]),
        ],
        [],
    );
    let server = start_server(open(&view), ServerOptions::default()).await;
    let mut z = ztunnel(&server).await;
    // ztunnel sends both initial requests back to back before any response.
    z.initial(Address, &[], &[], &[]).await;
    z.initial(Authorization, &[], &[], &[]).await;
    let a = z.recv_ack().await;
    let b = z.recv_ack().await;
    assert_eq!(a.type_url, Address.type_url());
    assert_eq!(
        names(&a),
        set(&[
            "c1//Pod/default/a",
            "default/echo.default.svc.cluster.local"
        ])
    );
    assert_eq!(b.type_url, Authorization.type_url());
    assert!(
        b.resources.is_empty() && b.removed_resources.is_empty(),
        "empty response for the empty type"
    );
    // Versions served are the view's resource versions.
    for r in &a.resources {
        let held = view.snapshot().get(Address, &r.name).unwrap().clone();
        assert_eq!(r.version, &*held.version);
        assert_eq!(r.resource.as_ref().unwrap().value, held.body.to_vec());
    }
    let subs = server.server.subscribers();
    let version = view.snapshot().version;
    assert!(subs.wait_all_acked("downstream", version, WAIT).await);
    let list = subs.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].node_id, ztunnel_node().id);
    assert_eq!(list[0].stats.address_type.acks, 1);
    assert_eq!(list[0].stats.address_type.resources, 2);
    assert_eq!(list[0].stats.address_type.last_nonce_acked, a.nonce);
    assert!(list[0].stats.connected);
    assert!(list[0].remote_addr.starts_with("127.0.0.1:"));
}

#[tokio::test]
async fn on_demand_start_then_lookups_are_always_answered() {
    let view = View::new("merged");
    view.apply(
        Address,
        [
            wl("c1//Pod/default/a", [127, 0, 0, 2]),
            svc("default", "echo.default.svc.cluster.local", [127, 0, 0, 50]),
        ],
        [],
    );
    view.apply(Authorization, [authz("default", "allow")], []);
    let server = start_server(open(&view), ServerOptions::default()).await;
    let mut z = ztunnel(&server).await;
    z.initial(Address, &["*"], &["*"], &[]).await;
    z.initial(Authorization, &[], &[], &[]).await;
    let first = z.recv_ack().await;
    let second = z.recv_ack().await;
    let (addr_r, authz_r) = if first.type_url == Address.type_url() {
        (&first, &second)
    } else {
        (&second, &first)
    };
    assert_eq!(addr_r.type_url, Address.type_url());
    assert!(
        addr_r.resources.is_empty(),
        "subscribe [*] + unsubscribe [*] = nothing"
    );
    assert_eq!(names(authz_r), set(&["default/allow"]));

    // Found by network/IP: answered under the requested key.
    z.subscribe(Address, &["/127.0.0.2"]).await;
    let r = z.recv_ack().await;
    assert_eq!(names(&r), set(&["/127.0.0.2"]));
    // Not found: the key comes back as removed (ztunnel would hang otherwise).
    z.subscribe(Address, &["/127.0.0.99"]).await;
    let r = z.recv_ack().await;
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, vec!["/127.0.0.99".to_string()]);
    // By uid and by namespace/hostname.
    z.subscribe(
        Address,
        &[
            "c1//Pod/default/a",
            "default/echo.default.svc.cluster.local",
        ],
    )
    .await;
    let r = z.recv_ack().await;
    assert_eq!(
        names(&r),
        set(&[
            "c1//Pod/default/a",
            "default/echo.default.svc.cluster.local"
        ])
    );
    // A change to a looked-up workload is pushed under each key the client holds it by,
    // and unrelated additions are not pushed (no wildcard).
    view.apply(
        Address,
        [
            wl_named("c1//Pod/default/a", [127, 0, 0, 2], "renamed"),
            wl("c1//Pod/default/other", [127, 0, 0, 3]),
        ],
        [],
    );
    let r = z.recv_ack().await;
    assert_eq!(names(&r), set(&["/127.0.0.2", "c1//Pod/default/a"]));
    // The workload moves off the looked-up IP: that key is removed.
    view.apply(Address, [wl("c1//Pod/default/a", [127, 0, 0, 9])], []);
    let r = z.recv_ack().await;
    assert_eq!(r.removed_resources, vec!["/127.0.0.2".to_string()]);
    assert_eq!(names(&r), set(&["c1//Pod/default/a"]));
}

#[tokio::test]
async fn explicit_subscription_gets_only_named_resources() {
    let view = View::new("merged");
    view.apply(
        Authorization,
        [authz("default", "a"), authz("default", "b")],
        [],
    );
    let server = start_server(open(&view), ServerOptions::default()).await;
    let mut z = ztunnel(&server).await;
    z.initial(Authorization, &["default/a", "default/missing"], &[], &[])
        .await;
    let r = z.recv_ack().await;
    assert_eq!(names(&r), set(&["default/a"]));
    assert_eq!(r.removed_resources, vec!["default/missing".to_string()]);
    // b changes: not pushed. a is removed: pushed as removed.
    view.apply(Authorization, [], [Arc::from("default/b")]);
    view.apply(Authorization, [], [Arc::from("default/a")]);
    let r = z.recv_ack().await;
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, vec!["default/a".to_string()]);
    // Subscribing later to another name answers it.
    view.apply(Authorization, [authz("default", "c")], []);
    z.subscribe(Authorization, &["default/c"]).await;
    let r = z.recv_ack().await;
    assert_eq!(names(&r), set(&["default/c"]));
}

#[tokio::test]
async fn churn_is_pushed_with_removals_and_converges() {
    let view = View::new("merged");
    view.apply(
        Address,
        (0u8..5).map(|i| wl(&format!("u/pre-{i}"), [10, 9, 0, i])),
        [],
    );
    view.apply(Authorization, [authz("default", "pol1")], []);
    let server = start_server(open(&view), ServerOptions::default()).await;
    let mut z = ztunnel(&server).await;
    z.initial(Address, &[], &[], &[]).await;
    z.initial(Authorization, &[], &[], &[]).await;
    let mut held = [Held::default(), Held::default()];
    for _ in 0..2 {
        let r = z.recv_ack().await;
        held[ResourceType::from_type_url(&r.type_url).unwrap().index()].apply(&r);
    }
    let mut saw_removal = false;
    for round in 0u8..20 {
        let adds: Vec<_> = (0u8..5)
            .map(|i| wl(&format!("c1//Pod/default/p{round}-{i}"), [10, 1, round, i]))
            .collect();
        view.apply(Address, adds, []);
        if round > 0 {
            view.apply(
                Address,
                [],
                [Arc::from(format!("c1//Pod/default/p{}-0", round - 1))],
            );
        }
        view.apply(
            Authorization,
            [authz("default", &format!("pol{}", round % 3))],
            [],
        );
        if round == 10 {
            // Removals of what the client holds since the initial sync.
            view.apply(Address, [], (0..5).map(|i| Arc::from(format!("u/pre-{i}"))));
        }
    }
    view.apply(Authorization, [], [Arc::from("default/pol1")]);
    let want = [
        Held::of_view(&view, Address),
        Held::of_view(&view, Authorization),
    ];
    while held != want {
        let r = z.recv_ack().await;
        saw_removal |= !r.removed_resources.is_empty();
        held[ResourceType::from_type_url(&r.type_url).unwrap().index()].apply(&r);
    }
    assert!(saw_removal);
    assert_eq!(held[0].0.len(), 20 * 4 + 1);
    assert!(
        server
            .server
            .subscribers()
            .wait_all_acked("downstream", view.snapshot().version, WAIT)
            .await
    );
}

#[tokio::test]
async fn debounce_coalesces_bursts_and_delivers_the_last_state() {
    let view = View::new("merged");
    let options = ServerOptions {
        debounce: Duration::from_millis(500),
        ..ServerOptions::default()
    };
    let server = start_server(open(&view), options).await;
    let mut z = ztunnel(&server).await;
    z.initial(Address, &[], &[], &[]).await;
    let mut held = Held::default();
    held.apply(&z.recv_ack().await);
    // 200 writes to the same workload in a burst (no await in between).
    for i in 0..200u32 {
        view.apply(
            Address,
            [wl_named(
                "c1//Pod/default/a",
                [10, 0, 0, 1],
                &format!("rev-{i}"),
            )],
            [],
        );
    }
    let want = Held::of_view(&view, Address);
    let mut responses = 0;
    while held != want {
        held.apply(&z.recv_ack().await);
        responses += 1;
    }
    assert!(responses < 200, "{responses} responses for 200 writes");
    assert_eq!(held, want, "the last state is delivered");
}

#[tokio::test]
async fn reconnect_with_initial_versions_gets_only_the_diff() {
    let view = View::new("merged");
    view.apply(
        Address,
        [
            wl("u/a", [10, 0, 0, 1]),
            wl("u/b", [10, 0, 0, 2]),
            wl("u/c", [10, 0, 0, 3]),
        ],
        [],
    );
    let server = start_server(open(&view), ServerOptions::default()).await;
    let mut z = ztunnel(&server).await;
    z.initial(Address, &[], &[], &[]).await;
    let first = z.recv_ack().await;
    let versions: std::collections::HashMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(z);
    view.apply(
        Address,
        [
            wl_named("u/b", [10, 0, 0, 2], "changed"),
            wl("u/d", [10, 0, 0, 4]),
        ],
        [Arc::from("u/c")],
    );
    let mut z = ztunnel(&server).await;
    let held: Vec<(&str, &str)> = versions
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    z.initial(Address, &[], &[], &held).await;
    let r = z.recv_ack().await;
    assert_eq!(
        names(&r),
        set(&["u/b", "u/d"]),
        "unchanged u/a is not resent"
    );
    assert_eq!(r.removed_resources, vec!["u/c".to_string()]);
    // A reconnect that already holds everything still gets a (empty) response.
    let now: Vec<(String, String)> = Held::of_view(&view, Address)
        .0
        .into_iter()
        .map(|(n, (v, _))| (n, v))
        .collect();
    let mut z2 = ztunnel(&server).await;
    let held: Vec<(&str, &str)> = now.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    z2.initial(Address, &[], &[], &held).await;
    let r = z2.recv_ack().await;
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
}

#[tokio::test]
async fn nack_is_recorded_and_recovers_on_the_next_version() {
    let view = View::new("merged");
    view.apply(
        Address,
        [wl("u/a", [10, 0, 0, 1]), wl("u/b", [10, 0, 0, 2])],
        [],
    );
    let server = start_server(open(&view), ServerOptions::default()).await;
    let subs = server.server.subscribers();
    let mut events = subs.ack_events();
    let mut z = ztunnel(&server).await;
    z.initial(Address, &[], &[], &[]).await;
    let r = z.recv().await;
    z.nack(&r, "u/a: bad thing").await;
    let ev = tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.nack.as_deref(), Some("u/a: bad thing"));
    assert_eq!(ev.kind, Address);
    assert_eq!(&*ev.node, ztunnel_node().id.as_str());
    let info = &subs.list()[0];
    assert_eq!(info.stats.address_type.nacks_received, 1);
    assert_eq!(info.stats.address_type.last_nack_message, "u/a: bad thing");
    assert!(info.address.rejected);
    assert!(!subs.all_acked("downstream", view.snapshot().version));
    // The NACKed name was forgotten: its next version is sent; u/b (held) is not resent.
    view.apply(Address, [wl_named("u/a", [10, 0, 0, 1], "fixed")], []);
    let r = z.recv_ack().await;
    assert_eq!(names(&r), set(&["u/a"]));
    let ev = tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(ev.nack.is_none());
    assert!(
        subs.wait_all_acked("downstream", view.snapshot().version, WAIT)
            .await
    );
    assert!(!subs.list()[0].address.rejected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_does_not_block_a_fast_one() {
    let view = View::new("merged");
    let options = ServerOptions {
        debounce: Duration::ZERO,
        outbound_queue: 1,
        ..ServerOptions::default()
    };
    let server = start_server(open(&view), options).await;
    // The slow client subscribes and then never reads again.
    let mut slow = ztunnel(&server).await;
    slow.initial(Address, &[], &[], &[]).await;
    slow.recv_ack().await;
    let mut fast = ztunnel(&server).await;
    fast.initial(Address, &[], &[], &[]).await;
    let mut held = Held::default();
    held.apply(&fast.recv_ack().await);
    // ~8 MB of pushes: far more than the slow client's HTTP/2 windows and queue.
    let big = "x".repeat(16 * 1024);
    for i in 0..500u32 {
        let octets = i.to_be_bytes();
        view.apply(
            Address,
            [wl_named(
                &format!("u/{}", i % 50),
                [10, 2, octets[2], octets[3]],
                &format!("{big}{i}"),
            )],
            [],
        );
    }
    let want = Held::of_view(&view, Address);
    while held != want {
        held.apply(&fast.recv_ack().await);
    }
    assert_eq!(held.0.len(), 50);
    // The slow one is still connected (never dropped for being slow).
    assert_eq!(server.server.subscribers().list().len(), 2);
    drop(slow);
}

#[tokio::test]
async fn bearer_token_is_required_and_checked() {
    let view = View::new("merged");
    let selector = Arc::new(BearerTokenSelector {
        verifier: Arc::new(StaticTokenVerifier::from_literal("good-token", "ztunnel")),
        view: Arc::clone(&view),
        label: "downstream".into(),
    });
    let server = start_server(selector, ServerOptions::default()).await;
    let tls = client_tls(&server.pki, None);
    let missing = Downstream::connect(server.addr, Arc::clone(&tls), None)
        .await
        .err()
        .unwrap();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    assert!(
        missing.message().contains("missing bearer token"),
        "{}",
        missing.message()
    );
    let bad = Downstream::connect(server.addr, Arc::clone(&tls), Some("nope"))
        .await
        .err()
        .unwrap();
    assert_eq!(bad.code(), tonic::Code::Unauthenticated);
    assert!(!bad.message().contains("nope"), "the token is never echoed");
    let mut ok = Downstream::connect(server.addr, tls, Some("good-token"))
        .await
        .unwrap();
    ok.initial(Address, &[], &[], &[]).await;
    assert_eq!(ok.recv_ack().await.type_url, Address.type_url());
    assert_eq!(server.server.subscribers().list()[0].identity, "ztunnel");
}

/// A selector that gives clients with a certificate the export view, others the merged
/// one: the shape the federation layer builds.
struct CertOrOpen {
    export: Arc<View>,
    merged: Arc<View>,
}

#[tonic::async_trait]
impl ViewSelector for CertOrOpen {
    async fn select(&self, conn: &ConnectionInfo) -> Result<Selected, tonic::Status> {
        Ok(match &conn.peer_certificates {
            Some(chain) if !chain.is_empty() => Selected {
                view: Arc::clone(&self.export),
                label: "export".into(),
                identity: "peer".into(),
            },
            _ => Selected {
                view: Arc::clone(&self.merged),
                label: "downstream".into(),
                identity: String::new(),
            },
        })
    }
}

#[tokio::test]
async fn client_certificates_select_the_view_and_untrusted_ones_are_refused() {
    let export = View::new("export");
    export.apply(Authorization, [authz("default", "exported")], []);
    let merged = View::new("merged");
    let peers = Pki::new("peers");
    let selector = Arc::new(CertOrOpen {
        export: Arc::clone(&export),
        merged: Arc::clone(&merged),
    });
    let server = start_server_with(selector, ServerOptions::default(), |pki| {
        server_tls(pki, Some(&peers))
    })
    .await;
    // A trusted peer certificate gets the export view.
    let mut peer = Downstream::connect(
        server.addr,
        client_tls(&server.pki, Some(peers.leaf(&["peer.example"]))),
        None,
    )
    .await
    .unwrap();
    peer.initial(Authorization, &[], &[], &[]).await;
    assert_eq!(names(&peer.recv_ack().await), set(&["default/exported"]));
    // No certificate (ztunnel): the merged view.
    let mut z = ztunnel(&server).await;
    z.initial(Authorization, &[], &[], &[]).await;
    assert!(z.recv_ack().await.resources.is_empty());
    let labels: BTreeSet<String> = server
        .server
        .subscribers()
        .list()
        .into_iter()
        .map(|s| s.view_label)
        .collect();
    assert_eq!(labels, set(&["downstream", "export"]));
    // A certificate from an untrusted CA fails the TLS handshake.
    let stranger = Pki::new("stranger");
    let err = Downstream::connect(
        server.addr,
        client_tls(&server.pki, Some(stranger.leaf(&["evil.example"]))),
        None,
    )
    .await
    .err()
    .expect("untrusted client certificate must be refused");
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
        ),
        "{err:?}"
    );
    // The server keeps serving.
    let mut again = ztunnel(&server).await;
    again.initial(Address, &[], &[], &[]).await;
    assert_eq!(again.recv_ack().await.type_url, Address.type_url());
}

#[tokio::test]
async fn untrusted_server_certificate_fails_the_client_handshake() {
    let view = View::new("merged");
    let server = start_server(open(&view), ServerOptions::default()).await;
    let other = Pki::new("other");
    let err = Downstream::connect(server.addr, client_tls(&other, None), None)
        .await
        .err()
        .unwrap();
    assert!(err.message().contains("TLS handshake"), "{}", err.message());
}

#[tokio::test]
async fn unknown_type_gets_one_empty_response_and_the_stream_lives_on() {
    let view = View::new("merged");
    view.apply(Address, [wl("u/a", [10, 0, 0, 1])], []);
    let server = start_server(open(&view), ServerOptions::default()).await;
    let mut z = ztunnel(&server).await;
    let cluster = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    z.send(
        peerd::proto::envoy::service::discovery::v3::DeltaDiscoveryRequest {
            type_url: cluster.into(),
            node: Some(ztunnel_node()),
            ..Default::default()
        },
    )
    .await;
    let r = z.recv_ack().await;
    assert_eq!(r.type_url, cluster);
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    z.initial(Address, &[], &[], &[]).await;
    let r = z.recv_ack().await;
    assert_eq!(names(&r), set(&["u/a"]));
}

#[tokio::test]
async fn state_of_the_world_rpc_is_unimplemented() {
    let view = View::new("merged");
    let server = start_server(open(&view), ServerOptions::default()).await;
    let channel = channel_to(server.addr, client_tls(&server.pki, None))
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<
        peerd::proto::envoy::service::discovery::v3::DeltaDiscoveryRequest,
        peerd::proto::envoy::service::discovery::v3::DeltaDiscoveryResponse,
    >::default();
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    let req = tonic::Request::new(tokio_stream::iter(vec![Default::default()]));
    let err = grpc.streaming(req, path, codec).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn large_pushes_are_split_under_the_message_cap() {
    let view = View::new("merged");
    let big = "y".repeat(3000);
    let resources: Vec<_> = (0u8..40)
        .map(|i| wl_named(&format!("u/{i}"), [10, 3, 0, i], &big))
        .collect();
    view.apply(Address, resources, []);
    let options = ServerOptions {
        max_message_size: 32 * 1024,
        ..ServerOptions::default()
    };
    let server = start_server(open(&view), options).await;
    let mut z = ztunnel(&server).await;
    z.initial(Address, &[], &[], &[]).await;
    let want = Held::of_view(&view, Address);
    let mut held = Held::default();
    let mut responses = 0;
    while held != want {
        let r = z.recv_ack().await;
        assert!(prost::Message::encoded_len(&r) <= 32 * 1024);
        held.apply(&r);
        responses += 1;
    }
    assert!(responses > 1, "120 KB cannot fit one 32 KB message");
}

#[tokio::test]
async fn stalled_handshakes_do_not_block_accept_and_time_out() {
    let view = View::new("merged");
    let options = ServerOptions {
        handshake_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let server = start_server(open(&view), options).await;
    // A client that opens TCP and never says anything.
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // A real client is served meanwhile.
    let mut z = ztunnel(&server).await;
    z.initial(Address, &[], &[], &[]).await;
    assert_eq!(z.recv_ack().await.type_url, Address.type_url());
    // The stalled connection is closed by the server after the handshake timeout.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut stalled, &mut buf))
        .await
        .expect("server never closed the stalled connection");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

#[tokio::test]
async fn a_client_that_fell_behind_the_change_feed_gets_a_full_diff() {
    let view = View::new("merged");
    view.apply(Address, [wl("u/gone", [10, 5, 0, 1])], []);
    let options = ServerOptions {
        debounce: Duration::ZERO,
        outbound_queue: 1,
        ..ServerOptions::default()
    };
    let server = start_server(open(&view), options).await;
    let mut slow = ztunnel(&server).await;
    slow.initial(Address, &[], &[], &[]).await;
    let mut held = Held::default();
    held.apply(&slow.recv_ack().await);
    // More writes than the change ring holds (4096) while the client does not read,
    // with bodies large enough to fill its HTTP/2 windows.
    let pad = "p".repeat(2048);
    for i in 0..6000u32 {
        let o = i.to_be_bytes();
        view.apply(
            Address,
            [wl_named(
                &format!("u/{}", i % 300),
                [10, 6, o[2], o[3]],
                &format!("{pad}{i}"),
            )],
            [],
        );
    }
    view.apply(Address, [], [Arc::from("u/gone")]);
    let want = Held::of_view(&view, Address);
    while held != want {
        held.apply(&slow.recv_ack().await);
    }
    assert!(!held.0.contains_key("u/gone"));
    assert_eq!(held.0.len(), 300);
    assert!(
        server.server.subscribers().list()[0].full_diffs >= 1,
        "the client really lagged"
    );
}

/// Shutdown races the accept loop's end against tonic's shutdown signal (each saw it
/// first in some runs); streams must end either way, so this runs several rounds on a
/// multi-threaded runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_and_serve_returns() {
    let pki = Pki::new("server");
    let config = server_tls(&pki, None);
    for round in 0..24 {
        let view = View::new("merged");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = peerd::xds::server::AdsServer::new(open(&view), ServerOptions::default());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let s = server.clone();
        let sd = shutdown.clone();
        let tls = Arc::clone(&config);
        let serving = tokio::spawn(async move { s.serve(listener, tls, sd).await });
        let mut z = Downstream::connect(addr, client_tls(&pki, None), None)
            .await
            .unwrap();
        z.initial(Address, &[], &[], &[]).await;
        z.recv_ack().await;
        shutdown.cancel();
        let end = tokio::time::timeout(WAIT, z.rx.message())
            .await
            .unwrap_or_else(|_| panic!("round {round}: stream not ended by shutdown"));
        match end {
            Ok(None) => {}
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
            Ok(Some(r)) => panic!("unexpected response {r:?}"),
        }
        drop(z);
        let result = tokio::time::timeout(WAIT, serving)
            .await
            .unwrap_or_else(|_| panic!("round {round}: serve did not return"));
        assert!(result.unwrap().is_ok());
    }
}

#[tokio::test]
async fn on_demand_reconnect_answers_pending_lookups_from_initial_versions() {
    let view = View::new("merged");
    view.apply(Address, [wl("c1//Pod/default/a", [127, 0, 0, 2])], []);
    let server = start_server(open(&view), ServerOptions::default()).await;
    let mut z = ztunnel(&server).await;
    // ztunnel in on-demand mode reconnecting: lookups never answered carry version "".
    z.initial(
        Address,
        &["*"],
        &["*"],
        &[("/127.0.0.2", ""), ("/127.0.0.77", "")],
    )
    .await;
    let r = z.recv_ack().await;
    assert_eq!(names(&r), set(&["/127.0.0.2"]));
    assert_eq!(r.removed_resources, vec!["/127.0.0.77".to_string()]);
    // The keys stay subscribed: a change to the workload behind one is pushed.
    view.apply(
        Address,
        [wl_named("c1//Pod/default/a", [127, 0, 0, 2], "v2")],
        [],
    );
    let r = z.recv_ack().await;
    assert_eq!(names(&r), set(&["/127.0.0.2"]));
}

/// Log lines written while a test runs (thread-local subscriber: the current-thread test
/// runtime runs the server's tasks on this thread too).
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn warnings() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<peerd::xds::server::AckEvent>,
) -> peerd::xds::server::AckEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap()
}

/// A client that joined during churn: it takes its time over the first response while
/// 300 pushes queue behind it, none ACKed. Its late NACK of the first response, and then
/// each ACK, are still attributed (none dropped as "stale"), and the NACK is acted on.
#[tokio::test]
async fn a_late_nack_and_every_ack_of_a_long_backlog_are_attributed() {
    let (logs, _guard) = Logs::warnings();
    let view = View::new("merged");
    view.apply(
        Address,
        (0u8..50).map(|i| wl(&format!("u/{i}"), [10, 7, 0, i])),
        [],
    );
    let options = ServerOptions {
        debounce: Duration::ZERO,
        ..ServerOptions::default()
    };
    let server = start_server(open(&view), options).await;
    let subs = server.server.subscribers();
    let mut events = subs.ack_events();
    let mut z = ztunnel(&server).await;
    z.initial(Address, &[], &[], &[]).await;
    let first = z.recv().await;
    assert_eq!(first.resources.len(), 50);
    let first_version = view.snapshot().version;
    // 300 pushes, read (so the queue never fills) and not ACKed: each apply is pushed
    // before the next, as this test waits for its response.
    let mut pushes = Vec::new();
    for i in 0..300u32 {
        let o = i.to_be_bytes();
        view.apply(
            Address,
            [wl_named("churn/x", [10, 8, o[2], o[3]], &format!("v{i}"))],
            [],
        );
        let r = z.recv().await;
        assert_eq!(names(&r), set(&["churn/x"]));
        pushes.push(r);
    }
    // The NACK of the first response: counted, logged at warn, attributed to it.
    z.nack(&first, "u/3: rejected by the test").await;
    let ev = next_event(&mut events).await;
    assert_eq!(ev.nonce, first.nonce);
    assert_eq!(ev.nack.as_deref(), Some("u/3: rejected by the test"));
    assert_eq!(ev.view_version, first_version);
    let info = &subs.list()[0];
    assert_eq!(info.stats.address_type.nacks_received, 1);
    assert_eq!(
        info.stats.address_type.last_nack_message,
        "u/3: rejected by the test"
    );
    assert!(info.address.rejected);
    let warned = logs.text();
    assert!(
        warned.contains("WARN") && warned.contains("downstream NACKed a response"),
        "{warned}"
    );
    assert!(warned.contains("u/3: rejected by the test"), "{warned}");

    // Then each push is ACKed, in order: every one is attributed.
    let mut last_version = first_version;
    for (i, push) in pushes.iter().enumerate() {
        z.ack(push).await;
        let ev = next_event(&mut events).await;
        assert_eq!(ev.nonce, push.nonce, "ACK {i} attributed");
        assert!(ev.nack.is_none());
        assert!(ev.view_version >= last_version);
        last_version = ev.view_version;
    }
    assert_eq!(
        last_version,
        view.snapshot().version,
        "the latest is current"
    );
    let info = &subs.list()[0];
    assert_eq!(info.stats.address_type.acks, 300);
    assert_eq!(info.stats.address_type.last_nonce_acked, pushes[299].nonce);
    assert!(!info.address.rejected, "cleared by the later ACKs");
    assert!(subs.all_acked("downstream", view.snapshot().version));

    // The NACKed name was forgotten: u/3 and u/5 flip to another version and back
    // within one wake-up (this test does not yield between the two applies), so their
    // served version equals what was sent before. u/3 is resent, u/5 (accepted) is not.
    view.apply(
        Address,
        [
            wl_named("u/3", [10, 7, 0, 3], "other"),
            wl_named("u/5", [10, 7, 0, 5], "other"),
        ],
        [],
    );
    view.apply(
        Address,
        [
            wl("u/3", [10, 7, 0, 3]),
            wl("u/5", [10, 7, 0, 5]),
            wl_named("u/4", [10, 7, 0, 4], "changed"),
        ],
        [],
    );
    let r = z.recv_ack().await;
    assert_eq!(names(&r), set(&["u/3", "u/4"]));
    assert_eq!(next_event(&mut events).await.nonce, r.nonce);
    assert!(
        subs.wait_all_acked("downstream", view.snapshot().version, WAIT)
            .await
    );
    assert_eq!(subs.list()[0].stats.address_type.acks, 301);
}

/// ztunnel turns ready after ACKing one response per type: it has the full state of a
/// type whose first response was split only because every part of it comes before any
/// response of the next type. Both with a ready view (each initial request flushed on
/// its own) and with a held stream (both types answered by one flush).
#[tokio::test]
async fn a_split_first_response_is_sent_whole_before_the_next_type() {
    for held_stream in [false, true] {
        let view = if held_stream {
            View::pending("merged")
        } else {
            View::new("merged")
        };
        let big = "y".repeat(3000);
        view.apply(
            Address,
            (0u8..40).map(|i| wl_named(&format!("u/{i}"), [10, 9, 0, i], &big)),
            [],
        );
        view.apply(
            Authorization,
            (0..20).map(|i| authz("default", &format!("{big}{i}"))),
            [],
        );
        let options = ServerOptions {
            max_message_size: 32 * 1024,
            ..ServerOptions::default()
        };
        let server = start_server(open(&view), options).await;
        let subs = server.server.subscribers();
        let mut z = ztunnel(&server).await;
        z.initial(Address, &[], &[], &[]).await;
        z.initial(Authorization, &[], &[], &[]).await;
        if held_stream {
            eventually("both initial requests read", || {
                subs.list()
                    .first()
                    .is_some_and(|s| s.address.subscribed && s.authorization.subscribed)
            })
            .await;
            view.set_ready();
        }
        let want = [
            Held::of_view(&view, Address),
            Held::of_view(&view, Authorization),
        ];
        let mut got = [Held::default(), Held::default()];
        let mut kinds = Vec::new();
        while got != want {
            let r = z.recv_ack().await;
            let kind = ResourceType::from_type_url(&r.type_url).unwrap();
            got[kind.index()].apply(&r);
            kinds.push(kind);
        }
        let address_parts = kinds.iter().take_while(|k| **k == Address).count();
        let authz_parts = kinds.len() - address_parts;
        assert!(address_parts > 1, "120 KB cannot fit one 32 KB message");
        assert!(authz_parts > 1, "60 KB cannot fit one 32 KB message");
        assert!(
            kinds[address_parts..].iter().all(|k| *k == Authorization),
            "held stream {held_stream}: an Address part after an Authorization response: {kinds:?}"
        );
        assert!(
            subs.wait_all_acked("downstream", view.snapshot().version, WAIT)
                .await
        );
        // The split is reported: in the stream's stats, and by `peerd check`.
        let info = subs.list().remove(0);
        assert_eq!(info.stats.address_type.split_parts, address_parts as u64);
        assert_eq!(
            info.stats.authorization_type.split_parts,
            authz_parts as u64
        );
        let check = check_message_size(&[subscriber(&info, None)]);
        assert_eq!(check.outcome, Outcome::Warn, "{check:?}");
        assert!(
            check.reason.contains("raise xds.maxMessageBytes"),
            "{check:?}"
        );
        assert!(
            check.details[0].contains(&format!("first response split into {address_parts} parts")),
            "{check:?}"
        );
    }
}
