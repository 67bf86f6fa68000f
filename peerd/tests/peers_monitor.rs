//! PeerMonitor against real sources on loopback: a real AdsServer (the peer) and
//! AdsClient, the real Store, a real downstream server with a ztunnel-like client that
//! ACKs/NACKs, and the userspace prober connecting to real TCP listeners on 127.0.0.x.
//! Hysteresis windows are short; every wait is bounded by a generous deadline and no
//! assertion is about speed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod xds_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use peerd::peers::conditions::{Condition, ConditionStatus as S, ConditionType as T};
use peerd::peers::model::{LocalCluster, PeerSpec, SpecAddress, SpecListener, SpecSource};
use peerd::peers::{
    AdsClients, DownstreamAcks, HysteresisConfig, MonitorConfig, MonitorSources, PeerMonitor,
    RecordedPeerVersions, UserspaceProbe,
};
use peerd::probe::prober::{Prober, ProberConfig, TargetGuard};
use peerd::store::Store;
use peerd::view::View;
use peerd::xds::ResourceType::Address;
use peerd::xds::auth::OpenSelector;
use peerd::xds::client::{AdsClient, ClientOptions};
use peerd::xds::server::{ServerOptions, Subscribers};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use xds_support::*;

const PEER: &str = "cluster-2";
const WINDOW: Duration = Duration::from_secs(1);

fn spec(ip: &str, xds_port: u16, hbone_port: u16) -> PeerSpec {
    PeerSpec {
        source: SpecSource::Config { index: 0 },
        generation: 1,
        cluster: Some(PEER.into()),
        network: Some("net-b".into()),
        addresses: vec![SpecAddress {
            kind: "IPAddress".into(),
            value: ip.into(),
        }],
        trust_domain: Some("cluster.local".into()),
        listeners: vec![
            SpecListener {
                name: "cross-network".into(),
                port: hbone_port,
                protocol: "HBONE".into(),
            },
            SpecListener {
                name: "xds-tls".into(),
                port: xds_port,
                protocol: "TLS".into(),
            },
        ],
        data_plane_service_type: None,
        peerd_identity: None,
    }
}

