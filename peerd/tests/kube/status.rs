//! Conditions lifecycle on a peer Gateway against the emulator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use serde_json::json;

use super::{PEERING_NS, client, create, emulator};
use peerd::kube::gateways::parse_peer_gateway;
use peerd::kube::leader::Leadership;
use peerd::kube::status::{
    ConditionStatus, ConditionsWriter, DesiredCondition, WriteOutcome, differs_beyond_messages,
    invalid_spec_conditions, merge_conditions,
};
use peerd::kube::types::{Gateway, PEER_CONDITION_TYPES};
use peerd_testbed::emulator::Verb;

fn all(status: ConditionStatus, reason: &str) -> Vec<DesiredCondition> {
    PEER_CONDITION_TYPES
        .iter()
        .map(|t| DesiredCondition::new(t, status, reason, &format!("{t} is {reason}")))
        .collect()
}

#[test]
fn transition_time_moves_only_when_status_changes() {
    let t0 = Timestamp::from_second(1_000).unwrap();
    let t1 = Timestamp::from_second(2_000).unwrap();
    let first = merge_conditions(&[], &all(ConditionStatus::False, "Pending"), 1, t0).unwrap();
    assert!(first.iter().all(|c| c.last_transition_time == Time(t0)));
    // Same desired state: nothing to write.
    assert_eq!(
        merge_conditions(&first, &all(ConditionStatus::False, "Pending"), 1, t1),
        None
    );
    // Reason changes but status does not: write, keep the transition time.
    let mut desired = all(ConditionStatus::False, "Pending");
    desired[2].reason = "ConnectTimeout".into();
    let second = merge_conditions(&first, &desired, 1, t1).unwrap();
    assert_eq!(second[2].last_transition_time, Time(t0));
    // Status flips: new transition time for that one only.
    desired[2].status = ConditionStatus::True;
    let third = merge_conditions(&second, &desired, 1, t1).unwrap();
    assert_eq!(third[2].last_transition_time, Time(t1));
    assert_eq!(third[0].last_transition_time, Time(t0));
    // A new generation alone is a change (observedGeneration).
    let fourth = merge_conditions(&third, &desired, 2, t1).unwrap();
    assert!(fourth.iter().all(|c| c.observed_generation == Some(2)));
    // Foreign types are never produced.
    let foreign = vec![DesiredCondition::new(
        "ResolvedRefs",
        ConditionStatus::True,
        "Ok",
        "",
    )];
    assert_eq!(merge_conditions(&[], &foreign, 1, t0), None);
}

#[test]
fn message_only_changes_are_not_worth_a_write() {
    let t0 = Timestamp::from_second(1_000).unwrap();
    let written = merge_conditions(&[], &all(ConditionStatus::True, "Ok"), 3, t0).unwrap();
    // Live counts in messages change all the time: no write for them.
    let mut desired = all(ConditionStatus::True, "Ok");
    desired[3].message = "full sync of every type done; 4242 resources imported".into();
    assert!(!differs_beyond_messages(&written, &desired, 3));
    // Status, reason, generation or a missing condition: write.
    let mut flipped = desired.clone();
    flipped[2].status = ConditionStatus::False;
    assert!(differs_beyond_messages(&written, &flipped, 3));
    let mut reason = desired.clone();
    reason[4].reason = "NotAcked".into();
    assert!(differs_beyond_messages(&written, &reason, 3));
    assert!(differs_beyond_messages(&written, &desired, 4));
    assert!(differs_beyond_messages(&written[..4], &desired, 3));
    // Types peerd does not own never make a difference.
    let foreign = vec![DesiredCondition::new(
        "ResolvedRefs",
        ConditionStatus::True,
        "Ok",
        "",
    )];
    assert!(!differs_beyond_messages(&written, &foreign, 3));
}

async fn read(api: &Api<Gateway>, name: &str) -> Gateway {
    api.get(name).await.unwrap()
}

fn find<'a>(gw: &'a Gateway, type_: &str) -> Option<&'a Condition> {
    gw.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

