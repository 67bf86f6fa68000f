//! The debug API as `peerd status` and `peerd check` read it: one connection, one
//! [`Report`] fetched from the four list calls.
//!
//! Read-only; it must never retry forever (a CLI answers or fails with the address).

use anyhow::Context;

use crate::debug::convert::{list_field, message_to_json};
use crate::proto::debug::v1 as api;
use crate::proto::debug::v1::debug_client::DebugClient;

/// Where `peerd status` and `peerd check` look by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:15041";

/// Largest debug API message: the server's encoding limit and the CLI's decoding limit,
/// so a response the server sends is one the CLI accepts. Client-controlled strings in
/// responses are bounded (`crate::bounded`), so lists stay far below it; a whole-view
/// resource listing with JSON at 100k resources is the large case.
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// What one `status`/`check` run sees.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub info: api::ServerInfo,
    pub peers: Vec<api::Peer>,
    pub upstreams: Vec<api::StreamState>,
    pub subscribers: Vec<api::Subscriber>,
}

/// Connects to the debug API at `addr` (`host:port` or a URL).
pub async fn connect(addr: &str) -> anyhow::Result<DebugClient<tonic::transport::Channel>> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .with_context(|| format!("--addr {addr}: not an address"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the peerd debug API at {url}"))?;
    Ok(DebugClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// Fetches server info, peers, upstreams and subscribers.
pub async fn fetch(addr: &str) -> anyhow::Result<Report> {
    let mut client = connect(addr).await?;
    let info = client
        .get_server_info(api::GetServerInfoRequest {})
        .await
        .context("GetServerInfo")?
        .into_inner();
    let peers = client
        .list_peers(api::ListPeersRequest {})
        .await
        .context("ListPeers")?
        .into_inner()
        .peers;
    let upstreams = client
        .list_upstreams(api::ListUpstreamsRequest {})
        .await
        .context("ListUpstreams")?
        .into_inner()
        .upstreams;
    let subscribers = client
        .list_subscribers(api::ListSubscribersRequest {})
        .await
        .context("ListSubscribers")?
        .into_inner()
        .subscribers;
    Ok(Report {
        info,
        peers,
        upstreams,
        subscribers,
    })
}

impl Report {
    /// The report in the API's JSON mapping (camelCase fields).
    pub fn to_json(&self) -> anyhow::Result<serde_json::Value> {
        let json = |r: Result<serde_json::Value, String>| r.map_err(anyhow::Error::msg);
        Ok(serde_json::json!({
            "serverInfo": json(message_to_json(&self.info, "peerd.debug.v1.ServerInfo"))?,
            "peers": list_field(json(message_to_json(
                &api::ListPeersResponse { peers: self.peers.clone() },
                "peerd.debug.v1.ListPeersResponse",
            ))?, "peers"),
            "upstreams": list_field(json(message_to_json(
                &api::ListUpstreamsResponse { upstreams: self.upstreams.clone() },
                "peerd.debug.v1.ListUpstreamsResponse",
            ))?, "upstreams"),
            "subscribers": list_field(json(message_to_json(
                &api::ListSubscribersResponse { subscribers: self.subscribers.clone() },
                "peerd.debug.v1.ListSubscribersResponse",
            ))?, "subscribers"),
        }))
    }
}
