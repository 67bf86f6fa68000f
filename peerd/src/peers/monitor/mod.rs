//! [`PeerMonitor`]: every tick, gathers the observations of each peer (xDS client, store
//! sync flags, downstream ACKs, HBONE probe), turns them into the five conditions through
//! hysteresis, publishes a snapshot (`ArcSwap<Vec<PeerStatus>>`), broadcasts every
//! condition change as a [`ConditionEvent`], and exports the metrics
//! `peerd_peer_connected{peer_cluster}`, `peerd_peer_condition{peer_cluster,type,status}`
//! and `peerd_peer_condition_transitions_total{peer_cluster,type}`, plus
//! `peerd_probe_mode{mode}` (1 for the active probe mode, `ebpf` or `userspace`).
//!
//! Owns: the per-peer condition state and the messages a person acts on. Must never
//! write to the sources it reads, never block a tick on the network except to resolve a
//! hostname peer address (bounded), and never let one bad peer affect another's status.
//!
//! Layout: this file holds the tick loop and the per-peer state; `evidence` turns one
//! peer's observations into each condition's hysteresis input (pure), and `metrics`
//! mirrors the decided conditions into metrics.

mod evidence;
mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::conditions::{
    Condition, ConditionEvent, ConditionStatus, ConditionType, Conditions, reason,
};
use super::hysteresis::{Hysteresis, HysteresisConfig, Verdict};
use super::model::{InvalidPeer, LocalCluster, PeerModel, PeerSpec, build_all};
use super::observe::{
    AckSource, ImportSource, ProbeSource, ProbeStats, ProbeTargets, UpstreamSource,
};
use crate::config::PeerAddress;
use crate::probe::prober::TargetGuard;
use evidence::{connection_observation, data_plane_observation, new_failure_at, sync_observation};

/// What the monitor reads.
#[derive(Clone)]
pub struct MonitorSources {
    pub upstreams: Arc<dyn UpstreamSource>,
    pub imports: Arc<dyn ImportSource>,
    pub acks: Arc<dyn AckSource>,
    pub probe: Arc<dyn ProbeSource>,
}

#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub hysteresis: HysteresisConfig,
    /// Time between evaluations.
    pub tick: Duration,
    /// Pod IPs probed per flat peer (a sample: any reachable pod proves the path).
    pub flat_probe_targets: usize,
    /// Bound on resolving a hostname peer address.
    pub resolve_timeout: Duration,
    /// Which addresses may be probed (the sandbox allows only loopback). A flat peer
    /// whose pod IPs are all refused is probed on its gateway's HBONE port instead.
    pub probe_guard: TargetGuard,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            hysteresis: HysteresisConfig::default(),
            tick: Duration::from_secs(1),
            flat_probe_targets: 4,
            resolve_timeout: Duration::from_secs(2),
            probe_guard: TargetGuard::Unrestricted,
        }
    }
}

/// One peer's status, as `peerd status`, the debug API and the sandbox JSON show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerStatus {
    /// The peer's cluster, or where its spec came from when the cluster is unusable.
    pub name: String,
    pub cluster: String,
    pub network: String,
    pub address: String,
    pub flat: bool,
    /// `LoadBalancer` or `NodePort`.
    pub data_plane: &'static str,
    pub generation: i64,
    pub conditions: Conditions,
    pub probe: ProbeStats,
}

impl PeerStatus {
    pub fn condition(&self, t: ConditionType) -> Option<&Condition> {
        self.conditions.get(t)
    }

    pub fn status(&self, t: ConditionType) -> Option<ConditionStatus> {
        self.conditions.status(t)
    }
}

const EVENT_RING: usize = 1024;

struct Tracker {
    spec: PeerSpec,
    model: Result<PeerModel, InvalidPeer>,
    conditions: Conditions,
    connected: Hysteresis,
    succeeded: Hysteresis,
    data_plane: Hysteresis,
    probe: ProbeStats,
    /// When the xDS client's failure last fed to the hysteresis happened: the same
    /// failure read again (the client sleeping in its backoff) is no news.
    failure_seen: Option<Instant>,
}