struct Harness {
    monitor: Arc<PeerMonitor>,
    clients: Arc<AdsClients>,
    store: Arc<Store>,
    prober: Arc<Prober>,
    versions: Arc<RecordedPeerVersions>,
    cancel: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Harness {
    fn new(spec: PeerSpec, downstreams: Arc<Subscribers>) -> Harness {
        let store = Store::new();
        let clients = AdsClients::new();
        let versions = RecordedPeerVersions::new();
        let prober = Prober::new(ProberConfig {
            enabled: true,
            interval: Duration::from_secs(1),
            jitter: Duration::ZERO,
            timeout: Duration::from_secs(5),
            guard: TargetGuard::loopback_only(),
        })
        .unwrap();
        let sources = MonitorSources {
            upstreams: clients.clone(),
            imports: store.clone(),
            acks: Arc::new(DownstreamAcks {
                subscribers: downstreams,
                view_label: "downstream".into(),
                versions: versions.clone(),
            }),
            probe: UserspaceProbe::new(Arc::clone(&prober)),
        };
        let config = MonitorConfig {
            hysteresis: HysteresisConfig {
                failure_window: WINDOW,
                success_run: 2,
                first_probe_grace: Duration::ZERO,
            },
            ..MonitorConfig::default()
        };
        let local = LocalCluster {
            cluster: "cluster-1".into(),
            network: "net-a".into(),
            flat_networks: true,
        };
        Harness {
            monitor: PeerMonitor::new(local, vec![spec], config, sources, Instant::now()),
            clients,
            store,
            prober,
            versions,
            cancel: CancellationToken::new(),
        }
    }

    /// Starts a real client for the peer, trusting `trust`.
    fn connect(&self, addr: SocketAddr, trust: &Pki) {
        let mut o =
            ClientOptions::new(PEER, addr.to_string(), "127.0.0.1", client_tls(trust, None));
        o.backoff_initial = Duration::from_millis(20);
        o.backoff_max = Duration::from_millis(200);
        o.connect_timeout = Duration::from_secs(5);
        let client = AdsClient::new(o, Arc::clone(&self.store));
        self.clients.register(PEER, &addr.to_string(), &client);
        client.spawn(self.cancel.clone());
    }

    /// Probes, ticks, and repeats until `want` holds for the condition; returns it.
    async fn wait_for(&self, t: T, what: &str, want: impl Fn(&Condition) -> bool) -> Condition {
        let deadline = Instant::now() + WAIT;
        loop {
            self.prober.probe_once().await;
            self.monitor.tick(Instant::now(), SystemTime::now()).await;
            let snap = self.monitor.snapshot();
            let c = snap[0].condition(t).unwrap().clone();
            if want(&c) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {t} {what}; last: {c:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn is(status: S, reason: &'static str) -> impl Fn(&Condition) -> bool {
    move |c| c.status == status && c.reason == reason
}

fn export_view() -> Arc<View> {
    let view = View::new("export");
    view.apply(Address, [wl("cluster-2//Pod/default/a", [10, 2, 0, 1])], []);
    view
}

fn open(view: &Arc<View>, label: &str) -> Arc<OpenSelector> {
    Arc::new(OpenSelector {
        view: Arc::clone(view),
        label: label.into(),
    })
}

#[tokio::test]
async fn stopping_the_peer_turns_peer_connected_false_after_the_window() {
    let view = export_view();
    let server = start_server(open(&view, "export"), ServerOptions::default()).await;
    let h = Harness::new(
        spec("127.0.0.1", server.addr.port(), 15008),
        Subscribers::new(),
    );
    h.connect(server.addr, &server.pki);
    let up = h
        .wait_for(T::PeerConnected, "True", is(S::True, "Connected"))
        .await;
    assert!(
        up.message.contains(&server.addr.to_string()),
        "{}",
        up.message
    );
    h.wait_for(T::PeeringSucceeded, "True", is(S::True, "Succeeded"))
        .await;
    assert_eq!(h.monitor.snapshot()[0].status(T::Programmed), Some(S::True));

    let stopped = SystemTime::now();
    server.shutdown.cancel();
    let down = h
        .wait_for(T::PeerConnected, "False", |c| c.status == S::False)
        .await;
    assert!(
        down.last_transition.duration_since(stopped).unwrap() >= WINDOW,
        "turned False before the failure window passed"
    );
    let refused = h
        .wait_for(
            T::PeerConnected,
            "ConnectionRefused",
            is(S::False, "ConnectionRefused"),
        )
        .await;
    assert!(refused.message.contains("refused"), "{}", refused.message);
    let stale = h
        .wait_for(T::PeeringSucceeded, "Stale", is(S::False, "Stale"))
        .await;
    assert!(
        stale.message.contains("last known state (1 resources)"),
        "{}",
        stale.message
    );
    // The peer's state is kept while disconnected.
    assert_eq!(h.store.origin(PEER).view.snapshot().len(Address), 1);
}

#[tokio::test]
async fn refused_port_is_connection_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let h = Harness::new(spec("127.0.0.1", addr.port(), 15008), Subscribers::new());
    h.connect(addr, &Pki::new("any"));
    let c = h
        .wait_for(
            T::PeerConnected,
            "ConnectionRefused",
            is(S::False, "ConnectionRefused"),
        )
        .await;
    assert!(
        c.message.contains("nothing accepts connections on"),
        "{}",
        c.message
    );
    assert_eq!(
        h.monitor.snapshot()[0].status(T::PeeringSucceeded),
        Some(S::False),
        "never synced"
    );
}

#[tokio::test]
async fn tls_root_mismatch_is_tls_error() {
    let view = export_view();
    let server = start_server(open(&view, "export"), ServerOptions::default()).await;
    let h = Harness::new(
        spec("127.0.0.1", server.addr.port(), 15008),
        Subscribers::new(),
    );
    h.connect(server.addr, &Pki::new("another-root"));
    let c = h
        .wait_for(T::PeerConnected, "TLSError", is(S::False, "TLSError"))
        .await;
    assert!(c.message.contains("same root"), "{}", c.message);
    assert_eq!(
        h.store.origin(PEER).view.snapshot().len(Address),
        0,
        "nothing imported"
    );
}

/// A TCP listener standing in for the peer's east-west HBONE port; accepts and drops.
async fn hbone_listener(ip: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            drop(sock);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn hbone_reachable_then_closed_is_hbone_connection_refused() {
    let (hbone, accept) = hbone_listener("127.0.4.1").await;
    let h = Harness::new(spec("127.0.4.1", 15012, hbone.port()), Subscribers::new());
    let ok = h
        .wait_for(
            T::PeerDataPlaneProgrammed,
            "True",
            is(S::True, "Programmed"),
        )
        .await;
    assert!(
        ok.message.contains(&format!("HBONE {hbone} reachable")),
        "{}",
        ok.message
    );
    let probe = h.monitor.snapshot()[0].probe.clone();
    assert_eq!(probe.mode, "userspace");
    assert!(
        probe.established >= 2 && probe.p50_us.is_some(),
        "{probe:?}"
    );

    accept.abort();
    let _ = accept.await;
    let c = h
        .wait_for(
            T::PeerDataPlaneProgrammed,
            "HBONEConnectionRefused",
            is(S::False, "HBONEConnectionRefused"),
        )
        .await;
    assert!(
        c.message.contains(&format!("{hbone} refused")),
        "{}",
        c.message
    );
    assert!(h.monitor.snapshot()[0].probe.refused >= 1);
}

#[tokio::test]
async fn downstream_nack_is_not_acked_with_the_text_and_a_later_ack_recovers() {
    let (hbone, _accept) = hbone_listener("127.0.5.1").await;
    let merged = View::new("merged");
    merged.apply(Address, [wl("cluster-2//Pod/default/a", [10, 2, 0, 1])], []);
    let local = start_server(open(&merged, "downstream"), ServerOptions::default()).await;
    let h = Harness::new(
        spec("127.0.5.1", 15012, hbone.port()),
        local.server.subscribers(),
    );
    h.versions.record(PEER, merged.snapshot().version);
    let mut z = Downstream::connect(local.addr, client_tls(&local.pki, None), None)
        .await
        .unwrap();
    z.initial(Address, &[], &[], &[]).await;
    let r = z.recv().await;
    let text = "cluster-2//Pod/default/a: unknown network \"net-b\"";
    z.nack(&r, text).await;
    let c = h
        .wait_for(
            T::PeerDataPlaneProgrammed,
            "NotAcked",
            is(S::False, "NotAcked"),
        )
        .await;
    assert!(c.message.contains(text), "{}", c.message);

    // The peer's next change is ACKed: the condition recovers.
    merged.apply(
        Address,
        [wl_named("cluster-2//Pod/default/a", [10, 2, 0, 1], "fixed")],
        [],
    );
    h.versions.record(PEER, merged.snapshot().version);
    z.recv_ack().await;
    let ok = h
        .wait_for(
            T::PeerDataPlaneProgrammed,
            "True",
            is(S::True, "Programmed"),
        )
        .await;
    assert!(
        ok.message.contains("ACKed by 1 local ztunnel"),
        "{}",
        ok.message
    );
}

/// Knows which merged-view names came from which peer (as federation does).
struct OwnedByPrefix(Arc<RecordedPeerVersions>);

impl peerd::peers::PeerVersions for OwnedByPrefix {
    fn latest_version(&self, peer: &str) -> Option<u64> {
        self.0.latest_version(peer)
    }
    fn due_version(&self, peer: &str, now: Instant) -> Option<(u64, Instant)> {
        self.0.due_version(peer, now)
    }
    fn owns(&self, peer: &str, name: &str) -> Option<bool> {
        Some(name.starts_with(&format!("{peer}/")))
    }
}

#[tokio::test]
async fn another_peers_nacked_resource_does_not_hold_this_peer_back() {
    use peerd::peers::{AckObservation, AckSource, PeerVersions as _};
    let merged = View::new("merged");
    merged.apply(
        Address,
        [
            wl("cluster-2//Pod/default/a", [10, 2, 0, 1]),
            wl("cluster-3//Pod/default/b", [10, 3, 0, 1]),
        ],
        [],
    );
    let local = start_server(open(&merged, "downstream"), ServerOptions::default()).await;
    let versions = RecordedPeerVersions::new();
    versions.record("cluster-2", merged.snapshot().version);
    versions.record("cluster-3", merged.snapshot().version);
    let acks = DownstreamAcks {
        subscribers: local.server.subscribers(),
        view_label: "downstream".into(),
        versions: Arc::new(OwnedByPrefix(Arc::clone(&versions))),
    };
    assert_eq!(
        versions.latest_version("cluster-2"),
        Some(merged.snapshot().version)
    );
    let mut z = Downstream::connect(local.addr, client_tls(&local.pki, None), None)
        .await
        .unwrap();
    z.initial(Address, &[], &[], &[]).await;
    let r = z.recv().await;
    z.nack(&r, "cluster-3//Pod/default/b: bad address").await;
    eventually("the NACK is recorded", || {
        local
            .server
            .subscribers()
            .list()
            .first()
            .is_some_and(|s| s.address.rejected)
    })
    .await;
    match acks.acks("cluster-3", Instant::now()) {
        AckObservation::Rejected { text, .. } => {
            assert_eq!(text, "cluster-3//Pod/default/b: bad address")
        }
        other => panic!("cluster-3 should be rejected, got {other:?}"),
    }
    assert_eq!(
        acks.acks("cluster-2", Instant::now()),
        AckObservation::Acked {
            version: merged.snapshot().version,
            downstreams: 1
        }
    );
}

/// Under steady churn the newest version is nearly always in flight. A downstream that
/// ACKs every change a moment after it is published must never count as lagging: the
/// soak saw `PeerDataPlaneProgrammed` turn False on every peer at once when a busy
/// minute made each tick land before the latest ACK. One that stops ACKing counts once
/// its oldest un-ACKed change is older than the allowance.
#[tokio::test]
async fn a_downstream_acking_each_change_a_moment_later_is_not_lagging_but_one_that_stops_is() {
    use peerd::peers::{ACK_ALLOWANCE, AckObservation, AckSource};
    let merged = View::new("merged");
    merged.apply(Address, [wl("cluster-2//Pod/default/a", [10, 2, 0, 1])], []);
    let local = start_server(open(&merged, "downstream"), ServerOptions::default()).await;
    let versions = RecordedPeerVersions::new();
    let acks = DownstreamAcks {
        subscribers: local.server.subscribers(),
        view_label: "downstream".into(),
        versions: versions.clone(),
    };
    let mut z = Downstream::connect(local.addr, client_tls(&local.pki, None), None)
        .await
        .unwrap();
    z.initial(Address, &[], &[], &[]).await;
    z.recv_ack().await;

    // A change every 100 ms (injected publish times), each checked right after it is
    // published, before the downstream read it.
    let t0 = Instant::now();
    let mut published = t0;
    for i in 1..=40u32 {
        published = t0 + Duration::from_millis(100) * i;
        merged.apply(
            Address,
            [wl_named(
                "cluster-2//Pod/default/a",
                [10, 2, 0, 1],
                &format!("v{i}"),
            )],
            [],
        );
        let version = merged.snapshot().version;
        versions.record_at(PEER, version, published);
        let seen = acks.acks(PEER, published + Duration::from_millis(5));
        match seen {
            AckObservation::InFlight { version: v, .. } => assert_eq!(v, version),
            AckObservation::Acked { version: v, .. } => assert!(v < version, "change {i}"),
            other => panic!("change {i}: a downstream ACKing within 100 ms reads as {other:?}"),
        }
        z.recv_ack().await;
        eventually("the ACK is recorded", || {
            acks.acks(PEER, published)
                == AckObservation::Acked {
                    version,
                    downstreams: 1,
                }
        })
        .await;
    }

    // The downstream stops reading: within the allowance it still reads as having ACKed
    // what was due (an earlier change), then as lagging on the unread one.
    merged.apply(
        Address,
        [wl_named(
            "cluster-2//Pod/default/a",
            [10, 2, 0, 1],
            "unread",
        )],
        [],
    );
    let unread = merged.snapshot().version;
    let at = published + Duration::from_millis(100);
    versions.record_at(PEER, unread, at);
    match acks.acks(PEER, at + Duration::from_secs(1)) {
        AckObservation::Acked { version, .. } => assert!(version < unread),
        other => panic!("within the allowance: {other:?}"),
    }
    assert_eq!(
        acks.acks(PEER, at + ACK_ALLOWANCE),
        AckObservation::Waiting {
            version: unread,
            behind: 1,
            downstreams: 1,
            waited: ACK_ALLOWANCE,
        }
    );
}

#[tokio::test]
async fn userspace_probe_keeps_permitted_targets_when_the_guard_refuses_some() {
    use peerd::peers::ProbeSource as _;
    use peerd::peers::observe::{ProbeTargets, Reachability};
    let (hbone, _accept) = hbone_listener("127.0.6.1").await;
    let prober = Prober::new(ProberConfig {
        guard: TargetGuard::loopback_only(),
        ..ProberConfig::default()
    })
    .unwrap();
    let probe = UserspaceProbe::new(Arc::clone(&prober));
    let mut targets = std::collections::BTreeMap::new();
    targets.insert(
        PEER.to_string(),
        ProbeTargets {
            // 10.9.9.9 is refused by the guard: it is never connected to.
            hbone: vec![hbone, "10.9.9.9:15008".parse().unwrap()],
            xds: vec![],
            flat: false,
        },
    );
    probe.set_targets(&targets);
    assert_eq!(prober.targets(), vec![hbone]);
    prober.probe_once().await;
    let obs = probe.observe(PEER);
    assert_eq!(obs.hbone.unwrap().reachability, Reachability::Reachable);
    assert_eq!((obs.stats.attempts, obs.stats.established), (1, 1));
}

#[tokio::test]
async fn spawned_monitor_publishes_snapshots_and_watch_events() {
    let (hbone, _accept) = hbone_listener("127.0.7.1").await;
    let prober = Prober::new(ProberConfig {
        interval: Duration::from_millis(50),
        jitter: Duration::ZERO,
        guard: TargetGuard::loopback_only(),
        ..ProberConfig::default()
    })
    .unwrap();
    let store = Store::new();
    let sources = MonitorSources {
        upstreams: AdsClients::new(),
        imports: store,
        acks: Arc::new(DownstreamAcks {
            subscribers: Subscribers::new(),
            view_label: "downstream".into(),
            versions: RecordedPeerVersions::new(),
        }),
        probe: UserspaceProbe::new(Arc::clone(&prober)),
    };
    let config = MonitorConfig {
        hysteresis: HysteresisConfig {
            failure_window: WINDOW,
            success_run: 1,
            first_probe_grace: Duration::ZERO,
        },
        tick: Duration::from_millis(50),
        ..MonitorConfig::default()
    };
    let local = LocalCluster {
        cluster: "cluster-1".into(),
        network: "net-a".into(),
        flat_networks: false,
    };
    let monitor = PeerMonitor::new(
        local,
        vec![spec("127.0.7.1", 15012, hbone.port())],
        config,
        sources,
        Instant::now(),
    );
    let mut events = monitor.subscribe();
    let cancel = CancellationToken::new();
    let task = monitor.spawn(cancel.clone());
    let prober_task = prober.spawn().unwrap();
    // The watch stream carries the data plane turning True, as JSON-ready events.
    let deadline = tokio::time::Instant::now() + WAIT;
    let event = loop {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("no PeerDataPlaneProgrammed=True event")
            .unwrap();
        if e.type_ == T::PeerDataPlaneProgrammed && e.new_status == S::True {
            break e;
        }
    };
    assert_eq!(event.peer, PEER);
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(json["type"], "gloo.solo.io/PeerDataPlaneProgrammed");
    assert_eq!(json["newStatus"], "True");
    let snap = monitor.snapshot();
    assert_eq!(snap[0].status(T::PeerDataPlaneProgrammed), Some(S::True));
    cancel.cancel();
    task.await.unwrap();
    prober_task.abort();
}
