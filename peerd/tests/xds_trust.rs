//! Who may read the merged view, and what a hostile downstream cannot do to the xDS
//! server, over real TLS on loopback: tokens of other identities (a token file and
//! TokenReview through the emulated API server) are refused with PERMISSION_DENIED, a
//! token file holds several tokens and is rotated without dropping streams, huge NACK
//! messages and node ids are stored bounded, and requests tonic cannot decode end the
//! stream with RESOURCE_EXHAUSTED or INVALID_ARGUMENT.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod xds_support;

use std::sync::Arc;

use peerd::bounded::DISPLAY_LIMIT;
use peerd::kube::client::{ClientSource, connect};
use peerd::kube::tokenreview::{TokenReviewConfig, TokenReviewVerifier};
use peerd::proto::envoy::config::core::v3::Node;
use peerd::proto::envoy::service::discovery::v3 as discovery;
use peerd::view::View;
use peerd::xds::ResourceType::{Address, Authorization};
use peerd::xds::auth::{
    BearerTokenSelector, IdentityAllowList, StaticTokenVerifier, TokenVerifier, ViewSelector,
    ZTUNNEL_IDENTITY,
};
use peerd::xds::server::ServerOptions;
use peerd_testbed::emulator::{Emulator, EmulatorOptions, TokenIdentity};
use xds_support::*;

const REVIEWS_SA: &str = "system:serviceaccount:bookinfo:reviews";

/// The merged view behind `verifier`, restricted to ztunnel's identity (the default of
/// `xds.auth.allowedIdentities`), as `peerd run` wires it.
fn merged_for_ztunnel(view: &Arc<View>, verifier: Arc<dyn TokenVerifier>) -> Arc<dyn ViewSelector> {
    Arc::new(BearerTokenSelector {
        verifier: Arc::new(IdentityAllowList::new(
            verifier,
            vec![ZTUNNEL_IDENTITY.to_string()],
        )),
        view: Arc::clone(view),
        label: "merged".into(),
    })
}

fn populated_view() -> Arc<View> {
    let view = View::new("merged");
    view.apply(Address, [wl("c1//Pod/default/a", [10, 0, 0, 1])], []);
    view
}

/// Opens a stream with `token` and sends the initial request; the status it ends with if
/// it is refused, else the open stream.
async fn open(server: &TestServer, token: &str) -> Result<Downstream, tonic::Status> {
    let z = Downstream::connect(server.addr, client_tls(&server.pki, None), Some(token)).await?;
    z.initial(Address, &[], &[], &[]).await;
    Ok(z)
}

/// The status a refused stream ends with (refusal comes with the response headers or as
/// the first message, depending on timing).
async fn refusal(server: &TestServer, token: &str) -> tonic::Status {
    match open(server, token).await {
        Err(status) => status,
        Ok(mut z) => tokio::time::timeout(WAIT, z.rx.message())
            .await
            .expect("no answer")
            .expect_err("the stream was served"),
    }
}

#[tokio::test]
async fn a_token_file_identity_other_than_ztunnel_is_permission_denied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(
        &path,
        format!("ztunnel-token\n{REVIEWS_SA} reviews-token\n"),
    )
    .unwrap();
    let verifier = Arc::new(StaticTokenVerifier::from_file(&path, ZTUNNEL_IDENTITY).unwrap());
    let view = populated_view();
    let server = start_server(
        merged_for_ztunnel(&view, verifier),
        ServerOptions::default(),
    )
    .await;

    let denied = refusal(&server, "reviews-token").await;
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");
    assert!(
        denied.message().contains(REVIEWS_SA),
        "{}",
        denied.message()
    );
    assert!(!denied.message().contains("reviews-token"));
    let unknown = refusal(&server, "nobody's-token").await;
    assert_eq!(unknown.code(), tonic::Code::Unauthenticated, "{unknown}");

    let mut z = open(&server, "ztunnel-token").await.unwrap();
    let first = z.recv_ack().await;
    assert_eq!(first.resources.len(), 1);
    let subs = server.server.subscribers().list();
    assert_eq!(subs.len(), 1, "only ztunnel's stream is registered");
    assert_eq!(subs[0].identity, ZTUNNEL_IDENTITY);
}

