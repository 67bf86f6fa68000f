//! PeerMonitor with scripted observation sources (no network): clock-injected ticks, so
//! hysteresis, grace and flapping are checked deterministically.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::conditions::{ConditionStatus as S, ConditionType as T, reason};
use super::hysteresis::HysteresisConfig;
use super::model::{LocalCluster, PeerSpec, SpecAddress, SpecListener, SpecSource};
use super::monitor::{MonitorConfig, MonitorSources, PeerMonitor, PeerStatus};
use super::observe::*;
use crate::probe::aggregator::{ConnectCounts, DestinationReport, ProbeReport};
use crate::xds::types::ResourceType;

#[derive(Default)]
struct Fake {
    upstream: Mutex<HashMap<String, UpstreamObservation>>,
    sync: Mutex<HashMap<String, SyncObservation>>,
    acks: Mutex<HashMap<String, AckObservation>>,
    probe: Mutex<HashMap<String, ProbeObservation>>,
    targets: Mutex<BTreeMap<String, ProbeTargets>>,
    /// Peers whose client sleeps in its reconnect backoff: it keeps its last failure.
    /// Any other failing client fails a new attempt before every read.
    in_backoff: Mutex<std::collections::HashSet<String>>,
    /// The time of the tick in progress (the test clock): a failing attempt's time.
    now: Mutex<Option<Instant>>,
}

impl Fake {
    fn now(&self) -> Instant {
        self.now.lock().unwrap().unwrap_or_else(Instant::now)
    }
}

impl UpstreamSource for Fake {
    fn upstream(&self, peer: &str) -> Option<UpstreamObservation> {
        let mut upstreams = self.upstream.lock().unwrap();
        let u = upstreams.get_mut(peer)?;
        if let Some(f) = &mut u.failure
            && !self.in_backoff.lock().unwrap().contains(peer)
        {
            f.at = self.now();
        }
        Some(u.clone())
    }
}

impl ImportSource for Fake {
    fn sync(&self, peer: &str) -> Option<SyncObservation> {
        self.sync.lock().unwrap().get(peer).cloned()
    }
    fn workload_ips(&self, _peer: &str, _limit: usize) -> Vec<std::net::IpAddr> {
        vec!["127.0.9.1".parse().unwrap()]
    }
}

impl AckSource for Fake {
    fn acks(&self, peer: &str, _now: Instant) -> AckObservation {
        self.acks
            .lock()
            .unwrap()
            .get(peer)
            .cloned()
            .unwrap_or(AckObservation::NothingToAck { downstreams: 0 })
    }
}

impl ProbeSource for Fake {
    fn mode(&self) -> &'static str {
        "userspace"
    }
    fn set_targets(&self, targets: &BTreeMap<String, ProbeTargets>) {
        *self.targets.lock().unwrap() = targets.clone();
    }
    fn observe(&self, peer: &str) -> ProbeObservation {
        self.probe
            .lock()
            .unwrap()
            .get(peer)
            .cloned()
            .unwrap_or_default()
    }
}

impl Fake {
    fn connected(&self, peer: &str, up: bool) {
        self.in_backoff.lock().unwrap().remove(peer);
        let failure = (!up).then(|| UpstreamFailure {
            reason: reason::CONNECTION_REFUSED,
            message: format!("connection refused by 127.0.2.1:15012 ({peer})"),
            at: self.now(),
        });
        self.upstream.lock().unwrap().insert(
            peer.into(),
            UpstreamObservation {
                endpoint: "127.0.2.1:15012".into(),
                connected: up,
                failure,
            },
        );
    }

    fn synced(&self, peer: &str, synced: bool, held: usize) {
        let synced = if synced {
            ResourceType::ALL.to_vec()
        } else {
            Vec::new()
        };
        self.sync
            .lock()
            .unwrap()
            .insert(peer.into(), SyncObservation { synced, held });
    }

    fn hbone(&self, peer: &str, r: Option<Reachability>) {
        let target: SocketAddr = "127.0.2.1:15008".parse().unwrap();
        self.probe.lock().unwrap().insert(
            peer.into(),
            ProbeObservation {
                hbone: r.map(|reachability| PortVerdict {
                    reachability,
                    target,
                }),
                xds: None,
                stats: ProbeStats {
                    mode: "userspace".into(),
                    attempts: 3,
                    established: 2,
                    refused: 1,
                    ..ProbeStats::default()
                },
            },
        );
    }

    /// An attempt failed at `at`, and the client then sleeps in its backoff.
    fn failed_at(&self, peer: &str, at: Instant) {
        self.connected(peer, false);
        self.sleeps_in_backoff(peer);
        let mut upstreams = self.upstream.lock().unwrap();
        if let Some(f) = upstreams.get_mut(peer).and_then(|u| u.failure.as_mut()) {
            f.at = at;
        }
    }

    /// The client stops attempting for a while: its last failure stays as it is.
    fn sleeps_in_backoff(&self, peer: &str) {
        self.in_backoff.lock().unwrap().insert(peer.to_string());
    }

    fn healthy(&self, peer: &str) {
        self.connected(peer, true);
        self.synced(peer, true, 12);
        self.hbone(peer, Some(Reachability::Reachable));
        self.acks.lock().unwrap().insert(
            peer.into(),
            AckObservation::Acked {
                version: 7,
                downstreams: 1,
            },
        );
    }
}

