//! Our own certificate, reloaded when its files change, without dropping connections.
//!
//! [`CertSource`] holds the current `CertifiedKey` in an `ArcSwap` and is handed to
//! rustls as both `ResolvesServerCert` and `ResolvesClientCert`: each new handshake reads
//! the current key, established connections keep the one they started with. A watcher
//! task polls the files' metadata (device, inode, mtime, size — so an atomic rename or a
//! Kubernetes secret symlink swap is seen even within one mtime tick) and swaps in the
//! new key only when it loads and matches its certificate.
//!
//! This file must never replace a working certificate with a broken one: a bad new file
//! is logged (path and reason, never key material) and the old certificate stays.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::tls::{TlsFileError, load_certified_key};

/// What one check of the files did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files look the same as at the last check.
    Unchanged,
    /// New files were loaded and are now served.
    Reloaded,
    /// The files changed but do not load; the previous certificate is kept.
    Rejected(String),
}

/// Identity of the files' current contents, cheap to read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<(u64, u64, i64, i64, u64)>);

fn fingerprint(paths: &[&Path]) -> Option<Fingerprint> {
    let mut parts = Vec::with_capacity(paths.len());
    for p in paths {
        let m = std::fs::metadata(p).ok()?;
        parts.push((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()));
    }
    Some(Fingerprint(parts))
}

struct Files {
    cert_chain: PathBuf,
    key: PathBuf,
}

#[derive(Default)]
struct WatchState {
    /// Fingerprint of the files last examined (loaded or rejected), so one bad write is
    /// reported once, not at every poll.
    seen: Option<Fingerprint>,
}

/// A certificate and key for our side of TLS connections.
pub struct CertSource {
    current: ArcSwap<CertifiedKey>,
    files: Option<Files>,
    state: Mutex<WatchState>,
    generation: AtomicU64,
}

impl fmt::Debug for CertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSource")
            .field("cert_chain", &self.files.as_ref().map(|f| &f.cert_chain))
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl CertSource {
    /// Loads `cert_chain` + `key` now (failing if they are unusable); call
    /// [`watch`](Self::watch) to follow later changes.
    pub fn from_files(cert_chain: &Path, key: &Path) -> Result<Arc<CertSource>, TlsFileError> {
        let seen = fingerprint(&[cert_chain, key]);
        let loaded = load_certified_key(cert_chain, key)?;
        Ok(Arc::new(CertSource {
            current: ArcSwap::from_pointee(loaded),
            files: Some(Files {
                cert_chain: cert_chain.to_path_buf(),
                key: key.to_path_buf(),
            }),
            state: Mutex::new(WatchState { seen }),
            generation: AtomicU64::new(0),
        }))
    }

    /// A fixed certificate that never reloads.
    pub fn fixed(key: CertifiedKey) -> Arc<CertSource> {
        Arc::new(CertSource {
            current: ArcSwap::from_pointee(key),
            files: None,
            state: Mutex::new(WatchState::default()),
            generation: AtomicU64::new(0),
        })
    }

    /// The certificate new handshakes use.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// How many times a new certificate was swapped in.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Checks the files once and swaps in the new certificate when they changed and
    /// load cleanly.
    pub fn check_now(&self) -> ReloadOutcome {
        let Some(files) = &self.files else {
            return ReloadOutcome::Unchanged;
        };
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = fingerprint(&[&files.cert_chain, &files.key]);
        if now.is_some() && now == state.seen {
            return ReloadOutcome::Unchanged;
        }
        // A missing file (mid-rotation, or deleted) counts as a change to examine, but a
        // repeated failure on identical files is reported once.
        let outcome = match load_certified_key(&files.cert_chain, &files.key) {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded));
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(cert_chain = %files.cert_chain.display(), "reloaded certificate");
                ReloadOutcome::Reloaded
            }
            Err(e) => {
                if now.is_some() {
                    tracing::warn!(error = %e, "certificate files changed but are unusable; keeping the previous certificate");
                }
                ReloadOutcome::Rejected(e.to_string())
            }
        };
        state.seen = now;
        outcome
    }

    /// Polls the files every `interval` until the returned handle is dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> WatchHandle {
        let source = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let source = Arc::clone(&source);
                // File reads are blocking; keep them off the async workers.
                let _ = tokio::task::spawn_blocking(move || source.check_now()).await;
            }
        });
        WatchHandle { task }
    }
}

/// Stops the watcher when dropped.
#[derive(Debug)]
pub struct WatchHandle {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ResolvesServerCert for CertSource {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertSource {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
