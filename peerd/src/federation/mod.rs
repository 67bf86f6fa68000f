//! Federation turns what the upstreams sent (the [`Store`], one view per origin) into the
//! merged view served to ztunnel.
//!
//! It owns the merged [`View`] and the record of which origin each served resource came
//! from ("origin tagging"). It must never write to the store, and never copy the whole
//! state for one change: each store event recomputes only the names it carries.
//!
//! Today the merge is a pass-through with a fixed precedence (the local cluster first,
//! then peers by cluster name); the import rules of DESIGN §5 plug in here.

use std::collections::BTreeSet;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreEvent};
use crate::view::View;
use crate::xds::resource::Resource;
use crate::xds::types::ResourceType;

/// The merged view and where each of its resources came from.
pub struct Federation {
    local_cluster: Arc<str>,
    store: Arc<Store>,
    merged: Arc<View>,
    origin_of: DashMap<(ResourceType, Arc<str>), Arc<str>>,
}

impl Federation {
    pub fn new(local_cluster: &str, store: Arc<Store>) -> Arc<Federation> {
        Arc::new(Federation {
            local_cluster: Arc::from(local_cluster),
            store,
            merged: View::new("merged"),
            origin_of: DashMap::new(),
        })
    }

    /// What ztunnel is served.
    pub fn merged(&self) -> &Arc<View> {
        &self.merged
    }

    /// The origin cluster of a served resource.
    pub fn origin_of(&self, kind: ResourceType, name: &str) -> Option<Arc<str>> {
        self.origin_of
            .get(&(kind, Arc::from(name)))
            .map(|o| Arc::clone(&o))
    }

    /// Origins in precedence order: the local cluster, then the others by name.
    fn ordered_origins(&self) -> Vec<Arc<crate::store::Origin>> {
        let mut origins = self.store.origins();
        origins.sort_by_key(|o| (o.name != self.local_cluster, Arc::clone(&o.name)));
        origins
    }

    /// Recomputes the served form of `names` of one type and publishes the difference.
    #[tracing::instrument(name = "federation.recompute", skip_all, fields(%kind))]
    pub fn recompute(&self, kind: ResourceType, names: impl IntoIterator<Item = Arc<str>>) {
        let origins = self.ordered_origins();
        let snapshots: Vec<_> = origins.iter().map(|o| (o, o.view.snapshot())).collect();
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        for name in names {
            let winner = snapshots
                .iter()
                .find_map(|(o, s)| s.get(kind, &name).map(|r| (o, r)));
            match winner {
                Some((origin, r)) => {
                    upserts.push(Arc::new(served_form(r)));
                    self.origin_of
                        .insert((kind, Arc::clone(&name)), Arc::clone(&origin.name));
                }
                None => {
                    self.origin_of.remove(&(kind, Arc::clone(&name)));
                    removals.push(name);
                }
            }
        }
        self.merged.apply(kind, upserts, removals);
    }

    /// Recomputes every name any origin or the merged view holds.
    pub fn recompute_all(&self) {
        for kind in ResourceType::ALL {
            let mut names: BTreeSet<Arc<str>> = self
                .merged
                .snapshot()
                .resources(kind)
                .keys()
                .cloned()
                .collect();
            for o in self.store.origins() {
                names.extend(o.view.snapshot().resources(kind).keys().cloned());
            }
            self.recompute(kind, names);
        }
    }

    /// Follows store events until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut events = self.store.subscribe();
        self.recompute_all();
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                e = events.recv() => e,
            };
            match event {
                Ok(StoreEvent::Changed { change, .. }) => {
                    self.recompute(change.kind, change.names.iter().cloned());
                }
                Ok(StoreEvent::Synced { .. }) => {}
                Ok(StoreEvent::Removed { .. }) => self.recompute_all(),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "federation fell behind the store; full recompute"
                    );
                    self.recompute_all();
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// The form served downstream: same bytes, announced under a content version so equal
/// bytes from any origin or after a restart compare equal.
fn served_form(r: &Resource) -> Resource {
    r.with_content_version()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::istio::workload;

    fn wl(uid: &str, node: &str) -> Arc<Resource> {
        Arc::new(
            Resource::workload(&workload::Workload {
                uid: uid.into(),
                node: node.into(),
                ..Default::default()
            })
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn local_origin_wins_and_removal_falls_back_to_next_origin() {
        let store = Store::new();
        let fed = Federation::new("c1", Arc::clone(&store));
        store.apply(
            "c2",
            ResourceType::Address,
            vec![wl("x", "from-c2")],
            vec![],
        );
        store.apply(
            "c1",
            ResourceType::Address,
            vec![wl("x", "from-c1")],
            vec![],
        );
        fed.recompute_all();
        assert_eq!(
            fed.origin_of(ResourceType::Address, "x").as_deref(),
            Some("c1")
        );
        store.apply("c1", ResourceType::Address, vec![], vec![Arc::from("x")]);
        fed.recompute(ResourceType::Address, [Arc::from("x")]);
        assert_eq!(
            fed.origin_of(ResourceType::Address, "x").as_deref(),
            Some("c2")
        );
        store.remove("c2");
        fed.recompute_all();
        assert!(fed.merged().snapshot().is_empty());
        assert!(fed.origin_of(ResourceType::Address, "x").is_none());
    }

    #[tokio::test]
    async fn run_follows_store_events() {
        let store = Store::new();
        let fed = Federation::new("c1", Arc::clone(&store));
        let cancel = CancellationToken::new();
        let mut changes = fed.merged().subscribe();
        let task = tokio::spawn(Arc::clone(&fed).run(cancel.clone()));
        tokio::task::yield_now().await;
        store.apply("c1", ResourceType::Address, vec![wl("a", "n")], vec![]);
        let change = tokio::time::timeout(std::time::Duration::from_secs(10), changes.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*change.names[0], "a");
        let served = fed.merged().snapshot();
        let r = served.get(ResourceType::Address, "a").unwrap();
        assert_eq!(r.version, crate::xds::resource::content_version(&r.body));
        cancel.cancel();
        task.await.unwrap();
    }
}
