//! What federation believes about each origin: the *committed* state per origin and type,
//! and the disconnect grace period.
//!
//! Commit rule (docs/design.md §5.6, "never withdraw on a partial resync"): the store holds what an
//! upstream sent, as it arrives. While an origin's type is synced (its first complete
//! response since the stream (re)connected has been handled), every change is committed at
//! once. While it is not (the stream dropped, or a reconnect has not completed its first
//! response), changes to a type that has completed a sync before are *not* committed:
//! their names are parked, the merge keeps reading the last complete snapshot, and only
//! the `Synced` event commits the new state and recomputes the parked names. So a peer that
//! disconnects in the middle of a resync cannot replace its previous state with a partial
//! one. A type that has never completed a sync has no state to protect: its changes commit
//! as they arrive (the client applies a large first response in parts, so the merge of the
//! first part overlaps the validation of the next), and the state counts as *complete* only
//! from its `Synced` event on (the export gate waits for that).
//!
//! "Synced" is decided in event order, never by reading the store's flags later: a change
//! a healthy session applied is committed even if federation handles it after the stream
//! dropped. Committed is then the state the session left (carried by its `Unsynced`
//! event), not the live one, which may already hold the next session's partial resync.
//!
//! Grace: an origin other than the local cluster that is not fully synced is *stale* from
//! the moment that is first seen; after `grace_period` (None = never) it is withdrawn with
//! [`Store::remove`], and the merge drops everything it contributed. A peer whose state
//! was restored from the peer-state snapshot at start ([`crate::peerstate`]) is stale
//! since the time the snapshot recorded ([`Commits::restore_stale_since`]), not since the
//! restart, and its restored state counts as complete (a resync after it is parked like
//! any other), so a restart never shortens the grace period nor serves a partial resync.
//!
//! Owns: committed snapshots (O(1) `ViewState` clones), parked names, stale timers. Never
//! writes resources; only removes a whole origin after its grace period.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::{Origin, Store};
use crate::view::ViewState;
use crate::xds::types::ResourceType;

#[derive(Default)]
struct TypeState {
    committed: Option<Arc<ViewState>>,
    /// A sync of the type has completed since this origin appeared: from then on a
    /// resync is parked until it completes.
    completed: bool,
    /// In event order: the type has synced in the current session of the origin.
    synced: bool,
    /// Changed names whose change is not committed yet.
    parked: HashSet<Arc<str>>,
    /// Changes that were not parked, handled after their session ended: they commit with
    /// the state the session's `Unsynced` event carries (the live state may already hold
    /// the next session's partial resync).
    commit_at_end: bool,
    /// ... and that state completes a sync (the session's `Synced` was handled late).
    complete_at_end: bool,
}

#[derive(Default)]
struct OriginState {
    types: [TypeState; 2],
    /// Events of sessions before this one are already reflected (set by [`Commits::resync`]).
    floor: u64,
}

/// Committed state of every origin plus stale timers.
pub struct Commits {
    local: Arc<str>,
    origins: HashMap<Arc<str>, OriginState>,
    stale_since: HashMap<Arc<str>, Instant>,
    /// Origins restored from the peer-state snapshot, and since when they are stale:
    /// used instead of "now" when they are first seen stale.
    restored: HashMap<Arc<str>, Instant>,
}

impl Commits {
    pub fn new(local: &str) -> Commits {
        Commits {
            local: Arc::from(local),
            origins: HashMap::new(),
            stale_since: HashMap::new(),
            restored: HashMap::new(),
        }
    }

    /// Records that `origin`'s state was restored from the peer-state snapshot and has
    /// been stale since `since`: its grace period counts from then, and the restored state
    /// counts as complete. Call before the origin's events are handled (at start).
    pub fn restore_stale_since(&mut self, origin: &str, since: Instant) {
        if let Some(s) = self.stale_since.get_mut(origin) {
            *s = (*s).min(since);
        }
        self.restored.insert(Arc::from(origin), since);
    }

    /// The committed state of an origin's type.
    pub fn committed(&self, origin: &str, kind: ResourceType) -> Option<&Arc<ViewState>> {
        self.origins.get(origin)?.types[kind.index()]
            .committed
            .as_ref()
    }

    /// Whether a type of `origin` has synced in its current session, in event order (its
    /// committed state is that sync's, not a restored or earlier one).
    pub fn is_synced(&self, origin: &str, kind: ResourceType) -> bool {
        self.origins
            .get(origin)
            .is_some_and(|s| s.types[kind.index()].synced)
    }

