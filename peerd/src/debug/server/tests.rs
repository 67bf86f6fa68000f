use std::time::Duration;

use tokio::sync::broadcast;
use tokio_stream::StreamExt as _;

use super::*;
use crate::config::{Env, Overrides, resolve};
use crate::debug::source::{PEER_CONNECTED, PeerCondition, PeerEvent, PeerInfo};
use crate::proto::istio::workload;
use crate::xds::resource::Resource;

/// A peer source driven by the test, as the peer manager would drive it.
struct ScriptedPeers {
    events: broadcast::Sender<PeerEvent>,
}

impl PeerSource for ScriptedPeers {
    fn peers(&self) -> Vec<PeerInfo> {
        vec![PeerInfo {
            cluster: "c2".into(),
            network: "net2".into(),
            conditions: vec![PeerCondition {
                kind: PEER_CONNECTED.into(),
                status: "True".into(),
                reason: "Connected".into(),
                message: "connected to peer".into(),
                last_transition: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(10)),
            }],
            ..PeerInfo::default()
        }]
    }

    fn events(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }
}

fn service() -> (DebugService, Arc<Store>, broadcast::Sender<PeerEvent>) {
    let config = resolve(
        Config::parse_file("cluster: c1\nnetwork: net1\n").unwrap(),
        &Env::default(),
        &Overrides::default(),
        None,
    )
    .unwrap();
    let store = Store::new();
    let federation = Federation::new(
        crate::federation::FederationConfig::from_config(&config).unwrap(),
        Arc::clone(&store),
    );
    let (events, _) = broadcast::channel(16);
    let readiness = Readiness::new();
    readiness.register("local upstream synced");
    let state = DebugState {
        config: Arc::new(config),
        store: Arc::clone(&store),
        federation,
        subscribers: Subscribers::new(),
        readiness,
        upstreams: crate::xds::stats::UpstreamList::new(Vec::new()),
        peers: Arc::new(ScriptedPeers {
            events: events.clone(),
        }),
        export: None,
        started: SystemTime::now(),
        probe_mode: Some(crate::probe::mode::ProbeMode::Userspace {
            reason: "kernel has no BTF (test)".into(),
        }),
        xds_address: "127.0.0.1:15012".into(),
        debug_address: "127.0.0.1:15041".into(),
    };
    (DebugService::new(state), store, events)
}

fn workload(uid: &str, ip: [u8; 4]) -> Arc<Resource> {
    Arc::new(
        Resource::workload(&workload::Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "default".into(),
            network: "net1".into(),
            addresses: vec![ip.to_vec()],
            ..Default::default()
        })
        .unwrap(),
    )
}

async fn next(stream: &mut ReceiverStream<Result<api::Event, Status>>) -> api::Event {
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("an event within 30 s")
        .expect("stream open")
        .expect("not an error")
}

