//! Starts the gRPC debug API (15041) over the running daemon's state.
//!
//! It owns only the wiring of [`crate::debug`] to the daemon's shared handles; it must
//! never hold debug logic itself.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Readiness};
use crate::config::Config;
use crate::federation::Federation;
use crate::peers::PeerMonitor;
use crate::store::Store;
use crate::xds::server::AdsServer;
use crate::xds::stats::StreamStats;

/// Binds `listeners.debug` and serves the debug API (peers from the upstream streams
/// until the peer manager provides a [`crate::debug::PeerSource`]).
#[allow(clippy::too_many_arguments)]
pub(super) async fn start_debug_api(
    config: &Arc<Config>,
    store: &Arc<Store>,
    federation: &Arc<Federation>,
    server: &AdsServer,
    readiness: &Arc<Readiness>,
    upstreams: &[(String, Arc<StreamStats>)],
    monitor: &Arc<PeerMonitor>,
    probe_mode: &crate::probe::mode::ProbeMode,
    xds_addr: SocketAddr,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<SocketAddr> {
    let listener = admin::bind(config.listeners.debug, "debug").await?;
    let debug_addr = listener.local_addr().context("debug listener address")?;
    let peers = crate::debug::peers::MonitorPeerSource::start(
        Arc::clone(monitor),
        Arc::clone(federation),
        upstreams.to_vec(),
        cancel.clone(),
    );
    let service = crate::debug::DebugService::new(crate::debug::DebugState {
        config: Arc::clone(config),
        store: Arc::clone(store),
        federation: Arc::clone(federation),
        subscribers: server.subscribers(),
        readiness: Arc::clone(readiness),
        upstreams: upstreams.to_vec(),
        peers,
        export: Some(Arc::clone(
            federation.export_view(crate::federation::ExportFlavor::Flat),
        )),
        started: std::time::SystemTime::now(),
        probe_mode: Some(probe_mode.clone()),
        xds_address: xds_addr.to_string(),
        debug_address: debug_addr.to_string(),
    });
    tasks.spawn(crate::debug::serve(listener, service, cancel.clone()));
    Ok(debug_addr)
}
