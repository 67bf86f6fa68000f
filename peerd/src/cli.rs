//! The `peerd` command line: one binary, every subcommand. Parsing only; each
//! subcommand's work lives in its own module. The sandbox and the simulators are not
//! here: they are the `peerd-sandbox` binary of the `peerd-testbed` crate.

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
    /// Peers, upstreams and downstream subscribers of a running peerd (debug API).
    Status(crate::debug::status::StatusArgs),
    /// Check that peering works, each check with a reason; fails if any check fails.
    Check(crate::debug::check::CheckArgs),
    /// Write a cluster's east-west Gateway (`istio-eastwest`), so peers can reach it.
    Expose(crate::link::command::ExposeArgs),
    /// Peer clusters: an `istio-remote-peer-<cluster>` Gateway in each for every other.
    Link(crate::link::command::LinkArgs),
    /// Remove the peer Gateways `link` wrote.
    Unlink(crate::link::command::UnlinkArgs),
    /// Inspect a running peerd: served resources, support bundles (debug API).
    Debug(crate::debug::command::DebugArgs),
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

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Version => {
            println!("{}", crate::version::long());
            Ok(())
        }
        Command::Run(args) => run_daemon(args).await,
        Command::Status(args) => crate::debug::status::run(args).await,
        Command::Check(args) => crate::debug::check::run(args).await,
        Command::Expose(args) => crate::link::command::expose(args).await,
        Command::Link(args) => crate::link::command::link(args).await,
        Command::Unlink(args) => crate::link::command::unlink(args).await,
        Command::Debug(args) => crate::debug::command::run(args).await,
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
    let env = Env::from_process();
    let config = Config::load(&args.config, &env, &overrides)
        .with_context(|| format!("invalid configuration {}", args.config.display()))?;
    let mut peerd = crate::app::Peerd::start(config).await?;
    // Standalone: SIGHUP re-reads the file's peers (with Kubernetes it only logs).
    peerd.reload_peers_on_sighup(crate::app::ConfigSource {
        path: args.config.clone(),
        env,
        overrides,
    })?;
    let cancel = peerd.cancellation();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    peerd.wait().await
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
