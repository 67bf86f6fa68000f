//! Emulator tests over real HTTP on 127.0.0.1: semantics per feature, and the real
//! kubectl on this machine against the emulator. Every emulator binds an ephemeral port on
//! 127.0.0.1; tests must never reach any other address and never assert on speed.

mod apply;
mod client;
mod client_shapes;
mod crud;
mod discovery;
mod faults;
mod kubectl;
mod list;
mod scale;
mod watch;

use std::time::Duration;

use serde_json::{Value, json};

use self::client::TestClient;
use super::{Emulator, EmulatorHandle, EmulatorOptions};

pub const WE: &str = "/apis/networking.istio.io/v1/namespaces/istio-system/workloadentries";
pub const GW: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/istio-system/gateways";

pub async fn start_with(options: EmulatorOptions) -> (EmulatorHandle, TestClient) {
    let emulator = Emulator::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    let client = TestClient::new(emulator.url());
    (emulator, client)
}

pub async fn start() -> (EmulatorHandle, TestClient) {
    start_with(EmulatorOptions {
        bookmark_interval: Duration::from_millis(50),
        ..Default::default()
    })
    .await
}

pub fn workload_entry(name: &str, address: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": "istio-system", "labels": labels},
        "spec": {"address": address, "network": "net2"},
    })
}

pub fn gateway(name: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": "istio-system"},
        "spec": {"gatewayClassName": "istio-remote", "listeners": [{"name": "cross-network", "port": 15008, "protocol": "HBONE"}]},
    })
}

pub fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}
