//! `peerd debug resources` and `peerd debug dump` against the real daemon: a simulated
//! istiod → `app::Peerd` over TLS on loopback, read through the debug API exactly as the
//! commands read it. Expected listings are computed from the daemon's merged view.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod xds_support;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use peerd::app::Peerd;
use peerd::config::{Config, Env, Overrides};
use peerd::debug::dump::{self, DumpArgs};
use peerd::debug::resources;
use peerd::proto::debug::v1 as api;
use peerd::xds::resource::Summary;
use peerd::xds::types::ResourceType;
use peerd_testbed::pki::{LeafSpec, Pki};
use peerd_testbed::sim::istiod::{SimIstiod, SimIstiodOptions, serve_xds};
use xds_support::eventually;

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const ZTUNNEL_TOKEN: &str = "ztunnel-token-never-in-a-bundle";

struct Rig {
    dir: tempfile::TempDir,
    peerd: Peerd,
    /// Secret file contents that must never appear in a bundle.
    secrets: Vec<String>,
    _stop_sim: tokio::sync::watch::Sender<bool>,
}

fn free_port() -> u16 {
    peerd_testbed::ports::free_port(LOCALHOST)
}

/// The longest line of a PEM file's base64 body: a piece of the key itself.
fn pem_body_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .max_by_key(|l| l.len())
        .unwrap()
        .to_string()
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(&dir.path().join("pki"), "test root").unwrap();
    let ca = pki.cluster_ca("cluster-1").unwrap();
    let sim_addr = SocketAddr::new(LOCALHOST, free_port());
    let mut options = SimIstiodOptions::new("cluster-1", sim_addr, &dir.path().join("istiod"));
    options.cluster_index = Some(1);
    options.network = "net1".into();
    options.workloads = 60;
    options.services = 12;
    options.churn_per_sec = 0.0;
    let sim = SimIstiod::new_with_ca(options, &ca).unwrap();
    let sim_view = Arc::clone(&sim.view);
    let istiod_token = sim.tls.token_path.clone();
    let (stop_sim, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(sim.serve(shutdown, |ctx| serve_xds(ctx, Default::default())));

    let peerd_dir = dir.path().join("peerd");
    ca.issue(&LeafSpec::server("peerd").with_ip(LOCALHOST))
        .unwrap()
        .write_to(&peerd_dir)
        .unwrap();
    std::fs::write(dir.path().join("ztunnel-token"), ZTUNNEL_TOKEN).unwrap();
    let config_path = dir.path().join("peerd.yaml");
    std::fs::write(
        &config_path,
        format!(
            r#"
cluster: cluster-1
network: net1
sandboxMode: true
listeners: {{ xds: "127.0.0.1:0", metrics: "127.0.0.1:0", health: "127.0.0.1:0", debug: "127.0.0.1:0" }}
xds:
  tls: {{ certChain: peerd/cert-chain.pem, key: peerd/key.pem }}
  auth: {{ tokenFile: ztunnel-token }}
upstreams:
  - name: cluster-1
    address: "{sim_addr}"
    serverName: istiod.istio-system.svc
    rootCa: pki/root-cert.pem
    tokenFile: "{}"
    backoff: {{ initial: 50ms, max: 1s }}
"#,
            istiod_token.display()
        ),
    )
    .unwrap();
    let config = Config::load(&config_path, &Env::default(), &Overrides::default()).unwrap();
    let peerd = Peerd::start(config).await.unwrap();
    let merged = Arc::clone(peerd.federation.merged());
    eventually("the merged view holds the simulator's workloads", || {
        let (want, have) = (sim_view.snapshot(), merged.snapshot());
        ResourceType::ALL
            .iter()
            .all(|t| have.resources(*t).len() == want.resources(*t).len())
            && !have.resources(ResourceType::Address).is_empty()
    })
    .await;
    let secrets = vec![
        ZTUNNEL_TOKEN.to_string(),
        std::fs::read_to_string(&istiod_token)
            .unwrap()
            .trim()
            .to_string(),
        pem_body_line(&peerd_dir.join("key.pem")),
    ];
    Rig {
        dir,
        peerd,
        secrets,
        _stop_sim: stop_sim,
    }
}

