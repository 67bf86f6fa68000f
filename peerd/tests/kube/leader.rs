//! Lease leader election with two replicas against the emulator.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use super::{CONTROL_NS, client, emulator, eventually};
use peerd::kube::leader::{LeaderConfig, LeaderElector};

fn config(identity: &str) -> LeaderConfig {
    LeaderConfig {
        lease_duration: Duration::from_secs(2),
        renew_period: Duration::from_millis(200),
        ..LeaderConfig::new(CONTROL_NS, identity)
    }
}

async fn holder(api: &Api<Lease>) -> Option<String> {
    api.get_opt("peerd-leader")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn one_leader_then_failover_within_a_lease_duration_after_a_crash() {
    let emu = emulator().await;
    let client = client(&emu).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), CONTROL_NS);
    let a = LeaderElector::start(client.clone(), config("replica-a"));
    let a_leadership = a.leadership();
    eventually("a leads", || async { a_leadership.is_leader() }).await;
    let b = LeaderElector::start(client.clone(), config("replica-b"));
    let b_leadership = b.leadership();
    // B has tried at least twice (the Lease was read by it) while A holds it.
    let reads_before = emu.counters().verb(peerd_testbed::emulator::Verb::Get);
    eventually("b campaigned", || async {
        emu.counters().verb(peerd_testbed::emulator::Verb::Get) >= reads_before + 4
    })
    .await;
    assert!(!b_leadership.is_leader());
    assert_eq!(holder(&leases).await.as_deref(), Some("replica-a"));

    // A crashes (stops renewing, does not release): B takes over once the lease expires.
    drop(a);
    eventually("b leads", || async { b_leadership.is_leader() }).await;
    // A stopped trusting its lease before B could take it.
    assert!(!a_leadership.is_leader());
    let lease = leases.get("peerd-leader").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(lease.lease_transitions, Some(1));

    // B releases on shutdown: a new replica takes over without waiting for expiry.
    b.release().await;
    assert!(!b_leadership.is_leader());
    assert_eq!(holder(&leases).await, None);
    let c = LeaderElector::start(client, config("replica-c"));
    let c_leadership = c.leadership();
    eventually("c leads", || async { c_leadership.is_leader() }).await;
    c.release().await;
}
