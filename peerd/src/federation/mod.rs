//! Federation turns what the upstreams sent (the [`Store`], one view per origin) into the
//! views peerd serves: the merged view for ztunnel ([`Federation::merged`]) and the export
//! views for peers ([`Federation::export_view`]).
//!
//! Pieces, one idea per file: [`settings`] (what it is configured with), [`naming`]
//! (`*.mesh.internal`), [`export`] (what peers may read), [`import`] (the per-peer
//! [`crate::xds::ResourceFilter`]), [`grace`] (committed state per origin, stale peers,
//! withdrawal), [`merge`] (the merged view and its conflict rules), [`conflicts`]
//! (reporting), [`selector`] (who gets which view on the shared listener).
//!
//! Data flow: store event → [`grace::Commits`] decides whether the change is committed
//! (parked while the origin resyncs) → for the local cluster, [`export::Exporter`] updates
//! the export views and says which merged names that touches → [`merge::Merger`]
//! recomputes only those names. [`Federation::run`] drives it: a task follows the events
//! and the grace timer, and every computation runs on federation's own OS thread, so a
//! bulk merge never holds a runtime worker (peerd gets one CPU: the xDS server, health,
//! metrics and the peer monitor share that worker). Events are handled one batch at a
//! time, in order.
//!
//! Wiring for `peerd run` (the lead's):
//! ```ignore
//! let fed = Federation::new(FederationConfig::from_config(&config), store.clone());
//! for peer in &config.peers {   // one AdsClient per imported peer, with its import filter
//!     let filter = fed.import_filter(&peer.cluster).unwrap();
//!     // mTLS with our SPIFFE cert; ServerIdentity::TrustDomain(peer.trust_domain);
//!     // header ("clusterid", local cluster) so a peer can tell clusters sharing a trust domain apart.
//!     AdsClient::new(opts, store.clone()).with_filter(filter).spawn(cancel.clone());
//! }
//! // Server TLS: ClientAuth::Optional(peering roots), so peers present certs and ztunnel does not.
//! let server = AdsServer::new(fed.selector(Some(token_verifier)), server_options);
//! tokio::spawn(fed.clone().run(cancel.clone()));
//! ```
//!
//! Peers come and go at runtime ([`peer_set`]): [`Federation::set_peer`] adds or updates
//! one (its import filter and what the shared listener serves it),
//! [`Federation::withdraw_peer`] removes one and withdraws its state at once (an
//! operator removed it: no grace period, unlike a disconnected peer).
//!
//! It must never write resources to the store (it only withdraws a whole origin after its
//! grace period or when the peer is removed), and never copy the whole state for one
//! change.

pub mod conflicts;
pub mod export;
pub mod grace;
pub mod import;
pub mod merge;
pub mod naming;
pub mod peer_set;
pub mod selector;
pub mod settings;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_ordering;
#[cfg(test)]
mod tests_runtime;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ServiceRef;
use crate::store::{Store, StoreEvent};
use crate::view::{View, ViewState};
use crate::xds::auth::TokenVerifier;
use crate::xds::types::ResourceType;

pub use conflicts::{Conflict, ConflictKind, Conflicts};
pub use export::{DroppedWaypoint, Exporter, WaypointDrop};
pub use import::{ImportError, ImportFilter, ImportStatus};
pub use peer_set::PeerSet;
pub use selector::FederationSelector;
pub use settings::{ExportFlavor, FederationConfig, GatewayTarget, PeerPolicy};

/// Most names one coalesced recompute takes (bounds how long other events wait).
const MAX_BATCH: usize = 65_536;

/// What status shows about one peer's contribution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerFederationStatus {
    pub cluster: String,
    pub flat: bool,
    /// Every type has completed its first response since the stream (re)connected.
    pub synced: bool,
    /// Seconds the peer has been stale (disconnected or resyncing), if it is.
    pub stale_seconds: Option<u64>,
    /// What is committed from this peer.
    pub imported: ImportedCounts,
    pub import: ImportStatus,
}

/// Resource counts committed from one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ImportedCounts {
    pub workloads: usize,
    pub services: usize,
    pub authorizations: usize,
}

