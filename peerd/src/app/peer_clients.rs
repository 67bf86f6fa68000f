//! The running peer clients, one `AdsClient` per peer cluster, kept equal to a desired
//! peer set at runtime ([`PeerClients::apply`]): from the `istio-remote` Gateways
//! (Kubernetes) or the config file's `peers` (SIGHUP). Added: a client starts. Re-addressed
//! (same network and identity): the client is replaced by one to the new address and the
//! peer's state stays. Replaced (new network or identity) and removed: the client stops
//! and federation withdraws the peer's state at once, and the peer's metric series leave
//! `/metrics`.
//!
//! It owns client lifetimes only; it must never decide which peers are desired (the
//! callers do) nor compute what changed (that is [`crate::peers::changes`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Peer};
use crate::federation::{Federation, PeerPolicy};
use crate::identity::reload::{CertSource, RootsSource};
use crate::peers::{AdsClients, PeerChange, peer_changes};
use crate::store::Store;
use crate::xds::client::AdsClient;
use crate::xds::stats::UpstreamList;

/// How long a stopping client may take to end its session before it is aborted.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

struct Running {
    peer: Peer,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// What a peer client is built from and reports to.
pub(super) struct PeerClientDeps {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub federation: Arc<Federation>,
    /// What the peer monitor reads of each client.
    pub monitor_clients: Arc<AdsClients>,
    /// What the debug API shows of each stream.
    pub upstreams: Arc<UpstreamList>,
    /// The roots peer certificates chain to (`xds.tls.root`).
    pub roots: Option<Arc<RootsSource>>,
    /// Our certificate, presented to peers.
    pub cert: Arc<CertSource>,
    /// Ends every client when peerd stops.
    pub cancel: CancellationToken,
}

/// The running peer clients.
pub struct PeerClients {
    deps: PeerClientDeps,
    running: Mutex<BTreeMap<String, Running>>,
}

impl PeerClients {
    pub(super) fn new(deps: PeerClientDeps) -> Arc<PeerClients> {
        Arc::new(PeerClients {
            deps,
            running: Mutex::new(BTreeMap::new()),
        })
    }

    /// The peers whose clients run now, by cluster.
    pub async fn running(&self) -> BTreeMap<String, Peer> {
        self.running
            .lock()
            .await
            .iter()
            .map(|(c, r)| (c.clone(), r.peer.clone()))
            .collect()
    }

    /// Makes the running clients follow `desired` (by cluster). Returns the changes made;
    /// a peer whose client cannot be built keeps its previous client (if any) and its
    /// error is returned with the others'.
    pub async fn apply(
        &self,
        desired: &BTreeMap<String, Peer>,
    ) -> (Vec<PeerChange>, Vec<anyhow::Error>) {
        let mut running = self.running.lock().await;
        let current: BTreeMap<String, Peer> = running
            .iter()
            .map(|(c, r)| (c.clone(), r.peer.clone()))
            .collect();
        let mut applied = Vec::new();
        let mut errors = Vec::new();
        for change in peer_changes(&current, desired) {
            let outcome = match &change {
                PeerChange::Added(peer) => self.start(&mut running, peer),
                PeerChange::Readdressed { new, .. } => {
                    // Built before the old client stops: a bad new peer keeps the old one.
                    match self.build(new) {
                        Ok(built) => {
                            self.stop(&mut running, &new.cluster).await;
                            self.spawn(&mut running, new, built);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                PeerChange::Replaced { old, new } => {
                    self.stop(&mut running, &old.cluster).await;
                    self.withdraw(&old.cluster);
                    self.start(&mut running, new)
                }
                PeerChange::Removed(peer) => {
                    self.stop(&mut running, &peer.cluster).await;
                    self.withdraw(&peer.cluster);
                    Ok(())
                }
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(change = %change, "peer set changed");
                    applied.push(change);
                }
                Err(e) => errors.push(e.context(format!("peer {}", change.cluster()))),
            }
        }
        (applied, errors)
    }

    /// Builds a client for `peer` with its (possibly updated) import filter; returns it
    /// with its endpoint.
    fn build(&self, peer: &Peer) -> anyhow::Result<(AdsClient, String)> {
        let d = &self.deps;
        let roots = d
            .roots
            .as_ref()
            .context("xds.tls.root: peering needs the roots that peer certificates chain to")?;
        let options = super::upstreams::peer_client_options(
            &d.config,
            peer,
            Arc::clone(roots),
            Arc::clone(&d.cert),
        )?;
        let endpoint = options.endpoint.clone();
        let policy = PeerPolicy::from_peer(&d.config, peer)
            .with_context(|| format!("peer {}: its peerd identity", peer.cluster))?;
        let filter = d.federation.set_peer(policy);
        let client = AdsClient::new(options, Arc::clone(&d.store)).with_filter(filter);
        Ok((client, endpoint))
    }

    fn start(&self, running: &mut BTreeMap<String, Running>, peer: &Peer) -> anyhow::Result<()> {
        let built = self.build(peer)?;
        self.spawn(running, peer, built);
        Ok(())
    }

    fn spawn(
        &self,
        running: &mut BTreeMap<String, Running>,
        peer: &Peer,
        (client, endpoint): (AdsClient, String),
    ) {
        let d = &self.deps;
        crate::admin::retired::reinstate_peer(&peer.cluster);
        d.monitor_clients
            .register(&peer.cluster, &endpoint, &client);
        d.upstreams.set(&peer.cluster, client.stats());
        let cancel = d.cancel.child_token();
        let task = tokio::spawn(client.run(cancel.clone()));
        running.insert(
            peer.cluster.clone(),
            Running {
                peer: peer.clone(),
                cancel,
                task,
            },
        );
    }

    /// Stops a client and waits until it has ended (it must not write to the store once
    /// the peer's state is withdrawn).
    async fn stop(&self, running: &mut BTreeMap<String, Running>, cluster: &str) {
        let Some(mut r) = running.remove(cluster) else {
            return;
        };
        r.cancel.cancel();
        if tokio::time::timeout(STOP_TIMEOUT, &mut r.task)
            .await
            .is_err()
        {
            tracing::warn!(peer = %cluster, "peer client did not stop in time; aborted");
            r.task.abort();
            let _ = r.task.await;
        }
        self.deps.monitor_clients.remove(cluster);
        self.deps.upstreams.remove(cluster);
    }

    /// Withdraws a stopped peer's state now and retires its metric series.
    fn withdraw(&self, cluster: &str) {
        self.deps.federation.withdraw_peer(cluster);
        crate::admin::retired::retire_peer(cluster);
    }
}
