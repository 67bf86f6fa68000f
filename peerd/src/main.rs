//! The `peerd` binary: every subcommand (see `peerd::cli`), on the mimalloc allocator.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: peerd holds ~100k small long-lived objects next to
/// large short-lived xDS message buffers; glibc keeps freed memory of both in its arenas
/// (higher RSS after each sync) and is slower on this allocation pattern (measured with
/// `cargo xtask bench xds`: lower RSS and less CPU per sync with mimalloc).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
