//! The store holds, per origin cluster, exactly what that upstream sent: one [`View`]
//! per origin (resources with their original bytes and upstream versions), plus whether
//! each type has completed its first full response since the stream (re)connected.
//!
//! It owns nothing derived: federation reads it and computes the served views.
//! Architecture invariant: only the upstream client of an origin writes that origin's
//! view; every write is announced on one event channel naming the origin and the changed
//! names, so consumers recompute only what a change touches.
//!
//! Sessions: every event carries the id of the upstream session it belongs to (a new id
//! each time a synced stream ends), and the end of such a session is an event of its own
//! ([`StoreEvent::Unsynced`]) carrying the state the session left behind. A consumer that
//! handles events late can so tell a change of a healthy session from one of the resync
//! after it, from the events alone, and knows exactly which state was complete.
//!
//! Memory: the store keeps the [`MemoryBudget`] ledger of what every origin's view holds
//! (each write is recorded under the budget's lock) and admits a peer's growing resource
//! only while the total stays inside the budget ([`Store::admit`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use tokio::sync::broadcast;

use crate::budget::{BudgetExceeded, MemoryBudget, stored_cost};
use crate::view::{AddressIndexing, ChangeSet, View, ViewState};
use crate::xds::resource::Resource;
use crate::xds::types::ResourceType;

/// What happened to the store.
#[derive(Clone)]
pub enum StoreEvent {
    /// Resources of one origin changed.
    Changed {
        origin: Arc<str>,
        change: Arc<ChangeSet>,
        /// When the store applied it (the start of the propagation measurement).
        at: Instant,
        /// The upstream session that sent it (see [`Origin::session`]).
        session: u64,
    },
    /// An origin completed its first full response for a type (after a (re)connect).
    Synced {
        origin: Arc<str>,
        kind: ResourceType,
        session: u64,
    },
    /// The stream of a session that had synced at least one type ended: every type of
    /// the origin is unsynced from here on, in event order.
    Unsynced {
        origin: Arc<str>,
        /// The session that ended.
        session: u64,
        /// What the origin held when it ended (everything that session sent).
        last: Arc<ViewState>,
    },
    /// An origin was dropped with all its resources.
    Removed { origin: Arc<str> },
}

impl std::fmt::Debug for StoreEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreEvent::Changed {
                origin,
                change,
                at,
                session,
            } => f
                .debug_struct("Changed")
                .field("origin", origin)
                .field("change", change)
                .field("at", at)
                .field("session", session)
                .finish(),
            StoreEvent::Synced {
                origin,
                kind,
                session,
            } => f
                .debug_struct("Synced")
                .field("origin", origin)
                .field("kind", kind)
                .field("session", session)
                .finish(),
            // The state itself is too large to print: its version says which it is.
            StoreEvent::Unsynced {
                origin,
                session,
                last,
            } => f
                .debug_struct("Unsynced")
                .field("origin", origin)
                .field("session", session)
                .field("last_version", &last.version)
                .finish(),
            StoreEvent::Removed { origin } => {
                f.debug_struct("Removed").field("origin", origin).finish()
            }
        }
    }
}

/// An origin was withdrawn (its grace period ended, or its peer was removed) after an
/// upstream session had offered the versions it held: that session's responses no longer
/// apply, and the client must start a new one from what the store holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdrawn {
    pub origin: Arc<str>,
}

impl std::fmt::Display for Withdrawn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the state of {} was withdrawn while its stream was resyncing; resubscribing from scratch",
            self.origin
        )
    }
}

impl std::error::Error for Withdrawn {}

/// One origin's resources and sync flags.
pub struct Origin {
    pub name: Arc<str>,
    pub view: Arc<View>,
    synced: [AtomicBool; 2],
    session: AtomicU64,
}

impl Origin {
    /// The id of the current upstream session. Ids come from one store-wide counter, so
    /// they only grow, also across a removed and recreated origin.
    pub fn session(&self) -> u64 {
        self.session.load(Ordering::SeqCst)
    }

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
    sessions: AtomicU64,
    budget: MemoryBudget,
}

const EVENT_RING: usize = 8192;

impl Store {
    /// A store with no memory budget (tests, tools).
    pub fn new() -> Arc<Store> {
        Store::with_memory_budget(usize::MAX)
    }

    /// A store whose peers' growth is refused past `budget_bytes` of stored state (all
    /// origins together; `usize::MAX` = unlimited).
    pub fn with_memory_budget(budget_bytes: usize) -> Arc<Store> {
        let (events, _) = broadcast::channel(EVENT_RING);
        Arc::new(Store {
            origins: DashMap::new(),
            events,
            sessions: AtomicU64::new(0),
            budget: MemoryBudget::new(budget_bytes),
        })
    }

