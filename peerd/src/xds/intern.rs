//! One shared copy of each string that repeats across resources: namespaces, networks,
//! cluster ids, trust domains, service accounts and service keys of workload summaries.
//!
//! Why: 100k workloads carry a handful of distinct values in each of those fields. As
//! `String`s they cost an allocation each, about 25 MB at that size (measured with a
//! counting allocator over the simulator's population); shared, they cost one per value.
//!
//! It owns only the table and must never grow without bound: at [`MAX_ENTRIES`] it drops
//! the values no summary holds any more, and past that it hands out unshared copies
//! (pruning again only after [`PRUNE_EVERY`] such calls, so a full table of live values
//! costs no scan per call).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Distinct values kept. Far above what a mesh has (namespaces × service accounts are
/// the largest set), so the bound only matters for pathological input.
const MAX_ENTRIES: usize = 65_536;
/// Longer values are not shared: they are rare, and sharing them would make the table's
/// memory bound large.
const MAX_LEN: usize = 256;

/// Calls answered with an unshared copy between two prunes of a full table.
const PRUNE_EVERY: usize = MAX_ENTRIES / 4;

#[derive(Default)]
struct Table {
    values: HashSet<Arc<str>, foldhash::fast::RandomState>,
    /// Unshared copies handed out since the last prune.
    unshared: usize,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// The shared copy of `s`.
pub fn intern(s: &str) -> Arc<str> {
    if s.is_empty() || s.len() > MAX_LEN {
        return Arc::from(s);
    }
    // A poisoned lock only means another thread panicked mid-insert; the set is intact.
    let mut guard = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let table = guard.get_or_insert_with(Table::default);
    if let Some(shared) = table.values.get(s) {
        return Arc::clone(shared);
    }
    if table.values.len() >= MAX_ENTRIES {
        if table.unshared.is_multiple_of(PRUNE_EVERY) {
            table.values.retain(|v| Arc::strong_count(v) > 1);
        }
        if table.values.len() >= MAX_ENTRIES {
            table.unshared += 1;
            return Arc::from(s);
        }
        table.unshared = 0;
    }
    let shared: Arc<str> = Arc::from(s);
    table.values.insert(Arc::clone(&shared));
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy() {
        let a = intern("ns-intern-test");
        let b = intern(&String::from("ns-intern-test"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "ns-intern-test");
        assert!(
            !Arc::ptr_eq(&intern(""), &intern("")),
            "empty values are not kept"
        );
        let long = "x".repeat(MAX_LEN + 1);
        assert!(!Arc::ptr_eq(&intern(&long), &intern(&long)));
    }

    #[test]
    fn the_table_stays_bounded_and_drops_unused_values() {
        let held: Vec<Arc<str>> = (0..10).map(|i| intern(&format!("held-{i}"))).collect();
        for i in 0..MAX_ENTRIES + 10 {
            drop(intern(&format!("transient-{i}")));
        }
        let len = TABLE.lock().unwrap().as_ref().map_or(0, |t| t.values.len());
        assert!(len <= MAX_ENTRIES, "{len}");
        // Values still held by someone survive a prune and stay shared.
        for (i, h) in held.iter().enumerate() {
            assert!(Arc::ptr_eq(h, &intern(&format!("held-{i}"))));
        }
    }
}