impl Tracker {
    fn new(
        spec: PeerSpec,
        model: Result<PeerModel, InvalidPeer>,
        cfg: HysteresisConfig,
        now: Instant,
        conditions: Conditions,
    ) -> Self {
        // A spec change of a known peer resumes from what its conditions show (a
        // generation bump must not flap them back to Pending), and so does a peer whose
        // Gateway already shows conditions (a restart); an invalid or new peer starts
        // pending.
        let start = |t: ConditionType, pending: &str| match conditions.get(t) {
            Some(c) if c.status != ConditionStatus::Unknown && c.reason != reason::INVALID => {
                Hysteresis::resume(
                    cfg,
                    now,
                    Verdict::new(c.status, &c.reason, c.message.clone()),
                )
            }
            _ => Hysteresis::new(cfg, now, pending),
        };
        Tracker {
            connected: start(ConditionType::PeerConnected, "not connected to peer yet"),
            succeeded: start(
                ConditionType::PeeringSucceeded,
                "waiting for the first full sync from the peer",
            ),
            data_plane: start(
                ConditionType::PeerDataPlaneProgrammed,
                "waiting for local ztunnel ACKs and an HBONE probe of the peer",
            ),
            spec,
            model,
            conditions,
            probe: ProbeStats::default(),
            failure_seen: None,
        }
    }

    fn key(&self) -> String {
        self.spec.display_name()
    }

    /// Whether none of the observed conditions has left `Pending` since this tracker was
    /// made: it has nothing of its own to keep over what a Gateway shows.
    fn never_left_pending(&self) -> bool {
        [
            ConditionType::PeerConnected,
            ConditionType::PeeringSucceeded,
            ConditionType::PeerDataPlaneProgrammed,
        ]
        .into_iter()
        .all(|t| {
            self.conditions
                .get(t)
                .is_none_or(|c| c.status == ConditionStatus::Unknown && c.reason == reason::PENDING)
        })
    }
}

