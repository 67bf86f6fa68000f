//! A ztunnel that never reads: it connects to a peerd like ztunnel (TLS, bearer token,
//! `clusterid`, both types on one delta stream), then holds the stream open without
//! reading a single response, so HTTP/2 flow control fills and peerd's writes to it
//! block. peerd must keep serving every other client meanwhile.
//!
//! Owns only its own connection; dials only the given loopback address.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::sandbox::ztunnel::PEERD_SERVER_NAME;
use peerd::identity::reload::RootsSource;
use peerd::identity::tls::{ClientTlsOptions, ServerIdentity, client_config};
use peerd::proto::envoy::config::core::v3::Node;
use peerd::proto::envoy::service::discovery::v3 as discovery;
use peerd::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use peerd::xds::transport::TlsConnectorService;
use peerd::xds::types::ResourceType;

/// Opens the stream and keeps it (unread) until `cancel`; returns once it is open.
pub async fn hold(
    addr: SocketAddr,
    cluster: &str,
    token_file: &Path,
    root_cert: &Path,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let roots = RootsSource::from_file(root_cert).context("stuck client roots")?;
    let tls = client_config(&ClientTlsOptions::new(roots, ServerIdentity::Name))
        .context("stuck client TLS")?;
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading {}", token_file.display()))?;
    let connector = TlsConnectorService::new(
        addr.to_string(),
        PEERD_SERVER_NAME,
        tls,
        Duration::from_secs(10),
    )?;
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
        .connect_with_connector(connector)
        .await
        .with_context(|| format!("stuck client: connecting to {addr}"))?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {}", token.trim()).parse()?);
    request.metadata_mut().insert("clusterid", cluster.parse()?);
    let node = Node {
        id: format!(
            "ztunnel~{}~stuck-{cluster}.istio-system~istio-system.svc.cluster.local",
            addr.ip()
        ),
        ..Node::default()
    };
    for kind in ResourceType::ALL {
        tx.send(discovery::DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            node: Some(node.clone()),
            ..Default::default()
        })
        .await
        .context("stuck client: queueing the subscription")?;
    }
    let responses = client
        .delta_aggregated_resources(request)
        .await
        .context("stuck client: opening the stream")?
        .into_inner();
    tokio::spawn(async move {
        // Holding both ends, reading nothing.
        let _held = (tx, responses, client);
        cancel.cancelled().await;
    });
    Ok(())
}
