//! The five peer conditions as `metav1.Condition`-like values, their reasons (docs/design.md §6.2),
//! and [`Conditions`]: one peer's set, which moves `lastTransitionTime` only when a
//! condition's status changes and reports every status or reason change as a
//! [`ConditionEvent`].
//!
//! Owns: the condition vocabulary (types, statuses, reason strings, fixed messages).
//! Must never decide *when* a condition changes (that is `hysteresis` and `monitor`),
//! and never invent reasons outside the table in docs/design.md §6.2.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use serde::Serialize;
use serde::ser::SerializeMap;

/// The condition types written to a peer Gateway's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConditionType {
    Accepted,
    Programmed,
    PeerConnected,
    PeeringSucceeded,
    PeerDataPlaneProgrammed,
}

impl ConditionType {
    pub const ALL: [ConditionType; 5] = [
        ConditionType::Accepted,
        ConditionType::Programmed,
        ConditionType::PeerConnected,
        ConditionType::PeeringSucceeded,
        ConditionType::PeerDataPlaneProgrammed,
    ];

    /// The `type` string of the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Accepted => "Accepted",
            ConditionType::Programmed => "Programmed",
            ConditionType::PeerConnected => "gloo.solo.io/PeerConnected",
            ConditionType::PeeringSucceeded => "gloo.solo.io/PeeringSucceeded",
            ConditionType::PeerDataPlaneProgrammed => "gloo.solo.io/PeerDataPlaneProgrammed",
        }
    }

    /// The type a `type` string names, if it is one of the five.
    pub fn parse(s: &str) -> Option<ConditionType> {
        ConditionType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The reason used when the condition is True.
    pub fn true_reason(self) -> &'static str {
        match self {
            ConditionType::Accepted => reason::ACCEPTED,
            ConditionType::Programmed => reason::PROGRAMMED,
            ConditionType::PeerConnected => reason::CONNECTED,
            ConditionType::PeeringSucceeded => reason::SUCCEEDED,
            ConditionType::PeerDataPlaneProgrammed => reason::PROGRAMMED,
        }
    }
}

impl Serialize for ConditionType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `metav1.ConditionStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub const ALL: [ConditionStatus; 3] = [
        ConditionStatus::True,
        ConditionStatus::False,
        ConditionStatus::Unknown,
    ];

    /// The status a `status` string names, if it is a valid one.
    pub fn parse(s: &str) -> Option<ConditionStatus> {
        ConditionStatus::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reason strings (CamelCase, as `metav1.Condition` requires).
pub mod reason {
    // True reasons.
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const CONNECTED: &str = "Connected";
    pub const SUCCEEDED: &str = "Succeeded";
    // False / Unknown reasons (docs/design.md §6.2).
    pub const INVALID: &str = "Invalid";
    pub const PENDING: &str = "Pending";
    pub const STALE: &str = "Stale";
    pub const MEMORY_BUDGET_EXCEEDED: &str = "MemoryBudgetExceeded";
    pub const CONNECT_TIMEOUT: &str = "ConnectTimeout";
    pub const CONNECTION_REFUSED: &str = "ConnectionRefused";
    pub const TLS_ERROR: &str = "TLSError";
    pub const IDENTITY_MISMATCH: &str = "IdentityMismatch";
    pub const STREAM_ERROR: &str = "StreamError";
    pub const HBONE_CONNECT_TIMEOUT: &str = "HBONEConnectTimeout";
    pub const HBONE_CONNECTION_REFUSED: &str = "HBONEConnectionRefused";
    pub const NOT_ACKED: &str = "NotAcked";
    pub const MISSING_HBONE_LISTENER: &str = "MissingHBONEListener";
}

/// The `HBONEConnectTimeout` message (the port is 15008 unless configured otherwise).
pub fn hbone_timeout_message(port: u16) -> String {
    format!("connection timed out, maybe a NetworkPolicy is blocking HBONE port {port}")
}

/// What a condition shows: status, reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionValue {
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
}

impl ConditionValue {
    pub fn new(status: ConditionStatus, reason: &str, message: impl Into<String>) -> Self {
        ConditionValue {
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// One condition, shaped like `metav1.Condition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: ConditionType,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    /// RFC 3339, UTC, seconds precision (as Kubernetes writes it).
    pub last_transition_time: String,
    pub observed_generation: i64,
    #[serde(skip)]
    pub last_transition: SystemTime,
}

/// A status or reason change of one condition of one peer (the debug API's watch stream
/// carries these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionEvent {
    pub peer: String,
    #[serde(rename = "type")]
    pub type_: ConditionType,
    /// `None` for the first value a condition ever gets.
    pub old_status: Option<ConditionStatus>,
    pub new_status: ConditionStatus,
    pub old_reason: Option<String>,
    pub reason: String,
    pub message: String,
    /// RFC 3339 UTC.
    pub at: String,
    #[serde(skip)]
    pub at_time: SystemTime,
}

impl ConditionEvent {
    /// Whether the status changed (not only the reason).
    pub fn is_status_change(&self) -> bool {
        self.old_status != Some(self.new_status)
    }
}

/// One peer's conditions, always all five, in [`ConditionType::ALL`] order once set.
/// Serializes as a map `"<type>": {status, reason, message, lastTransitionTime,
/// observedGeneration}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    items: BTreeMap<ConditionType, Condition>,
}

