//! TLS transport for the xDS server and client: the server-side accept loop (TCP accept →
//! rustls handshake in its own task → a stream of connections tonic can serve, each
//! carrying the remote address and the client's certificate chain) and the client-side
//! connector (TCP + rustls, ALPN `h2`) for `tonic::transport::Endpoint`.
//!
//! It owns no certificates: callers hand in ready `rustls` configs (identity module).
//! It must never let one slow or stalled handshake delay accepting other connections.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// ALPN id of HTTP/2; ztunnel only speaks h2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// What the server knows about a connection's transport, available to gRPC handlers as a
/// request extension.
#[derive(Debug, Clone)]
pub struct PeerConnInfo {
    pub remote_addr: SocketAddr,
    /// The client's certificate chain (leaf first, DER), when it presented one.
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// One accepted, handshaken TLS connection.
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerConnInfo,
}

impl TlsConnection {
    pub fn info(&self) -> &PeerConnInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = PeerConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Returns `config` with ALPN `h2` offered, cloning it only when it lacks it.
pub fn server_config_with_h2(config: Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
    if config.alpn_protocols.iter().any(|p| p == ALPN_H2) {
        return config;
    }
    let mut c = rustls::ServerConfig::clone(&config);
    c.alpn_protocols.push(ALPN_H2.to_vec());
    Arc::new(c)
}

/// Returns `config` with ALPN `h2` offered, cloning it only when it lacks it.
pub fn client_config_with_h2(config: Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    if config.alpn_protocols.iter().any(|p| p == ALPN_H2) {
        return config;
    }
    let mut c = rustls::ClientConfig::clone(&config);
    c.alpn_protocols.push(ALPN_H2.to_vec());
    Arc::new(c)
}

/// Connections handshaking at once; further accepted sockets wait for a slot (the accept
/// loop itself keeps running, so the kernel backlog is what bounds memory).
const MAX_CONCURRENT_HANDSHAKES: usize = 1024;

/// Accepts TCP connections on `listener`, runs each TLS handshake in its own task (bounded
/// by `handshake_timeout`) and yields the successful ones. Failed handshakes are logged
/// and counted, never yielded. The loop stops when `cancel` fires or the stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    cancel: CancellationToken,
) -> ReceiverStream<Result<TlsConnection, io::Error>> {
    let acceptor = TlsAcceptor::from(server_config_with_h2(config));
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tx.closed() => break,
                a = listener.accept() => a,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Per-connection errors (e.g. ECONNABORTED, EMFILE) must not end the
                    // server; back off briefly so EMFILE does not spin.
                    tracing::warn!(error = %e, "xds server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let slots = Arc::clone(&slots);
            tokio::spawn(async move {
                let Ok(_permit) = slots.acquire_owned().await else {
                    return;
                };
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let peer_certificates =
                            stream.get_ref().1.peer_certificates().map(|chain| {
                                Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect())
                            });
                        let conn = TlsConnection {
                            stream,
                            info: PeerConnInfo {
                                remote_addr,
                                peer_certificates,
                            },
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    // Closed before the handshake completed: what a TCP connect probe
                    // (a peer's, a load balancer's) does every few seconds. Not worth an
                    // INFO line each; the counter still shows them.
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        metrics::counter!("peerd_xds_server_tls_handshake_failures_total", "reason" => "closed")
                            .increment(1);
                        tracing::debug!(remote = %remote_addr, error = %e, "xds server: connection closed during the TLS handshake");
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("peerd_xds_server_tls_handshake_failures_total", "reason" => "error")
                            .increment(1);
                        tracing::info!(remote = %remote_addr, error = %e, "xds server: TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::counter!("peerd_xds_server_tls_handshake_failures_total", "reason" => "timeout")
                            .increment(1);
                        tracing::info!(remote = %remote_addr, timeout = ?handshake_timeout, "xds server: TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Why a client connection attempt failed, as classified by the connector. Kept in the
/// error chain so callers can map it to a condition reason.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("TCP connect to {endpoint} refused")]
    Refused { endpoint: String },
    #[error("TCP connect to {endpoint} failed: {source}")]
    Tcp { endpoint: String, source: io::Error },
    #[error("connect to {endpoint} timed out after {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("TLS handshake with {endpoint} failed: {source}")]
    Tls { endpoint: String, source: io::Error },
    #[error("server {endpoint} did not negotiate ALPN h2")]
    NoH2 { endpoint: String },
}

impl ConnectError {
    /// The rustls error behind a TLS failure, for finer classification (e.g.
    /// `identity::classify::classify_tls`).
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            ConnectError::Tls { source, .. } => source
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
            _ => None,
        }
    }
}

/// A tonic connector: TCP to a fixed endpoint, then TLS with a fixed server name. The
/// URI tonic passes is ignored (the endpoint is fixed at construction).
#[derive(Clone)]
pub struct TlsConnectorService {
    endpoint: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    timeout: Duration,
}

impl TlsConnectorService {
    /// `endpoint` is `host:port`; `server_name` is what the server certificate is verified
    /// against (a DNS name or an IP literal).
    pub fn new(
        endpoint: impl Into<String>,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, ConnectError> {
        let endpoint = endpoint.into();
        let server_name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
            ConnectError::InvalidEndpoint {
                endpoint: endpoint.clone(),
                reason: format!("bad TLS server name {server_name:?}: {e}"),
            }
        })?;
        Ok(TlsConnectorService {
            endpoint,
            server_name,
            connector: TlsConnector::from(client_config_with_h2(config)),
            timeout,
        })
    }

    /// Connects and handshakes once.
    pub async fn connect(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
        let endpoint = self.endpoint.clone();
        let work = async {
            let tcp = TcpStream::connect(&endpoint).await.map_err(|e| {
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    ConnectError::Refused {
                        endpoint: endpoint.clone(),
                    }
                } else {
                    ConnectError::Tcp {
                        endpoint: endpoint.clone(),
                        source: e,
                    }
                }
            })?;
            let _ = tcp.set_nodelay(true);
            let tls = self
                .connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| ConnectError::Tls {
                    endpoint: endpoint.clone(),
                    source: e,
                })?;
            if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
                return Err(ConnectError::NoH2 {
                    endpoint: endpoint.clone(),
                });
            }
            Ok(tls)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout {
                endpoint,
                timeout: self.timeout,
            }),
        }
    }
}

impl tower::Service<http::Uri> for TlsConnectorService {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

/// Finds a [`ConnectError`] in an error's source chain.
pub fn find_connect_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ConnectError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}