/// What readers see of the commits without waiting for a computation: per origin, the
/// committed state of each type and since when it is stale. Republished after every
/// change of the commits (a few `Arc` clones per origin).
#[derive(Default)]
struct PublishedCommits {
    committed: HashMap<Arc<str>, [Option<Arc<ViewState>>; 2]>,
    stale_for: HashMap<Arc<str>, (Instant, std::time::Duration)>,
    /// Origins whose every type's committed state comes from a completed sync.
    complete: HashSet<Arc<str>>,
}

/// A peer's committed state as the peer-state snapshot records it
/// ([`Federation::complete_peers`]).
pub struct CommittedPeer {
    pub origin: Arc<str>,
    /// The committed state of each type (each type read from its own snapshot).
    pub state: [Arc<ViewState>; 2],
    /// Since when the peer is stale (`None`: synced).
    pub stale_since: Option<Instant>,
}

/// A unit of work for federation's thread.
type Job = Box<dyn FnOnce() + Send>;

/// Test hook: runs before each recompute with its name count.
#[cfg(test)]
type RecomputeHook = Arc<dyn Fn(usize) + Send + Sync>;

/// The merged view, the export views, and the rules between them.
pub struct Federation {
    config: FederationConfig,
    store: Arc<Store>,
    exporter: Arc<Exporter>,
    merger: merge::Merger,
    conflicts: Arc<Conflicts>,
    commits: Mutex<grace::Commits>,
    published: ArcSwap<PublishedCommits>,
    /// The peers now (`config.peers` is only the initial set).
    peers: Arc<PeerSet>,
    imports: Mutex<BTreeMap<String, Arc<ImportFilter>>>,
    /// [`Federation::run`] is following events: global-service updates go to its thread.
    running: AtomicBool,
    pending_globals: Mutex<Option<Vec<ServiceRef>>>,
    globals_changed: Notify,
    /// True once the commits have been re-read from the store ([`Federation::recompute_all`]):
    /// only from then on do they hold the state restored from the peer-state snapshot.
    resynced: watch::Sender<bool>,
    /// Peers restored from the peer-state snapshot that ztunnel's first answer still
    /// waits for (see [`settings::RESTORED_RESYNC_WAIT`]).
    awaiting_restored: Mutex<Option<AwaitingRestored>>,
    /// Called on federation's thread before each recompute with its name count.
    #[cfg(test)]
    before_recompute: Mutex<Option<RecomputeHook>>,
}

/// Restored peers not resynced yet, and when the merged view answers without them
/// (set when the local cluster has completed its sync: the wait is for the peers only).
struct AwaitingRestored {
    origins: Vec<Arc<str>>,
    until: Option<Instant>,
}

impl Federation {
    /// A federation for `config` over `store`. Nothing happens until [`Federation::run`]
    /// (or [`Federation::handle`]) processes store events.
    pub fn new(config: FederationConfig, store: Arc<Store>) -> Arc<Federation> {
        for p in &config.peers {
            warn_without_gateway(&config, p);
        }
        let conflicts = Conflicts::new();
        let imports = config
            .peers
            .iter()
            .map(|p| {
                (
                    p.cluster.clone(),
                    ImportFilter::new(p.clone(), Arc::clone(&store)),
                )
            })
            .collect();
        Arc::new(Federation {
            exporter: Arc::new(Exporter::new(&config)),
            merger: merge::Merger::new(&config.cluster, Arc::clone(&conflicts)),
            commits: Mutex::new(grace::Commits::new(&config.cluster)),
            published: ArcSwap::default(),
            running: AtomicBool::new(false),
            pending_globals: Mutex::new(None),
            globals_changed: Notify::new(),
            resynced: watch::Sender::new(false),
            awaiting_restored: Mutex::new(None),
            #[cfg(test)]
            before_recompute: Mutex::new(None),
            conflicts,
            peers: PeerSet::new(config.peers.clone()),
            imports: Mutex::new(imports),
            store,
            config,
        })
    }

    pub fn config(&self) -> &FederationConfig {
        &self.config
    }

    /// What ztunnel is served.
    pub fn merged(&self) -> &Arc<View> {
        self.merger.view()
    }

    /// What peers of `flavor` are served.
    pub fn export_view(&self, flavor: ExportFlavor) -> &Arc<View> {
        self.exporter.view(flavor)
    }

    pub fn exporter(&self) -> &Arc<Exporter> {
        &self.exporter
    }

    /// The import filter of a known peer, for its `AdsClient::with_filter`.
    pub fn import_filter(&self, peer: &str) -> Option<Arc<ImportFilter>> {
        self.imports().get(peer).cloned()
    }

