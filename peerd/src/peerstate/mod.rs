//! Restart-safe grace (docs/design.md §5.7): a node-local snapshot of each peer's last
//! complete state, so a peerd restarted while a peer is unreachable keeps serving that
//! peer to ztunnel until the peer's grace period ends, counted from when it went stale.
//!
//! - [`run_writer`] writes `<stateDir>/peer-state.bin` (atomically: a temporary file,
//!   fsync, rename) whenever a peer's committed state or staleness changed, checked once a
//!   second, and once more at shutdown; never before federation has committed the
//!   restored state ([`Federation::resynced`]), so a peerd restarted again before that
//!   keeps the file: a peer's recorded stale time survives any number of restarts. The
//!   file holds every configured peer whose committed state is complete: bodies and
//!   versions exactly as received, and since when the peer is stale (wall clock).
//! - [`restore`] reads it once at start, before the upstream clients and federation run:
//!   every resource goes through the same validation as a received one
//!   ([`Resource::from_wire`] and the peer's import filter), and the peer's origin is
//!   filled as a session that synced and ended, stale since the recorded time (or since
//!   the restart if it was synced when written: it may have stayed reachable until then).
//!   A peer whose grace has already ended, or that is no longer configured, is skipped.
//!
//! Owns the file and its timing; it must never block the async runtime (file work runs
//! in `spawn_blocking`), never trust the file (a corrupt, truncated, foreign-version or
//! foreign-cluster file, or one larger than the peers' caps allow, is ignored with a
//! WARN), and never restore the local cluster (its istiod is waited for instead).

pub mod format;

use std::fs::{self, File};
use std::io::{BufWriter, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::federation::Federation;
use crate::store::Store;
use crate::xds::client::ResourceFilter;
use crate::xds::resource::Resource;
use crate::xds::types::ResourceType;

use self::format::{FormatError, OriginToWrite, SnapshotRead};

/// The snapshot file in the state directory.
pub const FILE_NAME: &str = "peer-state.bin";
const TEMP_NAME: &str = "peer-state.bin.tmp";
/// How often the writer checks for a change.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Room for names, versions and framing beyond the peers' body caps.
const OVERHEAD_PER_RESOURCE: u64 = 1024;
const OVERHEAD_FIXED: u64 = 64 << 10;

/// What the persistence needs from the configuration.
#[derive(Debug, Clone)]
pub struct PeerStateOptions {
    pub dir: PathBuf,
    pub local_cluster: String,
    /// Largest file accepted when reading (from the peers' caps).
    pub max_file_bytes: u64,
    pub grace_period: Option<Duration>,
}

impl PeerStateOptions {
    /// `None` when no state directory is configured.
    pub fn from_config(config: &Config) -> Option<PeerStateOptions> {
        let dir = config.state_dir.clone()?;
        // Peers come and go at runtime, so the bound cannot be the sum of the peers known
        // at start: the memory budget bounds every origin's stored state together; the
        // configured peers' caps still count when they allow more.
        let by_peers = config.peers.iter().fold(OVERHEAD_FIXED, |sum, p| {
            sum.saturating_add(p.max_bytes as u64)
                .saturating_add((p.max_resources as u64).saturating_mul(OVERHEAD_PER_RESOURCE))
        });
        let by_budget = OVERHEAD_FIXED.saturating_add(config.memory_budget_bytes as u64);
        let max_file_bytes = by_peers.max(by_budget);
        Some(PeerStateOptions {
            dir,
            local_cluster: config.cluster.clone(),
            max_file_bytes,
            grace_period: config.disconnect_grace_period,
        })
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }
}

/// What [`restore`] did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// Per restored peer: its name, the resources restored, and how long it had been
    /// stale at the restart (`None`: it was synced when written; stale from the restart).
    pub restored: Vec<(String, usize, Option<Duration>)>,
    /// Peers in the file that were not restored, and why.
    pub skipped: Vec<(String, String)>,
    /// Resources refused by validation (each peer's others are restored).
    pub rejected: usize,
    /// Why the whole file was ignored, if it was.
    pub ignored: Option<String>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads the snapshot (if any) into the store and tells federation since when each
/// restored peer is stale. Call once at start, before federation runs and before the
/// upstream clients start. Never fails: an unusable file is ignored with a WARN.
pub async fn restore(
    options: &PeerStateOptions,
    store: &Arc<Store>,
    federation: &Arc<Federation>,
) -> RestoreReport {
    let job = {
        let options = options.clone();
        let store = Arc::clone(store);
        let federation = Arc::clone(federation);
        move || restore_blocking(&options, &store, &federation)
    };
    match tokio::task::spawn_blocking(job).await {
        Ok(report) => report,
        Err(e) => {
            tracing::warn!(error = %e, "peer state: restoring panicked; starting without it");
            RestoreReport {
                ignored: Some(format!("restore panicked: {e}")),
                ..RestoreReport::default()
            }
        }
    }
}

/// Why the file could not be read as a snapshot.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes, more than the {max} the peers' caps allow")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("{path}: {source}")]
    Format { path: String, source: FormatError },
}

