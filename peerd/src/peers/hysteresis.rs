//! Hysteresis for measured conditions: a pure state machine fed with `Instant`s, so tests
//! are deterministic and never sleep.
//!
//! Rules: a condition turns False only after failures persisted for `failure_window`
//! without a success in between; it turns True after `success_run` consecutive
//! successes; a True condition ignores shorter failures, a False one ignores shorter
//! success runs, so a peer flapping faster than the window leaves the condition where it
//! was. At start the condition is `Unknown`/`Pending`, and during the first-probe grace
//! (until the first success, at most `first_probe_grace` after start) failures keep it
//! `Unknown`/`Pending` — the message names the latest failure, so it is still actionable.
//!
//! Owns: the timing rules only. Must never read clocks or do I/O, and never pick
//! reasons itself beyond `Pending` (the caller classifies failures).

use std::time::{Duration, Instant};

use super::conditions::{ConditionStatus, reason};

/// Timing of the rules above (from `config::Hysteresis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HysteresisConfig {
    pub failure_window: Duration,
    /// Consecutive successes needed to turn True (0 counts as 1).
    pub success_run: u32,
    pub first_probe_grace: Duration,
}

impl From<&crate::config::Hysteresis> for HysteresisConfig {
    fn from(h: &crate::config::Hysteresis) -> Self {
        HysteresisConfig {
            failure_window: h.failure_window,
            success_run: h.success_run,
            first_probe_grace: h.first_probe_grace,
        }
    }
}

impl Default for HysteresisConfig {
    fn default() -> Self {
        use crate::config::defaults;
        HysteresisConfig {
            failure_window: defaults::FAILURE_WINDOW,
            success_run: defaults::SUCCESS_RUN,
            first_probe_grace: defaults::FIRST_PROBE_GRACE,
        }
    }
}

/// One measurement of the condition's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Healthy now; `reason`/`message` are what a True condition shows.
    Healthy { reason: String, message: String },
    /// Failing now, classified.
    Failing { reason: String, message: String },
    /// Nothing new is known (e.g. no probe since the last tick): no effect.
    NoSignal,
}

