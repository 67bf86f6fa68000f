//! The node's ztunnel, simulated: one delta-xDS client per sandbox cluster that connects
//! to that cluster's peerd like ztunnel does (bearer token, `clusterid` header, ztunnel's
//! node id, both types on one stream, ztunnel's ACK/NACK rules, which are the ones
//! [`AdsClient`] follows). Its ACKs are what `PeerDataPlaneProgrammed` and
//! `peerd_propagation_seconds` wait for, so the sandbox exercises them for real.
//!
//! It owns a throwaway store of what it received; it must never connect outside
//! loopback (it dials only its own cluster's peerd on 127.0.k.1).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::sandbox::layout::ClusterLayout;
use peerd::identity::reload::RootsSource;
use peerd::identity::tls::{ClientTlsOptions, ServerIdentity, client_config};
use peerd::proto::envoy::config::core::v3::Node;
use peerd::store::Store;
use peerd::xds::client::{AdsClient, ClientOptions, TokenSource};
use peerd::xds::stats::StreamStats;

/// The DNS name on every sandbox peerd's certificate.
pub const PEERD_SERVER_NAME: &str = "peerd.istio-system.svc";

/// Starts the simulated ztunnel of `layout`'s node; it reconnects until cancelled (a
/// stopped peerd is retried with the client's backoff). Returns what it holds.
pub fn spawn(
    layout: &ClusterLayout,
    token_file: &Path,
    root_cert: &Path,
    cancel: CancellationToken,
) -> anyhow::Result<Arc<Store>> {
    spawn_named(layout, "ztunnel", token_file, root_cert, cancel)
}

/// [`spawn`] with another pod name in the node id (`<pod>-<cluster>`), so an outside
/// watcher is told apart from the node's own simulated ztunnel in `peerd status`.
pub fn spawn_named(
    layout: &ClusterLayout,
    pod: &str,
    token_file: &Path,
    root_cert: &Path,
    cancel: CancellationToken,
) -> anyhow::Result<Arc<Store>> {
    spawn_with_stats(layout, layout.xds(), pod, token_file, root_cert, cancel)
        .map(|(store, _)| store)
}

/// [`spawn_named`] that dials `endpoint` (peerd's 15012, or a path to it) and also
/// returns the client's stream counters (ACKs, NACKs sent, reconnects), for an observer
/// that reports them.
pub fn spawn_with_stats(
    layout: &ClusterLayout,
    endpoint: std::net::SocketAddr,
    pod: &str,
    token_file: &Path,
    root_cert: &Path,
    cancel: CancellationToken,
) -> anyhow::Result<(Arc<Store>, Arc<StreamStats>)> {
    let roots = RootsSource::from_file(root_cert)
        .with_context(|| format!("{}: simulated ztunnel roots", layout.name))?;
    let tls = client_config(&ClientTlsOptions::new(roots, ServerIdentity::Name))
        .with_context(|| format!("{}: simulated ztunnel TLS", layout.name))?;
    let mut options = ClientOptions::new(
        layout.name.clone(),
        endpoint.to_string(),
        PEERD_SERVER_NAME.to_string(),
        tls,
    );
    options.token = Some(TokenSource::File(token_file.to_path_buf()));
    options.headers = vec![("clusterid".into(), layout.name.clone())];
    options.node = node(layout, pod);
    let store = Store::new();
    let client = AdsClient::new(options, Arc::clone(&store));
    let stats = client.stats();
    tokio::spawn(client.run(cancel));
    Ok((store, stats))
}

/// ztunnel's node id format: `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
fn node(layout: &ClusterLayout, pod: &str) -> Node {
    Node {
        id: format!(
            "ztunnel~{}~{pod}-{}.istio-system~istio-system.svc.cluster.local",
            layout.host, layout.name
        ),
        ..Node::default()
    }
}
