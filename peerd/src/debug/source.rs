//! What the debug API knows about peers comes through [`PeerSource`]: a list of
//! [`PeerInfo`] and a broadcast of [`PeerEvent`]s (condition transitions). The peer
//! manager implements it; until it lands, [`UpstreamPeerSource`] reports the configured
//! peers with the state of their upstream streams only.
//!
//! It owns the plain-data shape of a peer as the debug API shows it. It must never
//! compute conditions of its own beyond what the stream stats say (the peer manager owns
//! them), and never block: sources answer from copies.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::config::Config;
use crate::store::Store;
use crate::xds::stats::{StreamSnapshot, StreamStats};
use crate::xds::types::ResourceType;

/// Condition types on peer gateways (docs/design.md §6.2).
pub const PEER_CONNECTED: &str = "gloo.solo.io/PeerConnected";
pub const PEERING_SUCCEEDED: &str = "gloo.solo.io/PeeringSucceeded";
pub const PEER_DATA_PLANE_PROGRAMMED: &str = "gloo.solo.io/PeerDataPlaneProgrammed";

/// One condition of a peer, in `metav1.Condition` terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCondition {
    pub kind: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition: Option<SystemTime>,
}

/// Probe statistics of one probed port of a peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeInfo {
    pub mode: String,
    pub attempts: u64,
    pub established: u64,
    pub refused: u64,
    pub timeouts: u64,
    pub aborted: u64,
    pub syn_retransmits: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub unreachable: u64,
}

/// Imported resource counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub workloads: u64,
    pub services: u64,
    pub authorizations: u64,
}

/// A peer as the debug API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    pub cluster: String,
    pub network: String,
    pub address: String,
    pub flat: bool,
    pub conditions: Vec<PeerCondition>,
    pub imported: Counts,
    /// The upstream stream to the peer, when there is one.
    pub stream: Option<StreamSnapshot>,
    pub hbone_probe: Option<ProbeInfo>,
    pub xds_probe: Option<ProbeInfo>,
    pub conflicts: Vec<String>,
}

/// Something that happened to a peer (a condition transition, typically).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEvent {
    pub at: SystemTime,
    /// Short machine-readable kind, e.g. `condition`.
    pub kind: String,
    pub peer: String,
    pub message: String,
    pub condition: Option<PeerCondition>,
}

/// Where the debug API reads peers from.
pub trait PeerSource: Send + Sync {
    /// Every peer, sorted by cluster name.
    fn peers(&self) -> Vec<PeerInfo>;
    /// Events from now on.
    fn events(&self) -> broadcast::Receiver<PeerEvent>;
}

/// The stand-in source: configured peers with their upstream stream (if an upstream has
/// the peer's cluster name), conditions read off the stream state only
/// (`PeerConnected` = stream up, `PeeringSucceeded` = both types synced). It emits no
/// events: transitions belong to the peer manager.
pub struct UpstreamPeerSource {
    config: Arc<Config>,
    store: Arc<Store>,
    upstreams: Vec<(String, Arc<StreamStats>)>,
    events: broadcast::Sender<PeerEvent>,
}

impl UpstreamPeerSource {
    pub fn new(
        config: Arc<Config>,
        store: Arc<Store>,
        upstreams: Vec<(String, Arc<StreamStats>)>,
    ) -> Self {
        let (events, _) = broadcast::channel(16);
        UpstreamPeerSource {
            config,
            store,
            upstreams,
            events,
        }
    }

    fn stream_of(&self, cluster: &str) -> Option<StreamSnapshot> {
        self.upstreams
            .iter()
            .find(|(name, _)| name == cluster)
            .map(|(_, stats)| stats.snapshot())
    }

    fn imported(&self, cluster: &str) -> Counts {
        let Some(origin) = self.store.get(cluster) else {
            return Counts::default();
        };
        let (workloads, services, authorizations) = origin.view.snapshot().counts();
        Counts {
            workloads: workloads as u64,
            services: services as u64,
            authorizations: authorizations as u64,
        }
    }
}

/// Conditions derived from a stream alone.
pub fn stream_conditions(stream: Option<&StreamSnapshot>) -> Vec<PeerCondition> {
    let condition = |kind: &str, ok: bool, reason: &str, message: String| PeerCondition {
        kind: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition: None,
    };
    let Some(s) = stream else {
        return vec![
            condition(
                PEER_CONNECTED,
                false,
                "Pending",
                "no upstream configured for this peer".into(),
            ),
            condition(
                PEERING_SUCCEEDED,
                false,
                "Pending",
                "no upstream configured for this peer".into(),
            ),
        ];
    };
    let synced = ResourceType::ALL.iter().all(|t| s.per_type(*t).synced);
    let not_connected = if s.last_error.is_empty() {
        "not connected to peer".to_string()
    } else {
        format!("not connected to peer: {}", s.last_error)
    };
    vec![
        if s.connected {
            condition(
                PEER_CONNECTED,
                true,
                "Connected",
                "connected to peer".into(),
            )
        } else {
            condition(PEER_CONNECTED, false, "Pending", not_connected.clone())
        },
        if synced {
            condition(
                PEERING_SUCCEEDED,
                true,
                "Synced",
                "full xDS sync completed".into(),
            )
        } else if s.connected {
            condition(
                PEERING_SUCCEEDED,
                false,
                "Syncing",
                "waiting for the first full response of every type".into(),
            )
        } else {
            condition(PEERING_SUCCEEDED, false, "Pending", not_connected)
        },
    ]
}

impl PeerSource for UpstreamPeerSource {
    fn peers(&self) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = self
            .config
            .peers
            .iter()
            .map(|p| {
                let stream = self.stream_of(&p.cluster);
                PeerInfo {
                    cluster: p.cluster.clone(),
                    network: p.network.clone(),
                    address: format!("{}:{}", p.address, p.port),
                    flat: self.config.peer_is_flat(p),
                    conditions: stream_conditions(stream.as_ref()),
                    imported: self.imported(&p.cluster),
                    stream,
                    ..PeerInfo::default()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of<'a>(conditions: &'a [PeerCondition], kind: &str) -> &'a str {
        &conditions.iter().find(|c| c.kind == kind).unwrap().status
    }

    #[test]
    fn conditions_follow_the_stream() {
        let stats = StreamStats::new("c2", "127.0.2.1:15012");
        let c = stream_conditions(Some(&stats.snapshot()));
        assert_eq!(status_of(&c, PEER_CONNECTED), "False");
        stats.connected();
        let c = stream_conditions(Some(&stats.snapshot()));
        assert_eq!(status_of(&c, PEER_CONNECTED), "True");
        assert_eq!(status_of(&c, PEERING_SUCCEEDED), "False");
        for t in ResourceType::ALL {
            stats.update(t, |s| s.synced = true);
        }
        let c = stream_conditions(Some(&stats.snapshot()));
        assert_eq!(status_of(&c, PEERING_SUCCEEDED), "True");
        stats.disconnected("tls: unknown certificate authority");
        let c = stream_conditions(Some(&stats.snapshot()));
        let connected = c.iter().find(|c| c.kind == PEER_CONNECTED).unwrap();
        assert_eq!(connected.status, "False");
        assert!(connected.message.contains("unknown certificate authority"));
        let none = stream_conditions(None);
        assert!(none.iter().all(|c| c.status == "False"));
    }
}
