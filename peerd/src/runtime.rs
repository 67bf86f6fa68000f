//! The multi-thread tokio runtime the `peerd` binary runs on, with thread settings that
//! let mimalloc give memory back (see `memory`).
//!
//! It owns only how the runtime's threads are set up; it must never run anything itself.

use std::time::Duration;

/// How long an idle thread of the runtime's blocking pool lives (tokio's default: 10 s).
///
/// Why: a heavy step (`xds::offload`) moves its thread into that pool, and an idle pool
/// thread never calls into mimalloc, so what other threads free into its pages waits in
/// its queue: the pages stay resident and nobody reuses them. With the default, those
/// threads were reused before they ever expired and the soak's RSS crept up
/// (`peerd-sandbox soak --only "never reads"`, 4 minutes, two runs side by side: 1.12–1.27×
/// the value after the first sync with 10 s, 1.06–1.08× with 200 ms). A thread that
/// exits hands its pages back; a new one costs tens of microseconds, and a step is heavy
/// only from thousands of resources.
pub const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_millis(200);

/// The runtime: every driver; workers free their own pages when they go idle and before
/// they exit (mimalloc frees a page only on a call from its owner); idle blocking threads
/// exit after [`BLOCKING_THREAD_KEEP_ALIVE`].
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    builder().build()
}

fn builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .enable_all()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .on_thread_park(crate::memory::release_if_due)
        .on_thread_stop(crate::memory::release_now);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "rt-keepalive";

    /// This process's threads named [`NAME`] (the kernel keeps 15 bytes of a name).
    fn threads_named_here() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == NAME)
            .count()
    }

    /// Polls `holds` every 50 ms for up to 5 s: a liveness bound (under half of tokio's
    /// default keep-alive, 25 times ours), not a speed goal.
    fn eventually(holds: impl Fn() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !holds() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// The thread a heavy step ran on goes idle in the blocking pool after the step; it
    /// must exit long before tokio's default 10 s.
    #[test]
    fn the_thread_of_a_heavy_step_exits_soon_after_going_idle() {
        let runtime = builder()
            .worker_threads(1)
            .thread_name(NAME)
            .build()
            .unwrap();
        let handed_off = runtime.block_on(async {
            tokio::spawn(async {
                // The step's thread and the one the worker was handed to.
                tokio::task::block_in_place(|| eventually(|| threads_named_here() == 2))
            })
            .await
            .unwrap()
        });
        assert!(
            handed_off,
            "the heavy step handed its worker to a second thread"
        );
        assert!(
            eventually(|| threads_named_here() == 1),
            "the idle thread left after the step exited: {} threads remain",
            threads_named_here()
        );
    }
}
