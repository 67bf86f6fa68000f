//! The Kubernetes side of `peerd run` (docs/design.md §6, §7), when `kubernetes` is configured.
//!
//! - **Peers come from Gateways, instead of the file.** At start, peerd lists the Gateways
//!   of class `istio-remote` in the peering namespace and turns every usable one into a
//!   peer (a file with `peers` is refused by config validation when Kubernetes is on).
//!   The xDS clients and federation are built once from that list. At runtime the peer
//!   monitor follows every Gateway change (so conditions follow edits, and a broken edit
//!   shows `Accepted=False`), and a removed Gateway's peer leaves the flat-network sync
//!   (its WorkloadEntries go after the removal grace); but an added, removed or
//!   re-addressed peer's xDS client changes only at the next start: peerd logs a warning
//!   saying so.
//! - **Global services** are the union of `export.globalServices` and the Services
//!   labelled `solo.io/service-scope=global` or `istio.io/global=true`, followed at runtime.
//! - The local network (label on `istio-system`) and east-west gateway (Gateway of class
//!   `istio-eastwest`) fill the file's `network` / `export.eastWestGateway` when unset.
//! - **Leader** (Lease in the control namespace): only the leader writes the five
//!   conditions to each peer Gateway's status and the `autogenflat.*` / `autogen.*`
//!   objects; every replica computes them.
//! - Downstream tokens: TokenReview when `kubernetes.tokenReview` is on.
//!
//! It owns wiring only: Kubernetes semantics live in [`crate::kube`], conditions in
//! [`crate::peers`]. It must never write to the API server except through
//! `kube::status::ConditionsWriter` and `kube::apply::FlatSyncExecutor`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::kube::{Client, ResourceExt};
use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, DataPlaneServiceType, EastWestGateway, KubeApi, ServiceRef};
use crate::federation::Federation;
use crate::kube::apply::{ExecutorConfig, FlatSyncExecutor, PeerSyncState, SyncInput};
use crate::kube::client::{ClientSource, connect};
use crate::kube::flatsync::{
    GLOBAL_HOST_SUFFIX, GlobalService, ImportedWorkload, PeerExports, PeerNetworkMode,
    desired_objects,
};
use crate::kube::gateways::{
    self, ClusterWatches, PeerAddress, Resolver, SpecError, SystemResolver,
};
use crate::kube::leader::{LeaderConfig, LeaderElector, Leadership};
use crate::kube::status::{
    ConditionStatus, ConditionsWriter, DesiredCondition, current_conditions,
    differs_beyond_messages, invalid_spec_conditions,
};
use crate::kube::tokenreview::{TokenReviewConfig, TokenReviewVerifier};
use crate::kube::types::{
    ANNOTATION_DATA_PLANE_SERVICE_TYPE, ANNOTATION_TRUST_DOMAIN, Gateway, LABEL_CLUSTER,
    LABEL_NETWORK,
};
use crate::peers::PeerMonitor;
use crate::peers::model::{
    LocalCluster, PeerModel, PeerSpec, SpecAddress, SpecListener, SpecSource,
};
use crate::store::Store;
use crate::xds::auth::{StaticTokenVerifier, TokenVerifier};
use crate::xds::types::ResourceType;

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
    /// The peers whose xDS clients are built at start, by cluster.
    started_peers: BTreeMap<String, config::Peer>,
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
    config.export.global_services = global_services(&file_global_services, &watches)
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
        started_peers,
        file_global_services,
    }))
}

/// The downstream token verifier: TokenReview when configured, else the token file.
pub(super) fn token_verifier(
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
    let verifier = StaticTokenVerifier::from_file(token_file, "ztunnel")
        .with_context(|| format!("xds.auth.tokenFile: reading {}", token_file.display()))?;
    Ok(Arc::new(verifier))
}

