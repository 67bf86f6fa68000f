//! Our own certificate, and the trusted roots, reloaded when their files change,
//! without dropping connections.
//!
//! [`CertSource`] holds the current `CertifiedKey` in an `ArcSwap` and is handed to
//! rustls as both `ResolvesServerCert` and `ResolvesClientCert`: each new handshake reads
//! the current key, established connections keep the one they started with. A watcher
//! task polls the files' modification time (with device, inode, size and a hash of the
//! bytes — so an atomic rename, a Kubernetes secret symlink swap or an in-place rewrite
//! is seen even within one coarse mtime tick) and swaps in the new key only when it
//! loads and matches its certificate. [`RootsSource`] does the same for a root bundle;
//! the verifiers in `tls` read it at every handshake.
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
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};

use super::tls::{TlsFileError, load_certified_key, load_roots};

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

/// Identity of the files' current contents: metadata plus a hash of the bytes. The
/// files are a few KB, and the hash catches an in-place rewrite of equal size within
/// one (coarse) mtime tick.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<(u64, u64, i64, i64, u64, u64)>);

fn fingerprint(paths: &[PathBuf]) -> Option<Fingerprint> {
    use std::hash::{Hash, Hasher};
    let mut parts = Vec::with_capacity(paths.len());
    for p in paths {
        let m = std::fs::metadata(p).ok()?;
        let bytes = std::fs::read(p).ok()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hasher);
        parts.push((
            m.dev(),
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            m.size(),
            hasher.finish(),
        ));
    }
    Some(Fingerprint(parts))
}

/// Something loaded from files, swapped atomically when the files change.
struct Watched<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: fn(&[PathBuf]) -> Result<T, TlsFileError>,
    current: ArcSwap<T>,
    /// Fingerprint of the files last examined (loaded or rejected), so one bad write is
    /// reported once, not at every poll.
    seen: Mutex<Option<Fingerprint>>,
    generation: AtomicU64,
}

impl<T> Watched<T> {
    fn from_files(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: fn(&[PathBuf]) -> Result<T, TlsFileError>,
    ) -> Result<Watched<T>, TlsFileError> {
        let seen = fingerprint(&paths);
        let loaded = load(&paths)?;
        Ok(Watched {
            what,
            paths,
            load,
            current: ArcSwap::from_pointee(loaded),
            seen: Mutex::new(seen),
            generation: AtomicU64::new(0),
        })
    }

    fn fixed(what: &'static str, value: Arc<T>) -> Watched<T> {
        Watched {
            what,
            paths: Vec::new(),
            load: |_| Err(TlsFileError::Config("fixed material has no files".into())),
            current: ArcSwap::new(value),
            seen: Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn check_now(&self) -> ReloadOutcome {
        if self.paths.is_empty() {
            return ReloadOutcome::Unchanged;
        }
        let mut seen = match self.seen.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = fingerprint(&self.paths);
        if now.is_some() && now == *seen {
            return ReloadOutcome::Unchanged;
        }
        // A missing file (mid-rotation, or deleted) counts as a change to examine; a
        // repeated failure on identical files is reported once.
        let first = self.paths.first().map(|p| p.display().to_string());
        let outcome = match (self.load)(&self.paths) {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded));
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(what = self.what, file = ?first, "reloaded");
                ReloadOutcome::Reloaded
            }
            Err(e) => {
                if now.is_some() {
                    tracing::warn!(what = self.what, error = %e, "files changed but are unusable; keeping the previous version");
                }
                ReloadOutcome::Rejected(e.to_string())
            }
        };
        *seen = now;
        outcome
    }
}

/// Anything [`watch`] can poll.
pub trait Reloadable: Send + Sync + 'static {
    fn check_now(&self) -> ReloadOutcome;
}

/// Polls `source` every `interval` until the returned handle is dropped.
pub fn watch<R: Reloadable>(source: Arc<R>, interval: Duration) -> WatchHandle {
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

fn load_key_pair(paths: &[PathBuf]) -> Result<CertifiedKey, TlsFileError> {
    match paths {
        [chain, key] => load_certified_key(chain, key),
        _ => Err(TlsFileError::Config(
            "a certificate needs a chain and a key file".into(),
        )),
    }
}

fn load_root_bundle(paths: &[PathBuf]) -> Result<RootCertStore, TlsFileError> {
    match paths {
        [root] => load_roots(root).map(|r| RootCertStore::clone(&r)),
        _ => Err(TlsFileError::Config("a root bundle is one file".into())),
    }
}

/// A certificate and key for our side of TLS connections.
pub struct CertSource {
    inner: Watched<CertifiedKey>,
}

impl fmt::Debug for CertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSource")
            .field("files", &self.inner.paths)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl CertSource {
    /// Loads `cert_chain` + `key` now (failing if they are unusable); call
    /// [`watch`](Self::watch) to follow later changes.
    pub fn from_files(cert_chain: &Path, key: &Path) -> Result<Arc<CertSource>, TlsFileError> {
        Ok(Arc::new(CertSource {
            inner: Watched::from_files(
                "certificate",
                vec![cert_chain.to_path_buf(), key.to_path_buf()],
                load_key_pair,
            )?,
        }))
    }

    /// A fixed certificate that never reloads.
    pub fn fixed(key: CertifiedKey) -> Arc<CertSource> {
        Arc::new(CertSource {
            inner: Watched::fixed("certificate", Arc::new(key)),
        })
    }

    /// The certificate new handshakes use.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.inner.current.load_full()
    }

    /// How many times a new certificate was swapped in.
    pub fn generation(&self) -> u64 {
        self.inner.generation()
    }

    /// Checks the files once and swaps in the new certificate when they changed and
    /// load cleanly.
    pub fn check_now(&self) -> ReloadOutcome {
        self.inner.check_now()
    }

    /// Polls the files every `interval` until the returned handle is dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> WatchHandle {
        watch(Arc::clone(self), interval)
    }
}

impl Reloadable for CertSource {
    fn check_now(&self) -> ReloadOutcome {
        self.inner.check_now()
    }
}

/// A root bundle (trust anchors), reloaded when its file changes. Verifiers built by
/// [`super::tls`] read the current bundle at every handshake.
pub struct RootsSource {
    inner: Watched<RootCertStore>,
}

impl fmt::Debug for RootsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootsSource")
            .field("files", &self.inner.paths)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl RootsSource {
    /// Loads the bundle now (failing if it is unusable).
    pub fn from_file(path: &Path) -> Result<Arc<RootsSource>, TlsFileError> {
        Ok(Arc::new(RootsSource {
            inner: Watched::from_files("root bundle", vec![path.to_path_buf()], load_root_bundle)?,
        }))
    }

    /// Fixed roots that never reload.
    pub fn fixed(roots: Arc<RootCertStore>) -> Arc<RootsSource> {
        Arc::new(RootsSource {
            inner: Watched::fixed("root bundle", roots),
        })
    }

    pub fn current(&self) -> Arc<RootCertStore> {
        self.inner.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.inner.generation()
    }

    pub fn check_now(&self) -> ReloadOutcome {
        self.inner.check_now()
    }

    pub fn watch(self: &Arc<Self>, interval: Duration) -> WatchHandle {
        watch(Arc::clone(self), interval)
    }
}

impl Reloadable for RootsSource {
    fn check_now(&self) -> ReloadOutcome {
        self.inner.check_now()
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
