//! A `View` is one published, versioned set of resources of both types: what one
//! upstream sent (per origin, in the store), what ztunnel is served (the merged view), or
//! what peers are served (the export view), or what a simulated istiod serves.
//!
//! Readers take O(1) snapshots (`arc-swap` over persistent `imbl` maps); a writer
//! changes only the names it touches and publishes a [`ChangeSet`] naming them, so a
//! single change never copies the whole state.
//!
//! Architecture invariant: a `ChangeSet` is published only after the snapshot that
//! contains it is visible, so a subscriber that reads the snapshot after receiving a
//! change always sees that change (or a later one). A subscriber that lags (the
//! broadcast ring overflowed) must fall back to a full comparison against a snapshot.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, watch};

use crate::budget::stored_cost;
use crate::xds::resource::{Resource, Summary};
use crate::xds::types::{PerType, ResourceType};

/// Names changed (added, updated or removed) by one write to a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    pub version: u64,
    pub kind: ResourceType,
    pub names: Vec<Arc<str>>,
    /// Origin clusters of the resources this write upserted, sorted, when the writer
    /// serves several origins (the merged view); empty otherwise. Spares subscribers a
    /// lookup per name.
    pub origins: Vec<Arc<str>>,
}

pub type ResourceMap = imbl::OrdMap<Arc<str>, Arc<Resource>>;

/// `network/IP` → owner name. A B-tree rather than imbl's HAMT: at one entry per
/// workload the HAMT's sparse 32-slot nodes cost about three times the memory.
type AddressIndex = imbl::OrdMap<IndexKey, Arc<str>>;

/// A `network/IP` key of the [`AddressIndex`], ordered by a hash of its text first.
///
/// Nothing reads the index in order, and pod IPs arrive in no particular order: compared
/// as strings, every step of a B-tree search would read a string behind an `Arc`, a
/// cache miss each (it made indexing 100k workloads three times slower than storing
/// them). The inline hash settles almost every comparison; the text only breaks ties.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct IndexKey {
    hash: u64,
    key: Arc<str>,
}

impl IndexKey {
    fn new(key: Arc<str>) -> IndexKey {
        use std::hash::BuildHasher;
        // Fixed seed: the order must not change while the map lives (any seed would do).
        let hash = foldhash::fast::FixedState::with_seed(0).hash_one(&*key);
        IndexKey { hash, key }
    }
}

/// Which addresses a view indexes by `network/IP`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AddressIndexing {
    /// Workloads and services: a view clients are served from (ztunnel looks workloads
    /// up by IP on demand).
    #[default]
    All,
    /// Service VIPs only: a view nobody is served from (an origin in the store). The
    /// merge's VIP checks read it; one index entry per pod would be pure cost on the
    /// sync path. A workload IP lookup (debug only) scans instead.
    ServicesOnly,
}

/// An immutable snapshot of a view.
#[derive(Clone, Default)]
pub struct ViewState {
    pub version: u64,
    resources: PerType<ResourceMap>,
    /// `network/IP` (ztunnel's on-demand key) → name of the workload or service owning it.
    by_address: AddressIndex,
    indexing: AddressIndexing,
    /// [`crate::budget::stored_cost`] summed over every resource held.
    stored_bytes: usize,
}

impl ViewState {
    pub fn get(&self, kind: ResourceType, name: &str) -> Option<&Arc<Resource>> {
        self.resources.get(kind).get(name)
    }

    pub fn resources(&self, kind: ResourceType) -> &ResourceMap {
        self.resources.get(kind)
    }

    pub fn len(&self, kind: ResourceType) -> usize {
        self.resources.get(kind).len()
    }

    pub fn is_empty(&self) -> bool {
        ResourceType::ALL.iter().all(|t| self.len(*t) == 0)
    }

    /// The estimated memory of what this state holds (see [`crate::budget`]).
    pub fn stored_bytes(&self) -> usize {
        self.stored_bytes
    }

    /// Resolves an on-demand key for the Address type: a workload uid, a service
    /// `namespace/hostname`, or `network/IP`.
    pub fn resolve_address_key(&self, key: &str) -> Option<&Arc<Resource>> {
        let by_name = self.get(ResourceType::Address, key);
        by_name
            .or_else(|| self.indexed_address_owner(key))
            .or_else(|| match self.indexing {
                AddressIndexing::All => None,
                AddressIndexing::ServicesOnly => self
                    .resources(ResourceType::Address)
                    .values()
                    .find(|r| address_keys(r).iter().any(|k| **k == *key)),
            })
    }