    fn imports(&self) -> MutexGuard<'_, BTreeMap<String, Arc<ImportFilter>>> {
        self.imports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The peers known now.
    pub fn peers(&self) -> Arc<Vec<PeerPolicy>> {
        self.peers.load()
    }

    /// Adds a peer, or updates a known one (re-addressed: its state stays; a changed
    /// policy gets a new import filter). Returns the filter for its `AdsClient`.
    pub fn set_peer(&self, policy: PeerPolicy) -> Arc<ImportFilter> {
        warn_without_gateway(&self.config, &policy);
        let mut imports = self.imports();
        if let Some(filter) = imports.get(&policy.cluster)
            && *filter.policy() == policy
        {
            return Arc::clone(filter);
        }
        let filter = ImportFilter::new(policy.clone(), Arc::clone(&self.store));
        imports.insert(policy.cluster.clone(), Arc::clone(&filter));
        self.peers.upsert(policy);
        filter
    }

    /// Removes a peer and withdraws its state now, through the same path as a grace
    /// expiry ([`Store::remove`]: the merge then drops everything it contributed). Its
    /// client must be stopped first, or its next response would bring the state back.
    /// Returns whether the peer was known.
    pub fn withdraw_peer(&self, cluster: &str) -> bool {
        let known = self.peers.remove(cluster);
        self.imports().remove(cluster);
        if self.store.remove(cluster) {
            tracing::info!(peer = %cluster, "federation: peer removed; its state is withdrawn now (no grace period)");
        }
        known
    }

    /// The selector of the shared xDS listener (peers → export, token → merged).
    pub fn selector(&self, tokens: Option<Arc<dyn TokenVerifier>>) -> Arc<FederationSelector> {
        Arc::new(FederationSelector::new(
            Arc::clone(&self.peers),
            Arc::clone(&self.exporter),
            Arc::clone(self.merged()),
            tokens,
        ))
    }

