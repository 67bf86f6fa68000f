//! Running a long, synchronous step of the data path (validating or diffing 100k
//! resources) without holding a runtime worker.
//!
//! Why: the chart gives peerd one CPU, hence one runtime worker. A bulk step of half a
//! second on that worker stalls every other task of the process: the xDS server's
//! pushes, the upstream streams' keepalives, the debug API. `tokio::task::block_in_place`
//! hands the worker's queue to another thread for the duration, so those tasks go on
//! while this one computes; the step itself keeps its place in its task (ordering and
//! borrows unchanged, no `'static` copy of the state).
//!
//! It owns only that decision; it must never change what the step computes.

/// A step this large (resources touched) is worth handing the worker off for; smaller
/// ones run in place (the hand-off costs a thread wake-up).
pub const HEAVY_STEP: usize = 2048;

/// Runs `step`, handing the runtime worker off first when `heavy` and when on a
/// multi-thread runtime (a current-thread runtime, as in some tests, has no worker to
/// hand off: the step then runs in place).
pub fn run<R>(heavy: bool, step: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let result = if heavy && multi_thread {
        tokio::task::block_in_place(step)
    } else {
        step()
    };
    if heavy {
        // A bulk step frees what it replaced: give it back now, not when this thread
        // next allocates (see `memory`).
        crate::memory::release_now();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While a heavy step holds the only worker's thread, another task still runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_heavy_step_does_not_hold_the_only_worker() {
        let (ran_tx, ran_rx) = std::sync::mpsc::channel::<()>();
        let other = tokio::spawn(async move {
            let _ = ran_tx.send(());
        });
        // The step waits for the other task: without the hand-off it would wait forever
        // (bounded here by the timeout, which then fails the test).
        let ran = run(true, || {
            ran_rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .is_ok()
        });
        assert!(ran, "the other task ran while the step held the thread");
        other.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_a_current_thread_runtime_the_step_runs_in_place() {
        assert_eq!(run(true, || 7), 7);
        assert_eq!(run(false, || 8), 8);
    }
}
