//! The recent history of the events `Watch` streams (condition transitions, syncs,
//! NACKs), kept so a support bundle taken after the fact still shows what happened.
//!
//! Owns a bounded ring of `peerd.debug.v1.Event`s fed by one recorder task. It must never
//! grow past [`EVENT_HISTORY`] entries and never hold its lock across an await.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::proto::debug::v1 as api;

/// Events kept; older ones are dropped (and counted).
pub const EVENT_HISTORY: usize = 512;

/// A bounded, oldest-first history of events.
#[derive(Debug, Default)]
pub struct EventLog {
    inner: Mutex<History>,
}

#[derive(Debug, Default)]
struct History {
    events: VecDeque<api::Event>,
    dropped: u64,
}

impl EventLog {
    pub fn new() -> EventLog {
        EventLog::default()
    }

    /// Appends `event`, dropping the oldest one when full.
    pub fn record(&self, event: api::Event) {
        let mut h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if h.events.len() >= EVENT_HISTORY {
            h.events.pop_front();
            h.dropped += 1;
        }
        h.events.push_back(event);
    }

    /// The kept events, oldest first, and how many were dropped before them.
    pub fn snapshot(&self) -> api::ListEventsResponse {
        let h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        api::ListEventsResponse {
            events: h.events.iter().cloned().collect(),
            dropped: h.dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_events_in_order_and_counts_the_dropped() {
        let log = EventLog::new();
        let total = EVENT_HISTORY + 3;
        for i in 0..total {
            log.record(api::Event {
                message: format!("e{i}"),
                ..api::Event::default()
            });
        }
        let snap = log.snapshot();
        assert_eq!(snap.events.len(), EVENT_HISTORY);
        assert_eq!(snap.dropped, 3);
        assert_eq!(snap.events[0].message, "e3");
        assert_eq!(
            snap.events.last().map(|e| e.message.as_str()),
            Some(format!("e{}", total - 1).as_str())
        );
    }
}
