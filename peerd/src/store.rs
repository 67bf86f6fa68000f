//! The store holds, per origin cluster, exactly what that upstream sent: one [`View`]
//! per origin (resources with their original bytes and upstream versions), plus whether
//! each type has completed its first full response since the stream (re)connected.
//!
//! It owns nothing derived: federation reads it and computes the served views.
//! Architecture invariant: only the upstream client of an origin writes that origin's
//! view; every write is announced on one event channel naming the origin and the changed
//! names, so consumers recompute only what a change touches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use tokio::sync::broadcast;

use crate::view::{AddressIndexing, ChangeSet, View};
use crate::xds::resource::Resource;
use crate::xds::types::ResourceType;

/// What happened to the store.
#[derive(Debug, Clone)]
pub enum StoreEvent {
    /// Resources of one origin changed.
    Changed {
        origin: Arc<str>,
        change: Arc<ChangeSet>,
        /// When the store applied it (the start of the propagation measurement).
        at: Instant,
    },
    /// An origin completed its first full response for a type (after a (re)connect).
    Synced {
        origin: Arc<str>,
        kind: ResourceType,
    },
    /// An origin was dropped with all its resources.
    Removed { origin: Arc<str> },
}

/// One origin's resources and sync flags.
pub struct Origin {
    pub name: Arc<str>,
    pub view: Arc<View>,
    synced: [AtomicBool; 2],
}

impl Origin {
    pub fn is_synced(&self, kind: ResourceType) -> bool {
        self.synced[kind.index()].load(Ordering::Acquire)
    }

    pub fn is_fully_synced(&self) -> bool {
        ResourceType::ALL.iter().all(|t| self.is_synced(*t))
    }
}

pub struct Store {
    origins: DashMap<Arc<str>, Arc<Origin>>,
    events: broadcast::Sender<StoreEvent>,
}

const EVENT_RING: usize = 8192;

impl Store {
    pub fn new() -> Arc<Store> {
        let (events, _) = broadcast::channel(EVENT_RING);
        Arc::new(Store {
            origins: DashMap::new(),
            events,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// The origin's entry, created empty on first use.
    pub fn origin(&self, name: &str) -> Arc<Origin> {
        if let Some(o) = self.origins.get(name) {
            return Arc::clone(&o);
        }
        let entry = self.origins.entry(Arc::from(name)).or_insert_with(|| {
            Arc::new(Origin {
                name: Arc::from(name),
                view: View::with_indexing(format!("origin/{name}"), AddressIndexing::ServicesOnly),
                synced: [AtomicBool::new(false), AtomicBool::new(false)],
            })
        });
        Arc::clone(&entry)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Origin>> {
        self.origins.get(name).map(|o| Arc::clone(&o))
    }

    /// All origins, sorted by name.
    pub fn origins(&self) -> Vec<Arc<Origin>> {
        let mut v: Vec<Arc<Origin>> = self.origins.iter().map(|e| Arc::clone(e.value())).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Applies one accepted response of an upstream.
    #[tracing::instrument(name = "store.apply", skip_all, fields(origin, %kind, upserts = upserts.len(), removals = removals.len()))]
    pub fn apply(
        &self,
        origin: &str,
        kind: ResourceType,
        upserts: Vec<Arc<Resource>>,
        removals: Vec<Arc<str>>,
    ) -> Option<Arc<ChangeSet>> {
        let o = self.origin(origin);
        let change = o.view.apply(kind, upserts, removals)?;
        let _ = self.events.send(StoreEvent::Changed {
            origin: Arc::clone(&o.name),
            change: Arc::clone(&change),
            at: Instant::now(),
        });
        Some(change)
    }

    /// Marks a type of an origin as synced (first full response handled).
    pub fn mark_synced(&self, origin: &str, kind: ResourceType) {
        let o = self.origin(origin);
        if !o.synced[kind.index()].swap(true, Ordering::AcqRel) {
            let _ = self.events.send(StoreEvent::Synced {
                origin: Arc::clone(&o.name),
                kind,
            });
        }
    }

    /// Clears the sync flags of an origin (its stream went away); resources stay.
    pub fn mark_unsynced(&self, origin: &str) {
        if let Some(o) = self.get(origin) {
            for flag in &o.synced {
                flag.store(false, Ordering::Release);
            }
        }
    }

    /// Drops an origin and everything it sent.
    pub fn remove(&self, origin: &str) -> bool {
        let Some((name, _)) = self.origins.remove(origin) else {
            return false;
        };
        let _ = self.events.send(StoreEvent::Removed { origin: name });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::istio::workload;

    #[tokio::test]
    async fn events_name_origin_and_changed_names() {
        let store = Store::new();
        let mut rx = store.subscribe();
        let r = Arc::new(
            Resource::workload(&workload::Workload {
                uid: "c2//Pod/default/a".into(),
                ..Default::default()
            })
            .unwrap(),
        );
        store.apply("c2", ResourceType::Address, vec![r], vec![]);
        match rx.recv().await.unwrap() {
            StoreEvent::Changed { origin, change, .. } => {
                assert_eq!(&*origin, "c2");
                assert_eq!(&*change.names[0], "c2//Pod/default/a");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!store.origin("c2").is_fully_synced());
        store.mark_synced("c2", ResourceType::Address);
        store.mark_synced("c2", ResourceType::Authorization);
        assert!(store.origin("c2").is_fully_synced());
        store.mark_unsynced("c2");
        assert!(!store.origin("c2").is_synced(ResourceType::Address));
        assert_eq!(
            store
                .origin("c2")
                .view
                .snapshot()
                .len(ResourceType::Address),
            1
        );
        assert!(store.remove("c2"));
        assert!(store.get("c2").is_none());
    }
}
