//! The `peerd` command line: one binary, every subcommand. Parsing only; each
//! subcommand's work lives in its own module.

use clap::{Parser, Subcommand};

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
    /// Print the version and build information.
    Version,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Version => {
            println!("{}", crate::version::long());
            Ok(())
        }
    }
}
