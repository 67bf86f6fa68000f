//! How a desired peer set differs from the running one ([`peer_changes`]): which peer
//! clients start, reconnect elsewhere, start over, or stop. The desired set comes from the
//! `istio-remote` Gateways (Kubernetes) or the config file's `peers` (SIGHUP).
//!
//! Pure: it must never start or stop a client, nor touch federation (the caller does).

use std::collections::BTreeMap;

use crate::config::Peer;

/// What to do about one peer cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// A new peer: start its client.
    Added(Peer),
    /// Same cluster, network and identity; another address, port or data-plane detail:
    /// the client reconnects there and the peer's state stays (no gap for ztunnel).
    Readdressed { old: Peer, new: Peer },
    /// Same cluster, another network or identity (trust domain, server identity): what
    /// the old peer sent is not the new one's to keep; withdraw it, then start anew.
    Replaced { old: Peer, new: Peer },
    /// Gone (an operator removed it): stop the client and withdraw its state at once.
    Removed(Peer),
}

impl PeerChange {
    pub fn cluster(&self) -> &str {
        match self {
            PeerChange::Added(p) | PeerChange::Removed(p) => &p.cluster,
            PeerChange::Readdressed { new, .. } | PeerChange::Replaced { new, .. } => &new.cluster,
        }
    }
}

impl std::fmt::Display for PeerChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoint = |p: &Peer| format!("{}:{}", p.address, p.port);
        match self {
            PeerChange::Added(p) => write!(f, "{} added at {}", p.cluster, endpoint(p)),
            PeerChange::Readdressed { old, new } => write!(
                f,
                "{} re-addressed {} → {}",
                new.cluster,
                endpoint(old),
                endpoint(new)
            ),
            PeerChange::Replaced { new, .. } => write!(
                f,
                "{} replaced (network or identity changed; its state is withdrawn)",
                new.cluster
            ),
            PeerChange::Removed(p) => write!(f, "{} removed", p.cluster),
        }
    }
}

/// Whether two versions of a peer are the same peer for federation: same network and the
/// same identity its server proves.
fn same_identity(a: &Peer, b: &Peer) -> bool {
    a.network == b.network
        && a.trust_domain == b.trust_domain
        && a.server_identity == b.server_identity
}

/// The changes that turn `running` into `desired` (both by cluster), in cluster order;
/// an unchanged peer yields nothing.
pub fn peer_changes(
    running: &BTreeMap<String, Peer>,
    desired: &BTreeMap<String, Peer>,
) -> Vec<PeerChange> {
    let mut changes = Vec::new();
    for (cluster, peer) in desired {
        match running.get(cluster) {
            None => changes.push(PeerChange::Added(peer.clone())),
            Some(old) if old == peer => {}
            Some(old) if same_identity(old, peer) => changes.push(PeerChange::Readdressed {
                old: old.clone(),
                new: peer.clone(),
            }),
            Some(old) => changes.push(PeerChange::Replaced {
                old: old.clone(),
                new: peer.clone(),
            }),
        }
    }
    for (cluster, peer) in running {
        if !desired.contains_key(cluster) {
            changes.push(PeerChange::Removed(peer.clone()));
        }
    }
    changes.sort_by(|a, b| a.cluster().cmp(b.cluster()));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, DataPlaneServiceType, PeerAddress};

    fn peer(cluster: &str, ip: &str, port: u16) -> Peer {
        Peer {
            cluster: cluster.into(),
            network: "net2".into(),
            address: PeerAddress::Ip(ip.parse().unwrap()),
            port,
            hbone_port: 15008,
            trust_domain: format!("{cluster}.local"),
            server_identity: None,
            preferred_data_plane_service_type: DataPlaneServiceType::LoadBalancer,
            max_resources: config::defaults::PEER_MAX_RESOURCES,
            max_bytes: config::defaults::PEER_MAX_BYTES,
        }
    }

    fn by_cluster(peers: &[Peer]) -> BTreeMap<String, Peer> {
        peers
            .iter()
            .map(|p| (p.cluster.clone(), p.clone()))
            .collect()
    }

    #[test]
    fn unchanged_peers_yield_nothing() {
        let running = by_cluster(&[peer("c2", "127.0.0.2", 15012)]);
        assert!(peer_changes(&running, &running).is_empty());
    }

    #[test]
    fn each_kind_of_change_is_named_in_cluster_order() {
        let running = by_cluster(&[
            peer("c2", "127.0.0.2", 15012),
            peer("c3", "127.0.0.3", 15012),
            peer("c5", "127.0.0.5", 15012),
        ]);
        let mut c5 = peer("c5", "127.0.0.5", 15012);
        c5.trust_domain = "other.local".into();
        let desired = by_cluster(&[
            peer("c2", "127.0.0.22", 16012),
            peer("c4", "127.0.0.4", 15012),
            c5.clone(),
        ]);
        let changes = peer_changes(&running, &desired);
        let lines: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "c2 re-addressed 127.0.0.2:15012 → 127.0.0.22:16012",
                "c3 removed",
                "c4 added at 127.0.0.4:15012",
                "c5 replaced (network or identity changed; its state is withdrawn)",
            ]
        );
        assert_eq!(
            changes[3],
            PeerChange::Replaced {
                old: peer("c5", "127.0.0.5", 15012),
                new: c5
            }
        );
    }

    #[test]
    fn a_new_network_is_a_replacement_and_a_new_hbone_port_a_readdress() {
        let running = by_cluster(&[peer("c2", "127.0.0.2", 15012)]);
        let mut moved = peer("c2", "127.0.0.2", 15012);
        moved.network = "net9".into();
        assert!(matches!(
            peer_changes(&running, &by_cluster(&[moved]))[..],
            [PeerChange::Replaced { .. }]
        ));
        let mut hbone = peer("c2", "127.0.0.2", 15012);
        hbone.hbone_port = 16008;
        assert!(matches!(
            peer_changes(&running, &by_cluster(&[hbone]))[..],
            [PeerChange::Readdressed { .. }]
        ));
    }
}
