//! The responses of one type that a downstream has not processed yet, kept so that every
//! ACK and NACK it sends is attributed to what it answers: the view version the client
//! reached, and for a NACK the names to forget so they are resent.
//!
//! A client processes responses in order, so an ACK or NACK of nonce `n` settles every
//! response up to `n`. Nothing is dropped: when too many responses are unprocessed, the
//! oldest are folded into one record covering a nonce range (their names merged), so a
//! late ACK or NACK of any of them is still attributed. It must never grow with the
//! number of responses a client leaves unanswered (bound on [`Ledger`]).

use std::collections::VecDeque;
use std::sync::Arc;

use super::{FastMap, FastSet};
use crate::xds::server::nacked_names;

/// Responses kept one by one; older ones are folded. A client that ACKs as it goes
/// (ztunnel) has a handful outstanding; hundreds happen when a large first response
/// is processed while pushes queue behind it.
const MAX_RECENT: usize = 256;
/// Names tracked beyond what the client holds, before folding or pruning (see [`Ledger`]).
const SLACK_NAMES: usize = 4096;

/// One response sent and not processed yet.
struct Sent {
    nonce: u64,
    /// View version the client's state equals once it has processed this response.
    view_version: u64,
    /// Names sent (upserted) in it.
    names: Vec<Arc<str>>,
}

/// Older responses merged into one record: every nonce in `first..=last` sent for this
/// type and not processed yet.
struct Folded {
    first: u64,
    last: u64,
    /// View version after the oldest folded response: what an ACK inside the range
    /// proves at least (the exact version of each folded response is not kept).
    floor_version: u64,
    /// View version after the newest folded response.
    view_version: u64,
    /// Names sent in the folded responses, each once, pruned to the names the client
    /// holds (a name it no longer holds has nothing to forget).
    names: FastSet<Arc<str>>,
}

/// What an ACK or NACK settled.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Settled {
    /// The client's state equals at least this view version now.
    pub view_version: u64,
    /// For a NACK: the names to forget (the named ones the response carried, or all it
    /// carried when it names none of them), so the next change or resync resends them.
    pub rejected: Vec<Arc<str>>,
}

/// Unprocessed responses of one type, oldest first.
///
/// Memory bound, whatever the client ACKs: at most [`MAX_RECENT`] responses are kept
/// one by one, and only while their names together stay under twice the names the
/// client holds plus [`SLACK_NAMES`] (older ones are folded first); the folded record
/// holds each name once and is pruned to the held names whenever it passes the same
/// limit. So a client that never ACKs costs at most about 4 × its state in name
/// pointers (shared `Arc<str>`s, no copies) plus the newest response, not a record per
/// response.
#[derive(Default)]
pub(super) struct Ledger {
    folded: Option<Folded>,
    recent: VecDeque<Sent>,
    /// Names in `recent`, summed.
    recent_names: usize,
}

impl Ledger {
    /// Records a response just sent. `held` is what the client holds after it.
    pub fn push(
        &mut self,
        nonce: u64,
        view_version: u64,
        names: Vec<Arc<str>>,
        held: &FastMap<Arc<str>, Arc<str>>,
    ) {
        self.recent_names += names.len();
        self.recent.push_back(Sent {
            nonce,
            view_version,
            names,
        });
        let limit = 2 * held.len() + SLACK_NAMES;
        while self.recent.len() > MAX_RECENT || (self.recent.len() > 1 && self.recent_names > limit)
        {
            self.fold_oldest(held, limit);
        }
    }

    fn fold_oldest(&mut self, held: &FastMap<Arc<str>, Arc<str>>, limit: usize) {
        let Some(oldest) = self.recent.pop_front() else {
            return;
        };
        self.recent_names -= oldest.names.len();
        let folded = self.folded.get_or_insert_with(|| Folded {
            first: oldest.nonce,
            last: oldest.nonce,
            floor_version: oldest.view_version,
            view_version: oldest.view_version,
            names: FastSet::default(),
        });
        folded.last = oldest.nonce;
        folded.view_version = oldest.view_version;
        folded.names.extend(oldest.names);
        if folded.names.len() > limit {
            folded.names.retain(|n| held.contains_key(n));
        }
    }

    /// The view version the client reaches once it has processed everything sent.
    pub fn newest_version(&self) -> Option<u64> {
        match self.recent.back() {
            Some(s) => Some(s.view_version),
            None => self.folded.as_ref().map(|f| f.view_version),
        }
    }

    /// Nothing was sent for a newer view version: once the client has processed what is
    /// in flight it is current as of `version`. False when nothing is in flight.
    pub fn advance_newest(&mut self, version: u64) -> bool {
        if let Some(s) = self.recent.back_mut() {
            s.view_version = version;
            return true;
        }
        if let Some(f) = &mut self.folded {
            f.view_version = version;
            return true;
        }
        false
    }

    /// Settles every response up to `nonce` (ACKed, or NACKed with `nack`). `None` when
    /// `nonce` was never sent for this type or was already settled.
    pub fn settle(&mut self, nonce: u64, nack: Option<&str>) -> Option<Settled> {
        let newest = self
            .recent
            .back()
            .map(|s| s.nonce)
            .or(self.folded.as_ref().map(|f| f.last));
        if newest.is_none_or(|n| nonce > n) {
            return None;
        }
        if let Some(f) = &mut self.folded {
            if nonce < f.first {
                return None;
            }
            if nonce > f.last {
                // Processed in order: everything folded is done.
                self.folded = None;
                return self.settle_recent(nonce, nack);
            }
            let settled = Settled {
                view_version: if nonce == f.last {
                    f.view_version
                } else {
                    f.floor_version
                },
                rejected: nack.map(|m| rejected_in(m, &f.names)).unwrap_or_default(),
            };
            if nonce == f.last {
                self.folded = None;
            } else {
                // Later folded responses are still in flight; their names stay.
                f.first = nonce + 1;
            }
            return Some(settled);
        }
        self.settle_recent(nonce, nack)
    }

