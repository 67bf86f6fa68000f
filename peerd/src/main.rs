//! The `peerd` binary: every subcommand (see `peerd::cli`), on the mimalloc allocator.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: peerd holds ~100k small long-lived objects next to
/// large short-lived xDS message buffers; glibc keeps freed memory of both in its arenas
/// (higher RSS after each sync) and is slower on this allocation pattern (measured with
/// `cargo xtask bench xds`: lower RSS and less CPU per sync with mimalloc).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` (mimalloc.h, the same index in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Milliseconds before freed memory goes back to the OS. mimalloc v3's default (1 s)
/// leaves a full resync's transient buffers (tens of MB) counted in RSS, which is what a
/// container memory limit sees. 10 ms (v2's default) returned a bulk load's buffers
/// between its parts, only to fault them in (and have the kernel zero them) again: at
/// 100k workloads, 100 ms synced in 1.5–1.7 s against 1.7–2.3 s, for 5–9 MB more RSS
/// right after the sync and the same RSS once settled (`cargo xtask bench xds`, A/B).
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Sets mimalloc options, unless the operator set them (`MIMALLOC_PURGE_DELAY`).
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set stores an integer option; any value is valid for it and it
        // may be called at any time.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tune_allocator();
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
