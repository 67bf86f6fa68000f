//! Starts the peer monitor over the probe source (see `probes`), and feeds the monitor
//! the merged-view versions that carry each peer's changes.
//!
//! It owns wiring only; conditions are computed in [`crate::peers`], probing in
//! [`crate::probe`].

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::federation::Federation;
use crate::peers::{
    AdsClients, DownstreamAcks, LocalCluster, MonitorConfig, MonitorSources, PeerMonitor,
    ProbeSource, RecordedPeerVersions,
};
use crate::store::Store;
use crate::xds::server::AdsServer;

/// What the peer monitor reads: the daemon's store, federation and downstream server,
/// the running peer clients and the probe source.
pub(super) struct MonitorInputs<'a> {
    pub store: &'a Arc<Store>,
    pub federation: &'a Arc<Federation>,
    pub server: &'a AdsServer,
    pub clients: Arc<AdsClients>,
    pub probe: Arc<dyn ProbeSource>,
}

/// Starts the peer monitor that turns stream state, sync, downstream ACKs and probe
/// results into the peer conditions.
pub(super) fn start_peer_monitor(
    config: &Config,
    inputs: MonitorInputs<'_>,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<Arc<PeerMonitor>> {
    let MonitorInputs {
        store,
        federation,
        server,
        clients,
        probe,
    } = inputs;
    let guard = super::probes::target_guard(config);
    let versions = RecordedPeerVersions::new();
    tasks.spawn(record_peer_versions(
        Arc::clone(federation),
        Arc::clone(&versions),
        cancel.clone(),
    ));
    let monitor = PeerMonitor::new(
        LocalCluster::from(config),
        crate::peers::model::specs_from_config(config),
        MonitorConfig {
            hysteresis: (&config.hysteresis).into(),
            probe_guard: guard,
            ..MonitorConfig::default()
        },
        MonitorSources {
            upstreams: clients,
            imports: Arc::clone(store) as _,
            acks: Arc::new(DownstreamAcks {
                subscribers: server.subscribers(),
                view_label: "merged".into(),
                versions,
            }),
            probe,
        },
        std::time::Instant::now(),
    );
    let handle = monitor.spawn(cancel.clone());
    tasks.spawn(async move {
        handle
            .await
            .map_err(|e| anyhow::anyhow!("peer monitor stopped: {e}"))
    });
    Ok(monitor)
}

/// Tells the peer monitor which merged-view versions carry each peer's changes, and when
/// they were published, so `PeerDataPlaneProgrammed` can check ztunnel's ACK of each.
async fn record_peer_versions(
    federation: Arc<Federation>,
    versions: Arc<RecordedPeerVersions>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut changes = federation.merged().subscribe();
    loop {
        let change = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            c = changes.recv() => c,
        };
        match change {
            Ok(change) => {
                for origin in &change.origins {
                    versions.record(origin, change.version);
                }
            }
            // Lagging only delays the record to the next change; the version only grows.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}
