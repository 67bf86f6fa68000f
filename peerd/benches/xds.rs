//! `cargo xtask bench xds`: the xDS data path at scale, through the real daemon.
//!
//! A simulated istiod (in this process) serves N workloads + M services; the real `peerd`
//! binary (a child process, so its RSS and CPU are its own) syncs them and serves them to
//! a ztunnel-like client (in this process). Figures: time to a full downstream sync,
//! propagation latency of single changes at a fixed rate (source apply → client receive),
//! peerd RSS and CPU. The baseline, measured in the same run, is the direct path: the
//! same client syncing straight from the simulated istiod (TLS + bearer token, no peerd),
//! interleaved with the peerd trials, and during the propagation phase a second client
//! on the simulator receiving the same changes.
//!
//! Then churn with a restart of the simulated istiod in the middle: once churn stops,
//! the client's final state must equal the simulator's exactly (names, versions, bytes);
//! a mismatch fails the bench. Then the pod's limits: a fresh peerd in a cgroup of one
//! CPU and the chart's 512 MiB (v2 `cpu.max`/`memory.max`, else v1; without either, one
//! core by affinity and one runtime worker) syncs the same resources while
//! `/healthz/ready` is polled every 10 ms: sync time, peak RSS, probe latency; an OOM
//! kill fails the bench. Last, memory: a peerd (same binary, same config) whose upstream
//! is a second simulator holding nothing; its RSS with that empty view, then once the
//! simulator has published every resource of the first (a large upstream update), then
//! 10 s after the simulator removed them all again (the revert): memory per workload,
//! and whether transient memory is given back.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use peerd::identity::tls::{ClientTlsOptions, ServerIdentity, client_config, load_roots};
use peerd::proto::envoy::service::discovery::v3 as discovery;
use peerd::view::View;
use peerd::xds::resource::{Resource, Summary};
use peerd::xds::types::ResourceType;
use peerd_testbed::pki::{LeafSpec, Pki};
use peerd_testbed::sim::istiod::{ServeContext, SimIstiod, SimIstiodOptions, serve_xds};
use support::{Args, Goal, Report, percentile};