/// Starts the leader election, the Gateway follower, the conditions writer and the
/// flat-network sync. Everything stops with `cancel`; the lease is released on the way out.
pub(super) fn start(
    kube: KubeStart,
    config: &Arc<Config>,
    store: &Arc<Store>,
    federation: &Arc<Federation>,
    monitor: &Arc<PeerMonitor>,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
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
    monitor.set_peers(gateway_specs(&kube.watches, config), Instant::now());

    tasks.spawn(follow_gateways(
        Arc::clone(config),
        kube.watches.clone(),
        Arc::clone(monitor),
        Arc::clone(federation),
        kube.started_peers.clone(),
        kube.file_global_services,
        cancel.clone(),
    ));
    tasks.spawn(write_conditions(
        ConditionsWriter::new(
            kube.client.clone(),
            &config.peering_namespace,
            leadership.clone(),
        ),
        kube.watches.clone(),
        Arc::clone(monitor),
        leadership.clone(),
        local,
        config.sandbox_mode,
        config.trust_domain.clone(),
        cancel.clone(),
    ));
    if settings.flat_sync {
        let executor = FlatSyncExecutor::start(
            kube.client,
            ExecutorConfig {
                control_namespace: config.control_namespace.clone(),
                removal_grace: config.disconnect_grace_period.unwrap_or(Duration::ZERO),
                settle: SETTLE,
            },
            leadership,
        );
        let builder = InputBuilder {
            store: Arc::clone(store),
            peers: kube.started_peers.into_values().collect(),
            local_network: config.network.clone(),
            flat_networks: config.flat_networks,
            control_namespace: config.control_namespace.clone(),
        };
        tasks.spawn(flat_sync(
            builder,
            executor,
            kube.watches,
            settings.resync_interval,
            cancel.clone(),
        ));
    }
    Ok(())
}

/// `<hostname>_<random>` (the pod name in Kubernetes), like client-go's leader election:
/// unique even when every replica runs as pid 1 in its own pod.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "peerd".to_string());
    let suffix: u32 = rand::random();
    format!("{host}_{suffix:08x}")
}

/// A Gateway as the peer model sees it (the monitor validates it the same way as a file
/// peer, naming Gateway fields).
fn gateway_spec(gateway: &Gateway, local_trust_domain: &str) -> PeerSpec {
    let labels = gateway.labels();
    let annotations = gateway.annotations();
    PeerSpec {
        source: SpecSource::Gateway {
            namespace: gateway.namespace().unwrap_or_default(),
            name: gateway.name_any(),
        },
        generation: gateway.metadata.generation.unwrap_or(1),
        cluster: labels.get(LABEL_CLUSTER).cloned(),
        network: labels.get(LABEL_NETWORK).cloned(),
        addresses: gateway
            .spec
            .addresses
            .iter()
            .map(|a| SpecAddress {
                kind: a.type_.clone().unwrap_or_else(|| "IPAddress".into()),
                value: a.value.clone(),
            })
            .collect(),
        trust_domain: Some(
            annotations
                .get(ANNOTATION_TRUST_DOMAIN)
                .cloned()
                .unwrap_or_else(|| local_trust_domain.to_string()),
        ),
        listeners: gateway
            .spec
            .listeners
            .iter()
            .map(|l| SpecListener {
                name: l.name.clone(),
                port: l.port,
                protocol: l.protocol.clone(),
            })
            .collect(),
        data_plane_service_type: annotations.get(ANNOTATION_DATA_PLANE_SERVICE_TYPE).cloned(),
    }
}

fn gateway_specs(watches: &ClusterWatches, config: &Config) -> Vec<PeerSpec> {
    watches
        .peer_gateways()
        .iter()
        .map(|g| gateway_spec(g, &config.trust_domain))
        .collect()
}

/// Checks a peer Gateway beyond the peer model: hostnames resolve (with `resolver`), and
/// in sandbox mode the address is loopback.
async fn check_gateway(
    gateway: &Gateway,
    local: &LocalCluster,
    sandbox: bool,
    resolver: &dyn Resolver,
) -> Result<gateways::PeerSpec, SpecError> {
    let spec = gateways::resolve_peer(gateway, &local.cluster, resolver).await?;
    if sandbox {
        let ips: Vec<IpAddr> = match &spec.address {
            PeerAddress::Ip(ip) => vec![*ip],
            PeerAddress::Hostname { resolved, .. } => resolved.clone(),
        };
        if let Some(ip) = ips.iter().find(|ip| !ip.is_loopback()) {
            return Err(SpecError {
                field: "spec.addresses[0].value".into(),
                message: format!("{ip} is not a loopback address (sandboxMode)"),
            });
        }
    }
    Ok(spec)
}

