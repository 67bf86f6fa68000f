//! Who is connecting to the xDS server and which view they get: [`ConnectionInfo`] (what
//! the transport and the request headers tell), the [`ViewSelector`] that maps it to a
//! view, bearer-token verification ([`TokenVerifier`], [`StaticTokenVerifier`]) and the
//! authorization of the identity a token proves ([`IdentityAllowList`]).
//!
//! It must never log, store in errors or otherwise reveal a token: tokens travel as
//! [`BearerToken`] (whose `Debug` is `<redacted>`) and the static verifier keeps only
//! their SHA-256 digests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use tonic::async_trait;

use crate::view::View;

/// ztunnel's Kubernetes identity (its ServiceAccount as TokenReview names it): the one
/// identity allowed to read the merged view by default, and the identity of a static
/// token-file line that names none.
pub const ZTUNNEL_IDENTITY: &str = "system:serviceaccount:istio-system:ztunnel";

/// Longest identity quoted in a refusal (it may come from a client certificate or a
/// token file; TokenReview usernames are far shorter).
const IDENTITY_DISPLAY_LIMIT: usize = 512;

/// A bearer token as received. `Debug` and `Display` never show it; [`BearerToken::expose`]
/// is the one way to read it, for verification.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    pub fn new(token: impl Into<String>) -> BearerToken {
        BearerToken(token.into())
    }

    /// The token itself: only for verifying it, never for logs or messages.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for BearerToken {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for BearerToken {
    fn from(token: &str) -> Self {
        BearerToken(token.to_string())
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What the server knows about a downstream when its stream opens.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The token of an `authorization: Bearer <token>` header, if any.
    pub bearer_token: Option<BearerToken>,
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
    /// A valid token of an identity that may not read this view.
    #[error(
        "identity {0:?} is not allowed to read the merged view (allowed: xds.auth.allowedIdentities)"
    )]
    NotAllowed(String),
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable(_) => tonic::Status::unavailable(e.to_string()),
            AuthError::NotAllowed(_) => tonic::Status::permission_denied(e.to_string()),
            _ => tonic::Status::unauthenticated(e.to_string()),
        }
    }
}

/// Verifies a bearer token and returns the identity it proves.
#[async_trait]
pub trait TokenVerifier: Send + Sync + 'static {
    async fn verify(&self, token: &str) -> Result<String, AuthError>;
}

/// Authorization on top of a [`TokenVerifier`]: a token is accepted only when the identity
/// it proves is on the list (exact match, e.g. `system:serviceaccount:istio-system:ztunnel`).
/// A valid token of anyone else is `NotAllowed` (`PERMISSION_DENIED`, naming the identity).
pub struct IdentityAllowList {
    inner: Arc<dyn TokenVerifier>,
    allowed: Vec<String>,
}

impl IdentityAllowList {
    pub fn new(inner: Arc<dyn TokenVerifier>, allowed: Vec<String>) -> IdentityAllowList {
        IdentityAllowList { inner, allowed }
    }
}

#[async_trait]
impl TokenVerifier for IdentityAllowList {
    async fn verify(&self, token: &str) -> Result<String, AuthError> {
        let identity = self.inner.verify(token).await?;
        if self.allowed.contains(&identity) {
            Ok(identity)
        } else {
            Err(AuthError::NotAllowed(
                crate::bounded::truncate_to(&identity, IDENTITY_DISPLAY_LIMIT).into_owned(),
            ))
        }
    }
}

/// Accepts the tokens of a file, each mapped to the identity it proves, and re-reads the
/// file when its modification time or size changes (streams already open are not
/// affected: a token is checked when a stream opens). For standalone mode and the
/// sandbox; Kubernetes uses TokenReview instead.
///
/// File format, one token per line (blank lines and `#` comments ignored):
/// `<token>` proves the verifier's default identity ([`ZTUNNEL_IDENTITY`] for
/// `xds.auth.tokenFile`); `<identity> <token>` proves `<identity>`. Several lines make
/// rotation possible: add the new token, move clients over, remove the old one.
///
/// Only SHA-256 digests of the tokens are kept. A presented token is hashed and compared
/// with every digest: a comparison that stops early reveals at most a prefix of a
/// digest, which says nothing about the token (ring's `verify_slices_are_equal` is
/// deprecated since 0.17.14, with no promises regarding side channels).
pub struct StaticTokenVerifier {
    path: Option<PathBuf>,
    default_identity: String,
    cached: Mutex<Cached>,
}

/// One accepted token: the SHA-256 of the token and the identity it proves.
#[derive(Clone, PartialEq, Eq)]
struct TokenEntry {
    digest: [u8; 32],
    identity: String,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("digest", &"<redacted>")
            .field("identity", &self.identity)
            .finish()
    }
}

struct Cached {
    stamp: Option<(SystemTime, u64)>,
    tokens: Arc<Vec<TokenEntry>>,
}

impl StaticTokenVerifier {
    /// A verifier for the tokens in `path` (format in the type's docs); fails if the file
    /// cannot be read, holds no token or has a malformed line (named by number only).
    pub fn from_file(
        path: impl AsRef<Path>,
        default_identity: impl Into<String>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let path = path.as_ref().to_path_buf();
        let default_identity = default_identity.into();
        let (stamp, tokens) = read_tokens(&path, &default_identity)
            .with_context(|| format!("reading bearer token file {}", path.display()))?;
        Ok(StaticTokenVerifier {
            path: Some(path),
            default_identity,
            cached: Mutex::new(Cached {
                stamp: Some(stamp),
                tokens: Arc::new(tokens),
            }),
        })
    }

