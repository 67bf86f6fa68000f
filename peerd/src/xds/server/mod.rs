//! The delta-ADS server: what ztunnel (merged view) and peers (export view) connect to.
//! Each stream is authenticated and assigned a view by a [`ViewSelector`], then driven by
//! its own task ([`connection`]); live streams are listed in the [`Subscribers`]
//! registry.
//!
//! Only `DeltaAggregatedResources` is served; the state-of-the-world RPC is answered with
//! `Unimplemented`. The gRPC service is hand-written ([`grpc`]) so each response is framed
//! in a buffer of its own, freed once sent: an idle stream holds no response bytes.
//! It never copies a whole view per change and never lets one connection slow another.
//!
//! A request tonic cannot decode ends its stream with `RESOURCE_EXHAUSTED` (over
//! `max_message_size`) or `INVALID_ARGUMENT` (malformed), a warning and
//! `peerd_xds_server_bad_requests_total`. Strings a client sends (node id, NACK
//! messages, nonces, headers) are bounded before they are logged or stored
//! ([`crate::bounded`]).
//!
//! Unknown type URLs in requests: the first request for such a type gets one empty
//! response echoing the type URL (a client waiting for an answer is not stuck; ACKing
//! it is harmless); later requests for it, including ACKs, are ignored. The stream and
//! the known types are unaffected.

mod connection;
mod grpc;
mod outstanding;
pub mod registry;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, Streaming};

use crate::proto::envoy::service::discovery::v3 as discovery;
use crate::xds::auth::{BearerToken, ConnectionInfo, ViewSelector, parse_bearer};
use crate::xds::transport::{PeerConnInfo, tls_incoming};

pub use connection::nacked_names;
pub use grpc::AdsService;
pub use registry::{AckEvent, SubscriberInfo, Subscribers, TypeProgress};

/// Per-connection maps keyed by resource names (100k+ entries on a large mesh): a fast
/// seeded hash instead of SipHash; the keys come from authenticated clients and views.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Tunables of the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How long a connection gathers view changes before pushing them (0 = push at once).
    /// The window starts at the first change and is never extended.
    pub debounce: Duration,
    /// Responses queued per connection before its task waits for the client.
    pub outbound_queue: usize,
    /// Largest request accepted and largest response sent (bigger pushes are split).
    pub max_message_size: usize,
    /// Pushes after the first response of a type are split into parts of about this many
    /// bytes. A first response is split only above `max_message_size`, its parts sent
    /// before any response of another type (ztunnel's readiness, see `Connection::flush`).
    pub push_chunk_bytes: usize,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
    pub http2_keepalive_interval: Option<Duration>,
    pub http2_keepalive_timeout: Option<Duration>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            debounce: Duration::from_millis(5),
            outbound_queue: 16,
            // Same as ztunnel's inbound limit.
            max_message_size: 200 * 1024 * 1024,
            push_chunk_bytes: 256 * 1024,
            handshake_timeout: Duration::from_secs(10),
            http2_keepalive_interval: Some(Duration::from_secs(30)),
            http2_keepalive_timeout: Some(Duration::from_secs(10)),
        }
    }
}

/// The server. Cheap to clone; clones share the registry and the shutdown signal.
#[derive(Clone)]
pub struct AdsServer {
    selector: Arc<dyn ViewSelector>,
    options: ServerOptions,
    subscribers: Arc<Subscribers>,
    /// Ends every connection task (server shutdown).
    cancel: CancellationToken,
}

impl AdsServer {
    pub fn new(selector: Arc<dyn ViewSelector>, options: ServerOptions) -> Self {
        AdsServer {
            selector,
            options,
            subscribers: Subscribers::new(),
            cancel: CancellationToken::new(),
        }
    }

    pub fn subscribers(&self) -> Arc<Subscribers> {
        Arc::clone(&self.subscribers)
    }

    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// The gRPC service, to mount on a tonic router of one's own.
    /// Requests and responses are limited to `max_message_size`.
    pub fn service(&self) -> AdsService {
        AdsService::new(self.clone())
    }

