//! The ACK source: whether local downstreams (ztunnel) ACKed the merged-view version
//! that carries a peer's latest change, with the NACK text; told the versions by a
//! [`PeerVersions`] (federation records them in [`RecordedPeerVersions`]).
//!
//! Owns: the per-peer latest versions and reading the downstream registry. Must never
//! send anything to a downstream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::xds::server::{Subscribers, nacked_names};
use crate::xds::types::ResourceType;

use super::lock;

/// Whether local downstreams hold the peer's latest change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckObservation {
    /// Nothing of the peer is served yet, or no downstream is connected.
    NothingToAck { downstreams: usize },
    /// Every downstream processed `version` without a standing NACK.
    Acked { version: u64, downstreams: usize },
    /// `behind` of `downstreams` have not yet processed `version`.
    Waiting {
        version: u64,
        behind: usize,
        downstreams: usize,
    },
    /// A downstream rejected a response touching the peer's resources.
    Rejected { node: String, text: String },
}

pub trait AckSource: Send + Sync {
    fn acks(&self, peer: &str) -> AckObservation;
}

/// Which merged-view version carries a peer's latest change (federation knows).
pub trait PeerVersions: Send + Sync {
    /// `None`: nothing of this peer is in the merged view yet.
    fn latest_version(&self, peer: &str) -> Option<u64>;
    /// Whether merged-view resource `name` came from `peer`; `None` when unknown (a NACK
    /// naming it is then attributed to every peer).
    fn owns(&self, _peer: &str, _name: &str) -> Option<bool> {
        None
    }
}

/// A [`PeerVersions`] that the publisher of the merged view fills in: after publishing
/// version `v` containing changes from `peer`, call `record(peer, v)`.
#[derive(Default)]
pub struct RecordedPeerVersions {
    versions: Mutex<HashMap<String, u64>>,
}

impl RecordedPeerVersions {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Versions only move forward.
    pub fn record(&self, peer: &str, version: u64) {
        let mut v = lock(&self.versions);
        let slot = v.entry(peer.to_string()).or_insert(version);
        *slot = (*slot).max(version);
    }

    pub fn forget(&self, peer: &str) {
        lock(&self.versions).remove(peer);
    }
}

impl PeerVersions for RecordedPeerVersions {
    fn latest_version(&self, peer: &str) -> Option<u64> {
        lock(&self.versions).get(peer).copied()
    }
}

/// [`AckSource`] over the downstream server's registry, for the view labelled
/// `view_label` (the merged view served to ztunnel).
pub struct DownstreamAcks {
    pub subscribers: Arc<Subscribers>,
    pub view_label: String,
    pub versions: Arc<dyn PeerVersions>,
}

impl AckSource for DownstreamAcks {
    fn acks(&self, peer: &str) -> AckObservation {
        let subs: Vec<_> = self
            .subscribers
            .list()
            .into_iter()
            .filter(|s| s.view_label == self.view_label)
            .collect();
        let downstreams = subs.len();
        // A standing NACK that names (or may name) the peer's resources.
        for s in &subs {
            for kind in ResourceType::ALL {
                if !s.progress(kind).rejected {
                    continue;
                }
                let text = s.stats.per_type(kind).last_nack_message.clone();
                let names = nacked_names(&text);
                let attributed = names.is_empty()
                    || names
                        .iter()
                        .any(|n| self.versions.owns(peer, n) != Some(false));
                if attributed {
                    return AckObservation::Rejected {
                        node: s.node_id.clone(),
                        text,
                    };
                }
            }
        }
        let Some(version) = self.versions.latest_version(peer) else {
            return AckObservation::NothingToAck { downstreams };
        };
        if downstreams == 0 {
            return AckObservation::NothingToAck { downstreams };
        }
        // A standing NACK not attributed to this peer still counts as processed: another
        // peer's bad resource must not hold this peer's condition back.
        let processed = |s: &crate::xds::server::SubscriberInfo| {
            let subscribed: Vec<_> = ResourceType::ALL
                .iter()
                .map(|t| s.progress(*t))
                .filter(|p| p.subscribed)
                .collect();
            !subscribed.is_empty()
                && subscribed
                    .iter()
                    .all(|p| p.acked_view_version.is_some_and(|v| v >= version))
        };
        let behind = subs.iter().filter(|s| !processed(s)).count();
        if behind == 0 {
            AckObservation::Acked {
                version,
                downstreams,
            }
        } else {
            AckObservation::Waiting {
                version,
                behind,
                downstreams,
            }
        }
    }
}