    /// The owner of a `network/IP` in the index (see [`AddressIndexing`]); never scans.
    pub fn indexed_address_owner(&self, key: &str) -> Option<&Arc<Resource>> {
        self.by_address
            .get(&IndexKey::new(Arc::from(key)))
            .and_then(|name| self.get(ResourceType::Address, name))
    }

    /// Counts (workloads, services) of the Address type, and authorizations.
    pub fn counts(&self) -> (usize, usize, usize) {
        let workloads = self
            .resources(ResourceType::Address)
            .values()
            .filter(|r| matches!(*r.summary, Summary::Workload(_)))
            .count();
        let addresses = self.len(ResourceType::Address);
        (
            workloads,
            addresses - workloads,
            self.len(ResourceType::Authorization),
        )
    }
}

/// `network/IP` keys of a resource, in ztunnel's on-demand format.
pub fn address_keys(r: &Resource) -> &[Arc<str>] {
    match &*r.summary {
        Summary::Workload(w) => &w.address_keys,
        Summary::Service(s) => &s.address_keys,
        Summary::Authorization(_) => &[],
    }
}

pub struct View {
    label: Arc<str>,
    state: ArcSwap<ViewState>,
    /// Serializes writers; readers never take it.
    writer: Mutex<()>,
    changes: broadcast::Sender<Arc<ChangeSet>>,
    /// Whether the view holds a complete state that clients may be answered from (see
    /// [`View::pending`]).
    ready: watch::Sender<bool>,
}

/// How many change sets a subscriber may fall behind before it must resync fully.
const CHANGE_RING: usize = 4096;
/// The same for a view nobody is served from (an origin in the store): the ring is
/// allocated in full when the view is made (about 160 KB at 4096 slots, one per peer),
/// and nothing in peerd subscribes to such a view; a subscriber that lags resyncs.
const UNSERVED_CHANGE_RING: usize = 64;

impl View {
    pub fn new(label: impl Into<Arc<str>>) -> Arc<View> {
        View::with_indexing(label, AddressIndexing::All)
    }

    pub fn with_indexing(label: impl Into<Arc<str>>, indexing: AddressIndexing) -> Arc<View> {
        View::build(label.into(), indexing, true)
    }

    /// A view that is not ready until [`View::set_ready`]: it fills up first (a restarted
    /// peerd re-syncing its upstream), and servers hold every stream's first response
    /// until then. Answering early would hand a fresh client a partial state as if it
    /// were complete, and tell a reconnecting one to remove what it holds.
    pub fn pending(label: impl Into<Arc<str>>) -> Arc<View> {
        View::build(label.into(), AddressIndexing::All, false)
    }

    fn build(label: Arc<str>, indexing: AddressIndexing, ready: bool) -> Arc<View> {
        let ring = match indexing {
            AddressIndexing::All => CHANGE_RING,
            AddressIndexing::ServicesOnly => UNSERVED_CHANGE_RING,
        };
        let (changes, _) = broadcast::channel(ring);
        Arc::new(View {
            label,
            state: ArcSwap::from_pointee(ViewState {
                indexing,
                ..ViewState::default()
            }),
            writer: Mutex::new(()),
            changes,
            ready: watch::Sender::new(ready),
        })
    }