impl Observation {
    pub fn healthy(reason: &str, message: impl Into<String>) -> Self {
        Observation::Healthy {
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    pub fn failing(reason: &str, message: impl Into<String>) -> Self {
        Observation::Failing {
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// What the condition shows after an observation.
pub use super::conditions::ConditionValue as Verdict;

/// The hysteresis state of one condition of one peer.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    config: HysteresisConfig,
    started: Instant,
    ever_succeeded: bool,
    failing_since: Option<Instant>,
    successes: u32,
    shown: Verdict,
}

impl Hysteresis {
    /// Starts `Unknown`/`Pending` with `pending_message` (e.g. "not connected to peer").
    pub fn new(config: HysteresisConfig, started: Instant, pending_message: &str) -> Self {
        Hysteresis {
            config,
            started,
            ever_succeeded: false,
            failing_since: None,
            successes: 0,
            shown: Verdict {
                status: ConditionStatus::Unknown,
                reason: reason::PENDING.to_string(),
                message: pending_message.to_string(),
            },
        }
    }

    /// Continues from what a condition already shows (the peer's spec changed but the
    /// peer did not): no new grace, no fall back to `Pending`.
    pub fn resume(config: HysteresisConfig, now: Instant, shown: Verdict) -> Self {
        let ever_succeeded = shown.status != ConditionStatus::Unknown;
        Hysteresis {
            config,
            started: now,
            ever_succeeded,
            failing_since: None,
            successes: 0,
            shown,
        }
    }

    pub fn verdict(&self) -> &Verdict {
        &self.shown
    }

    fn in_grace(&self, now: Instant) -> bool {
        !self.ever_succeeded
            && now.saturating_duration_since(self.started) < self.config.first_probe_grace
    }

    /// Feeds one observation taken at `now` and returns what the condition shows.
    pub fn observe(&mut self, now: Instant, observation: Observation) -> &Verdict {
        match observation {
            Observation::NoSignal => {}
            Observation::Healthy { reason, message } => {
                self.failing_since = None;
                self.successes = self.successes.saturating_add(1);
                let run_done = self.successes >= self.config.success_run.max(1);
                if self.shown.status == ConditionStatus::True || run_done {
                    self.ever_succeeded = true;
                    self.shown = Verdict {
                        status: ConditionStatus::True,
                        reason,
                        message,
                    };
                }
            }
            Observation::Failing { reason, message } => {
                self.successes = 0;
                let since = *self.failing_since.get_or_insert(now);
                let persisted = now.saturating_duration_since(since) >= self.config.failure_window;
                match self.shown.status {
                    // Already False: keep showing the current failure class.
                    ConditionStatus::False => {
                        self.shown.reason = reason;
                        self.shown.message = message;
                    }
                    _ if persisted && !self.in_grace(now) => {
                        self.shown = Verdict {
                            status: ConditionStatus::False,
                            reason,
                            message,
                        };
                    }
                    ConditionStatus::Unknown => {
                        // Still pending: say what is happening meanwhile.
                        self.shown.message = format!(
                            "{reason}: {message} (still within the start-up grace or failure window)"
                        );
                    }
                    ConditionStatus::True => {}
                }
            }
        }
        &self.shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(window: u64, run: u32, grace: u64) -> HysteresisConfig {
        HysteresisConfig {
            failure_window: Duration::from_secs(window),
            success_run: run,
            first_probe_grace: Duration::from_secs(grace),
        }
    }

    fn ok() -> Observation {
        Observation::healthy("Connected", "up")
    }

    fn refused() -> Observation {
        Observation::failing("ConnectionRefused", "connection refused by 127.0.0.1:1")
    }

    #[test]
    fn turns_true_after_a_success_run() {
        let t0 = Instant::now();
        let mut h = Hysteresis::new(cfg(10, 3, 0), t0, "not connected to peer");
        assert_eq!(h.verdict().status, ConditionStatus::Unknown);
        assert_eq!(h.verdict().reason, "Pending");
        for i in 1..3 {
            let v = h.observe(t0 + Duration::from_secs(i), ok());
            assert_eq!(v.status, ConditionStatus::Unknown, "after {i} successes");
        }
        let v = h.observe(t0 + Duration::from_secs(3), ok()).clone();
        assert_eq!(
            (v.status, v.reason.as_str()),
            (ConditionStatus::True, "Connected")
        );
    }

    #[test]
    fn an_instant_earlier_than_the_last_one_neither_panics_nor_shortens_the_window() {
        // Callers pass monotonic instants; if one ever comes out of order (a clock jump
        // seen through a test clock), the failure window measures zero, never negative.
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut h = Hysteresis::new(cfg(10, 1, 0), t0, "p");
        h.observe(t0, ok());
        h.observe(t0 + Duration::from_secs(5), refused());
        let v = h.observe(t0 - Duration::from_secs(50), refused()).clone();
        assert_eq!(v.status, ConditionStatus::True, "no jump to False");
        let v = h.observe(t0 + Duration::from_secs(16), refused()).clone();
        assert_eq!(v.status, ConditionStatus::False, "the window still counts");
    }

    #[test]
    fn turns_false_only_after_the_failure_window() {
        let t0 = Instant::now();
        let mut h = Hysteresis::new(cfg(10, 1, 0), t0, "p");
        h.observe(t0, ok());
        for s in 1..11 {
            let v = h.observe(t0 + Duration::from_secs(s), refused());
            assert_eq!(
                v.status,
                ConditionStatus::True,
                "at {s}s (failing for {}s)",
                s - 1
            );
        }
        let v = h.observe(t0 + Duration::from_secs(11), refused()).clone();
        assert_eq!(v.status, ConditionStatus::False);
        assert_eq!(v.reason, "ConnectionRefused");
        assert!(v.message.contains("refused"));
        // A different failure class while False updates the reason at once.
        let v = h
            .observe(
                t0 + Duration::from_secs(12),
                Observation::failing("TLSError", "unknown authority"),
            )
            .clone();
        assert_eq!(
            (v.status, v.reason.as_str()),
            (ConditionStatus::False, "TLSError")
        );
    }

    #[test]
    fn flapping_every_second_does_not_flap_the_condition() {
        let t0 = Instant::now();
        // From True: failures never persist for the window.
        let mut h = Hysteresis::new(cfg(5, 2, 0), t0, "p");
        h.observe(t0, ok());
        h.observe(t0 + Duration::from_secs(1), ok());
        assert_eq!(h.verdict().status, ConditionStatus::True);
        for s in 2..120 {
            let obs = if s % 2 == 0 { refused() } else { ok() };
            let v = h.observe(t0 + Duration::from_secs(s), obs);
            assert_eq!(v.status, ConditionStatus::True, "flipped at {s}s");
        }
        // From False: single successes never make a run of 2.
        let mut h = Hysteresis::new(cfg(5, 2, 0), t0, "p");
        for s in 0..6 {
            h.observe(t0 + Duration::from_secs(s), refused());
        }
        assert_eq!(h.verdict().status, ConditionStatus::False);
        for s in 6..120 {
            let obs = if s % 2 == 0 { ok() } else { refused() };
            let v = h.observe(t0 + Duration::from_secs(s), obs);
            assert_eq!(v.status, ConditionStatus::False, "flipped at {s}s");
        }
    }

    #[test]
    fn first_probe_grace_keeps_pending_until_it_ends() {
        let t0 = Instant::now();
        let mut h = Hysteresis::new(cfg(2, 1, 30), t0, "not connected to peer");
        for s in 0..30 {
            let v = h.observe(t0 + Duration::from_secs(s), refused());
            assert_eq!(v.status, ConditionStatus::Unknown, "at {s}s");
            assert_eq!(v.reason, "Pending");
            assert!(v.message.contains("ConnectionRefused"), "{}", v.message);
        }
        let v = h.observe(t0 + Duration::from_secs(30), refused()).clone();
        assert_eq!(
            (v.status, v.reason.as_str()),
            (ConditionStatus::False, "ConnectionRefused")
        );
    }

    #[test]
    fn grace_ends_at_the_first_success() {
        let t0 = Instant::now();
        let mut h = Hysteresis::new(cfg(2, 1, 300), t0, "p");
        h.observe(t0 + Duration::from_secs(1), ok());
        for s in 2..4 {
            h.observe(t0 + Duration::from_secs(s), refused());
        }
        assert_eq!(h.verdict().status, ConditionStatus::True);
        let v = h.observe(t0 + Duration::from_secs(4), refused());
        assert_eq!(
            v.status,
            ConditionStatus::False,
            "window passed, no grace after a success"
        );
    }

    #[test]
    fn resume_keeps_the_shown_state_without_grace() {
        let t0 = Instant::now();
        let shown = Verdict::new(ConditionStatus::True, "Connected", "up");
        let mut h = Hysteresis::resume(cfg(2, 1, 300), t0, shown.clone());
        assert_eq!(h.verdict(), &shown);
        h.observe(t0, refused());
        assert_eq!(
            h.verdict().status,
            ConditionStatus::True,
            "within the window"
        );
        let v = h.observe(t0 + Duration::from_secs(2), refused());
        assert_eq!(
            v.status,
            ConditionStatus::False,
            "no start-up grace on resume"
        );
    }

    #[test]
    fn no_signal_changes_nothing() {
        let t0 = Instant::now();
        let mut h = Hysteresis::new(cfg(5, 2, 0), t0, "p");
        h.observe(t0, ok());
        h.observe(t0 + Duration::from_secs(1), Observation::NoSignal);
        // The run continues across a tick without signal.
        let v = h.observe(t0 + Duration::from_secs(2), ok());
        assert_eq!(v.status, ConditionStatus::True);
        // A failure started before silence still counts its whole duration.
        h.observe(t0 + Duration::from_secs(3), refused());
        h.observe(t0 + Duration::from_secs(6), Observation::NoSignal);
        let v = h.observe(t0 + Duration::from_secs(8), refused());
        assert_eq!(v.status, ConditionStatus::False);
    }
}
