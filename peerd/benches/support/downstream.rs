//! A ztunnel-like downstream for the benchmarks: connects (retrying until the server
//! listens) with a bearer token and subscribes to both types on one delta stream. The
//! caller reads the responses and sends the ACKs on the returned sender.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use peerd::proto::envoy::service::discovery::v3 as discovery;
use peerd::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use peerd::xds::transport::TlsConnectorService;
use peerd::xds::types::ResourceType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub type Responses = tonic::Streaming<discovery::DeltaDiscoveryResponse>;

pub async fn subscribe(
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    token: &str,
) -> anyhow::Result<(mpsc::Sender<discovery::DeltaDiscoveryRequest>, Responses)> {
    let bearer = format!("Bearer {token}");
    let (tx, answer) = open_stream(
        addr,
        server_name,
        tls,
        Duration::from_secs(10),
        ("authorization", &bearer),
    )
    .await?;
    Ok((tx, answer?.into_inner()))
}

/// Like [`subscribe`], as a peer's peerd reads an export view: no token (the client
/// certificate in `tls` is the credential) and the `clusterid` header naming the peer.
/// Returns `Ok(None)` when the server refused the stream (e.g. `UNAVAILABLE` before its
/// export is ready), so the caller may retry.
pub async fn subscribe_as_peer(
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    cluster_id: &str,
) -> anyhow::Result<Option<(mpsc::Sender<discovery::DeltaDiscoveryRequest>, Responses)>> {
    let (tx, answer) = open_stream(
        addr,
        server_name,
        tls,
        Duration::from_secs(30),
        ("clusterid", cluster_id),
    )
    .await?;
    match answer {
        Ok(r) => Ok(Some((tx, r.into_inner()))),
        Err(status) if status.code() == tonic::Code::Unavailable => Ok(None),
        Err(status) => Err(anyhow::anyhow!("export stream refused: {status}")),
    }
}

/// Connects (retrying until the server listens), sends a subscription to both types
/// carrying `header`, and returns the server's answer as it came.
async fn open_stream(
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    header: (&'static str, &str),
) -> anyhow::Result<(
    mpsc::Sender<discovery::DeltaDiscoveryRequest>,
    Result<tonic::Response<Responses>, tonic::Status>,
)> {
    let connector = TlsConnectorService::new(addr.to_string(), server_name, tls, connect_timeout)?;
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
            .connect_with_connector(connector.clone())
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(512 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(16);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(header.0, header.1.parse()?);
    for kind in ResourceType::ALL {
        tx.send(discovery::DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            node: Some(Default::default()),
            ..Default::default()
        })
        .await?;
    }
    let answer = client.delta_aggregated_resources(request).await;
    Ok((tx, answer))
}