/// The file-style peer of a usable Gateway, or why it is not usable.
async fn usable_peer(
    gateway: &Gateway,
    config: &Config,
    local: &LocalCluster,
    resolver: &dyn Resolver,
) -> anyhow::Result<config::Peer> {
    let model = PeerModel::build(&gateway_spec(gateway, &config.trust_domain), local)
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let checked = check_gateway(gateway, local, config.sandbox_mode, resolver).await?;
    let address = match checked.address {
        PeerAddress::Ip(ip) => config::PeerAddress::Ip(ip),
        PeerAddress::Hostname { name, .. } => config::PeerAddress::Hostname(name),
    };
    Ok(config::Peer {
        cluster: model.cluster,
        network: model.network,
        address,
        port: model.xds_port,
        hbone_port: model.hbone_port.unwrap_or(config::defaults::HBONE_PORT),
        trust_domain: model.trust_domain,
        server_identity: None,
        preferred_data_plane_service_type: if model.node_port {
            DataPlaneServiceType::NodePort
        } else {
            DataPlaneServiceType::LoadBalancer
        },
        max_resources: config::defaults::PEER_MAX_RESOURCES,
        max_bytes: config::defaults::PEER_MAX_BYTES,
    })
}

/// The east-west gateway target of an `istio-eastwest` Gateway with an IP address.
fn eastwest_target(gateway: &Gateway, sandbox: bool) -> Option<EastWestGateway> {
    let address: IpAddr = gateway
        .spec
        .addresses
        .iter()
        .find(|a| a.type_.as_deref().unwrap_or("IPAddress") == "IPAddress")?
        .value
        .parse()
        .ok()?;
    if sandbox && !address.is_loopback() {
        return None;
    }
    let hbone_port = gateway
        .spec
        .listeners
        .iter()
        .find(|l| l.port == gateways::HBONE_PORT || l.protocol.eq_ignore_ascii_case("HBONE"))
        .map(|l| l.port)
        .unwrap_or(gateways::HBONE_PORT);
    Some(EastWestGateway {
        address,
        hbone_port,
    })
}

fn global_services(file: &BTreeSet<ServiceRef>, watches: &ClusterWatches) -> BTreeSet<ServiceRef> {
    let mut out = file.clone();
    out.extend(watches.global_services().iter().map(|s| ServiceRef {
        namespace: s.namespace().unwrap_or_default(),
        name: s.name_any(),
    }));
    out
}

/// Follows Gateways and Services: the peer monitor gets every Gateway change, federation
/// every change of the global set; a change of the peer set is logged (applied at the
/// next start).
async fn follow_gateways(
    config: Arc<Config>,
    watches: ClusterWatches,
    monitor: Arc<PeerMonitor>,
    federation: Arc<Federation>,
    started: BTreeMap<String, config::Peer>,
    file_global_services: BTreeSet<ServiceRef>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let local = LocalCluster::from(&*config);
    let resolver = SystemResolver {
        timeout: RESOLVE_TIMEOUT,
    };
    let mut last_specs = gateway_specs(&watches, &config);
    let mut last_global = global_services(&file_global_services, &watches);
    let mut warned: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = watches.changed.notified() => {}
        }
        let specs = gateway_specs(&watches, &config);
        if specs != last_specs {
            monitor.set_peers(specs.clone(), Instant::now());
            last_specs = specs;
            // Which peers would be built now, against those running.
            let mut now_usable = BTreeMap::new();
            for gateway in watches.peer_gateways() {
                if let Ok(peer) = usable_peer(&gateway, &config, &local, &resolver).await {
                    now_usable.entry(peer.cluster.clone()).or_insert(peer);
                }
            }
            let mut differences = BTreeSet::new();
            for (cluster, peer) in &now_usable {
                match started.get(cluster) {
                    None => differences.insert(format!("{cluster} added")),
                    Some(running) if running != peer => {
                        differences.insert(format!("{cluster} changed"))
                    }
                    Some(_) => false,
                };
            }
            for cluster in started.keys().filter(|c| !now_usable.contains_key(*c)) {
                differences.insert(format!("{cluster} removed or no longer usable"));
            }
            for difference in differences.difference(&warned) {
                tracing::warn!(peer = %difference, "istio-remote Gateways changed: conditions follow now, the peer's xDS client changes when peerd restarts");
            }
            warned = differences;
        }
        let global = global_services(&file_global_services, &watches);
        if global != last_global {
            tracing::info!(count = global.len(), "global services changed");
            federation.set_global_services(global.iter().cloned());
            last_global = global;
        }
    }
}

