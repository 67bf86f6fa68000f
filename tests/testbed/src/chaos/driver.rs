//! Drives a run: waits in small ticks, and on every tick lets the observer check its
//! invariants, checks (e) that no peerd exited unless the runner killed it, and samples
//! every peerd's resource figures. Faults are scripted on top of it (`catalogue`).
//!
//! Owns the rig and the observer for the run; it is the only place that starts or kills
//! processes after start-up.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::observer::Observer;
use super::procstat::{self, ProcStat};
use super::rig::Rig;

/// How often invariants are checked (at least; a slow check stretches it).
pub const TICK: Duration = Duration::from_millis(250);

/// Per-process figures across a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProcTrack {
    /// After the first full convergence.
    pub start: Option<ProcStat>,
    /// Just before the first fault, after one interval of churn (a soak only): growth
    /// from here to the end is drift; from the start to here, warm-up.
    pub warm: Option<ProcStat>,
    pub end: Option<ProcStat>,
    pub peak_rss_bytes: u64,
}

impl ProcTrack {
    /// Starts the figures over from `now`: a restarted peerd is a new process, measured
    /// from the federation's convergence after its restart, never against its
    /// predecessor's start.
    pub fn restart_from(&mut self, now: ProcStat) {
        self.start = Some(now);
        self.warm = None;
        self.end = Some(now);
        self.peak_rss_bytes = now.rss_bytes;
    }
}

pub struct Driver {
    pub rig: Rig,
    pub obs: Observer,
    pub started: Instant,
    /// Clusters whose peerd the runner stopped on purpose (not a violation of (e)).
    killed: BTreeSet<usize>,
    /// Clusters whose peerd was restarted since its figures were last marked.
    restarted: BTreeSet<usize>,
    pub procs: BTreeMap<String, ProcTrack>,
    last_tick_cost: Duration,
}

impl Driver {
    pub fn new(rig: Rig, obs: Observer, started: Instant) -> Driver {
        Driver {
            rig,
            obs,
            started,
            killed: BTreeSet::new(),
            restarted: BTreeSet::new(),
            procs: BTreeMap::new(),
            last_tick_cost: Duration::ZERO,
        }
    }

    pub fn cluster_count(&self) -> usize {
        self.rig.clusters.len()
    }

    pub fn name(&self, i: usize) -> String {
        self.rig.clusters[i].layout.name.clone()
    }

    /// One round of checks.
    pub fn tick(&mut self) {
        let begun = Instant::now();
        self.obs.tick();
        for i in 0..self.rig.clusters.len() {
            if self.killed.contains(&i) {
                continue;
            }
            if !self.rig.clusters[i].peerd_running() {
                let what = format!(
                    "{}'s peerd exited without being killed (log: {})",
                    self.name(i),
                    self.rig.clusters[i].log_path().display()
                );
                self.obs.violate("e", what);
                // Keep the run going: a missing cluster would fail every later fault.
                if let Err(e) = self.rig.start_peerd(i) {
                    eprintln!("chaos: restarting {}: {e:#}", self.name(i));
                }
            }
            if let Some(pid) = self.rig.clusters[i].peerd_pid()
                && let Some(stat) = procstat::read(pid)
            {
                let track = self
                    .procs
                    .entry(format!("peerd {}", self.name(i)))
                    .or_default();
                track.peak_rss_bytes = track.peak_rss_bytes.max(stat.rss_bytes);
                track.end = Some(stat);
            }
        }
        if let Some(stat) = procstat::read(std::process::id()) {
            let track = self
                .procs
                .entry("runner (sims, APIs, observer)".into())
                .or_default();
            track.peak_rss_bytes = track.peak_rss_bytes.max(stat.rss_bytes);
            track.end = Some(stat);
        }
        self.last_tick_cost = begun.elapsed();
    }

    /// Marks the current figures as every process's start (after the first sync).
    pub fn mark_proc_start(&mut self) {
        self.tick();
        for track in self.procs.values_mut() {
            track.start = track.end;
            track.peak_rss_bytes = track.end.map_or(0, |s| s.rss_bytes);
        }
    }

    /// Marks the current figures of every process as warm (see [`ProcTrack::warm`]).
    pub fn mark_warm(&mut self) {
        self.tick();
        for track in self.procs.values_mut() {
            track.warm = track.end;
        }
    }

