//! The `peerd-sandbox` command line: with no subcommand, the sandbox; `sim istiod`, a
//! simulated istiod on its own. Parsing only; the work lives in [`crate::sandbox`] and
//! [`crate::sim`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::sim::istiod::{SimIstiod, SimIstiodOptions, serve_xds};

#[derive(Parser, Debug)]
#[command(
    name = "peerd-sandbox",
    version,
    about = "A whole peerd federation on this machine: N simulated clusters on 127.0.k.1, each with its own real `peerd run`",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Simulators of what cannot run here (istiod).
    #[command(subcommand)]
    Sim(SimCommand),
    /// A ztunnel-like client of a running sandbox's cluster: prints the workloads it holds
    /// per origin cluster whenever they change (for timing link, unlink and restarts).
    ZtunnelWatch(ZtunnelWatchArgs),
    /// Writes seed corpora for the fuzz targets (`fuzz/`) under OUT/<target>/: the
    /// simulated population's resources and responses, the sample configs, and objects
    /// as the emulated API server answers them (`cargo xtask fuzz` runs this).
    FuzzSeeds {
        #[arg(long)]
        out: PathBuf,
    },
    /// The chaos suite: a three-cluster federation of release peerds under scripted
    /// faults, judged by an independent observer; prints a table, fails on any
    /// violation. Run it through `cargo xtask chaos` (a network namespace of its own).
    Chaos(ChaosArgs),
    /// A long run under churn with a fault every interval; reports NACKs, RSS, fds,
    /// threads, propagation p99 per window and violations. `cargo xtask soak --for 1h`.
    Soak(SoakArgs),
}

#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// The CI subset: shorter timings, a 5k-workload big peer instead of 100k.
    #[arg(long)]
    pub quick: bool,
    /// Only the faults whose name contains this text (repeatable).
    #[arg(long)]
    pub only: Vec<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// What the chaos suite and the soak share: where state goes, the JSON report, the seed.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Keep certificates, configs and logs here (default: a temp dir, removed on success).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Also write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// How long (e.g. 2m, 1h).
    #[arg(long = "for", value_parser = parse_duration_arg)]
    pub run_for: std::time::Duration,
    /// Changes per second in each simulated istiod.
    #[arg(long, default_value_t = 200.0)]
    pub churn_per_sec: f64,
    #[arg(long, default_value_t = 2_000)]
    pub workloads_per_cluster: usize,
    /// Only the faults whose name contains this text (repeatable), in catalogue order.
    #[arg(long)]
    pub only: Vec<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug)]
pub struct ZtunnelWatchArgs {
    /// The running sandbox's state dir (its root certificate and token are used).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The cluster whose peerd to connect to (k of cluster-k).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub cluster_index: u8,
    /// How often the held state is compared, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Stop after this long (e.g. 60s, 5m).
    #[arg(long = "for", value_parser = parse_duration_arg)]
    pub run_for: Option<std::time::Duration>,
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
    peerd::config::parse_duration(s)
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
    /// Selects the population's loopback blocks (pods and VIPs on 127.(k+8j).x.y).
    /// Default: k of a listen address 127.0.k.x, else 1.
    #[arg(long)]
    pub cluster_index: Option<u8>,
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
    /// Share of namespaces with a waypoint and of resources with the richer istiod fields.
    #[arg(long, default_value_t = 0.2)]
    pub realistic_fraction: f64,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Sim(SimCommand::Istiod(args))) => run_sim_istiod(args).await,
        Some(Command::FuzzSeeds { out }) => {
            let written = crate::fuzz_seeds::write(&out).await?;
            println!("wrote {written} seeds under {}", out.display());
            Ok(())
        }
        Some(Command::ZtunnelWatch(args)) => {
            crate::sandbox::watch::run(
                &args.state_dir,
                args.cluster_index,
                std::time::Duration::from_millis(args.interval_ms.max(1)),
                args.run_for,
            )
            .await
        }
        Some(Command::Chaos(args)) => {
            crate::chaos::run_chaos(crate::chaos::ChaosOptions {
                quick: args.quick,
                only: args.only,
                state_dir: args.run.state_dir,
                json: args.run.json,
                seed: args.run.seed,
            })
            .await
        }
        Some(Command::Soak(args)) => {
            crate::chaos::soak::run(crate::chaos::soak::SoakOptions {
                run_for: args.run_for,
                churn_per_sec: args.churn_per_sec,
                workloads_per_cluster: args.workloads_per_cluster,
                only: args.only,
                state_dir: args.run.state_dir,
                json: args.run.json,
                seed: args.run.seed,
            })
            .await
        }
        None => {
            let args = cli.sandbox;
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
    }
}

