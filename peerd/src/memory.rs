//! The allocator's settings and giving freed memory back to the OS.
//!
//! peerd runs on jemalloc (the `peerd` binary sets it as the global allocator, unprefixed,
//! so it is the process's `malloc`). Why jemalloc: peerd holds ~100k small long-lived
//! objects while churn replaces them one by one, next to large short-lived xDS buffers.
//! mimalloc (peerd's allocator before) keeps a 64 KiB page resident while any object on
//! it lives, so under churn the long-lived objects spread over ever more half-empty
//! pages. Two 10-minute `peerd-sandbox soak`s side by side (three clusters, 200
//! changes/s each): mimalloc's peerds ended at 56–79 MiB, 1.10–1.30× their RSS after the
//! first sync; jemalloc's at 50–59 MiB, 1.11–1.13×, and 46–54 MiB (1.09–1.10×) with the
//! options below (design §13 has the one-hour figures).
//!
//! It owns only these settings and calls; it must never allocate or decide anything else.

use std::ffi::CStr;

/// jemalloc's options, compiled in (the binary exports them as `malloc_conf`);
/// `MALLOC_CONF` in the environment overrides any of them. Each one is why RSS follows
/// live memory, which is what a container memory limit counts:
///
/// - `background_thread:true`: a jemalloc thread returns freed pages on time, so a peerd
///   that went quiet after a bulk load (a full sync, then no change for minutes) does not
///   keep that load's buffers until it next allocates;
/// - `dirty_decay_ms:1000,muzzy_decay_ms:0`: freed pages go back within about a second,
///   with `MADV_DONTNEED` (lazily freed `MADV_FREE` pages would still count in RSS);
/// - `narenas:1`: one arena for every thread, instead of four per CPU that each keep
///   their own partly used pages (peerd's hot paths are a few threads; the per-thread
///   caches take the contention);
/// - `tcache_max:1024`: the per-thread caches hold only objects up to 1 KiB;
/// - `thp:never`: no transparent huge pages, which count whole in RSS however little of
///   them is live and can only be returned whole.
pub const MALLOC_CONF: &CStr =
    c"background_thread:true,narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache_max:1024,thp:never";

/// `MALLCTL_ARENAS_ALL` (jemalloc.h): the arena index that means every arena.
const EVERY_ARENA_PURGE: &CStr = c"arena.4096.purge";
const THREAD_CACHE_FLUSH: &CStr = c"thread.tcache.flush";

/// Runs a jemalloc control that takes and returns nothing; false when jemalloc refused it
/// (e.g. the thread cache is disabled by `MALLOC_CONF`).
fn control(name: &CStr) -> bool {
    // SAFETY: `name` is a NUL-terminated string, and a void control reads and writes no
    // buffer (all pointers null, length 0); any thread may call mallctl at any time.
    #[allow(unsafe_code)]
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    rc == 0
}

/// Gives what a bulk step (a 100k-resource sync, its revert) just freed back to the OS
/// now rather than over the decay time: flushes this thread's cache, then purges every
/// arena's freed pages. Called after heavy steps only (a purge walks the freed pages).
pub fn release_now() {
    control(THREAD_CACHE_FLUSH);
    control(EVERY_ARENA_PURGE);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever allocator a test binary runs on, jemalloc is linked into it: the controls
    /// must be ones jemalloc knows.
    #[test]
    fn the_controls_are_known_to_jemalloc() {
        assert!(control(EVERY_ARENA_PURGE), "{EVERY_ARENA_PURGE:?}");
        assert!(control(THREAD_CACHE_FLUSH), "{THREAD_CACHE_FLUSH:?}");
        assert!(!control(c"no.such.control"));
    }
}
