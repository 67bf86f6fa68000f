//! `cargo xtask bench kube`: the flat-sync executor against the emulated API server over
//! loopback HTTP. 10,000 flat WorkloadEntries created from scratch, then 1% churn (100
//! pods change address): time to converge and number of API requests. Target: one write
//! per changed object, none otherwise (the baseline is the number of changed objects).
//! Then the input builder itself: its rebuild after 1% churn, reusing what the previous
//! build made, against a build from scratch of the same store (the baseline).

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerd::config;
use peerd::kube::apply::{ExecutorConfig, FlatSyncExecutor, PeerSyncState, SyncInput};
use peerd::kube::client::{ClientSource, connect};
use peerd::kube::flat_input::{FlatEntryMemo, InputBuilder};
use peerd::kube::flatsync::{
    GlobalService, ImportedWorkload, PeerExports, PeerNetworkMode, desired_objects,
};
use peerd::kube::leader::Leadership;
use peerd::proto::istio::workload;
use peerd::store::Store;
use peerd::xds::resource::Resource;
use peerd::xds::types::ResourceType;
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
    rebuild_rows(&mut report, pods, churned)?;
    report.emit(&args)?;
    emulator.shutdown().await;
    Ok(())
}

/// Pod `i` of peer c2 at address generation `generation`, as the store holds it.
fn pod_resource(i: usize, generation: u32) -> anyhow::Result<Arc<Resource>> {
    let n = u32::try_from(i)? + generation * 100_000;
    let service = format!("default/svc{}.default.mesh.internal", i % SERVICES);
    Ok(Arc::new(Resource::workload(&workload::Workload {
        uid: format!("c2//Pod/default/pod{i}"),
        name: format!("pod{i}"),
        namespace: "default".into(),
        network: "shared".into(),
        service_account: "default".into(),
        addresses: vec![Ipv4Addr::from(0x0a00_0000 + n).octets().to_vec()],
        services: [(service, workload::PortList::default())].into(),
        ..Default::default()
    })?))
}

fn service_resource(i: usize) -> anyhow::Result<Arc<Resource>> {
    Ok(Arc::new(Resource::service(&workload::Service {
        name: format!("svc{i}"),
        namespace: "default".into(),
        hostname: format!("svc{i}.default.mesh.internal"),
        ports: vec![workload::Port {
            service_port: 80,
            target_port: 8080,
            ..Default::default()
        }],
        ..Default::default()
    })?))
}

fn builder(store: &Arc<Store>) -> InputBuilder {
    InputBuilder {
        store: Arc::clone(store),
        peers: vec![config::Peer {
            cluster: "c2".into(),
            network: "shared".into(),
            address: config::PeerAddress::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port: 15012,
            hbone_port: 15008,
            trust_domain: "c2.local".into(),
            server_identity: None,
            preferred_data_plane_service_type: config::DataPlaneServiceType::LoadBalancer,
            max_resources: config::defaults::PEER_MAX_RESOURCES,
            max_bytes: config::defaults::PEER_MAX_BYTES,
        }],
        local_network: "shared".into(),
        flat_networks: true,
        control_namespace: "istio-system".into(),
        memo: FlatEntryMemo::default(),
    }
}

/// The flat-sync input is rebuilt whole after every burst of changes: what one rebuild
/// after 1% churn costs with the builder's memo, against a build from scratch.
fn rebuild_rows(report: &mut Report, pods: usize, churned: usize) -> anyhow::Result<()> {
    const ROUNDS: u32 = 11;
    let store = Store::new();
    let mut initial = (0..SERVICES)
        .map(service_resource)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for i in 0..pods {
        initial.push(pod_resource(i, 0)?);
    }
    store.apply("c2", ResourceType::Address, initial, vec![]);
    let present: BTreeSet<String> = ["c2".to_string()].into();
    let mut reusing = builder(&store);
    let entries = reusing.build(&present).desired.workload_entries.len();
    let (mut warm, mut fresh) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let changed = (0..churned)
            .map(|i| pod_resource(i, round))
            .collect::<anyhow::Result<Vec<_>>>()?;
        store.apply("c2", ResourceType::Address, changed, vec![]);
        let started = Instant::now();
        let input = reusing.build(&present);
        warm.push(started.elapsed());
        anyhow::ensure!(
            input.desired.workload_entries.len() == entries,
            "the rebuild lost entries"
        );
        let started = Instant::now();
        let scratch = builder(&store).build(&present);
        fresh.push(started.elapsed());
        anyhow::ensure!(
            format!("{:?}", scratch.desired) == format!("{:?}", input.desired),
            "the rebuild differs from a build from scratch"
        );
    }
    let median = |mut times: Vec<Duration>| {
        times.sort();
        times[times.len() / 2].as_secs_f64() * 1000.0
    };
    let fresh = median(fresh);
    report.row(
        "input rebuild after 1% churn (median of 11)",
        median(warm),
        "ms",
        Goal::Below(fresh),
        Some(fresh),
    );
    Ok(())
}
