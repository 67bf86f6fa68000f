//! [`HalfEmptyMap`]: a hash map kept at most half full, for maps whose keys churn.
//!
//! Why: a table more than half full whose entries churn (one name removed, another
//! added, as with every pod restart) doubles once the tombstones its removals leave use
//! up its free room, however many entries it holds; at most half full, it clears them by
//! rehashing in place instead. Under the soak's churn peerd's per-workload maps (the
//! merge's claims, each xDS connection's record of what its client holds) doubled minutes
//! after the first sync, among the largest growths of the live heap (heaptrack). Sized
//! this way from the start, what such a map holds after a sync is what it holds under
//! churn.
//!
//! It owns only the sizing. Reads go to the inner map through `Deref`; every write that
//! can add an entry goes through a method here, so the map never passes half full.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hash};
use std::ops::Deref;

/// One entry per served workload: foldhash rather than SipHash (keys come from
/// authenticated clients and views, and the seed is random per map).
pub type FastHasher = foldhash::fast::RandomState;

/// A hash map never more than half full (see the module doc).
pub struct HalfEmptyMap<K, V, S = FastHasher> {
    map: HashMap<K, V, S>,
    /// Entries it holds before it grows: half the room it had when it last grew (the
    /// map's own capacity shrinks with tombstones, so it cannot tell this).
    half: usize,
}

impl<K, V, S: Default> Default for HalfEmptyMap<K, V, S> {
    fn default() -> Self {
        HalfEmptyMap {
            map: HashMap::default(),
            half: 0,
        }
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug, S> std::fmt::Debug for HalfEmptyMap<K, V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.map.fmt(f)
    }
}

impl<K, V, S> Deref for HalfEmptyMap<K, V, S> {
    type Target = HashMap<K, V, S>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<K: Eq + Hash, V, S: BuildHasher> HalfEmptyMap<K, V, S> {
    /// Grows, if needed, to hold `entries` at most half full.
    pub fn size_for(&mut self, entries: usize) {
        if entries > self.half {
            self.map
                .reserve((2 * entries).saturating_sub(self.map.len()));
            self.half = self.map.capacity() / 2;
        }
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.size_for(self.map.len() + 1);
        self.map.insert(key, value)
    }

    pub fn entry(&mut self, key: K) -> Entry<'_, K, V> {
        self.size_for(self.map.len() + 1);
        self.map.entry(key)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.map.get_mut(key)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.map.remove(key)
    }

    pub fn retain(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        self.map.retain(keep);
    }

    /// Empties the map and keeps its room (a cleared table holds no tombstones).
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

impl<K: Eq + Hash, V, S: BuildHasher + Default> FromIterator<(K, V)> for HalfEmptyMap<K, V, S> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let entries = entries.into_iter();
        let mut map = HalfEmptyMap::default();
        map.size_for(entries.size_hint().0);
        for (k, v) in entries {
            map.insert(k, v);
        }
        map
    }
}

/// A hash set never more than half full: a [`HalfEmptyMap`] without values.
pub struct HalfEmptySet<K, S = FastHasher>(HalfEmptyMap<K, (), S>);

impl<K, S: Default> Default for HalfEmptySet<K, S> {
    fn default() -> Self {
        HalfEmptySet(HalfEmptyMap::default())
    }
}

impl<K: Eq + Hash, S: BuildHasher> HalfEmptySet<K, S> {
    /// Whether `key` was new.
    pub fn insert(&mut self, key: K) -> bool {
        self.0.insert(key, ()).is_none()
    }

