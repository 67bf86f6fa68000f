//! `peerd_propagation_seconds{peer_cluster}`: from the moment the store applies an
//! upstream's change to the node's ztunnel ACKing the merged-view version that carries
//! it.
//!
//! Three broadcasts feed a [`PropagationTracker`]: store changes (origin, type, when),
//! merged-view changes (which version carries which origin's names) and downstream ACKs
//! of the merged view. Changes the merged view never shows (filtered, not exported,
//! superseded) expire unmeasured; so do changes no ztunnel is connected to ACK.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::federation::Federation;
use crate::store::{Store, StoreEvent};
use crate::xds::server::Subscribers;
use crate::xds::types::ResourceType;

/// The label of connections served the merged view (ztunnel).
pub const MERGED_VIEW_LABEL: &str = "merged";
/// A change not ACKed within this long is dropped unmeasured (bounded memory when no
/// ztunnel is connected).
pub const EXPIRY: Duration = Duration::from_secs(60);
/// At most this many changes are tracked per (origin, type); the oldest go first.
pub const MAX_TRACKED: usize = 4096;

/// One measured propagation.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub origin: Arc<str>,
    pub kind: ResourceType,
    pub elapsed: Duration,
}

/// Pairs store changes with the merged version that carries them and the ACK of it.
/// Time is passed in, so the pairing is tested without a clock.
#[derive(Default)]
pub struct PropagationTracker {
    /// Applied to the store, not yet seen in the merged view.
    applied: HashMap<(Arc<str>, ResourceType), VecDeque<Instant>>,
    /// In the merged view at `version`, awaiting an ACK of at least that version.
    published: HashMap<ResourceType, VecDeque<(u64, Arc<str>, Instant)>>,
}

impl PropagationTracker {
    pub fn new() -> PropagationTracker {
        PropagationTracker::default()
    }

    /// The store applied a change of `origin` at `at`.
    pub fn on_applied(&mut self, origin: Arc<str>, kind: ResourceType, at: Instant) {
        let queue = self.applied.entry((origin, kind)).or_default();
        if queue.len() >= MAX_TRACKED {
            queue.pop_front();
        }
        queue.push_back(at);
    }

    /// The merged view published `version`, carrying names of `origins`.
    pub fn on_published(&mut self, kind: ResourceType, version: u64, origins: &[Arc<str>]) {
        for origin in origins {
            let Some(applied) = self.applied.remove(&(Arc::clone(origin), kind)) else {
                continue;
            };
            let queue = self.published.entry(kind).or_default();
            for at in applied {
                if queue.len() >= MAX_TRACKED {
                    queue.pop_front();
                }
                queue.push_back((version, Arc::clone(origin), at));
            }
        }
    }

    /// A merged-view client ACKed `kind` up to `version` at `now`: every change carried
    /// by a version up to it is measured.
    pub fn on_acked(&mut self, kind: ResourceType, version: u64, now: Instant) -> Vec<Measured> {
        let Some(queue) = self.published.get_mut(&kind) else {
            return Vec::new();
        };
        let mut measured = Vec::new();
        // Versions only grow along the queue, so the ACKed ones are a prefix.
        while queue.front().is_some_and(|(v, _, _)| *v <= version) {
            if let Some((_, origin, at)) = queue.pop_front() {
                measured.push(Measured {
                    origin,
                    kind,
                    elapsed: now.saturating_duration_since(at),
                });
            }
        }
        measured
    }

    /// Drops what is older than [`EXPIRY`]; returns how many were dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        let old = |at: &Instant| now.saturating_duration_since(*at) > EXPIRY;
        for queue in self.applied.values_mut() {
            while queue.front().is_some_and(old) {
                queue.pop_front();
                dropped += 1;
            }
        }
        self.applied.retain(|_, q| !q.is_empty());
        for queue in self.published.values_mut() {
            while queue.front().is_some_and(|(_, _, at)| old(at)) {
                queue.pop_front();
                dropped += 1;
            }
        }
        dropped
    }

    /// Changes currently tracked (applied or published).
    pub fn tracked(&self) -> usize {
        self.applied.values().map(VecDeque::len).sum::<usize>()
            + self.published.values().map(VecDeque::len).sum::<usize>()
    }
}

fn record(measured: &[Measured]) {
    for m in measured {
        metrics::histogram!("peerd_propagation_seconds", "peer_cluster" => m.origin.to_string())
            .record(m.elapsed.as_secs_f64());
    }
}

