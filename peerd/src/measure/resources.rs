//! `peerd_resources{peer_cluster,type}`: resources held per origin and type, set on
//! every store event from the origin's current snapshot (O(1) per event).

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreEvent};
use crate::xds::types::ResourceType;

fn set(origin: &str, kind: ResourceType, count: usize) {
    metrics::gauge!("peerd_resources", "peer_cluster" => origin.to_string(), "type" => kind.short_name())
        .set(count as f64);
}

fn refresh(store: &Store, origin: &str) {
    let Some(o) = store.get(origin) else {
        return;
    };
    let snapshot = o.view.snapshot();
    for kind in ResourceType::ALL {
        set(origin, kind, snapshot.len(kind));
    }
}

/// Keeps the gauges current until cancelled.
pub async fn run_resource_gauges(store: Arc<Store>, cancel: CancellationToken) {
    let mut events = store.subscribe();
    for origin in store.origins() {
        refresh(&store, &origin.name);
    }
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = events.recv() => e,
        };
        match event {
            Ok(StoreEvent::Changed { origin, .. }) => refresh(&store, &origin),
            Ok(StoreEvent::Removed { origin }) => {
                for kind in ResourceType::ALL {
                    set(&origin, kind, 0);
                }
            }
            Ok(StoreEvent::Synced { .. } | StoreEvent::Unsynced { .. }) => {}
            Err(RecvError::Lagged(_)) => {
                for origin in store.origins() {
                    refresh(&store, &origin.name);
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}
