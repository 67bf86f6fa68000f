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
use crate::xds::stats::UpstreamList;

/// The daemon's handles the debug API reads.
pub(super) struct DebugHandles<'a> {
    pub store: &'a Arc<Store>,
    pub federation: &'a Arc<Federation>,
    pub server: &'a AdsServer,
    pub readiness: &'a Arc<Readiness>,
    pub upstreams: &'a Arc<UpstreamList>,
    pub monitor: &'a Arc<PeerMonitor>,
    pub probe_mode: &'a crate::probe::mode::ProbeMode,
    /// Where the xDS server listens (shown by the debug API).
    pub xds_addr: SocketAddr,
}

/// Binds `listeners.debug` and serves the debug API (peers from the upstream streams
/// until the peer manager provides a [`crate::debug::PeerSource`]).
pub(super) async fn start_debug_api(
    config: &Arc<Config>,
    handles: DebugHandles<'_>,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<SocketAddr> {
    let DebugHandles {
        store,
        federation,
        server,
        readiness,
        upstreams,
        monitor,
        probe_mode,
        xds_addr,
    } = handles;
    let listener = admin::bind(config.listeners.debug, "debug").await?;
    let debug_addr = listener.local_addr().context("debug listener address")?;
    let peers = crate::debug::peers::MonitorPeerSource::start(
        Arc::clone(monitor),
        Arc::clone(federation),
        Arc::clone(upstreams),
        cancel.clone(),
    );
    let service = crate::debug::DebugService::new(crate::debug::DebugState {
        config: Arc::clone(config),
        store: Arc::clone(store),
        federation: Arc::clone(federation),
        subscribers: server.subscribers(),
        readiness: Arc::clone(readiness),
        upstreams: Arc::clone(upstreams),
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
