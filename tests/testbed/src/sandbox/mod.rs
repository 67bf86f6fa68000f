//! `peerd-sandbox`: a whole federation on one machine with nothing installed. N simulated
//! clusters, cluster k on 127.0.k.1 with the real port numbers: a simulated istiod
//! (15010), its own peerd (xDS 15012, metrics 15020, health 15021, debug 15041) and a
//! simulated east-west HBONE listener (15008). One throwaway PKI (DIR/pki) signs every
//! certificate; DIR/token is a bearer token every sandbox peerd accepts, so an outside
//! client (a real ztunnel, grpcurl) can connect with `DIR/pki/root-cert.pem` and it.
//!
//! It owns orchestration only (processes, files, faults, status display). It never
//! connects outside 127.0.0.0/8.

pub mod cluster;
pub mod faults;
pub mod gateway;
pub mod kube;
pub mod layout;
pub mod linking;
pub mod screen;
pub mod status;
pub mod watch;
pub mod ztunnel;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::pki::Pki;
use cluster::{Cluster, SandboxOptionsForCluster};
pub use faults::Fault;
use faults::FaultController;
use layout::ClusterLayout;
use status::SandboxStatus;

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub clusters: u8,
    pub workloads_per_cluster: usize,
    pub services_per_cluster: usize,
    pub churn_per_sec: f64,
    pub state_dir: Option<PathBuf>,
    pub run_for: Option<Duration>,
    pub status_json: Option<PathBuf>,
    pub faults: Vec<Fault>,
    /// Inject faults this long after start even if not every peer is connected yet.
    pub fault_after: Duration,
    /// Lift each fault this long after it was injected (`--fault-for`).
    pub fault_for: Option<Duration>,
    pub seed: u64,
}

