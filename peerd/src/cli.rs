//! The `peerd` command line: one binary, every subcommand. Parsing only; each
//! subcommand's work lives in its own module.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Env, Overrides};

#[derive(Parser, Debug)]
#[command(
    name = "peerd",
    version,
    about = "Links Istio ambient meshes across clusters"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (standalone mode: configuration from a YAML file + env + flags).
    Run(RunArgs),
    /// A whole federation on this machine: N simulated clusters on 127.0.k.1.
    Sandbox(SandboxArgs),
    /// Simulators of what cannot run here (istiod).
    #[command(subcommand)]
    Sim(SimCommand),
    /// Peers, upstreams and downstream subscribers of a running peerd (debug API).
    Status(crate::debug::status::StatusArgs),
    /// Check that peering works, each check with a reason; fails if any check fails.
    Check(crate::debug::check::CheckArgs),
    /// Print the version and build information.
    Version,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The YAML configuration file (see deploy/examples/standalone.yaml).
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// Overrides `cluster` / CLUSTER_ID.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Overrides `network` / NETWORK.
    #[arg(long)]
    pub network: Option<String>,
    /// Overrides `listeners.xds`.
    #[arg(long)]
    pub xds_listen: Option<String>,
    /// Overrides `listeners.metrics`.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Overrides `listeners.health`.
    #[arg(long)]
    pub health_listen: Option<String>,
    /// Overrides `listeners.debug`.
    #[arg(long)]
    pub debug_listen: Option<String>,
    /// Overrides the local istiod upstream address / XDS_ADDRESS.
    #[arg(long)]
    pub xds_address: Option<String>,
}

#[derive(Args, Debug)]
pub struct SandboxArgs {
    /// Number of clusters (cluster-1 and cluster-2 share a flat network; the others
    /// each have their own).
    #[arg(long, default_value_t = 3)]
    pub clusters: u8,
    #[arg(long, default_value_t = 200)]
    pub workloads_per_cluster: usize,
    #[arg(long, default_value_t = 20)]
    pub services_per_cluster: usize,
    /// Changes per second in each simulated istiod.
    #[arg(long, default_value_t = 2.0)]
    pub churn_per_sec: f64,
    /// Where certificates, configs, logs live (default: a new temp dir, printed).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Stop after this long (e.g. 60s, 5m).
    #[arg(long = "for", value_parser = parse_duration_arg)]
    pub run_for: Option<std::time::Duration>,
    /// Rewrite this file with the status as JSON every second.
    #[arg(long)]
    pub status_json: Option<PathBuf>,
    /// Inject a fault once every peer is connected (repeatable): `stop-peer=<cluster>`
    /// (stop its peerd), `drop-hbone=<cluster>` (SYNs to its HBONE 15008, gateway and
    /// pods, are dropped: connects time out), `reject-hbone=<cluster>` (answered with a
    /// TCP reset: refused). drop/reject are nftables rules in the table
    /// `inet peerd_sandbox_<pid>` (root needed), deleted on lift and on exit. While the
    /// sandbox runs, `fault KIND=CLUSTER` / `lift KIND=CLUSTER` typed on stdin or
    /// appended to STATE_DIR/control (polled every second) inject or lift a fault.
    #[arg(long = "fault", verbatim_doc_comment)]
    pub faults: Vec<crate::sandbox::Fault>,
    /// Inject faults at the latest this long after start.
    #[arg(long, default_value = "45s", value_parser = parse_duration_arg)]
    pub fault_after: std::time::Duration,
    /// Lift each fault automatically this long after it was injected (e.g. 50s).
    #[arg(long, value_parser = parse_duration_arg)]
    pub fault_for: Option<std::time::Duration>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(s)
}

#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// A simulated istiod: a delta-xDS server (TLS + bearer token) with a synthetic,
    /// churning population. Emulated because no real istiod can run here.
    Istiod(SimIstiodArgs),
}

#[derive(Args, Debug)]
pub struct SimIstiodArgs {
    /// Listen address; must be loopback.
    #[arg(long, default_value = "127.0.1.1:15010")]
    pub listen: SocketAddr,
    #[arg(long, default_value = "cluster-1")]
    pub cluster: String,
    #[arg(long, default_value = "")]
    pub network: String,
    #[arg(long, default_value_t = 100)]
    pub workloads: usize,
    #[arg(long, default_value_t = 10)]
    pub services: usize,
    /// Changes per second (0 = static).
    #[arg(long, default_value_t = 0.0)]
    pub churn_per_sec: f64,
    /// Created when missing; holds root-cert.pem, cert-chain.pem, key.pem and token.
    #[arg(long)]
    pub tls_dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fraction of services labelled global.
    #[arg(long, default_value_t = 0.3)]
    pub global_fraction: f64,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Version => {
            println!("{}", crate::version::long());
            Ok(())
        }
        Command::Run(args) => run_daemon(args).await,
        Command::Sandbox(args) => {
            crate::sandbox::run(crate::sandbox::SandboxOptions {
                clusters: args.clusters,
                workloads_per_cluster: args.workloads_per_cluster,
                services_per_cluster: args.services_per_cluster,
                churn_per_sec: args.churn_per_sec,
                state_dir: args.state_dir,
                run_for: args.run_for,
                status_json: args.status_json,
                faults: args.faults,
                fault_after: args.fault_after,
                fault_for: args.fault_for,
                seed: args.seed,
            })
            .await
        }
        Command::Sim(SimCommand::Istiod(args)) => run_sim_istiod(args).await,
        Command::Status(args) => crate::debug::status::run(args).await,
        Command::Check(args) => crate::debug::check::run(args).await,
    }
}

async fn run_daemon(args: RunArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        cluster: args.cluster,
        network: args.network,
        xds_listen: args.xds_listen,
        metrics_listen: args.metrics_listen,
        health_listen: args.health_listen,
        debug_listen: args.debug_listen,
        xds_address: args.xds_address,
        ..Overrides::default()
    };
    let config = Config::load(&args.config, &Env::from_process(), &overrides)
        .with_context(|| format!("invalid configuration {}", args.config.display()))?;
    let peerd = crate::app::Peerd::start(config).await?;
    let cancel = peerd.cancellation();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    peerd.wait().await
}

async fn run_sim_istiod(args: SimIstiodArgs) -> anyhow::Result<()> {
    use crate::sim::istiod::{SimIstiod, SimIstiodOptions, serve_xds};
    let options = SimIstiodOptions {
        network: args.network,
        workloads: args.workloads,
        services: args.services,
        churn_per_sec: args.churn_per_sec,
        seed: args.seed,
        global_fraction: args.global_fraction,
        ..SimIstiodOptions::new(&args.cluster, args.listen, &args.tls_dir)
    };
    let sim = SimIstiod::new(options).context("starting the simulated istiod")?;
    tracing::info!(
        listen = %args.listen,
        cluster = %args.cluster,
        tls_dir = %args.tls_dir.display(),
        global_services = sim.global_services.len(),
        "simulated istiod ready"
    );
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    sim.serve(shutdown, |ctx| serve_xds(ctx, Default::default()))
        .await
        .context("simulated istiod")?
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops peerd");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
