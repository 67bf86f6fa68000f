use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let telemetry = peerd::telemetry::init();
    let cli = peerd::cli::Cli::parse();
    let code = match peerd::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerd: {e:#}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
