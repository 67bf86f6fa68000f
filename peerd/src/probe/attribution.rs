//! Maps measured destinations to peers: east-west gateway addresses, and for flat-network
//! peers the remote pod IPs federated into the store.
//!
//! Owns: the address → peer index and the per-peer, per-port sums. Must never attribute a
//! destination that is not in the index (traffic to non-peers is ignored), and never let
//! one address silently count for two peers (the first peer by name wins; logged).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::store::Store;
use crate::xds::resource::Summary;
use crate::xds::types::ResourceType;

use super::aggregator::{ConnectCounts, ProbeReport};

/// What peerd knows about one peer's reachable addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTargets {
    pub peer: String,
    /// East-west gateway addresses (HBONE 15008, xDS 15012).
    pub gateways: Vec<IpAddr>,
    /// For flat-network peers: the store origin whose workload addresses are pod IPs
    /// reached directly. `None` for peers behind a gateway.
    pub flat_origin: Option<String>,
}

/// Address → peer name.
pub type DestinationIndex = HashMap<IpAddr, String>;

/// Builds the index from the peers' gateways and, for flat peers, their workloads.
pub fn build_index(peers: &[PeerTargets], store: &Store) -> DestinationIndex {
    let mut sorted: Vec<&PeerTargets> = peers.iter().collect();
    sorted.sort_by(|a, b| a.peer.cmp(&b.peer));
    let mut index = DestinationIndex::new();
    let mut claim = |ip: IpAddr, peer: &str| match index.get(&ip) {
        Some(owner) if owner != peer => {
            tracing::warn!(%ip, owner, other = peer, "address claimed by two peers; keeping the first");
        }
        Some(_) => {}
        None => {
            index.insert(ip, peer.to_string());
        }
    };
    // Gateways first: a gateway address is never re-attributed to a flat peer's pods.
    for peer in &sorted {
        for ip in &peer.gateways {
            claim(*ip, &peer.peer);
        }
    }
    for peer in &sorted {
        let Some(origin) = peer.flat_origin.as_deref().and_then(|name| store.get(name)) else {
            continue;
        };
        let state = origin.view.snapshot();
        for resource in state.resources(ResourceType::Address).values() {
            if let Summary::Workload(workload) = &*resource.summary {
                for ip in &workload.addresses {
                    claim(*ip, &peer.peer);
                }
            }
        }
    }
    index
}