    pub fn memory_budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Admits a peer's `resource` against the memory budget: Ok unless storing it would
    /// grow the stored state past the budget (replacing a stored version counts only the
    /// difference). Called before the resource is applied; the growth is held as
    /// pending until the origin's next write.
    pub fn admit(&self, origin: &str, resource: &Resource) -> Result<(), BudgetExceeded> {
        if self.budget.limit() == usize::MAX {
            return Ok(());
        }
        let old = self
            .get(origin)
            .and_then(|o| {
                o.view
                    .snapshot()
                    .get(resource.kind, &resource.name)
                    .map(|r| stored_cost(r))
            })
            .unwrap_or(0);
        self.budget.admit(origin, old, stored_cost(resource))
    }

    fn next_session(&self) -> u64 {
        self.sessions.fetch_add(1, Ordering::SeqCst) + 1
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
                session: AtomicU64::new(self.next_session()),
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

    /// Applies one accepted response of an upstream (creating the origin if needed).
    #[tracing::instrument(name = "store.apply", skip_all, fields(origin, %kind, upserts = upserts.len(), removals = removals.len()))]
    pub fn apply(
        &self,
        origin: &str,
        kind: ResourceType,
        upserts: Vec<Arc<Resource>>,
        removals: Vec<Arc<str>>,
    ) -> Option<Arc<ChangeSet>> {
        self.write(&self.origin(origin), kind, upserts, removals)
    }

    /// Applies one accepted response of the session that offered `held`'s versions
    /// upstream, only while `held` is still the origin's entry. Once the origin has been
    /// withdrawn, the upstream's responses are a diff against state that is gone, and
    /// applying them to a recreated origin would serve a partial peer as complete.
    #[tracing::instrument(name = "store.apply", skip_all, fields(origin = %held.name, %kind, upserts = upserts.len(), removals = removals.len()))]
    pub fn apply_to(
        &self,
        held: &Arc<Origin>,
        kind: ResourceType,
        upserts: Vec<Arc<Resource>>,
        removals: Vec<Arc<str>>,
    ) -> Result<Option<Arc<ChangeSet>>, Withdrawn> {
        let current = self.current(held)?;
        // `current` holds its shard's read lock until the write is done: a withdrawal
        // (`remove` takes the write lock) happens wholly before or after it.
        let change = self.write(current.value(), kind, upserts, removals);
        drop(current);
        Ok(change)
    }

    /// `held`'s entry in the map, if it is still the origin's (not withdrawn since).
    fn current(
        &self,
        held: &Arc<Origin>,
    ) -> Result<dashmap::mapref::one::Ref<'_, Arc<str>, Arc<Origin>>, Withdrawn> {
        match self.origins.get(&*held.name) {
            Some(current) if Arc::ptr_eq(current.value(), held) => Ok(current),
            _ => Err(Withdrawn {
                origin: Arc::clone(&held.name),
            }),
        }
    }

    fn write(
        &self,
        o: &Arc<Origin>,
        kind: ResourceType,
        upserts: Vec<Arc<Resource>>,
        removals: Vec<Arc<str>>,
    ) -> Option<Arc<ChangeSet>> {
        let change = self.budget.record_write(&o.name, || {
            let change = o.view.apply(kind, upserts, removals);
            (change, o.view.snapshot().stored_bytes())
        })?;
        let _ = self.events.send(StoreEvent::Changed {
            origin: Arc::clone(&o.name),
            change: Arc::clone(&change),
            at: Instant::now(),
            session: o.session(),
        });
        Some(change)
    }

    /// Marks a type of an origin as synced (first full response handled).
    pub fn mark_synced(&self, origin: &str, kind: ResourceType) {
        self.set_synced(&self.origin(origin), kind);
    }

    /// [`Store::mark_synced`] for the session that offered `held`'s versions, only while
    /// `held` has not been withdrawn (see [`Store::apply_to`]).
    pub fn mark_synced_in(&self, held: &Arc<Origin>, kind: ResourceType) -> Result<(), Withdrawn> {
        let current = self.current(held)?;
        self.set_synced(current.value(), kind);
        drop(current);
        Ok(())
    }

    fn set_synced(&self, o: &Arc<Origin>, kind: ResourceType) {
        if !o.synced[kind.index()].swap(true, Ordering::AcqRel) {
            let _ = self.events.send(StoreEvent::Synced {
                origin: Arc::clone(&o.name),
                kind,
                session: o.session(),
            });
        }
    }

