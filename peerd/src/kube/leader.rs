//! Leader election on a `coordination.k8s.io/v1` Lease: one writer per cluster.
//!
//! It owns the Lease: acquire (create, or take over once the lease has not changed for
//! leaseDuration), renew every `renew_period`, release on shutdown (so a successor takes
//! over at once). Expiry is judged on this process's monotonic clock, as client-go does:
//! the holder, renewTime and resourceVersion last read, and the local instant they were
//! first seen; the holder's `renewTime` is never compared with our wall clock, so a
//! holder whose clock is skewed neither loses its lease early nor keeps it late. Every Lease write carries the resourceVersion it read,
//! so two replicas can never both win. [`Leadership`] answers "may I write now?" from a
//! local deadline (last successful renewal + lease duration − a safety margin), so a
//! leader that cannot renew stops writing *before* anyone else may take over, and one
//! that sees another holder stops at once. It must never write anything but its Lease.

use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// `<hostname>_<random>` (the pod name in Kubernetes), like client-go's leader election:
/// unique even when every replica runs as pid 1 in its own pod. The default holder
/// identity when `kubernetes.identity` is unset.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "peerd".to_string());
    let suffix: u32 = rand::random();
    format!("{host}_{suffix:08x}")
}

/// Lease timing and names.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's identity (pod name), written as `holderIdentity`.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_period: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: &str, identity: &str) -> LeaderConfig {
        LeaderConfig {
            namespace: namespace.to_string(),
            lease_name: "peerd-leader".to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_period: Duration::from_secs(5),
        }
    }

    /// How long before the lease would expire this replica stops writing: a fifth of the
    /// lease duration, so in-flight requests and a candidate's read latency stay inside
    /// the lease (a candidate starts its wait only once it has read our renewal, after
    /// we sent it).
    fn margin(&self) -> Duration {
        self.lease_duration / 5
    }
}

/// Whether this replica may write, shared with every writer. Cheap to clone and check.
#[derive(Clone)]
pub struct Leadership {
    deadline: watch::Receiver<Option<Instant>>,
}

impl Leadership {
    /// True while this replica holds the lease and its last renewal is recent enough.
    pub fn is_leader(&self) -> bool {
        matches!(*self.deadline.borrow(), Some(until) if Instant::now() < until)
    }

    /// A leadership that is always held: standalone mode, or tests of the writers alone.
    pub fn always() -> Leadership {
        // A dropped sender leaves the last value readable: the deadline never changes.
        let (_tx, rx) = watch::channel(Some(
            Instant::now() + Duration::from_secs(100 * 365 * 86400),
        ));
        Leadership { deadline: rx }
    }

    /// A leadership that is never held (a follower; tests).
    pub fn never() -> Leadership {
        let (_tx, rx) = watch::channel(None);
        Leadership { deadline: rx }
    }