/// The simulator's options from the command line. Any loopback listen address serves:
/// one that names no cluster index (127.0.0.1, ::1) gets index 1 unless
/// `--cluster-index` says otherwise.
pub fn sim_istiod_options(args: &SimIstiodArgs) -> SimIstiodOptions {
    let mut options = SimIstiodOptions {
        cluster_index: args.cluster_index,
        network: args.network.clone(),
        workloads: args.workloads,
        services: args.services,
        churn_per_sec: args.churn_per_sec,
        seed: args.seed,
        global_fraction: args.global_fraction,
        realistic_fraction: args.realistic_fraction,
        ..SimIstiodOptions::new(&args.cluster, args.listen, &args.tls_dir)
    };
    if options.resolved_cluster_index().is_err() {
        options.cluster_index = Some(1);
    }
    options
}

async fn run_sim_istiod(args: SimIstiodArgs) -> anyhow::Result<()> {
    let options = sim_istiod_options(&args);
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
        peerd::cli::shutdown_signal().await;
        let _ = stop.send(true);
    });
    sim.serve(shutdown, |ctx| serve_xds(ctx, Default::default()))
        .await
        .context("simulated istiod")?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn sim_args(extra: &[&str]) -> SimIstiodArgs {
        let cli = Cli::try_parse_from(
            ["peerd-sandbox", "sim", "istiod", "--tls-dir", "/unused"]
                .iter()
                .chain(extra),
        )
        .unwrap();
        match cli.command {
            Some(Command::Sim(SimCommand::Istiod(args))) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    /// The help says "must be loopback": every loopback address starts a simulator.
    #[test]
    fn sim_istiod_serves_on_any_loopback_address() {
        for listen in ["127.0.0.1:15010", "[::1]:15010", "127.0.3.1:15010"] {
            let tmp = tempfile::tempdir().unwrap();
            let mut args = sim_args(&["--listen", listen]);
            args.tls_dir = tmp.path().join("tls");
            let sim = SimIstiod::new(sim_istiod_options(&args));
            assert!(sim.is_ok(), "{listen}: {:?}", sim.err());
        }
    }

    #[test]
    fn sim_istiod_cluster_index_comes_from_the_flag_then_the_address_then_1() {
        let index = |extra: &[&str]| {
            sim_istiod_options(&sim_args(extra))
                .resolved_cluster_index()
                .unwrap()
        };
        assert_eq!(index(&["--listen", "127.0.0.1:1"]), 1);
        assert_eq!(index(&["--listen", "[::1]:1"]), 1);
        assert_eq!(index(&["--listen", "127.0.3.1:1"]), 3);
        assert_eq!(
            index(&["--listen", "127.0.3.1:1", "--cluster-index", "5"]),
            5
        );
        assert_eq!(
            index(&["--listen", "127.0.0.1:1", "--cluster-index", "2"]),
            2
        );
    }

    #[test]
    fn sim_istiod_still_refuses_a_non_loopback_address() {
        let tmp = tempfile::tempdir().unwrap();
        let mut args = sim_args(&["--listen", "10.0.0.1:15010"]);
        args.tls_dir = tmp.path().join("tls");
        let err = SimIstiod::new(sim_istiod_options(&args)).unwrap_err();
        assert!(err.to_string().contains("not a loopback address"), "{err}");
    }

    #[test]
    fn sandbox_is_the_default_command() {
        let cli = Cli::try_parse_from(["peerd-sandbox", "--clusters", "2"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.sandbox.clusters, 2);
    }
}
