//! The fault catalogue: each fault is a timed script on the running federation, followed
//! by a wait for convergence. Cluster roles: cluster-1 is "local" (flat with cluster-2;
//! it writes WorkloadEntries for cluster-2's pods), cluster-2 the flat peer, cluster-3
//! the large multi-network peer (the big sync).
//!
//! Owns what each fault does and its timings; the checks are the observer's.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::emulator::FaultRequest;

use super::driver::Driver;
use super::stuck;

const LOCAL: usize = 0;
const FLAT_PEER: usize = 1;
const BIG_PEER: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    PartitionShort,
    PartitionLong,
    PeerKillMidSync,
    LocalKillMidSync,
    LocalKillPeerDown,
    PeerFlap,
    Api5xx,
    ApiWatchExpired,
    ApiSlow,
    StuckZtunnel,
    RotateCredentials,
    UnlinkRelink,
}

impl Fault {
    /// Catalogue order (the issue's).
    pub const ALL: [Fault; 12] = [
        Fault::PartitionShort,
        Fault::PartitionLong,
        Fault::PeerKillMidSync,
        Fault::LocalKillMidSync,
        Fault::LocalKillPeerDown,
        Fault::PeerFlap,
        Fault::Api5xx,
        Fault::ApiWatchExpired,
        Fault::ApiSlow,
        Fault::StuckZtunnel,
        Fault::RotateCredentials,
        Fault::UnlinkRelink,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::PartitionShort => "partition < grace",
            Fault::PartitionLong => "partition > grace",
            Fault::PeerKillMidSync => "peer peerd SIGKILL mid-sync",
            Fault::LocalKillMidSync => "local peerd SIGKILL mid-sync",
            Fault::LocalKillPeerDown => "local SIGKILL, peer down",
            Fault::PeerFlap => "peer flapping 1s",
            Fault::Api5xx => "API 5xx (50%)",
            Fault::ApiWatchExpired => "API watches expire (410)",
            Fault::ApiSlow => "API answers after 5s",
            Fault::StuckZtunnel => "ztunnel never reads",
            Fault::RotateCredentials => "rotate certs + token",
            Fault::UnlinkRelink => "unlink + relink",
        }
    }
}

/// Durations of a run's faults.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub grace: Duration,
    pub short_partition: Duration,
    pub long_partition: Duration,
    pub flap_for: Duration,
    pub api_fault_for: Duration,
    pub stuck_for: Duration,
    pub unlinked_for: Duration,
    /// How long after a mid-sync restart the process is killed again.
    pub mid_sync: Duration,
    pub converge_timeout: Duration,
}

impl Timing {
    pub fn quick() -> Timing {
        Timing {
            grace: Duration::from_secs(10),
            short_partition: Duration::from_secs(4),
            // Past grace from the peers' side: a silently dropped stream is noticed by the
            // HTTP/2 keepalive (30 s + 10 s, peerd's defaults), and the grace runs from then.
            long_partition: Duration::from_secs(55),
            flap_for: Duration::from_secs(10),
            api_fault_for: Duration::from_secs(8),
            stuck_for: Duration::from_secs(8),
            unlinked_for: Duration::from_secs(5),
            mid_sync: Duration::from_millis(400),
            converge_timeout: Duration::from_secs(90),
        }
    }

    pub fn full() -> Timing {
        Timing {
            grace: Duration::from_secs(20),
            short_partition: Duration::from_secs(8),
            // Keepalive detection (up to 40 s) + grace (20 s) + margin; see `quick`.
            long_partition: Duration::from_secs(75),
            flap_for: Duration::from_secs(60),
            api_fault_for: Duration::from_secs(20),
            stuck_for: Duration::from_secs(30),
            unlinked_for: Duration::from_secs(15),
            mid_sync: Duration::from_millis(1500),
            converge_timeout: Duration::from_secs(300),
        }
    }

