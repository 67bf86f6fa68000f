//! `cargo xtask bench xds`: the xDS data path at scale, through the real daemon.
//!
//! A simulated istiod (in this process) serves N workloads + M services; the real `peerd`
//! binary (a child process, so its RSS and CPU are its own) syncs them and serves them to
//! a ztunnel-like client (in this process). Figures: time to a full downstream sync,
//! propagation latency of single changes at a fixed rate (source apply → client receive),
//! peerd RSS, and the floor measured in the same run: the same resources only
//! decoded + encoded in a tight loop.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prost::Message;

use peerd::identity::tls::{ClientTlsOptions, ServerIdentity, client_config, load_roots};
use peerd::proto::envoy::service::discovery::v3 as discovery;
use peerd::proto::istio::workload;
use peerd::view::View;
use peerd::xds::resource::{Resource, Summary};
use peerd::xds::types::ResourceType;
use peerd_testbed::pki::{LeafSpec, Pki};
use peerd_testbed::sim::istiod::{SimIstiod, SimIstiodOptions, serve_xds};
use support::{Args, Goal, Report, percentile};

/// The simulator and the client in this process are measurement apparatus, on the same
/// allocator as peerd: glibc's malloc/free of their 112k-resource messages showed in
/// profiles of the sync.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The client's bookkeeping is measurement apparatus: a fast hash keeps it from
/// weighing on the figures (SipHash of 112k names showed in profiles).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WORKLOAD_NODE_FIELD: u32 = 9;

struct Size {
    quick: bool,
    /// Initial syncs measured, each with a fresh peerd.
    sync_trials: usize,
    workloads: usize,
    services: usize,
    change_rate: f64,
    change_seconds: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = if args.quick {
        Size {
            quick: true,
            sync_trials: 1,
            workloads: 10_000,
            services: 1_000,
            change_rate: 1000.0,
            change_seconds: 3.0,
        }
    } else {
        Size {
            quick: false,
            sync_trials: 3,
            workloads: 100_000,
            services: 10_000,
            change_rate: 1000.0,
            change_seconds: 10.0,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&size))?;
    report.emit(&args)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Decodes and re-encodes every resource once, as tightly as possible: the least work any
/// proxy of these resources must do. Returns the seconds it took.
fn floor_decode_encode(view: &View) -> f64 {
    let snapshot = view.snapshot();
    let started = Instant::now();
    let mut bytes = 0usize;
    for kind in ResourceType::ALL {
        for r in snapshot.resources(kind).values() {
            let out = match kind {
                ResourceType::Address => {
                    workload::Address::decode(r.body.as_ref()).map(|a| a.encode_to_vec())
                }
                ResourceType::Authorization => {
                    peerd::proto::istio::security::Authorization::decode(r.body.as_ref())
                        .map(|a| a.encode_to_vec())
                }
            };
            bytes += out.map(|v| v.len()).unwrap_or(0);
        }
    }
    std::hint::black_box(bytes);
    started.elapsed().as_secs_f64()
}

struct Peerd {
    child: Child,
    xds: SocketAddr,
}

impl Drop for Peerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_peerd(
    dir: &std::path::Path,
    sim: SocketAddr,
    istiod_token: &std::path::Path,
) -> anyhow::Result<Peerd> {
    let xds = SocketAddr::new(LOCALHOST, free_port()?);
    let config = format!(
        r#"
cluster: cluster-1
network: net1
sandboxMode: true
listeners: {{ xds: "{xds}", metrics: "127.0.0.1:0", health: "127.0.0.1:0", debug: "127.0.0.1:0" }}
xds:
  tls: {{ certChain: peerd/cert-chain.pem, key: peerd/key.pem }}
  auth: {{ tokenFile: ztunnel-token }}
# The xDS path only: kernel probe loading (BPF verification, at start) is measured
# by `cargo xtask bench probes`, and with no peers there is nothing to probe.
probe: {{ enabled: false }}
upstreams:
  - name: cluster-1
    address: "{sim}"
    serverName: istiod.istio-system.svc
    rootCa: pki/root-cert.pem
    tokenFile: "{}"
"#,
        istiod_token.display()
    );
    std::fs::write(dir.join("peerd.yaml"), config)?;
    // `PEERD_BENCH_WRAPPER="heaptrack -o /tmp/peerd"` (or any command prefix) runs peerd
    // under a profiler; the RSS and CPU rows then measure the wrapper, not peerd.
    let wrapper = std::env::var("PEERD_BENCH_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(env!("CARGO_BIN_EXE_peerd"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_peerd")),
    };
    let child = command
        .args(["run", "--config"])
        .arg(dir.join("peerd.yaml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting peerd")?;
    Ok(Peerd { child, xds })
}

