//! Seed corpora for the fuzz targets in `fuzz/` (`peerd-sandbox fuzz-seeds --out DIR`,
//! run by `cargo xtask fuzz`): real inputs, one directory per target.
//!
//! - `envelope`, `resource`, `wire_edit`: the simulated istiod's population (plain and
//!   realistic resources: waypoints, weighted waypoints, extensions), encoded exactly as
//!   it serves them: `Resource` envelopes, `DeltaDiscoveryResponse`s, Address and
//!   Authorization bodies, and Address bodies behind edit headers.
//! - `config`: the sample configurations shipped in `deploy/`.
//! - `gateway`, `service`, `tokenreview`, `lease`: objects as the emulated API server
//!   answers them (create replies, lists, and watch events built from them).
//!
//! Owns only writing seeds; must never be linked into the daemon (it is testbed code)
//! and never writes outside `out`. Seeds are generated on demand, not committed.

use std::path::Path;

use anyhow::Context;
use http::Method;
use prost::Message;
use serde_json::{Value, json};

use peerd::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, Resource as WireResource,
};
use peerd::xds::any::Any;
use peerd::xds::resource::Resource;
use peerd::xds::types::ResourceType;

use crate::emulator::{Emulator, EmulatorOptions, TokenIdentity};
use crate::sim::population::{Population, PopulationOptions};

/// Sample configurations (the shipped examples), for the `config` target.
const SAMPLE_CONFIGS: &[(&str, &str)] = &[
    (
        "standalone",
        include_str!("../../../deploy/examples/standalone.yaml"),
    ),
    (
        "kustomize-example",
        include_str!("../../../deploy/kustomize/overlays/example/config.yaml"),
    ),
    ("minimal", "cluster: c1\n"),
    ("empty", ""),
];

/// Edit headers for `wire_edit` (first byte: header length; the rest feeds `arbitrary`):
/// a few different edit lists, so the fuzzer starts from every kind of edit.
const EDIT_HEADERS: &[&[u8]] = &[
    &[0],
    &[4, 0, 0, 3, 1],
    &[8, 0, 2, 0, 5, b'n', b'e', b't', b'2'],
    &[6, 1, 3, 1, 2, b'x', 0],
    &[10, 0, 4, 5, 1, b'p', 1, 2, 0, 1, 0],
    &[8, 1, 1, 2, 3, b'a', b'b', b'c', 0],
];

/// Writes every target's seeds under `out/<target>/`; returns how many were written.
pub async fn write(out: &Path) -> anyhow::Result<usize> {
    let mut seeds = Seeds {
        out: out.to_path_buf(),
        written: 0,
    };
    xds_seeds(&mut seeds)?;
    for (name, text) in SAMPLE_CONFIGS {
        seeds.put("config", name, text.as_bytes())?;
    }
    kube_seeds(&mut seeds).await?;
    Ok(seeds.written)
}

struct Seeds {
    out: std::path::PathBuf,
    written: usize,
}

impl Seeds {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let dir = self.out.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(80)
            .collect();
        let path = dir.join(safe);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        self.written += 1;
        Ok(())
    }
}

fn envelope(r: &Resource) -> WireResource {
    WireResource {
        name: r.name.to_string(),
        version: r.version.to_string(),
        resource: Some(Any {
            type_url: r.kind.type_url().to_string(),
            value: r.body.clone(),
        }),
        ..Default::default()
    }
}