    /// What `fault` does with these timings (one line, for the table's legend).
    pub fn describe(&self, fault: Fault) -> String {
        let s = |d: Duration| format!("{:.0}s", d.as_secs_f64());
        match fault {
            Fault::PartitionShort => format!(
                "cluster-2's 15012 dropped both ways (nftables) for {} (grace {})",
                s(self.short_partition),
                s(self.grace)
            ),
            Fault::PartitionLong => format!(
                "cluster-2's 15012 dropped both ways for {} (grace {}): peers withdraw it, then resync",
                s(self.long_partition),
                s(self.grace)
            ),
            Fault::PeerKillMidSync => format!(
                "cluster-3's peerd (the big peer) SIGKILLed, restarted, SIGKILLed again {:.1}s after it listens (peers mid-resync), restarted",
                self.mid_sync.as_secs_f64()
            ),
            Fault::LocalKillMidSync => format!(
                "cluster-1's peerd SIGKILLed, restarted, SIGKILLed again {:.1}s after it listens (mid-sync), restarted",
                self.mid_sync.as_secs_f64()
            ),
            Fault::LocalKillPeerDown => {
                "cluster-3's peerd SIGKILLed; then cluster-1's SIGKILLed and restarted twice as above; then cluster-3 restarted".to_string()
            }
            Fault::PeerFlap => format!(
                "cluster-2's 15012 dropped and restored every second for {}",
                s(self.flap_for)
            ),
            Fault::Api5xx => format!(
                "cluster-1's API server fails 50% of requests with 503 for {}",
                s(self.api_fault_for)
            ),
            Fault::ApiWatchExpired => format!(
                "cluster-1's API server closes every watch and answers every resume with 410 Expired for {}",
                s(self.api_fault_for)
            ),
            Fault::ApiSlow => format!(
                "cluster-1's API server answers every request after 5s for {}",
                s(self.api_fault_for)
            ),
            Fault::StuckZtunnel => format!(
                "a ztunnel-like client subscribes to cluster-1's peerd and never reads, for {}",
                s(self.stuck_for)
            ),
            Fault::RotateCredentials => {
                "every peerd and istiod certificate re-issued and the bearer token replaced, streams open".to_string()
            }
            Fault::UnlinkRelink => format!(
                "`peerd unlink` cluster-1/cluster-3 during churn, relinked {} later",
                s(self.unlinked_for)
            ),
        }
    }
}

/// One line of the chaos table.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRow {
    pub fault: String,
    pub what: String,
    /// Seconds from the lift to the exact expected state; `None` if never reached.
    pub recovery_seconds: Option<f64>,
    pub violations: usize,
    /// Condition status changes seen from injection to the end of recovery.
    pub condition_changes: usize,
    /// Peer workloads withdrawn from a downstream (past grace or unlinked).
    pub withdrawn: usize,
    /// The first violation (or failure) of this fault, shortened.
    pub detail: String,
}

/// Runs `fault`: inject, hold, lift, wait for convergence; checks (c) over its window.
pub async fn run(driver: &mut Driver, fault: Fault, timing: &Timing) -> FaultRow {
    let before = driver.obs.violations.len();
    let withdrawn_before = driver.obs.withdrawn;
    let start = Instant::now();
    driver.obs.set_fault_active(true);
    eprintln!(
        "chaos: [{:>6.1}s] fault: {} — {}",
        driver.obs.elapsed_seconds(),
        fault.name(),
        timing.describe(fault)
    );
    let lifted = inject_and_lift(driver, fault, timing).await;
    let lift = Instant::now();
    let mut recovery = None;
    match lifted {
        Err(e) => driver.obs.violate(
            "d",
            format!("{}: the fault script failed: {e:#}", fault.name()),
        ),
        Ok(()) => match driver.converge(timing.converge_timeout).await {
            Ok(took) => recovery = Some(took.as_secs_f64()),
            Err(mismatch) => driver.obs.violate(
                "d",
                format!(
                    "{}: not converged {}s after the lift: {mismatch}",
                    fault.name(),
                    timing.converge_timeout.as_secs()
                ),
            ),
        },
    }
    // A peer stays "down" for (a) and (b) until everything resynced: a restarted or
    // reconnected peer is unsynced (and may reach the end of its grace) until then.
    driver.obs.all_up();
    driver.mark_restarted_starts();
    // A little more observation after convergence, so a late flap is seen.
    driver.idle(Duration::from_secs(2)).await;
    driver.obs.set_fault_active(false);
    driver
        .obs
        .check_flapping(fault.name(), start, lift, Instant::now());
    let end = Instant::now();
    let condition_changes = driver
        .obs
        .transitions
        .iter()
        .filter(|t| t.at >= start && t.at <= end)
        .count();
    let new = &driver.obs.violations[before..];
    FaultRow {
        condition_changes,
        withdrawn: driver.obs.withdrawn - withdrawn_before,
        fault: fault.name().to_string(),
        what: timing.describe(fault),
        recovery_seconds: recovery,
        violations: new.len(),
        detail: new
            .first()
            .map(|v| {
                format!(
                    "({}) {}",
                    v.invariant,
                    v.what.chars().take(300).collect::<String>()
                )
            })
            .unwrap_or_default(),
    }
}

