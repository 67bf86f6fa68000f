//! Bearer-token verification of connecting ztunnels by `authentication.k8s.io/v1`
//! TokenReview ([`TokenReviewVerifier`], a [`TokenVerifier`]), with a configurable audience
//! and a small TTL cache so a reconnect storm does not become a TokenReview storm.
//!
//! The cache is keyed by the SHA-256 of the token, so tokens are not kept in memory
//! longer than a request. Failures to reach the API server are `Unavailable` and never
//! cached. It must never log, store or echo a token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use ring::digest::{SHA256, digest};
use tonic::async_trait;

use crate::xds::auth::{AuthError, TokenVerifier};

/// Settings of a [`TokenReviewVerifier`].
#[derive(Debug, Clone)]
pub struct TokenReviewConfig {
    /// Audiences requested in each review (empty: the API server's default audience).
    pub audiences: Vec<String>,
    /// How long a verdict (accepted or rejected) is reused.
    pub ttl: Duration,
    /// Cache entries kept at most; the oldest are dropped past it.
    pub max_entries: usize,
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        TokenReviewConfig {
            audiences: vec!["istio-ca".to_string()],
            ttl: Duration::from_secs(30),
            max_entries: 4096,
        }
    }
}

/// The identity of an accepted token, or why it was not accepted.
pub type Verdict = Result<String, AuthError>;

/// Verifies tokens with TokenReview, caching verdicts for `ttl`.
pub struct TokenReviewVerifier {
    api: Api<TokenReview>,
    config: TokenReviewConfig,
    cache: Mutex<HashMap<[u8; 32], (Verdict, Instant)>>,
}

impl TokenReviewVerifier {
    pub fn new(client: Client, config: TokenReviewConfig) -> TokenReviewVerifier {
        TokenReviewVerifier {
            api: Api::all(client),
            config,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Verdict> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.config.ttl)
            .map(|(v, _)| v.clone())
    }

    fn remember(&self, key: [u8; 32], verdict: Verdict) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let ttl = self.config.ttl;
        cache.retain(|_, (_, at)| at.elapsed() < ttl);
        if cache.len() >= self.config.max_entries
            && let Some(oldest) = cache.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k)
        {
            cache.remove(&oldest);
        }
        cache.insert(key, (verdict, Instant::now()));
    }

    async fn review(&self, token: &str) -> Verdict {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: (!self.config.audiences.is_empty())
                    .then(|| self.config.audiences.clone()),
            },
            ..Default::default()
        };
        let response = self
            .api
            .create(&PostParams::default(), &review)
            .await
            // The error text of a failed request never includes the body we sent.
            .map_err(|err| AuthError::Unavailable(format!("TokenReview failed: {err}")))?;
        verdict(response, &self.config.audiences)
    }
}

/// What a TokenReview answer means: the reviewed identity (the username) when the token
/// is authenticated and, if `audiences` is not empty, one of them was granted; else
/// `Invalid`. Public so the fuzz target checks it on arbitrary API-server answers.
pub fn verdict(response: TokenReview, audiences: &[String]) -> Verdict {
    let status = response.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(AuthError::Invalid);
    }
    if !audiences.is_empty() {
        let granted = status.audiences.unwrap_or_default();
        if !granted.iter().any(|a| audiences.contains(a)) {
            return Err(AuthError::Invalid);
        }
    }
    let user = status.user.unwrap_or_default();
    Ok(user.username.unwrap_or_default())
}

#[async_trait]
impl TokenVerifier for TokenReviewVerifier {
    async fn verify(&self, token: &str) -> Result<String, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        if let Some(verdict) = self.cached(&key) {
            return verdict;
        }
        let verdict = self.review(token).await;
        if !matches!(verdict, Err(AuthError::Unavailable(_))) {
            self.remember(key, verdict.clone());
        }
        verdict
    }
}
