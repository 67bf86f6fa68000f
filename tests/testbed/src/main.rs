//! The `peerd-sandbox` binary: the sandbox (a whole federation on loopback) and the
//! simulated istiod (`peerd-sandbox sim istiod`). See `peerd_testbed::cli`.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let telemetry = peerd::telemetry::init();
    let cli = peerd_testbed::cli::Cli::parse();
    let code = match peerd_testbed::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerd-sandbox: {e:#}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
