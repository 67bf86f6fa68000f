//! The Kubernetes side of `peerd run` (docs/design.md §6, §7), when `kubernetes` is configured.
//!
//! - **Peers come from Gateways, instead of the file.** At start, peerd lists the Gateways
//!   of class `istio-remote` in the peering namespace and turns every usable one into a
//!   peer (a file with `peers` is refused by config validation when Kubernetes is on).
//!   At runtime the peer monitor follows every Gateway change (so conditions follow
//!   edits, and a broken edit shows `Accepted=False`), and the peer clients follow the
//!   usable Gateways ([`PeerClients`]): an added Gateway starts a client, a re-addressed
//!   one reconnects without withdrawing anything, a deleted one stops its client and its
//!   state, WorkloadEntries and ServiceEntries and metric series go at once. A Gateway
//!   edited to something unusable keeps its last valid client running until it is valid
//!   again or deleted (its conditions say what is wrong).
//! - **Global services** are the union of `export.globalServices` and the Services
//!   labelled `solo.io/service-scope=global` or `istio.io/global=true`, followed at runtime.
//! - The local network (label on `istio-system`) and east-west gateway (Gateway of class
//!   `istio-eastwest`) fill the file's `network` / `export.eastWestGateway` when unset.
//! - **Leader** (Lease in the control namespace): only the leader writes the five
//!   conditions to each peer Gateway's status and the `autogenflat.*` / `autogen.*`
//!   objects; every replica computes them.
//! - Downstream tokens: TokenReview when `kubernetes.tokenReview` is on.
//!
//! It owns wiring only (which tasks run, what channels and handles they get, how long
//! they live): what a Gateway means is in `kube::peering`, the conditions reconcile in
//! `kube::condition_sync`, the flat-sync input in `kube::flat_input`, conditions
//! themselves in [`crate::peers`]. It must never write to the API server except through
//! `kube::status::ConditionsWriter` and `kube::apply::FlatSyncExecutor`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::kube::{Client, ResourceExt};
use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::PeerClients;
use crate::config::{self, Config, KubeApi, ServiceRef};
use crate::federation::Federation;
use crate::kube::apply::{ExecutorConfig, FlatSyncExecutor};
use crate::kube::client::{ClientSource, connect};
use crate::kube::condition_sync::{ConditionSync, ConditionSyncConfig, shown_conditions};
use crate::kube::flat_input::{FlatEntryMemo, InputBuilder, present_clusters};
use crate::kube::gateways::{self, ClusterWatches, SystemResolver};
use crate::kube::leader::{LeaderConfig, LeaderElector, Leadership, default_identity};
use crate::kube::peering::{
    desired_peers, eastwest_target, gateway_specs, global_services, usable_peer, usable_peers,
};
use crate::kube::status::ConditionsWriter;
use crate::kube::tokenreview::{TokenReviewConfig, TokenReviewVerifier};
use crate::peers::PeerMonitor;
use crate::peers::model::LocalCluster;
use crate::store::Store;
use crate::xds::auth::{IdentityAllowList, StaticTokenVerifier, TokenVerifier, ZTUNNEL_IDENTITY};

/// How long a hostname peer address may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an own write stands in for a lagging watch (flat sync).
const SETTLE: Duration = Duration::from_secs(30);
/// Coalescing window of store changes before the flat-sync input is rebuilt.
const INPUT_DEBOUNCE: Duration = Duration::from_millis(500);
/// Condition writes are evaluated at least this often (the monitor ticks every second).
const CONDITIONS_PERIOD: Duration = Duration::from_secs(1);

/// What [`prepare`] found, handed to [`start`] once the rest of peerd runs.
pub(super) struct KubeStart {
    client: Client,
    watches: ClusterWatches,
    watch_tasks: JoinSet<()>,
    /// `export.globalServices` of the file.
    file_global_services: BTreeSet<ServiceRef>,
}

