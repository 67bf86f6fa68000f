//! The delta-ADS client: one instance per upstream (the local istiod or one peer). It
//! keeps one stream carrying both types, writes every accepted resource to
//! `Store::apply(origin, …)`, ACKs or NACKs each response exactly like ztunnel (see
//! docs/xds-wire.md §3), and reconnects with jittered exponential backoff, offering
//! what it holds in `initial_resource_versions`.
//!
//! It must never drop stored resources because of a stream problem (disconnects only
//! clear the sync flags), never store a resource that failed validation, and never log
//! the bearer token.
//!
//! An upstream that accepts the stream but sends no response for a type within
//! `response_timeout`: the client logs a warning, sets `last_error`, counts
//! `peerd_xds_client_errors_total{reason="no_response"}` and KEEPS the stream (HTTP/2
//! keepalive already detects dead transports; a live but silent server is not fixed by
//! reconnecting, and a late answer is still applied).
//!
//! A name that occurs more than once in one response is rejected in every copy (which
//! one is right is unknowable) and NACKed once as `"<name>: duplicate name in one
//! response"`; an already stored version of it stays.
//!
//! Layout: this file holds the public surface (options, token source, filter, failure
//! classes and their classification) and the reconnect loop ([`AdsClient::run`]);
//! `stream` one session on the wire, `codec` where received bytes live, `apply` one response into the store and its
//! ACK/NACK, `backoff` the reconnect delay.

mod apply;
mod backoff;
mod codec;
mod stream;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::identity::classify::{FailureReason, classify_tls};
use crate::proto::envoy::config::core::v3::Node;
use crate::store::Store;
use crate::xds::resource::Resource;
use crate::xds::stats::StreamStats;
use crate::xds::transport::{ConnectError, find_connect_error};

pub use backoff::backoff_delay;
use stream::SessionEnd;

/// Where the bearer token comes from.
#[derive(Clone)]
pub enum TokenSource {
    /// Re-read on every connect (projected service-account tokens rotate).
    File(PathBuf),
    Literal(String),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(p) => f.debug_tuple("File").field(p).finish(),
            TokenSource::Literal(_) => f.write_str("Literal(<redacted>)"),
        }
    }
}

/// Extra validation of received resources, beyond what `Resource::from_wire` checks
/// (cluster claims, per-peer caps). `Err(reason)` rejects the resource: it is NACKed
/// with that reason and not stored.
pub trait ResourceFilter: Send + Sync + 'static {
    fn check(&self, origin: &str, resource: &Resource) -> Result<(), String>;
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Origin (cluster) name the resources are stored under.
    pub origin: String,
    /// `host:port` of the upstream.
    pub endpoint: String,
    /// Name the server certificate is verified against (DNS name or IP literal).
    pub server_name: String,
    /// TLS or mTLS config (ALPN h2 is added if missing).
    pub tls: Arc<rustls::ClientConfig>,
    pub token: Option<TokenSource>,
    /// Extra request headers, e.g. `("clusterid", "cluster-a")`.
    pub headers: Vec<(String, String)>,
    pub node: Node,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    /// Largest response accepted.
    pub max_message_size: usize,
    /// Time after the initial requests within which each type must get a response.
    pub response_timeout: Duration,
}

impl ClientOptions {
    pub fn new(
        origin: impl Into<String>,
        endpoint: impl Into<String>,
        server_name: impl Into<String>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        ClientOptions {
            origin: origin.into(),
            endpoint: endpoint.into(),
            server_name: server_name.into(),
            tls,
            token: None,
            headers: Vec::new(),
            node: Node::default(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(15),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_message_size: 200 * 1024 * 1024,
            response_timeout: Duration::from_secs(30),
        }
    }
}

/// Class of the last failure, for condition reasons (`PeerConnected`) and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FailureKind {
    ConnectTimeout,
    ConnectionRefused,
    Tls,
    /// TLS worked but the server's certificate is not for the expected name/identity.
    IdentityMismatch,
    Unauthenticated,
    MessageTooLarge,
    NoResponse,
    Stream,
    Config,
    /// Federation withdrew the origin's state (grace period over) while the stream was
    /// resyncing against it; the client starts a new session from scratch.
    Withdrawn,
}

impl FailureKind {
    /// The `gloo.solo.io/PeerConnected` reason this failure maps to.
    pub fn condition_reason(self) -> &'static str {
        match self {
            FailureKind::ConnectTimeout => "ConnectTimeout",
            FailureKind::ConnectionRefused => "ConnectionRefused",
            FailureKind::Tls => "TLSError",
            FailureKind::IdentityMismatch => "IdentityMismatch",
            _ => "StreamError",
        }
    }

    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::ConnectTimeout => "connect_timeout",
            FailureKind::ConnectionRefused => "connection_refused",
            FailureKind::Tls => "tls",
            FailureKind::IdentityMismatch => "identity_mismatch",
            FailureKind::Unauthenticated => "unauthenticated",
            FailureKind::MessageTooLarge => "message_too_large",
            FailureKind::NoResponse => "no_response",
            FailureKind::Stream => "stream",
            FailureKind::Config => "config",
            FailureKind::Withdrawn => "withdrawn",
        }
    }
}