    /// Clears the sync flags of an origin (its stream went away); resources stay. When a
    /// type was synced, the session ends here: [`StoreEvent::Unsynced`] carries what it
    /// left, and later changes belong to a new session. (A session that never synced a
    /// type has nothing to protect and simply continues.)
    pub fn mark_unsynced(&self, origin: &str) {
        let Some(o) = self.get(origin) else {
            return;
        };
        let mut was_synced = false;
        for flag in &o.synced {
            was_synced |= flag.swap(false, Ordering::AcqRel);
        }
        if !was_synced {
            return;
        }
        // Read before the new id is visible: every apply of the ended session precedes
        // this call (one client writes an origin), none of the next one does.
        let last = o.view.snapshot();
        let ended = o.session.swap(self.next_session(), Ordering::SeqCst);
        let _ = self.events.send(StoreEvent::Unsynced {
            origin: Arc::clone(&o.name),
            session: ended,
            last,
        });
    }

    /// Drops an origin and everything it sent.
    pub fn remove(&self, origin: &str) -> bool {
        let Some((name, _)) = self.origins.remove(origin) else {
            return false;
        };
        self.budget.forget(&name);
        let _ = self.events.send(StoreEvent::Removed { origin: name });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::istio::workload;

    fn pod(uid: &str) -> Arc<Resource> {
        Arc::new(
            Resource::workload(&workload::Workload {
                uid: uid.into(),
                ..Default::default()
            })
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn events_name_origin_and_changed_names() {
        let store = Store::new();
        let mut rx = store.subscribe();
        let r = pod("c2//Pod/default/a");
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
        let session = store.origin("c2").session();
        store.mark_unsynced("c2");
        assert!(!store.origin("c2").is_synced(ResourceType::Address));
        assert!(store.origin("c2").session() > session, "a new session");
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

    #[tokio::test]
    async fn the_end_of_a_synced_session_is_an_event_in_order() {
        let store = Store::new();
        let mut rx = store.subscribe();
        let r = pod("c2//Pod/default/a");
        // A session that never synced a type does not end (nothing to protect).
        store.apply("c2", ResourceType::Address, vec![r], vec![]);
        store.mark_unsynced("c2");
        store.mark_synced("c2", ResourceType::Address);
        store.apply(
            "c2",
            ResourceType::Address,
            vec![],
            vec!["c2//Pod/default/a".into()],
        );
        store.mark_unsynced("c2");
        let mut seen = Vec::new();
        while let Ok(event) = rx.try_recv() {
            seen.push(event);
        }
        let first = match &seen[0] {
            StoreEvent::Changed { session, .. } => *session,
            other => panic!("unexpected {other:?}"),
        };
        assert!(matches!(&seen[1], StoreEvent::Synced { session, .. } if *session == first));
        assert!(matches!(&seen[2], StoreEvent::Changed { session, .. } if *session == first));
        match &seen[3] {
            StoreEvent::Unsynced { session, last, .. } => {
                assert_eq!(*session, first);
                assert!(last.is_empty(), "the state after the session's last change");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(seen.len(), 4);
        assert!(store.origin("c2").session() > first);
    }

    #[tokio::test]
    async fn a_session_of_a_withdrawn_origin_writes_nothing_and_recreates_nothing() {
        let store = Store::new();
        let held = store.origin("c2");
        store
            .apply_to(
                &held,
                ResourceType::Address,
                vec![pod("c2//Pod/default/a")],
                vec![],
            )
            .unwrap();
        // The grace period ends while the session resyncs: the origin is withdrawn.
        assert!(store.remove("c2"));
        let mut rx = store.subscribe();
        let err = store
            .apply_to(
                &held,
                ResourceType::Address,
                vec![pod("c2//Pod/default/b")],
                vec![],
            )
            .unwrap_err();
        assert_eq!(&*err.origin, "c2");
        assert!(err.to_string().contains("withdrawn"), "{err}");
        assert_eq!(store.mark_synced_in(&held, ResourceType::Address), Err(err));
        assert!(
            store.get("c2").is_none(),
            "not recreated with the diff alone"
        );
        assert!(
            rx.try_recv().is_err(),
            "no event for a write that did not happen"
        );
        // A new session holds the new (empty) origin and writes normally.
        let fresh = store.origin("c2");
        store
            .apply_to(
                &fresh,
                ResourceType::Address,
                vec![pod("c2//Pod/default/b")],
                vec![],
            )
            .unwrap();
        store.mark_synced_in(&fresh, ResourceType::Address).unwrap();
        assert!(store.origin("c2").is_synced(ResourceType::Address));
        assert!(
            store
                .apply_to(&held, ResourceType::Address, vec![], vec![])
                .is_err()
        );
    }
}
