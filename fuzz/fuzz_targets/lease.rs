//! The leader Lease (`coordination.k8s.io/v1`), as the API server returns it: JSON →
//! `Lease` (as kube-rs decodes it) → `kube::leader::lease_expired` (after a fuzzed
//! local wait; the first byte) → `kube::leader::claimed_spec` (the renewal or takeover
//! written back). Oracle: the claim always names us, keeps a
//! positive duration, and counts a takeover as one more transition (saturating).
#![no_main]

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use peerd::kube::leader::{claimed_spec, lease_expired};

fuzz_target!(|data: &[u8]| {
    let (waited, json) = match data.split_first() {
        Some((w, rest)) => (u64::from(*w), rest),
        None => return,
    };
    let Ok(lease) = serde_json::from_slice::<Lease>(json) else {
        return;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let now = Instant::now();
    let observed_at = now.checked_sub(Duration::from_secs(waited)).unwrap_or(now);
    let expired = lease_expired(&spec, observed_at, now);
    let seconds = spec.lease_duration_seconds.unwrap_or(0);
    if seconds <= 0 {
        assert!(expired, "a lease without a positive duration is free");
    }
    let identity = "peerd-0_0000abcd";
    let claimed = claimed_spec(&spec, identity, MicroTime(Timestamp::UNIX_EPOCH), 15);
    assert_eq!(claimed.holder_identity.as_deref(), Some(identity));
    assert_eq!(claimed.lease_duration_seconds, Some(15));
    let before = spec.lease_transitions.unwrap_or(0);
    if spec.holder_identity.as_deref().unwrap_or_default() == identity {
        assert_eq!(
            claimed.lease_transitions, spec.lease_transitions,
            "a renewal is no transition"
        );
    } else {
        assert_eq!(claimed.lease_transitions, Some(before.saturating_add(1)));
    }
});
