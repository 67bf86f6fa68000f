//! The peer monitor's metrics: `peerd_peer_connected{peer_cluster}`,
//! `peerd_peer_condition{peer_cluster,type,status}`,
//! `peerd_peer_condition_transitions_total{peer_cluster,type}` and `peerd_probe_mode{mode}`.
//!
//! Owns: the metric names and labels. Must never compute a condition; it only mirrors
//! what the monitor decided.

use crate::peers::conditions::{ConditionEvent, ConditionStatus, ConditionType, Conditions};

/// `peerd_probe_mode{mode}`: 1 for the active probe mode (`ebpf` or `userspace`).
pub(super) fn export_probe_mode(mode: &str) {
    for m in ["ebpf", "userspace"] {
        metrics::gauge!("peerd_probe_mode", "mode" => m).set(if m == mode { 1.0 } else { 0.0 });
    }
}

/// The gauges of one peer's current conditions, and a transition count per status change
/// in `events`.
pub(super) fn export_peer(peer: String, conditions: &Conditions, events: &[ConditionEvent]) {
    let connected = conditions.status(ConditionType::PeerConnected) == Some(ConditionStatus::True);
    metrics::gauge!("peerd_peer_connected", "peer_cluster" => peer.clone()).set(if connected {
        1.0
    } else {
        0.0
    });
    for c in conditions.iter() {
        for s in ConditionStatus::ALL {
            metrics::gauge!(
                "peerd_peer_condition",
                "peer_cluster" => peer.clone(),
                "type" => c.type_.as_str(),
                "status" => s.as_str()
            )
            .set(if c.status == s { 1.0 } else { 0.0 });
        }
    }
    // A condition's first value is an event on the watch stream but not a transition.
    for e in events
        .iter()
        .filter(|e| e.old_status.is_some() && e.is_status_change())
    {
        metrics::counter!(
            "peerd_peer_condition_transitions_total",
            "peer_cluster" => peer.clone(),
            "type" => e.type_.as_str()
        )
        .increment(1);
    }
}

/// Zeroes every gauge of a peer that is gone.
pub(super) fn clear_peer(peer: &str) {
    metrics::gauge!("peerd_peer_connected", "peer_cluster" => peer.to_string()).set(0.0);
    for t in ConditionType::ALL {
        for s in ConditionStatus::ALL {
            metrics::gauge!(
                "peerd_peer_condition",
                "peer_cluster" => peer.to_string(),
                "type" => t.as_str(),
                "status" => s.as_str()
            )
            .set(0.0);
        }
    }
}
