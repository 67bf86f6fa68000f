//! The global memory budget for stored upstream state: one limit for what every origin's
//! store view holds together, so several large peers degrade (their growth is NACKed)
//! instead of pushing peerd past its container memory limit.
//!
//! Owns: the cost estimate of a stored resource ([`stored_cost`]), the ledger of what the
//! store holds plus what was admitted but not applied yet, the admission decision for a
//! peer's resource, and the record of refusals per peer (for the `PeeringSucceeded`
//! condition). Peers only: the local cluster's state is never refused (ztunnel needs its
//! own cluster first); it counts toward the budget, so peers get what it leaves.
//!
//! Must never refuse an update that does not grow the stored state (same or smaller
//! bytes, removals), never drop anything already stored, and never hold its lock across
//! anything but the store's own view write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::xds::resource::Resource;
use crate::xds::types::ResourceType;

/// Estimated memory a stored resource costs beyond its body and name: the `Resource`
/// and its decoded summary, the persistent-map entries of the origin's view and of the
/// merged view sharing it, and its address-index entries. An estimate, deliberately on
/// the high side of what a typical workload needs.
pub const RESOURCE_OVERHEAD_BYTES: usize = 512;

/// What storing `resource` costs, as the budget counts it.
pub fn stored_cost(resource: &Resource) -> usize {
    resource.body.len() + resource.name.len() + RESOURCE_OVERHEAD_BYTES
}

/// A peer's resource refused because storing it would exceed the budget. `Display` is
/// the NACK reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "memory budget exceeded: storing it needs {growth} more bytes but stored upstream state already uses {used} of the {budget}-byte budget (memoryBudgetBytes); the peer's stored state is kept, its growth refused"
)]
pub struct BudgetExceeded {
    pub budget: usize,
    pub used: usize,
    pub growth: usize,
}

/// The refusals of one response type of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: ResourceType,
    /// Resources refused in the peer's latest response of `kind`.
    pub resources: u64,
    /// The last refusal (budget and usage at that time).
    pub last: BudgetExceeded,
}

impl Refusal {
    /// The condition message (a person acts on it).
    pub fn message(&self) -> String {
        format!(
            "memory budget exceeded: {} {} resource(s) of the peer's latest response were refused (stored upstream state {} of {} bytes); the rest of its state is kept; raise memoryBudgetBytes (the chart derives it from the memory limit) or reduce what the peer exports",
            self.resources,
            self.kind.short_name(),
            self.last.used,
            self.last.budget
        )
    }
}

#[derive(Default)]
struct PeerRefusals {
    /// Refused in the response being applied now.
    in_response: Option<(u64, BudgetExceeded)>,
    /// Per type, the refusals of the latest completed response (None: it was stored whole).
    latest: [Option<(u64, BudgetExceeded)>; 2],
}

#[derive(Default)]
struct Ledger {
    /// Bytes the store's origin views hold ([`stored_cost`] summed), per origin.
    stored: HashMap<Arc<str>, usize>,
    stored_total: usize,
    /// Growth admitted for an origin since its last store write: accepted resources of
    /// the response being applied, not in its view yet.
    pending: HashMap<Arc<str>, usize>,
    refusals: HashMap<Arc<str>, PeerRefusals>,
}

/// The budget and its ledger; one per store.
pub struct MemoryBudget {
    limit: AtomicUsize,
    ledger: Mutex<Ledger>,
}

impl MemoryBudget {
    /// `limit` bytes for all origins together; `usize::MAX` = unlimited.
    pub fn new(limit: usize) -> MemoryBudget {
        let budget = MemoryBudget {
            limit: AtomicUsize::new(usize::MAX),
            ledger: Mutex::new(Ledger::default()),
        };
        budget.set_limit(limit);
        budget
    }