#[tokio::test]
async fn watch_forwards_peer_transitions_and_syncs() {
    let (svc, store, peer_events) = service();
    let mut stream = Debug::watch(&svc, Request::new(api::WatchRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut stream).await.kind, "watching");

    peer_events
        .send(PeerEvent {
            at: SystemTime::now(),
            kind: "condition".into(),
            peer: "c2".into(),
            message: "PeerConnected False → True".into(),
            condition: svc.state.peers.peers()[0].conditions.first().cloned(),
        })
        .unwrap();
    let e = next(&mut stream).await;
    assert_eq!((e.kind.as_str(), e.peer.as_str()), ("condition", "c2"));
    let condition = e.condition.unwrap();
    assert_eq!(condition.r#type, PEER_CONNECTED);
    assert_eq!(condition.last_transition_unix_ms, 10_000);

    // A change is not an event of its own; the first full response is.
    store.apply(
        "c1",
        ResourceType::Address,
        vec![workload("a", [10, 0, 0, 1])],
        vec![],
    );
    store.mark_synced("c1", ResourceType::Address);
    let e = next(&mut stream).await;
    assert_eq!(
        (e.kind.as_str(), e.peer.as_str(), e.r#type.as_str()),
        ("synced", "c1", "address")
    );
}

#[tokio::test]
async fn views_resolve_by_name_and_bad_requests_are_refused() {
    let (svc, store, _events) = service();
    store.apply(
        "c1",
        ResourceType::Address,
        vec![workload("a", [10, 0, 0, 1])],
        vec![],
    );
    // Federation serves an origin's state once it has completed its first full sync.
    store.mark_synced("c1", ResourceType::Address);
    store.mark_synced("c1", ResourceType::Authorization);
    svc.state.federation.recompute_all();

    let merged = svc.resources("", "workload", false).unwrap();
    assert_eq!(merged.resources.len(), 1);
    assert_eq!(merged.resources[0].origin, "c1");
    assert!(merged.resources[0].json.is_empty(), "JSON only on request");

    // On-demand keys find the same resource, decoded.
    let r = svc.resource("merged", "address", "net1/10.0.0.1").unwrap();
    assert_eq!(r.name, "a");
    let json: serde_json::Value = serde_json::from_str(&r.json).unwrap();
    assert_eq!(json["workload"]["uid"], "a");

    let missing = svc.resources("c9", "", false).unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(missing.message().contains("(c1)"), "{}", missing.message());
    assert_eq!(
        svc.resources("merged", "cluster", false)
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        svc.resource("merged", "", "").unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        svc.resource("merged", "", "nope").unwrap_err().code(),
        tonic::Code::NotFound
    );

    let info = svc.server_info();
    assert!(!info.ready);
    assert_eq!(
        info.pending_gates,
        vec!["local upstream synced".to_string()]
    );
    assert_eq!(info.merged.unwrap().workloads, 1);
    // The probe mode in effect, not the configured one, with its reason.
    assert_eq!(info.probe_mode, "userspace");
    assert_eq!(info.probe_mode_reason, "kernel has no BTF (test)");
    assert_eq!(svc.peers().peers[0].conditions[0].status, "True");

    let dump = svc.dump(true).unwrap();
    assert_eq!(
        dump["views"]["merged"][0]["resource"]["workload"]["uid"],
        "a"
    );
    assert_eq!(dump["views"]["c1"][0]["origin"], "c1");
    assert_eq!(dump["subscribers"], serde_json::json!([]));
}

/// Serves `svc` on an ephemeral loopback port, as `peerd run` does on 15041.
async fn serve_on_loopback(svc: DebugService) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cancel = CancellationToken::new();
    tokio::spawn(serve(listener, svc, cancel.clone()));
    (addr, cancel)
}

#[tokio::test]
async fn a_100_kb_view_name_gets_a_bounded_error() {
    let (svc, _store, _events) = service();
    let (addr, cancel) = serve_on_loopback(svc).await;
    let mut client = crate::debug::client::connect(&addr).await.unwrap();
    let name = "v".repeat(100 * 1024);
    let err = client
        .list_resources(api::ListResourcesRequest {
            view: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(
        err.message().len() < crate::bounded::DISPLAY_LIMIT + 256,
        "{} bytes",
        err.message().len()
    );
    assert!(
        err.message().contains("[truncated: 102400 bytes]"),
        "{}",
        &err.message()[err.message().len() - 128..]
    );
    // The same for a resource name and a type.
    let err = client
        .get_resource(api::GetResourceRequest {
            view: "merged".into(),
            r#type: String::new(),
            name: name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("[truncated: 102400 bytes]"));
    let err = client
        .list_resources(api::ListResourcesRequest {
            view: "merged".into(),
            r#type: name,
            include_json: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().len() < crate::bounded::DISPLAY_LIMIT + 256);
    cancel.cancel();
}

#[tokio::test]
async fn every_listed_service_resolves_through_reflection_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let (svc, _store, _events) = service();
    let (addr, cancel) = serve_on_loopback(svc).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut v1_client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let ask = |m: v1::server_reflection_request::MessageRequest| v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let mut requests = vec![ask(
        v1::server_reflection_request::MessageRequest::ListServices(String::new()),
    )];
    let first = v1_client
        .server_reflection_info(tokio_stream::iter(requests.clone()))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        first.message_response.clone()
    else {
        panic!("not a service list: {first:?}");
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(services.contains(&"grpc.reflection.v1.ServerReflection".to_string()));
    assert!(services.contains(&"grpc.reflection.v1alpha.ServerReflection".to_string()));
    requests = services
        .iter()
        .map(|s| {
            ask(v1::server_reflection_request::MessageRequest::FileContainingSymbol(s.clone()))
        })
        .collect();
    let answers: Vec<_> = v1_client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .collect::<Vec<_>>()
        .await;
    assert_eq!(answers.len(), services.len());
    for (service, answer) in services.iter().zip(answers) {
        let answer = answer.unwrap().message_response;
        assert!(
            matches!(
                answer,
                Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
            ),
            "v1 cannot resolve {service}: {answer:?}"
        );
    }

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let requests: Vec<_> = services
        .iter()
        .map(|s| v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(s.clone()),
            ),
        })
        .collect();
    let answers: Vec<_> = alpha
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .collect::<Vec<_>>()
        .await;
    assert_eq!(answers.len(), services.len());
    for (service, answer) in services.iter().zip(answers) {
        let answer = answer.unwrap().message_response;
        assert!(
            matches!(
                answer,
                Some(
                    v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_)
                )
            ),
            "v1alpha cannot resolve {service}: {answer:?}"
        );
    }
    cancel.cancel();
}
