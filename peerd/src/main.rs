//! The `peerd` binary: every subcommand (see `peerd::cli`), on the jemalloc allocator.

use std::process::ExitCode;

use clap::Parser;

/// jemalloc (see `peerd::memory` for why, and for its options).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C string pointer jemalloc may read from any thread.
#[repr(transparent)]
pub struct ConfString(*const std::ffi::c_char);

// SAFETY: it points to a 'static string that nothing ever writes.
#[allow(unsafe_code)]
unsafe impl Sync for ConfString {}

/// jemalloc reads its compiled-in options from this symbol (`const char *malloc_conf`);
/// `MALLOC_CONF` in the environment overrides them one by one.
#[allow(unsafe_code)]
#[unsafe(export_name = "malloc_conf")]
pub static MALLOC_CONF: ConfString = ConfString(peerd::memory::MALLOC_CONF.as_ptr());

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("peerd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

async fn run() -> ExitCode {
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
