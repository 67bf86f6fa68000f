//! Fault injection and request counters.
//!
//! Owns the switches tests flip to make the emulated API server misbehave (5xx for the
//! next N requests or a fraction of them, optionally only for some verbs, a delay before every response, dropping every
//! open watch, 410 `Expired` for the next N watch resumes, 409 on the next N writes) and the per-verb request counters tests read to
//! assert, e.g., "zero writes at steady state". It must never change stored objects:
//! faults only affect responses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The API verbs counted separately. `Apply` is a server-side-apply `PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Apply,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Verb::Create
                | Verb::Update
                | Verb::Patch
                | Verb::Apply
                | Verb::Delete
                | Verb::DeleteCollection
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Apply => "apply",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// A snapshot of request counts. Every resource request is counted once it is routed to
/// a resource and verb, including requests then failed by an injected fault.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Count per verb (`"get"`, `"apply"`, …).
    pub by_verb: BTreeMap<String, u64>,
    /// Count per `"<verb> <plural>.<group>"` (core group: `"<verb> <plural>"`).
    pub by_resource: BTreeMap<String, u64>,
    /// Responses per `"<verb> <HTTP status>"`, e.g. `"apply 409"` (injected faults included).
    pub by_outcome: BTreeMap<String, u64>,
    /// Discovery requests (`/version`, `/api…`, `/apis…`).
    pub discovery: u64,
}

impl RequestCounts {
    pub fn verb(&self, verb: Verb) -> u64 {
        self.by_verb.get(verb.as_str()).copied().unwrap_or(0)
    }

    /// create + update + patch + apply + delete + deletecollection.
    pub fn writes(&self) -> u64 {
        [
            Verb::Create,
            Verb::Update,
            Verb::Patch,
            Verb::Apply,
            Verb::Delete,
            Verb::DeleteCollection,
        ]
        .into_iter()
        .map(|v| self.verb(v))
        .sum()
    }

    /// Responses to `verb` with HTTP status `code`.
    pub fn outcome(&self, verb: Verb, code: u16) -> u64 {
        self.by_outcome
            .get(&format!("{} {code}", verb.as_str()))
            .copied()
            .unwrap_or(0)
    }