    pub fn unlimited() -> MemoryBudget {
        MemoryBudget::new(usize::MAX)
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the budget (a configuration reload). Lowering it below what is stored
    /// drops nothing: it only refuses growth from then on.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
        if limit != usize::MAX {
            metrics::gauge!("peerd_upstream_memory_budget_bytes").set(limit as f64);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stored bytes, all origins.
    pub fn stored_bytes(&self) -> usize {
        self.lock().stored_total
    }

    /// Stored bytes of one origin.
    pub fn stored_bytes_of(&self, origin: &str) -> usize {
        self.lock().stored.get(origin).copied().unwrap_or(0)
    }

    /// Admits a peer's resource that replaces `old_cost` stored bytes (0 for a new name)
    /// with `new_cost`: Ok when it does not grow the state or the growth fits.
    pub fn admit(
        &self,
        origin: &str,
        old_cost: usize,
        new_cost: usize,
    ) -> Result<(), BudgetExceeded> {
        let limit = self.limit();
        if limit == usize::MAX || new_cost <= old_cost {
            return Ok(());
        }
        let growth = new_cost - old_cost;
        let mut ledger = self.lock();
        let used = ledger.stored_total + ledger.pending.values().sum::<usize>();
        if used.saturating_add(growth) > limit {
            let refused = BudgetExceeded {
                budget: limit,
                used,
                growth,
            };
            let entry = ledger
                .refusals
                .entry(Arc::from(origin))
                .or_default()
                .in_response
                .get_or_insert((0, refused.clone()));
            entry.0 += 1;
            entry.1 = refused.clone();
            metrics::counter!("peerd_upstream_budget_rejections_total", "peer_cluster" => origin.to_string())
                .increment(1);
            return Err(refused);
        }
        match ledger.pending.get_mut(origin) {
            Some(p) => *p += growth,
            None => {
                ledger.pending.insert(Arc::from(origin), growth);
            }
        }
        Ok(())
    }

    /// Runs the store's write of `origin`'s view under the ledger lock (`write` returns the
    /// view's stored bytes after the write): admitted growth then moves from pending to
    /// stored in one step, so no admission sees it twice or not at all.
    pub(crate) fn record_write<T>(
        &self,
        origin: &Arc<str>,
        write: impl FnOnce() -> (T, usize),
    ) -> T {
        let mut ledger = self.lock();
        let (out, bytes) = write();
        ledger.pending.remove(origin);
        let old = ledger.stored.insert(Arc::clone(origin), bytes).unwrap_or(0);
        ledger.stored_total = ledger.stored_total - old + bytes;
        metrics::gauge!("peerd_upstream_stored_bytes", "peer_cluster" => origin.to_string())
            .set(bytes as f64);
        out
    }

    /// Forgets an origin dropped from the store.
    pub(crate) fn forget(&self, origin: &str) {
        let mut ledger = self.lock();
        ledger.pending.remove(origin);
        ledger.refusals.remove(origin);
        if let Some(old) = ledger.stored.remove(origin) {
            ledger.stored_total -= old;
        }
        metrics::gauge!("peerd_upstream_stored_bytes", "peer_cluster" => origin.to_string())
            .set(0.0);
    }

    /// Closes a response of `kind` from `origin`: its refusals (if any) become the peer's
    /// latest for that type, replacing the previous response's.
    pub fn finish_response(&self, origin: &str, kind: ResourceType) {
        let mut ledger = self.lock();
        let Some(peer) = ledger.refusals.get_mut(origin) else {
            return;
        };
        peer.latest[kind.index()] = peer.in_response.take();
        if peer.latest.iter().all(Option::is_none) {
            ledger.refusals.remove(origin);
        }
    }

    /// The refusals of a peer's latest responses, Address first; empty when its latest
    /// responses of every type were stored whole.
    pub fn refusals(&self, origin: &str) -> Vec<Refusal> {
        let ledger = self.lock();
        let Some(peer) = ledger.refusals.get(origin) else {
            return Vec::new();
        };
        ResourceType::ALL
            .iter()
            .filter_map(|kind| {
                peer.latest[kind.index()]
                    .as_ref()
                    .map(|(resources, last)| Refusal {
                        kind: *kind,
                        resources: *resources,
                        last: last.clone(),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(budget: &MemoryBudget, origin: &str, bytes: usize) {
        budget.record_write(&Arc::from(origin), || ((), bytes));
    }

    #[test]
    fn growth_past_the_budget_is_refused_and_shrinking_never_is() {
        let budget = MemoryBudget::new(1000);
        write(&budget, "local", 600);
        budget.admit("c2", 0, 300).unwrap();
        // Pending growth counts until the store write lands.
        let refused = budget.admit("c2", 0, 200).unwrap_err();
        assert_eq!(
            refused,
            BudgetExceeded {
                budget: 1000,
                used: 900,
                growth: 200
            }
        );
        assert!(refused.to_string().contains("900 of the 1000-byte budget"));
        // Same size or smaller: always admitted.
        budget.admit("c2", 500, 500).unwrap();
        budget.admit("c2", 500, 10).unwrap();
        write(&budget, "c2", 300);
        assert_eq!(budget.stored_bytes(), 900);
        budget.finish_response("c2", ResourceType::Address);
        let refusals = budget.refusals("c2");
        assert_eq!(refusals.len(), 1);
        assert_eq!(refusals[0].resources, 1);
        assert!(refusals[0].message().contains("900 of 1000 bytes"));
        // The next response stored whole clears it.
        budget.admit("c2", 0, 100).unwrap();
        budget.finish_response("c2", ResourceType::Address);
        assert!(budget.refusals("c2").is_empty());
        budget.forget("c2");
        assert_eq!(budget.stored_bytes(), 600);
    }

    #[test]
    fn unlimited_admits_everything() {
        let budget = MemoryBudget::unlimited();
        budget.admit("c2", 0, usize::MAX / 2).unwrap();
        budget.admit("c2", 0, usize::MAX / 2).unwrap();
    }
}