/// Connects to the API server, waits for the first lists, and fills `config` from the
/// cluster: peers from `istio-remote` Gateways, global services, and (when unset) the
/// network and east-west gateway. `None` when Kubernetes is not configured.
pub(super) async fn prepare(config: &mut Config) -> anyhow::Result<Option<KubeStart>> {
    let Some(settings) = config.kubernetes.clone() else {
        return Ok(None);
    };
    let source = match &settings.api {
        KubeApi::InCluster => ClientSource::InCluster,
        KubeApi::Kubeconfig(path) => ClientSource::KubeconfigFile(path.clone()),
        KubeApi::Server(url) => ClientSource::Url(url.clone()),
    };
    let client = connect(&source, &config.control_namespace)
        .await
        .context("kubernetes: connecting to the API server")?;
    let mut watch_tasks = JoinSet::new();
    let watches =
        gateways::start_watches(client.clone(), &config.peering_namespace, &mut watch_tasks);
    match tokio::time::timeout(settings.startup_timeout, watches.ready()).await {
        Err(_) => anyhow::bail!(
            "kubernetes: no first list of Gateways and Services within {:?} (kubernetes.startupTimeout); is the API server reachable, are the Gateway API CRDs installed, may peerd list gateways in {} and services?",
            settings.startup_timeout,
            config.peering_namespace
        ),
        Ok(result) => result.context("kubernetes: waiting for the first list")?,
    }

    if config.network.is_empty() {
        let mut network = watches.local_network.clone();
        let labelled =
            tokio::time::timeout(Duration::from_secs(2), network.wait_for(Option::is_some)).await;
        if let Ok(Ok(value)) = labelled {
            config.network = value.clone().unwrap_or_default();
            tracing::info!(network = %config.network, "local network from the istio-system namespace label");
        }
    }
    if config.export.east_west_gateway.is_none() {
        config.export.east_west_gateway = watches
            .eastwest_gateways()
            .iter()
            .find_map(|g| eastwest_target(g, config.sandbox_mode));
    }
    let file_global_services: BTreeSet<ServiceRef> =
        config.export.global_services.iter().cloned().collect();
    config.export.global_services =
        global_services(&file_global_services, &watches.global_services())
            .into_iter()
            .collect();

    let local = LocalCluster::from(&*config);
    let resolver = SystemResolver {
        timeout: RESOLVE_TIMEOUT,
    };
    let mut started_peers = BTreeMap::new();
    for gateway in watches.peer_gateways() {
        let name = gateway.name_any();
        match usable_peer(&gateway, config, &local, &resolver).await {
            Ok(peer) if started_peers.contains_key(&peer.cluster) => {
                tracing::warn!(gateway = %name, cluster = %peer.cluster, "a second istio-remote Gateway names the same cluster; ignored");
            }
            Ok(peer) => {
                tracing::info!(gateway = %name, cluster = %peer.cluster, address = %peer.address, network = %peer.network, "peer from Gateway");
                started_peers.insert(peer.cluster.clone(), peer);
            }
            Err(err) => {
                tracing::warn!(gateway = %name, error = %err, "istio-remote Gateway is not usable; its conditions say why")
            }
        }
    }
    if started_peers.is_empty() {
        tracing::warn!(namespace = %config.peering_namespace, "no usable istio-remote Gateway: no peers");
    }
    config.peers = started_peers.values().cloned().collect();
    if config.export.east_west_gateway.is_none()
        && let Some(peer) = config.peers.iter().find(|p| !config.peer_is_flat(p))
    {
        tracing::warn!(peer = %peer.cluster, "a multi-network peer, but no east-west gateway address (export.eastWestGateway, or an istio-eastwest Gateway with an IP address): the peer cannot reach this cluster's workloads");
    }
    Ok(Some(KubeStart {
        client,
        watches,
        watch_tasks,
        file_global_services,
    }))
}

/// The downstream token verifier: TokenReview when configured, else the token file; either
/// way only `xds.auth.allowedIdentities` are accepted.
pub(super) fn token_verifier(
    config: &Config,
    kube: Option<&KubeStart>,
) -> anyhow::Result<Arc<dyn TokenVerifier>> {
    let verifier = identity_verifier(config, kube)?;
    tracing::info!(allowed = ?config.xds.allowed_identities, "the merged view is served only to these identities");
    Ok(Arc::new(IdentityAllowList::new(
        verifier,
        config.xds.allowed_identities.clone(),
    )))
}

/// What proves an identity: TokenReview, or the token file.
fn identity_verifier(
    config: &Config,
    kube: Option<&KubeStart>,
) -> anyhow::Result<Arc<dyn TokenVerifier>> {
    let review = config
        .kubernetes
        .as_ref()
        .and_then(|k| k.token_review.as_ref());
    if let (Some(review), Some(kube)) = (review, kube) {
        tracing::info!(audiences = ?review.audiences, "downstream tokens are checked by TokenReview");
        return Ok(Arc::new(TokenReviewVerifier::new(
            kube.client.clone(),
            TokenReviewConfig {
                audiences: review.audiences.clone(),
                ttl: review.cache_ttl,
                ..TokenReviewConfig::default()
            },
        )));
    }
    let token_file = config.xds.token_file.as_ref().context(
        "xds.auth.tokenFile: a bearer-token file is required to authenticate ztunnel (or enable kubernetes.tokenReview)",
    )?;
    let verifier = StaticTokenVerifier::from_file(token_file, ZTUNNEL_IDENTITY)
        .with_context(|| format!("xds.auth.tokenFile: reading {}", token_file.display()))?;
    Ok(Arc::new(verifier))
}