    /// Waits until leadership is (again) held.
    pub async fn acquired(&mut self) {
        loop {
            if self.is_leader() {
                return;
            }
            let deadline_known = self.deadline.borrow().is_some();
            if deadline_known {
                // Held but expired locally: the elector will update it or drop it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            } else if self.deadline.changed().await.is_err() {
                // Elector gone: never leader again.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A running elector. Dropping it stops renewing without releasing (like a crash).
pub struct LeaderElector {
    leadership: Leadership,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl LeaderElector {
    /// Starts campaigning for the lease in the background.
    pub fn start(client: Client, config: LeaderConfig) -> LeaderElector {
        let (deadline_tx, deadline_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let lease = LeaseCampaign {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        };
        let task = tokio::spawn(lease.run(deadline_tx, stop_rx));
        LeaderElector {
            leadership: Leadership {
                deadline: deadline_rx,
            },
            stop: stop_tx,
            task: Some(task),
        }
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Stops writing at once, then releases the lease (if held) so a successor needs not
    /// wait for it to expire.
    pub async fn release(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LeaderElector {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct LeaseCampaign {
    api: Api<Lease>,
    config: LeaderConfig,
    /// The lease as last read, and when this process first saw it so.
    observed: Option<Observed>,
}

/// What identifies one renewal of the lease: any change of these is a sign of life of
/// its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LeaseRecord {
    holder: String,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
}

struct Observed {
    record: LeaseRecord,
    /// Local monotonic time at which `record` was first read.
    at: Instant,
}

enum Attempt {
    /// We hold the lease (renewed at the given local instant).
    Held(Instant),
    /// Someone else holds a live lease.
    Other(String),
}

impl LeaseCampaign {
    async fn run(
        mut self,
        deadline: watch::Sender<Option<Instant>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut held = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Held(at)) => {
                    if !held {
                        tracing::info!(identity = %self.config.identity, lease = %self.config.lease_name, "acquired the leader lease");
                    }
                    held = true;
                    let until = at + self.config.lease_duration - self.config.margin();
                    let _ = deadline.send(Some(until));
                }
                Ok(Attempt::Other(holder)) => {
                    if held {
                        tracing::warn!(%holder, "lost the leader lease");
                    }
                    held = false;
                    let _ = deadline.send(None);
                }
                Err(err) => {
                    // Keep the current deadline: it expires on its own if renewals keep
                    // failing, which stops writes before the lease can pass to another.
                    tracing::warn!(error = %format!("{err:#}"), "leader lease renewal failed");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.renew_period) => {}
                _ = stop.changed() => break,
            }
        }
        let _ = deadline.send(None);
        if held && let Err(err) = self.release().await {
            tracing::warn!(error = %format!("{err:#}"), "releasing the leader lease failed");
        }
    }

    async fn try_acquire_or_renew(&mut self) -> anyhow::Result<Attempt> {
        let name = &self.config.lease_name.clone();
        let started = Instant::now();
        let now = MicroTime(Timestamp::now());
        let duration_secs =
            i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let current = self
            .api
            .get_opt(name)
            .await
            .with_context(|| format!("reading Lease {name}"))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held(started)),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    Ok(Attempt::Other("(raced on create)".to_string()))
                }
                Err(err) => Err(err).with_context(|| format!("creating Lease {name}")),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.config.identity;
        let record = LeaseRecord {
            holder: holder.clone(),
            renew_time: spec.renew_time.clone(),
            resource_version: lease.metadata.resource_version.clone(),
        };
        let observed_at = self.observe(record, Instant::now());
        let released = holder.is_empty() || spec.renew_time.is_none();
        if !ours && !released && !lease_expired(&spec, observed_at, Instant::now()) {
            return Ok(Attempt::Other(holder));
        }
        lease.spec = Some(claimed_spec(
            &spec,
            &self.config.identity,
            now,
            duration_secs,
        ));
        // `replace` sends our resourceVersion: a concurrent writer makes this a 409.
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Held(started)),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Attempt::Other("(concurrent update)".to_string()))
            }
            Err(err) => Err(err).with_context(|| format!("updating Lease {name}")),
        }
    }

    /// Records the lease as read at `now`; returns when this process first saw it in
    /// this state (an unchanged record keeps its first sighting).
    fn observe(&mut self, record: LeaseRecord, now: Instant) -> Instant {
        match &self.observed {
            Some(seen) if seen.record == record => seen.at,
            _ => {
                self.observed = Some(Observed { record, at: now });
                now
            }
        }
    }

    async fn release(&self) -> anyhow::Result<()> {
        let name = &self.config.lease_name;
        let Some(mut lease) = self.api.get_opt(name).await.context("reading Lease")? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        self.api
            .replace(name, &PostParams::default(), &lease)
            .await
            .context("releasing Lease")?;
        tracing::info!(identity = %self.config.identity, "released the leader lease");
        Ok(())
    }
}

/// The spec `identity` writes to claim a lease read as `spec`: a renewal (ours: only the
/// renew time and duration change) or a takeover (new holder and acquire time, one more
/// transition, saturating).
pub fn claimed_spec(
    spec: &LeaseSpec,
    identity: &str,
    now: MicroTime,
    duration_secs: i32,
) -> LeaseSpec {
    let mut claimed = spec.clone();
    claimed.renew_time = Some(now.clone());
    claimed.lease_duration_seconds = Some(duration_secs);
    if spec.holder_identity.as_deref().unwrap_or_default() != identity {
        claimed.holder_identity = Some(identity.to_string());
        claimed.acquire_time = Some(now);
        claimed.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    claimed
}

/// A held lease is free once it has not changed for its leaseDuration since this
/// process first saw it in its current state (`observed_at`, local monotonic time). The
/// holder's renewTime is only a change marker: comparing it with our wall clock would
/// let a skewed clock hand the lease to two replicas.
/// Public (with [`claimed_spec`]) so the fuzz target checks both on arbitrary Leases
/// read from the API server.
pub fn lease_expired(spec: &LeaseSpec, observed_at: Instant, now: Instant) -> bool {
    let seconds = u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
    now.saturating_duration_since(observed_at) >= Duration::from_secs(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some("other".into()),
            lease_duration_seconds: Some(seconds),
            // Far in the past on our clock: must not matter.
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        }
    }

    #[test]
    fn expiry_counts_from_the_local_sighting_not_the_holders_renew_time() {
        let seen = Instant::now();
        assert!(!lease_expired(&spec(15), seen, seen));
        assert!(!lease_expired(
            &spec(15),
            seen,
            seen + Duration::from_secs(14)
        ));
        assert!(lease_expired(
            &spec(15),
            seen,
            seen + Duration::from_secs(15)
        ));
    }
}
