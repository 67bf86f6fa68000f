//! peerd's own recent writes of one kind, standing in for a watch that has not delivered
//! them yet.
//!
//! It owns the objects own applies returned and the resourceVersions own deletes removed,
//! each only until the watch shows that version (or its absence) or `settle` passes. It
//! must never keep an entry past either: a pass visits only the names it still manages,
//! so a deleted name that never comes back used to stay in the map for good (the soak
//! found it as steady heap growth under pod churn). [`OwnWrites::forget_settled`] sweeps
//! what no lookup will visit again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Resource;

/// resourceVersion of `obj` as a number (0 when absent or not numeric).
pub fn rv_of<K: Resource>(obj: &K) -> u64 {
    obj.meta()
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// An own apply still stands in for the watch: not delivered yet (`progress`, the
/// highest resourceVersion the watch delivered, is below its version) and not older
/// than `settle` (past that the watch wins).
fn write_pending<K: Resource>(own: &K, at: Instant, progress: u64, settle: Duration) -> bool {
    progress < rv_of(own) && at.elapsed() <= settle
}

/// An own delete (at resourceVersion `rv`) still hides what the watch holds: the watch
/// still shows the object at that version or older (`watched`), within `settle`.
fn delete_pending(rv: u64, at: Instant, watched: Option<u64>, settle: Duration) -> bool {
    at.elapsed() <= settle && watched.is_some_and(|held| held <= rv)
}

/// Own writes of one kind, by object name.
pub struct OwnWrites<K> {
    /// Objects returned by own applies, until the watch shows that version or newer.
    written: HashMap<String, (Arc<K>, Instant)>,
    /// Own deletes: resourceVersion deleted, until the watch drops the object.
    deleted: HashMap<String, (u64, Instant)>,
}

impl<K> Default for OwnWrites<K> {
    fn default() -> Self {
        OwnWrites {
            written: HashMap::new(),
            deleted: HashMap::new(),
        }
    }
}

impl<K: Resource + Clone> OwnWrites<K> {
    /// An apply of `name` returned `obj`.
    pub fn applied(&mut self, name: &str, mut obj: K) {
        // Kept like the watch's copy: without the API server's bookkeeping.
        super::gateways::drop_bookkeeping(&mut obj);
        self.deleted.remove(name);
        self.written
            .insert(name.to_string(), (Arc::new(obj), Instant::now()));
    }

    /// `name` was deleted at resourceVersion `rv` (or was already gone).
    pub fn deleted(&mut self, name: &str, rv: u64) {
        self.written.remove(name);
        self.deleted.insert(name.to_string(), (rv, Instant::now()));
    }

    /// The freshest known state of `name` (None: absent), given what the watch holds
    /// and how far it has delivered (`progress`, the highest resourceVersion seen).
    /// Forgets the entries for `name` that the watch has caught up with.
    pub fn resolve(
        &mut self,
        name: &str,
        from_watch: Option<Arc<K>>,
        progress: u64,
        settle: Duration,
    ) -> Option<Arc<K>> {
        if let Some((own, at)) = self.written.get(name) {
            if write_pending(&**own, *at, progress, settle) {
                return Some(Arc::clone(own));
            }
            self.written.remove(name);
        }
        if let Some((rv, at)) = self.deleted.get(name).copied() {
            if delete_pending(rv, at, from_watch.as_deref().map(rv_of), settle) {
                return None;
            }
            self.deleted.remove(name);
        }
        from_watch
    }

    /// Names written by own applies and not yet confirmed by the watch.
    pub fn written_names(&self) -> impl Iterator<Item = &String> {
        self.written.keys()
    }

    /// Forgets every entry [`Self::resolve`] would forget, whether or not its name is
    /// looked up again. `watch_rv` is the resourceVersion the watch holds for a name.
    pub fn forget_settled(
        &mut self,
        watch_rv: impl Fn(&str) -> Option<u64>,
        progress: u64,
        settle: Duration,
    ) {
        self.written
            .retain(|_, (own, at)| write_pending(&**own, *at, progress, settle));
        self.deleted
            .retain(|name, (rv, at)| delete_pending(*rv, *at, watch_rv(name), settle));
    }

    /// Entries held (written plus deleted).
    pub fn len(&self) -> usize {
        self.written.len() + self.deleted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::types::WorkloadEntry;

    fn entry(name: &str, rv: u64) -> WorkloadEntry {
        let mut we = WorkloadEntry::new(name, Default::default());
        we.metadata.resource_version = Some(rv.to_string());
        we
    }

    fn watched(name: &str, rv: u64) -> Option<Arc<WorkloadEntry>> {
        Some(Arc::new(entry(name, rv)))
    }

    const SETTLE: Duration = Duration::from_secs(30);

    #[test]
    fn deletes_the_watch_has_caught_up_with_are_forgotten_without_a_lookup() {
        // Churn: 1,000 entries deleted by peerd; the watch has dropped all but one.
        let mut own = OwnWrites::<WorkloadEntry>::default();
        for i in 0..1_000u64 {
            own.deleted(&format!("we-{i}"), 10 + i);
        }
        let watch = |name: &str| (name == "we-7").then_some(17);
        own.forget_settled(watch, 2_000, SETTLE);
        assert_eq!(
            own.len(),
            1,
            "only the delete the watch still lags on is kept"
        );
        // And that one still hides the stale object the watch holds.
        assert!(
            own.resolve("we-7", watched("we-7", 17), 2_000, SETTLE)
                .is_none()
        );
        // A newer object under that name (recreated since) is not hidden, and the
        // delete is forgotten.
        assert!(
            own.resolve("we-7", watched("we-7", 5_000), 5_000, SETTLE)
                .is_some()
        );
        assert!(own.is_empty());
    }

    #[test]
    fn writes_stand_in_until_the_watch_delivers_them_then_are_forgotten() {
        let mut own = OwnWrites::<WorkloadEntry>::default();
        own.applied("a", entry("a", 50));
        own.applied("b", entry("b", 60));
        // The watch is at 40: both writes stand in for what it holds (nothing, or older).
        let got = own.resolve("a", watched("a", 30), 40, SETTLE);
        assert_eq!(got.map(|o| rv_of(&*o)), Some(50));
        own.forget_settled(|_| None, 40, SETTLE);
        assert_eq!(own.len(), 2);
        // The watch reaches 55: `a` is delivered, `b` is not yet.
        own.forget_settled(|_| None, 55, SETTLE);
        assert_eq!(own.written_names().collect::<Vec<_>>(), ["b"]);
        // After `settle` even an undelivered write is forgotten (the watch wins).
        own.forget_settled(|_| None, 55, Duration::ZERO);
        assert!(own.is_empty());
        // A delete after an apply replaces it, and an apply after a delete replaces it.
        own.applied("c", entry("c", 70));
        own.deleted("c", 71);
        assert_eq!(own.written_names().count(), 0);
        own.applied("c", entry("c", 72));
        assert_eq!(own.len(), 1);
    }
}