/// `(namespace, cluster id, uid)` of some workload of the merged view.
fn some_workload(peerd: &Peerd) -> (String, String, String) {
    let snapshot = peerd.federation.merged().snapshot();
    snapshot
        .resources(ResourceType::Address)
        .iter()
        .find_map(|(_, r)| match &*r.summary {
            Summary::Workload(w) => Some((
                w.namespace.to_string(),
                w.cluster_id.to_string(),
                w.uid.clone(),
            )),
            _ => None,
        })
        .unwrap()
}

/// Address resources of the merged view in `namespace`, counted without the API.
fn count_in_namespace(peerd: &Peerd, namespace: &str) -> u64 {
    let snapshot = peerd.federation.merged().snapshot();
    snapshot
        .resources(ResourceType::Address)
        .iter()
        .filter(|(_, r)| match &*r.summary {
            Summary::Workload(w) => &*w.namespace == namespace,
            Summary::Service(s) => s.namespace == namespace,
            Summary::Authorization(_) => false,
        })
        .count() as u64
}

fn request(view: &str) -> api::ListResourcesRequest {
    api::ListResourcesRequest {
        view: view.into(),
        r#type: "wds".into(),
        include_summary: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_are_filtered_by_the_server_and_shown_decoded() {
    let rig = rig().await;
    let addr = rig.peerd.debug_addr.to_string();
    let (namespace, cluster, uid) = some_workload(&rig.peerd);

    // Namespace filter: exactly what the merged view holds there, nothing else sent.
    let want = count_in_namespace(&rig.peerd, &namespace);
    let total = rig
        .peerd
        .federation
        .merged()
        .snapshot()
        .resources(ResourceType::Address)
        .len() as u64;
    assert!(want < total, "the namespace filter must exclude something");
    let listed = resources::fetch(
        &addr,
        api::ListResourcesRequest {
            namespace: namespace.clone(),
            ..request("merged")
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.matched, want);
    assert_eq!(listed.resources.len() as u64, want);
    assert!(
        listed
            .resources
            .iter()
            .all(|r| r.summary.as_ref().unwrap().namespace == namespace && r.json.is_empty())
    );

    // Name substring: the one workload, decoded, in the table.
    let one = resources::fetch(
        &addr,
        api::ListResourcesRequest {
            name_contains: uid.clone(),
            cluster: cluster.clone(),
            ..request("merged")
        },
    )
    .await
    .unwrap();
    assert_eq!(one.matched, 1, "{one:?}");
    let summary = one.resources[0].summary.clone().unwrap();
    let held = rig
        .peerd
        .federation
        .merged()
        .snapshot()
        .get(ResourceType::Address, &uid)
        .cloned()
        .unwrap();
    let decoded = match held.decode_address().unwrap().r#type.unwrap() {
        peerd::proto::istio::workload::address::Type::Workload(w) => w,
        other => panic!("not a workload: {other:?}"),
    };
    assert_eq!(summary.kind, "workload");
    assert_eq!(summary.name, decoded.name);
    assert_eq!(summary.node, decoded.node);
    assert_eq!(summary.cluster, cluster);
    assert_eq!(summary.network, "net1");
    assert_eq!(summary.addresses.len(), decoded.addresses.len());
    let table = resources::render_table(&one);
    assert!(table.starts_with("NAMESPACE  POD NAME"), "{table}");
    assert!(table.contains(&decoded.name), "{table}");
    assert_eq!(one.resources[0].origin, "cluster-1");

    // Another cluster's workloads: none here.
    let none = resources::fetch(
        &addr,
        api::ListResourcesRequest {
            cluster: "cluster-9".into(),
            ..request("merged")
        },
    )
    .await
    .unwrap();
    assert_eq!((none.matched, none.resources.len()), (0, 0));
    assert_eq!(resources::render_table(&none), "no resources matched\n");

    // A limit cuts what is sent, not what is counted.
    let limited = resources::fetch(
        &addr,
        api::ListResourcesRequest {
            namespace: namespace.clone(),
            limit: 1,
            ..request("merged")
        },
    )
    .await
    .unwrap();
    assert_eq!((limited.matched, limited.resources.len()), (want, 1));

    // JSON: the full decoded resource, from the origin's own view.
    let json_request = api::ListResourcesRequest {
        name_contains: uid.clone(),
        include_json: true,
        include_summary: false,
        ..request("cluster-1")
    };
    let json = resources::to_json(
        "cluster-1",
        &resources::fetch(&addr, json_request).await.unwrap(),
    );
    assert_eq!(json["matched"], 1);
    assert_eq!(json["resources"][0]["resource"]["workload"]["uid"], uid);
    assert_eq!(json["resources"][0]["type"], "address");

    // Bad input: each a clear error naming what was wrong.
    let err = resources::fetch(&addr, request("no-such-origin"))
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("no view \"no-such-origin\"") && text.contains("cluster-1"),
        "{text}"
    );
    let err = resources::fetch(
        &addr,
        api::ListResourcesRequest {
            r#type: "pods".into(),
            ..request("merged")
        },
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("type: unknown \"pods\""),
        "{err:#}"
    );
    let err = resources::fetch(
        &addr,
        api::ListResourcesRequest {
            namespace: "n".repeat(300),
            ..request("merged")
        },
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("namespace: 300 bytes"),
        "{err:#}"
    );
}

/// Every member of a bundle, decompressed.
fn read_bundle(path: &Path) -> BTreeMap<String, String> {
    let file = std::fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut members = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut body = String::new();
        entry.read_to_string(&mut body).unwrap();
        members.insert(name, body);
    }
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_writes_every_member_and_no_secret() {
    let rig = rig().await;
    let bundle: PathBuf = rig.dir.path().join("support.tar.gz");
    let args = DumpArgs {
        file: bundle.clone(),
        addr: rig.peerd.debug_addr.to_string(),
        metrics_addr: Some(rig.peerd.metrics_addr.to_string()),
    };
    dump::run(args.clone()).await.unwrap();
    let members = read_bundle(&bundle);
    let names: Vec<&str> = members.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "peerd-dump/check.json",
            "peerd-dump/check.txt",
            "peerd-dump/config.txt",
            "peerd-dump/events.json",
            "peerd-dump/metrics.prom",
            "peerd-dump/status.json",
            "peerd-dump/status.txt",
            "peerd-dump/version.txt",
        ],
        "errors: {:?}",
        members.get("peerd-dump/errors.txt")
    );
    assert!(
        members["peerd-dump/status.txt"].starts_with("peerd cluster-1 (network \"net1\") ready")
    );
    assert!(members["peerd-dump/check.txt"].contains("✅ config"));
    assert!(members["peerd-dump/config.txt"].contains("cluster: \"cluster-1\""));
    assert!(members["peerd-dump/metrics.prom"].contains("# TYPE peerd_"));
    assert!(members["peerd-dump/version.txt"].contains("daemon: "));
    let events: serde_json::Value =
        serde_json::from_str(&members["peerd-dump/events.json"]).unwrap();
    assert!(events["events"].is_array(), "{events}");
    serde_json::from_str::<serde_json::Value>(&members["peerd-dump/status.json"]).unwrap();
    for (name, body) in &members {
        for secret in &rig.secrets {
            assert!(!body.contains(secret.as_str()), "{name} holds a secret");
        }
    }

    // An existing file is never overwritten.
    let before = std::fs::read(&bundle).unwrap();
    let err = dump::run(args.clone()).await.unwrap_err();
    assert!(format!("{err:#}").contains("exists"), "{err:#}");
    assert_eq!(std::fs::read(&bundle).unwrap(), before);

    // No debug API: an error naming the address, and no file at all.
    let unreachable = rig.dir.path().join("nothing.tar.gz");
    let err = dump::run(DumpArgs {
        file: unreachable.clone(),
        addr: format!("127.0.0.1:{}", free_port()),
        metrics_addr: None,
    })
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("cannot reach the peerd debug API"),
        "{err:#}"
    );
    assert!(!unreachable.exists());
    let leftovers: Vec<_> = std::fs::read_dir(rig.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty());

    // A metrics listener that cannot be scraped is named in errors.txt; the rest is kept.
    let partial = rig.dir.path().join("partial.tar.gz");
    dump::run(DumpArgs {
        file: partial.clone(),
        addr: rig.peerd.debug_addr.to_string(),
        metrics_addr: Some(format!("127.0.0.1:{}", free_port())),
    })
    .await
    .unwrap();
    let members = read_bundle(&partial);
    assert!(!members.contains_key("peerd-dump/metrics.prom"));
    assert!(
        members["peerd-dump/errors.txt"].starts_with("metrics: connecting to the metrics listener"),
        "{:?}",
        members["peerd-dump/errors.txt"]
    );
    assert!(members.contains_key("peerd-dump/status.txt"));
}
