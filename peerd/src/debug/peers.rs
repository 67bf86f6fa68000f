//! The debug API's view of peers when the peer monitor runs: conditions and probe
//! statistics from [`PeerMonitor`], imported counts and merge conflicts from
//! [`Federation`], stream state from the upstream clients. Read-only; it never changes
//! a peer.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::source::{Counts, PeerCondition, PeerEvent, PeerInfo, PeerSource, ProbeInfo};
use crate::federation::Federation;
use crate::peers::{ConditionEvent, PeerMonitor};
use crate::xds::stats::UpstreamList;

pub struct MonitorPeerSource {
    monitor: Arc<PeerMonitor>,
    federation: Arc<Federation>,
    upstreams: Arc<UpstreamList>,
    events: broadcast::Sender<PeerEvent>,
}

impl MonitorPeerSource {
    /// Builds the source and forwards the monitor's transitions until cancelled.
    pub fn start(
        monitor: Arc<PeerMonitor>,
        federation: Arc<Federation>,
        upstreams: Arc<UpstreamList>,
        cancel: CancellationToken,
    ) -> Arc<MonitorPeerSource> {
        let (events, _) = broadcast::channel(1024);
        let mut transitions = monitor.subscribe();
        let forward = events.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => return,
                    e = transitions.recv() => e,
                };
                match event {
                    Ok(e) => {
                        // No watcher is fine.
                        let _ = forward.send(peer_event(&e));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Arc::new(MonitorPeerSource {
            monitor,
            federation,
            upstreams,
            events,
        })
    }
}

fn peer_event(e: &ConditionEvent) -> PeerEvent {
    PeerEvent {
        at: e.at_time,
        kind: "condition".into(),
        peer: e.peer.clone(),
        message: format!(
            "{} {} → {} ({})",
            e.type_,
            e.old_status.map_or("none", |s| s.as_str()),
            e.new_status,
            e.reason
        ),
        condition: Some(PeerCondition {
            kind: e.type_.to_string(),
            status: e.new_status.to_string(),
            reason: e.reason.clone(),
            message: e.message.clone(),
            last_transition: Some(e.at_time),
        }),
    }
}

impl PeerSource for MonitorPeerSource {
    fn peers(&self) -> Vec<PeerInfo> {
        let federation = self.federation.peer_status();
        let conflicts = self.federation.conflicts();
        let mut peers: Vec<PeerInfo> = self
            .monitor
            .snapshot()
            .iter()
            .map(|p| {
                let imported = federation
                    .iter()
                    .find(|f| f.cluster == p.cluster)
                    .map(|f| Counts {
                        workloads: f.imported.workloads as u64,
                        services: f.imported.services as u64,
                        authorizations: f.imported.authorizations as u64,
                    })
                    .unwrap_or_default();
                let probe = &p.probe;
                PeerInfo {
                    cluster: p.cluster.clone(),
                    network: p.network.clone(),
                    address: p.address.clone(),
                    flat: p.flat,
                    conditions: p
                        .conditions
                        .iter()
                        .map(|c| PeerCondition {
                            kind: c.type_.to_string(),
                            status: c.status.to_string(),
                            reason: c.reason.clone(),
                            message: c.message.clone(),
                            last_transition: Some(c.last_transition),
                        })
                        .collect(),
                    imported,
                    stream: self
                        .upstreams
                        .snapshot()
                        .iter()
                        .find(|(name, _)| *name == p.cluster)
                        .map(|(_, s)| s.snapshot()),
                    hbone_probe: Some(ProbeInfo {
                        mode: probe.mode.clone(),
                        attempts: probe.attempts,
                        established: probe.established,
                        refused: probe.refused,
                        timeouts: probe.timeouts,
                        aborted: probe.aborted,
                        syn_retransmits: probe.syn_retransmits,
                        p50_us: probe.p50_us.map_or(0, |v| v as u64),
                        p99_us: probe.p99_us.map_or(0, |v| v as u64),
                        unreachable: 0,
                    }),
                    xds_probe: None,
                    conflicts: conflicts
                        .iter()
                        .filter(|c| c.loser == p.cluster)
                        .map(|c| {
                            format!(
                                "{} {}: {} (kept {})",
                                c.kind.as_str(),
                                c.name,
                                c.detail,
                                c.winner
                            )
                        })
                        .collect(),
                }
            })
            .collect();
        peers.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        peers
    }

    fn events(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }
}
