//! The import source: the store's sync flags and held resources of a peer's origin,
//! and the peer's pod IPs (for flat probing).
//!
//! Owns: reading one origin of the store. Must never write to the store.

use std::net::IpAddr;

use crate::store::Store;
use crate::xds::resource::Summary;
use crate::xds::types::ResourceType;

/// Sync state of the peer's origin in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncObservation {
    /// Types that completed their first full response since the stream (re)connected.
    pub synced: Vec<ResourceType>,
    /// Resources held for the peer (kept across disconnects).
    pub held: usize,
}

impl SyncObservation {
    pub fn fully_synced(&self) -> bool {
        ResourceType::ALL.iter().all(|t| self.synced.contains(t))
    }

    pub fn pending(&self) -> Vec<ResourceType> {
        ResourceType::ALL
            .iter()
            .copied()
            .filter(|t| !self.synced.contains(t))
            .collect()
    }
}

pub trait ImportSource: Send + Sync {
    /// `None`: nothing was ever received from this peer.
    fn sync(&self, peer: &str) -> Option<SyncObservation>;
    /// Up to `limit` pod IPs of the peer's workloads (flat peers are probed on those).
    fn workload_ips(&self, peer: &str, limit: usize) -> Vec<IpAddr>;
    /// Why the peer's latest responses were not stored whole because of the memory
    /// budget (the condition message); `None` when they were.
    fn budget_refusal(&self, _peer: &str) -> Option<String> {
        None
    }
}

impl ImportSource for Store {
    fn sync(&self, peer: &str) -> Option<SyncObservation> {
        let origin = self.get(peer)?;
        let state = origin.view.snapshot();
        Some(SyncObservation {
            synced: ResourceType::ALL
                .iter()
                .copied()
                .filter(|t| origin.is_synced(*t))
                .collect(),
            held: ResourceType::ALL.iter().map(|t| state.len(*t)).sum(),
        })
    }

    fn workload_ips(&self, peer: &str, limit: usize) -> Vec<IpAddr> {
        let Some(origin) = self.get(peer) else {
            return Vec::new();
        };
        let state = origin.view.snapshot();
        let mut ips = Vec::new();
        for r in state.resources(ResourceType::Address).values() {
            if let Summary::Workload(w) = &*r.summary {
                for ip in &w.addresses {
                    if ips.len() >= limit {
                        return ips;
                    }
                    if !ips.contains(ip) {
                        ips.push(*ip);
                    }
                }
            }
        }
        ips
    }

    fn budget_refusal(&self, peer: &str) -> Option<String> {
        let refusals = self.memory_budget().refusals(peer);
        (!refusals.is_empty()).then(|| {
            refusals
                .iter()
                .map(|r| r.message())
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}