impl Conditions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, t: ConditionType) -> Option<&Condition> {
        self.items.get(&t)
    }

    pub fn status(&self, t: ConditionType) -> Option<ConditionStatus> {
        self.get(t).map(|c| c.status)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Condition> {
        self.items.values()
    }

    /// Takes a condition as already shown elsewhere (a Gateway's status), transition time
    /// included, with no event: the state a monitor resumes from.
    pub fn restore(&mut self, condition: Condition) {
        self.items.insert(condition.type_, condition);
    }

    /// Sets one condition. `lastTransitionTime` moves only when the status changes; the
    /// returned event is `Some` when the status or the reason changed.
    pub fn set(
        &mut self,
        peer: &str,
        type_: ConditionType,
        value: &ConditionValue,
        generation: i64,
        now: SystemTime,
    ) -> Option<ConditionEvent> {
        let (status, reason, message) =
            (value.status, value.reason.as_str(), value.message.as_str());
        let previous = self.items.get(&type_);
        let (old_status, old_reason, last_transition) = match previous {
            Some(c) if c.status == status => {
                (Some(c.status), Some(c.reason.clone()), c.last_transition)
            }
            Some(c) => (Some(c.status), Some(c.reason.clone()), now),
            None => (None, None, now),
        };
        let changed = old_status != Some(status) || old_reason.as_deref() != Some(reason);
        self.items.insert(
            type_,
            Condition {
                type_,
                status,
                reason: reason.to_string(),
                message: message.to_string(),
                last_transition_time: rfc3339(last_transition),
                observed_generation: generation,
                last_transition,
            },
        );
        changed.then(|| ConditionEvent {
            peer: peer.to_string(),
            type_,
            old_status,
            new_status: status,
            old_reason,
            reason: reason.to_string(),
            message: message.to_string(),
            at: rfc3339(now),
            at_time: now,
        })
    }
}

impl Serialize for Conditions {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.items.len()))?;
        for (t, c) in &self.items {
            map.serialize_entry(t.as_str(), c)?;
        }
        map.end()
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` in UTC (Kubernetes `metav1.Time`: whole seconds); times before
/// the epoch, or past year 9999, print as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    i64::try_from(secs)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
        // 2000-02-29 12:34:56 UTC (a leap day).
        assert_eq!(rfc3339(at(951_827_696)), "2000-02-29T12:34:56Z");
        // 2026-11-26 05:00:00 UTC.
        assert_eq!(rfc3339(at(1_795_669_200)), "2026-11-26T05:00:00Z");
    }

    #[test]
    fn type_strings_are_the_gateway_condition_types() {
        let names: Vec<&str> = ConditionType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "Accepted",
                "Programmed",
                "gloo.solo.io/PeerConnected",
                "gloo.solo.io/PeeringSucceeded",
                "gloo.solo.io/PeerDataPlaneProgrammed"
            ]
        );
        assert_eq!(
            hbone_timeout_message(15008),
            "connection timed out, maybe a NetworkPolicy is blocking HBONE port 15008"
        );
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut c = Conditions::new();
        let t = ConditionType::PeerConnected;
        let first = c
            .set(
                "c2",
                t,
                &ConditionValue::new(ConditionStatus::Unknown, reason::PENDING, "waiting"),
                1,
                at(10),
            )
            .unwrap();
        assert_eq!(first.old_status, None);
        // Same status, new reason: an event, but the transition time stays.
        let ev = c
            .set(
                "c2",
                t,
                &ConditionValue::new(ConditionStatus::Unknown, reason::STALE, "x"),
                1,
                at(20),
            )
            .unwrap();
        assert!(!ev.is_status_change());
        assert_eq!(c.get(t).unwrap().last_transition, at(10));
        // Same status and reason, new message: no event, time stays, message updates.
        assert!(
            c.set(
                "c2",
                t,
                &ConditionValue::new(ConditionStatus::Unknown, reason::STALE, "y"),
                2,
                at(30)
            )
            .is_none()
        );
        let cur = c.get(t).unwrap();
        assert_eq!((cur.last_transition, cur.message.as_str()), (at(10), "y"));
        assert_eq!(cur.observed_generation, 2);
        // Status change: time moves.
        let ev = c
            .set(
                "c2",
                t,
                &ConditionValue::new(ConditionStatus::True, reason::CONNECTED, "up"),
                2,
                at(40),
            )
            .unwrap();
        assert!(ev.is_status_change());
        assert_eq!(ev.old_status, Some(ConditionStatus::Unknown));
        assert_eq!(
            c.get(t).unwrap().last_transition_time,
            "1970-01-01T00:00:40Z"
        );
    }

    #[test]
    fn serializes_as_a_map_by_type() {
        let mut c = Conditions::new();
        c.set(
            "c2",
            ConditionType::Accepted,
            &ConditionValue::new(ConditionStatus::True, reason::ACCEPTED, "ok"),
            3,
            at(0),
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["Accepted"]["status"], "True");
        assert_eq!(json["Accepted"]["reason"], "Accepted");
        assert_eq!(json["Accepted"]["type"], "Accepted");
        assert_eq!(json["Accepted"]["observedGeneration"], 3);
        assert_eq!(
            json["Accepted"]["lastTransitionTime"],
            "1970-01-01T00:00:00Z"
        );
    }
}
