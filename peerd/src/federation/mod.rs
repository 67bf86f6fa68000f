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
//! recomputes only those names. One task ([`Federation::run`]) drives it.
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
//! It must never write resources to the store (it only withdraws a whole origin after its
//! grace period), and never copy the whole state for one change.

pub mod conflicts;
pub mod export;
pub mod grace;
pub mod import;
pub mod merge;
pub mod naming;
pub mod selector;
pub mod settings;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ServiceRef;
use crate::store::{Store, StoreEvent};
use crate::view::{View, ViewState};
use crate::xds::auth::TokenVerifier;
use crate::xds::types::ResourceType;

pub use conflicts::{Conflict, ConflictKind, Conflicts};
pub use export::Exporter;
pub use import::{ImportError, ImportFilter, ImportStatus};
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

/// The merged view, the export views, and the rules between them.
pub struct Federation {
    config: FederationConfig,
    store: Arc<Store>,
    exporter: Arc<Exporter>,
    merger: merge::Merger,
    conflicts: Arc<Conflicts>,
    commits: Mutex<grace::Commits>,
    imports: BTreeMap<String, Arc<ImportFilter>>,
}

impl Federation {
    /// A federation for `config` over `store`. Nothing happens until [`Federation::run`]
    /// (or [`Federation::handle`]) processes store events.
    pub fn new(config: FederationConfig, store: Arc<Store>) -> Arc<Federation> {
        for p in config.peers.iter().filter(|p| !p.flat) {
            if config.gateway_for(p.flavor()).is_none() {
                tracing::warn!(peer = %p.cluster, "federation: multi-network peer but no east-west gateway configured; its export has no network_gateway and the peer will reject the workloads");
            }
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
            conflicts,
            imports,
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

    /// The import filter of a configured peer, for its `AdsClient::with_filter`.
    pub fn import_filter(&self, peer: &str) -> Option<Arc<ImportFilter>> {
        self.imports.get(peer).cloned()
    }

    /// The selector of the shared xDS listener (peers → export, token → merged).
    pub fn selector(&self, tokens: Option<Arc<dyn TokenVerifier>>) -> Arc<FederationSelector> {
        Arc::new(FederationSelector::new(
            self.config.peers.clone(),
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

    fn commits(&self) -> MutexGuard<'_, grace::Commits> {
        self.commits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Per configured peer: sync, staleness, committed counts, import rejections.
    pub fn peer_status(&self) -> Vec<PeerFederationStatus> {
        let commits = self.commits();
        let now = Instant::now();
        self.config
            .peers
            .iter()
            .map(|p| {
                let count = |kind| commits.committed(&p.cluster, kind).cloned();
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
                    stale_seconds: commits.stale_for(&p.cluster, now).map(|d| d.as_secs()),
                    imported: ImportedCounts {
                        workloads: w,
                        services: s,
                        authorizations: a,
                    },
                    import: self
                        .imports
                        .get(&p.cluster)
                        .map(|f| f.status())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Replaces the global service set (Kubernetes mode: from Service labels).
    pub fn set_global_services(&self, global: impl IntoIterator<Item = ServiceRef>) {
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
        self.update_merged_ready(commits);
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
    /// merged (after the recompute: the first answer must hold all of it).
    fn update_merged_ready(&self, commits: &grace::Commits) {
        let merged = self.merger.view();
        if !merged.is_ready() && self.local_complete(commits) {
            tracing::info!("federation: local upstream synced and merged; ztunnel is answered");
            merged.set_ready();
        }
    }

    /// Processes one store event (the `federation.recompute` span of the sync path).
    #[tracing::instrument(name = "federation.recompute", skip_all)]
    pub fn handle(&self, event: StoreEvent) {
        let mut commits = self.commits();
        match event {
            StoreEvent::Changed { origin, change, .. } => {
                self.changed(&mut commits, &origin, change.kind, &change.names);
            }
            StoreEvent::Synced { origin, kind } => {
                let Some(o) = self.store.get(&origin) else {
                    return;
                };
                let names = commits.on_synced(&o, kind);
                self.propagate(&commits, &origin, kind, names);
                self.update_ready(&commits);
                self.update_merged_ready(&commits);
            }
            StoreEvent::Removed { origin } => {
                let names = commits.on_removed(&origin);
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
        kind: ResourceType,
        names: &[Arc<str>],
    ) {
        let Some(o) = self.store.get(origin) else {
            return;
        };
        let names = commits.on_changed(&o, kind, names);
        self.propagate(commits, origin, kind, names);
    }

    /// Handles `first` and the events already queued behind it, merging consecutive
    /// changes of one origin and type into one recompute. When federation falls behind
    /// (a bulk load arriving in parts), its batches grow, and a large batch is merged
    /// on two threads (see [`merge::Merger::recompute`]). Events keep their order.
    fn handle_queued(&self, first: StoreEvent, events: &mut broadcast::Receiver<StoreEvent>) {
        let mut next = Some(first);
        while let Some(event) = next.take() {
            let StoreEvent::Changed { origin, change, .. } = event else {
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
                        origin: o, change, ..
                    }) if *o == origin && change.kind == kind && names.len() < MAX_BATCH => {
                        names.extend(change.names.iter().cloned());
                    }
                    _ => break,
                }
            }
            let _span = tracing::info_span!("federation.recompute").entered();
            let mut commits = self.commits();
            self.changed(&mut commits, &origin, kind, &names);
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
        for kind in ResourceType::ALL {
            let mut all: HashSet<Arc<str>> = names[kind.index()].clone();
            all.extend(self.merged().snapshot().resources(kind).keys().cloned());
            let local: Vec<Arc<str>> = all.iter().cloned().collect();
            self.propagate(&commits, &self.config.cluster.clone(), kind, local);
        }
    }

    /// Withdraws peers stale past the grace period; returns them.
    pub fn sweep(&self) -> Vec<Arc<str>> {
        self.commits()
            .sweep(&self.store, Instant::now(), self.config.grace_period)
    }

    /// Follows store events and the grace timer until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut events = self.store.subscribe();
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
}
