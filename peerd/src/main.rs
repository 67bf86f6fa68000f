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
/// container memory limit sees. 100 ms was once faster (10 ms returned a bulk load's
/// buffers between its parts only to fault them in again); since the sync path
/// allocates less, 10 ms syncs as fast (median 1.15 s against 1.13 s over six A/B
/// runs of `cargo xtask bench xds`) with RSS right after the sync at 246 MB instead of
/// 287 MB (medians).
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// `mi_option_allow_thp` (mimalloc v3's mimalloc.h; not in libmimalloc-sys's list).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;
/// No transparent huge pages for the heap. With THP allowed (mimalloc's default, and
/// `madvise` mode on common kernels), the heap is backed by 2 MiB pages that count whole
/// in RSS however little of them is live, and a purge can return only whole ones: in the
/// one-hour soak, about half of each peerd's RSS was huge pages and every resync (a
/// partition, a peer's restart) left RSS a step higher for good. peerd's heap is small
/// objects with no TLB pressure worth trading that for.
const ALLOW_THP: std::ffi::c_long = 0;

/// Sets mimalloc options, unless the operator set them (`MIMALLOC_PURGE_DELAY`,
/// `MIMALLOC_ALLOW_THP`).
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // mimalloc reserved (and advised huge pages for) its first arena before main; the
        // option below only covers later mappings. PR_SET_THP_DISABLE stops huge pages
        // for every mapping of the process, as mimalloc itself does when the option is
        // set from the environment. Failure leaves huge pages on: RSS only, not safety.
        // SAFETY: prctl(PR_SET_THP_DISABLE) takes integer arguments and touches no memory.
        #[allow(unsafe_code)]
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
    for (variable, option, value) in [
        (
            "MIMALLOC_PURGE_DELAY",
            MI_OPTION_PURGE_DELAY,
            PURGE_DELAY_MS,
        ),
        ("MIMALLOC_ALLOW_THP", MI_OPTION_ALLOW_THP, ALLOW_THP),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: mi_option_set stores an integer option; any value is valid for it
            // and it may be called at any time.
            #[allow(unsafe_code)]
            unsafe {
                libmimalloc_sys::mi_option_set(option, value);
            }
        }
    }
}

/// How often freed memory past its purge delay is handed back. mimalloc purges only
/// when some thread calls into it, so a peerd that went quiet after a bulk load (a full
/// sync, then no change for minutes) kept tens of MB of freed buffers in RSS until the
/// next change (measured after a 100k sync with no client: 248 MB held, 232 MB with
/// this thread). A call with nothing to purge is cheap: this thread allocates nothing.
const PURGE_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Starts the thread that purges on [`PURGE_TICK`].
fn start_purger() {
    let spawned = std::thread::Builder::new()
        .name("mem-purge".into())
        .spawn(|| {
            loop {
                std::thread::sleep(PURGE_TICK);
                // SAFETY: mi_collect(false) only returns memory mimalloc holds as free (and
                // whose purge delay has passed) to the OS; any thread may call it anytime.
                #[allow(unsafe_code)]
                unsafe {
                    libmimalloc_sys::mi_collect(false);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the memory purge thread; freed memory is returned only when peerd allocates again");
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let runtime = match peerd::runtime::build() {
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
    start_purger();
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
