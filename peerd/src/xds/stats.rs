//! Per-stream bookkeeping shared by the ADS client and server: what `peerd status`
//! shows for each upstream and each downstream connection (like `istioctl
//! proxy-status`). Writers are the stream's own task; readers take a [`StreamSnapshot`].

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::xds::types::{PerType, ResourceType};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TypeStats {
    pub last_nonce_sent: String,
    pub last_nonce_received: String,
    pub last_nonce_acked: String,
    pub acks: u64,
    pub nacks_sent: u64,
    pub nacks_received: u64,
    pub last_nack_message: String,
    /// Resources currently held (client) or last sent and not removed (server).
    pub resources: u64,
    /// First full response handled since the stream (re)connected.
    pub synced: bool,
    /// Server: parts of the last response that had to be one message (a stream's first)
    /// but exceeded `maxMessageBytes`; 0 when it fit.
    pub split_parts: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StreamSnapshot {
    /// Upstream name (origin cluster) or downstream node id.
    pub name: String,
    /// Remote socket address or URL.
    pub address: String,
    pub connected: bool,
    pub connected_since_unix_ms: i64,
    pub reconnects: u64,
    pub last_error: String,
    pub address_type: TypeStats,
    pub authorization_type: TypeStats,
}

impl StreamSnapshot {
    pub fn per_type(&self, t: ResourceType) -> &TypeStats {
        match t {
            ResourceType::Address => &self.address_type,
            ResourceType::Authorization => &self.authorization_type,
        }
    }
}

/// Mutable stats of one stream.
#[derive(Debug, Default)]
pub struct StreamStats {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    name: String,
    address: String,
    connected_since: Option<SystemTime>,
    reconnects: u64,
    last_error: String,
    types: PerType<TypeStats>,
}

impl StreamStats {
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Self {
        StreamStats {
            inner: Mutex::new(Inner {
                name: name.into(),
                address: address.into(),
                ..Inner::default()
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn set_name(&self, name: impl Into<String>) {
        self.with(|i| i.name = name.into());
    }

    pub fn connected(&self) {
        self.with(|i| {
            if i.connected_since.is_none() {
                i.connected_since = Some(SystemTime::now());
            }
            i.last_error.clear();
        });
    }

    /// The stream ended; per-type sync flags reset, counts stay.
    pub fn disconnected(&self, error: impl Into<String>) {
        self.with(|i| {
            if i.connected_since.take().is_some() {
                i.reconnects += 1;
            }
            i.last_error = error.into();
            for t in ResourceType::ALL {
                i.types.get_mut(t).synced = false;
            }
        });
    }

    /// Records a problem on a stream that is still up (e.g. an upstream that does not
    /// answer); cleared by the next (re)connect.
    pub fn set_last_error(&self, error: impl Into<String>) {
        self.with(|i| i.last_error = error.into());
    }

    pub fn update(&self, t: ResourceType, f: impl FnOnce(&mut TypeStats)) {
        self.with(|i| f(i.types.get_mut(t)));
    }

    pub fn snapshot(&self) -> StreamSnapshot {
        self.with(|i| StreamSnapshot {
            name: i.name.clone(),
            address: i.address.clone(),
            connected: i.connected_since.is_some(),
            connected_since_unix_ms: i.connected_since.map(unix_ms).unwrap_or(0),
            reconnects: i.reconnects,
            last_error: i.last_error.clone(),
            address_type: i.types.get(ResourceType::Address).clone(),
            authorization_type: i.types.get(ResourceType::Authorization).clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_resets_sync_but_keeps_counts() {
        let s = StreamStats::new("c2", "127.0.2.1:15012");
        s.connected();
        s.update(ResourceType::Address, |t| {
            t.synced = true;
            t.resources = 5;
            t.nacks_sent = 1;
        });
        let snap = s.snapshot();
        assert!(snap.connected && snap.address_type.synced);
        s.disconnected("stream reset");
        let snap = s.snapshot();
        assert!(!snap.connected);
        assert!(!snap.address_type.synced);
        assert_eq!(snap.address_type.resources, 5);
        assert_eq!(snap.reconnects, 1);
        assert_eq!(snap.last_error, "stream reset");
    }
}

/// The stats of every running upstream stream, by origin name: the local istiod and the
/// peers, which come and go at runtime. Readers take a [`UpstreamList::snapshot`].
#[derive(Debug, Default)]
pub struct UpstreamList {
    streams: Mutex<Vec<(String, std::sync::Arc<StreamStats>)>>,
}

impl UpstreamList {
    pub fn new(streams: Vec<(String, std::sync::Arc<StreamStats>)>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(UpstreamList {
            streams: Mutex::new(streams),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, std::sync::Arc<StreamStats>)>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The streams now, in the order they were added.
    pub fn snapshot(&self) -> Vec<(String, std::sync::Arc<StreamStats>)> {
        self.lock().clone()
    }

    /// The stream of `name`, replacing a previous one of the same name in place.
    pub fn set(&self, name: &str, stats: std::sync::Arc<StreamStats>) {
        let mut streams = self.lock();
        match streams.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = stats,
            None => streams.push((name.to_string(), stats)),
        }
    }

    /// Forgets the stream of `name` (its upstream was removed).
    pub fn remove(&self, name: &str) {
        self.lock().retain(|(n, _)| n != name);
    }
}
