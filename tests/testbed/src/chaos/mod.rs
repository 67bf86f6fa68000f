//! `peerd-sandbox chaos` and `peerd-sandbox soak`: the federation under scripted faults,
//! judged by an independent observer (see `observer`), driven by `cargo xtask chaos` /
//! `cargo xtask soak`, which build the release binaries and run this inside a network
//! namespace of its own.
//!
//! - `rig`: three sandbox clusters with real release `peerd` processes, a short grace;
//! - `observer`: the invariants (a)–(d) from downstream clients and API-server reads;
//! - `driver`: ticks, (e) unexpected exits, process figures;
//! - `catalogue`: the faults and their timings; `partition`: nftables partitions;
//!   `stuck`: the ztunnel that never reads;
//! - `soak`: the long run with churn and a fault every interval; `report`: the tables.
//!
//! Owns orchestration of test processes only; never touches anything outside its own
//! network namespace, state dir and nft table.

pub mod catalogue;
pub mod driver;
pub mod node_path;
pub mod observer;
pub mod partition;
pub mod procstat;
pub mod report;
pub mod rig;
pub mod soak;
pub mod stuck;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use catalogue::{Fault, FaultRow, Timing};
use driver::Driver;
use observer::Observer;
use rig::{Rig, RigOptions};

#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The CI subset with shorter timings and a smaller big sync.
    pub quick: bool,
    /// Only these faults (catalogue names as printed, matched by substring).
    pub only: Vec<String>,
    pub state_dir: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub seed: u64,
}

/// The faults `--quick` runs (every kind of fault, the long ones shortened).
pub const QUICK: [Fault; 12] = Fault::ALL;

/// Workloads per cluster: cluster-3 is the big peer.
fn workloads(quick: bool) -> Vec<usize> {
    if quick {
        vec![300, 300, 5_000]
    } else {
        vec![1_000, 1_000, 100_000]
    }
}

pub fn state_dir(given: &Option<PathBuf>, what: &str) -> PathBuf {
    given.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("peerd-{what}-{}", std::process::id()))
    })
}

/// Starts the rig and the observer and waits for the first full convergence.
pub async fn start(options: &RigOptions, first_sync: Duration) -> anyhow::Result<Driver> {
    let started = Instant::now();
    println!(
        "chaos: state in {}; clusters of {:?} workloads, {} changes/s each, grace {}s",
        options.state_dir.display(),
        options.workloads,
        options.churn_per_sec,
        options.grace.as_secs()
    );
    let rig = Rig::start(options).await?;
    let obs = Observer::start(&rig, started)?;
    let mut driver = Driver::new(rig, obs, started);
    match driver.converge(first_sync).await {
        Ok(took) => println!(
            "chaos: first sync converged after {:.1}s",
            started.elapsed().as_secs_f64().max(took.as_secs_f64())
        ),
        Err(mismatch) => {
            let logs = driver.rig.state_dir.display().to_string();
            driver.rig.shutdown().await;
            bail!("the federation never converged at start ({mismatch}); logs in {logs}");
        }
    }
    driver.mark_proc_start();
    Ok(driver)
}

/// The faults of `from` whose name contains one of `only` (all of them when `only` is
/// empty), in order; an error when none does.
pub fn selected(from: &[Fault], only: &[String]) -> anyhow::Result<Vec<Fault>> {
    let faults: Vec<Fault> = from
        .iter()
        .copied()
        .filter(|f| only.is_empty() || only.iter().any(|o| f.name().contains(o.as_str())))
        .collect();
    if faults.is_empty() {
        bail!("--only {only:?} matches no fault");
    }
    Ok(faults)
}

pub async fn run_chaos(options: ChaosOptions) -> anyhow::Result<()> {
    let timing = if options.quick {
        Timing::quick()
    } else {
        Timing::full()
    };
    let faults = selected(
        if options.quick { &QUICK } else { &Fault::ALL },
        &options.only,
    )?;
    let rig_options = RigOptions {
        workloads: workloads(options.quick),
        services_per_cluster: if options.quick { 40 } else { 400 },
        churn_per_sec: 5.0,
        grace: timing.grace,
        state_dir: state_dir(&options.state_dir, "chaos"),
        seed: options.seed,
        api_events_kept: None,
    };
    let mut driver = start(&rig_options, timing.converge_timeout).await?;
    let run_started = Instant::now();
    let mut rows: Vec<FaultRow> = Vec::new();
    for fault in faults {
        let row = catalogue::run(&mut driver, fault, &timing).await;
        eprintln!(
            "chaos: {} → recovery {}, {} violation(s)",
            row.fault,
            row.recovery_seconds
                .map_or("never".to_string(), |s| format!("{s:.1}s")),
            row.violations
        );
        rows.push(row);
    }
    let violations = driver.obs.violations.clone();
    let nacks = driver.obs.nacks() + report::node_nacks(&driver.rig);
    let state = driver.rig.state_dir.clone();
    driver.rig.shutdown().await;
    let table = report::chaos_table(&rows, nacks, run_started.elapsed());
    println!("{table}");
    if let Some(path) = &options.json {
        let json = serde_json::json!({
            "quick": options.quick,
            "timing": timing,
            "faults": rows,
            "violations": violations,
            "nacks": nacks,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !violations.is_empty() || nacks > 0 {
        bail!(
            "{} invariant violation(s), {nacks} NACK(s); logs in {}",
            violations.len(),
            state.display()
        );
    }
    if options.state_dir.is_none() {
        let _ = std::fs::remove_dir_all(&state);
    }
    Ok(())
}
