//! Federation never holds a runtime worker: on a runtime with one worker (the chart's one
//! CPU), the health endpoint and the debug API answer while a 100k-workload bulk load is
//! being merged.
//!
//! Proven by ordering, not timing: a test hook stops federation's computation at its first
//! recompute of the bulk load and keeps it there until the test has had its answers. Were
//! the computation on the worker, the worker would be stopped too and no answer could come.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::admin::{Readiness, serve_health};
use crate::config::{Config, Env, Overrides, resolve};
use crate::debug::server::{DebugService, DebugState};
use crate::debug::source::{PeerEvent, PeerInfo, PeerSource};
use crate::proto::debug::v1 as api;
use crate::proto::istio::workload;
use crate::xds::resource::Resource;
use crate::xds::server::Subscribers;

const LOCAL: &str = "c1";
const WORKLOADS: usize = 100_000;
/// The part size of `xds::client` for a large response.
const PART: usize = 8192;
/// Only against a deadlock: nothing here is a speed assertion.
const DEADLOCK_GUARD: Duration = Duration::from_secs(300);

/// The debug API's peers, read from federation as the real peer source does.
struct FederationPeers {
    federation: Arc<Federation>,
    events: broadcast::Sender<PeerEvent>,
}

impl PeerSource for FederationPeers {
    fn peers(&self) -> Vec<PeerInfo> {
        self.federation
            .peer_status()
            .into_iter()
            .map(|p| PeerInfo {
                cluster: p.cluster,
                ..PeerInfo::default()
            })
            .collect()
    }

    fn events(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }
}

fn workloads() -> Vec<Arc<Resource>> {
    (0..WORKLOADS)
        .map(|i| {
            let [_, a, b, c] = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
            let name = format!("pod-{i:06}");
            Arc::new(
                Resource::workload(&workload::Workload {
                    uid: format!("{LOCAL}//Pod/default/{name}"),
                    name,
                    namespace: "default".into(),
                    network: "net1".into(),
                    cluster_id: LOCAL.into(),
                    addresses: vec![Ipv4Addr::new(127, 60 + a, b, c).octets().to_vec()],
                    ..Default::default()
                })
                .expect("a valid workload"),
            )
        })
        .collect()
}

/// One HTTP/1.1 GET on loopback; returns the status line and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("health listener");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .expect("answer read");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn health_and_debug_answer_while_a_bulk_load_is_merged() {
    let config = resolve(
        Config::parse_file("cluster: c1\nnetwork: net1\n").expect("config"),
        &Env::default(),
        &Overrides::default(),
        None,
    )
    .expect("resolved config");
    let store = Store::new();
    let fed = Federation::new(
        FederationConfig::from_config(&config).unwrap(),
        Arc::clone(&store),
    );

    // The hook: the first recompute with names reports that it is held, then waits.
    let (held_tx, mut held_rx) = watch::channel(0usize);
    let (release_tx, release_rx) = std_mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(Some(release_rx));
    fed.set_before_recompute(move |names| {
        let first = release_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(release) = first {
            let _ = held_tx.send(names);
            let _ = release.recv();
        }
    });

    let cancel = CancellationToken::new();
    let readiness = Readiness::new();
    let health = TcpListener::bind("127.0.0.1:0").await.expect("bind health");
    let health_addr = health.local_addr().expect("health address");
    tokio::spawn(serve_health(health, Arc::clone(&readiness), cancel.clone()));
    let debug = TcpListener::bind("127.0.0.1:0").await.expect("bind debug");
    let debug_addr = debug.local_addr().expect("debug address");
    let (peer_events, _) = broadcast::channel(4);
    let service = DebugService::new(DebugState {
        config: Arc::new(config),
        store: Arc::clone(&store),
        federation: Arc::clone(&fed),
        subscribers: Subscribers::new(),
        readiness,
        upstreams: crate::xds::stats::UpstreamList::new(Vec::new()),
        peers: Arc::new(FederationPeers {
            federation: Arc::clone(&fed),
            events: peer_events,
        }),
        export: None,
        started: SystemTime::now(),
        probe_mode: None,
        xds_address: "127.0.0.1:15012".into(),
        debug_address: debug_addr.to_string(),
    });
    tokio::spawn(crate::debug::server::serve(debug, service, cancel.clone()));
    tokio::spawn(Arc::clone(&fed).run(cancel.clone()));

    // The bulk load, applied as the upstream client applies a large first response.
    let mut all = workloads();
    while !all.is_empty() {
        let rest = all.split_off(all.len().min(PART));
        store.apply(LOCAL, ResourceType::Address, all, vec![]);
        all = rest;
    }
    store.mark_synced(LOCAL, ResourceType::Address);
    store.mark_synced(LOCAL, ResourceType::Authorization);

    let held = tokio::time::timeout(DEADLOCK_GUARD, held_rx.wait_for(|n| *n > 0))
        .await
        .expect("federation reaches its first recompute")
        .map(|n| *n)
        .expect("hook alive");
    assert!(held <= WORKLOADS);

    // Federation's computation is stopped in the middle of the bulk load. The one worker
    // still serves health and the debug API.
    let live = tokio::time::timeout(DEADLOCK_GUARD, get(health_addr, "/healthz/live"))
        .await
        .expect("health answers while the merge is held");
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    assert!(live.ends_with("live\n"), "{live}");
    let mut client = crate::debug::client::connect(&debug_addr.to_string())
        .await
        .expect("debug API reachable");
    let info = tokio::time::timeout(
        DEADLOCK_GUARD,
        client.get_server_info(api::GetServerInfoRequest {}),
    )
    .await
    .expect("debug API answers while the merge is held")
    .expect("GetServerInfo")
    .into_inner();
    assert_eq!(info.cluster, LOCAL);
    let merged_workloads = info.merged.map_or(0, |c| c.workloads);
    assert!(
        merged_workloads < WORKLOADS as u64,
        "the answer came while the merge was incomplete ({merged_workloads} merged)"
    );
    tokio::time::timeout(DEADLOCK_GUARD, client.list_peers(api::ListPeersRequest {}))
        .await
        .expect("ListPeers answers while the merge is held")
        .expect("ListPeers");
    assert!(!fed.merged().is_ready(), "still held");

    // Released, federation finishes the bulk load.
    release_tx.send(()).expect("hook waiting");
    tokio::time::timeout(DEADLOCK_GUARD, async {
        while !(fed.merged().is_ready()
            && fed.merged().snapshot().len(ResourceType::Address) == WORKLOADS)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the bulk load is merged once released");
    cancel.cancel();
}
