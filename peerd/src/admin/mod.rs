//! The plain-HTTP admin listeners, as in Istio's components: `/healthz/ready` and
//! `/healthz/live` (port 15021) and Prometheus `/metrics` (port 15020).
//!
//! It owns the readiness gates and the Prometheus recorder handle (metric descriptions
//! come from [`catalog`]; removed peers' series are left out by [`retired`]). It must never block
//! on the data path: readiness is a set of flags other components flip, or signals they
//! publish (read when asked, so readiness can never run ahead of them).

pub mod catalog;
pub mod retired;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One readiness gate.
enum Gate {
    /// Opened and closed with [`Readiness::set`].
    Flag(bool),
    /// Open while the signal is true: the very state another component acts on (the
    /// merged view's readiness), not a copy that a task would update later.
    Signal(watch::Receiver<bool>),
}

impl Gate {
    fn is_open(&self) -> bool {
        match self {
            Gate::Flag(open) => *open,
            Gate::Signal(signal) => *signal.borrow(),
        }
    }
}

/// Named readiness gates; ready when every registered gate is open.
#[derive(Default)]
pub struct Readiness {
    gates: Mutex<BTreeMap<&'static str, Gate>>,
}

impl Readiness {
    pub fn new() -> Arc<Readiness> {
        Arc::new(Readiness::default())
    }

    /// Registers a gate, initially closed.
    pub fn register(&self, gate: &'static str) {
        self.lock().entry(gate).or_insert(Gate::Flag(false));
    }

    /// Registers a gate that is open exactly while `signal` is true.
    pub fn register_signal(&self, gate: &'static str, signal: watch::Receiver<bool>) {
        self.lock().insert(gate, Gate::Signal(signal));
    }

    pub fn set(&self, gate: &'static str, open: bool) {
        self.lock().insert(gate, Gate::Flag(open));
    }

    /// `Ok` when ready, otherwise the closed gates.
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        let pending: Vec<&'static str> = self
            .lock()
            .iter()
            .filter(|(_, gate)| !gate.is_open())
            .map(|(g, _)| *g)
            .collect();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(pending)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Gate>> {
        self.gates.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves `/healthz/ready` and `/healthz/live` until cancelled.
pub async fn serve_health(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/healthz/ready",
            get(move || {
                let readiness = Arc::clone(&readiness);
                async move {
                    match readiness.check() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(pending) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready, pending: {}\n", pending.join(", ")),
                        ),
                    }
                }
            }),
        )
        .route("/healthz/live", get(|| async { "live\n" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .context("health server")
}

/// Serves the health endpoints on a thread of their own (a current-thread runtime) and
/// resolves when that server ends. Why: the chart gives peerd one CPU, hence one runtime
/// worker, and a kubelet probe must not wait behind a worker busy with a bulk sync (the
/// answer only reads flags). The listener moves to the thread's runtime.
pub fn serve_health_on_own_thread(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    cancel: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>>> {
    let listener = listener
        .into_std()
        .context("health listener: leaving the main runtime")?;
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("health listener: building its runtime")
                .and_then(|runtime| {
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener)
                            .context("health listener: joining its runtime")?;
                        serve_health(listener, readiness, cancel).await
                    })
                });
            let _ = done.send(result);
        })
        .context("starting the health thread")?;
    Ok(async move {
        finished
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("health thread ended without an answer")))
    })
}

/// Installs the process-wide Prometheus recorder (once) with buckets chosen per
/// quantity: connect latencies from 100 µs to 10 s, propagation from 1 ms to 30 s.
pub fn install_metrics_recorder() -> anyhow::Result<PrometheusHandle> {
    // A mutex, not a check-then-set: two daemons starting at once (tests) must not both
    // try to install the process-wide recorder.
    static HANDLE: std::sync::Mutex<Option<PrometheusHandle>> = std::sync::Mutex::new(None);
    let mut slot = HANDLE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = slot.as_ref() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("connect_duration_seconds".into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ],
        )
        .context("connect-duration buckets")?
        .set_buckets_for_metric(
            Matcher::Suffix("propagation_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )
        .context("propagation buckets")?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    catalog::describe_all();
    *slot = Some(handle.clone());
    Ok(handle)
}

/// Serves `/metrics` in the Prometheus text format until cancelled.
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let upkeep = handle.clone();
    let upkeep_cancel = cancel.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = upkeep_cancel.cancelled() => return,
                _ = tick.tick() => upkeep.run_upkeep(),
            }
        }
    });
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            // Removed peers' series are left out (see `retired`).
            async move { retired::without_retired(handle.render()) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .context("metrics server")
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The health listener on a free loopback port: its address, its cancel and its task.
    async fn start_health(
        readiness: &Arc<Readiness>,
    ) -> (
        SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let listener = bind("127.0.0.1:0".parse().unwrap(), "health")
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve_health(
            listener,
            Arc::clone(readiness),
            cancel.clone(),
        ));
        (addr, cancel, server)
    }

    async fn get_status(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn ready_only_when_every_gate_is_open() {
        let readiness = Readiness::new();
        readiness.register("local upstream synced");
        readiness.register("xds listening");
        let (addr, cancel, server) = start_health(&readiness).await;
        let resp = get_status(addr, "/healthz/ready").await;
        assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
        assert!(
            resp.contains("pending: local upstream synced, xds listening"),
            "{resp}"
        );
        readiness.set("local upstream synced", true);
        readiness.set("xds listening", true);
        let resp = get_status(addr, "/healthz/ready").await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(
            get_status(addr, "/healthz/live")
                .await
                .starts_with("HTTP/1.1 200")
        );
        cancel.cancel();
        server.await.unwrap().unwrap();
    }

    /// On its own thread the health server answers while every runtime worker is busy
    /// (here the only one, blocked until the answer arrives).
    #[tokio::test(flavor = "current_thread")]
    async fn own_thread_answers_while_the_runtime_is_blocked() {
        let readiness = Readiness::new();
        readiness.register("local upstream synced");
        let listener = bind("127.0.0.1:0".parse().unwrap(), "health")
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server =
            serve_health_on_own_thread(listener, Arc::clone(&readiness), cancel.clone()).unwrap();
        // A blocking client on this (the runtime's only) thread: nothing else of this
        // runtime can run until it has its answer.
        let answer = {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.contains("pending: local upstream synced"),
            "{answer}"
        );
        cancel.cancel();
        server.await.unwrap();
    }

    /// The merged view's own signal is the gate: there is no moment where the view is
    /// not ready and `/healthz/ready` says 200, nor the reverse once it is.
    #[tokio::test]
    async fn ready_only_once_the_merged_view_is_ready() {
        let merged = crate::view::View::pending("merged");
        let readiness = Readiness::new();
        readiness.register("local upstream synced");
        readiness.register_signal("merged view ready", merged.ready_signal());
        let (addr, cancel, server) = start_health(&readiness).await;
        // Every other gate open: only the view holds readiness back.
        readiness.set("local upstream synced", true);
        let resp = get_status(addr, "/healthz/ready").await;
        assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
        assert!(resp.contains("pending: merged view ready"), "{resp}");
        assert_eq!(readiness.check(), Err(vec!["merged view ready"]));
        merged.set_ready();
        // No task to run in between: the next request already sees it.
        assert_eq!(readiness.check(), Ok(()));
        let resp = get_status(addr, "/healthz/ready").await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        cancel.cancel();
        server.await.unwrap().unwrap();
    }
}