    /// Current merge conflicts.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.conflicts.list()
    }

    pub fn conflict_count(&self, cluster: &str, kind: ConflictKind) -> u64 {
        self.conflicts.count(cluster, kind)
    }

    /// The origin cluster of a served resource.
    pub fn origin_of(&self, kind: ResourceType, name: &str) -> Option<Arc<str>> {
        self.merger.origin_of(kind, name)
    }

    fn awaiting_restored(&self) -> MutexGuard<'_, Option<AwaitingRestored>> {
        self.awaiting_restored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn commits(&self) -> MutexGuard<'_, grace::Commits> {
        self.commits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Republishes what readers see of `commits` (call after every change of them).
    fn publish_commits(&self, commits: &grace::Commits) {
        let now = Instant::now();
        let origins = commits.ordered();
        let complete = origins
            .iter()
            .filter(|o| ResourceType::ALL.iter().all(|t| commits.is_complete(o, *t)))
            .cloned()
            .collect();
        let published = PublishedCommits {
            complete,
            committed: origins
                .into_iter()
                .map(|o| {
                    let state = ResourceType::ALL.map(|t| commits.committed(&o, t).cloned());
                    (o, state)
                })
                .collect(),
            stale_for: self
                .peers
                .load()
                .iter()
                .filter_map(|p| {
                    let stale = commits.stale_for(&p.cluster, now)?;
                    Some((Arc::from(p.cluster.as_str()), (now, stale)))
                })
                .collect(),
        };
        self.published.store(Arc::new(published));
    }

    /// Per configured peer: sync, staleness, committed counts, import rejections. Reads
    /// the published commits: never waits for a computation in progress.
    pub fn peer_status(&self) -> Vec<PeerFederationStatus> {
        let published = self.published.load_full();
        let now = Instant::now();
        let imports = self.imports();
        self.peers
            .load()
            .iter()
            .map(|p| {
                let count = |kind: ResourceType| {
                    published
                        .committed
                        .get(p.cluster.as_str())
                        .and_then(|c| c[kind.index()].clone())
                };
                let address = count(ResourceType::Address);
                let (w, s, _) = address
                    .as_deref()
                    .map(ViewState::counts)
                    .unwrap_or_default();
                let a = count(ResourceType::Authorization)
                    .map_or(0, |v| v.len(ResourceType::Authorization));
                PeerFederationStatus {
                    cluster: p.cluster.clone(),
                    flat: p.flat,
                    synced: self
                        .store
                        .get(&p.cluster)
                        .is_some_and(|o| o.is_fully_synced()),
                    stale_seconds: published
                        .stale_for
                        .get(p.cluster.as_str())
                        .map(|(at, stale)| (*stale + now.saturating_duration_since(*at)).as_secs()),
                    imported: ImportedCounts {
                        workloads: w,
                        services: s,
                        authorizations: a,
                    },
                    import: imports
                        .get(&p.cluster)
                        .map(|f| f.status())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Every configured peer whose committed state is complete (every type), with since
    /// when it is stale. Reads the published commits: never waits for a computation.
    pub fn complete_peers(&self) -> Vec<CommittedPeer> {
        let published = self.published.load_full();
        // The peers known now (live: added and removed at runtime), not those at start.
        self.peers
            .load()
            .iter()
            .filter_map(|p| {
                let (origin, state) = published.committed.get_key_value(p.cluster.as_str())?;
                if !published.complete.contains(origin) {
                    return None;
                }
                let [Some(address), Some(authorization)] = state.clone() else {
                    return None;
                };
                Some(CommittedPeer {
                    origin: Arc::clone(origin),
                    state: [address, authorization],
                    stale_since: published
                        .stale_for
                        .get(origin)
                        .and_then(|(at, stale)| at.checked_sub(*stale)),
                })
            })
            .collect()
    }

    /// Returns once the published commits reflect the store as a whole (the first
    /// [`Federation::recompute_all`], which [`Federation::run`] starts with). Before that,
    /// [`Federation::complete_peers`] lacks every peer restored from the peer-state
    /// snapshot: its state is in the store but not yet committed.
    pub async fn resynced(&self) {
        let mut resynced = self.resynced.subscribe();
        // The sender lives as long as `self`: this ends only when it is true.
        let _ = resynced.wait_for(|done| *done).await;
    }

    /// Records that a peer's state was restored from the peer-state snapshot and has been
    /// stale since `since` (see [`grace::Commits::restore_stale_since`]). Call before
    /// [`Federation::run`]. ztunnel's first answer then waits for the peer to resync, at
    /// most `restored_resync_wait` past the local cluster's complete sync.
    pub fn restored(&self, origin: &str, since: Instant) {
        let mut commits = self.commits();
        commits.restore_stale_since(origin, since);
        self.publish_commits(&commits);
        self.awaiting_restored()
            .get_or_insert_with(|| AwaitingRestored {
                origins: Vec::new(),
                until: None,
            })
            .origins
            .push(Arc::from(origin));
    }

    /// Replaces the global service set (Kubernetes mode: from Service labels). While
    /// [`Federation::run`] follows events, the recompute is queued to its thread (the
    /// latest set wins) and this returns at once; otherwise it is computed here.
    pub fn set_global_services(&self, global: impl IntoIterator<Item = ServiceRef>) {
        let global: Vec<ServiceRef> = global.into_iter().collect();
        if self.running.load(Ordering::Acquire) {
            *self
                .pending_globals
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(global);
            self.globals_changed.notify_one();
            return;
        }
        self.apply_global_services(global);
    }

    /// Applies the global-service set queued by [`Federation::set_global_services`].
    fn apply_pending_globals(&self) {
        let pending = self
            .pending_globals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(global) = pending {
            self.apply_global_services(global);
        }
    }

    fn apply_global_services(&self, global: Vec<ServiceRef>) {
        let commits = self.commits();
        let local = commits
            .committed(&self.config.cluster, ResourceType::Address)
            .cloned()
            .unwrap_or_default();
        let change = self.exporter.set_global_services(global, &local);
        let names: Vec<Arc<str>> = change
            .workloads
            .into_iter()
            .chain(change.services)
            .collect();
        self.merger
            .recompute(&commits, &self.exporter, ResourceType::Address, names);
    }

    /// Recomputes `names` of `kind` of `origin` (already committed) everywhere they matter.
    fn propagate(
        &self,
        commits: &grace::Commits,
        origin: &str,
        kind: ResourceType,
        names: Vec<Arc<str>>,
    ) {
        if names.is_empty() {
            return;
        }
        #[cfg(test)]
        {
            let hook = self
                .before_recompute
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(hook) = hook {
                hook(names.len());
            }
        }
        // Duplicates are fine: the merger computes each name once. In name order, the
        // lookups and inserts of a large batch walk the B-trees' nodes in order, and each
        // part the merger publishes fills one range of the merged view instead of copying
        // nodes all over it that the previous part's snapshot still shares.
        let mut all = names;
        if all.len() > 1 {
            all.sort_unstable();
        }
        if origin == self.config.cluster {
            let local = commits.committed(origin, kind).cloned().unwrap_or_default();
            let change = self.exporter.on_local_change(&local, kind, &all);
            all.extend(change.workloads);
            all.extend(change.services);
            self.update_ready(commits);
        }
        self.merger.recompute(commits, &self.exporter, kind, all);
        self.update_merged_ready(commits, Instant::now());
    }

    /// Whether the local cluster has completed a sync of every type.
    fn local_complete(&self, commits: &grace::Commits) -> bool {
        ResourceType::ALL
            .iter()
            .all(|t| commits.is_complete(&self.config.cluster, *t))
    }

    /// Opens the export gate once the local cluster has completed a sync of every type
    /// (before that sync's last part is recomputed, so the recompute exports it).
    fn update_ready(&self, commits: &grace::Commits) {
        if self.local_complete(commits) {
            self.exporter.set_ready();
        }
    }

    /// Lets the merged view answer ztunnel once the local cluster's complete sync is
    /// merged (after the recompute: the first answer must hold all of it), and the peers
    /// restored at start have resynced or their wait has ended.
    fn update_merged_ready(&self, commits: &grace::Commits, now: Instant) {
        let merged = self.merger.view();
        if merged.is_ready()
            || !self.local_complete(commits)
            || !self.restored_settled(commits, now)
        {
            return;
        }
        tracing::info!("federation: local upstream synced and merged; ztunnel is answered");
        merged.set_ready();
    }

    /// Whether no restored peer holds ztunnel's first answer back any longer: each has
    /// synced in a session of its own (its restored state replaced), is gone, or the wait
    /// has ended. Called once the local cluster is complete: the wait starts then.
    fn restored_settled(&self, commits: &grace::Commits, now: Instant) -> bool {
        let mut awaiting = self.awaiting_restored();
        let Some(a) = awaiting.as_mut() else {
            return true;
        };
        a.origins.retain(|o| {
            self.store.get(o).is_some()
                && !ResourceType::ALL.iter().all(|t| commits.is_synced(o, *t))
        });
        if a.origins.is_empty() {
            *awaiting = None;
            return true;
        }
        let until = match a.until {
            Some(until) => until,
            None => {
                tracing::info!(peers = ?a.origins, wait = ?self.config.restored_resync_wait, "federation: local upstream synced; ztunnel's first answer waits for the restored peers to resync");
                *a.until.insert(now + self.config.restored_resync_wait)
            }
        };
        if now >= until {
            tracing::warn!(peers = ?a.origins, wait = ?self.config.restored_resync_wait, "federation: peers restored from the peer-state snapshot have not resynced; ztunnel is answered with their restored state");
            *awaiting = None;
            return true;
        }
        false
    }

    /// Processes one store event (the `federation.recompute` span of the sync path).
    #[tracing::instrument(name = "federation.recompute", skip_all)]
    pub fn handle(&self, event: StoreEvent) {
        let mut commits = self.commits();
        match event {
            StoreEvent::Changed {
                origin,
                change,
                session,
                ..
            } => {
                self.changed(&mut commits, &origin, session, change.kind, &change.names);
            }
            StoreEvent::Synced {
                origin,
                kind,
                session,
            } => {
                let Some(o) = self.store.get(&origin) else {
                    return;
                };
                let names = commits.on_synced(&o, session, kind);
                self.publish_commits(&commits);
                self.propagate(&commits, &origin, kind, names);
                self.update_ready(&commits);
                self.update_merged_ready(&commits, Instant::now());
            }
            StoreEvent::Unsynced {
                origin,
                session,
                last,
            } => {
                let names = commits.on_unsynced(&origin, session, &last);
                self.publish_commits(&commits);
                for (kind, names) in ResourceType::ALL.into_iter().zip(names) {
                    self.propagate(&commits, &origin, kind, names);
                }
                self.update_ready(&commits);
                self.update_merged_ready(&commits, Instant::now());
            }
            StoreEvent::Removed { origin } => {
                let names = commits.on_removed(&origin);
                self.publish_commits(&commits);
                for kind in ResourceType::ALL {
                    let n = names[kind.index()].clone();
                    if origin.as_ref() == self.config.cluster {
                        let change = self
                            .exporter
                            .on_local_change(&ViewState::default(), kind, &n);
                        let mut all: BTreeSet<Arc<str>> = n.into_iter().collect();
                        all.extend(change.workloads);
                        all.extend(change.services);
                        self.merger.recompute(&commits, &self.exporter, kind, all);
                    } else {
                        self.merger.recompute(&commits, &self.exporter, kind, n);
                    }
                }
            }
        }
    }

    /// Commits (or, during a resync, parks) a change of `names` and recomputes what it
    /// touches.
    fn changed(
        &self,
        commits: &mut grace::Commits,
        origin: &Arc<str>,
        session: u64,
        kind: ResourceType,
        names: &[Arc<str>],
    ) {
        let Some(o) = self.store.get(origin) else {
            return;
        };
        let names = commits.on_changed(&o, session, kind, names);
        self.publish_commits(commits);
        self.propagate(commits, origin, kind, names);
    }

    /// Handles `first` and the events already queued behind it, merging consecutive
    /// changes of one origin and type into one recompute. When federation falls behind
    /// (a bulk load arriving in parts), its batches grow, and a large batch is merged
    /// on two threads (see [`merge::Merger::recompute`]). Events keep their order.
    fn handle_queued(&self, first: StoreEvent, events: &mut broadcast::Receiver<StoreEvent>) {
        let mut next = Some(first);
        while let Some(event) = next.take() {
            let StoreEvent::Changed {
                origin,
                change,
                session,
                ..
            } = event
            else {
                self.handle(event);
                next = self.try_next(events);
                continue;
            };
            let kind = change.kind;
            let mut names = change.names.clone();
            loop {
                next = self.try_next(events);
                match &next {
                    Some(StoreEvent::Changed {
                        origin: o,
                        change,
                        session: s,
                        ..
                    }) if *o == origin
                        && *s == session
                        && change.kind == kind
                        && names.len() < MAX_BATCH =>
                    {
                        names.extend(change.names.iter().cloned());
                    }
                    _ => break,
                }
            }
            let _span = tracing::info_span!("federation.recompute").entered();
            let mut commits = self.commits();
            self.changed(&mut commits, &origin, session, kind, &names);
        }
    }

    /// The next queued event, if any; after missed events, a full recompute.
    fn try_next(&self, events: &mut broadcast::Receiver<StoreEvent>) -> Option<StoreEvent> {
        match events.try_recv() {
            Ok(event) => Some(event),
            Err(TryRecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "federation fell behind the store; full recompute"
                );
                self.recompute_all();
                None
            }
            Err(TryRecvError::Empty | TryRecvError::Closed) => None,
        }
    }

    /// Re-reads every origin and recomputes everything (start, missed events).
    pub fn recompute_all(&self) {
        let mut commits = self.commits();
        let names = commits.resync(&self.store);
        self.publish_commits(&commits);
        self.resynced.send_replace(true);
        for kind in ResourceType::ALL {
            let mut all: HashSet<Arc<str>> = names[kind.index()].clone();
            all.extend(self.merged().snapshot().resources(kind).keys().cloned());
            let local: Vec<Arc<str>> = all.iter().cloned().collect();
            self.propagate(&commits, &self.config.cluster.clone(), kind, local);
        }
    }

    /// Withdraws peers stale past the grace period; returns them. Also ends the wait for
    /// restored peers when it has run out with nothing else happening.
    pub fn sweep(&self) -> Vec<Arc<str>> {
        self.sweep_at(Instant::now())
    }

    /// [`Federation::sweep`] at `now` (tests inject the clock).
    pub fn sweep_at(&self, now: Instant) -> Vec<Arc<str>> {
        let mut commits = self.commits();
        let withdrawn = commits.sweep(&self.store, now, self.config.grace_period);
        self.publish_commits(&commits);
        self.update_merged_ready(&commits, now);
        withdrawn
    }

    /// Follows store events and the grace timer until cancelled. The computations run on
    /// federation's own thread (see the module doc); this task only waits for them.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut events = self.store.subscribe();
        let Some(thread) = FederationThread::start() else {
            tracing::error!("federation: cannot start its thread; computing on the runtime");
            self.follow_inline(events, cancel).await;
            return;
        };
        self.running.store(true, Ordering::Release);
        let _stop = StopRunning(&self.running);
        if thread
            .run({
                let fed = Arc::clone(&self);
                move || fed.recompute_all()
            })
            .await
            .is_none()
        {
            return;
        }
        // A global-service set queued before `running` was visible.
        self.globals_changed.notify_one();
        let mut tick = tokio::time::interval(self.config.grace_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let done = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let fed = Arc::clone(&self);
                    thread.run(move || { fed.sweep(); }).await
                }
                _ = self.globals_changed.notified() => {
                    let fed = Arc::clone(&self);
                    thread.run(move || fed.apply_pending_globals()).await
                }
                e = events.recv() => match e {
                    Ok(event) => {
                        // The receiver goes along to drain what queued behind `event`.
                        let fed = Arc::clone(&self);
                        match thread.run(move || {
                            fed.handle_queued(event, &mut events);
                            events
                        }).await {
                            Some(back) => {
                                events = back;
                                Some(())
                            }
                            None => {
                                tracing::error!("federation: its thread stopped (a computation panicked); the served views are no longer updated");
                                return;
                            }
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "federation fell behind the store; full recompute");
                        let fed = Arc::clone(&self);
                        thread.run(move || fed.recompute_all()).await
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            if done.is_none() {
                tracing::error!(
                    "federation: its thread stopped (a computation panicked); the served views are no longer updated"
                );
                return;
            }
        }
    }

    /// The loop of [`Federation::run`] without a thread of its own (only if the thread
    /// cannot be started).
    async fn follow_inline(
        self: Arc<Self>,
        mut events: broadcast::Receiver<StoreEvent>,
        cancel: CancellationToken,
    ) {
        self.recompute_all();
        let mut tick = tokio::time::interval(self.config.grace_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    self.sweep();
                }
                e = events.recv() => match e {
                    Ok(event) => self.handle_queued(event, &mut events),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "federation fell behind the store; full recompute");
                        self.recompute_all();
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }

    /// Test hook: `hook(names)` runs on federation's thread before each recompute.
    #[cfg(test)]
    pub(crate) fn set_before_recompute(&self, hook: impl Fn(usize) + Send + Sync + 'static) {
        *self
            .before_recompute
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(hook));
    }
}

/// Says once per peer change that a multi-network peer cannot be served a usable export.
fn warn_without_gateway(config: &FederationConfig, peer: &PeerPolicy) {
    if !peer.flat && config.gateway_for(peer.flavor()).is_none() {
        tracing::warn!(peer = %peer.cluster, "federation: multi-network peer but no east-west gateway configured; its export has no network_gateway and the peer will reject the workloads");
    }
}

/// Clears [`Federation::running`] when `run` ends (also when its task is dropped).
struct StopRunning<'a>(&'a AtomicBool);