    /// Write requests answered with a 2xx status.
    pub fn successful_writes(&self) -> u64 {
        self.by_outcome
            .iter()
            .filter(|(key, _)| {
                let mut parts = key.split(' ');
                let verb_is_write = parts.next().is_some_and(|v| {
                    matches!(
                        v,
                        "create" | "update" | "patch" | "apply" | "delete" | "deletecollection"
                    )
                });
                verb_is_write && parts.next().is_some_and(|code| code.starts_with('2'))
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests of `verb` on `plural.group` (or `plural` for the core group).
    pub fn on(&self, verb: Verb, resource: &str) -> u64 {
        self.by_resource
            .get(&format!("{} {resource}", verb.as_str()))
            .copied()
            .unwrap_or(0)
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    counts: Mutex<RequestCounts>,
}

impl Counters {
    pub(crate) fn count(&self, verb: Verb, resource: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.by_verb.entry(verb.as_str().to_string()).or_default() += 1;
        *counts
            .by_resource
            .entry(format!("{} {resource}", verb.as_str()))
            .or_default() += 1;
    }

    pub(crate) fn count_outcome(&self, verb: Verb, code: u16) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts
            .by_outcome
            .entry(format!("{} {code}", verb.as_str()))
            .or_default() += 1;
    }

    pub(crate) fn count_discovery(&self) {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .discovery += 1;
    }

    pub(crate) fn snapshot(&self) -> RequestCounts {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn reset(&self) {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = RequestCounts::default();
    }
}

/// Shared fault switches; cloning gives another handle to the same switches.
#[derive(Clone)]
pub struct FaultControls {
    inner: Arc<FaultState>,
}

struct FaultState {
    fail_next: AtomicU64,
    fail_status: AtomicU16,
    /// Fraction of requests to fail, as parts per million.
    fail_ppm: AtomicU64,
    delay_ms: AtomicU64,
    conflict_next: AtomicU64,
    /// Watches resuming from a resourceVersion still to be answered with 410 Expired.
    expire_next: AtomicU64,
    /// When set, failure faults (fail_next / fail_fraction) only hit these verbs.
    fail_verbs: Mutex<Option<BTreeSet<Verb>>>,
    drop_watches: watch::Sender<u64>,
}

/// The JSON body of `POST /__emulator/faults`; absent fields leave a switch unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultRequest {
    /// Turn every fault off first.
    pub clear: bool,
    /// Fail the next N resource requests.
    pub fail_next: Option<u64>,
    /// HTTP status for injected failures (500–599; default 500).
    pub fail_status: Option<u16>,
    /// Fail this fraction (0.0–1.0) of resource requests.
    pub fail_fraction: Option<f64>,
    /// Restrict failures to these verbs (`"apply"`, `"watch"`, …); empty = all verbs.
    pub fail_verbs: Option<Vec<Verb>>,
    /// Delay every resource response by this many milliseconds.
    pub delay_ms: Option<u64>,
    /// Answer the next N writes with 409 Conflict.
    pub conflict_next: Option<u64>,
    /// Close every open watch now.
    pub drop_watches: bool,
    /// Close every open watch and answer the next N watches that resume from a
    /// resourceVersion with a 410 `Expired` ERROR event (as after an etcd compaction), so
    /// their clients must relist.
    pub expire_watches: Option<u64>,
}

impl Default for FaultControls {
    fn default() -> Self {
        Self {
            inner: Arc::new(FaultState {
                fail_next: AtomicU64::new(0),
                fail_status: AtomicU16::new(500),
                fail_ppm: AtomicU64::new(0),
                delay_ms: AtomicU64::new(0),
                conflict_next: AtomicU64::new(0),
                expire_next: AtomicU64::new(0),
                fail_verbs: Mutex::new(None),
                drop_watches: watch::Sender::new(0),
            }),
        }
    }
}

impl FaultControls {
    /// Fails the next `count` resource requests with HTTP `status` (500–599).
    pub fn fail_next(&self, count: u64, status: u16) {
        self.inner
            .fail_status
            .store(clamp_5xx(status), Ordering::SeqCst);
        self.inner.fail_next.store(count, Ordering::SeqCst);
    }

    /// Fails this fraction (clamped to 0.0–1.0) of resource requests with the fail status.
    pub fn fail_fraction(&self, fraction: f64) {
        let ppm = (fraction.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
        self.inner.fail_ppm.store(ppm, Ordering::SeqCst);
    }

    /// Restricts failure faults to `verbs` (an empty slice: every verb again).
    pub fn fail_only(&self, verbs: &[Verb]) {
        let set = (!verbs.is_empty()).then(|| verbs.iter().copied().collect());
        *self
            .inner
            .fail_verbs
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = set;
    }

    /// Delays every resource response (including the start of a watch) by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.inner.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Answers the next `count` writes (create, update, patch, apply, delete) with 409.
    pub fn conflict_next(&self, count: u64) {
        self.inner.conflict_next.store(count, Ordering::SeqCst);
    }

    /// Closes every watch open right now (new watches are not affected).
    pub fn drop_watches(&self) {
        self.inner.drop_watches.send_modify(|epoch| *epoch += 1);
    }

    /// Closes every open watch and answers the next `count` watches resuming from a
    /// resourceVersion with 410 `Expired` (clients relist, as after a compaction).
    pub fn expire_watches(&self, count: u64) {
        self.inner.expire_next.store(count, Ordering::SeqCst);
        self.drop_watches();
    }

    /// Turns every switch off.
    pub fn clear(&self) {
        self.inner.fail_next.store(0, Ordering::SeqCst);
        self.inner.fail_status.store(500, Ordering::SeqCst);
        self.inner.fail_ppm.store(0, Ordering::SeqCst);
        self.inner.delay_ms.store(0, Ordering::SeqCst);
        self.inner.conflict_next.store(0, Ordering::SeqCst);
        self.inner.expire_next.store(0, Ordering::SeqCst);
        self.fail_only(&[]);
    }

    /// Applies a control-endpoint request.
    pub fn apply_request(&self, request: &FaultRequest) -> Result<(), String> {
        if let Some(status) = request.fail_status
            && !(500..=599).contains(&status)
        {
            return Err(format!("fail_status must be 500–599, got {status}"));
        }
        if let Some(fraction) = request.fail_fraction
            && !(0.0..=1.0).contains(&fraction)
        {
            return Err(format!(
                "fail_fraction must be within 0.0–1.0, got {fraction}"
            ));
        }
        if request.clear {
            self.clear();
        }
        if let Some(status) = request.fail_status {
            self.inner.fail_status.store(status, Ordering::SeqCst);
        }
        if let Some(count) = request.fail_next {
            self.inner.fail_next.store(count, Ordering::SeqCst);
        }
        if let Some(fraction) = request.fail_fraction {
            self.fail_fraction(fraction);
        }
        if let Some(verbs) = &request.fail_verbs {
            self.fail_only(verbs);
        }
        if let Some(ms) = request.delay_ms {
            self.inner.delay_ms.store(ms, Ordering::SeqCst);
        }
        if let Some(count) = request.conflict_next {
            self.conflict_next(count);
        }
        if request.drop_watches {
            self.drop_watches();
        }
        if let Some(count) = request.expire_watches {
            self.expire_watches(count);
        }
        Ok(())
    }

    pub(crate) fn delay(&self) -> Option<Duration> {
        match self.inner.delay_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The status to fail this request with, if a failure fault fires for `verb`.
    pub(crate) fn take_failure(&self, verb: Verb) -> Option<u16> {
        let targeted = self
            .inner
            .fail_verbs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|verbs| verbs.contains(&verb));
        if !targeted {
            return None;
        }
        let status = self.inner.fail_status.load(Ordering::SeqCst);
        if take_one(&self.inner.fail_next) {
            return Some(status);
        }
        let ppm = self.inner.fail_ppm.load(Ordering::SeqCst);
        (ppm > 0 && rand::random_range(0..1_000_000) < ppm).then_some(status)
    }

    /// Whether this watch resume must be answered with an injected 410 Expired.
    pub(crate) fn take_expiry(&self) -> bool {
        take_one(&self.inner.expire_next)
    }

    /// Whether this write must be answered with an injected 409.
    pub(crate) fn take_conflict(&self) -> bool {
        take_one(&self.inner.conflict_next)
    }

    pub(crate) fn watch_drops(&self) -> watch::Receiver<u64> {
        self.inner.drop_watches.subscribe()
    }
}

fn clamp_5xx(status: u16) -> u16 {
    if (500..=599).contains(&status) {
        status
    } else {
        500
    }
}

/// Decrements a counter if positive; true if it was.
fn take_one(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_next_fires_exactly_n_times() {
        let faults = FaultControls::default();
        faults.fail_next(2, 503);
        assert_eq!(faults.take_failure(Verb::Get), Some(503));
        assert_eq!(faults.take_failure(Verb::Get), Some(503));
        assert_eq!(faults.take_failure(Verb::Get), None);
    }

    #[test]
    fn fraction_one_always_fails_and_zero_never() {
        let faults = FaultControls::default();
        faults.fail_fraction(1.0);
        assert!((0..100).all(|_| faults.take_failure(Verb::List) == Some(500)));
        faults.fail_fraction(0.0);
        assert!((0..100).all(|_| faults.take_failure(Verb::List).is_none()));
    }

    #[test]
    fn failures_can_target_verbs() {
        let faults = FaultControls::default();
        faults.fail_only(&[Verb::Apply]);
        faults.fail_next(1, 500);
        assert_eq!(
            faults.take_failure(Verb::Get),
            None,
            "reads pass and do not use up the fault"
        );
        assert_eq!(faults.take_failure(Verb::Apply), Some(500));
        assert_eq!(faults.take_failure(Verb::Apply), None);
        let request: FaultRequest =
            serde_json::from_str(r#"{"fail_verbs": ["watch"], "fail_fraction": 1.0}"#).unwrap();
        faults.apply_request(&request).unwrap();
        assert_eq!(faults.take_failure(Verb::Watch), Some(500));
        assert_eq!(faults.take_failure(Verb::List), None);
    }

    #[test]
    fn control_requests_are_validated() {
        let faults = FaultControls::default();
        let bad = FaultRequest {
            fail_status: Some(404),
            ..Default::default()
        };
        assert!(faults.apply_request(&bad).is_err());
        let bad = FaultRequest {
            fail_fraction: Some(1.5),
            ..Default::default()
        };
        assert!(faults.apply_request(&bad).is_err());
        let good = FaultRequest {
            conflict_next: Some(1),
            ..Default::default()
        };
        faults.apply_request(&good).unwrap();
        assert!(faults.take_conflict());
        assert!(!faults.take_conflict());
    }

    #[test]
    fn expire_watches_fires_exactly_n_times_and_closes_open_watches() {
        let faults = FaultControls::default();
        let mut drops = faults.watch_drops();
        let request: FaultRequest = serde_json::from_str(r#"{"expire_watches": 2}"#).unwrap();
        faults.apply_request(&request).unwrap();
        assert!(drops.has_changed().unwrap(), "open watches are closed");
        drops.mark_unchanged();
        assert!(faults.take_expiry());
        assert!(faults.take_expiry());
        assert!(!faults.take_expiry(), "only the next two resumes expire");
        faults.expire_watches(5);
        faults.clear();
        assert!(!faults.take_expiry(), "clear turns it off");
    }

    #[test]
    fn writes_sum_the_write_verbs() {
        let counters = Counters::default();
        counters.count(Verb::Get, "pods");
        counters.count(Verb::Apply, "workloadentries.networking.istio.io");
        counters.count(Verb::Delete, "pods");
        counters.count_outcome(Verb::Apply, 201);
        counters.count_outcome(Verb::Delete, 404);
        counters.count_outcome(Verb::Get, 200);
        let snap = counters.snapshot();
        assert_eq!(snap.writes(), 2);
        assert_eq!(snap.successful_writes(), 1);
        assert_eq!(snap.outcome(Verb::Delete, 404), 1);
        assert_eq!(
            snap.on(Verb::Apply, "workloadentries.networking.istio.io"),
            1
        );
        counters.reset();
        assert_eq!(counters.snapshot().writes(), 0);
    }
}