    /// Marks each restarted peerd's current figures as its start. Call once the fault
    /// converged: the same point [`Driver::mark_proc_start`] marks every process at, when
    /// each peerd holds its peers' states. At readiness a restarted peerd has synced only
    /// its local istiod, and its peers' states are still arriving.
    pub fn mark_restarted_starts(&mut self) {
        for i in std::mem::take(&mut self.restarted) {
            let key = format!("peerd {}", self.name(i));
            if let Some(pid) = self.rig.clusters[i].peerd_pid()
                && let Some(stat) = procstat::read(pid)
            {
                self.procs.entry(key).or_default().restart_from(stat);
            }
        }
    }

    /// Waits `d`, checking on every tick.
    pub async fn idle(&mut self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            self.tick();
            let now = Instant::now();
            if now >= until {
                return;
            }
            let pause = TICK.max(self.last_tick_cost * 2).min(until - now);
            tokio::time::sleep(pause).await;
        }
    }

    /// Waits until the observer sees exactly the expected state (d); returns how long it
    /// took, or the last mismatch once `timeout` passed.
    pub async fn converge(&mut self, timeout: Duration) -> Result<Duration, String> {
        let begun = Instant::now();
        loop {
            self.tick();
            let mismatch = self.obs.mismatch();
            if mismatch.is_empty() {
                return Ok(begun.elapsed());
            }
            if begun.elapsed() >= timeout {
                return Err(mismatch.summary());
            }
            let pause = TICK.max(self.last_tick_cost * 2);
            tokio::time::sleep(pause).await;
        }
    }

    /// SIGKILL cluster `i`'s peerd; its peers lose it from now.
    pub fn kill(&mut self, i: usize) {
        self.killed.insert(i);
        self.obs.peer_down(i);
        self.rig.kill_peerd(i);
    }

    /// Starts cluster `i`'s killed peerd again (the peer stays "down" for the observer
    /// until the fault has converged: a restarted peerd still has to resync).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.rig.start_peerd(i)?;
        self.killed.remove(&i);
        self.restarted.insert(i);
        Ok(())
    }

    /// Waits until cluster `i`'s peerd accepts connections on its xDS port (at most
    /// `timeout`), checking meanwhile.
    pub async fn wait_listening(&mut self, i: usize, timeout: Duration) -> bool {
        let addr = self.rig.clusters[i].layout.xds();
        self.poll_until(timeout, || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await
    }

    /// Waits until cluster `i`'s peerd answers `/healthz/ready` with 200 (its local
    /// istiod synced, so it serves its peers again), at most `timeout`, checking
    /// meanwhile. A restarted peerd listens well before that: until then it refuses its
    /// peers (`export not ready`), so the fault it stands for is still in effect.
    pub async fn wait_ready(&mut self, i: usize, timeout: Duration) -> bool {
        let addr = self.rig.clusters[i].layout.health();
        self.poll_until(timeout, || is_ready(addr)).await
    }

    /// Runs `check` every 50 ms (ticking in between) until it holds or `timeout` passed.
    async fn poll_until<F, Fut>(&mut self, timeout: Duration, mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if check().await {
                return true;
            }
            self.idle(Duration::from_millis(50)).await;
        }
        false
    }
}

/// One `GET /healthz/ready` on `addr`: whether it answered 200 within a second.
async fn is_ready(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: peerd\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        // The status line is all that is needed; the body is a few bytes.
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), exchange).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP server on loopback answering every request with `reply`.
    async fn answering(reply: &'static str) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 256];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        addr
    }

    #[test]
    fn a_restart_starts_the_figures_over() {
        let first = ProcStat {
            rss_bytes: 60 << 20,
            fds: 40,
            threads: 6,
        };
        let mut track = ProcTrack {
            start: Some(first),
            warm: Some(first),
            end: Some(ProcStat {
                rss_bytes: 90 << 20,
                ..first
            }),
            peak_rss_bytes: 95 << 20,
        };
        let restarted = ProcStat {
            rss_bytes: 70 << 20,
            fds: 41,
            threads: 7,
        };
        track.restart_from(restarted);
        assert_eq!(track.start, Some(restarted));
        assert_eq!(
            track.warm, None,
            "the predecessor's warm figures are not its own"
        );
        assert_eq!(track.end, Some(restarted));
        assert_eq!(track.peak_rss_bytes, 70 << 20);
    }

    #[tokio::test]
    async fn ready_only_on_a_200() {
        let ok = answering("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n").await;
        let pending = answering(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 30\r\n\r\nnot ready, pending: xds listening\n",
        )
        .await;
        assert!(is_ready(ok).await);
        assert!(!is_ready(pending).await);
        // Nothing listening: not ready, and no error escapes.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(!is_ready(closed).await);
    }
}
