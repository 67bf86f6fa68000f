//! The TokenReview response (`authentication.k8s.io/v1`), as the API server answers a
//! review: JSON → `TokenReview` (as kube-rs decodes it) → `kube::tokenreview::verdict`.
//! Oracle: a token is accepted only when `status.authenticated` is true and, when
//! audiences are required, one of them was granted; the identity is the username.
#![no_main]

use k8s_openapi::api::authentication::v1::TokenReview;
use libfuzzer_sys::fuzz_target;
use peerd::kube::tokenreview::verdict;

fuzz_target!(|data: &[u8]| {
    let Ok(review) = serde_json::from_slice::<TokenReview>(data) else {
        return;
    };
    let status = review.status.clone().unwrap_or_default();
    for audiences in [Vec::new(), vec!["istio-ca".to_string()]] {
        match verdict(review.clone(), &audiences) {
            Ok(identity) => {
                assert_eq!(status.authenticated, Some(true));
                if !audiences.is_empty() {
                    assert!(
                        status
                            .audiences
                            .iter()
                            .flatten()
                            .any(|a| audiences.contains(a))
                    );
                }
                let user = status.user.clone().unwrap_or_default();
                assert_eq!(identity, user.username.unwrap_or_default());
            }
            Err(_) => assert!(
                status.authenticated != Some(true)
                    || (!audiences.is_empty()
                        && !status
                            .audiences
                            .iter()
                            .flatten()
                            .any(|a| audiences.contains(a)))
            ),
        }
    }
});