    /// Serves TLS (ALPN h2 is added to `tls` if missing) on `listener` until `shutdown`
    /// fires; then ends every stream with `UNAVAILABLE` and returns. Shutdown is final for
    /// this server and its clones (build a new `AdsServer` to serve again).
    pub async fn serve(
        &self,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let local = listener.local_addr().ok();
        let incoming = tls_incoming(
            listener,
            tls,
            self.options.handshake_timeout,
            shutdown.clone(),
        );
        tracing::info!(address = ?local, "xds server listening");
        // Streams are ended by their own task, not from tonic's shutdown signal: the
        // accept loop also stops on `shutdown`, and when tonic sees `incoming` end first
        // it never polls the signal again, then waits forever for the streams to close.
        let streams = self.cancel.clone();
        let watch = shutdown.clone();
        let end_streams = tokio::spawn(async move {
            watch.cancelled().await;
            streams.cancel();
        });
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(self.options.http2_keepalive_interval)
            .http2_keepalive_timeout(self.options.http2_keepalive_timeout)
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await;
        end_streams.abort();
        served.map_err(|e| anyhow::anyhow!("xds server on {local:?} failed: {e}"))
    }

    /// Ends every live stream (`UNAVAILABLE`), as on shutdown.
    pub fn close_all(&self) {
        self.cancel.cancel();
    }
}

/// What the request tells about the connection.
fn connection_info<T>(req: &Request<T>) -> ConnectionInfo {
    let transport = req.extensions().get::<PeerConnInfo>();
    let header = |name: &str| {
        req.metadata()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    ConnectionInfo {
        remote_addr: transport
            .map(|t| t.remote_addr)
            .or_else(|| req.remote_addr()),
        bearer_token: header("authorization")
            .as_deref()
            .and_then(parse_bearer)
            .map(BearerToken::from),
        // Client-controlled and echoed in refusals: bounded (a cluster name is a DNS
        // label, so a cut value still matches no peer).
        cluster_id: header("clusterid").map(crate::bounded::truncate_owned),
        peer_certificates: transport.and_then(|t| t.peer_certificates.clone()),
    }
}

impl AdsServer {
    /// Authenticates a `DeltaAggregatedResources` stream, registers it and starts its
    /// task; returns what the task sends to the client.
    async fn open_stream(
        &self,
        request: Request<Streaming<discovery::DeltaDiscoveryRequest>>,
    ) -> Result<grpc::Responses, Status> {
        let info = connection_info(&request);
        let remote = info
            .remote_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let selected = match self.selector.select(&info).await {
            Ok(s) => s,
            Err(status) => {
                metrics::counter!("peerd_xds_server_rejected_streams_total", "code" => format!("{:?}", status.code()))
                    .increment(1);
                tracing::warn!(remote = %remote, cluster_id = ?info.cluster_id, code = ?status.code(), reason = %status.message(), "xds server: stream refused");
                return Err(status);
            }
        };
        let entry = self
            .subscribers
            .register(&selected.label, selected.identity.clone(), remote);
        let (tx, rx) = mpsc::channel(self.options.outbound_queue.max(1));
        let conn = connection::Connection::new(
            selected.view,
            self.options.clone(),
            Arc::clone(&entry),
            Arc::clone(&self.subscribers),
            self.cancel.child_token(),
        );
        let subscribers = Arc::clone(&self.subscribers);
        let label = selected.label;
        let inbound = request.into_inner();
        tokio::spawn(async move {
            let gauge = metrics::gauge!("peerd_xds_server_connections", "view" => label.clone());
            gauge.increment(1.0);
            conn.run(inbound, tx).await;
            gauge.decrement(1.0);
            subscribers.unregister(entry.id);
        });
        Ok(rx)
    }
}
