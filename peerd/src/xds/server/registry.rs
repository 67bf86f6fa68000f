//! The registry of downstream xDS connections: who is subscribed (node id, remote
//! address, view label, stream stats), which view version each has ACKed per type, and a
//! broadcast of every ACK/NACK. It answers "has every downstream of view X ACKed view
//! version ≥ v?" (PeerDataPlaneProgrammed, the propagation-latency histogram).
//!
//! Only connection tasks write an entry; readers take copies. It never blocks a
//! connection on a reader (broadcast, watch).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::xds::stats::{StreamSnapshot, StreamStats};
use crate::xds::types::{PerType, ResourceType};

/// One ACK or NACK received from a downstream.
#[derive(Debug, Clone)]
pub struct AckEvent {
    pub connection: u64,
    pub node: Arc<str>,
    /// Label of the view the connection is served (`downstream`, `export`).
    pub view_label: Arc<str>,
    pub kind: ResourceType,
    /// Version of the view the ACKed response was computed from.
    pub view_version: u64,
    pub nonce: String,
    /// The NACK message (`"name: reason; ..."`), `None` for an ACK.
    pub nack: Option<String>,
    pub at: SystemTime,
}

/// Per-type progress of one connection.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct TypeProgress {
    /// The client sent its initial request for this type.
    pub subscribed: bool,
    /// The client has processed (ACKed or NACKed) everything of the view up to this
    /// version for this type.
    pub acked_view_version: Option<u64>,
    /// The last processed response of this type was NACKed (cleared by a later ACK).
    pub rejected: bool,
}

/// A copy of one connection's registry entry.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriberInfo {
    pub id: u64,
    pub node_id: String,
    pub remote_addr: String,
    pub view_label: String,
    pub identity: String,
    pub stats: StreamSnapshot,
    /// Times this connection fell behind the view's change feed and re-diffed fully.
    pub full_diffs: u64,
    pub address: TypeProgress,
    pub authorization: TypeProgress,
}

impl SubscriberInfo {
    pub fn progress(&self, kind: ResourceType) -> &TypeProgress {
        match kind {
            ResourceType::Address => &self.address,
            ResourceType::Authorization => &self.authorization,
        }
    }

    /// Every subscribed type is processed up to `version` without a standing NACK; a
    /// connection that has not subscribed to anything yet is not.
    pub fn has_acked(&self, version: u64) -> bool {
        self.has_processed(version)
            && ResourceType::ALL
                .iter()
                .map(|t| self.progress(*t))
                .all(|p| !p.subscribed || !p.rejected)
    }

    /// Every subscribed type answered `version` or a later one, whether it ACKed or
    /// NACKed it; a connection that has not subscribed to anything yet has not.
    pub fn has_processed(&self, version: u64) -> bool {
        let subscribed: Vec<&TypeProgress> = ResourceType::ALL
            .iter()
            .map(|t| self.progress(*t))
            .filter(|p| p.subscribed)
            .collect();
        !subscribed.is_empty()
            && subscribed
                .iter()
                .all(|p| p.acked_view_version.is_some_and(|v| v >= version))
    }
}

/// A live connection's entry, written by its task.
pub(crate) struct Subscriber {
    pub id: u64,
    pub view_label: Arc<str>,
    pub identity: String,
    pub remote_addr: String,
    pub node_id: Mutex<Arc<str>>,
    pub stats: StreamStats,
    pub progress: Mutex<PerType<TypeProgress>>,
    pub full_diffs: AtomicU64,
}

impl Subscriber {
    pub fn node(&self) -> Arc<str> {
        Arc::clone(&self.node_id.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn info(&self) -> SubscriberInfo {
        let progress = self
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        SubscriberInfo {
            id: self.id,
            node_id: self.node().to_string(),
            remote_addr: self.remote_addr.clone(),
            view_label: self.view_label.to_string(),
            identity: self.identity.clone(),
            stats: self.stats.snapshot(),
            full_diffs: self.full_diffs.load(Ordering::Relaxed),
            address: *progress.get(ResourceType::Address),
            authorization: *progress.get(ResourceType::Authorization),
        }
    }
}

/// All live downstream connections of one server.
pub struct Subscribers {
    entries: DashMap<u64, Arc<Subscriber>>,
    next_id: AtomicU64,
    acks: broadcast::Sender<AckEvent>,
    /// Bumped whenever any connection's progress changes or a connection comes or goes.
    progress: watch::Sender<u64>,
}

const ACK_RING: usize = 4096;

impl Subscribers {
    pub fn new() -> Arc<Subscribers> {
        let (acks, _) = broadcast::channel(ACK_RING);
        let (progress, _) = watch::channel(0);
        Arc::new(Subscribers {
            entries: DashMap::new(),
            next_id: AtomicU64::new(1),
            acks,
            progress,
        })
    }

    pub(crate) fn register(
        &self,
        view_label: &str,
        identity: String,
        remote_addr: String,
    ) -> Arc<Subscriber> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Subscriber {
            id,
            view_label: Arc::from(view_label),
            identity,
            stats: StreamStats::new("", remote_addr.clone()),
            remote_addr,
            node_id: Mutex::new(Arc::from("")),
            progress: Mutex::new(PerType::default()),
            full_diffs: AtomicU64::new(0),
        });
        entry.stats.connected();
        self.entries.insert(id, Arc::clone(&entry));
        self.bump();
        entry
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.entries.remove(&id);
        self.bump();
    }

    pub(crate) fn bump(&self) {
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn publish(&self, event: AckEvent) {
        // No receivers is fine.
        let _ = self.acks.send(event);
    }

    /// Every live connection, ordered by connection id.
    pub fn list(&self) -> Vec<SubscriberInfo> {
        let mut v: Vec<SubscriberInfo> = self.entries.iter().map(|e| e.value().info()).collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// ACK/NACK events from now on.
    pub fn ack_events(&self) -> broadcast::Receiver<AckEvent> {
        self.acks.subscribe()
    }

    /// Changes whenever some connection's progress changes.
    pub fn watch_progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Whether every live connection served the view labelled `view_label` has processed
    /// view version ≥ `version` for every type it subscribed, without a standing NACK.
    /// True when there is no such connection.
    pub fn all_acked(&self, view_label: &str, version: u64) -> bool {
        self.list()
            .iter()
            .filter(|s| s.view_label == view_label)
            .all(|s| s.has_acked(version))
    }

    /// Waits until [`Subscribers::all_acked`] holds, or `timeout` passes (returns false).
    pub async fn wait_all_acked(&self, view_label: &str, version: u64, timeout: Duration) -> bool {
        let mut rx = self.watch_progress();
        let wait = async {
            loop {
                if self.all_acked(view_label, version) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok() && self.all_acked(view_label, version)
    }
}