impl Drop for StopRunning<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Federation's OS thread: runs one job at a time, in the order given. It ends when the
/// handle is dropped (`run` returned or its task was dropped).
struct FederationThread {
    jobs: mpsc::Sender<Job>,
}

impl FederationThread {
    fn start() -> Option<FederationThread> {
        // One job at a time: while one runs, the next event waits in the store's ring,
        // where it is batched with those behind it (or detected as missed).
        let (jobs, mut rx) = mpsc::channel::<Job>(1);
        let spawned = std::thread::Builder::new()
            .name("federation".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    let started = std::time::Instant::now();
                    job();
                    // A bulk merge freed what it replaced; this thread may now wait
                    // for long (see `memory`).
                    if started.elapsed() >= std::time::Duration::from_millis(10) {
                        crate::memory::release_now();
                    }
                }
            });
        match spawned {
            Ok(_) => Some(FederationThread { jobs }),
            Err(e) => {
                tracing::error!(error = %e, "federation: thread spawn failed");
                None
            }
        }
    }

    /// Runs `job` on the thread and waits for its result without holding a worker.
    /// `None`: the thread is gone (a job panicked).
    async fn run<R: Send + 'static>(&self, job: impl FnOnce() -> R + Send + 'static) -> Option<R> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        self.jobs.send(job).await.ok()?;
        rx.await.ok()
    }
}
