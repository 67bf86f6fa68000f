//! Giving a thread's freed memory back to the OS.
//!
//! Why: mimalloc (the binary's allocator) frees a page only when the thread that owns it
//! calls into the allocator; memory freed by another thread waits in the owner's queue.
//! A thread that did a bulk step (a 100k-resource sync, its revert) and then went quiet
//! kept those pages resident: measured by `cargo xtask bench xds`, a peerd serving an
//! empty view went from 47 MB to 132 MB after one burst and stayed there while idle. The
//! `mem-purge` thread returns only what is already free; these calls make each thread
//! free its own pages first. Threads call [`release_now`] after a heavy step and
//! [`release_if_due`] when they go idle (the runtime workers, on park).
//!
//! It owns only these calls; it must never allocate or decide anything else. Without
//! mimalloc as the global allocator (tests) the calls touch mimalloc's own empty heap.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// At most one idle collection per thread in this interval: a worker parks thousands of
/// times a second under load, and a collection walks the thread's pages.
const IDLE_INTERVAL: Duration = Duration::from_millis(100);

thread_local! {
    static LAST_RELEASE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Frees this thread's empty pages (including those emptied by other threads) and
/// returns freed memory past its purge delay to the OS.
pub fn release_now() {
    // SAFETY: mi_collect(false) only processes this thread's own free lists and hands
    // memory mimalloc holds as free back to the OS; any thread may call it at any time.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(false);
    }
    LAST_RELEASE.with(|last| last.set(Some(Instant::now())));
}

/// [`release_now`], unless this thread did so within the last 100 ms.
pub fn release_if_due() {
    let due = LAST_RELEASE.with(|last| last.get().is_none_or(|t| t.elapsed() >= IDLE_INTERVAL));
    if due {
        release_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_are_rate_limited_per_thread() {
        release_now();
        let first = LAST_RELEASE.with(Cell::get).unwrap();
        release_if_due(); // within 100 ms: skipped
        assert_eq!(LAST_RELEASE.with(Cell::get), Some(first));
        // Another thread has its own clock.
        std::thread::spawn(|| {
            release_if_due();
            assert!(LAST_RELEASE.with(Cell::get).is_some());
        })
        .join()
        .unwrap();
    }
}