    /// Whether the committed state of an origin's type comes from a completed sync.
    pub fn is_complete(&self, origin: &str, kind: ResourceType) -> bool {
        self.origins
            .get(origin)
            .is_some_and(|s| s.types[kind.index()].completed)
    }

    /// Origins with committed state in precedence order: the local cluster first, then
    /// the others by cluster name.
    pub fn ordered(&self) -> Vec<Arc<str>> {
        let mut v: Vec<Arc<str>> = self.origins.keys().cloned().collect();
        v.sort_by(|a, b| (*a != self.local, a).cmp(&(*b != self.local, b)));
        v
    }

    /// The live state of `origin` if it still belongs to `session` (no later session has
    /// written it). The snapshot is read before the session id: an apply of a later
    /// session follows the id change, so a matching id proves the snapshot has none.
    fn live_in(origin: &Origin, session: u64) -> Option<Arc<ViewState>> {
        let live = origin.view.snapshot();
        (origin.session() == session).then_some(live)
    }

    /// Handles a change of `names` applied in `session`; returns the names to recompute
    /// now (empty when the change is parked: the origin resyncs, or its session ended
    /// before this event was handled).
    pub fn on_changed(
        &mut self,
        origin: &Origin,
        session: u64,
        kind: ResourceType,
        names: &[Arc<str>],
    ) -> Vec<Arc<str>> {
        let state = self.origins.entry(Arc::clone(&origin.name)).or_default();
        if session < state.floor {
            return Vec::new();
        }
        let t = &mut state.types[kind.index()];
        if !t.synced && t.completed {
            t.parked.extend(names.iter().cloned());
            return Vec::new();
        }
        let Some(live) = Self::live_in(origin, session) else {
            t.parked.extend(names.iter().cloned());
            t.commit_at_end = true;
            return Vec::new();
        };
        t.committed = Some(live);
        let mut out: Vec<Arc<str>> = t.parked.drain().collect();
        out.extend(names.iter().cloned());
        out
    }

    /// Handles the first complete response of a type in `session`: commits and returns
    /// the parked names (or, if the session has ended since, leaves that to its end).
    pub fn on_synced(
        &mut self,
        origin: &Origin,
        session: u64,
        kind: ResourceType,
    ) -> Vec<Arc<str>> {
        let state = self.origins.entry(Arc::clone(&origin.name)).or_default();
        if session < state.floor {
            return Vec::new();
        }
        let t = &mut state.types[kind.index()];
        t.synced = true;
        let Some(live) = Self::live_in(origin, session) else {
            t.commit_at_end = true;
            t.complete_at_end = true;
            return Vec::new();
        };
        t.committed = Some(live);
        t.completed = true;
        t.parked.drain().collect()
    }

    /// Handles the end of `session` of `origin`, which left `last`: every type is unsynced
    /// from here on; changes handled after the end commit with `last`. Returns, per type,
    /// the names to recompute.
    pub fn on_unsynced(
        &mut self,
        origin: &Arc<str>,
        session: u64,
        last: &Arc<ViewState>,
    ) -> [Vec<Arc<str>>; 2] {
        let mut out: [Vec<Arc<str>>; 2] = Default::default();
        let state = self.origins.entry(Arc::clone(origin)).or_default();
        if session < state.floor {
            return out;
        }
        for (t, names) in state.types.iter_mut().zip(out.iter_mut()) {
            t.synced = false;
            if std::mem::take(&mut t.commit_at_end) {
                t.committed = Some(Arc::clone(last));
                t.completed |= std::mem::take(&mut t.complete_at_end);
                *names = t.parked.drain().collect();
            }
        }
        out
    }

    /// Forgets a withdrawn origin; returns, per type, every name it had contributed.
    pub fn on_removed(&mut self, origin: &str) -> [Vec<Arc<str>>; 2] {
        self.stale_since.remove(origin);
        self.restored.remove(origin);
        let Some(state) = self.origins.remove(origin) else {
            return Default::default();
        };
        let mut out: [Vec<Arc<str>>; 2] = Default::default();
        for kind in ResourceType::ALL {
            let t = &state.types[kind.index()];
            let mut names: HashSet<Arc<str>> = t.parked.iter().cloned().collect();
            if let Some(s) = &t.committed {
                names.extend(s.resources(kind).keys().cloned());
            }
            out[kind.index()] = names.into_iter().collect();
        }
        out
    }