fn read_file(options: &PeerStateOptions) -> Result<Option<SnapshotRead>, ReadError> {
    let path = options.file();
    let shown = path.display().to_string();
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ReadError::Io {
                path: shown,
                source,
            });
        }
    };
    let size = file
        .metadata()
        .map_err(|source| ReadError::Io {
            path: shown.clone(),
            source,
        })?
        .len();
    if size > options.max_file_bytes {
        return Err(ReadError::TooLarge {
            path: shown,
            size,
            max: options.max_file_bytes,
        });
    }
    let mut data = Vec::with_capacity(size as usize);
    // `take`: a file growing meanwhile cannot make this read more than the limit.
    file.take(options.max_file_bytes.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|source| ReadError::Io {
            path: shown.clone(),
            source,
        })?;
    if data.len() as u64 > options.max_file_bytes {
        return Err(ReadError::TooLarge {
            path: shown,
            size: data.len() as u64,
            max: options.max_file_bytes,
        });
    }
    format::decode(&data, &options.local_cluster)
        .map(Some)
        .map_err(|source| ReadError::Format {
            path: shown,
            source,
        })
}

fn restore_blocking(
    options: &PeerStateOptions,
    store: &Store,
    federation: &Federation,
) -> RestoreReport {
    let mut report = RestoreReport::default();
    let snapshot = match read_file(options) {
        Ok(Some(s)) => s,
        Ok(None) => {
            tracing::info!(dir = %options.dir.display(), "peer state: no snapshot yet; nothing to restore");
            return report;
        }
        Err(e) => {
            tracing::warn!(error = %e, "peer state: ignoring the snapshot file; down peers are withdrawn from ztunnel as if peerd had never seen them");
            report.ignored = Some(e.to_string());
            return report;
        }
    };
    let now_ms = unix_ms(SystemTime::now());
    let restarted_at = Instant::now();
    for origin in snapshot.origins {
        let name = origin.origin.clone();
        let shown: String = name.chars().take(64).collect();
        if name == options.local_cluster {
            report
                .skipped
                .push((shown, "the local cluster is never restored".into()));
            continue;
        }
        let Some(filter) = federation.import_filter(&name) else {
            tracing::info!(peer = %shown, "peer state: not a configured peer any more; not restored");
            report.skipped.push((shown, "not a configured peer".into()));
            continue;
        };
        // A clock set back makes a recorded time lie in the future: count from now then.
        let stale_for = origin
            .stale_since_unix_ms
            .map(|since| Duration::from_millis(now_ms.saturating_sub(since)));
        if let (Some(grace), Some(stale)) = (options.grace_period, stale_for)
            && stale >= grace
        {
            tracing::info!(peer = %shown, stale_for = ?stale, grace = ?grace, "peer state: the peer's grace period ended while peerd was down; not restored");
            report
                .skipped
                .push((shown, "grace period already over".into()));
            continue;
        }
        let mut restored = 0;
        let mut first_rejection = None;
        for kind in ResourceType::ALL {
            let mut upserts = Vec::new();
            for raw in &origin.resources[kind.index()] {
                let checked = Resource::from_wire(
                    kind,
                    raw.name.as_str(),
                    raw.version.as_str(),
                    raw.body.clone(),
                )
                .map_err(|e| e.to_string())
                .and_then(|r| filter.check(&name, &r).map(|()| r));
                match checked {
                    Ok(r) => upserts.push(Arc::new(r)),
                    Err(why) => {
                        report.rejected += 1;
                        first_rejection.get_or_insert_with(|| {
                            let n: String = raw.name.chars().take(128).collect();
                            let w: String = why.chars().take(256).collect();
                            format!("{n}: {w}")
                        });
                    }
                }
            }
            restored += upserts.len();
            store.apply(&name, kind, upserts, Vec::new());
        }
        if let Some(first) = first_rejection {
            tracing::warn!(peer = %shown, restored, first = %first, "peer state: some restored resources failed validation and were dropped");
        }
        // A session that synced and ended: federation treats it like a peer that
        // disconnected, and its client resumes from it (initial_resource_versions).
        for kind in ResourceType::ALL {
            store.mark_synced(&name, kind);
        }
        store.mark_unsynced(&name);
        let since = stale_for
            .and_then(|stale| restarted_at.checked_sub(stale))
            .unwrap_or(restarted_at);
        federation.restored(&name, since);
        tracing::info!(peer = %shown, resources = restored, stale_for = ?stale_for, "peer state: restored the peer's last state; served until it resyncs or its grace period ends");
        report.restored.push((shown, restored, stale_for));
    }
    report
}