/// What the ztunnel-like client saw: what it holds, and (once `timed`) when each
/// (name, version) arrived.
#[derive(Default)]
struct Seen {
    held: [usize; 2],
    names: [FastSet<String>; 2],
    /// Arrival times are recorded only for the propagation phase: nothing reads those of
    /// the initial sync, and recording 112k of them would weigh on its figure.
    timed: bool,
    arrivals: FastMap<(String, String), Instant>,
}

async fn downstream(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    token: String,
    seen: Arc<Mutex<Seen>>,
) -> anyhow::Result<()> {
    let (tx, mut responses) =
        support::downstream::subscribe(addr, "127.0.0.1", tls, &token).await?;
    while let Some(r) = responses.message().await? {
        let now = Instant::now();
        let Some(kind) = ResourceType::from_type_url(&r.type_url) else {
            bail!("unexpected type {}", r.type_url)
        };
        {
            let mut seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let i = kind.index();
            for name in &r.removed_resources {
                seen.names[i].remove(name);
            }
            let timed = seen.timed;
            seen.names[i].reserve(r.resources.len());
            for res in r.resources {
                if timed {
                    seen.arrivals
                        .insert((res.name.clone(), res.version.clone()), now);
                }
                seen.names[i].insert(res.name);
            }
            seen.held[i] = seen.names[i].len();
        }
        tx.send(discovery::DeltaDiscoveryRequest {
            type_url: r.type_url,
            response_nonce: r.nonce,
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}

async fn run(size: &Size) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::load_or_create(&dir.path().join("pki"), "bench root")?;
    let ca = pki.cluster_ca("cluster-1")?;
    let sim_addr = SocketAddr::new(LOCALHOST, free_port()?);
    let mut options = SimIstiodOptions::new("cluster-1", sim_addr, &dir.path().join("istiod"));
    options.cluster_index = Some(1);
    options.network = "net1".into();
    options.workloads = size.workloads;
    options.services = size.services;
    options.churn_per_sec = 0.0;
    let sim = SimIstiod::new_with_ca(options, &ca)?;
    let view = Arc::clone(&sim.view);
    let istiod_token = sim.tls.token_path.clone();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(sim.serve(shutdown, |ctx| serve_xds(ctx, Default::default())));

    ca.issue(&LeafSpec::server("peerd").with_ip(LOCALHOST))?
        .write_to(&dir.path().join("peerd"))?;
    let token = "bench-token".to_string();
    std::fs::write(dir.path().join("ztunnel-token"), &token)?;
    let roots = load_roots(&pki.root_cert_path())?;
    let tls = client_config(&ClientTlsOptions::new(
        rustls::RootCertStore::clone(&roots),
        ServerIdentity::Name,
    ))?;

    let snapshot = view.snapshot();
    let want = [
        snapshot.len(ResourceType::Address),
        snapshot.len(ResourceType::Authorization),
    ];
    let total: usize = want.iter().sum();

    // Floor: decode + encode of the same resources, best of three.
    let floor = (0..3)
        .map(|_| floor_decode_encode(&view))
        .fold(f64::INFINITY, f64::min);

    // Initial sync: peerd starts, syncs from the simulator, serves the client. Repeated
    // with a fresh peerd (this machine's speed varies from run to run): the row is the
    // median, the slowest is shown beside it. The last peerd stays for the changes.
    let mut syncs = Vec::with_capacity(size.sync_trials);
    let mut sync_cpu = Vec::with_capacity(size.sync_trials);
    let mut rss_synced = 0f64;
    let mut peak_synced = 0f64;
    type Running = (
        Peerd,
        tokio::task::JoinHandle<anyhow::Result<()>>,
        Arc<Mutex<Seen>>,
    );
    let mut running: Option<Running> = None;
    for trial in 0..size.sync_trials {
        // The previous trial's peerd stops before this one starts.
        if let Some((old, old_client, _)) = running.take() {
            old_client.abort();
            drop(old);
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let started = Instant::now();
        let peerd = start_peerd(dir.path(), sim_addr, &istiod_token)?;
        let client = tokio::spawn(downstream(
            peerd.xds,
            Arc::clone(&tls),
            token.clone(),
            Arc::clone(&seen),
        ));
        let deadline = started + Duration::from_secs(300);
        loop {
            if seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.held == want {
                break;
            }
            if Instant::now() > deadline || client.is_finished() {
                bail!(
                    "trial {trial}: downstream did not sync {total} resources (client finished early: {})",
                    client.is_finished()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        syncs.push(started.elapsed().as_secs_f64());
        sync_cpu.push(support::cpu_seconds(peerd.child.id()).unwrap_or(f64::NAN));
        // The largest of the trials: memory must fit every time.
        rss_synced = rss_synced.max(support::rss_mb(peerd.child.id()).unwrap_or(f64::NAN));
        peak_synced = peak_synced.max(support::peak_rss_mb(peerd.child.id()).unwrap_or(f64::NAN));
        running = Some((peerd, client, seen));
    }
    let Some((peerd, client, seen)) = running else {
        bail!("no sync trial ran");
    };
    let slowest_sync = syncs.iter().copied().fold(f64::NAN, f64::max);
    let sync = percentile(&mut syncs, 50.0);
    let sync_cpu = percentile(&mut sync_cpu, 50.0);
    let pid = peerd.child.id();

    // Propagation: single workload changes at a fixed rate.
    seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.timed = true;
    let workloads: Vec<Arc<Resource>> = snapshot
        .resources(ResourceType::Address)
        .values()
        .filter(|r| matches!(*r.summary, Summary::Workload(_)))
        .cloned()
        .collect();
    let changes = (size.change_rate * size.change_seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / size.change_rate);
    let mut sent: Vec<((String, String), Instant)> = Vec::with_capacity(changes);
    let begin = Instant::now();
    for i in 0..changes {
        let due = begin + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        let r = &workloads[i % workloads.len()];
        let body = peerd::xds::wire::edit_workload(&r.body, |w| {
            w.fields()
                .set_string(WORKLOAD_NODE_FIELD, &format!("bench-node-{i}"));
            Ok(())
        })?;
        let changed = Arc::new(r.with_body(body)?);
        let key = (changed.name.to_string(), changed.version.to_string());
        let at = Instant::now();
        view.apply(ResourceType::Address, [changed], []);
        sent.push((key, at));
    }
    // Give the last changes time to arrive.
    let settle = Instant::now() + Duration::from_secs(10);
    let mut latencies;
    loop {
        latencies = {
            let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            sent.iter()
                .filter_map(|(key, at)| {
                    seen.arrivals
                        .get(key)
                        .map(|got| support::ms(got.saturating_duration_since(*at)))
                })
                .collect::<Vec<f64>>()
        };
        if latencies.len() == sent.len() || Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = latencies.len();
    let p50 = percentile(&mut latencies, 50.0);
    let p99 = percentile(&mut latencies, 99.0);
    let rss_after = support::rss_mb(pid).unwrap_or(f64::NAN);
    let cpu = support::cpu_seconds(pid).unwrap_or(f64::NAN);
    let _ = stop.send(true);
    client.abort();
    drop(peerd);

    let per_resource_floor_ms = floor * 1000.0 / total as f64;
    let mut report = Report::new(
        "xds",
        format!(
            "{} workloads + {} services + authorizations = {total} resources; {changes} changes at {}/s",
            size.workloads, size.services, size.change_rate
        ),
    );
    // Targets are stated for the full size; the quick size only keeps the bench alive.
    let full = !size.quick;
    report.row(
        format!(
            "initial sync sim → peerd → client (median of {})",
            size.sync_trials
        ),
        sync,
        "s",
        if full { Goal::Below(2.0) } else { Goal::None },
        Some(floor),
    );
    if size.sync_trials > 1 {
        report.row(
            "initial sync, slowest trial",
            slowest_sync,
            "s",
            Goal::None,
            Some(floor),
        );
    }
    report.row(
        "propagation p50",
        p50,
        "ms",
        Goal::None,
        Some(per_resource_floor_ms),
    );
    report.row(
        "propagation p99",
        p99,
        "ms",
        Goal::Below(50.0),
        Some(per_resource_floor_ms),
    );
    report.row(
        "changes delivered",
        delivered as f64,
        "count",
        Goal::Above(changes as f64 - 0.5),
        None,
    );
    report.row(
        "peerd RSS after initial sync (largest trial)",
        rss_synced,
        "MB",
        if full { Goal::Below(300.0) } else { Goal::None },
        None,
    );
    report.row(
        "peerd peak RSS up to initial sync (largest trial)",
        peak_synced,
        "MB",
        Goal::None,
        None,
    );
    report.row(
        "peerd RSS after changes",
        rss_after,
        "MB",
        if full { Goal::Below(300.0) } else { Goal::None },
        None,
    );
    report.row(
        "peerd CPU time to initial sync (median)",
        sync_cpu,
        "s",
        Goal::None,
        None,
    );
    report.row("peerd CPU time, whole run", cpu, "s", Goal::None, None);
    Ok(report)
}