async fn inject_and_lift(driver: &mut Driver, fault: Fault, t: &Timing) -> anyhow::Result<()> {
    match fault {
        Fault::PartitionShort | Fault::PartitionLong => {
            let hold = if fault == Fault::PartitionShort {
                t.short_partition
            } else {
                t.long_partition
            };
            driver.obs.peer_down(FLAT_PEER);
            driver.rig.cut(FLAT_PEER)?;
            driver.idle(hold).await;
            driver.rig.heal(FLAT_PEER)?;
        }
        Fault::PeerKillMidSync => {
            kill_restart_twice(driver, BIG_PEER, t).await?;
            until_ready(driver, BIG_PEER, t).await?;
        }
        Fault::LocalKillMidSync => {
            kill_restart_twice(driver, LOCAL, t).await?;
            until_ready(driver, LOCAL, t).await?;
        }
        Fault::LocalKillPeerDown => {
            driver.kill(BIG_PEER);
            driver.idle(Duration::from_secs(1)).await;
            kill_restart_twice(driver, LOCAL, t).await?;
            // The peer comes back as soon as the local peerd is restarted, not once it is
            // ready: its outage is the fault's, not the local peerd's start-up.
            driver.restart(BIG_PEER)?;
            until_ready(driver, LOCAL, t).await?;
            until_ready(driver, BIG_PEER, t).await?;
        }
        Fault::PeerFlap => {
            driver.obs.peer_down(FLAT_PEER);
            let until = Instant::now() + t.flap_for;
            while Instant::now() < until {
                driver.rig.cut(FLAT_PEER)?;
                driver.idle(Duration::from_secs(1)).await;
                driver.rig.heal(FLAT_PEER)?;
                driver.idle(Duration::from_secs(1)).await;
            }
        }
        Fault::Api5xx | Fault::ApiWatchExpired | Fault::ApiSlow => {
            let faults = driver.rig.apis[LOCAL].faults();
            let request = match fault {
                Fault::Api5xx => FaultRequest {
                    fail_status: Some(503),
                    fail_fraction: Some(0.5),
                    ..FaultRequest::default()
                },
                Fault::ApiWatchExpired => FaultRequest {
                    expire_watches: Some(u64::MAX),
                    ..FaultRequest::default()
                },
                _ => FaultRequest {
                    delay_ms: Some(5000),
                    ..FaultRequest::default()
                },
            };
            faults
                .apply_request(&request)
                .map_err(|e| anyhow::anyhow!(e))?;
            driver.idle(t.api_fault_for).await;
            faults.clear();
        }
        Fault::StuckZtunnel => {
            let cancel = driver.rig.cancel.child_token();
            let c = &driver.rig.clusters[LOCAL];
            stuck::hold(
                c.layout.xds(),
                &c.layout.name,
                &driver.rig.token_file,
                &driver.rig.root_cert,
                cancel.clone(),
            )
            .await?;
            driver.idle(t.stuck_for).await;
            cancel.cancel();
        }
        Fault::RotateCredentials => {
            driver.rig.rotate_credentials()?;
            // Reload happens on the processes' own poll; give it a few seconds of churn.
            driver.idle(Duration::from_secs(5)).await;
        }
        Fault::UnlinkRelink => {
            driver.obs.set_unlinked(LOCAL, BIG_PEER, true);
            driver.rig.link_pair("unlink", LOCAL, BIG_PEER).await?;
            driver.idle(t.unlinked_for).await;
            driver.rig.link_pair("link", LOCAL, BIG_PEER).await?;
            driver.obs.forget_pair(LOCAL, BIG_PEER);
            driver.obs.set_unlinked(LOCAL, BIG_PEER, false);
        }
    }
    Ok(())
}

/// SIGKILL `i`'s peerd, restart it, SIGKILL it again `mid_sync` after it listens (while
/// it or its peers are still syncing), restart it.
async fn kill_restart_twice(driver: &mut Driver, i: usize, t: &Timing) -> anyhow::Result<()> {
    driver.kill(i);
    driver.idle(Duration::from_millis(500)).await;
    driver.restart(i)?;
    if !driver.wait_listening(i, t.converge_timeout).await {
        anyhow::bail!("{}'s restarted peerd never listened", driver.name(i));
    }
    driver.idle(t.mid_sync).await;
    driver.kill(i);
    driver.idle(Duration::from_millis(500)).await;
    driver.restart(i)
}

/// Waits until `i`'s restarted peerd is ready. A fault that restarts a peerd lasts until
/// then: a peerd that listens but has not synced its local istiod still refuses its
/// peers, and their conditions may only then (rightly) report the outage; lifting on
/// `listening` would count that report and the recovery as two changes after the lift.
async fn until_ready(driver: &mut Driver, i: usize, t: &Timing) -> anyhow::Result<()> {
    if !driver.wait_ready(i, t.converge_timeout).await {
        anyhow::bail!("{}'s restarted peerd never became ready", driver.name(i));
    }
    Ok(())
}