/// One peer's measurements, split by destination port (15008 HBONE, 15012 xDS, …).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerProbe {
    pub by_port: BTreeMap<u16, PortProbe>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortProbe {
    pub total: ConnectCounts,
    pub delta: ConnectCounts,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

/// Sums destinations into peers. Destinations not in `index` are not peers: ignored.
pub fn attribute(report: &ProbeReport, index: &DestinationIndex) -> BTreeMap<String, PeerProbe> {
    let mut peers: BTreeMap<String, PeerProbe> = BTreeMap::new();
    for (destination, dest) in &report.destinations {
        let Some(peer) = index.get(&destination.ip()) else {
            continue;
        };
        let port = peers
            .entry(peer.clone())
            .or_default()
            .by_port
            .entry(destination.port())
            .or_default();
        port.total.add(&dest.total);
        port.delta.add(&dest.delta);
    }
    for peer in peers.values_mut() {
        for port in peer.by_port.values_mut() {
            port.p50_us = port.total.latency_percentile_us(0.50);
            port.p99_us = port.total.latency_percentile_us(0.99);
        }
    }
    peers
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use peerd_ebpf::{DestKey, DestStats};

    use super::*;
    use crate::probe::aggregator::Aggregator;
    use crate::probe::loader::{KernelSnapshot, MapHealth};
    use crate::proto::istio::workload;
    use crate::xds::resource::Resource;

    fn stats(attempts: u64, established: u64, bucket: Option<usize>) -> DestStats {
        let mut s = DestStats::ZERO;
        s.attempts = attempts;
        s.established = established;
        if let Some(b) = bucket {
            s.latency_hist[b] = established;
        }
        s
    }

    fn pod(uid: &str, ip: [u8; 4]) -> Arc<Resource> {
        Arc::new(
            Resource::workload(&workload::Workload {
                uid: uid.into(),
                name: uid.into(),
                namespace: "default".into(),
                addresses: vec![ip.to_vec()],
                ..Default::default()
            })
            .unwrap(),
        )
    }

    #[test]
    fn gateways_and_flat_pods_are_indexed_and_strangers_ignored() {
        let store = Store::new();
        store.apply(
            "cluster-2",
            ResourceType::Address,
            vec![pod("c2//Pod/default/a", [127, 2, 1, 7])],
            vec![],
        );
        store.apply(
            "cluster-3",
            ResourceType::Address,
            vec![pod("c3//Pod/default/b", [127, 3, 1, 9])],
            vec![],
        );
        let peers = vec![
            PeerTargets {
                peer: "cluster-2".into(),
                gateways: vec!["127.0.2.1".parse().unwrap()],
                flat_origin: Some("cluster-2".into()),
            },
            // Not flat: its pod IPs are behind the gateway and never attributed.
            PeerTargets {
                peer: "cluster-3".into(),
                gateways: vec!["127.0.3.1".parse().unwrap()],
                flat_origin: None,
            },
        ];
        let index = build_index(&peers, &store);
        assert_eq!(index.len(), 3);
        assert_eq!(index[&"127.2.1.7".parse::<IpAddr>().unwrap()], "cluster-2");
        assert!(!index.contains_key(&"127.3.1.9".parse::<IpAddr>().unwrap()));

        let entries = vec![
            (
                DestKey::new("127.0.2.1".parse().unwrap(), 15008),
                stats(4, 4, Some(3)),
            ),
            (
                DestKey::new("127.0.2.1".parse().unwrap(), 15012),
                stats(1, 0, None),
            ),
            (
                DestKey::new("127.2.1.7".parse().unwrap(), 15008),
                stats(2, 1, Some(4)),
            ),
            (
                DestKey::new("127.0.3.1".parse().unwrap(), 15008),
                stats(3, 0, None),
            ),
            (
                DestKey::new("127.0.9.9".parse().unwrap(), 15008),
                stats(50, 50, Some(2)),
            ),
        ];
        let snapshot = KernelSnapshot {
            health: MapHealth {
                dest_inserted: 5,
                live_destinations: 5,
                ..Default::default()
            },
            destinations: entries,
        };
        let report = Aggregator::new().update(&snapshot, Instant::now());
        let peers = attribute(&report, &index);
        assert_eq!(
            peers.keys().collect::<Vec<_>>(),
            vec!["cluster-2", "cluster-3"]
        );
        let c2 = &peers["cluster-2"];
        assert_eq!(c2.by_port[&15008].total.attempts, 6);
        assert_eq!(c2.by_port[&15008].total.established, 5);
        assert_eq!(c2.by_port[&15012].total.attempts, 1);
        assert!(c2.by_port[&15008].p50_us.is_some());
        assert_eq!(peers["cluster-3"].by_port[&15008].total.attempts, 3);
        let total_attributed: u64 = peers
            .values()
            .flat_map(|p| p.by_port.values())
            .map(|p| p.total.attempts)
            .sum();
        assert_eq!(
            total_attributed, 10,
            "the stranger's 50 attempts are not attributed"
        );
    }

    #[test]
    fn an_address_claimed_twice_stays_with_the_first_peer() {
        let store = Store::new();
        // cluster-b's pod uses cluster-a's gateway address: gateways win.
        store.apply(
            "b",
            ResourceType::Address,
            vec![pod("b//Pod/default/x", [127, 0, 1, 1])],
            vec![],
        );
        let peers = vec![
            PeerTargets {
                peer: "b".into(),
                gateways: vec![],
                flat_origin: Some("b".into()),
            },
            PeerTargets {
                peer: "a".into(),
                gateways: vec!["127.0.1.1".parse().unwrap()],
                flat_origin: None,
            },
        ];
        let index = build_index(&peers, &store);
        assert_eq!(index[&"127.0.1.1".parse::<IpAddr>().unwrap()], "a");
    }
}