fn spec(cluster: &str, ip: &str) -> PeerSpec {
    PeerSpec {
        source: SpecSource::Gateway {
            namespace: "istio-eastwest".into(),
            name: format!("istio-remote-peer-{cluster}"),
        },
        generation: 2,
        cluster: Some(cluster.into()),
        network: Some("net-b".into()),
        addresses: vec![SpecAddress {
            kind: "IPAddress".into(),
            value: ip.into(),
        }],
        trust_domain: Some("cluster.local".into()),
        listeners: vec![
            SpecListener {
                name: "cross-network".into(),
                port: 15008,
                protocol: "HBONE".into(),
            },
            SpecListener {
                name: "xds-tls".into(),
                port: 15012,
                protocol: "TLS".into(),
            },
        ],
        data_plane_service_type: None,
        peerd_identity: None,
    }
}

fn local() -> LocalCluster {
    LocalCluster {
        cluster: "cluster-1".into(),
        network: "net-a".into(),
        flat_networks: true,
    }
}

struct Clock {
    base: Instant,
    fake: Arc<Fake>,
}

impl Clock {
    fn at(&self, s: u64) -> (Instant, SystemTime) {
        (
            self.base + Duration::from_secs(s),
            UNIX_EPOCH + Duration::from_secs(1_000_000 + s),
        )
    }
}

fn monitor(specs: Vec<PeerSpec>, grace: u64) -> (Arc<PeerMonitor>, Arc<Fake>, Clock) {
    let fake = Arc::new(Fake::default());
    let sources = MonitorSources {
        upstreams: fake.clone(),
        imports: fake.clone(),
        acks: fake.clone(),
        probe: fake.clone(),
    };
    let config = MonitorConfig {
        hysteresis: HysteresisConfig {
            failure_window: Duration::from_secs(10),
            success_run: 2,
            first_probe_grace: Duration::from_secs(grace),
        },
        ..MonitorConfig::default()
    };
    let base = Instant::now();
    let m = PeerMonitor::new(local(), specs, config, sources, base);
    let clock = Clock {
        base,
        fake: Arc::clone(&fake),
    };
    (m, fake, clock)
}

/// A monitor of one peer, cluster-2, healthy for two ticks (0 and 1 s): every condition
/// True.
async fn healthy_cluster_2() -> (Arc<PeerMonitor>, Arc<Fake>, Clock) {
    let (m, fake, c) = monitor(vec![spec("cluster-2", "127.0.2.1")], 0);
    fake.healthy("cluster-2");
    tick(&m, &c, 0).await;
    tick(&m, &c, 1).await;
    (m, fake, c)
}

async fn tick(m: &PeerMonitor, c: &Clock, s: u64) -> Arc<Vec<PeerStatus>> {
    let (now, wall) = c.at(s);
    *c.fake.now.lock().unwrap() = Some(now);
    m.tick(now, wall).await;
    m.snapshot()
}

/// cluster-2's `PeerConnected` and `PeeringSucceeded` (the conditions of its xDS
/// stream) both show `status` at `s` seconds.
fn assert_stream_conditions(statuses: &[PeerStatus], status: S, s: u64) {
    for t in [T::PeerConnected, T::PeeringSucceeded] {
        assert_eq!(cond(statuses, "cluster-2", t).0, status, "{t} at {s}s");
    }
}