#[tokio::test]
async fn a_token_review_of_another_service_account_is_permission_denied() {
    let emu = Emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        EmulatorOptions {
            namespaces: vec!["istio-system".into(), "bookinfo".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let identity = |username: &str| TokenIdentity {
        username: username.into(),
        uid: format!("uid-{username}"),
        groups: vec!["system:serviceaccounts".into()],
        audiences: vec!["istio-ca".into()],
    };
    emu.add_token("ztunnel-sa-token", identity(ZTUNNEL_IDENTITY));
    emu.add_token("reviews-sa-token", identity(REVIEWS_SA));
    let client = connect(&ClientSource::Url(emu.url().to_string()), "istio-system")
        .await
        .unwrap();
    let verifier = Arc::new(TokenReviewVerifier::new(
        client,
        TokenReviewConfig::default(),
    ));
    let view = populated_view();
    let server = start_server(
        merged_for_ztunnel(&view, verifier),
        ServerOptions::default(),
    )
    .await;

    let denied = refusal(&server, "reviews-sa-token").await;
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");
    assert!(
        denied.message().contains(REVIEWS_SA),
        "{}",
        denied.message()
    );

    let mut z = open(&server, "ztunnel-sa-token").await.unwrap();
    assert_eq!(z.recv_ack().await.resources.len(), 1);
    assert_eq!(
        server.server.subscribers().list()[0].identity,
        ZTUNNEL_IDENTITY
    );
}

#[tokio::test]
async fn both_tokens_of_a_two_line_file_work_and_rotation_keeps_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, "old-token\nnew-token\n").unwrap();
    let verifier = Arc::new(StaticTokenVerifier::from_file(&path, ZTUNNEL_IDENTITY).unwrap());
    let view = populated_view();
    let server = start_server(
        merged_for_ztunnel(&view, verifier),
        ServerOptions::default(),
    )
    .await;

    let mut old = open(&server, "old-token").await.unwrap();
    assert_eq!(old.recv_ack().await.resources.len(), 1);
    let mut new = open(&server, "new-token").await.unwrap();
    assert_eq!(new.recv_ack().await.resources.len(), 1);

    // Rotation done: the old token is removed from the file (a different size, so the
    // change is seen whatever the mtime granularity).
    std::fs::write(&path, "# rotated\nnew-token\nnewest-token\n").unwrap();
    let refused = refusal(&server, "old-token").await;
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    let mut newest = open(&server, "newest-token").await.unwrap();
    assert_eq!(newest.recv_ack().await.resources.len(), 1);

    // The stream opened with the old token is still served.
    view.apply(Address, [wl("c1//Pod/default/b", [10, 0, 0, 2])], []);
    for z in [&mut old, &mut new, &mut newest] {
        let push = z.recv_ack().await;
        assert_eq!(push.resources[0].name, "c1//Pod/default/b");
    }
    assert_eq!(server.server.subscribers().list().len(), 3);
}

#[tokio::test]
async fn a_10_mib_nack_message_is_kept_bounded_and_the_stream_lives_on() {
    let view = populated_view();
    let verifier = Arc::new(StaticTokenVerifier::from_literal("t", ZTUNNEL_IDENTITY));
    let server = start_server(
        merged_for_ztunnel(&view, verifier),
        ServerOptions::default(),
    )
    .await;
    let mut acks = server.server.subscribers().ack_events();
    let mut z = open(&server, "t").await.unwrap();
    let first = z.recv().await;
    let huge = format!("c1//Pod/default/a: {}", "x".repeat(10 * 1024 * 1024));
    z.nack(&first, &huge).await;

    let event = tokio::time::timeout(WAIT, acks.recv())
        .await
        .unwrap()
        .unwrap();
    let kept = event.nack.expect("a NACK event");
    assert!(kept.len() < DISPLAY_LIMIT + 64, "{} bytes kept", kept.len());
    assert!(kept.starts_with("c1//Pod/default/a: xxx"));
    assert!(
        kept.ends_with(&format!("[truncated: {} bytes]", huge.len())),
        "{}",
        &kept[kept.len() - 64..]
    );
    let stats = &server.server.subscribers().list()[0].stats.address_type;
    assert_eq!(stats.nacks_received, 1);
    assert_eq!(stats.last_nack_message, kept);

    // The named resource was forgotten (the whole message was read for the names it
    // rejects), so it is resent on its next change or a resync.
    assert_eq!(
        stats.resources, 0,
        "the NACKed resource is no longer counted as held"
    );
    // The stream is healthy.
    view.apply(Address, [wl("c1//Pod/default/b", [10, 0, 0, 2])], []);
    let push = z.recv_ack().await;
    assert_eq!(push.resources[0].name, "c1//Pod/default/b");
}