/// The five conditions for one peer Gateway: all False/Invalid when its spec is not
/// usable, else what the peer monitor shows. `None`: the monitor has not evaluated it yet.
fn desired_for(
    gateway: &Gateway,
    checked: &Result<(), SpecError>,
    monitor: &PeerMonitor,
    trust_domain: &str,
) -> Option<Vec<DesiredCondition>> {
    if let Err(err) = checked {
        return Some(invalid_spec_conditions(err));
    }
    let name = gateway_spec(gateway, trust_domain).display_name();
    let snapshot = monitor.snapshot();
    let status = snapshot.iter().find(|s| s.name == name)?;
    let conditions: Vec<DesiredCondition> = status
        .conditions
        .iter()
        .map(|c| {
            let state = match c.status {
                crate::peers::ConditionStatus::True => ConditionStatus::True,
                crate::peers::ConditionStatus::False => ConditionStatus::False,
                crate::peers::ConditionStatus::Unknown => ConditionStatus::Unknown,
            };
            DesiredCondition::new(c.type_.as_str(), state, &c.reason, &c.message)
        })
        .collect();
    (!conditions.is_empty()).then_some(conditions)
}

/// (type, status, reason) of each condition written.
type Signature = Vec<(String, String, String)>;

/// The leader's conditions writer: every second and on Gateway changes, brings each peer
/// Gateway's five conditions to what peerd knows. No request when nothing but a message
/// changed, or when the last write is not yet visible in the watch.
#[allow(clippy::too_many_arguments)]
async fn write_conditions(
    writer: ConditionsWriter,
    watches: ClusterWatches,
    monitor: Arc<PeerMonitor>,
    leadership: Leadership,
    local: LocalCluster,
    sandbox: bool,
    trust_domain: String,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let resolver = SystemResolver {
        timeout: RESOLVE_TIMEOUT,
    };
    // Per Gateway: the resourceVersion its check was made for, and the result.
    let mut checks: BTreeMap<String, (String, Result<(), SpecError>)> = BTreeMap::new();
    // Per Gateway: the resourceVersion a write was based on, and what was written.
    let mut written: BTreeMap<String, (String, Signature)> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = watches.changed.notified() => {}
            _ = tokio::time::sleep(CONDITIONS_PERIOD) => {}
        }
        let gateways = watches.peer_gateways();
        let names: BTreeSet<String> = gateways.iter().map(|g| g.name_any()).collect();
        checks.retain(|name, _| names.contains(name));
        written.retain(|name, _| names.contains(name));
        if !leadership.is_leader() {
            continue;
        }
        for gateway in gateways {
            let name = gateway.name_any();
            let rv = gateway.resource_version().unwrap_or_default();
            let fresh = checks.get(&name).is_some_and(|(at, _)| *at == rv);
            if !fresh {
                let result = check_gateway(&gateway, &local, sandbox, &resolver)
                    .await
                    .map(|_| ());
                checks.insert(name.clone(), (rv.clone(), result));
            }
            let Some((_, checked)) = checks.get(&name) else {
                continue;
            };
            let Some(desired) = desired_for(&gateway, checked, &monitor, &trust_domain) else {
                continue;
            };
            let signature: Signature = desired
                .iter()
                .map(|d| {
                    (
                        d.type_.clone(),
                        d.status.as_str().to_string(),
                        d.reason.clone(),
                    )
                })
                .collect();
            if written
                .get(&name)
                .is_some_and(|(based_on, what)| *based_on == rv && *what == signature)
            {
                // Our write is not in the watch yet.
                continue;
            }
            let current = current_conditions(&gateway);
            let generation = gateway.metadata.generation.unwrap_or(0);
            if !differs_beyond_messages(current, &desired, generation) {
                continue;
            }
            match writer.write(&gateway, &desired).await {
                Ok(outcome) => {
                    tracing::debug!(gateway = %name, ?outcome, "peer Gateway conditions");
                    written.insert(name, (rv, signature));
                }
                Err(err) => {
                    tracing::warn!(gateway = %name, error = format!("{err:#}"), "writing peer Gateway conditions failed; retrying")
                }
            }
        }
    }
}