    /// Re-reads every origin after missed events: synced types (and types that never
    /// completed a sync) are committed anew, the others keep their committed state.
    /// Events of sessions that had ended by then are ignored afterwards (this read holds
    /// them). Returns every name of either.
    pub fn resync(&mut self, store: &Store) -> [HashSet<Arc<str>>; 2] {
        let mut names: [HashSet<Arc<str>>; 2] = Default::default();
        let present: HashSet<Arc<str>> = store
            .origins()
            .iter()
            .map(|o| Arc::clone(&o.name))
            .collect();
        for (name, state) in &self.origins {
            for kind in ResourceType::ALL {
                let t = &state.types[kind.index()];
                if let Some(s) = &t.committed {
                    names[kind.index()].extend(s.resources(kind).keys().cloned());
                }
                if !present.contains(name) {
                    names[kind.index()].extend(t.parked.iter().cloned());
                }
            }
        }
        self.origins.retain(|n, _| present.contains(n));
        for origin in store.origins() {
            // One consistent reading: state and flags of one session (a session id read
            // before and after, see `live_in`).
            let (session, live, synced) = loop {
                let session = origin.session();
                let live = origin.view.snapshot();
                let synced = ResourceType::ALL.map(|t| origin.is_synced(t));
                if origin.session() == session {
                    break (session, live, synced);
                }
            };
            // A restored state is complete: it was a completed sync when written.
            let restored = self.restored.contains_key(&origin.name);
            let state = self.origins.entry(Arc::clone(&origin.name)).or_default();
            state.floor = session;
            for kind in ResourceType::ALL {
                let i = kind.index();
                let t = &mut state.types[i];
                names[i].extend(live.resources(kind).keys().cloned());
                t.synced = synced[i];
                t.commit_at_end = false;
                t.complete_at_end = false;
                if t.synced || !t.completed {
                    t.committed = Some(Arc::clone(&live));
                    t.completed |= t.synced || restored;
                    t.parked.clear();
                } else {
                    t.parked.extend(live.resources(kind).keys().cloned());
                }
            }
        }
        names
    }

    /// Updates stale timers and withdraws (via [`Store::remove`]) every non-local origin
    /// stale for at least `grace` (never when `grace` is `None`). Returns the withdrawn
    /// origins; the store's `Removed` events then drive the merge.
    pub fn sweep(&mut self, store: &Store, now: Instant, grace: Option<Duration>) -> Vec<Arc<str>> {
        let mut withdrawn = Vec::new();
        let origins = store.origins();
        self.stale_since
            .retain(|name, _| origins.iter().any(|o| o.name == *name));
        for origin in origins {
            if origin.name == self.local {
                continue;
            }
            if origin.is_fully_synced() {
                self.restored.remove(&origin.name);
                if self.stale_since.remove(&origin.name).is_some() {
                    tracing::info!(peer = %origin.name, "federation: peer synced again; no longer stale");
                }
                continue;
            }
            let restored = self.restored.remove(&origin.name);
            let since = *self.stale_since.entry(Arc::clone(&origin.name)).or_insert_with(|| {
                match restored {
                    Some(since) => tracing::warn!(peer = %origin.name, grace = ?grace, stale_for = ?now.saturating_duration_since(since), "federation: peer restored from the peer-state snapshot and not synced; serving its last state, stale since before the restart"),
                    None => tracing::warn!(peer = %origin.name, grace = ?grace, "federation: peer not synced; keeping its last state, marked stale"),
                }
                restored.unwrap_or(now)
            });
            // A reconnecting client recreates an empty origin; nothing to withdraw there.
            let holds_state = !origin.view.snapshot().is_empty();
            if let Some(g) = grace
                && holds_state
                && now.saturating_duration_since(since) >= g
            {
                tracing::warn!(peer = %origin.name, grace = ?g, "federation: peer stale past its grace period; withdrawing its state");
                metrics::counter!("peerd_federation_withdrawals_total", "peer_cluster" => origin.name.to_string())
                    .increment(1);
                store.remove(&origin.name);
                self.stale_since.remove(&origin.name);
                withdrawn.push(Arc::clone(&origin.name));
            }
        }
        withdrawn
    }

    /// How long an origin has been stale (`None` = not stale). A restored origin is stale
    /// since the recorded time from the start, before its first sweep.
    pub fn stale_for(&self, origin: &str, now: Instant) -> Option<Duration> {
        self.stale_since
            .get(origin)
            .or_else(|| self.restored.get(origin))
            .map(|since| now.saturating_duration_since(*since))
    }
}
