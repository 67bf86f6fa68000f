//! The leader's reconcile of peer Gateway conditions: for each `istio-remote` Gateway,
//! the five conditions it should show ([`desired_for`]: all False/Invalid when its spec is
//! not usable, else what the peer monitor shows) and whether a write is due
//! ([`ConditionSync::reconcile`]).
//!
//! Owns: per Gateway, the resourceVersion its spec check was made for and what was last
//! written. Writes only through [`ConditionsWriter`]; makes no request when nothing but a
//! message changed, or when its last write is not yet visible in the watch (no
//! write-echo loop). Must never decide a condition itself (the peer monitor does) and
//! never touch a Gateway that is not a peer Gateway.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ::kube::ResourceExt;

use super::gateways::{Resolver, SpecError};
use super::peering::{check_gateway, gateway_spec};
use super::status::{
    ConditionStatus, ConditionsWriter, DesiredCondition, current_conditions,
    differs_beyond_messages, invalid_spec_conditions,
};
use super::types::Gateway;
use crate::peers::model::LocalCluster;
use crate::peers::{self, PeerMonitor, PeerStatus};

/// (type, status, reason) of each condition written: what a write is compared by.
pub type Signature = Vec<(String, String, String)>;

/// What [`ConditionSync`] needs to know about this cluster.
pub struct ConditionSyncConfig {
    pub local: LocalCluster,
    /// `sandboxMode`: peer addresses must be loopback.
    pub sandbox: bool,
    /// The default trust domain of a peer Gateway without the annotation.
    pub trust_domain: String,
    pub resolver: Box<dyn Resolver>,
}

/// Per-Gateway memory of the conditions writer (see the module doc).
pub struct ConditionSync {
    config: ConditionSyncConfig,
    /// Per Gateway: the resourceVersion its check was made for, and the result.
    checks: BTreeMap<String, (String, Result<(), SpecError>)>,
    /// Per Gateway: the resourceVersion a write was based on, and what was written.
    written: BTreeMap<String, (String, Signature)>,
}

impl ConditionSync {
    pub fn new(config: ConditionSyncConfig) -> ConditionSync {
        ConditionSync {
            config,
            checks: BTreeMap::new(),
            written: BTreeMap::new(),
        }
    }

    /// Forgets the Gateways that are gone (called on every pass, leader or not).
    pub fn retain(&mut self, gateways: &[Arc<Gateway>]) {
        let names: BTreeSet<String> = gateways.iter().map(|g| g.name_any()).collect();
        self.checks.retain(|name, _| names.contains(name));
        self.written.retain(|name, _| names.contains(name));
    }

    /// One pass of the leader: brings each peer Gateway's conditions to what peerd knows
    /// now. A failed write is logged and retried on the next pass.
    pub async fn reconcile(
        &mut self,
        gateways: &[Arc<Gateway>],
        monitor: &PeerMonitor,
        writer: &ConditionsWriter,
    ) {
        for gateway in gateways {
            let name = gateway.name_any();
            let rv = gateway.resource_version().unwrap_or_default();
            let fresh = self.checks.get(&name).is_some_and(|(at, _)| *at == rv);
            if !fresh {
                let result = check_gateway(
                    gateway,
                    &self.config.local,
                    self.config.sandbox,
                    self.config.resolver.as_ref(),
                )
                .await
                .map(|_| ());
                self.checks.insert(name.clone(), (rv.clone(), result));
            }
            let Some((_, checked)) = self.checks.get(&name) else {
                continue;
            };
            let Some(desired) = desired_for(
                gateway,
                checked,
                &monitor.snapshot(),
                &self.config.trust_domain,
            ) else {
                continue;
            };
            let signature = signature(&desired);
            if self
                .written
                .get(&name)
                .is_some_and(|(based_on, what)| *based_on == rv && *what == signature)
            {
                // Our write is not in the watch yet.
                continue;
            }
            let current = current_conditions(gateway);
            let generation = gateway.metadata.generation.unwrap_or(0);
            if !differs_beyond_messages(current, &desired, generation) {
                continue;
            }
            match writer.write(gateway, &desired).await {
                Ok(outcome) => {
                    tracing::debug!(gateway = %name, ?outcome, "peer Gateway conditions");
                    self.written.insert(name, (rv, signature));
                }
                Err(err) => {
                    tracing::warn!(gateway = %name, error = format!("{err:#}"), "writing peer Gateway conditions failed; retrying")
                }
            }
        }
    }
}