/// The running daemon's handles the Kubernetes tasks use.
pub(super) struct Handles<'a> {
    pub config: &'a Arc<Config>,
    pub store: &'a Arc<Store>,
    pub federation: &'a Arc<Federation>,
    pub monitor: &'a Arc<PeerMonitor>,
    pub peer_clients: &'a Arc<PeerClients>,
}

/// Starts the leader election, the Gateway follower, the conditions writer and the
/// flat-network sync. Everything stops with `cancel`; the lease is released on the way out.
pub(super) fn start(
    kube: KubeStart,
    handles: Handles<'_>,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let Handles {
        config,
        store,
        federation,
        monitor,
        peer_clients,
    } = handles;
    let settings = config
        .kubernetes
        .clone()
        .context("kubernetes settings vanished")?;
    let identity = settings.identity.clone().unwrap_or_else(default_identity);
    let elector = LeaderElector::start(
        kube.client.clone(),
        LeaderConfig {
            namespace: config.control_namespace.clone(),
            lease_name: settings.lease_name.clone(),
            identity,
            lease_duration: settings.lease_duration,
            renew_period: settings.renew_period,
        },
    );
    let leadership = elector.leadership();
    {
        let cancel = cancel.clone();
        let watch_tasks = kube.watch_tasks;
        tasks.spawn(async move {
            cancel.cancelled().await;
            // Stop writing first, then hand the lease over at once.
            elector.release().await;
            drop(watch_tasks);
            Ok(())
        });
    }
    let local = LocalCluster::from(&**config);
    // A restart resumes each peer's conditions from its Gateway (no write back to Pending).
    let gateways = kube.watches.peer_gateways();
    monitor.set_peers_resuming(
        gateway_specs(&gateways, &config.trust_domain),
        &shown_conditions(&gateways, &config.trust_domain),
        Instant::now(),
    );

    // The peers whose clients run, for the flat sync (they follow the Gateways).
    let started: Vec<config::Peer> = config.peers.clone();
    let (running_tx, running_rx) = watch::channel(started);
    tasks.spawn(follow_gateways(
        Arc::clone(config),
        kube.watches.clone(),
        Followers {
            monitor: Arc::clone(monitor),
            federation: Arc::clone(federation),
            peer_clients: Arc::clone(peer_clients),
            running: running_tx,
        },
        kube.file_global_services,
        cancel.clone(),
    ));
    tasks.spawn(write_conditions(
        ConditionSync::new(ConditionSyncConfig {
            local,
            sandbox: config.sandbox_mode,
            trust_domain: config.trust_domain.clone(),
            resolver: Box::new(SystemResolver {
                timeout: RESOLVE_TIMEOUT,
            }),
        }),
        ConditionsWriter::new(
            kube.client.clone(),
            &config.peering_namespace,
            leadership.clone(),
        ),
        kube.watches.clone(),
        Arc::clone(monitor),
        leadership.clone(),
        cancel.clone(),
    ));
    if settings.service_imports {
        tasks.spawn(crate::kube::mcs::write_service_imports(
            kube.client.clone(),
            Arc::clone(store),
            Arc::clone(federation),
            leadership.clone(),
            cancel.clone(),
        ));
    }
    if settings.flat_sync {
        let executor = FlatSyncExecutor::start(
            kube.client,
            ExecutorConfig {
                control_namespace: config.control_namespace.clone(),
                settle: SETTLE,
            },
            leadership,
        );
        let builder = InputBuilder {
            store: Arc::clone(store),
            peers: running_rx.borrow().clone(),
            local_network: config.network.clone(),
            flat_networks: config.flat_networks,
            control_namespace: config.control_namespace.clone(),
            memo: FlatEntryMemo::default(),
        };
        tasks.spawn(flat_sync(
            builder,
            executor,
            kube.watches,
            running_rx,
            settings.resync_interval,
            cancel.clone(),
        ));
    }
    Ok(())
}