/// Feeds the tracker from the store, the merged view and the server's ACK events until
/// cancelled, recording each measurement.
pub async fn run_propagation(
    store: Arc<Store>,
    federation: Arc<Federation>,
    subscribers: Arc<Subscribers>,
    cancel: CancellationToken,
) {
    let mut tracker = PropagationTracker::new();
    let mut applied = store.subscribe();
    let mut published = federation.merged().subscribe();
    let mut acks = subscribers.ack_events();
    let mut sweep = tokio::time::interval(EXPIRY / 4);
    loop {
        // Biased in data-flow order: a store change is always broadcast before the merged
        // change it causes, so draining the store first keeps the pairing right.
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            event = applied.recv() => match event {
                Ok(StoreEvent::Changed { origin, change, at, .. }) => {
                    tracker.on_applied(origin, change.kind, at);
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => tracing::debug!(missed = n, "propagation: store events lagged; those changes are not measured"),
                Err(RecvError::Closed) => return,
            },
            change = published.recv() => match change {
                Ok(change) => {
                    tracker.on_published(change.kind, change.version, &change.origins);
                }
                Err(RecvError::Lagged(n)) => tracing::debug!(missed = n, "propagation: merged changes lagged"),
                Err(RecvError::Closed) => return,
            },
            ack = acks.recv() => match ack {
                Ok(ack) if ack.view_label.as_ref() == MERGED_VIEW_LABEL && ack.nack.is_none() => {
                    record(&tracker.on_acked(ack.kind, ack.view_version, Instant::now()));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => tracing::debug!(missed = n, "propagation: ACK events lagged"),
                Err(RecvError::Closed) => return,
            },
            _ = sweep.tick() => {
                let dropped = tracker.expire(Instant::now());
                if dropped > 0 {
                    tracing::debug!(dropped, "propagation: changes expired without an ACK of their version");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: ResourceType = ResourceType::Address;
    const AUTHZ: ResourceType = ResourceType::Authorization;

    fn name(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn a_change_is_measured_from_store_apply_to_the_ack_of_its_merged_version() {
        let t0 = Instant::now();
        let mut tracker = PropagationTracker::new();
        tracker.on_applied(name("cluster-2"), ADDR, t0);
        tracker.on_published(ADDR, 7, &[name("cluster-2")]);
        assert!(
            tracker
                .on_acked(ADDR, 6, t0 + Duration::from_millis(5))
                .is_empty()
        );
        let measured = tracker.on_acked(ADDR, 7, t0 + Duration::from_millis(12));
        assert_eq!(
            measured,
            vec![Measured {
                origin: name("cluster-2"),
                kind: ADDR,
                elapsed: Duration::from_millis(12)
            }]
        );
        assert_eq!(tracker.tracked(), 0);
    }

    #[test]
    fn acks_of_another_type_or_origin_do_not_measure() {
        let t0 = Instant::now();
        let mut tracker = PropagationTracker::new();
        tracker.on_applied(name("cluster-2"), ADDR, t0);
        // The merged change carries only cluster-3's names: cluster-2's change waits.
        tracker.on_published(ADDR, 3, &[name("cluster-3")]);
        assert!(tracker.on_acked(ADDR, 3, t0).is_empty());
        tracker.on_published(ADDR, 4, &[name("cluster-2")]);
        assert!(tracker.on_acked(AUTHZ, 9, t0).is_empty());
        assert_eq!(tracker.on_acked(ADDR, 9, t0).len(), 1);
    }

    #[test]
    fn coalesced_changes_are_each_measured_from_their_own_apply() {
        let t0 = Instant::now();
        let mut tracker = PropagationTracker::new();
        tracker.on_applied(name("c1"), ADDR, t0);
        tracker.on_applied(name("c1"), ADDR, t0 + Duration::from_millis(4));
        tracker.on_published(ADDR, 2, &[name("c1")]);
        let got: Vec<Duration> = tracker
            .on_acked(ADDR, 2, t0 + Duration::from_millis(10))
            .into_iter()
            .map(|m| m.elapsed)
            .collect();
        assert_eq!(
            got,
            vec![Duration::from_millis(10), Duration::from_millis(6)]
        );
    }

    #[test]
    fn unacked_and_unpublished_changes_expire_and_memory_stays_bounded() {
        let t0 = Instant::now();
        let mut tracker = PropagationTracker::new();
        for _ in 0..MAX_TRACKED + 10 {
            tracker.on_applied(name("c1"), ADDR, t0);
        }
        assert_eq!(tracker.tracked(), MAX_TRACKED);
        tracker.on_published(ADDR, 1, &[name("c1")]);
        tracker.on_applied(name("c2"), ADDR, t0);
        assert_eq!(
            tracker.expire(t0 + EXPIRY),
            0,
            "not older than the expiry yet"
        );
        assert_eq!(
            tracker.expire(t0 + EXPIRY + Duration::from_millis(1)),
            MAX_TRACKED + 1
        );
        assert_eq!(tracker.tracked(), 0);
    }
}