pub async fn run(options: SandboxOptions) -> anyhow::Result<()> {
    if options.clusters == 0 || options.clusters > 31 {
        bail!("--clusters must be between 1 and 31 (cluster k lives on 127.0.k.1)");
    }
    // Fail before anything starts when there is no daemon to run.
    cluster::peerd_binary()?;
    let state_dir = match &options.state_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("peerd-sandbox-{}", std::process::id())),
    };
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating the state dir {}", state_dir.display()))?;
    println!("peerd sandbox: state in {}", state_dir.display());
    for fault in &options.faults {
        if !(1..=options.clusters).any(|k| fault.cluster() == format!("cluster-{k}")) {
            bail!(
                "--fault {fault}: no such cluster (cluster-1 … cluster-{})",
                options.clusters
            );
        }
    }
    let started = Instant::now();
    let mut fault_ctl = FaultController::new(options.fault_for, started);
    fault_ctl
        .preflight(&options.faults)
        .context("--fault: drop-hbone and reject-hbone are nftables rules")?;
    let control_file = state_dir.join("control");
    let mut commands = faults::stdin_commands();

    let pki = Pki::load_or_create(&state_dir.join("pki"), "peerd sandbox root CA")
        .context("sandbox PKI")?;
    let token_file = state_dir.join("token");
    ensure_token(&token_file)?;
    let root_cert = pki.root_cert_path();

    let layouts: Vec<ClusterLayout> = (1..=options.clusters)
        .map(|k| ClusterLayout::new(k, &state_dir))
        .collect();
    let cancel = CancellationToken::new();
    let (stop_sims, sims_shutdown) = tokio::sync::watch::channel(false);
    let mut clusters = Vec::new();
    for layout in &layouts {
        let ca = pki
            .cluster_ca(&layout.name)
            .with_context(|| format!("{}: intermediate CA", layout.name))?;
        let per_cluster = SandboxOptionsForCluster {
            workloads: options.workloads_per_cluster,
            services: options.services_per_cluster,
            churn_per_sec: options.churn_per_sec,
            seed: options.seed,
            token_file: &token_file,
            root_cert: &root_cert,
            disconnect_grace: "30s",
            churn_observer: None,
        };
        clusters.push(Cluster::prepare(
            layout.clone(),
            &layouts,
            &ca,
            &per_cluster,
            sims_shutdown.clone(),
            &cancel,
        )?);
    }
    // Every simulated pod's node answers HBONE on 15008 (flat peers probe pod IPs).
    {
        let cancel = cancel.clone();
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], layout::HBONE_PORT));
        tokio::spawn(async move {
            if let Err(e) = gateway::serve_hbone(addr, cancel).await {
                tracing::error!(
                    error = format!("{e:#}"),
                    "simulated pod HBONE listener stopped"
                );
            }
        });
    }
    // Each cluster's emulated API server, seeded before its peerd starts.
    let mut kube_apis = Vec::new();
    let root_pem = pki.root().root_pem().to_string();
    for c in &clusters {
        kube_apis.push(kube::start(&c.layout, &c.global_services, &root_pem, None).await?);
    }
    let kubeconfig_path = state_dir.join("kubeconfig");
    std::fs::write(&kubeconfig_path, kube::kubeconfig(&layouts))
        .with_context(|| format!("writing {}", kubeconfig_path.display()))?;
    for c in &mut clusters {
        c.start_peerd()?;
        // Each node's ztunnel: its ACKs make PeerDataPlaneProgrammed real.
        ztunnel::spawn(&c.layout, &token_file, &root_cert, cancel.clone())?;
        println!(
            "  {:<10} network {:<9} xds {}  debug {}  kube-api {}  log {}",
            c.layout.name,
            c.layout.network,
            c.layout.xds(),
            c.layout.debug(),
            c.layout.kube_api_url(),
            c.log_path().display()
        );
    }
    // The clusters start exposed and unlinked; once every peerd runs, link them as an
    // operator would: each peerd picks its peer Gateways up from its watch, no restart.
    let mut link_timer = linking::LinkTimer::default();
    let link_args =
        linking::link_all_args(&layouts.iter().map(|l| l.name.clone()).collect::<Vec<_>>());
    link_timer.start(&format!("peerd {}", link_args.join(" ")));
    let linked = {
        let kubeconfig = kubeconfig_path.clone();
        tokio::task::spawn_blocking(move || linking::run_peerd(&kubeconfig, &link_args))
            .await
            .context("peerd link task")?
            .context("linking the sandbox clusters")?
    };
    print!("{linked}");
    println!(
        "  connect a client with root {} and the bearer token in {}",
        root_cert.display(),
        token_file.display()
    );
    println!(
        "  commands: type `fault KIND=CLUSTER`, `lift KIND=CLUSTER`, `restart CLUSTER`, `link A B` or `unlink A B` here, or append the line to {}",
        control_file.display()
    );

    let mut screen = screen::Screen::new(std::io::stdout().is_terminal());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut faults_done = options.faults.is_empty();
    // One signal listener for the whole run: a SIGTERM arriving while a status read is in
    // progress must not be lost (a listener created later would not see it).
    let shutdown = peerd::cli::shutdown_signal();
    tokio::pin!(shutdown);
    let result: anyhow::Result<()> = loop {
        let mut lines = Vec::new();
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tick.tick() => {}
            Some(line) = commands.recv() => lines.push(line),
        }
        lines.extend(faults::take_control_lines(&control_file));
        for line in lines {
            let outcome = match fault_ctl.execute(&line, &mut clusters) {
                Ok(()) => {
                    if line.trim_start().starts_with("link ") {
                        link_timer.start(&line);
                    }
                    format!("command {line:?} done")
                }
                Err(e) => format!("command {line:?} failed: {e:#}"),
            };
            if let Some(text) = screen.message(outcome) {
                print!("{text}");
            }
        }
        fault_ctl.lift_expired(&mut clusters);
        let mut snapshot = SandboxStatus {
            state_dir: state_dir.display().to_string(),
            elapsed_seconds: started.elapsed().as_secs(),
            clusters: Vec::new(),
            faults: fault_ctl.statuses(),
        };
        for c in &mut clusters {
            let running = c.peerd_running();
            snapshot
                .clusters
                .push(status::read_cluster(&c.layout, running).await);
        }
        if let Some((what, took)) = link_timer.observe(&snapshot) {
            println!(
                "every condition True {:.1}s after `{what}`",
                took.as_secs_f64()
            );
        }
        if let Some(path) = &options.status_json {
            write_atomically(path, &serde_json::to_vec_pretty(&snapshot)?)?;
        }
        if let Some(frame) = screen.frame(&snapshot, started.elapsed()) {
            print!("{frame}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        if !faults_done && (all_connected(&snapshot) || started.elapsed() >= options.fault_after) {
            faults_done = true;
            let failed = options
                .faults
                .iter()
                .find_map(|fault| fault_ctl.inject(fault, &mut clusters).err());
            if let Some(e) = failed {
                break Err(e.context("injecting a --fault"));
            }
        }
        if options.run_for.is_some_and(|d| started.elapsed() >= d) {
            break Ok(());
        }
    };
    fault_ctl.shutdown();
    cancel.cancel();
    let _ = stop_sims.send(true);
    for c in &mut clusters {
        c.stop_peerd();
    }
    for api in kube_apis {
        api.shutdown().await;
    }
    println!(
        "peerd sandbox stopped; state kept in {}",
        state_dir.display()
    );
    result
}

fn all_connected(status: &SandboxStatus) -> bool {
    status.clusters.iter().all(|c| {
        !c.peers.is_empty()
            && c.peers.iter().all(|p| {
                p.conditions
                    .get("gloo.solo.io/PeerConnected")
                    .is_some_and(|c| c.status == "True")
            })
    })
}

fn ensure_token(path: &std::path::Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let bytes: [u8; 24] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(format!("{token}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Readers never see a half-written status file.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
