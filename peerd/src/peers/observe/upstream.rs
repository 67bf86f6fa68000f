//! The upstream source: the state of each peer's xDS client (connected, classified
//! last failure), read from the running `AdsClient`s.
//!
//! Owns: the registry of running clients by peer. Must never start, stop or reconfigure
//! a client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::xds::client::{AdsClient, Failure};
use crate::xds::stats::StreamStats;

use super::lock;

/// The state of the xDS client of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamObservation {
    /// `host:port` the client dials.
    pub endpoint: String,
    pub connected: bool,
    /// The last failure, classified (`None` once a session works or before any attempt).
    pub failure: Option<UpstreamFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFailure {
    /// A `gloo.solo.io/PeerConnected` reason (`ConnectTimeout`, `ConnectionRefused`,
    /// `TLSError`, `IdentityMismatch`, `StreamError`).
    pub reason: &'static str,
    pub message: String,
    /// When the attempt failed: the client keeps its last failure while it sleeps in
    /// its reconnect backoff, and a reader must not take that for a new one.
    pub at: Instant,
}

impl From<&Failure> for UpstreamFailure {
    fn from(f: &Failure) -> Self {
        UpstreamFailure {
            reason: f.kind.condition_reason(),
            message: f.message.clone(),
            at: f.at,
        }
    }
}

pub trait UpstreamSource: Send + Sync {
    /// `None`: no client is configured for this peer.
    fn upstream(&self, peer: &str) -> Option<UpstreamObservation>;
}

struct ClientHandle {
    endpoint: String,
    stats: Arc<StreamStats>,
    failure: Arc<Mutex<Option<Failure>>>,
}

/// The running `AdsClient`s, by peer cluster.
#[derive(Default)]
pub struct AdsClients {
    clients: Mutex<HashMap<String, ClientHandle>>,
}

impl AdsClients {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Registers `client` (before spawning it) as the client of `peer`.
    pub fn register(&self, peer: &str, endpoint: &str, client: &AdsClient) {
        lock(&self.clients).insert(
            peer.to_string(),
            ClientHandle {
                endpoint: endpoint.to_string(),
                stats: client.stats(),
                failure: client.failure_handle(),
            },
        );
    }

    pub fn remove(&self, peer: &str) {
        lock(&self.clients).remove(peer);
    }
}

impl UpstreamSource for AdsClients {
    fn upstream(&self, peer: &str) -> Option<UpstreamObservation> {
        let clients = lock(&self.clients);
        let handle = clients.get(peer)?;
        let snapshot = handle.stats.snapshot();
        let failure = lock(&handle.failure).as_ref().map(UpstreamFailure::from);
        Some(UpstreamObservation {
            endpoint: handle.endpoint.clone(),
            connected: snapshot.connected,
            failure,
        })
    }
}