    /// A verifier for one fixed token (tests, inline config).
    pub fn from_literal(token: impl Into<String>, identity: impl Into<String>) -> Self {
        let identity = identity.into();
        let token = token.into();
        StaticTokenVerifier {
            path: None,
            default_identity: identity.clone(),
            cached: Mutex::new(Cached {
                stamp: None,
                tokens: Arc::new(vec![TokenEntry {
                    digest: sha256(token.trim()),
                    identity,
                }]),
            }),
        }
    }

    /// The accepted tokens, re-read if the file changed. A file that became unreadable or
    /// malformed keeps the last good set (logged, without its content).
    fn current(&self) -> Arc<Vec<TokenEntry>> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = &self.path {
            let changed = file_stamp(path).ok() != cached.stamp;
            if changed {
                match read_tokens(path, &self.default_identity) {
                    Ok((stamp, tokens)) => {
                        cached.stamp = Some(stamp);
                        tracing::info!(path = %path.display(), tokens = tokens.len(), "bearer token file reloaded");
                        cached.tokens = Arc::new(tokens);
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "bearer token file unreadable; keeping the previous tokens");
                    }
                }
            }
        }
        Arc::clone(&cached.tokens)
    }
}

fn sha256(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

fn file_stamp(path: &Path) -> std::io::Result<(SystemTime, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified()?, meta.len()))
}

fn read_tokens(
    path: &Path,
    default_identity: &str,
) -> anyhow::Result<((SystemTime, u64), Vec<TokenEntry>)> {
    let stamp = file_stamp(path)?;
    let text = std::fs::read_to_string(path)?;
    Ok((stamp, parse_token_file(&text, default_identity)?))
}

/// Parses a token file (format: [`StaticTokenVerifier`]). Errors name the line number,
/// never its content.
fn parse_token_file(text: &str, default_identity: &str) -> anyhow::Result<Vec<TokenEntry>> {
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (identity, token) = match fields.as_slice() {
            [token] => (default_identity, *token),
            [identity, token] => (*identity, *token),
            _ => anyhow::bail!(
                "line {}: expected `<token>` or `<identity> <token>` ({} fields)",
                i + 1,
                fields.len()
            ),
        };
        tokens.push(TokenEntry {
            digest: sha256(token),
            identity: identity.to_string(),
        });
    }
    anyhow::ensure!(!tokens.is_empty(), "token file holds no token");
    Ok(tokens)
}

#[async_trait]
impl TokenVerifier for StaticTokenVerifier {
    async fn verify(&self, token: &str) -> Result<String, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let presented = sha256(token);
        let tokens = self.current();
        tokens
            .iter()
            .find(|t| t.digest == presented)
            .map(|t| t.identity.clone())
            .ok_or(AuthError::Invalid)
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
    fn tokens_never_show_in_debug_output() {
        let info = ConnectionInfo {
            remote_addr: None,
            bearer_token: Some(BearerToken::from("s3cr3t-token")),
            cluster_id: None,
            peer_certificates: None,
        };
        let text = format!("{info:?} {}", BearerToken::from("s3cr3t-token"));
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("<redacted>"));
        let entries = parse_token_file("s3cr3t-token\n", "id").unwrap();
        assert!(!format!("{entries:?}").contains("s3cr3t"));
    }

    #[test]
    fn token_file_lines_map_tokens_to_identities() {
        let text = "# rotation: old then new\nold-token\n\n  spiffe-ish:name  new-token \n";
        let entries = parse_token_file(text, ZTUNNEL_IDENTITY).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].identity, ZTUNNEL_IDENTITY);
        assert_eq!(entries[0].digest, sha256("old-token"));
        assert_eq!(entries[1].identity, "spiffe-ish:name");
        assert_eq!(entries[1].digest, sha256("new-token"));
        let err = parse_token_file("a b c-secret\n", "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && !err.contains("c-secret"), "{err}");
        assert!(parse_token_file("# only a comment\n", "x").is_err());
    }

    #[tokio::test]
    async fn allow_list_refuses_other_identities_with_permission_denied() {
        let file = "ztunnel-token\nsystem:serviceaccount:bookinfo:reviews reviews-token\n";
        let verifier = Arc::new(StaticTokenVerifier {
            path: None,
            default_identity: ZTUNNEL_IDENTITY.into(),
            cached: Mutex::new(Cached {
                stamp: None,
                tokens: Arc::new(parse_token_file(file, ZTUNNEL_IDENTITY).unwrap()),
            }),
        });
        let allowed = IdentityAllowList::new(verifier, vec![ZTUNNEL_IDENTITY.into()]);
        assert_eq!(
            allowed.verify("ztunnel-token").await.unwrap(),
            ZTUNNEL_IDENTITY
        );
        let refused = allowed.verify("reviews-token").await.unwrap_err();
        assert_eq!(
            refused,
            AuthError::NotAllowed("system:serviceaccount:bookinfo:reviews".into())
        );
        let status = tonic::Status::from(refused);
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status
                .message()
                .contains("system:serviceaccount:bookinfo:reviews")
        );
        assert_eq!(allowed.verify("nobody").await, Err(AuthError::Invalid));
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
        // A malformed rewrite keeps the last good tokens.
        std::fs::write(&path, "too many fields here\n").unwrap();
        assert!(v.verify("second-token-longer").await.is_ok());
        // An unreadable file keeps the last good tokens.
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
