//! Lease leader election with two replicas against the emulator, and against a holder
//! whose clock is skewed (expiry is judged on the candidate's local time).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

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

/// Plays a lease holder whose wall clock is `skew_secs` off ours: it created the Lease and
/// renews it every 200 ms, writing its own (skewed) time as renewTime. Returns how many
/// renewals it made, and whether it ever found the lease taken from it.
struct SkewedHolder {
    renewals: Arc<AtomicU64>,
    lost: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

const SKEWED: &str = "skewed-holder";

fn skewed_now(skew_secs: i64) -> MicroTime {
    let ms = Timestamp::now().as_millisecond() + skew_secs * 1000;
    MicroTime(Timestamp::from_millisecond(ms).unwrap())
}

async fn start_skewed_holder(api: Api<Lease>, skew_secs: i64) -> SkewedHolder {
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("peerd-leader".into()),
            namespace: Some(CONTROL_NS.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(SKEWED.into()),
            lease_duration_seconds: Some(2),
            acquire_time: Some(skewed_now(skew_secs)),
            renew_time: Some(skewed_now(skew_secs)),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    };
    api.create(&PostParams::default(), &lease).await.unwrap();
    let renewals = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let (renewals, lost, stop) = (renewals.clone(), lost.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut lease = api.get("peerd-leader").await.unwrap();
                let spec = lease.spec.as_mut().unwrap();
                if spec.holder_identity.as_deref() != Some(SKEWED) {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
                spec.renew_time = Some(skewed_now(skew_secs));
                match api
                    .replace("peerd-leader", &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => {
                        renewals.fetch_add(1, Ordering::SeqCst);
                    }
                    // Someone wrote the lease between our read and write: taken from us.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => panic!("renewing the skewed lease: {e}"),
                }
            }
        }
    });
    SkewedHolder {
        renewals,
        lost,
        stop,
        task,
    }
}

/// A live holder with a skewed clock keeps the lease: the candidate never leads while it
/// renews (over ten of the holder's lease durations), and takes over once the holder
/// really stops renewing.
async fn a_skewed_holder_is_never_joined_by_a_second_leader(skew_secs: i64) {
    let emu = emulator().await;
    let client = client(&emu).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), CONTROL_NS);
    let skewed = start_skewed_holder(leases.clone(), skew_secs).await;
    let b = LeaderElector::start(client, config("replica-b"));
    let b_leadership = b.leadership();
    // 100 renewals of 200 ms span ten lease durations of 2 s.
    while skewed.renewals.load(Ordering::SeqCst) < 100 {
        assert!(
            !b_leadership.is_leader(),
            "two leaders: the candidate leads while the holder (clock {skew_secs:+} s) renews"
        );
        assert!(
            !skewed.lost.load(Ordering::SeqCst),
            "the lease was taken from a live holder with a clock {skew_secs:+} s off"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(holder(&leases).await.as_deref(), Some(SKEWED));

    // The holder stops renewing (a crash): a real expiry hands the lease over.
    skewed.stop.store(true, Ordering::SeqCst);
    skewed.task.await.unwrap();
    eventually(
        "the candidate leads after the holder's lease expired",
        || async { b_leadership.is_leader() },
    )
    .await;
    let lease = leases.get("peerd-leader").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(lease.lease_transitions, Some(1));
    b.release().await;
}

#[tokio::test]
async fn a_holder_with_a_clock_10s_behind_keeps_its_lease() {
    a_skewed_holder_is_never_joined_by_a_second_leader(-10).await;
}

#[tokio::test]
async fn a_holder_with_a_clock_10s_ahead_keeps_its_lease_and_still_expires() {
    a_skewed_holder_is_never_joined_by_a_second_leader(10).await;
}
