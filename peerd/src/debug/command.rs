//! `peerd debug …`: the subcommands that read what a running peerd serves
//! (`resources`) and collect a support bundle (`dump`). Parsing and dispatch only.

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct DebugArgs {
    #[command(subcommand)]
    pub command: DebugCommand,
}

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// The resources of a view exactly as served (like `istioctl ztunnel-config
    /// workloads|services|policies`), filtered by the server.
    Resources(crate::debug::resources::ResourcesArgs),
    /// Write a support bundle (status, checks, redacted config, recent events, a metrics
    /// snapshot, versions) as a .tar.gz.
    Dump(crate::debug::dump::DumpArgs),
}

pub async fn run(args: DebugArgs) -> anyhow::Result<()> {
    match args.command {
        DebugCommand::Resources(args) => crate::debug::resources::run(args).await,
        DebugCommand::Dump(args) => crate::debug::dump::run(args).await,
    }
}