/// The five conditions for one peer Gateway: all False/Invalid when its spec is not
/// usable (`checked`), else what `statuses` (the peer monitor's snapshot) shows for it.
/// `None`: the monitor has not evaluated it yet.
pub fn desired_for(
    gateway: &Gateway,
    checked: &Result<(), SpecError>,
    statuses: &[PeerStatus],
    trust_domain: &str,
) -> Option<Vec<DesiredCondition>> {
    if let Err(err) = checked {
        return Some(invalid_spec_conditions(err));
    }
    let name = gateway_spec(gateway, trust_domain).display_name();
    let status = statuses.iter().find(|s| s.name == name)?;
    let conditions: Vec<DesiredCondition> = status
        .conditions
        .iter()
        .map(|c| {
            let state = match c.status {
                crate::peers::ConditionStatus::True => ConditionStatus::True,
                crate::peers::ConditionStatus::False => ConditionStatus::False,
                crate::peers::ConditionStatus::Unknown => ConditionStatus::Unknown,
            };
            DesiredCondition::new(c.type_.as_str(), state, &c.reason, &c.message)
        })
        .collect();
    (!conditions.is_empty()).then_some(conditions)
}

/// The peer conditions each Gateway already shows, by peer display name, for the peer
/// monitor to resume from (`PeerMonitor::set_peers_resuming`): only the five types peerd
/// writes, and only those written for the Gateway's current generation (a spec changed
/// while no peerd ran is judged afresh). Unparsable entries are skipped.
pub fn shown_conditions(
    gateways: &[Arc<Gateway>],
    trust_domain: &str,
) -> BTreeMap<String, peers::Conditions> {
    let mut out = BTreeMap::new();
    for gateway in gateways {
        let generation = gateway.metadata.generation.unwrap_or(0);
        let mut shown = peers::Conditions::new();
        for c in current_conditions(gateway) {
            if c.observed_generation.unwrap_or(0) != generation {
                continue;
            }
            let (Some(type_), Some(status)) = (
                peers::ConditionType::parse(&c.type_),
                peers::ConditionStatus::parse(&c.status),
            ) else {
                continue;
            };
            let last_transition = std::time::SystemTime::from(c.last_transition_time.0);
            shown.restore(peers::Condition {
                type_,
                status,
                reason: c.reason.clone(),
                message: c.message.clone(),
                last_transition_time: peers::conditions::rfc3339(last_transition),
                observed_generation: generation,
                last_transition,
            });
        }
        if shown.iter().next().is_some() {
            out.insert(gateway_spec(gateway, trust_domain).display_name(), shown);
        }
    }
    out
}