pub struct PeerMonitor {
    local: LocalCluster,
    config: MonitorConfig,
    sources: MonitorSources,
    /// Key: `PeerSpec::display_name()`, in spec order.
    trackers: Mutex<Vec<Tracker>>,
    snapshot: ArcSwap<Vec<PeerStatus>>,
    events: broadcast::Sender<ConditionEvent>,
    /// When the monitor started: the first-probe grace counts from here.
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PeerMonitor {
    pub fn new(
        local: LocalCluster,
        specs: Vec<PeerSpec>,
        config: MonitorConfig,
        sources: MonitorSources,
        now: Instant,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(EVENT_RING);
        let monitor = PeerMonitor {
            local,
            config,
            sources,
            trackers: Mutex::new(Vec::new()),
            snapshot: ArcSwap::from_pointee(Vec::new()),
            events,
            started: now,
        };
        monitor.set_peers(specs, now);
        Arc::new(monitor)
    }

    /// Replaces the declared peers (Gateways changed). A peer whose spec is unchanged
    /// keeps its state; a changed spec restarts its hysteresis (the conditions keep their
    /// transition times while their status holds); a removed peer is forgotten.
    pub fn set_peers(&self, specs: Vec<PeerSpec>, now: Instant) {
        self.set_peers_resuming(specs, &BTreeMap::new(), now);
    }

    /// [`set_peers`](Self::set_peers), where a peer new to this monitor, or still pending
    /// since it was added, resumes from the conditions its Gateway already shows (`shown`,
    /// by display name; see `kube::condition_sync::shown_conditions`) instead of starting
    /// `Pending`. A restarted peerd so continues the hysteresis of its previous run: a True
    /// condition turns False only after the failure window, and nothing is written back to
    /// Unknown while the first probes run (which flapped the Gateway True → Unknown → True
    /// on every restart of the writing peerd).
    pub fn set_peers_resuming(
        &self,
        specs: Vec<PeerSpec>,
        shown: &BTreeMap<String, Conditions>,
        now: Instant,
    ) {
        let models = build_all(&specs, &self.local);
        let mut trackers = lock(&self.trackers);
        let mut old: HashMap<String, Tracker> = trackers.drain(..).map(|t| (t.key(), t)).collect();
        for (spec, model) in specs.into_iter().zip(models) {
            let key = spec.display_name();
            let tracker = match (old.remove(&key), shown.get(&key)) {
                // Still pending since it was made: the monitor starts from the configured
                // peers before the Gateways are read, so at a restart this is the usual
                // case, not only a peer new to the monitor.
                (Some(t), Some(shown)) if t.never_left_pending() => {
                    Tracker::new(spec, model, self.config.hysteresis, now, shown.clone())
                }
                (Some(t), _) if t.spec == spec => t,
                (Some(t), _) => {
                    Tracker::new(spec, model, self.config.hysteresis, now, t.conditions)
                }
                (None, shown) => {
                    let shown = shown.cloned().unwrap_or_default();
                    Tracker::new(spec, model, self.config.hysteresis, now, shown)
                }
            };
            trackers.push(tracker);
        }
        for gone in old.keys() {
            metrics::clear_peer(gone);
        }
    }

    /// The latest statuses, in spec order.
    pub fn snapshot(&self) -> Arc<Vec<PeerStatus>> {
        self.snapshot.load_full()
    }

    /// Condition changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ConditionEvent> {
        self.events.subscribe()
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Where each valid peer is probed; hostname addresses are resolved (bounded).
    async fn probe_targets(&self) -> BTreeMap<String, ProbeTargets> {
        let models: Vec<PeerModel> = lock(&self.trackers)
            .iter()
            .filter_map(|t| t.model.as_ref().ok().cloned())
            .collect();
        let mut out = BTreeMap::new();
        for m in models {
            let gateway_ips = match &m.address {
                PeerAddress::Ip(ip) => vec![*ip],
                PeerAddress::Hostname(host) => {
                    let lookup = tokio::net::lookup_host((host.as_str(), m.xds_port));
                    match tokio::time::timeout(self.config.resolve_timeout, lookup).await {
                        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).take(1).collect(),
                        Ok(Err(err)) => {
                            tracing::debug!(peer = %m.cluster, %host, %err, "resolving peer address failed");
                            Vec::new()
                        }
                        Err(_) => Vec::new(),
                    }
                }
            };
            let xds = gateway_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, m.xds_port))
                .collect();
            let gateway_hbone = |port: u16| -> Vec<SocketAddr> {
                gateway_ips
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, port))
                    .collect()
            };
            let hbone = match m.hbone_port {
                // NodePort data plane: the HBONE listener is unused, nothing to probe.
                _ if m.node_port => Vec::new(),
                None => Vec::new(),
                Some(port) if m.flat => {
                    let pods: Vec<SocketAddr> = self
                        .sources
                        .imports
                        .workload_ips(&m.cluster, self.config.flat_probe_targets)
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .filter(|a| self.config.probe_guard.permits(*a))
                        .collect();
                    if pods.is_empty() {
                        gateway_hbone(port)
                    } else {
                        pods
                    }
                }
                Some(port) => gateway_hbone(port),
            };
            out.insert(
                m.cluster.clone(),
                ProbeTargets {
                    hbone,
                    xds,
                    flat: m.flat,
                },
            );
        }
        out
    }

    /// One evaluation of every peer at `now` (monotonic, for hysteresis) / `wall` (for
    /// transition times). Returns the events it broadcast.
    pub async fn tick(&self, now: Instant, wall: SystemTime) -> Vec<ConditionEvent> {
        let targets = self.probe_targets().await;
        self.sources.probe.set_targets(&targets);
        let mode = self.sources.probe.mode();
        metrics::export_probe_mode(mode);
        let mut events = Vec::new();
        let mut statuses = Vec::new();
        let mut trackers = lock(&self.trackers);
        for tracker in trackers.iter_mut() {
            let mut peer_events = match tracker.model.clone() {
                Err(invalid) => self.evaluate_invalid(tracker, &invalid, wall),
                Ok(model) => {
                    let peer_targets = targets.get(&model.cluster).cloned().unwrap_or_default();
                    self.evaluate(tracker, &model, &peer_targets, now, wall)
                }
            };
            statuses.push(status_of(tracker));
            metrics::export_peer(tracker.key(), &tracker.conditions, &peer_events);
            events.append(&mut peer_events);
        }
        drop(trackers);
        self.snapshot.store(Arc::new(statuses));
        for e in &events {
            tracing::info!(
                peer = %e.peer,
                condition = %e.type_,
                old = ?e.old_status,
                new = %e.new_status,
                reason = %e.reason,
                message = %e.message,
                "peer condition changed"
            );
            // No subscribers is fine.
            let _ = self.events.send(e.clone());
        }
        events
    }

    fn evaluate_invalid(
        &self,
        tracker: &mut Tracker,
        invalid: &InvalidPeer,
        wall: SystemTime,
    ) -> Vec<ConditionEvent> {
        let name = tracker.key();
        let generation = tracker.spec.generation;
        let message = format!("invalid peer spec: {}", invalid.message);
        tracker.probe = ProbeStats {
            mode: self.sources.probe.mode().to_string(),
            ..ProbeStats::default()
        };
        ConditionType::ALL
            .iter()
            .filter_map(|t| {
                tracker.conditions.set(
                    &name,
                    *t,
                    &Verdict::new(ConditionStatus::False, reason::INVALID, message.clone()),
                    generation,
                    wall,
                )
            })
            .collect()
    }

    fn evaluate(
        &self,
        tracker: &mut Tracker,
        model: &PeerModel,
        targets: &ProbeTargets,
        now: Instant,
        wall: SystemTime,
    ) -> Vec<ConditionEvent> {
        let peer = model.cluster.as_str();
        let upstream = self.sources.upstreams.upstream(peer);
        let probe = self.sources.probe.observe(peer);
        tracker.probe = probe.stats.clone();

        let accepted = Verdict {
            status: ConditionStatus::True,
            reason: reason::ACCEPTED.into(),
            message: format!(
                "peer {} on network {} at {} ({})",
                model.cluster,
                model.network,
                model.address,
                if model.flat {
                    "flat network: pod IPs, no gateway"
                } else {
                    "multi-network: through its east-west gateway"
                }
            ),
        };
        let programmed = match &upstream {
            Some(u) => Verdict {
                status: ConditionStatus::True,
                reason: reason::PROGRAMMED.into(),
                message: format!("xDS client configured for {}", u.endpoint),
            },
            None => Verdict {
                status: ConditionStatus::False,
                reason: reason::PENDING.into(),
                message: "no xDS client is configured for this peer yet".into(),
            },
        };
        let seen = tracker.failure_seen;
        // A failed attempt stands for when it failed, not for when this tick read it.
        let at = new_failure_at(upstream.as_ref(), seen).unwrap_or(now);
        let connected = tracker
            .connected
            .observe(at, connection_observation(upstream.as_ref(), &probe, seen))
            .clone();
        let succeeded = tracker
            .succeeded
            .observe(
                at,
                sync_observation(self.sources.imports.as_ref(), peer, upstream.as_ref(), seen),
            )
            .clone();
        tracker.failure_seen = upstream
            .as_ref()
            .and_then(|u| u.failure.as_ref())
            .map(|f| f.at);
        let data_plane = if model.hbone_port.is_none() && !model.node_port {
            // A spec problem, not a measurement: no hysteresis.
            Verdict {
                status: ConditionStatus::False,
                reason: reason::MISSING_HBONE_LISTENER.into(),
                message: format!(
                    "the peer gateway declares no HBONE listener; add listener port {} protocol HBONE, or set {}: NodePort",
                    super::model::HBONE_PORT,
                    super::model::DATA_PLANE_ANNOTATION
                ),
            }
        } else {
            let obs =
                data_plane_observation(model, targets, &probe, self.sources.acks.acks(peer, now));
            tracker.data_plane.observe(now, obs).clone()
        };

        let generation = model.generation;
        let name = model.cluster.clone();
        [
            (ConditionType::Accepted, accepted),
            (ConditionType::Programmed, programmed),
            (ConditionType::PeerConnected, connected),
            (ConditionType::PeeringSucceeded, succeeded),
            (ConditionType::PeerDataPlaneProgrammed, data_plane),
        ]
        .into_iter()
        .filter_map(|(t, v)| tracker.conditions.set(&name, t, &v, generation, wall))
        .collect()
    }

    /// Ticks every `config.tick` until `cancel` fires.
    pub fn spawn(self: &Arc<Self>, cancel: CancellationToken) -> JoinHandle<()> {
        let monitor = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(monitor.config.tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = ticker.tick() => {
                        monitor.tick(Instant::now(), SystemTime::now()).await;
                    }
                }
            }
        })
    }
}

fn status_of(t: &Tracker) -> PeerStatus {
    let (cluster, network, address, flat, data_plane, generation) = match &t.model {
        Ok(m) => (
            m.cluster.clone(),
            m.network.clone(),
            m.address.to_string(),
            m.flat,
            if m.node_port {
                "NodePort"
            } else {
                "LoadBalancer"
            },
            m.generation,
        ),
        Err(_) => (
            t.spec.cluster.clone().unwrap_or_default(),
            t.spec.network.clone().unwrap_or_default(),
            t.spec
                .addresses
                .first()
                .map(|a| a.value.clone())
                .unwrap_or_default(),
            false,
            "LoadBalancer",
            t.spec.generation,
        ),
    };
    PeerStatus {
        name: t.key(),
        cluster,
        network,
        address,
        flat,
        data_plane,
        generation,
        conditions: t.conditions.clone(),
        probe: t.probe.clone(),
    }
}