fn cond(statuses: &[PeerStatus], peer: &str, t: T) -> (S, String, String) {
    let p = statuses.iter().find(|p| p.name == peer).unwrap();
    let c = p.condition(t).unwrap();
    (c.status, c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn healthy_peer_turns_every_condition_true_after_the_success_run() {
    let (m, fake, c) = monitor(vec![spec("cluster-2", "127.0.2.1")], 0);
    fake.healthy("cluster-2");
    let s = tick(&m, &c, 0).await;
    assert_eq!(cond(&s, "cluster-2", T::Accepted).0, S::True);
    assert_eq!(cond(&s, "cluster-2", T::Programmed).0, S::True);
    assert_eq!(
        cond(&s, "cluster-2", T::PeerConnected).0,
        S::Unknown,
        "one success is not a run"
    );
    let s = tick(&m, &c, 1).await;
    for t in T::ALL {
        assert_eq!(cond(&s, "cluster-2", t).0, S::True, "{t}");
    }
    let (_, r, msg) = cond(&s, "cluster-2", T::PeerDataPlaneProgrammed);
    assert_eq!(r, "Programmed");
    assert!(msg.contains("HBONE 127.0.2.1:15008 reachable"), "{msg}");
    // The probe targets are the gateway's 15008 and 15012.
    let targets = fake
        .targets
        .lock()
        .unwrap()
        .get("cluster-2")
        .cloned()
        .unwrap();
    assert_eq!(targets.hbone, vec!["127.0.2.1:15008".parse().unwrap()]);
    assert_eq!(targets.xds, vec!["127.0.2.1:15012".parse().unwrap()]);
    // Status JSON shape.
    let json = serde_json::to_value(&s[0]).unwrap();
    assert_eq!(
        json["conditions"]["gloo.solo.io/PeerConnected"]["status"],
        "True"
    );
    assert_eq!(json["probe"]["mode"], "userspace");
    assert_eq!(json["probe"]["attempts"], 3);
    for k in [
        "established",
        "refused",
        "timeouts",
        "aborted",
        "syn_retransmits",
        "p50_us",
        "p99_us",
    ] {
        assert!(json["probe"].get(k).is_some(), "probe.{k} missing");
    }
    assert_eq!(json["flat"], false);
}

#[tokio::test]
async fn disconnect_turns_false_only_after_the_window_and_emits_events() {
    let (m, fake, c) = healthy_cluster_2().await;
    let mut events = m.subscribe();
    fake.connected("cluster-2", false);
    fake.synced("cluster-2", false, 12);
    for s in 2..12 {
        let st = tick(&m, &c, s).await;
        assert_eq!(
            cond(&st, "cluster-2", T::PeerConnected).0,
            S::True,
            "at {s}s"
        );
    }
    assert!(events.try_recv().is_err(), "no event within the window");
    let st = tick(&m, &c, 12).await;
    let (status, r, msg) = cond(&st, "cluster-2", T::PeerConnected);
    assert_eq!((status, r.as_str()), (S::False, "ConnectionRefused"));
    assert!(
        msg.contains("connection refused") && msg.contains("check the peer's east-west gateway"),
        "{msg}"
    );
    let (status, r, msg) = cond(&st, "cluster-2", T::PeeringSucceeded);
    assert_eq!((status, r.as_str()), (S::False, "Stale"));
    assert!(
        msg.contains("serving its last known state (12 resources)"),
        "{msg}"
    );
    let mut got = Vec::new();
    while let Ok(e) = events.try_recv() {
        got.push((e.type_, e.old_status, e.new_status, e.reason));
    }
    assert!(
        got.contains(&(
            T::PeerConnected,
            Some(S::True),
            S::False,
            "ConnectionRefused".into()
        )),
        "{got:?}"
    );
    assert!(
        got.contains(&(T::PeeringSucceeded, Some(S::True), S::False, "Stale".into())),
        "{got:?}"
    );
    // The transition time is the wall time of the tick that turned it.
    let p = &m.snapshot()[0];
    assert_eq!(
        p.condition(T::PeerConnected).unwrap().last_transition,
        UNIX_EPOCH + Duration::from_secs(1_000_012)
    );
}

/// The soak's flap after recovery: the peer was down for less than the window, but the
/// client slept in its reconnect backoff past the window's end, and its last failure,
/// read on every tick, completed the window after the peer was back (False, then True
/// two seconds later). A failure already fed is no news; only a new failed attempt is.
#[tokio::test]
async fn a_failure_kept_through_the_backoff_never_completes_the_window() {
    let (m, fake, c) = healthy_cluster_2().await;
    let mut events = m.subscribe();
    // Down: attempts fail at 2..=6 s; the peer is back at 7 s, but the client sleeps
    // until 16 s, its 6 s refusal kept.
    fake.connected("cluster-2", false);
    fake.synced("cluster-2", false, 12);
    for s in 2..=6 {
        tick(&m, &c, s).await;
    }
    fake.sleeps_in_backoff("cluster-2");
    for s in 7..16 {
        let st = tick(&m, &c, s).await;
        assert_stream_conditions(&st, S::True, s);
    }
    fake.healthy("cluster-2");
    for s in 16..20 {
        let st = tick(&m, &c, s).await;
        assert_stream_conditions(&st, S::True, s);
    }
    assert!(
        events.try_recv().is_err(),
        "an outage shorter than the window is never reported"
    );

    // A peer still down at the next attempt: that failure is news, and completes the
    // window counted from the first failure of the outage.
    fake.connected("cluster-2", false);
    fake.synced("cluster-2", false, 12);
    tick(&m, &c, 20).await;
    fake.sleeps_in_backoff("cluster-2");
    let st = tick(&m, &c, 31).await;
    assert_eq!(cond(&st, "cluster-2", T::PeerConnected).0, S::True);
    fake.connected("cluster-2", false);
    let st = tick(&m, &c, 32).await;
    for (t, r) in [
        (T::PeerConnected, "ConnectionRefused"),
        (T::PeeringSucceeded, "Stale"),
    ] {
        let (status, reason, _) = cond(&st, "cluster-2", t);
        assert_eq!((status, reason.as_str()), (S::False, r), "{t}");
    }
}

/// The chaos suite's long partition: the stream broke at 25.85 s and the next connect
/// timed out 10.07 s later, but the ticks that read the two failures were 10.00 s apart
/// minus a few microseconds, and one peer never reported the partition. A failure counts
/// as of when it happened.
#[tokio::test]
async fn the_window_is_measured_between_failures_not_between_the_ticks_that_read_them() {
    let (m, fake, c) = healthy_cluster_2().await;
    let at = |ms: u64| c.base + Duration::from_millis(ms);
    let tick_at = |ms: u64| {
        *fake.now.lock().unwrap() = Some(at(ms));
        m.tick(at(ms), UNIX_EPOCH + Duration::from_millis(ms))
    };
    fake.failed_at("cluster-2", at(1_100));
    fake.synced("cluster-2", false, 12);
    tick_at(1_900).await;
    for ms in [2_900, 5_900, 8_900, 10_900] {
        tick_at(ms).await;
    }
    assert_eq!(
        cond(&m.snapshot(), "cluster-2", T::PeerConnected).0,
        S::True
    );
    // 9.95 s after the tick that read the first failure, 10.05 s after it happened.
    fake.failed_at("cluster-2", at(11_150));
    tick_at(11_850).await;
    for t in [T::PeerConnected, T::PeeringSucceeded] {
        assert_eq!(cond(&m.snapshot(), "cluster-2", t).0, S::False, "{t}");
    }
}

#[tokio::test]
async fn peer_flapping_every_second_does_not_flap_conditions() {
    let (m, fake, c) = healthy_cluster_2().await;
    let mut events = m.subscribe();
    for s in 2..120 {
        let up = s % 2 == 1;
        fake.connected("cluster-2", up);
        fake.synced("cluster-2", up, 12);
        fake.hbone(
            "cluster-2",
            Some(if up {
                Reachability::Reachable
            } else {
                Reachability::Refused
            }),
        );
        let st = tick(&m, &c, s).await;
        for t in T::ALL {
            assert_eq!(cond(&st, "cluster-2", t).0, S::True, "{t} flapped at {s}s");
        }
    }
    assert!(
        events.try_recv().is_err(),
        "a flapping peer produced condition events"
    );
}

#[tokio::test]
async fn first_probe_grace_keeps_conditions_pending() {
    let (m, fake, c) = monitor(vec![spec("cluster-2", "127.0.2.1")], 30);
    fake.connected("cluster-2", false);
    fake.hbone("cluster-2", Some(Reachability::TimedOut));
    for s in 0..30 {
        let st = tick(&m, &c, s).await;
        for t in [
            T::PeerConnected,
            T::PeeringSucceeded,
            T::PeerDataPlaneProgrammed,
        ] {
            let (status, r, _) = cond(&st, "cluster-2", t);
            assert_eq!((status, r.as_str()), (S::Unknown, "Pending"), "{t} at {s}s");
        }
    }
    let (_, _, msg) = cond(&m.snapshot(), "cluster-2", T::PeerConnected);
    assert!(
        msg.contains("ConnectionRefused"),
        "pending message names the failure: {msg}"
    );
    let st = tick(&m, &c, 30).await;
    assert_eq!(
        cond(&st, "cluster-2", T::PeerConnected).1,
        "ConnectionRefused"
    );
    // PeeringSucceeded stays Pending and names the connection failure behind it.
    let (status, r, msg) = cond(&st, "cluster-2", T::PeeringSucceeded);
    assert_eq!((status, r.as_str()), (S::False, "Pending"));
    assert!(
        msg.starts_with("not connected to peer (ConnectionRefused: ")
            && msg.ends_with("; waiting for its first full xDS response"),
        "{msg}"
    );
    let (status, r, msg) = cond(&st, "cluster-2", T::PeerDataPlaneProgrammed);
    assert_eq!((status, r.as_str()), (S::False, "HBONEConnectTimeout"));
    assert_eq!(
        msg,
        "connection timed out, maybe a NetworkPolicy is blocking HBONE port 15008"
    );
}

#[tokio::test]
async fn nack_from_local_ztunnel_is_not_acked_with_the_text() {
    let (m, fake, c) = healthy_cluster_2().await;
    let text = "cluster-2/default/pod-a: unknown network \"net-x\"";
    fake.acks.lock().unwrap().insert(
        "cluster-2".into(),
        AckObservation::Rejected {
            node: "ztunnel~10.0.0.1".into(),
            text: text.into(),
        },
    );
    for s in 2..13 {
        tick(&m, &c, s).await;
    }
    let (status, r, msg) = cond(&m.snapshot(), "cluster-2", T::PeerDataPlaneProgrammed);
    assert_eq!((status, r.as_str()), (S::False, "NotAcked"));
    assert!(
        msg.contains(text) && msg.contains("ztunnel~10.0.0.1"),
        "{msg}"
    );
    // A ztunnel that is merely behind is NotAcked too, naming the version.
    fake.acks.lock().unwrap().insert(
        "cluster-2".into(),
        AckObservation::Waiting {
            version: 9,
            behind: 1,
            downstreams: 2,
            waited: Duration::from_millis(2500),
        },
    );
    let (_, r, msg) = cond(
        &tick(&m, &c, 13).await,
        "cluster-2",
        T::PeerDataPlaneProgrammed,
    );
    assert_eq!(r, "NotAcked");
    assert!(
        msg.contains("1 of 2") && msg.contains("version 9") && msg.contains("published 2.5s ago"),
        "{msg}"
    );
}

/// Changes still within the ACK allowance are neither a success nor a failure: under
/// steady churn a True condition stays True however long they keep coming.
#[tokio::test]
async fn changes_in_flight_keep_the_data_plane_condition_where_it_is() {
    let (m, fake, c) = healthy_cluster_2().await;
    let (status, _, _) = cond(&m.snapshot(), "cluster-2", T::PeerDataPlaneProgrammed);
    assert_eq!(status, S::True);
    fake.acks.lock().unwrap().insert(
        "cluster-2".into(),
        AckObservation::InFlight {
            version: 9,
            downstreams: 2,
        },
    );
    for s in 2..60 {
        let (status, r, _) = cond(
            &tick(&m, &c, s).await,
            "cluster-2",
            T::PeerDataPlaneProgrammed,
        );
        assert_eq!((status, r.as_str()), (S::True, "Programmed"), "at {s}s");
    }
}

#[tokio::test]
async fn hbone_refused_is_reported() {
    let (m, fake, c) = monitor(vec![spec("cluster-2", "127.0.2.1")], 0);
    fake.healthy("cluster-2");
    fake.hbone("cluster-2", Some(Reachability::Refused));
    for s in 0..11 {
        tick(&m, &c, s).await;
    }
    let (status, r, msg) = cond(&m.snapshot(), "cluster-2", T::PeerDataPlaneProgrammed);
    assert_eq!((status, r.as_str()), (S::False, "HBONEConnectionRefused"));
    assert!(msg.contains("127.0.2.1:15008 refused"), "{msg}");
}

#[tokio::test]
async fn gateway_without_hbone_listener_is_missing_hbone_listener() {
    let mut sp = spec("cluster-2", "127.0.2.1");
    sp.listeners.retain(|l| l.port != 15008);
    let (m, fake, c) = monitor(vec![sp], 0);
    fake.healthy("cluster-2");
    let st = tick(&m, &c, 0).await;
    let (status, r, msg) = cond(&st, "cluster-2", T::PeerDataPlaneProgrammed);
    assert_eq!((status, r.as_str()), (S::False, "MissingHBONEListener"));
    assert!(msg.contains("port 15008 protocol HBONE"), "{msg}");
    assert_eq!(
        cond(&st, "cluster-2", T::Accepted).0,
        S::True,
        "still accepted"
    );
    assert!(
        fake.targets.lock().unwrap()["cluster-2"].hbone.is_empty(),
        "nothing to probe"
    );
}

#[tokio::test]
async fn invalid_peer_sets_all_conditions_false_invalid_and_spares_others() {
    let mut bad = spec("cluster-3", "not-an-ip");
    bad.addresses[0].kind = "IPAddress".into();
    let (m, fake, c) = monitor(vec![bad, spec("cluster-2", "127.0.2.1")], 0);
    fake.healthy("cluster-2");
    tick(&m, &c, 0).await;
    let st = tick(&m, &c, 1).await;
    for t in T::ALL {
        let (status, r, msg) = cond(&st, "cluster-3", t);
        assert_eq!((status, r.as_str()), (S::False, "Invalid"), "{t}");
        assert!(
            msg.contains("spec.addresses[0]: \"not-an-ip\" is not an IP address"),
            "{msg}"
        );
        assert_eq!(cond(&st, "cluster-2", t).0, S::True, "{t} of the good peer");
    }
    assert!(
        !fake.targets.lock().unwrap().contains_key("cluster-3"),
        "invalid peers are not probed"
    );
    // Fixing the spec makes it Accepted again.
    m.set_peers(
        vec![
            spec("cluster-3", "127.0.3.1"),
            spec("cluster-2", "127.0.2.1"),
        ],
        c.at(2).0,
    );
    let st = tick(&m, &c, 2).await;
    assert_eq!(cond(&st, "cluster-3", T::Accepted).0, S::True);
    assert_eq!(
        cond(&st, "cluster-3", T::Programmed),
        (
            S::False,
            "Pending".into(),
            "no xDS client is configured for this peer yet".into()
        )
    );
    assert_eq!(
        cond(&st, "cluster-2", T::PeerConnected).0,
        S::True,
        "unchanged peer keeps its state"
    );
}

#[tokio::test]
async fn flat_peer_with_unprobeable_pod_ips_is_probed_on_its_gateway() {
    let mut sp = spec("cluster-2", "127.0.2.1");
    sp.network = Some("net-a".into());
    let fake = Arc::new(Fake::default());
    let sources = MonitorSources {
        upstreams: fake.clone(),
        imports: Arc::new(NonLoopbackPods),
        acks: fake.clone(),
        probe: fake.clone(),
    };
    let config = MonitorConfig {
        probe_guard: crate::probe::prober::TargetGuard::loopback_only(),
        ..MonitorConfig::default()
    };
    let m = PeerMonitor::new(local(), vec![sp], config, sources, Instant::now());
    m.tick(Instant::now(), SystemTime::now()).await;
    let t = fake.targets.lock().unwrap()["cluster-2"].clone();
    assert_eq!(t.hbone, vec!["127.0.2.1:15008".parse().unwrap()]);
}

struct NonLoopbackPods;

impl ImportSource for NonLoopbackPods {
    fn sync(&self, _peer: &str) -> Option<SyncObservation> {
        None
    }
    fn workload_ips(&self, _peer: &str, _limit: usize) -> Vec<std::net::IpAddr> {
        vec!["10.2.0.1".parse().unwrap()]
    }
}

#[tokio::test]
async fn spec_change_of_a_healthy_peer_does_not_flap_its_conditions() {
    let (m, fake, c) = monitor(vec![spec("cluster-2", "127.0.2.1")], 60);
    fake.healthy("cluster-2");
    tick(&m, &c, 0).await;
    tick(&m, &c, 1).await;
    let mut events = m.subscribe();
    let mut newer = spec("cluster-2", "127.0.2.1");
    newer.generation = 3;
    m.set_peers(vec![newer], c.at(2).0);
    let st = tick(&m, &c, 2).await;
    for t in T::ALL {
        let cond = st[0].condition(t).unwrap();
        assert_eq!(cond.status, S::True, "{t}");
        assert_eq!(cond.observed_generation, 3, "{t}");
    }
    assert!(
        events.try_recv().is_err(),
        "no condition event for a generation bump"
    );
}

/// What a Gateway shows after a previous run found the peer healthy.
fn shown_all_true(generation: i64, since: SystemTime) -> super::Conditions {
    let mut shown = super::Conditions::new();
    for t in T::ALL {
        let value = super::conditions::ConditionValue::new(S::True, t.true_reason(), "earlier");
        shown.set("any", t, &value, generation, since);
    }
    shown
}

#[tokio::test]
async fn a_restarted_monitor_resumes_what_the_gateways_show_instead_of_pending() {
    let (m, fake, c) = monitor(Vec::new(), 60);
    let earlier = UNIX_EPOCH + Duration::from_secs(5);
    let shown: BTreeMap<String, super::Conditions> = ["cluster-2", "cluster-3"]
        .into_iter()
        .map(|peer| {
            let name = spec(peer, "127.0.2.1").display_name();
            (name, shown_all_true(2, earlier))
        })
        .collect();
    let mut events = m.subscribe();
    m.set_peers_resuming(
        vec![
            spec("cluster-2", "127.0.2.1"),
            spec("cluster-3", "127.0.3.1"),
        ],
        &shown,
        c.at(0).0,
    );
    // cluster-2 is still healthy; cluster-3 went down while no peerd ran.
    fake.healthy("cluster-2");
    fake.connected("cluster-3", false);
    for s in 0..=9 {
        let st = tick(&m, &c, s).await;
        for peer in ["cluster-2", "cluster-3"] {
            for t in T::ALL {
                assert_eq!(cond(&st, peer, t).0, S::True, "{peer} {t} at {s}s");
            }
        }
    }
    let st = tick(&m, &c, 9).await;
    let kept = st[0].condition(T::PeerConnected).unwrap();
    assert_eq!(
        kept.last_transition, earlier,
        "the transition time is the one the Gateway shows"
    );
    assert!(
        events.try_recv().is_err(),
        "no status event while the first observations agree or are shorter than the window"
    );
    // Resumed, not frozen: the failure window still turns a down peer False.
    let st = tick(&m, &c, 11).await;
    assert_eq!(cond(&st, "cluster-3", T::PeerConnected).0, S::False);
    assert_eq!(cond(&st, "cluster-2", T::PeerConnected).0, S::True);
}

/// What the daemon does at a restart: the monitor is built from the peers configured at
/// start (read from the Gateways) and ticks once before the Gateways' conditions are
/// handed over. Those peers were not new to it, so they stayed `Pending` and the leader
/// wrote Unknown over the Gateways' True (the soak's restarts showed `None -> Unknown`).
#[tokio::test]
async fn a_monitor_started_from_the_configured_peers_still_resumes_what_the_gateways_show() {
    let peers = vec![spec("cluster-2", "127.0.2.1")];
    let (m, fake, c) = monitor(peers.clone(), 60);
    fake.healthy("cluster-2");
    let st = tick(&m, &c, 0).await;
    assert_eq!(cond(&st, "cluster-2", T::PeerConnected).0, S::Unknown);
    let earlier = UNIX_EPOCH + Duration::from_secs(5);
    let shown: BTreeMap<String, super::Conditions> =
        BTreeMap::from([(peers[0].display_name(), shown_all_true(2, earlier))]);
    let mut events = m.subscribe();
    m.set_peers_resuming(peers.clone(), &shown, c.at(0).0);
    let st = tick(&m, &c, 1).await;
    for t in T::ALL {
        assert_eq!(cond(&st, "cluster-2", t).0, S::True, "{t}");
    }
    assert_eq!(
        st[0].condition(T::PeerConnected).unwrap().last_transition,
        earlier
    );
    assert!(events.try_recv().is_err(), "nothing to write back");
    // A tracker that has left Pending keeps its own state over what a Gateway shows.
    fake.connected("cluster-2", false);
    let _ = tick(&m, &c, 2).await;
    let st = tick(&m, &c, 13).await;
    assert_eq!(cond(&st, "cluster-2", T::PeerConnected).0, S::False);
    m.set_peers_resuming(peers, &shown, c.at(13).0);
    let st = tick(&m, &c, 14).await;
    assert_eq!(cond(&st, "cluster-2", T::PeerConnected).0, S::False);
}

#[tokio::test]
async fn a_new_peer_without_shown_conditions_still_starts_pending() {
    let (m, _fake, c) = monitor(Vec::new(), 60);
    m.set_peers_resuming(
        vec![spec("cluster-2", "127.0.2.1")],
        &BTreeMap::new(),
        c.at(0).0,
    );
    let st = tick(&m, &c, 0).await;
    let (status, why, _) = cond(&st, "cluster-2", T::PeerConnected);
    assert_eq!((status, why.as_str()), (S::Unknown, reason::PENDING));
}

#[tokio::test]
async fn flat_peer_is_probed_on_pod_ips() {
    let mut sp = spec("cluster-2", "127.0.2.1");
    sp.network = Some("net-a".into());
    let (m, fake, c) = monitor(vec![sp], 0);
    fake.healthy("cluster-2");
    let st = tick(&m, &c, 0).await;
    assert!(st[0].flat);
    let t = fake.targets.lock().unwrap()["cluster-2"].clone();
    assert_eq!(t.hbone, vec!["127.0.9.1:15008".parse().unwrap()]);
    assert_eq!(t.xds, vec!["127.0.2.1:15012".parse().unwrap()]);
}

fn report(dest: SocketAddr, delta: ConnectCounts, total: ConnectCounts) -> ProbeReport {
    let mut r = ProbeReport::default();
    r.destinations.insert(
        dest,
        DestinationReport {
            destination: dest,
            total,
            delta,
            rates: Default::default(),
            p50_us: None,
            p99_us: None,
        },
    );
    r
}

#[test]
fn kernel_probe_attributes_counters_and_keeps_the_last_verdict() {
    let gw: SocketAddr = "127.0.3.1:15008".parse().unwrap();
    let timeouts = ConnectCounts {
        attempts: 4,
        timed_out: 4,
        syn_retransmits: 12,
        ..ConnectCounts::default()
    };
    let (tx, rx) = watch::channel(Arc::new(report(gw, timeouts, timeouts)));
    let probe = KernelProbe::new(rx);
    let mut targets = BTreeMap::new();
    targets.insert(
        "cluster-3".to_string(),
        ProbeTargets {
            hbone: vec![gw],
            xds: vec!["127.0.3.1:15012".parse().unwrap()],
            flat: false,
        },
    );
    probe.set_targets(&targets);
    let obs = probe.observe("cluster-3");
    assert_eq!(obs.hbone.unwrap().reachability, Reachability::TimedOut);
    assert_eq!(obs.xds, None, "no connects to 15012 seen");
    assert_eq!(
        (
            obs.stats.mode.as_str(),
            obs.stats.timeouts,
            obs.stats.syn_retransmits
        ),
        ("ebpf", 4, 12)
    );
    // A later report without new connects keeps the verdict.
    tx.send(Arc::new(report(gw, ConnectCounts::default(), timeouts)))
        .unwrap();
    assert_eq!(
        probe.observe("cluster-3").hbone.unwrap().reachability,
        Reachability::TimedOut
    );
    // A destination that is not a peer is not attributed to anyone.
    let stranger: SocketAddr = "127.0.7.7:15008".parse().unwrap();
    let ok = ConnectCounts {
        attempts: 1,
        established: 1,
        ..ConnectCounts::default()
    };
    tx.send(Arc::new(report(stranger, ok, ok))).unwrap();
    let obs = probe.observe("cluster-3");
    assert_eq!(obs.hbone.unwrap().reachability, Reachability::TimedOut);
    assert_eq!(obs.stats.attempts, 0);
}

/// A report of several destinations: (address, delta, total).
fn report_of(entries: &[(SocketAddr, ConnectCounts, ConnectCounts)]) -> ProbeReport {
    let mut r = ProbeReport::default();
    for &(dest, delta, total) in entries {
        r.destinations
            .extend(report(dest, delta, total).destinations);
    }
    r
}

/// Probe targets of one flat peer, cluster-2, at these pod addresses.
fn flat_cluster_2(pods: Vec<SocketAddr>) -> BTreeMap<String, ProbeTargets> {
    BTreeMap::from([(
        "cluster-2".to_string(),
        ProbeTargets {
            hbone: pods,
            xds: Vec::new(),
            flat: true,
        },
    )])
}

/// A flat peer's pod IP leaving the index (churn) must not count the peer's whole history
/// as new connects: the remaining totals went "backwards", and differencing per-peer totals
/// read that as a counter reset, so a peer whose new connects time out was shown
/// reachable again (from connects made long before) every time one of its pods went away.
#[test]
fn a_pod_ip_leaving_the_index_counts_nothing_again() {
    let old_pod: SocketAddr = "127.0.9.1:15008".parse().unwrap();
    let failing_pod: SocketAddr = "127.0.9.2:15008".parse().unwrap();
    let ok = |n| ConnectCounts {
        attempts: n,
        established: n,
        ..ConnectCounts::default()
    };
    let timeouts = |n| ConnectCounts {
        attempts: n,
        timed_out: n,
        ..ConnectCounts::default()
    };
    let targets = flat_cluster_2;
    // Long ago, 100 connects to one pod succeeded; now connects to another time out.
    let (tx, rx) = watch::channel(Arc::new(report_of(&[
        (old_pod, ok(100), ok(100)),
        (failing_pod, timeouts(4), timeouts(4)),
    ])));
    let probe = KernelProbe::new(rx);
    probe.set_targets(&targets(vec![failing_pod, old_pod]));
    tx.send(Arc::new(report_of(&[
        (old_pod, ConnectCounts::ZERO, ok(100)),
        (failing_pod, timeouts(4), timeouts(8)),
    ])))
    .unwrap();
    let hbone = |probe: &KernelProbe| probe.observe("cluster-2").hbone.unwrap().reachability;
    assert_eq!(hbone(&probe), Reachability::TimedOut);
    // The failing pod goes away; the old one stays, with no new connect.
    probe.set_targets(&targets(vec![old_pod]));
    assert_eq!(
        hbone(&probe),
        Reachability::TimedOut,
        "nothing new succeeded: the verdict stands"
    );
    tx.send(Arc::new(report_of(&[
        (old_pod, ConnectCounts::ZERO, ok(100)),
        (failing_pod, timeouts(4), timeouts(12)),
    ])))
    .unwrap();
    assert_eq!(hbone(&probe), Reachability::TimedOut);
    assert_eq!(
        probe.observe("cluster-2").stats.attempts,
        100,
        "the totals follow the index"
    );
}

/// A flat peer withdrawn past grace takes its pod IPs out of the index, and the reports
/// (scoped to the index) stop carrying them. When the peer resyncs and a pod IP returns,
/// only its new connects count: recounting its history (here, old successes) showed a
/// pod whose connects now time out as reachable.
#[test]
fn a_pod_ip_returning_to_the_index_counts_only_its_new_connects() {
    let pod: SocketAddr = "127.0.9.1:15008".parse().unwrap();
    let targets = flat_cluster_2;
    let ok = ConnectCounts {
        attempts: 100,
        established: 100,
        ..ConnectCounts::default()
    };
    let (tx, rx) = watch::channel(Arc::new(report_of(&[(pod, ok, ok)])));
    let probe = KernelProbe::new(rx);
    probe.set_targets(&targets(vec![pod]));
    let hbone = |probe: &KernelProbe| probe.observe("cluster-2").hbone.map(|v| v.reachability);
    assert_eq!(hbone(&probe), Some(Reachability::Reachable));
    // Withdrawn: out of the index, and the next report no longer carries it.
    probe.set_targets(&targets(Vec::new()));
    tx.send(Arc::new(ProbeReport::default())).unwrap();
    let _ = probe.observe("cluster-2");
    // Back, and its four new connects time out.
    probe.set_targets(&targets(vec![pod]));
    let timeouts = ConnectCounts {
        attempts: 4,
        timed_out: 4,
        ..ConnectCounts::default()
    };
    let mut total = ok;
    total.add(&timeouts);
    tx.send(Arc::new(report_of(&[(pod, timeouts, total)])))
        .unwrap();
    assert_eq!(
        hbone(&probe),
        Some(Reachability::TimedOut),
        "only the four new connects count"
    );
}

#[tokio::test]
async fn xds_probe_classifies_a_connect_still_in_progress() {
    let (m, fake, c) = monitor(vec![spec("cluster-2", "127.0.2.1")], 0);
    // The client has not failed yet (first attempt hanging), but the kernel saw the
    // connects to 15012 time out.
    fake.upstream.lock().unwrap().insert(
        "cluster-2".into(),
        UpstreamObservation {
            endpoint: "127.0.2.1:15012".into(),
            connected: false,
            failure: None,
        },
    );
    fake.probe.lock().unwrap().insert(
        "cluster-2".into(),
        ProbeObservation {
            xds: Some(PortVerdict {
                reachability: Reachability::TimedOut,
                target: "127.0.2.1:15012".parse().unwrap(),
            }),
            ..ProbeObservation::default()
        },
    );
    for s in 0..11 {
        tick(&m, &c, s).await;
    }
    let (status, r, msg) = cond(&m.snapshot(), "cluster-2", T::PeerConnected);
    assert_eq!((status, r.as_str()), (S::False, "ConnectTimeout"));
    assert!(msg.contains("127.0.2.1:15012 time out"), "{msg}");
}

#[test]
fn metrics_report_conditions_transitions_and_probe_mode() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let (m, fake, c) = monitor(vec![spec("cluster-2", "127.0.2.1")], 0);
            fake.healthy("cluster-2");
            tick(&m, &c, 0).await;
            tick(&m, &c, 1).await;
        })
    });
    let text = handle.render();
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has("peerd_peer_connected{peer_cluster=\"cluster-2\"} 1"),
        "{text}"
    );
    assert!(
        has(
            "peerd_peer_condition{peer_cluster=\"cluster-2\",type=\"gloo.solo.io/PeerConnected\",status=\"True\"} 1"
        ),
        "{text}"
    );
    assert!(
        has(
            "peerd_peer_condition{peer_cluster=\"cluster-2\",type=\"gloo.solo.io/PeerConnected\",status=\"Unknown\"} 0"
        ),
        "{text}"
    );
    // Unknown at the first tick (a first value is not a transition), True at the second.
    assert!(
        has(
            "peerd_peer_condition_transitions_total{peer_cluster=\"cluster-2\",type=\"gloo.solo.io/PeerConnected\"} 1"
        ),
        "{text}"
    );
    assert!(has("peerd_probe_mode{mode=\"userspace\"} 1"), "{text}");
    assert!(has("peerd_probe_mode{mode=\"ebpf\"} 0"), "{text}");
}
