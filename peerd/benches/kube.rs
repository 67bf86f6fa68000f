//! `cargo xtask bench kube`: the flat-sync executor against the emulated API server over
//! loopback HTTP. 10,000 flat WorkloadEntries created from scratch, then 1% churn (100
//! pods change address): time to converge and number of API requests. Target: one write
//! per changed object, none otherwise (the baseline is the number of changed objects).

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use peerd::kube::apply::{ExecutorConfig, FlatSyncExecutor, PeerSyncState, SyncInput};
use peerd::kube::client::{ClientSource, connect};
use peerd::kube::flatsync::{
    GlobalService, ImportedWorkload, PeerExports, PeerNetworkMode, desired_objects,
};
use peerd::kube::leader::Leadership;
use peerd_testbed::emulator::{Emulator, EmulatorOptions};
use support::{Args, Goal, Report};

const SERVICES: usize = 50;

fn peer(pods: usize, churn_generation: u32, churned: usize) -> PeerExports {
    let services = (0..SERVICES)
        .map(|i| GlobalService {
            namespace: "default".into(),
            name: format!("svc{i}"),
            ports: vec![],
        })
        .collect();
    let workloads = (0..pods)
        .map(|i| {
            let bump = if i < churned { churn_generation } else { 0 };
            let n = u32::try_from(i).unwrap_or(0) + bump * 100_000;
            ImportedWorkload {
                name: format!("pod{i}"),
                namespace: "default".into(),
                uid: format!("c2//Pod/default/pod{i}"),
                address: Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))),
                network: "shared".into(),
                service_account: "default".into(),
                locality: String::new(),
                services: BTreeSet::from([("default".to_string(), format!("svc{}", i % SERVICES))]),
            }
        })
        .collect();
    PeerExports {
        cluster: "c2".into(),
        network: "shared".into(),
        mode: PeerNetworkMode::Flat,
        workloads,
        services,
    }
}

// Targets are "at most the baseline": `Goal::Below` is strict, hence baseline + 1.
fn input(pods: usize, generation: u32, churned: usize) -> SyncInput {
    SyncInput {
        desired: desired_objects("istio-system", &[peer(pods, generation, churned)]),
        peers: vec![PeerSyncState {
            cluster: "c2".into(),
            fully_synced: true,
        }],
    }
}

async fn converge(exec: &mut FlatSyncExecutor, input: &SyncInput) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for _ in 0..100 {
        let report = exec.sync(input).await;
        if report.converged() && report.applied.is_empty() && report.deleted.is_empty() {
            return Ok(started.elapsed());
        }
    }
    anyhow::bail!("did not converge")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pods = if args.quick { 1_000 } else { 10_000 };
    let churned = pods / 100;
    let emulator = Emulator::start(
        "127.0.0.1:0".parse()?,
        EmulatorOptions {
            history_window: 4 * pods,
            ..Default::default()
        },
    )
    .await?;
    let client = connect(
        &ClientSource::Url(emulator.url().to_string()),
        "istio-system",
    )
    .await?;
    let mut exec = FlatSyncExecutor::start(
        client,
        ExecutorConfig::new("istio-system"),
        Leadership::always(),
    );
    exec.ready().await?;

    let mut report = Report::new(
        "kube",
        format!("{pods} flat WorkloadEntries, {churned} churned"),
    );
    let initial = input(pods, 0, 0);
    let objects =
        (initial.desired.workload_entries.len() + initial.desired.service_entries.len()) as f64;
    emulator.reset_counters();
    let took = converge(&mut exec, &initial).await?;
    let counts = emulator.counters();
    report.row(
        "from scratch: time to converge",
        took.as_secs_f64(),
        "s",
        Goal::None,
        None,
    );
    report.row(
        "from scratch: writes",
        counts.writes() as f64,
        "requests",
        Goal::Below(objects + 1.0),
        Some(objects),
    );
    report.row(
        "from scratch: all requests",
        (counts.by_verb.values().sum::<u64>()) as f64,
        "requests",
        Goal::None,
        Some(objects),
    );

    emulator.reset_counters();
    let steady = converge(&mut exec, &initial).await?;
    report.row(
        "steady state: writes",
        emulator.counters().writes() as f64,
        "requests",
        Goal::Below(1.0),
        Some(0.0),
    );
    report.row(
        "steady state: pass time",
        steady.as_secs_f64() * 1000.0,
        "ms",
        Goal::None,
        None,
    );

    let churn = input(pods, 1, churned);
    emulator.reset_counters();
    let took = converge(&mut exec, &churn).await?;
    let counts = emulator.counters();
    // Changed addresses keep their names (same services, same hash): one apply each.
    report.row(
        "1% churn: time to converge",
        took.as_secs_f64() * 1000.0,
        "ms",
        Goal::None,
        None,
    );
    report.row(
        "1% churn: writes",
        counts.writes() as f64,
        "requests",
        Goal::Below(churned as f64 + 1.0),
        Some(churned as f64),
    );
    report.emit(&args)?;
    emulator.shutdown().await;
    Ok(())
}
