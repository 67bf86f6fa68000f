//! The ACK source: whether local downstreams (ztunnel) ACKed the merged-view versions
//! that carry a peer's changes, with the NACK text; told the versions by a
//! [`PeerVersions`] (federation records them in [`RecordedPeerVersions`]).
//!
//! A change counts against the peer only once it has gone un-ACKed for [`ACK_ALLOWANCE`]:
//! under steady churn the newest version is nearly always in flight, so "has ztunnel
//! ACKed the latest version" is a moving target that a healthy ztunnel misses at most
//! instants (measured in the soak: 0–3 versions, a few ms, behind at any moment), and a
//! busy minute turned `PeerDataPlaneProgrammed` False on every peer at once.
//!
//! Owns: the per-peer recent versions and reading the downstream registry. Must never
//! send anything to a downstream.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::xds::server::{Subscribers, nacked_names};
use crate::xds::types::ResourceType;

use super::lock;

/// How long a version carrying a peer's change may stay un-ACKed before it counts as
/// ztunnel lagging. Far above a healthy ztunnel's ACK time (milliseconds, including the
/// soak's 200 changes/s per cluster), far below the failure window (30 s by default), so
/// a ztunnel that stops ACKing still turns the condition False within window + 2 s.
pub const ACK_ALLOWANCE: Duration = Duration::from_secs(2);

/// Records closer together than this share one entry (the newer version, the older
/// time: at most this much early), so a peer's history holds at most
/// `ACK_ALLOWANCE / COALESCE` + 2 entries however fast it changes.
const COALESCE: Duration = Duration::from_millis(10);

/// Whether local downstreams hold the peer's changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckObservation {
    /// Nothing of the peer is served yet, or no downstream is connected.
    NothingToAck { downstreams: usize },
    /// Every downstream processed `version` without a standing NACK.
    Acked { version: u64, downstreams: usize },
    /// The peer's changes are all younger than [`ACK_ALLOWANCE`] and not every
    /// downstream has processed them yet: nothing to judge.
    InFlight { version: u64, downstreams: usize },
    /// `behind` of `downstreams` have not processed `version`, published `waited` ago
    /// (at least [`ACK_ALLOWANCE`]).
    Waiting {
        version: u64,
        behind: usize,
        downstreams: usize,
        waited: Duration,
    },
    /// A downstream rejected a response touching the peer's resources.
    Rejected { node: String, text: String },
}

pub trait AckSource: Send + Sync {
    /// What the downstreams hold of `peer`'s changes at `now` (the monitor's tick).
    fn acks(&self, peer: &str, now: Instant) -> AckObservation;
}

/// Which merged-view versions carry a peer's changes, and when (federation knows).
pub trait PeerVersions: Send + Sync {
    /// `None`: nothing of this peer is in the merged view yet.
    fn latest_version(&self, peer: &str) -> Option<u64>;
    /// The newest version carrying a change of `peer` published at least
    /// [`ACK_ALLOWANCE`] before `now`, with when it was published; `None` if every
    /// change of the peer is younger (or there is none).
    fn due_version(&self, peer: &str, now: Instant) -> Option<(u64, Instant)>;
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
    peers: Mutex<HashMap<String, PeerHistory>>,
}

/// One peer's latest version and the recent ones with when they were published: every
/// entry younger than [`ACK_ALLOWANCE`] and the newest older one, in order.
#[derive(Default)]
struct PeerHistory {
    latest: u64,
    recent: VecDeque<(Instant, u64)>,
}

impl PeerHistory {
    fn record(&mut self, version: u64, at: Instant) {
        if version <= self.latest && !self.recent.is_empty() {
            return;
        }
        self.latest = version;
        match self.recent.back_mut() {
            Some(last) if at.saturating_duration_since(last.0) < COALESCE => last.1 = version,
            _ => self.recent.push_back((at, version)),
        }
        // Keep one entry past the allowance: it is the due version until a newer one is.
        while self
            .recent
            .get(1)
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) >= ACK_ALLOWANCE)
        {
            self.recent.pop_front();
        }
    }

    fn due(&self, now: Instant) -> Option<(u64, Instant)> {
        self.recent
            .iter()
            .rev()
            .find(|(t, _)| now.saturating_duration_since(*t) >= ACK_ALLOWANCE)
            .map(|(t, v)| (*v, *t))
    }
}

impl RecordedPeerVersions {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Versions only move forward.
    pub fn record(&self, peer: &str, version: u64) {
        self.record_at(peer, version, Instant::now());
    }

