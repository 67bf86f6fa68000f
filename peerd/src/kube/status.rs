//! The peer Gateway **conditions writer** (docs/design.md §6): merges peerd's five condition types
//! into a Gateway's `status.conditions` and writes them by server-side apply on the
//! `/status` subresource with field manager `peerd`.
//!
//! Rules: only the five types in [`PEER_CONDITION_TYPES`] are ever sent (conditions other
//! controllers own stay theirs: the list is a map keyed by `type`); `lastTransitionTime`
//! changes only when a condition's status changes; `observedGeneration` is the Gateway's
//! generation; nothing is written when nothing changed; nothing is written unless this
//! replica is the leader. It must never touch the Gateway's spec or metadata.

use anyhow::Context;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::gateways::SpecError;
use super::leader::Leadership;
use super::types::{FIELD_MANAGER, Gateway, PEER_CONDITION_TYPES};

/// `True` / `False` / `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// One condition peerd wants on a peer Gateway (the lead fills these from the peer
/// model's `PeerStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredCondition {
    /// One of [`PEER_CONDITION_TYPES`].
    pub type_: String,
    pub status: ConditionStatus,
    /// CamelCase reason, e.g. `Invalid`, `Pending`, `ConnectTimeout`.
    pub reason: String,
    pub message: String,
}

impl DesiredCondition {
    pub fn new(type_: &str, status: ConditionStatus, reason: &str, message: &str) -> Self {
        DesiredCondition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message: message.to_string(),
        }
    }
}

/// An invalid peer Gateway: all five conditions False with reason `Invalid` and the
/// offending field in the message (docs/design.md §6.1: an unusable spec turns every
/// condition False/Invalid).
pub fn invalid_spec_conditions(error: &SpecError) -> Vec<DesiredCondition> {
    PEER_CONDITION_TYPES
        .iter()
        .map(|type_| {
            DesiredCondition::new(
                type_,
                ConditionStatus::False,
                "Invalid",
                &format!("invalid peer Gateway: {error}"),
            )
        })
        .collect()
}

/// The conditions a Gateway's status holds now (none without a status).
pub fn current_conditions(gateway: &Gateway) -> &[Condition] {
    gateway
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default()
}

/// The conditions to apply for one Gateway, or `None` when what the Gateway already has
/// matches `desired` (status, reason, message, observedGeneration). Pure: `now` is the
/// transition time for conditions whose status changes.
pub fn merge_conditions(
    current: &[Condition],
    desired: &[DesiredCondition],
    generation: i64,
    now: Timestamp,
) -> Option<Vec<Condition>> {
    let mut changed = false;
    let mut out = Vec::new();
    for want in desired {
        if !PEER_CONDITION_TYPES.contains(&want.type_.as_str()) {
            // Never written: not ours.
            continue;
        }
        let existing = current.iter().find(|c| c.type_ == want.type_);
        let status_same = existing.is_some_and(|c| c.status == want.status.as_str());
        let last_transition_time = match existing {
            Some(c) if status_same => c.last_transition_time.clone(),
            _ => Time(now),
        };
        let condition = Condition {
            type_: want.type_.clone(),
            status: want.status.as_str().to_string(),
            reason: want.reason.clone(),
            message: want.message.clone(),
            observed_generation: Some(generation),
            last_transition_time,
        };
        let same = existing.is_some_and(|c| {
            status_same
                && c.reason == condition.reason
                && c.message == condition.message
                && c.observed_generation == condition.observed_generation
        });
        changed |= !same;
        out.push(condition);
    }
    changed.then_some(out)
}

/// Whether `desired` differs from `current` in status, reason or observedGeneration of any
/// condition (a missing condition differs). Messages are ignored: they carry live counts
/// (resources imported, view versions) that change with every churn, and rewriting a
/// Gateway's status for them would put the API server on the data path. A message is
/// refreshed whenever its condition's status or reason changes.
pub fn differs_beyond_messages(
    current: &[Condition],
    desired: &[DesiredCondition],
    generation: i64,
) -> bool {
    desired
        .iter()
        .filter(|want| PEER_CONDITION_TYPES.contains(&want.type_.as_str()))
        .any(|want| {
            current
                .iter()
                .find(|c| c.type_ == want.type_)
                .is_none_or(|c| {
                    c.status != want.status.as_str()
                        || c.reason != want.reason
                        || c.observed_generation != Some(generation)
                })
        })
}

/// What [`ConditionsWriter::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The Gateway already showed these conditions: no request made.
    Unchanged,
    Written,
    /// Not the leader: no request made.
    NotLeader,
}

/// Writes peer conditions to Gateways in one namespace.
pub struct ConditionsWriter {
    api: Api<Gateway>,
    leadership: Leadership,
}

impl ConditionsWriter {
    pub fn new(client: Client, namespace: &str, leadership: Leadership) -> ConditionsWriter {
        ConditionsWriter {
            api: Api::namespaced(client, namespace),
            leadership,
        }
    }

    /// Brings `gateway` (as last observed, e.g. from the reflector) to `desired`.
    pub async fn write(
        &self,
        gateway: &Gateway,
        desired: &[DesiredCondition],
    ) -> anyhow::Result<WriteOutcome> {
        let name = gateway.name_any();
        let current = current_conditions(gateway);
        let generation = gateway.metadata.generation.unwrap_or(0);
        let Some(conditions) = merge_conditions(current, desired, generation, Timestamp::now())
        else {
            return Ok(WriteOutcome::Unchanged);
        };
        if !self.leadership.is_leader() {
            return Ok(WriteOutcome::NotLeader);
        }
        let patch = json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name},
            "status": {"conditions": conditions},
        });
        // force: peerd is the one writer of these five types on peer Gateways.
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.api
            .patch_status(&name, &params, &Patch::Apply(&patch))
            .await
            .with_context(|| format!("applying conditions to Gateway {name}"))?;
        Ok(WriteOutcome::Written)
    }
}
