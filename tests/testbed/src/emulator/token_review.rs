//! `authentication.k8s.io/v1` TokenReview: create-only, nothing stored.
//!
//! Owns answering a review from the configured token table: a known token authenticates
//! as its user when its audiences intersect the requested ones (a token configured
//! without audiences accepts any). It must never log or echo a token.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::State;
use super::rest::{ApiRequest, Target, parse_body};
use super::status::ApiError;
use super::wire::{Body, json_response};

/// Who a valid token authenticates as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenIdentity {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// Audiences the token is valid for; empty means any.
    pub audiences: Vec<String>,
}

pub(crate) fn create(
    state: &State,
    target: &Target,
    req: &ApiRequest,
) -> Result<http::Response<Body>, ApiError> {
    let review = parse_body(req)?;
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::invalid(target.def, "", "spec.token: Required value"))?;
    let requested: Vec<String> = review
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let identity = state
        .tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(token)
        .cloned();
    let status = match identity {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some(identity) => {
            let granted: Vec<String> = if identity.audiences.is_empty() {
                requested.clone()
            } else if requested.is_empty() {
                identity.audiences.clone()
            } else {
                requested
                    .iter()
                    .filter(|a| identity.audiences.contains(a))
                    .cloned()
                    .collect()
            };
            if !requested.is_empty() && granted.is_empty() {
                json!({"authenticated": false, "error": "token audiences do not match the requested audiences"})
            } else {
                json!({
                    "authenticated": true,
                    "user": {"username": identity.username, "uid": identity.uid, "groups": identity.groups},
                    "audiences": granted,
                })
            }
        }
    };
    let mut spec = review.get("spec").cloned().unwrap_or(json!({}));
    if let Value::Object(map) = &mut spec {
        // The response never carries the token back.
        map.remove("token");
    }
    Ok(json_response(
        201,
        &json!({
            "kind": "TokenReview",
            "apiVersion": target.api_version(),
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        }),
    ))
}