fn xds_seeds(seeds: &mut Seeds) -> anyhow::Result<()> {
    let mut options = PopulationOptions::new("cluster-1", 1, 24, 6, 7);
    options.global_fraction = 0.5;
    options.realistic_fraction = 1.0;
    let population = Population::generate(&options).context("generating the population")?;
    let addresses = population.address_resources()?;
    let authorizations = population.authorization_resources()?;
    // Plain resources too (realistic_fraction 0 is the byte-for-byte plain population).
    let plain = Population::generate(&PopulationOptions::new("cluster-2", 2, 6, 2, 3))?
        .address_resources()?;

    let every: Vec<&Resource> = addresses
        .iter()
        .chain(&authorizations)
        .chain(&plain)
        .map(|r| r.as_ref())
        .collect();
    for (i, r) in every.iter().enumerate() {
        let selector = match r.kind {
            ResourceType::Address => 0u8,
            ResourceType::Authorization => 1u8,
        };
        let mut input = vec![selector];
        input.extend_from_slice(&r.body);
        seeds.put("resource", &format!("{i:03}-{}", r.name), &input)?;
        seeds.put(
            "envelope",
            &format!("resource-{i:03}-{}", r.name),
            &envelope(r).encode_to_vec(),
        )?;
    }
    for (kind, group) in [
        (ResourceType::Address, &addresses),
        (ResourceType::Authorization, &authorizations),
    ] {
        for (i, chunk) in group.chunks(4).enumerate() {
            let response = DeltaDiscoveryResponse {
                system_version_info: format!("v{i}"),
                resources: chunk.iter().map(|r| envelope(r)).collect(),
                type_url: kind.type_url().to_string(),
                nonce: format!("nonce-{i}"),
                removed_resources: vec![format!("gone-{i}")],
                ..Default::default()
            };
            seeds.put(
                "envelope",
                &format!("response-{}-{i:02}", kind.short_name()),
                &response.encode_to_vec(),
            )?;
        }
    }
    for (i, r) in addresses.iter().chain(&plain).enumerate() {
        let header = EDIT_HEADERS[i % EDIT_HEADERS.len()];
        let mut input = header.to_vec();
        input.extend_from_slice(&r.body);
        seeds.put("wire_edit", &format!("{i:03}-{}", r.name), &input)?;
    }
    Ok(())
}