/// The simulator and the client in this process are measurement apparatus, on the same
/// allocator as peerd: glibc's malloc/free of their 112k-resource messages showed in
/// profiles of the sync.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The client's bookkeeping is measurement apparatus: a fast hash keeps it from
/// weighing on the figures (SipHash of 112k names showed in profiles).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

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
    /// Simulated churn (changes/s) around the istiod restart, and its length.
    churn_rate: f64,
    churn_seconds: f64,
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
            churn_rate: 500.0,
            churn_seconds: 2.0,
        }
    } else {
        Size {
            quick: false,
            sync_trials: 3,
            workloads: 100_000,
            services: 10_000,
            change_rate: 1000.0,
            change_seconds: 10.0,
            churn_rate: 1000.0,
            churn_seconds: 6.0,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (report, failures) = runtime.block_on(run(&size))?;
    report.emit(&args)?;
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// The simulated istiod's xDS server, stoppable to simulate an istiod restart.
struct Istiod {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Istiod {
    fn serve(sim: &SimIstiod, listen: SocketAddr) -> anyhow::Result<Istiod> {
        let (tls, cert_source) = sim.server_tls()?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let context = ServeContext {
            listen,
            view: Arc::clone(&sim.view),
            tls,
            cert_source,
            token: sim.tls.token.clone(),
            shutdown,
        };
        let task = tokio::spawn(serve_xds(context, Default::default()));
        Ok(Istiod { stop, task })
    }

    /// Ends every stream and the listener.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("simulated istiod task")?
    }
}

/// Compares what the client holds with the simulator's view: (resources compared,
/// mismatches: missing, extra, or another version or body).
fn compare(view: &View, seen: &Mutex<Seen>) -> anyhow::Result<(usize, usize)> {
    let snapshot = view.snapshot();
    let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let (mut compared, mut mismatched) = (0, 0);
    for kind in ResourceType::ALL {
        let upstream = snapshot.resources(kind);
        let held = &seen.resources[kind.index()];
        compared += upstream.len();
        for (name, r) in upstream.iter() {
            match held.get(&**name) {
                Some((version, body)) if **version == *r.version && *body == r.body => {}
                _ => mismatched += 1,
            }
        }
        mismatched += held
            .keys()
            .filter(|name| upstream.get(name.as_str()).is_none())
            .count();
    }
    Ok((compared, mismatched))
}

/// What polling `/healthz/ready` every 10 ms saw.
#[derive(Default)]
struct Probes {
    /// Latency of every answer (ready or not) and of every failed probe, in ms.
    latencies: Vec<f64>,
    not_ready: usize,
    /// Probes without an answer after the first answer (before it, peerd is starting).
    failed: usize,
}

const PROBE_INTERVAL: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP/1.1 GET as a kubelet probe does it (a new connection each time): the status.
async fn probe(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let status = std::str::from_utf8(&answer)
        .ok()
        .and_then(|a| a.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .context("no HTTP status line")?;
    Ok(status)
}

async fn poll_ready(addr: SocketAddr, stop: tokio::sync::watch::Receiver<bool>) -> Probes {
    let mut probes = Probes::default();
    let mut answered = false;
    while !*stop.borrow() {
        let sent = Instant::now();
        match tokio::time::timeout(PROBE_TIMEOUT, probe(addr, "/healthz/ready")).await {
            Ok(Ok(status)) => {
                answered = true;
                probes.latencies.push(support::ms(sent.elapsed()));
                if status != 200 {
                    probes.not_ready += 1;
                }
            }
            Ok(Err(_)) | Err(_) if answered => {
                probes.failed += 1;
                probes.latencies.push(support::ms(sent.elapsed()));
            }
            Ok(Err(_)) | Err(_) => {}
        }
        tokio::time::sleep_until((sent + PROBE_INTERVAL).into()).await;
    }
    probes
}

fn free_port() -> anyhow::Result<u16> {
    Ok(peerd_testbed::ports::free_addr(LOCALHOST)?.port())
}

struct Peerd {
    child: Child,
    xds: SocketAddr,
    health: SocketAddr,
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
    confinement: Option<&confine::Confinement>,
) -> anyhow::Result<Peerd> {
    let xds = SocketAddr::new(LOCALHOST, free_port()?);
    let health = SocketAddr::new(LOCALHOST, free_port()?);
    let config = format!(
        r#"
cluster: cluster-1
network: net1
sandboxMode: true
listeners: {{ xds: "{xds}", metrics: "127.0.0.1:0", health: "{health}", debug: "127.0.0.1:0" }}
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
    let mut command = match (confinement, words.next()) {
        (Some(confinement), _) => confinement.command(env!("CARGO_BIN_EXE_peerd")),
        (None, Some(program)) => {
            let mut c = Command::new(program);
            c.args(words).arg(env!("CARGO_BIN_EXE_peerd"));
            c
        }
        (None, None) => Command::new(env!("CARGO_BIN_EXE_peerd")),
    };
    let child = command
        .args(["run", "--config"])
        .arg(dir.join("peerd.yaml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting peerd")?;
    Ok(Peerd { child, xds, health })
}

/// What the ztunnel-like client saw: what it holds, and (once `timed`) when each
/// (name, version) arrived.
#[derive(Default)]
struct Seen {
    held: [usize; 2],
    /// Responses received per type (an empty view's sync is its first response).
    responses: [usize; 2],
    /// Name → (version, body) of everything the client holds.
    resources: [FastMap<String, (String, bytes::Bytes)>; 2],
    /// Arrival times are recorded only for the propagation phase: nothing reads those of
    /// the initial sync, and recording 112k of them would weigh on its figure.
    timed: bool,
    arrivals: FastMap<(String, String), Instant>,
}

/// Where a ztunnel-like client connects: peerd, or the simulated istiod directly.
#[derive(Clone)]
struct Upstream {
    addr: SocketAddr,
    server_name: &'static str,
    token: String,
}

/// The simulated istiod's certificate names it as istiod's Service.
const ISTIOD_NAME: &str = "istiod.istio-system.svc";

impl Upstream {
    fn peerd(peerd: &Peerd, token: &str) -> Upstream {
        Upstream {
            addr: peerd.xds,
            server_name: "127.0.0.1",
            token: token.to_string(),
        }
    }
}

async fn downstream(
    upstream: Upstream,
    tls: Arc<rustls::ClientConfig>,
    seen: Arc<Mutex<Seen>>,
) -> anyhow::Result<()> {
    let (tx, mut responses) =
        support::downstream::subscribe(upstream.addr, upstream.server_name, tls, &upstream.token)
            .await?;
    while let Some(r) = responses.message().await? {
        let now = Instant::now();
        let Some(kind) = ResourceType::from_type_url(&r.type_url) else {
            bail!("unexpected type {}", r.type_url)
        };
        {
            let mut seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let i = kind.index();
            for name in &r.removed_resources {
                seen.resources[i].remove(name);
            }
            let timed = seen.timed;
            seen.resources[i].reserve(r.resources.len());
            for res in r.resources {
                if timed {
                    seen.arrivals
                        .insert((res.name.clone(), res.version.clone()), now);
                }
                let body = res.resource.map(|a| a.value).unwrap_or_default();
                seen.resources[i].insert(res.name, (res.version, body));
            }
            seen.held[i] = seen.resources[i].len();
            seen.responses[i] += 1;
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

/// Waits until what the client saw satisfies `done`; an error once `deadline` passes or
/// the client task ends.
async fn wait_until(
    seen: &Mutex<Seen>,
    client: &tokio::task::JoinHandle<anyhow::Result<()>>,
    deadline: Instant,
    what: &str,
    done: impl Fn(&Seen) -> bool,
) -> anyhow::Result<()> {
    loop {
        let reached = {
            let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            done(&seen)
        };
        if reached {
            return Ok(());
        }
        if Instant::now() > deadline || client.is_finished() {
            bail!(
                "{what}: not reached (client finished early: {})",
                client.is_finished()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Latencies (ms) from each sent change to its arrival at one client, once every change
/// arrived or `settle` passed.
async fn arrivals(
    seen: &Mutex<Seen>,
    sent: &[((String, String), Instant)],
    settle: Instant,
) -> anyhow::Result<Vec<f64>> {
    loop {
        let latencies = {
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
            return Ok(latencies);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// RSS (MB) of an idle process once it has settled: peerd's allocator returns freed
/// memory within about 100 ms; `wait` leaves room for that and for late work.
async fn settled_rss_mb(pid: u32, wait: Duration) -> f64 {
    tokio::time::sleep(wait).await;
    support::rss_mb(pid).unwrap_or(f64::NAN)
}

async fn run(size: &Size) -> anyhow::Result<(Report, Vec<String>)> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::load_or_create(&dir.path().join("pki"), "bench root")?;
    let ca = pki.cluster_ca("cluster-1")?;
    let sim_addr = SocketAddr::new(LOCALHOST, free_port()?);
    let mut options = SimIstiodOptions::new("cluster-1", sim_addr, &dir.path().join("istiod"));
    options.cluster_index = Some(1);
    options.network = "net1".into();
    options.workloads = size.workloads;
    options.services = size.services;
    // Churn runs only in its phase (started there).
    options.churn_per_sec = size.churn_rate;
    let mut sim = SimIstiod::new_with_ca(options, &ca)?;
    let view = Arc::clone(&sim.view);
    let istiod_token = sim.tls.token_path.clone();
    let mut istiod = Istiod::serve(&sim, sim_addr)?;
    // The direct path: ztunnel's own connection to istiod (its certificate, its token).
    let direct = Upstream {
        addr: sim_addr,
        server_name: ISTIOD_NAME,
        token: sim.tls.token.secret().to_string(),
    };

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

    // Initial sync, each trial twice: the client straight from the simulator (the direct
    // path), then a fresh peerd syncing from the simulator and serving the client.
    // Interleaved, so both see the same machine (its speed varies from run to run): the
    // rows are medians, the slowest is shown beside them. The last peerd stays for the
    // changes.
    let mut syncs = Vec::with_capacity(size.sync_trials);
    let mut direct_syncs = Vec::with_capacity(size.sync_trials);
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
        let client = tokio::spawn(downstream(
            direct.clone(),
            Arc::clone(&tls),
            Arc::clone(&seen),
        ));
        wait_until(
            &seen,
            &client,
            started + Duration::from_secs(300),
            &format!("trial {trial}: direct sync of {total} resources"),
            |s| s.held == want,
        )
        .await?;
        direct_syncs.push(started.elapsed().as_secs_f64());
        client.abort();

        let seen = Arc::new(Mutex::new(Seen::default()));
        let started = Instant::now();
        let peerd = start_peerd(dir.path(), sim_addr, &istiod_token, None)?;
        let client = tokio::spawn(downstream(
            Upstream::peerd(&peerd, &token),
            Arc::clone(&tls),
            Arc::clone(&seen),
        ));
        wait_until(
            &seen,
            &client,
            started + Duration::from_secs(300),
            &format!("trial {trial}: sync of {total} resources through peerd"),
            |s| s.held == want,
        )
        .await?;
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
    let slowest_direct = direct_syncs.iter().copied().fold(f64::NAN, f64::max);
    let sync = percentile(&mut syncs, 50.0);
    let direct_sync = percentile(&mut direct_syncs, 50.0);
    let sync_cpu = percentile(&mut sync_cpu, 50.0);
    let pid = peerd.child.id();

    // A ztunnel restarting next to a running peerd: a second client on the last peerd
    // (already synced), against one more direct sync right after it.
    let mut resyncs = Vec::with_capacity(size.sync_trials);
    for _ in 0..size.sync_trials {
        let again = Arc::new(Mutex::new(Seen::default()));
        let started = Instant::now();
        let resync = tokio::spawn(downstream(
            Upstream::peerd(&peerd, &token),
            Arc::clone(&tls),
            Arc::clone(&again),
        ));
        wait_until(
            &again,
            &resync,
            started + Duration::from_secs(300),
            "a second client's sync from a synced peerd",
            |s| s.held == want,
        )
        .await?;
        resyncs.push(started.elapsed().as_secs_f64());
        resync.abort();
    }
    let resync = percentile(&mut resyncs, 50.0);

    // Propagation: single workload changes at a fixed rate, received by the client of
    // peerd and, at the same time, by a client of the simulator (the direct path).
    let direct_seen = Arc::new(Mutex::new(Seen::default()));
    let direct_client = tokio::spawn(downstream(
        direct.clone(),
        Arc::clone(&tls),
        Arc::clone(&direct_seen),
    ));
    wait_until(
        &direct_seen,
        &direct_client,
        Instant::now() + Duration::from_secs(300),
        "direct client for the propagation phase",
        |s| s.held == want,
    )
    .await?;
    direct_seen
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .timed = true;
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
    let mut latencies = arrivals(&seen, &sent, settle).await?;
    let mut direct_latencies = arrivals(&direct_seen, &sent, settle).await?;
    direct_client.abort();
    let delivered = latencies.len();
    let direct_delivered = direct_latencies.len();
    let p50 = percentile(&mut latencies, 50.0);
    let p99 = percentile(&mut latencies, 99.0);
    let direct_p50 = percentile(&mut direct_latencies, 50.0);
    let direct_p99 = percentile(&mut direct_latencies, 99.0);
    let rss_after = support::rss_mb(pid).unwrap_or(f64::NAN);
    let cpu = support::cpu_seconds(pid).unwrap_or(f64::NAN);

    // Churn, with the simulated istiod restarted in the middle (peerd's upstream stream
    // drops, reconnects, resyncs while churn goes on); then the client must hold exactly
    // what the simulator holds.
    seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.timed = false;
    let (churn_stop, churn_shutdown) = tokio::sync::watch::channel(false);
    let churn = sim
        .start_churn(churn_shutdown)
        .context("churn already started")?;
    let half = Duration::from_secs_f64(size.churn_seconds / 2.0);
    tokio::time::sleep(half).await;
    istiod.stop().await?;
    // Down for a while, as a restarting istiod is, while the cluster keeps changing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    istiod = Istiod::serve(&sim, sim_addr)?;
    tokio::time::sleep(half).await;
    let _ = churn_stop.send(true);
    churn.await.context("churn task")?;
    let churned = sim.churn_stats.changes();
    let converge_by = Instant::now() + Duration::from_secs(60);
    let (compared, mismatched) = loop {
        let (compared, mismatched) = compare(&view, &seen)?;
        if mismatched == 0 || Instant::now() > converge_by || client.is_finished() {
            break (compared, mismatched);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    client.abort();
    drop(peerd);

    // The pod's limits: a fresh peerd confined to one CPU and 512 MiB syncs everything
    // while its readiness is probed.
    let confinement = confine::Confinement::create();
    let snapshot = view.snapshot();
    let want = [
        snapshot.len(ResourceType::Address),
        snapshot.len(ResourceType::Authorization),
    ];
    let seen = Arc::new(Mutex::new(Seen::default()));
    let started = Instant::now();
    let mut peerd = start_peerd(dir.path(), sim_addr, &istiod_token, Some(&confinement))?;
    let (probes_stop, probes_shutdown) = tokio::sync::watch::channel(false);
    let prober = tokio::spawn(poll_ready(peerd.health, probes_shutdown));
    let client = tokio::spawn(downstream(
        Upstream::peerd(&peerd, &token),
        Arc::clone(&tls),
        Arc::clone(&seen),
    ));
    let deadline = started + Duration::from_secs(300);
    let mut exited = None;
    loop {
        if seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.held == want {
            break;
        }
        if let Some(status) = peerd.child.try_wait()? {
            exited = Some(status);
            break;
        }
        if Instant::now() > deadline || client.is_finished() {
            bail!(
                "confined peerd: downstream did not sync (client finished early: {})",
                client.is_finished()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let confined_sync = started.elapsed().as_secs_f64();
    let confined_cpu = support::cpu_seconds(peerd.child.id()).unwrap_or(f64::NAN);
    let _ = probes_stop.send(true);
    let mut probes = prober.await.context("readiness prober")?;
    let confined_peak = support::peak_rss_mb(peerd.child.id()).unwrap_or(f64::NAN);
    client.abort();
    drop(peerd);
    let oom_kills = confinement.oom_kills().unwrap_or(0);
    let confined_label = confinement.describe();
    drop(confinement);
    let _ = istiod.stop().await;

    // Memory: a peerd whose upstream starts empty (a second simulator, no workloads, no
    // services), then gets every resource of the first in one update, then loses them
    // all again.
    let memory = memory_phase(&dir, &ca, &sim, &tls, &token).await?;

    let mut failures = Vec::new();
    if mismatched > 0 {
        failures.push(format!(
            "after churn and an istiod restart the client differs from the simulator on {mismatched} of {compared} resources"
        ));
    }
    if let Some(status) = exited {
        failures.push(format!("confined peerd exited during its sync: {status}"));
    }
    if oom_kills > 0 {
        failures.push(format!("confined peerd: {oom_kills} OOM kill(s)"));
    }

    let debounce_ms = support::ms(peerd::config::defaults::DEBOUNCE);
    let mut report = Report::new(
        "xds",
        format!(
            "{} workloads + {} services + authorizations = {total} resources; {changes} changes at {}/s; \
             baseline = the direct path (the same client on the simulated istiod, no peerd)",
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
        Some(direct_sync),
    );
    if size.sync_trials > 1 {
        report.row(
            "initial sync, slowest trial",
            slowest_sync,
            "s",
            Goal::None,
            Some(slowest_direct),
        );
    }
    report.row(
        "initial sync ratio peerd path / direct path (stretch 1.1)",
        sync / direct_sync,
        "x",
        if full { Goal::Below(1.5) } else { Goal::None },
        Some(1.0),
    );
    report.row(
        format!(
            "client sync from an already synced peerd (median of {})",
            size.sync_trials
        ),
        resync,
        "s",
        Goal::None,
        Some(direct_sync),
    );
    report.row(
        "its ratio to the direct path",
        resync / direct_sync,
        "x",
        Goal::None,
        Some(1.0),
    );
    report.row("propagation p50", p50, "ms", Goal::None, Some(direct_p50));
    report.row(
        "propagation p99",
        p99,
        "ms",
        Goal::Below(50.0),
        Some(direct_p99),
    );
    report.row(
        format!("propagation p99 peerd adds (debounce {debounce_ms} ms + 5)"),
        p99 - direct_p99,
        "ms",
        if full {
            Goal::Below(debounce_ms + 5.0)
        } else {
            Goal::None
        },
        Some(0.0),
    );
    report.row(
        "changes delivered",
        delivered as f64,
        "count",
        Goal::Above(changes as f64 - 0.5),
        Some(direct_delivered as f64),
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
    report.row(
        format!(
            "client = simulator after {churned} churn changes + istiod restart: mismatches of {compared}"
        ),
        mismatched as f64,
        "count",
        Goal::Below(0.5),
        None,
    );
    report.row(
        format!("pod limits ({confined_label}): initial sync"),
        confined_sync,
        "s",
        if full { Goal::Below(2.0) } else { Goal::None },
        Some(direct_sync),
    );
    report.row(
        "pod limits: peerd CPU time to sync",
        confined_cpu,
        "s",
        Goal::None,
        None,
    );
    report.row(
        "pod limits: peak RSS",
        confined_peak,
        "MiB",
        if full { Goal::Below(400.0) } else { Goal::None },
        None,
    );
    let answered = probes.latencies.len();
    report.row(
        format!(
            "pod limits: /healthz/ready p99 during sync ({answered} probes, {} not ready, {} failed)",
            probes.not_ready, probes.failed
        ),
        percentile(&mut probes.latencies, 99.0),
        "ms",
        if full { Goal::Below(100.0) } else { Goal::None },
        None,
    );
    report.row(
        "pod limits: OOM kills",
        oom_kills as f64,
        "count",
        Goal::Below(0.5),
        None,
    );
    let per_workload_kb =
        (memory.full_mb - memory.empty_mb) * 1024.0 / size.workloads.max(1) as f64;
    report.row(
        format!(
            "memory per workload: (RSS with {total} resources {:.0} MB − with an empty view) / {} workloads",
            memory.full_mb, size.workloads
        ),
        per_workload_kb,
        "KB",
        if full { Goal::Below(2.0) } else { Goal::None },
        None,
    );
    report.row(
        "idle RSS, empty view, before the burst",
        memory.empty_mb,
        "MB",
        Goal::None,
        None,
    );
    report.row(
        "idle RSS 10 s after the burst (all added, then removed; ≤ before + 10%)",
        memory.after_burst_mb,
        "MB",
        Goal::Below(memory.empty_mb * 1.1),
        Some(memory.empty_mb),
    );
    Ok((report, failures))
}

/// What the memory phase measured (RSS in MB of one peerd process).
struct Memory {
    /// Synced with an empty upstream, idle.
    empty_mb: f64,
    /// Holding every resource of the main simulator, idle.
    full_mb: f64,
    /// 10 s after the upstream removed them all again.
    after_burst_mb: f64,
}

/// How long an idle peerd is left before its RSS is read (its allocator returns freed
/// memory within about 100 ms of the last allocation; this leaves room for late work).
const SETTLE: Duration = Duration::from_secs(3);
/// How long after a burst the idle RSS is read.
const AFTER_BURST: Duration = Duration::from_secs(10);

async fn memory_phase(
    dir: &tempfile::TempDir,
    ca: &peerd_testbed::pki::CertificateAuthority,
    full: &SimIstiod,
    tls: &Arc<rustls::ClientConfig>,
    token: &str,
) -> anyhow::Result<Memory> {
    let addr = SocketAddr::new(LOCALHOST, free_port()?);
    let mut options = SimIstiodOptions::new("cluster-1", addr, &dir.path().join("istiod-empty"));
    options.cluster_index = Some(1);
    options.network = "net1".into();
    options.workloads = 0;
    options.services = 0;
    let empty = SimIstiod::new_with_ca(options, ca)?;
    let istiod = Istiod::serve(&empty, addr)?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    // The same binary and configuration; only the upstream (address, token) differs.
    let peerd = start_peerd(dir.path(), addr, &empty.tls.token_path, None)?;
    let pid = peerd.child.id();
    let client = tokio::spawn(downstream(
        Upstream::peerd(&peerd, token),
        Arc::clone(tls),
        Arc::clone(&seen),
    ));
    let deadline = Instant::now() + Duration::from_secs(300);
    wait_until(&seen, &client, deadline, "empty view sync", |s| {
        s.responses.iter().all(|n| *n > 0)
    })
    .await?;
    let empty_held = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.held;
    let empty_mb = settled_rss_mb(pid, SETTLE).await;

    // The burst: every resource of the main simulator in one update (a large upstream
    // change), then removed again (its revert).
    let snapshot = full.view.snapshot();
    let mut want = empty_held;
    for kind in ResourceType::ALL {
        let upserts: Vec<Arc<Resource>> = snapshot.resources(kind).values().cloned().collect();
        want[kind.index()] += upserts.len();
        empty.view.apply(kind, upserts, []);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    wait_until(&seen, &client, deadline, "burst sync", |s| s.held == want).await?;
    let full_mb = settled_rss_mb(pid, SETTLE).await;
    for kind in ResourceType::ALL {
        let removals: Vec<Arc<str>> = snapshot.resources(kind).keys().map(Arc::clone).collect();
        empty.view.apply(kind, [], removals);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    wait_until(&seen, &client, deadline, "burst revert", |s| {
        s.held == empty_held
    })
    .await?;
    let after_burst_mb = settled_rss_mb(pid, AFTER_BURST).await;
    client.abort();
    drop(peerd);
    let _ = istiod.stop().await;
    Ok(Memory {
        empty_mb,
        full_mb,
        after_burst_mb,
    })
}

/// Confines a child process as the chart confines the pod: one CPU, 512 MiB.
mod confine {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const CPU_PERIOD_US: u64 = 100_000;
    /// The chart's `resources.limits.memory` (512Mi).
    const MEMORY_LIMIT: u64 = 512 * 1024 * 1024;

    pub enum Confinement {
        /// A cgroup v2 directory with `cpu.max` and `memory.max`.
        V2(PathBuf),
        /// cgroup v1 directories in the `cpu` and `memory` hierarchies.
        V1 { cpu: PathBuf, memory: PathBuf },
        /// No usable cgroup: one core by affinity and one runtime worker.
        Affinity,
    }

    fn write(path: &Path, value: &str) -> std::io::Result<()> {
        std::fs::write(path, value)
    }

    impl Confinement {
        /// The first that works: cgroup v2, cgroup v1, affinity.
        pub fn create() -> Confinement {
            let name = format!("peerd-bench-{}", std::process::id());
            match Self::v2(&name) {
                Ok(c) => return c,
                Err(e) => eprintln!("xds bench: cgroup v2 not usable ({e}); trying v1"),
            }
            match Self::v1(&name) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!(
                        "xds bench: cgroup v1 not usable ({e}); one core by affinity and one runtime worker instead"
                    );
                    Confinement::Affinity
                }
            }
        }

        fn v2(name: &str) -> std::io::Result<Confinement> {
            let root = Path::new("/sys/fs/cgroup");
            let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))?;
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if !(has("cpu") && has("memory")) {
                return Err(std::io::Error::other(
                    "no cpu and memory controllers at /sys/fs/cgroup",
                ));
            }
            // The machine's hierarchy is not ours to change: the controllers must already
            // be delegated to children of the root.
            let delegated = std::fs::read_to_string(root.join("cgroup.subtree_control"))?;
            let delegated = |c: &str| delegated.split_whitespace().any(|x| x == c);
            if !(delegated("cpu") && delegated("memory")) {
                return Err(std::io::Error::other(
                    "cpu and memory not enabled in /sys/fs/cgroup/cgroup.subtree_control",
                ));
            }
            let dir = root.join(name);
            std::fs::create_dir(&dir)?;
            let confinement = Confinement::V2(dir.clone());
            write(
                &dir.join("cpu.max"),
                &format!("{CPU_PERIOD_US} {CPU_PERIOD_US}"),
            )?;
            write(&dir.join("memory.max"), &MEMORY_LIMIT.to_string())?;
            write(&dir.join("memory.swap.max"), "0").or_else(|e| {
                // No swap accounting: the limit still holds for RSS.
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            Ok(confinement)
        }

        fn v1(name: &str) -> std::io::Result<Confinement> {
            let cpu = Path::new("/sys/fs/cgroup/cpu").join(name);
            let memory = Path::new("/sys/fs/cgroup/memory").join(name);
            std::fs::create_dir(&cpu)?;
            if let Err(e) = std::fs::create_dir(&memory) {
                let _ = std::fs::remove_dir(&cpu);
                return Err(e);
            }
            let confinement = Confinement::V1 {
                cpu: cpu.clone(),
                memory: memory.clone(),
            };
            write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write(&cpu.join("cpu.cfs_quota_us"), &CPU_PERIOD_US.to_string())?;
            write(
                &memory.join("memory.limit_in_bytes"),
                &MEMORY_LIMIT.to_string(),
            )?;
            Ok(confinement)
        }

        pub fn describe(&self) -> String {
            match self {
                Confinement::V2(_) => "cgroup v2: 1 CPU, 512 MiB".into(),
                Confinement::V1 { .. } => "cgroup v1: 1 CPU, 512 MiB".into(),
                Confinement::Affinity => {
                    "no cgroup: 1 core affinity, 1 worker, no memory limit".into()
                }
            }
        }

        /// A command running `program` inside the confinement: a shell moves itself into
        /// the cgroup(s), then execs `program` (same pid), so peerd never runs outside.
        pub fn command(&self, program: &str) -> Command {
            let procs = match self {
                Confinement::V2(dir) => vec![dir.join("cgroup.procs")],
                Confinement::V1 { cpu, memory } => {
                    vec![cpu.join("cgroup.procs"), memory.join("cgroup.procs")]
                }
                Confinement::Affinity => {
                    let mut c = Command::new("taskset");
                    c.args(["-c", "0", program])
                        .env("TOKIO_WORKER_THREADS", "1");
                    return c;
                }
            };
            let moves: Vec<String> = procs
                .iter()
                .map(|p| format!("echo $$ > '{}'", p.display()))
                .collect();
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("{} && exec \"$0\" \"$@\"", moves.join(" && ")))
                .arg(program);
            c
        }

        /// OOM kills in the cgroup (`None` where not counted).
        pub fn oom_kills(&self) -> Option<u64> {
            let file = match self {
                Confinement::V2(dir) => dir.join("memory.events"),
                Confinement::V1 { memory, .. } => memory.join("memory.oom_control"),
                Confinement::Affinity => return None,
            };
            let text = std::fs::read_to_string(file).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        }
    }

    impl Drop for Confinement {
        /// Removes the cgroup(s) (the confined child has been reaped by then).
        fn drop(&mut self) {
            let dirs = match self {
                Confinement::V2(dir) => vec![dir.clone()],
                Confinement::V1 { cpu, memory } => vec![cpu.clone(), memory.clone()],
                Confinement::Affinity => Vec::new(),
            };
            for dir in dirs {
                if let Err(e) = std::fs::remove_dir(&dir) {
                    eprintln!("xds bench: cannot remove cgroup {}: {e}", dir.display());
                }
            }
        }
    }
}