    /// Marks the view complete: held streams are answered now. Final.
    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Watches [`View::is_ready`].
    pub fn ready_signal(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn snapshot(&self) -> Arc<ViewState> {
        self.state.load_full()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChangeSet>> {
        self.changes.subscribe()
    }

    /// Applies upserts and removals of one type atomically. A resource whose version
    /// and bytes equal the held one is not a change. Returns the published change set,
    /// or `None` when nothing changed.
    pub fn apply(
        &self,
        kind: ResourceType,
        upserts: impl IntoIterator<Item = Arc<Resource>>,
        removals: impl IntoIterator<Item = Arc<str>>,
    ) -> Option<Arc<ChangeSet>> {
        self.apply_from(kind, upserts, removals, Vec::new())
    }

    /// [`View::apply`] for a writer that serves several origins: the change set also
    /// names the (sorted) `origins` of the upserts.
    pub fn apply_from(
        &self,
        kind: ResourceType,
        upserts: impl IntoIterator<Item = Arc<Resource>>,
        removals: impl IntoIterator<Item = Arc<str>>,
        origins: Vec<Arc<str>>,
    ) -> Option<Arc<ChangeSet>> {
        // A poisoned lock only means another writer panicked; the state behind the
        // ArcSwap is still a consistent snapshot.
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.state.load_full();
        let mut next = ViewState::clone(&current);
        let mut names = Vec::new();
        for name in removals {
            if let Some(old) = next.resources.get_mut(kind).remove(&name) {
                unindex(&mut next.by_address, &old);
                next.stored_bytes -= stored_cost(&old);
                names.push(name);
            }
        }
        // In name order: consecutive B-tree inserts then walk the same, cached nodes
        // (a 100k bulk load in random order spends most of its time in cache misses).
        let mut upserts: Vec<Arc<Resource>> = upserts.into_iter().collect();
        if upserts.len() > 1 && !upserts.is_sorted_by(|a, b| a.name <= b.name) {
            upserts.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        }
        let mut index_inserts = Vec::new();
        for r in upserts {
            debug_assert_eq!(r.kind, kind);
            let map = next.resources.get_mut(kind);
            // Insert first and look at what was there: one traversal for a new name.
            if let Some(old) = map.insert(Arc::clone(&r.name), Arc::clone(&r)) {
                if old.version == r.version && old.body == r.body {
                    // Not a change: keep the held resource (and whatever buffer its
                    // body lives in) rather than the equal newcomer.
                    map.insert(Arc::clone(&r.name), old);
                    continue;
                }
                unindex(&mut next.by_address, &old);
                next.stored_bytes -= stored_cost(&old);
            }
            next.stored_bytes += stored_cost(&r);
            let indexed = match next.indexing {
                AddressIndexing::All => true,
                AddressIndexing::ServicesOnly => matches!(*r.summary, Summary::Service(_)),
            };
            for key in address_keys(&r).iter().filter(|_| indexed) {
                index_inserts.push((IndexKey::new(Arc::clone(key)), Arc::clone(&r.name)));
            }
            names.push(Arc::clone(&r.name));
        }
        // In key order (stable: a later upsert of the same key still wins), after every
        // unindex above: a bulk load then walks the index's leaves once, in order.
        index_inserts.sort_by_key(|(key, _)| key.hash);
        for (key, owner) in index_inserts {
            next.by_address.insert(key, owner);
        }
        if names.is_empty() {
            return None;
        }
        next.version = current.version + 1;
        let change = Arc::new(ChangeSet {
            version: next.version,
            kind,
            names,
            origins,
        });
        self.state.store(Arc::new(next));
        // No subscribers is fine: nobody is listening yet.
        let _ = self.changes.send(Arc::clone(&change));
        Some(change)
    }

    /// Makes the view hold exactly `resources` for `kind`, removing the rest.
    pub fn replace_all(
        &self,
        kind: ResourceType,
        resources: impl IntoIterator<Item = Arc<Resource>>,
    ) -> Option<Arc<ChangeSet>> {
        let resources: Vec<Arc<Resource>> = resources.into_iter().collect();
        let keep: std::collections::HashSet<&str> = resources.iter().map(|r| &*r.name).collect();
        let snapshot = self.snapshot();
        let removals: Vec<Arc<str>> = snapshot
            .resources(kind)
            .keys()
            .filter(|n| !keep.contains(&***n))
            .cloned()
            .collect();
        self.apply(kind, resources, removals)
    }
}

fn unindex(index: &mut AddressIndex, old: &Resource) {
    for key in address_keys(old) {
        let key = IndexKey::new(Arc::clone(key));
        if index.get(&key).is_some_and(|n| *n == old.name) {
            index.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::istio::workload;

    fn wl(uid: &str, ip: [u8; 4], node: &str) -> Arc<Resource> {
        Arc::new(
            Resource::workload(&workload::Workload {
                uid: uid.into(),
                name: uid.into(),
                namespace: "default".into(),
                addresses: vec![ip.to_vec()],
                node: node.into(),
                ..Default::default()
            })
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn apply_publishes_only_changed_names_and_snapshots_are_stable() {
        let view = View::new("test");
        let mut rx = view.subscribe();
        let before = view.snapshot();
        let c = view
            .apply(
                ResourceType::Address,
                [wl("a", [127, 0, 0, 2], "n1"), wl("b", [127, 0, 0, 3], "n1")],
                [],
            )
            .unwrap();
        assert_eq!(c.names.len(), 2);
        assert_eq!(rx.recv().await.unwrap().names.len(), 2);
        // Same content again: not a change.
        assert!(
            view.apply(ResourceType::Address, [wl("a", [127, 0, 0, 2], "n1")], [])
                .is_none()
        );
        // Update one and remove the other.
        let c = view
            .apply(
                ResourceType::Address,
                [wl("a", [127, 0, 0, 2], "n2")],
                [Arc::from("b")],
            )
            .unwrap();
        assert_eq!(c.names, vec![Arc::<str>::from("b"), Arc::from("a")]);
        assert!(before.is_empty(), "old snapshot unchanged");
        let now = view.snapshot();
        assert_eq!(now.len(ResourceType::Address), 1);
        assert_eq!(now.version, 2);
    }

    #[test]
    fn on_demand_keys_resolve_by_network_ip_and_follow_updates() {
        let view = View::new("test");
        view.apply(ResourceType::Address, [wl("a", [127, 0, 0, 2], "n1")], []);
        assert_eq!(
            &*view
                .snapshot()
                .resolve_address_key("/127.0.0.2")
                .unwrap()
                .name,
            "a"
        );
        view.apply(ResourceType::Address, [wl("a", [127, 0, 0, 9], "n1")], []);
        let s = view.snapshot();
        assert!(s.resolve_address_key("/127.0.0.2").is_none());
        assert_eq!(&*s.resolve_address_key("/127.0.0.9").unwrap().name, "a");
        assert_eq!(&*s.resolve_address_key("a").unwrap().name, "a");
        view.replace_all(ResourceType::Address, []);
        assert!(view.snapshot().resolve_address_key("/127.0.0.9").is_none());
    }

    #[test]
    fn the_address_index_follows_a_bulk_load_and_addresses_swapped_in_one_write() {
        let ip = |i: u32| (0x7f00_0002 + i).to_be_bytes();
        let key = |i: u32| format!("/{}", std::net::Ipv4Addr::from(ip(i)));
        let owner =
            |s: &ViewState, i: u32| s.indexed_address_owner(&key(i)).map(|r| r.name.to_string());
        let view = View::new("test");
        view.apply(
            ResourceType::Address,
            (0..3000).map(|i| wl(&format!("w{i}"), ip(i), "n1")),
            [],
        );
        let s = view.snapshot();
        for i in (0..3000).step_by(7) {
            assert_eq!(owner(&s, i).as_deref(), Some(&*format!("w{i}")));
        }
        // One write: w0 leaves its address for a new one and w1 takes it over; w2 goes.
        view.apply(
            ResourceType::Address,
            [wl("w1", ip(0), "n1"), wl("w0", ip(5000), "n1")],
            [Arc::from("w2")],
        );
        let s = view.snapshot();
        assert_eq!(owner(&s, 0).as_deref(), Some("w1"));
        assert_eq!(owner(&s, 5000).as_deref(), Some("w0"));
        assert_eq!(owner(&s, 1), None, "w1's old address is released");
        assert_eq!(
            owner(&s, 2),
            None,
            "a removed workload's address is released"
        );
        assert_eq!(owner(&s, 3).as_deref(), Some("w3"));
    }

    #[test]
    fn a_services_only_view_indexes_vips_and_still_resolves_workload_ips() {
        let view = View::with_indexing("origin/c1", AddressIndexing::ServicesOnly);
        let svc = Arc::new(
            Resource::service(&workload::Service {
                name: "echo".into(),
                namespace: "default".into(),
                hostname: "echo.default.svc.cluster.local".into(),
                addresses: vec![workload::NetworkAddress {
                    network: String::new(),
                    address: vec![127, 96, 0, 1],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .unwrap(),
        );
        view.apply(
            ResourceType::Address,
            [wl("a", [127, 0, 0, 2], "n1"), svc],
            [],
        );
        let s = view.snapshot();
        let vip_owner = s.indexed_address_owner("/127.96.0.1").unwrap();
        assert_eq!(&*vip_owner.name, "default/echo.default.svc.cluster.local");
        assert!(
            s.indexed_address_owner("/127.0.0.2").is_none(),
            "no entry per pod"
        );
        assert_eq!(&*s.resolve_address_key("/127.0.0.2").unwrap().name, "a");
        assert!(s.resolve_address_key("/127.0.0.3").is_none());
    }
}