async fn kube_seeds(seeds: &mut Seeds) -> anyhow::Result<()> {
    let emulator = Emulator::start(
        "127.0.0.1:0".parse().context("literal address")?,
        EmulatorOptions {
            namespaces: ["istio-eastwest", "istio-system", "shop", "default"]
                .map(String::from)
                .to_vec(),
            ..EmulatorOptions::default()
        },
    )
    .await?;
    let gateways = "/apis/gateway.networking.k8s.io/v1/namespaces/istio-eastwest/gateways";
    let listeners = json!([
        {"name": "cross-network", "port": 15008, "protocol": "HBONE", "tls": {"mode": "Passthrough"}},
        {"name": "xds-tls", "port": 15012, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
    ]);
    let objects = [
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "istio-eastwest", "namespace": "istio-eastwest",
                            "labels": {"topology.istio.io/network": "net1"}},
               "spec": {"gatewayClassName": "istio-eastwest",
                        "addresses": [{"type": "IPAddress", "value": "127.0.1.1"}],
                        "listeners": listeners}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "cluster-2", "namespace": "istio-eastwest",
                            "labels": {"topology.istio.io/cluster": "cluster-2",
                                       "topology.istio.io/network": "net2"},
                            "annotations": {"gateway.istio.io/trust-domain": "cluster.local",
                                            "peering.solo.io/preferred-data-plane-service-type": "NodePort"}},
               "spec": {"gatewayClassName": "istio-remote",
                        "addresses": [{"type": "IPAddress", "value": "127.0.2.1"}],
                        "listeners": listeners}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "cluster-3", "namespace": "istio-eastwest",
                            "labels": {"topology.istio.io/cluster": "cluster-3",
                                       "topology.istio.io/network": "net1"},
                            "annotations": {"peering.solo.io/peerd-identity":
                                            "spiffe://cluster.local/ns/istio-system/sa/peerd"}},
               "spec": {"gatewayClassName": "istio-remote",
                        "addresses": [{"type": "Hostname", "value": "peer.example.com"}],
                        "listeners": listeners}}),
    ];
    let mut created = Vec::new();
    for object in &objects {
        created.push(
            emulator
                .request_ok(Method::POST, gateways, "application/json", object)
                .await?,
        );
    }
    let list = emulator
        .request_ok(Method::GET, gateways, "", &Value::Null)
        .await?;
    write_objects(seeds, "gateway", &created, &list)?;

    let services = [
        (
            "shop",
            "checkout",
            json!({"solo.io/service-scope": "global"}),
        ),
        ("default", "echo", json!({"istio.io/global": "true"})),
        ("shop", "cart", json!({"solo.io/service-scope": "local"})),
    ];
    let mut created = Vec::new();
    for (namespace, name, labels) in services {
        let body = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080},
                               {"name": "grpc", "port": 9090, "targetPort": "grpc"}],
                     "selector": {"app": name}}});
        created.push(
            emulator
                .request_ok(
                    Method::POST,
                    &format!("/api/v1/namespaces/{namespace}/services"),
                    "application/json",
                    &body,
                )
                .await?,
        );
    }
    let list = emulator
        .request_ok(Method::GET, "/api/v1/services", "", &Value::Null)
        .await?;
    write_objects(seeds, "service", &created, &list)?;

    emulator.add_token(
        "ztunnel-token",
        TokenIdentity {
            username: "system:serviceaccount:istio-system:ztunnel".into(),
            uid: "ztunnel-uid".into(),
            groups: vec!["system:serviceaccounts".into()],
            audiences: vec!["istio-ca".into()],
        },
    );
    for (name, token, audiences) in [
        ("accepted", "ztunnel-token", json!(["istio-ca"])),
        ("wrong-audience", "ztunnel-token", json!(["other"])),
        ("unknown-token", "not-a-token", json!(["istio-ca"])),
    ] {
        let reply = emulator
            .request_ok(
                Method::POST,
                "/apis/authentication.k8s.io/v1/tokenreviews",
                "application/json",
                &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "spec": {"token": token, "audiences": audiences}}),
            )
            .await?;
        seeds.put("tokenreview", name, reply.to_string().as_bytes())?;
    }

    let leases = "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases";
    let lease = emulator
        .request_ok(
            Method::POST,
            leases,
            "application/json",
            &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "peerd-leader", "namespace": "istio-system"},
                    "spec": {"holderIdentity": "peerd-0_1234abcd", "leaseDurationSeconds": 15,
                             "acquireTime": "2026-01-01T00:00:00.000000Z",
                             "renewTime": "2026-01-01T00:00:05.000000Z",
                             "leaseTransitions": 3}}),
        )
        .await?;
    // First byte: seconds since this process first saw the lease.
    for (name, waited) in [("held", 1u8), ("expired", 30u8)] {
        let mut input = vec![waited];
        input.extend_from_slice(lease.to_string().as_bytes());
        seeds.put("lease", name, &input)?;
    }
    let mut released = lease.clone();
    released["spec"]["holderIdentity"] = Value::Null;
    let mut input = vec![0u8];
    input.extend_from_slice(released.to_string().as_bytes());
    seeds.put("lease", "released", &input)?;
    emulator.shutdown().await;
    Ok(())
}

/// Each created object bare and as ADDED/MODIFIED/DELETED watch events, plus the list.
fn write_objects(
    seeds: &mut Seeds,
    target: &str,
    created: &[Value],
    list: &Value,
) -> anyhow::Result<()> {
    for (i, object) in created.iter().enumerate() {
        seeds.put(
            target,
            &format!("object-{i}"),
            object.to_string().as_bytes(),
        )?;
        for kind in ["ADDED", "MODIFIED", "DELETED"] {
            let event = json!({"type": kind, "object": object});
            seeds.put(
                target,
                &format!("event-{i}-{kind}"),
                event.to_string().as_bytes(),
            )?;
        }
    }
    seeds.put(target, "list", list.to_string().as_bytes())?;
    Ok(())
}
