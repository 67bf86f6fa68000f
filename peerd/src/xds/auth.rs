//! Who is connecting to the xDS server and which view they get: [`ConnectionInfo`] (what
//! the transport and the request headers tell), the [`ViewSelector`] that maps it to a
//! view, and bearer-token verification ([`TokenVerifier`], [`StaticTokenVerifier`]).
//!
//! It must never log, store in errors or otherwise reveal a token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use tonic::async_trait;

use crate::view::View;

/// What the server knows about a downstream when its stream opens.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The token of an `authorization: Bearer <token>` header, if any.
    pub bearer_token: Option<String>,
    /// The `clusterid` header, if any.
    pub cluster_id: Option<String>,
    /// The client's TLS certificate chain (leaf first, DER), when it presented one.
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// The view a connection is served, and a short label for it (`downstream`, `export`),
/// used in metrics and the subscriber registry.
#[derive(Clone)]
pub struct Selected {
    pub view: Arc<View>,
    pub label: String,
    /// Who the client proved to be (token subject, SPIFFE id); for logs and status.
    pub identity: String,
}

/// Chooses the view for a new connection, or refuses it with a gRPC status
/// (`Unauthenticated`, `PermissionDenied`). The federation layer composes selectors, e.g.
/// "client certificate of a peer → export view, else bearer token → merged view".
#[async_trait]
pub trait ViewSelector: Send + Sync + 'static {
    async fn select(&self, conn: &ConnectionInfo) -> Result<Selected, tonic::Status>;
}

/// Why a token was refused. The messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token (send `authorization: Bearer <token>`)")]
    Missing,
    #[error("bearer token rejected")]
    Invalid,
    #[error("token verification unavailable: {0}")]
    Unavailable(String),
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable(_) => tonic::Status::unavailable(e.to_string()),
            _ => tonic::Status::unauthenticated(e.to_string()),
        }
    }
}

/// Verifies a bearer token and returns the identity it proves.
#[async_trait]
pub trait TokenVerifier: Send + Sync + 'static {
    async fn verify(&self, token: &str) -> Result<String, AuthError>;
}

/// Accepts exactly one shared secret, read from a file (trailing whitespace trimmed) and
/// re-read when the file's modification time or size changes. For standalone mode and the
/// sandbox; Kubernetes uses TokenReview instead.
pub struct StaticTokenVerifier {
    path: Option<PathBuf>,
    identity: String,
    cached: Mutex<Cached>,
}

struct Cached {
    stamp: Option<(SystemTime, u64)>,
    token: Vec<u8>,
}

impl StaticTokenVerifier {
    /// A verifier for the token in `path`; fails if the file cannot be read or is empty.
    pub fn from_file(path: impl AsRef<Path>, identity: impl Into<String>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let path = path.as_ref().to_path_buf();
        let (stamp, token) = read_token(&path)
            .with_context(|| format!("reading bearer token file {}", path.display()))?;
        Ok(StaticTokenVerifier {
            path: Some(path),
            identity: identity.into(),
            cached: Mutex::new(Cached {
                stamp: Some(stamp),
                token,
            }),
        })
    }

    /// A verifier for a fixed token (tests, inline config).
    pub fn from_literal(token: impl Into<String>, identity: impl Into<String>) -> Self {
        StaticTokenVerifier {
            path: None,
            identity: identity.into(),
            cached: Mutex::new(Cached {
                stamp: None,
                token: token.into().trim().as_bytes().to_vec(),
            }),
        }
    }

    /// The current expected token, re-read if the file changed. A file that became
    /// unreadable keeps the last good token (logged).
    fn expected(&self) -> Vec<u8> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = &self.path {
            let changed = file_stamp(path).ok() != cached.stamp;
            if changed {
                match read_token(path) {
                    Ok((stamp, token)) => {
                        cached.stamp = Some(stamp);
                        cached.token = token;
                        tracing::info!(path = %path.display(), "bearer token file reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "bearer token file unreadable; keeping the previous token");
                    }
                }
            }
        }
        cached.token.clone()
    }
}

fn file_stamp(path: &Path) -> std::io::Result<(SystemTime, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified()?, meta.len()))
}

fn read_token(path: &Path) -> anyhow::Result<((SystemTime, u64), Vec<u8>)> {
    let stamp = file_stamp(path)?;
    let text = std::fs::read_to_string(path)?;
    let token = text.trim();
    anyhow::ensure!(!token.is_empty(), "token file is empty");
    Ok((stamp, token.as_bytes().to_vec()))
}

/// Compares without an early exit on the first differing byte (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl TokenVerifier for StaticTokenVerifier {
    async fn verify(&self, token: &str) -> Result<String, AuthError> {
        let expected = self.expected();
        if !expected.is_empty() && constant_time_eq(token.trim().as_bytes(), &expected) {
            Ok(self.identity.clone())
        } else {
            Err(AuthError::Invalid)
        }
    }
}

/// "A valid bearer token gets this view": what ztunnel connections go through.
pub struct BearerTokenSelector {
    pub verifier: Arc<dyn TokenVerifier>,
    pub view: Arc<View>,
    pub label: String,
}

#[async_trait]
impl ViewSelector for BearerTokenSelector {
    async fn select(&self, conn: &ConnectionInfo) -> Result<Selected, tonic::Status> {
        let token = conn.bearer_token.as_deref().ok_or(AuthError::Missing)?;
        let identity = self.verifier.verify(token).await?;
        Ok(Selected {
            view: Arc::clone(&self.view),
            label: self.label.clone(),
            identity,
        })
    }
}

/// Serves one view to everyone (tests, simulators). Never use it on a real listener.
pub struct OpenSelector {
    pub view: Arc<View>,
    pub label: String,
}

#[async_trait]
impl ViewSelector for OpenSelector {
    async fn select(&self, _conn: &ConnectionInfo) -> Result<Selected, tonic::Status> {
        Ok(Selected {
            view: Arc::clone(&self.view),
            label: self.label.clone(),
            identity: String::new(),
        })
    }
}

/// Extracts the token of an `authorization` header value (`Bearer <token>`, scheme
/// case-insensitive).
pub fn parse_bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(parse_bearer("Bearer abc"), Some("abc"));
        assert_eq!(parse_bearer("bearer  abc "), Some("abc"));
        assert_eq!(parse_bearer("Basic abc"), None);
        assert_eq!(parse_bearer("Bearer "), None);
        assert_eq!(parse_bearer("abc"), None);
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[tokio::test]
    async fn static_verifier_reloads_changed_file() {
        let dir = std::env::temp_dir().join(format!("peerd-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "first-token\n").unwrap();
        let v = StaticTokenVerifier::from_file(&path, "ztunnel").unwrap();
        assert_eq!(v.verify("first-token").await.unwrap(), "ztunnel");
        assert_eq!(v.verify("wrong").await, Err(AuthError::Invalid));
        // A different length changes the stamp even if the mtime granularity is coarse.
        std::fs::write(&path, "second-token-longer\n").unwrap();
        assert_eq!(v.verify("first-token").await, Err(AuthError::Invalid));
        assert!(v.verify("second-token-longer").await.is_ok());
        // An unreadable file keeps the last good token.
        std::fs::remove_file(&path).unwrap();
        assert!(v.verify("second-token-longer").await.is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn empty_token_file_is_an_error() {
        let path = std::env::temp_dir().join(format!("peerd-auth-empty-{}", std::process::id()));
        std::fs::write(&path, "  \n").unwrap();
        assert!(StaticTokenVerifier::from_file(&path, "x").is_err());
        let _ = std::fs::remove_file(&path);
    }
}
