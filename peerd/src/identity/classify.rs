//! Turning a failed connection to a peer or istiod into a condition reason and a message
//! a person can act on (`TLSError`, `IdentityMismatch`, `ConnectionRefused`,
//! `ConnectTimeout`, otherwise `StreamError`), plus [`dial`]: TCP connect + TLS handshake
//! with one deadline, failing with such a classification.
//!
//! Classification walks the error's whole source chain (tonic → hyper → io → rustls), so
//! it works on errors from any layer. It only reads errors; it never retries.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, ClientConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::tls::IdentityMismatch;

/// Reasons of the `gloo.solo.io/PeerConnected` condition that a connect can fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    TlsError,
    IdentityMismatch,
    ConnectionRefused,
    ConnectTimeout,
    StreamError,
}

impl FailureReason {
    /// The condition reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::TlsError => "TLSError",
            FailureReason::IdentityMismatch => "IdentityMismatch",
            FailureReason::ConnectionRefused => "ConnectionRefused",
            FailureReason::ConnectTimeout => "ConnectTimeout",
            FailureReason::StreamError => "StreamError",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified failure: the condition reason and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ConnectFailure {
    pub reason: FailureReason,
    pub message: String,
}

impl ConnectFailure {
    fn new(reason: FailureReason, message: impl Into<String>) -> ConnectFailure {
        ConnectFailure {
            reason,
            message: message.into(),
        }
    }
}

/// Classifies any error by the most specific cause found in its source chain.
pub fn classify(err: &(dyn StdError + 'static)) -> ConnectFailure {
    let mut next: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(found) = classify_one(e) {
            return found;
        }
        // `io::Error::source` skips the wrapped error itself, so descend explicitly.
        next = match e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    ConnectFailure::new(FailureReason::StreamError, err.to_string())
}

fn classify_one(e: &(dyn StdError + 'static)) -> Option<ConnectFailure> {
    // Already classified, e.g. by `dial` inside a gRPC connector.
    if let Some(f) = e.downcast_ref::<ConnectFailure>() {
        return Some(f.clone());
    }
    if let Some(m) = e.downcast_ref::<IdentityMismatch>() {
        return Some(ConnectFailure::new(
            FailureReason::IdentityMismatch,
            m.to_string(),
        ));
    }
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(classify_tls(tls));
    }
    if e.is::<tokio::time::error::Elapsed>() {
        return Some(ConnectFailure::new(
            FailureReason::ConnectTimeout,
            "connection timed out",
        ));
    }
    if let Some(io) = e.downcast_ref::<io::Error>() {
        if io.get_ref().is_some() {
            return None; // a wrapper: the wrapped error is more specific
        }
        return match io.kind() {
            io::ErrorKind::ConnectionRefused => Some(ConnectFailure::new(
                FailureReason::ConnectionRefused,
                format!("connection refused: {io}"),
            )),
            io::ErrorKind::TimedOut => Some(ConnectFailure::new(
                FailureReason::ConnectTimeout,
                format!("connection timed out: {io}"),
            )),
            _ => None,
        };
    }
    None
}

/// Classifies a rustls error seen on either side of a handshake.
pub fn classify_tls(err: &rustls::Error) -> ConnectFailure {
    use FailureReason::{IdentityMismatch as Mismatch, TlsError};
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => ConnectFailure::new(
                TlsError,
                "tls: unknown certificate authority (certificate signed by unknown authority: the peer's certificate does not chain to our trusted root; do the clusters share a root CA?)",
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                ConnectFailure::new(TlsError, format!("tls: certificate has expired ({err})"))
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                ConnectFailure::new(
                    TlsError,
                    format!("tls: certificate is not valid yet ({err})"),
                )
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                ConnectFailure::new(
                    Mismatch,
                    format!("peer did not present the expected SAN ({err})"),
                )
            }
            CertificateError::Other(other) => {
                match (other.0.as_ref() as &(dyn StdError + 'static))
                    .downcast_ref::<IdentityMismatch>()
                {
                    Some(m) => ConnectFailure::new(Mismatch, m.to_string()),
                    None => ConnectFailure::new(TlsError, format!("tls: bad certificate ({err})")),
                }
            }
            _ => ConnectFailure::new(TlsError, format!("tls: bad certificate ({err})")),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::UnknownCA => ConnectFailure::new(
                TlsError,
                "tls: unknown certificate authority (the peer rejected our certificate: it does not chain to the peer's root)",
            ),
            AlertDescription::CertificateExpired => ConnectFailure::new(
                TlsError,
                "tls: the peer rejected our certificate as expired",
            ),
            AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied => ConnectFailure::new(
                TlsError,
                format!("tls: the peer rejected our certificate ({alert:?})"),
            ),
            other => ConnectFailure::new(TlsError, format!("tls: peer sent alert {other:?}")),
        },
        rustls::Error::NoApplicationProtocol => ConnectFailure::new(
            TlsError,
            "tls: no common application protocol (the server does not speak h2)",
        ),
        other => ConnectFailure::new(TlsError, format!("tls: {other}")),
    }
}

/// TCP connect to `addr` and a TLS handshake with `server_name`, both within `timeout`.
pub async fn dial(
    addr: SocketAddr,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, ConnectFailure> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| with_context(classify(&e), addr))?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|e| with_context(classify(&e), addr))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ConnectFailure::new(
            FailureReason::ConnectTimeout,
            format!(
                "connecting to {addr} timed out after {timeout:?} (TCP connect + TLS handshake)"
            ),
        )),
    }
}

fn with_context(mut failure: ConnectFailure, addr: SocketAddr) -> ConnectFailure {
    failure.message = format!("{addr}: {}", failure.message);
    failure
}