/// What a write of `desired` is remembered by (messages left out, like
/// [`differs_beyond_messages`]).
pub fn signature(desired: &[DesiredCondition]) -> Signature {
    desired
        .iter()
        .map(|d| {
            (
                d.type_.clone(),
                d.status.as_str().to_string(),
                d.reason.clone(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use serde_json::json;

    use super::*;
    use crate::peers::conditions::ConditionValue;
    use crate::peers::{ConditionType, Conditions};

    fn peer_gateway() -> Gateway {
        serde_json::from_value(json!({
            "metadata": {"name": "istio-remote-peer-c2", "namespace": "istio-eastwest",
                         "labels": {"topology.istio.io/cluster": "c2"}},
            "spec": {"gatewayClassName": "istio-remote", "listeners": []},
        }))
        .unwrap()
    }

    fn status(name: &str, conditions: Conditions) -> PeerStatus {
        PeerStatus {
            name: name.into(),
            cluster: name.into(),
            network: "net2".into(),
            address: "127.0.0.2".into(),
            flat: false,
            data_plane: "LoadBalancer",
            generation: 1,
            conditions,
            probe: Default::default(),
        }
    }

    #[test]
    fn a_spec_problem_sets_all_five_conditions_invalid() {
        let err = SpecError {
            field: "spec.addresses".into(),
            message: "at least one address is required".into(),
        };
        let desired = desired_for(&peer_gateway(), &Err(err), &[], "c1.local").unwrap();
        assert_eq!(desired.len(), 5);
        for d in &desired {
            assert_eq!(
                (d.status, d.reason.as_str()),
                (ConditionStatus::False, "Invalid")
            );
            assert!(d.message.contains("spec.addresses"), "{}", d.message);
        }
    }

    #[test]
    fn a_usable_gateway_shows_what_the_monitor_shows_once_evaluated() {
        let gateway = peer_gateway();
        // Not evaluated yet (no status, or one without conditions): nothing to write.
        assert_eq!(desired_for(&gateway, &Ok(()), &[], "c1.local"), None);
        let empty = [status("c2", Conditions::new())];
        assert_eq!(desired_for(&gateway, &Ok(()), &empty, "c1.local"), None);

        let mut conditions = Conditions::new();
        conditions.set(
            "c2",
            ConditionType::PeerConnected,
            &ConditionValue::new(
                crate::peers::ConditionStatus::False,
                "ConnectTimeout",
                "no answer",
            ),
            1,
            SystemTime::UNIX_EPOCH,
        );
        let statuses = [status("c3", Conditions::new()), status("c2", conditions)];
        let desired = desired_for(&gateway, &Ok(()), &statuses, "c1.local").unwrap();
        assert_eq!(
            desired,
            [DesiredCondition::new(
                "gloo.solo.io/PeerConnected",
                ConditionStatus::False,
                "ConnectTimeout",
                "no answer"
            )]
        );
    }

    #[test]
    fn the_signature_leaves_messages_out() {
        let a = [DesiredCondition::new(
            "t",
            ConditionStatus::True,
            "Ok",
            "3 resources",
        )];
        let b = [DesiredCondition::new(
            "t",
            ConditionStatus::True,
            "Ok",
            "4 resources",
        )];
        let c = [DesiredCondition::new(
            "t",
            ConditionStatus::False,
            "Ok",
            "3 resources",
        )];
        assert_eq!(signature(&a), signature(&b));
        assert_ne!(signature(&a), signature(&c));
        assert_eq!(
            signature(&a),
            [("t".to_string(), "True".to_string(), "Ok".to_string())]
        );
    }

    #[test]
    fn shown_conditions_keep_only_the_current_generations_peer_conditions() {
        let mut gateway: Gateway = serde_json::from_value(json!({
            "metadata": {"name": "istio-remote-peer-c2", "namespace": "istio-eastwest",
                         "generation": 3,
                         "labels": {"topology.istio.io/cluster": "c2"}},
            "spec": {"gatewayClassName": "istio-remote", "listeners": []},
            "status": {"conditions": [
                {"type": "gloo.solo.io/PeerConnected", "status": "True", "reason": "Connected",
                 "message": "up", "lastTransitionTime": "2026-01-02T03:04:05Z",
                 "observedGeneration": 3},
                {"type": "gloo.solo.io/PeeringSucceeded", "status": "True", "reason": "Succeeded",
                 "message": "old spec", "lastTransitionTime": "2026-01-02T03:04:05Z",
                 "observedGeneration": 2},
                {"type": "example.com/Other", "status": "True", "reason": "Theirs",
                 "message": "", "lastTransitionTime": "2026-01-02T03:04:05Z",
                 "observedGeneration": 3},
                {"type": "gloo.solo.io/PeerDataPlaneProgrammed", "status": "Maybe",
                 "reason": "Odd", "message": "", "lastTransitionTime": "2026-01-02T03:04:05Z",
                 "observedGeneration": 3},
            ]},
        }))
        .unwrap();
        let shown = shown_conditions(&[Arc::new(gateway.clone())], "cluster.local");
        let name = gateway_spec(&gateway, "cluster.local").display_name();
        let conditions = &shown[&name];
        let connected = conditions.get(ConditionType::PeerConnected).unwrap();
        assert_eq!(connected.status, crate::peers::ConditionStatus::True);
        assert_eq!(connected.reason, "Connected");
        assert_eq!(connected.last_transition_time, "2026-01-02T03:04:05Z");
        assert_eq!(connected.observed_generation, 3);
        assert!(
            conditions.get(ConditionType::PeeringSucceeded).is_none(),
            "written for an older generation"
        );
        assert!(
            conditions
                .get(ConditionType::PeerDataPlaneProgrammed)
                .is_none(),
            "not a valid status"
        );
        assert_eq!(
            conditions.iter().count(),
            1,
            "foreign types are not peerd's"
        );
        // A Gateway that shows nothing gives no entry.
        gateway.status = None;
        assert!(shown_conditions(&[Arc::new(gateway)], "cluster.local").is_empty());
    }
}
