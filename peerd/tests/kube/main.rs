//! Tests of the Kubernetes adapter: pure rules (names, hashes, conditions, peer specs) and
//! the kube-rs code against the emulated API server over real HTTP on 127.0.0.1. No test
//! reaches any other address or resolves a name through DNS; none asserts on speed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apply;
mod flatsync;
mod gateways;
mod leader;
mod mcs;
mod status;
mod tokenreview;

use std::future::Future;
use std::time::Duration;

use kube::Client;
use serde_json::Value;

use peerd::kube::client::{ClientSource, connect};
use peerd_testbed::emulator::{Emulator, EmulatorHandle, EmulatorOptions};

pub const CONTROL_NS: &str = "istio-system";
pub const PEERING_NS: &str = "istio-eastwest";

pub async fn emulator() -> EmulatorHandle {
    Emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        EmulatorOptions {
            bookmark_interval: Duration::from_millis(100),
            namespaces: ["default", "istio-system", "istio-eastwest"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

pub async fn client(emulator: &EmulatorHandle) -> Client {
    connect(&ClientSource::Url(emulator.url().to_string()), CONTROL_NS)
        .await
        .unwrap()
}

/// Polls `check` until it returns true; panics after a generous minute (a liveness bound
/// for loaded machines, not a speed assertion).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// POSTs `body` (JSON) to `path` in-process; asserts a 2xx.
pub async fn create(emulator: &EmulatorHandle, path: &str, body: &Value) -> Value {
    let (code, reply) = emulator
        .request(
            http::Method::POST,
            path,
            "application/json",
            body.to_string(),
        )
        .await
        .unwrap();
    assert!((200..300).contains(&code), "POST {path}: {code} {reply}");
    reply
}