    /// Whether `key` was there.
    pub fn remove<Q>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.0.remove(key).is_some()
    }

    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.0.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.0.keys()
    }

    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRIES: u64 = 6_000;

    /// Pod restarts: each round removes one entry and adds another under a new key;
    /// returns the largest capacity seen.
    fn churn(
        mut remove: impl FnMut(u64),
        mut insert: impl FnMut(u64),
        mut capacity: impl FnMut() -> usize,
    ) -> usize {
        let mut most = 0;
        for i in 0..20 * ENTRIES {
            remove(i);
            insert(i + ENTRIES);
            most = most.max(capacity());
        }
        most
    }

    #[test]
    fn a_plain_map_sized_for_its_entries_doubles_under_churn() {
        // The phenomenon this type exists for: if std's map stops doing this, the type
        // can go.
        let mut plain: HashMap<u64, u64, FastHasher> = HashMap::default();
        plain.reserve(ENTRIES as usize);
        let sized = plain.capacity();
        plain.extend((0..ENTRIES).map(|k| (k, k)));
        let plain = std::cell::RefCell::new(plain);
        let most = churn(
            |k| {
                plain.borrow_mut().remove(&k);
            },
            |k| {
                plain.borrow_mut().insert(k, k);
            },
            || plain.borrow().capacity(),
        );
        assert!(most > sized, "the phenomenon: {most} <= {sized}");
    }

    #[test]
    fn a_half_empty_map_keeps_its_size_under_churn_and_still_grows_for_more_entries() {
        let mut half: HalfEmptyMap<u64, u64> = HalfEmptyMap::default();
        half.size_for(ENTRIES as usize);
        let sized = half.capacity();
        assert!(sized >= 2 * ENTRIES as usize);
        for k in 0..ENTRIES {
            half.insert(k, k);
        }
        let half = std::cell::RefCell::new(half);
        let most = churn(
            |k| {
                half.borrow_mut().remove(&k);
            },
            |k| {
                half.borrow_mut().insert(k, k);
            },
            || half.borrow().capacity(),
        );
        assert_eq!(most, sized, "no growth under churn");
        assert_eq!(half.borrow().len(), ENTRIES as usize);
        // Genuine growth still grows it, and keeps it at most half full.
        let mut half = half.into_inner();
        for k in 100 * ENTRIES..102 * ENTRIES {
            half.insert(k, k);
        }
        assert_eq!(half.len(), 3 * ENTRIES as usize);
        assert!(half.capacity() >= 2 * half.len());
    }

    #[test]
    fn a_collected_map_starts_half_empty_and_keeps_its_size_under_churn() {
        // What an xDS connection does with a client's initial versions, then with the
        // responses it sends.
        let collected: HalfEmptyMap<u64, u64> = (0..ENTRIES).map(|k| (k, k)).collect();
        assert_eq!(collected.len(), ENTRIES as usize);
        let sized = collected.capacity();
        assert!(sized >= 2 * ENTRIES as usize);
        let collected = std::cell::RefCell::new(collected);
        let most = churn(
            |k| {
                collected.borrow_mut().remove(&k);
            },
            |k| {
                collected.borrow_mut().insert(k, k);
            },
            || collected.borrow().capacity(),
        );
        assert_eq!(most, sized, "no growth under churn");
    }

    #[test]
    fn entry_and_retain_keep_the_map_consistent() {
        let mut map: HalfEmptyMap<u64, Vec<u64>> = HalfEmptyMap::default();
        for k in 0..100 {
            map.entry(k % 10).or_default().push(k);
        }
        assert_eq!(map.len(), 10);
        assert!(map.capacity() >= 2 * map.len());
        assert_eq!(map.get(&3).map(Vec::len), Some(10));
        map.retain(|k, _| k % 2 == 0);
        assert_eq!(map.len(), 5);
        assert!(map.get(&3).is_none());
        map.get_mut(&4).expect("kept").clear();
        assert_eq!(map.remove(&4), Some(Vec::new()));
        assert_eq!(map.len(), 4);
        let room = map.capacity();
        map.clear();
        assert!(map.is_empty());
        assert_eq!(map.capacity(), room, "a cleared map keeps its room");
    }

    #[test]
    fn a_half_empty_set_keeps_its_size_under_churn() {
        let mut set: HalfEmptySet<u64> = HalfEmptySet::default();
        for k in 0..ENTRIES {
            assert!(set.insert(k));
        }
        assert!(!set.insert(0), "already there");
        let sized = set.capacity();
        assert!(sized >= 2 * set.len());
        let set = std::cell::RefCell::new(set);
        let most = churn(
            |k| assert!(set.borrow_mut().remove(&k)),
            |k| assert!(set.borrow_mut().insert(k)),
            || set.borrow().capacity(),
        );
        assert_eq!(most, sized, "no growth under churn");
        let set = set.into_inner();
        assert_eq!(set.len(), ENTRIES as usize);
        assert!(set.contains(&(20 * ENTRIES)) && !set.contains(&0));
        assert_eq!(set.iter().count(), ENTRIES as usize);
    }
}
