//! `peerd run`: assembles the daemon from a validated [`Config`]: upstream clients →
//! store → federation → xDS server, plus the admin listeners and readiness gates.
//!
//! It owns process wiring and lifetimes (one cancellation token ends everything). It must
//! never hold protocol or federation logic: each piece lives in its own module.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod debug_api;
mod kube;
mod monitor;
mod peer_clients;
mod probes;
mod reload;
mod upstreams;

pub use peer_clients::PeerClients;
pub use reload::ConfigSource;

use crate::admin::{self, Readiness};
use crate::config::Config;
use crate::federation::{Federation, FederationConfig};
use crate::identity::reload::{CertSource, RootsSource};
use crate::identity::tls::{ClientAuth, ServerTlsOptions};
use crate::peers::{AdsClients, PeerMonitor};
use crate::store::{Store, StoreEvent};
use crate::xds::client::AdsClient;
use crate::xds::server::{AdsServer, ServerOptions};
use crate::xds::stats::UpstreamList;

/// Readiness gate: the local istiod upstream has completed its first full sync.
pub const GATE_LOCAL_SYNCED: &str = "local upstream synced";
/// Readiness gate: the xDS listener is bound.
pub const GATE_XDS_LISTENING: &str = "xds listening";
/// Readiness gate: the merged view is ready (the signal that releases held ztunnel
/// streams, so readiness never comes before ztunnel can be answered).
pub const GATE_MERGED_VIEW_READY: &str = "merged view ready";

/// How often certificate and root files are checked for rotation.
const CERT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// A running peerd.
pub struct Peerd {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub federation: Arc<Federation>,
    pub peers: Arc<PeerMonitor>,
    pub server: AdsServer,
    pub readiness: Arc<Readiness>,
    /// The probe mode in effect (`ebpf`, or `userspace` with the reason).
    pub probe_mode: crate::probe::mode::ProbeMode,
    /// Stats of each upstream stream, by origin name (peers come and go).
    pub upstreams: Arc<UpstreamList>,
    /// The running peer clients (they follow the Gateways, or the file on SIGHUP).
    pub peer_clients: Arc<PeerClients>,
    /// Bound addresses (port 0 in the config resolves here).
    pub xds_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub debug_addr: SocketAddr,
    cancel: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    _watches: Vec<crate::identity::reload::WatchHandle>,
}

impl Peerd {
    /// Binds every listener and starts every task. Errors name what failed.
    pub async fn start(mut config: Config) -> anyhow::Result<Peerd> {
        // Kubernetes (when configured) supplies peers, global services and more.
        let kube = kube::prepare(&mut config).await?;
        let config = Arc::new(config);
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut watches = Vec::new();

        let readiness = Readiness::new();
        readiness.register(GATE_LOCAL_SYNCED);
        readiness.register(GATE_XDS_LISTENING);

        let store = Store::with_memory_budget(config.memory_budget_bytes);
        let federation_config = FederationConfig::from_config(&config)
            .context("peers: the peerd identity of a peer")?;
        let federation = Federation::new(federation_config, Arc::clone(&store));
        readiness.register_signal(GATE_MERGED_VIEW_READY, federation.merged().ready_signal());
        // Peers' last state from before a restart, before federation and the clients run.
        let peer_state = crate::peerstate::PeerStateOptions::from_config(&config);
        if let Some(options) = &peer_state {
            crate::peerstate::restore(options, &store, &federation).await;
        }

        // Downstream server: ztunnel with a bearer token gets the merged view.
        let tls = config
            .xds
            .tls
            .as_ref()
            .context("xds.tls: a server certificate is required")?;
        let cert = CertSource::from_files(&tls.cert_chain, &tls.key)
            .context("xds.tls: loading the server certificate")?;
        watches.push(cert.watch(CERT_RELOAD_INTERVAL));
        let peering_roots = match &tls.client_roots {
            Some(path) => {
                let roots = RootsSource::from_file(path).context("xds.tls.root")?;
                watches.push(roots.watch(CERT_RELOAD_INTERVAL));
                Some(roots)
            }
            None => None,
        };
        let client_auth = match &peering_roots {
            Some(roots) => ClientAuth::Optional(Arc::clone(roots).into()),
            None => ClientAuth::None,
        };
        let server_tls = crate::identity::tls::server_config(
            Arc::clone(&cert) as _,
            &ServerTlsOptions {
                client_auth,
                allow_tls12: false,
            },
        )
        .context("xds.tls: building the server TLS configuration")?;
        let verifier = kube::token_verifier(&config, kube.as_ref())?;
        // Peers presenting a certificate get their export view; ztunnel with a valid
        // bearer token gets the merged view.
        let selector = federation.selector(Some(verifier));
        let server = AdsServer::new(
            selector,
            ServerOptions {
                debounce: config.xds.debounce,
                outbound_queue: config.xds.connection_queue,
                max_message_size: config.xds.max_message_bytes,
                ..ServerOptions::default()
            },
        );
        let xds_listener = admin::bind(config.listeners.xds, "xds").await?;
        let xds_addr = xds_listener.local_addr().context("xds listener address")?;
        {
            let server = server.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move { server.serve(xds_listener, server_tls, cancel).await });
        }
        readiness.set(GATE_XDS_LISTENING, true);

        // Admin listeners.
        let metrics = admin::install_metrics_recorder()?;
        let metrics_listener = admin::bind(config.listeners.metrics, "metrics").await?;
        let metrics_addr = metrics_listener
            .local_addr()
            .context("metrics listener address")?;
        tasks.spawn(admin::serve_metrics(
            metrics_listener,
            metrics,
            cancel.clone(),
        ));
        let health_listener = admin::bind(config.listeners.health, "health").await?;
        let health_addr = health_listener
            .local_addr()
            .context("health listener address")?;
        tasks.spawn(admin::serve_health_on_own_thread(
            health_listener,
            Arc::clone(&readiness),
            cancel.clone(),
        )?);