/// What the Gateway follower changes.
struct Followers {
    monitor: Arc<PeerMonitor>,
    federation: Arc<Federation>,
    peer_clients: Arc<PeerClients>,
    /// The peers whose clients run, after every change (for the flat sync).
    running: watch::Sender<Vec<config::Peer>>,
}

/// Follows Gateways and Services: the peer monitor gets every Gateway change, the peer
/// clients follow the usable `istio-remote` Gateways (a Gateway edited to something
/// unusable keeps its last valid client until it is valid again or deleted), federation
/// gets every change of the global set.
async fn follow_gateways(
    config: Arc<Config>,
    watches: ClusterWatches,
    followers: Followers,
    file_global_services: BTreeSet<ServiceRef>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Followers {
        monitor,
        federation,
        peer_clients,
        running,
    } = followers;
    let local = LocalCluster::from(&*config);
    let resolver = SystemResolver {
        timeout: RESOLVE_TIMEOUT,
    };
    // The first pass runs before any wait: Gateways that arrived between the start-up
    // read and this task (a `peerd link` right after start) must get their clients
    // without waiting for a later change. A pass with unchanged specs is a no-op for the
    // monitor and the running clients.
    let mut last_specs = None;
    let mut last_global = None;
    let mut warned: BTreeSet<String> = BTreeSet::new();
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = watches.changed.notified() => {}
            }
        }
        let gateways = watches.peer_gateways();
        let specs = gateway_specs(&gateways, &config.trust_domain);
        if last_specs.as_ref() != Some(&specs) {
            monitor.set_peers_resuming(
                specs.clone(),
                &shown_conditions(&gateways, &config.trust_domain),
                Instant::now(),
            );
            last_specs = Some(specs);
            let usable = usable_peers(&gateways, &config, &local, &resolver).await;
            let (desired, kept) = desired_peers(
                usable,
                &peer_clients.running().await,
                &present_clusters(&gateways),
            );
            for cluster in kept.difference(&warned) {
                tracing::warn!(peer = %cluster, "istio-remote Gateway is no longer usable (its conditions say why); its last valid client keeps running until the Gateway is valid again or deleted");
            }
            warned = kept;
            let (_, errors) = peer_clients.apply(&desired).await;
            for error in errors {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "istio-remote Gateway: the peer's client could not be built; its previous client (if any) keeps running"
                );
            }
            let now_running = peer_clients.running().await.into_values().collect();
            running.send_replace(now_running);
        }
        let global = global_services(&file_global_services, &watches.global_services());
        if last_global.as_ref() != Some(&global) {
            tracing::info!(count = global.len(), "global services changed");
            federation.set_global_services(global.iter().cloned());
            last_global = Some(global);
        }
    }
}

/// The leader's conditions writer: every second and on Gateway changes, one
/// [`ConditionSync`] pass over the peer Gateways (only while leader).
async fn write_conditions(
    mut sync: ConditionSync,
    writer: ConditionsWriter,
    watches: ClusterWatches,
    monitor: Arc<PeerMonitor>,
    leadership: Leadership,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = watches.changed.notified() => {}
            _ = tokio::time::sleep(CONDITIONS_PERIOD) => {}
        }
        let gateways = watches.peer_gateways();
        sync.retain(&gateways);
        if !leadership.is_leader() {
            continue;
        }
        sync.reconcile(&gateways, &monitor, &writer).await;
    }
}

/// Feeds the flat-sync executor: the first input once built (never an empty one: that
/// would look like every peer removed), then a new one after store or Gateway changes,
/// or a change of the running peers.
async fn flat_sync(
    mut builder: InputBuilder,
    executor: FlatSyncExecutor,
    watches: ClusterWatches,
    mut running: watch::Receiver<Vec<config::Peer>>,
    resync: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut events = builder.store.subscribe();
    let (tx, rx) = watch::channel(Arc::new(
        builder.build(&present_clusters(&watches.peer_gateways())),
    ));
    let runner = tokio::spawn(executor.run(rx, resync, None));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            event = events.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = event {
                    break;
                }
            }
            _ = watches.changed.notified() => {}
            changed = running.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        builder.peers = running.borrow_and_update().clone();
        // Coalesce a burst of changes into one rebuild.
        tokio::time::sleep(INPUT_DEBOUNCE).await;
        while events.try_recv().is_ok() {}
        let _ = tx.send(Arc::new(
            builder.build(&present_clusters(&watches.peer_gateways())),
        ));
    }
    drop(tx);
    runner.abort();
    Ok(())
}