/// One change-detection key per persisted peer: the committed states and the stale time.
type Fingerprint = Vec<(Arc<str>, u64, u64, Option<Instant>)>;

/// Writes the snapshot whenever it changed, until cancelled; then once more. Returns
/// only then. Errors are logged (once per change), never fatal.
pub async fn run_writer(
    options: PeerStateOptions,
    federation: Arc<Federation>,
    cancel: CancellationToken,
) {
    // Not before federation has taken in the restored state: until then no restored peer
    // counts as complete, and a write would replace the file with one lacking them, so a
    // second restart would withdraw them at once (and lose their recorded stale time).
    // Stopped before that, the file on disk is still the best record: left as it is.
    let resynced = tokio::select! {
        biased;
        () = federation.resynced() => true,
        () = cancel.cancelled() => false,
    };
    if !resynced {
        tracing::info!(
            "peer state: stopped before federation took in the restored state; the snapshot is left as it was"
        );
        return;
    }
    let mut written: Option<Fingerprint> = None;
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = tick.tick() => false,
        };
        // At shutdown, a peer marked stale only by the shutdown itself (its stream was
        // cancelled) was reachable until now: recorded as synced, it counts from the
        // next start instead.
        let cutoff = stopping.then(Instant::now);
        written = write_if_changed(&options, &federation, written, cutoff).await;
        if stopping {
            return;
        }
    }
}

async fn write_if_changed(
    options: &PeerStateOptions,
    federation: &Federation,
    written: Option<Fingerprint>,
    cutoff: Option<Instant>,
) -> Option<Fingerprint> {
    let peers = federation.complete_peers();
    let stale_since = |since: Option<Instant>| since.filter(|s| cutoff.is_none_or(|c| *s < c));
    let fingerprint: Fingerprint = peers
        .iter()
        .map(|p| {
            (
                Arc::clone(&p.origin),
                p.state[0].version,
                p.state[1].version,
                stale_since(p.stale_since),
            )
        })
        .collect();
    if written.as_ref() == Some(&fingerprint) {
        return written;
    }
    let now = Instant::now();
    let wall_now = SystemTime::now();
    let origins: Vec<OriginToWrite> = peers
        .into_iter()
        .map(|p| OriginToWrite {
            stale_since_unix_ms: stale_since(p.stale_since).map(|s| {
                wall_now
                    .checked_sub(now.saturating_duration_since(s))
                    .map_or(1, unix_ms)
                    .max(1)
            }),
            origin: p.origin,
            state: p.state,
        })
        .collect();
    let count = origins.len();
    let job = {
        let options = options.clone();
        move || write_atomically(&options, &origins)
    };
    match tokio::task::spawn_blocking(job).await {
        Ok(Ok(bytes)) => {
            tracing::debug!(peers = count, bytes, "peer state: snapshot written");
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "peer state: cannot write the snapshot; a restart now would withdraw down peers early");
        }
        Err(e) => tracing::warn!(error = %e, "peer state: writing panicked"),
    }
    // Also after a failure: retried at the next change, not every second.
    Some(fingerprint)
}

/// Writes the file through a temporary one, so a crash leaves the old or the new file,
/// never half of one. Returns its size.
fn write_atomically(options: &PeerStateOptions, origins: &[OriginToWrite]) -> anyhow::Result<u64> {
    let dir = &options.dir;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temp = dir.join(TEMP_NAME);
    let file = File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
    let mut out = BufWriter::with_capacity(256 << 10, file);
    format::encode(
        &mut out,
        &options.local_cluster,
        unix_ms(SystemTime::now()),
        origins,
    )
    .with_context(|| format!("writing {}", temp.display()))?;
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", temp.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", temp.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    drop(file);
    let path = options.file();
    fs::rename(&temp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    // The rename itself survives a power loss only once the directory is synced.
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(error = %e, "peer state: syncing the directory failed");
    }
    Ok(size)
}

#[cfg(test)]
mod tests;
