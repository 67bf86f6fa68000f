//! The HTTP control endpoint under `/__emulator/` (not part of the Kubernetes API).
//!
//! `POST /__emulator/faults` (a [`FaultRequest`] JSON body), `GET /__emulator/counters`,
//! `POST /__emulator/counters/reset`, `POST /__emulator/compact` (forget all history).
//! Owns only translating these requests into the same calls the Rust handle offers. Its
//! requests are never counted and never faulted.

use http::{Method, Response};
use serde_json::json;

use super::State;
use super::faults::FaultRequest;
use super::status::ApiError;
use super::wire::{Body, error_response, json_response};

pub(crate) fn handle(state: &State, method: &Method, path: &str, body: &[u8]) -> Response<Body> {
    match (method, path) {
        (&Method::POST, "/__emulator/faults") => {
            let request: FaultRequest = match serde_json::from_slice(body) {
                Ok(request) => request,
                Err(e) => {
                    return error_response(&ApiError::bad_request(format!(
                        "invalid fault request: {e}"
                    )));
                }
            };
            match state.faults.apply_request(&request) {
                Ok(()) => json_response(200, &json!({"applied": request})),
                Err(e) => error_response(&ApiError::bad_request(e)),
            }
        }
        (&Method::GET, "/__emulator/counters") => json_response(
            200,
            &serde_json::to_value(state.counters.snapshot()).unwrap_or_default(),
        ),
        (&Method::POST, "/__emulator/counters/reset") => {
            state.counters.reset();
            json_response(200, &json!({"reset": true}))
        }
        (&Method::POST, "/__emulator/compact") => {
            state.store.compact();
            json_response(
                200,
                &json!({"oldestResourceVersion": state.store.oldest_rv().to_string()}),
            )
        }
        _ => error_response(&ApiError::path_not_found(path)),
    }
}