#[tokio::test]
async fn conditions_lifecycle_merges_with_another_manager_and_skips_no_op_writes() {
    let emu = emulator().await;
    let client = client(&emu).await;
    let gateways = format!("/apis/gateway.networking.k8s.io/v1/namespaces/{PEERING_NS}/gateways");
    create(&emu, &gateways, &json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "istio-remote-peer-c2", "namespace": PEERING_NS,
            "labels": {"topology.istio.io/cluster": "c2", "topology.istio.io/network": "net2"}},
        "spec": {"gatewayClassName": "istio-remote", "addresses": [{"value": "127.0.0.2"}],
            "listeners": [{"name": "cross-network", "port": 15008, "protocol": "HBONE"}, {"name": "xds-tls", "port": 15012, "protocol": "TLS"}]},
    })).await;
    // Another controller owns a condition of its own.
    let other = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "istio-remote-peer-c2"},
        "status": {"conditions": [{"type": "example.com/Audited", "status": "True", "reason": "Done",
            "message": "audited", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]},
    });
    let (code, body) = emu
        .request(
            http::Method::PATCH,
            &format!("{gateways}/istio-remote-peer-c2/status?fieldManager=auditor&force=true"),
            "application/apply-patch+yaml",
            other.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");

    let api: Api<Gateway> = Api::namespaced(client.clone(), PEERING_NS);
    let writer = ConditionsWriter::new(client.clone(), PEERING_NS, Leadership::always());
    let gw = read(&api, "istio-remote-peer-c2").await;
    let pending = all(ConditionStatus::False, "Pending");
    assert_eq!(
        writer.write(&gw, &pending).await.unwrap(),
        WriteOutcome::Written
    );
    let gw = read(&api, "istio-remote-peer-c2").await;
    let conditions = &gw.status.as_ref().unwrap().conditions;
    assert_eq!(conditions.len(), 6, "{conditions:?}");
    assert_eq!(find(&gw, "example.com/Audited").unwrap().message, "audited");
    for t in PEER_CONDITION_TYPES {
        let c = find(&gw, t).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Pending"));
        assert_eq!(c.observed_generation, Some(1));
    }

    // Nothing changed: no request.
    emu.reset_counters();
    assert_eq!(
        writer.write(&gw, &pending).await.unwrap(),
        WriteOutcome::Unchanged
    );
    assert_eq!(emu.counters().writes(), 0);

    // Connected: only our types change; the auditor's condition stays.
    let mut connected = pending.clone();
    connected[2] = DesiredCondition::new(
        "gloo.solo.io/PeerConnected",
        ConditionStatus::True,
        "Connected",
        "xDS stream up",
    );
    assert_eq!(
        writer.write(&gw, &connected).await.unwrap(),
        WriteOutcome::Written
    );
    assert_eq!(emu.counters().verb(Verb::Apply), 1);
    let after = read(&api, "istio-remote-peer-c2").await;
    assert_eq!(
        find(&after, "gloo.solo.io/PeerConnected").unwrap().status,
        "True"
    );
    assert_eq!(find(&after, "example.com/Audited").unwrap().reason, "Done");
    assert_eq!(
        find(&after, "Accepted").unwrap().last_transition_time,
        find(&gw, "Accepted").unwrap().last_transition_time
    );
    // The auditor still owns its condition (server-side apply ownership).
    let stored = emu
        .object(
            "gateway.networking.k8s.io",
            "gateways",
            PEERING_NS,
            "istio-remote-peer-c2",
        )
        .unwrap();
    let managers: Vec<_> = stored["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap().to_string())
        .collect();
    assert!(
        managers.contains(&"auditor".to_string()) && managers.contains(&"peerd".to_string()),
        "{managers:?}"
    );

    // A spec change bumps the generation: the conditions follow it.
    let (code, _) = emu
        .request(
            http::Method::PATCH,
            &format!("{gateways}/istio-remote-peer-c2"),
            "application/merge-patch+json",
            json!({"spec": {"addresses": [{"value": "127.0.0.3"}]}}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    let bumped = read(&api, "istio-remote-peer-c2").await;
    assert_eq!(bumped.metadata.generation, Some(2));
    assert_eq!(
        writer.write(&bumped, &connected).await.unwrap(),
        WriteOutcome::Written
    );
    let after = read(&api, "istio-remote-peer-c2").await;
    assert!(
        PEER_CONDITION_TYPES
            .iter()
            .all(|t| find(&after, t).unwrap().observed_generation == Some(2))
    );

    // A follower never writes.
    let follower = ConditionsWriter::new(client, PEERING_NS, Leadership::never());
    emu.reset_counters();
    assert_eq!(
        follower.write(&after, &pending).await.unwrap(),
        WriteOutcome::NotLeader
    );
    assert_eq!(emu.counters().writes(), 0);
}

#[tokio::test]
async fn invalid_gateway_gets_accepted_false_naming_the_field() {
    let emu = emulator().await;
    let client = client(&emu).await;
    let gateways = format!("/apis/gateway.networking.k8s.io/v1/namespaces/{PEERING_NS}/gateways");
    create(&emu, &gateways, &json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "istio-remote-peer-c9", "namespace": PEERING_NS,
            "labels": {"topology.istio.io/cluster": "c9", "topology.istio.io/network": "net9"}},
        "spec": {"gatewayClassName": "istio-remote", "listeners": [{"name": "xds-tls", "port": 15012, "protocol": "TLS"}]},
    })).await;
    let api: Api<Gateway> = Api::namespaced(client.clone(), PEERING_NS);
    let gw = read(&api, "istio-remote-peer-c9").await;
    let err = parse_peer_gateway(&gw, "c1").unwrap_err();
    let writer = ConditionsWriter::new(client, PEERING_NS, Leadership::always());
    writer
        .write(&gw, &invalid_spec_conditions(&err))
        .await
        .unwrap();
    let gw = read(&api, "istio-remote-peer-c9").await;
    let accepted = find(&gw, "Accepted").unwrap();
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(
        accepted.message.contains("spec.addresses"),
        "{}",
        accepted.message
    );
    assert!(
        PEER_CONDITION_TYPES
            .iter()
            .all(|t| find(&gw, t).unwrap().status == "False")
    );
}