    /// [`Self::record`] published at `at` (tests inject the clock).
    pub fn record_at(&self, peer: &str, version: u64, at: Instant) {
        lock(&self.peers)
            .entry(peer.to_string())
            .or_default()
            .record(version, at);
    }

    pub fn forget(&self, peer: &str) {
        lock(&self.peers).remove(peer);
    }

    /// How many recent versions are kept for `peer` (bounded; see [`COALESCE`]).
    #[cfg(test)]
    fn kept(&self, peer: &str) -> usize {
        lock(&self.peers).get(peer).map_or(0, |h| h.recent.len())
    }
}

impl PeerVersions for RecordedPeerVersions {
    fn latest_version(&self, peer: &str) -> Option<u64> {
        lock(&self.peers).get(peer).map(|h| h.latest)
    }

    fn due_version(&self, peer: &str, now: Instant) -> Option<(u64, Instant)> {
        lock(&self.peers).get(peer).and_then(|h| h.due(now))
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
    fn acks(&self, peer: &str, now: Instant) -> AckObservation {
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
        let Some(latest) = self.versions.latest_version(peer) else {
            return AckObservation::NothingToAck { downstreams };
        };
        if downstreams == 0 {
            return AckObservation::NothingToAck { downstreams };
        }
        // A standing NACK not attributed to this peer still counts as processed: another
        // peer's bad resource must not hold this peer's condition back.
        let behind = |version: u64| subs.iter().filter(|s| !s.has_processed(version)).count();
        if behind(latest) == 0 {
            return AckObservation::Acked {
                version: latest,
                downstreams,
            };
        }
        let Some((due, published)) = self.versions.due_version(peer, now) else {
            return AckObservation::InFlight {
                version: latest,
                downstreams,
            };
        };
        match behind(due) {
            0 => AckObservation::Acked {
                version: due,
                downstreams,
            },
            behind => AckObservation::Waiting {
                version: due,
                behind,
                downstreams,
                waited: now.saturating_duration_since(published),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "cluster-2";

    #[test]
    fn the_due_version_is_the_newest_one_past_the_allowance() {
        let t0 = Instant::now();
        let v = RecordedPeerVersions::new();
        v.record_at(PEER, 10, t0);
        v.record_at(PEER, 11, t0 + Duration::from_millis(1500));
        v.record_at(PEER, 12, t0 + Duration::from_secs(3));
        assert_eq!(v.latest_version(PEER), Some(12));
        assert_eq!(v.due_version(PEER, t0 + Duration::from_millis(1999)), None);
        assert_eq!(v.due_version(PEER, t0 + ACK_ALLOWANCE), Some((10, t0)));
        assert_eq!(
            v.due_version(PEER, t0 + Duration::from_millis(3600)),
            Some((11, t0 + Duration::from_millis(1500)))
        );
        assert_eq!(
            v.due_version(PEER, t0 + Duration::from_secs(60)),
            Some((12, t0 + Duration::from_secs(3)))
        );
        assert_eq!(
            v.due_version("cluster-3", t0 + Duration::from_secs(60)),
            None
        );
    }

    #[test]
    fn versions_only_move_forward_and_forget_drops_the_peer() {
        let t0 = Instant::now();
        let v = RecordedPeerVersions::new();
        v.record_at(PEER, 10, t0);
        v.record_at(PEER, 9, t0 + Duration::from_secs(1));
        assert_eq!(v.latest_version(PEER), Some(10));
        assert_eq!(v.kept(PEER), 1, "an older version adds no entry");
        v.forget(PEER);
        assert_eq!(v.latest_version(PEER), None);
        assert_eq!(v.due_version(PEER, t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn a_peer_changing_every_millisecond_keeps_a_bounded_history() {
        let t0 = Instant::now();
        let v = RecordedPeerVersions::new();
        for i in 0..100_000u64 {
            v.record_at(PEER, i + 1, t0 + Duration::from_millis(i));
        }
        let bound = (ACK_ALLOWANCE.as_millis() / COALESCE.as_millis()) as usize + 2;
        assert!(v.kept(PEER) <= bound, "{} entries kept", v.kept(PEER));
        // Coalescing keeps the newest version of each 10 ms, so what is due is at most
        // 10 ms early and never a version that is not yet published.
        let now = t0 + Duration::from_millis(99_999);
        let (due, at) = v.due_version(PEER, now).unwrap();
        let published_at = t0 + Duration::from_millis(due - 1);
        assert!(now.duration_since(at) >= ACK_ALLOWANCE);
        assert!(now.duration_since(published_at) + COALESCE >= ACK_ALLOWANCE);
        assert!(
            due < 100_000 - ACK_ALLOWANCE.as_millis() as u64 + 10,
            "due {due}"
        );
    }
}