        // Federation, then the upstreams feeding it.
        {
            let federation = Arc::clone(&federation);
            let cancel = cancel.clone();
            tasks.spawn(async move {
                federation.run(cancel).await;
                Ok(())
            });
        }
        if let Some(options) = peer_state {
            tasks.spawn(measured(crate::peerstate::run_writer(
                options,
                Arc::clone(&federation),
                cancel.clone(),
            )));
        }
        // Side measurements: resources per origin, propagation to ztunnel's ACK.
        tasks.spawn(measured(crate::measure::run_resource_gauges(
            Arc::clone(&store),
            cancel.clone(),
        )));
        tasks.spawn(measured(crate::measure::run_propagation(
            Arc::clone(&store),
            Arc::clone(&federation),
            server.subscribers(),
            cancel.clone(),
        )));
        tasks.spawn(track_local_sync(
            Arc::clone(&store),
            config.cluster.clone(),
            Arc::clone(&readiness),
            cancel.clone(),
        ));
        let clients = AdsClients::new();
        let streams = UpstreamList::new(Vec::new());
        let peer_clients = PeerClients::new(peer_clients::PeerClientDeps {
            config: Arc::clone(&config),
            store: Arc::clone(&store),
            federation: Arc::clone(&federation),
            monitor_clients: Arc::clone(&clients),
            upstreams: Arc::clone(&streams),
            roots: peering_roots.clone(),
            cert: Arc::clone(&cert),
            cancel: cancel.clone(),
        });
        let initial_peers: std::collections::BTreeMap<_, _> = config
            .peers
            .iter()
            .map(|p| (p.cluster.clone(), p.clone()))
            .collect();
        let (_, errors) = peer_clients.apply(&initial_peers).await;
        if let Some(error) = errors.into_iter().next() {
            return Err(error.context("starting the peer clients"));
        }
        for (i, upstream) in config.upstreams.iter().enumerate() {
            let options = upstreams::client_options(&config, upstream)
                .with_context(|| format!("upstreams[{i}] ({})", upstream.name))?;
            let client = AdsClient::new(options, Arc::clone(&store));
            streams.set(&upstream.name, client.stats());
            let cancel = cancel.clone();
            tasks.spawn(async move {
                client.run(cancel).await;
                Ok(())
            });
        }
        let probes = probes::start_probes(&config, &store, &cancel, &mut tasks)?;
        let peers = monitor::start_peer_monitor(
            &config,
            monitor::MonitorInputs {
                store: &store,
                federation: &federation,
                server: &server,
                clients,
                probe: Arc::clone(&probes.source),
            },
            &cancel,
            &mut tasks,
        )?;
        if let Some(kube) = kube {
            kube::start(
                kube,
                kube::Handles {
                    config: &config,
                    store: &store,
                    federation: &federation,
                    monitor: &peers,
                    peer_clients: &peer_clients,
                },
                &cancel,
                &mut tasks,
            )?;
        }
        let debug_addr = debug_api::start_debug_api(
            &config,
            debug_api::DebugHandles {
                store: &store,
                federation: &federation,
                server: &server,
                readiness: &readiness,
                upstreams: &streams,
                monitor: &peers,
                probe_mode: &probes.mode,
                xds_addr,
            },
            &cancel,
            &mut tasks,
        )
        .await?;
        if !config.upstreams.iter().any(|u| u.name == config.cluster) {
            // Nothing will ever sync the local cluster: say so instead of never being ready.
            tracing::warn!(cluster = %config.cluster, "no upstream is named like the local cluster; readiness waits for it");
        }
        tracing::info!(cluster = %config.cluster, xds = %xds_addr, metrics = %metrics_addr, health = %health_addr, debug = %debug_addr, "peerd started");

        Ok(Peerd {
            config,
            store,
            federation,
            peers,
            server,
            readiness,
            probe_mode: probes.mode,
            upstreams: streams,
            peer_clients,
            xds_addr,
            metrics_addr,
            health_addr,
            debug_addr,
            cancel,
            tasks,
            _watches: watches,
        })
    }

    /// A token that stops everything when cancelled.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Runs until cancelled or until a task fails; then stops the rest.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                joined = self.tasks.join_next() => match joined {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => { result = Err(e); break; }
                    Some(Err(e)) => { result = Err(anyhow::anyhow!("task panicked: {e}")); break; }
                },
            }
        }
        self.cancel.cancel();
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok(Err(e)) = joined {
                tracing::debug!(error = %e, "task ended with an error during shutdown");
            }
        }
        tracing::info!("peerd stopped");
        result
    }
}

/// A side task that ends only with cancellation: never an error of the daemon.
async fn measured(task: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    task.await;
    Ok(())
}

/// Opens the readiness gate once the local origin has synced both types, and keeps it
/// open afterwards (a later disconnect keeps serving the last state: ztunnel must not
/// lose its configuration because istiod restarted).
async fn track_local_sync(
    store: Arc<Store>,
    cluster: String,
    readiness: Arc<Readiness>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut events = store.subscribe();
    loop {
        if store.get(&cluster).is_some_and(|o| o.is_fully_synced()) {
            readiness.set(GATE_LOCAL_SYNCED, true);
            return Ok(());
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            event = events.recv() => match event {
                Ok(StoreEvent::Synced { .. }) | Err(_) => {}
                Ok(_) => {}
            },
        }
    }
}
