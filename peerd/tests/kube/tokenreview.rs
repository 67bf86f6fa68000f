//! TokenReview verification with audience and cache against the emulator.

use std::time::Duration;

use super::{client, emulator, eventually};
use peerd::kube::tokenreview::{TokenReviewConfig, TokenReviewVerifier};
use peerd::xds::auth::{AuthError, TokenVerifier};
use peerd_testbed::emulator::{TokenIdentity, Verb};

const REVIEWS: &str = "tokenreviews.authentication.k8s.io";

fn identity(username: &str, audiences: &[&str]) -> TokenIdentity {
    TokenIdentity {
        username: username.into(),
        uid: "uid-1".into(),
        groups: vec!["system:serviceaccounts".into()],
        audiences: audiences.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn verifies_with_audience_and_caches_verdicts() {
    let emu = emulator().await;
    emu.add_token(
        "good-token",
        identity("system:serviceaccount:istio-system:ztunnel", &["istio-ca"]),
    );
    emu.add_token(
        "other-audience",
        identity("system:serviceaccount:x:y", &["vault"]),
    );
    let verifier = TokenReviewVerifier::new(
        client(&emu).await,
        TokenReviewConfig {
            audiences: vec!["istio-ca".into()],
            ttl: Duration::from_millis(500),
            max_entries: 16,
        },
    );
    assert_eq!(
        verifier.verify("good-token").await.unwrap(),
        "system:serviceaccount:istio-system:ztunnel"
    );
    assert_eq!(verifier.verify("bad-token").await, Err(AuthError::Invalid));
    assert_eq!(
        verifier.verify("other-audience").await,
        Err(AuthError::Invalid)
    );
    assert_eq!(verifier.verify("").await, Err(AuthError::Missing));
    let reviews = emu.counters().on(Verb::Create, REVIEWS);
    assert_eq!(reviews, 3);

    // Cached: no new review, even after the token is revoked (until the TTL passes).
    emu.revoke_token("good-token");
    assert!(verifier.verify("good-token").await.is_ok());
    assert_eq!(verifier.verify("bad-token").await, Err(AuthError::Invalid));
    assert_eq!(emu.counters().on(Verb::Create, REVIEWS), reviews);
    eventually("cache entry expires", || async {
        verifier.verify("good-token").await == Err(AuthError::Invalid)
    })
    .await;
}

#[tokio::test]
async fn api_server_failure_is_unavailable_and_not_cached() {
    let emu = emulator().await;
    emu.add_token("good-token", identity("ztunnel", &[]));
    let verifier = TokenReviewVerifier::new(client(&emu).await, TokenReviewConfig::default());
    // 500: kube-rs itself retries 503 and 504.
    emu.faults().fail_next(1, 500);
    assert!(matches!(
        verifier.verify("good-token").await,
        Err(AuthError::Unavailable(_))
    ));
    assert_eq!(verifier.verify("good-token").await.unwrap(), "ztunnel");
}