    fn settle_recent(&mut self, nonce: u64, nack: Option<&str>) -> Option<Settled> {
        // Responses before `nonce` were processed too (in order), their answers lost.
        while self.recent.front().is_some_and(|s| s.nonce < nonce) {
            self.pop_recent();
        }
        if self.recent.front().is_none_or(|s| s.nonce != nonce) {
            return None;
        }
        let done = self.pop_recent()?;
        let rejected = match nack {
            Some(message) => {
                let named = nacked_names(message);
                let in_response: Vec<Arc<str>> = done
                    .names
                    .iter()
                    .filter(|n| named.contains(&***n))
                    .cloned()
                    .collect();
                // A NACK that names nothing we sent rejects the whole response.
                if in_response.is_empty() {
                    done.names
                } else {
                    in_response
                }
            }
            None => Vec::new(),
        };
        Some(Settled {
            view_version: done.view_version,
            rejected,
        })
    }

    fn pop_recent(&mut self) -> Option<Sent> {
        let s = self.recent.pop_front()?;
        self.recent_names -= s.names.len();
        Some(s)
    }

    /// Responses (folded or not) not processed yet.
    #[cfg(test)]
    fn in_flight(&self) -> u64 {
        self.folded.as_ref().map_or(0, |f| f.last - f.first + 1) + self.recent.len() as u64
    }
}

/// The names of a folded record that a NACK `message` rejects: those it names, or all
/// of them when it names none.
fn rejected_in(message: &str, names: &FastSet<Arc<str>>) -> Vec<Arc<str>> {
    let named: Vec<Arc<str>> = nacked_names(message)
        .into_iter()
        .filter_map(|n| names.get(n).cloned())
        .collect();
    if named.is_empty() {
        names.iter().cloned().collect()
    } else {
        named
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prefix: &str, n: usize) -> Vec<Arc<str>> {
        (0..n).map(|i| Arc::from(format!("{prefix}{i}"))).collect()
    }

    fn held(names: &[Arc<str>]) -> FastMap<Arc<str>, Arc<str>> {
        names
            .iter()
            .map(|n| (Arc::clone(n), Arc::from("v")))
            .collect()
    }

    #[test]
    fn every_ack_of_a_long_backlog_is_attributed_in_order() {
        let first = names("u/", 1000);
        let holding = held(&first);
        let mut ledger = Ledger::default();
        ledger.push(1, 10, first, &holding);
        for nonce in 2..=600 {
            ledger.push(nonce, 10 + nonce, vec![Arc::from("u/1")], &holding);
        }
        assert_eq!(ledger.in_flight(), 600);
        assert!(ledger.recent.len() <= MAX_RECENT, "older responses folded");
        // The first response's ACK is attributed (the folded floor: its own version).
        let s = ledger.settle(1, None).unwrap();
        assert_eq!(s.view_version, 10);
        assert!(s.rejected.is_empty());
        // Each later one too, each version at least as new as the previous.
        let mut last = 10;
        for nonce in 2..=600 {
            let s = ledger
                .settle(nonce, None)
                .unwrap_or_else(|| panic!("ACK of {nonce} not attributed"));
            assert!(s.view_version >= last);
            last = s.view_version;
        }
        assert_eq!(last, 610, "the last ACK proves the newest version");
        assert_eq!(ledger.in_flight(), 0);
        assert!(ledger.settle(600, None).is_none(), "already settled");
        assert!(ledger.settle(601, None).is_none(), "never sent");
    }

    #[test]
    fn a_nack_of_a_folded_response_rejects_the_names_it_carried() {
        let first = names("u/", 100);
        let holding = held(&first);
        let mut ledger = Ledger::default();
        ledger.push(1, 1, first, &holding);
        for nonce in 2..=400 {
            ledger.push(nonce, nonce, vec![Arc::from("u/7")], &holding);
        }
        let s = ledger
            .settle(1, Some("u/3: bad; not/sent: bad too"))
            .unwrap();
        assert_eq!(s.rejected, vec![Arc::<str>::from("u/3")]);
        // A NACK naming nothing that was sent rejects everything the record carried.
        let s = ledger.settle(2, Some("whole response rejected")).unwrap();
        assert_eq!(s.rejected.len(), 100);
        // The newest (not folded) is attributed exactly.
        let s = ledger.settle(400, Some("u/7: bad")).unwrap();
        assert_eq!(s.view_version, 400);
        assert_eq!(s.rejected, vec![Arc::<str>::from("u/7")]);
    }

    #[test]
    fn tracked_names_stay_bounded_by_what_the_client_holds() {
        let state = names("u/", 100);
        let holding = held(&state);
        let mut ledger = Ledger::default();
        // A client that never ACKs while every push carries new names it then drops.
        for nonce in 1..=5000u64 {
            ledger.push(nonce, nonce, names(&format!("churn{nonce}/"), 10), &holding);
            let limit = 2 * holding.len() + SLACK_NAMES;
            assert!(ledger.recent.len() <= MAX_RECENT);
            assert!(ledger.recent_names <= limit + 10);
            assert!(
                ledger
                    .folded
                    .as_ref()
                    .is_none_or(|f| f.names.len() <= limit)
            );
        }
        assert_eq!(ledger.in_flight(), 5000);
        assert_eq!(ledger.settle(5000, None).unwrap().view_version, 5000);
        assert_eq!(ledger.in_flight(), 0);
    }
}