/// Builds the flat-network sync input from the store (what each peer exports to us).
struct InputBuilder {
    store: Arc<Store>,
    peers: Vec<config::Peer>,
    local_network: String,
    flat_networks: bool,
    control_namespace: String,
}

impl InputBuilder {
    /// The input for the peers in `present` (peers whose Gateway still exists).
    fn build(&self, present: &BTreeSet<String>) -> SyncInput {
        let mut exports = Vec::new();
        let mut states = Vec::new();
        for peer in self.peers.iter().filter(|p| present.contains(&p.cluster)) {
            let origin = self.store.get(&peer.cluster);
            states.push(PeerSyncState {
                cluster: peer.cluster.clone(),
                fully_synced: origin.as_ref().is_some_and(|o| o.is_fully_synced()),
            });
            let mode =
                PeerNetworkMode::decide(&peer.network, &self.local_network, self.flat_networks);
            let mut workloads = Vec::new();
            let mut services = Vec::new();
            if let Some(origin) = origin {
                let snapshot = origin.view.snapshot();
                for resource in snapshot.resources(ResourceType::Address).values() {
                    if let Some(w) = resource.as_workload() {
                        workloads.push(ImportedWorkload::from_summary(w, ""));
                    } else if let Some(s) = resource.as_service()
                        && let Some(service) = exported_service(&s.hostname, &s.ports)
                    {
                        services.push(service);
                    }
                }
            }
            services.sort();
            exports.push(PeerExports {
                cluster: peer.cluster.clone(),
                network: peer.network.clone(),
                mode,
                workloads,
                services,
            });
        }
        SyncInput {
            desired: desired_objects(&self.control_namespace, &exports),
            peers: states,
        }
    }
}

/// `<svc>.<ns>.mesh.internal` with its (port, target port) pairs → a global service.
fn exported_service(hostname: &str, ports: &[(u32, u32)]) -> Option<GlobalService> {
    let stem = hostname.strip_suffix(GLOBAL_HOST_SUFFIX)?;
    let (name, namespace) = stem.split_once('.')?;
    if name.is_empty() || namespace.is_empty() || namespace.contains('.') {
        return None;
    }
    let mut ports: Vec<_> = ports
        .iter()
        .map(|(port, target)| crate::kube::types::ServiceEntryPort {
            number: *port,
            name: format!("port-{port}"),
            protocol: String::new(),
            target_port: (*target != 0 && target != port).then_some(*target),
        })
        .collect();
    ports.sort();
    ports.dedup_by_key(|p| p.number);
    Some(GlobalService {
        namespace: namespace.to_string(),
        name: name.to_string(),
        ports,
    })
}

/// Feeds the flat-sync executor: the first input once built (never an empty one: that
/// would look like every peer removed), then a new one after store or Gateway changes.
async fn flat_sync(
    builder: InputBuilder,
    executor: FlatSyncExecutor,
    watches: ClusterWatches,
    resync: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let present = |watches: &ClusterWatches| -> BTreeSet<String> {
        watches
            .peer_gateways()
            .iter()
            .filter_map(|g| g.labels().get(LABEL_CLUSTER).cloned())
            .collect()
    };
    let mut events = builder.store.subscribe();
    let (tx, rx) = watch::channel(Arc::new(builder.build(&present(&watches))));
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
        }
        // Coalesce a burst of changes into one rebuild.
        tokio::time::sleep(INPUT_DEBOUNCE).await;
        while events.try_recv().is_ok() {}
        let _ = tx.send(Arc::new(builder.build(&present(&watches))));
    }
    drop(tx);
    runner.abort();
    Ok(())
}