#[tokio::test]
async fn a_4_mib_node_id_is_stored_bounded() {
    let view = populated_view();
    let verifier = Arc::new(StaticTokenVerifier::from_literal("t", ZTUNNEL_IDENTITY));
    let server = start_server(
        merged_for_ztunnel(&view, verifier),
        ServerOptions::default(),
    )
    .await;
    let mut z = Downstream::connect(server.addr, client_tls(&server.pki, None), Some("t"))
        .await
        .unwrap();
    let id = "n".repeat(4 * 1024 * 1024);
    z.send(discovery::DeltaDiscoveryRequest {
        node: Some(Node {
            id: id.clone(),
            ..Default::default()
        }),
        type_url: Address.type_url().into(),
        ..Default::default()
    })
    .await;
    assert_eq!(z.recv_ack().await.resources.len(), 1);
    let subs = server.server.subscribers().list();
    let node = &subs[0].node_id;
    assert!(node.len() < DISPLAY_LIMIT + 64, "{} bytes kept", node.len());
    assert!(node.ends_with(&format!("[truncated: {} bytes]", id.len())));
    assert_eq!(&subs[0].stats.name, node);
}

#[tokio::test]
async fn a_request_over_max_message_bytes_ends_with_resource_exhausted() {
    let view = populated_view();
    let verifier = Arc::new(StaticTokenVerifier::from_literal("t", ZTUNNEL_IDENTITY));
    let options = ServerOptions {
        max_message_size: 64 * 1024,
        ..ServerOptions::default()
    };
    let server = start_server(merged_for_ztunnel(&view, verifier), options).await;
    let mut z = open(&server, "t").await.unwrap();
    assert_eq!(z.recv_ack().await.resources.len(), 1);
    z.subscribe(Authorization, &[&"k".repeat(100 * 1024)]).await;
    let status = tokio::time::timeout(WAIT, z.rx.message())
        .await
        .expect("no answer")
        .expect_err("the stream should end with an error");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );
    eventually("the stream is unregistered", || {
        server.server.subscribers().list().is_empty()
    })
    .await;
}

/// A request whose `type_url` (field 2, a string) is sent as a varint: not a
/// `DeltaDiscoveryRequest` any decoder accepts.
#[derive(Clone, PartialEq, prost::Message)]
struct Malformed {
    #[prost(uint64, tag = "2")]
    type_url: u64,
}

#[tokio::test]
async fn a_malformed_request_ends_with_invalid_argument() {
    let view = populated_view();
    let verifier = Arc::new(StaticTokenVerifier::from_literal("t", ZTUNNEL_IDENTITY));
    let server = start_server(
        merged_for_ztunnel(&view, verifier),
        ServerOptions::default(),
    )
    .await;
    let channel = channel_to(server.addr, client_tls(&server.pki, None))
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(Malformed { type_url: 7 }).await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", "Bearer t".parse().unwrap());
    let codec = tonic_prost::ProstCodec::<Malformed, discovery::DeltaDiscoveryResponse>::default();
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
    );
    let mut stream = grpc
        .streaming(request, path, codec)
        .await
        .unwrap()
        .into_inner();
    let status = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("no answer")
        .expect_err("the stream should end with an error");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(
        status.message().starts_with("malformed request"),
        "{}",
        status.message()
    );
    drop(tx);
    // The server is unaffected: a well-formed client is served.
    let mut z = open(&server, "t").await.unwrap();
    assert_eq!(z.recv_ack().await.resources.len(), 1);
}