/// A failed session, with a message fit for logs and status.
#[derive(Debug, Clone)]
pub struct ClientError {
    pub kind: FailureKind,
    pub message: String,
    /// The rustls error of a failed handshake, kept for finer classification.
    pub tls: Option<rustls::Error>,
}

/// The last failure of a client, as shown in status and conditions, with when it
/// happened. A client sleeping in its reconnect backoff keeps its last failure, so a
/// reader tells a new failed attempt from one it already saw by `at`.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    pub tls: Option<rustls::Error>,
    pub at: std::time::Instant,
}

impl Failure {
    fn now(e: ClientError) -> Self {
        Failure {
            kind: e.kind,
            message: e.message,
            tls: e.tls,
            at: std::time::Instant::now(),
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub struct AdsClient {
    opts: Arc<ClientOptions>,
    store: Arc<Store>,
    filter: Option<Arc<dyn ResourceFilter>>,
    stats: Arc<StreamStats>,
    failure: Arc<Mutex<Option<Failure>>>,
}

impl AdsClient {
    pub fn new(opts: ClientOptions, store: Arc<Store>) -> Self {
        let stats = Arc::new(StreamStats::new(opts.origin.clone(), opts.endpoint.clone()));
        AdsClient {
            opts: Arc::new(opts),
            store,
            filter: None,
            stats,
            failure: Arc::new(Mutex::new(None)),
        }
    }

    pub fn with_filter(mut self, filter: Arc<dyn ResourceFilter>) -> Self {
        self.filter = Some(filter);
        self
    }

    pub fn stats(&self) -> Arc<StreamStats> {
        Arc::clone(&self.stats)
    }

    /// A handle to read the last failure (`None` once a session works).
    pub fn failure_handle(&self) -> Arc<Mutex<Option<Failure>>> {
        Arc::clone(&self.failure)
    }

    pub fn last_failure(&self) -> Option<Failure> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn spawn(self, cancel: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(cancel))
    }

    fn origin(&self) -> &str {
        &self.opts.origin
    }

    fn set_failure(&self, failure: Option<ClientError>) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = failure.map(Failure::now);
    }

    /// Runs sessions until `cancel` fires. Stored resources survive every failure.
    pub async fn run(self, cancel: CancellationToken) {
        let mut attempt: u32 = 0;
        let peer = self.opts.origin.clone();
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let mut got_response = false;
            let result = self.session(&cancel, &mut got_response).await;
            self.store.mark_unsynced(self.origin());
            metrics::gauge!("peerd_xds_client_connected", "peer_cluster" => peer.clone()).set(0.0);
            if got_response {
                attempt = 0;
            }
            match result {
                Ok(SessionEnd::Cancelled) => {
                    self.stats.disconnected("client stopped");
                    break;
                }
                Ok(SessionEnd::ServerClosed) => {
                    tracing::info!(origin = %peer, endpoint = %self.opts.endpoint, "xds client: stream closed by the server; reconnecting");
                    self.stats.disconnected("stream closed by the server");
                }
                Err(e) => {
                    metrics::counter!("peerd_xds_client_errors_total", "peer_cluster" => peer.clone(), "reason" => e.kind.as_str())
                        .increment(1);
                    tracing::warn!(origin = %peer, endpoint = %self.opts.endpoint, reason = e.kind.as_str(), error = %e, "xds client: upstream session failed; stored resources kept");
                    self.stats.disconnected(e.message.clone());
                    self.set_failure(Some(e));
                }
            }
            let delay = backoff_delay(self.opts.backoff_initial, self.opts.backoff_max, attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

fn connect_failure(c: &ConnectError) -> FailureKind {
    match c {
        ConnectError::Refused { .. } => FailureKind::ConnectionRefused,
        ConnectError::Timeout { .. } => FailureKind::ConnectTimeout,
        ConnectError::Tls { .. } => match c.tls_error() {
            Some(tls) => tls_failure_kind(classify_tls(tls).reason),
            None => FailureKind::Tls,
        },
        ConnectError::NoH2 { .. } => FailureKind::Tls,
        ConnectError::Tcp { .. } => FailureKind::Stream,
        ConnectError::InvalidEndpoint { .. } => FailureKind::Config,
    }
}

/// The failure class of a classified TLS failure: a certificate that chains to our root
/// but names another identity (SAN, SPIFFE ID, trust domain) is `IdentityMismatch`;
/// everything else (unknown authority, expiry, rejected client certificate) is `Tls`.
fn tls_failure_kind(reason: FailureReason) -> FailureKind {
    match reason {
        FailureReason::IdentityMismatch => FailureKind::IdentityMismatch,
        _ => FailureKind::Tls,
    }
}

fn from_connect_error(c: &ConnectError) -> ClientError {
    let tls = c.tls_error().cloned();
    let message = match (c, &tls) {
        // The classified text names the cause a person acts on (unknown authority, or
        // the expected and the presented identity) instead of rustls' enum names.
        (ConnectError::Tls { endpoint, .. }, Some(e)) => {
            format!(
                "TLS handshake with {endpoint} failed: {}",
                classify_tls(e).message
            )
        }
        _ => c.to_string(),
    };
    ClientError {
        kind: connect_failure(c),
        message,
        tls,
    }
}

/// A rustls error anywhere in `err`'s source chain (e.g. the peer rejecting our
/// certificate with an alert after the TLS 1.3 handshake), classified.
fn tls_failure_in_chain(err: &(dyn std::error::Error + 'static)) -> Option<ClientError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            let classified = classify_tls(tls);
            return Some(ClientError {
                kind: tls_failure_kind(classified.reason),
                message: classified.message,
                tls: Some(tls.clone()),
            });
        }
        // `io::Error::source` skips the wrapped error itself, so descend explicitly.
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

fn classify_transport(e: &tonic::transport::Error, endpoint: &str) -> ClientError {
    if let Some(c) = find_connect_error(e) {
        return from_connect_error(c);
    }
    if let Some(mut tls) = tls_failure_in_chain(e) {
        tls.message = format!("connecting to {endpoint} failed: {}", tls.message);
        return tls;
    }
    ClientError {
        kind: FailureKind::Stream,
        message: format!("connecting to {endpoint} failed: {}", error_chain(e)),
        tls: None,
    }
}

fn classify_status(s: &tonic::Status, endpoint: &str) -> ClientError {
    use std::error::Error as _;
    if let Some(c) = s.source().and_then(|src| find_connect_error(src)) {
        return from_connect_error(c);
    }
    if let Some(mut tls) = s.source().and_then(tls_failure_in_chain) {
        tls.message = format!("stream from {endpoint} failed: {}", tls.message);
        return tls;
    }
    let kind = match s.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            FailureKind::Unauthenticated
        }
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            if s.message().contains("too large") =>
        {
            FailureKind::MessageTooLarge
        }
        _ => FailureKind::Stream,
    };
    ClientError {
        kind,
        message: format!(
            "stream from {endpoint} failed: {:?}: {}",
            s.code(),
            s.message()
        ),
        tls: None,
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}
#[cfg(test)]
mod tests {
    use super::*;

    fn tls_connect_error(e: rustls::Error) -> ConnectError {
        ConnectError::Tls {
            endpoint: "127.0.0.2:15012".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }
    }

    #[test]
    fn tls_failures_are_split_into_tls_error_and_identity_mismatch() {
        use rustls::CertificateError;
        let unknown = from_connect_error(&tls_connect_error(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )));
        assert_eq!(unknown.kind, FailureKind::Tls);
        assert_eq!(unknown.kind.condition_reason(), "TLSError");
        assert!(
            unknown
                .message
                .contains("certificate signed by unknown authority"),
            "{}",
            unknown.message
        );
        assert!(
            unknown.message.contains("127.0.0.2:15012"),
            "{}",
            unknown.message
        );

        let mismatch = crate::identity::tls::IdentityMismatch {
            expected: "trust domain cluster-2.local".into(),
            presented: vec!["spiffe://elsewhere.local/ns/istio-system/sa/peerd".into()],
        };
        let wrong_td = from_connect_error(&tls_connect_error(rustls::Error::InvalidCertificate(
            CertificateError::Other(rustls::OtherError(Arc::new(mismatch))),
        )));
        assert_eq!(wrong_td.kind, FailureKind::IdentityMismatch);
        assert_eq!(wrong_td.kind.condition_reason(), "IdentityMismatch");
        for part in [
            "expected trust domain cluster-2.local",
            "spiffe://elsewhere.local/ns/istio-system/sa/peerd",
        ] {
            assert!(wrong_td.message.contains(part), "{}", wrong_td.message);
        }

        let wrong_san = from_connect_error(&tls_connect_error(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        )));
        assert_eq!(wrong_san.kind, FailureKind::IdentityMismatch);
        assert!(wrong_san.tls.is_some(), "the rustls error is kept");
    }

    #[test]
    fn a_tls_alert_after_the_handshake_is_a_tls_error() {
        // The peer rejects our client certificate: in TLS 1.3 the alert arrives on the
        // stream, wrapped in I/O errors.
        let io = std::io::Error::other(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA,
        ));
        let status = tonic::Status::from_error(Box::new(io));
        let f = classify_status(&status, "127.0.0.2:15012");
        assert_eq!(f.kind, FailureKind::Tls, "{}", f.message);
        assert!(
            f.message.contains("unknown certificate authority"),
            "{}",
            f.message
        );
        // A plain stream failure stays a stream failure.
        let plain = classify_status(&tonic::Status::unavailable("reset"), "127.0.0.2:15012");
        assert_eq!(plain.kind, FailureKind::Stream);
    }

    #[test]
    fn token_source_debug_never_shows_the_token() {
        let s = format!("{:?}", TokenSource::Literal("s3cr3t".into()));
        assert!(!s.contains("s3cr3t"));
    }
}
