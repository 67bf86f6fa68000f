//! Gateway → peer translation (`kube::peering`, `kube::gateways`), from what the API
//! server sends: the input is JSON read as a watch event of a Gateway (as kube-rs's
//! watcher reads it), else as a list, else as a bare Gateway. Each Gateway goes through
//! the peer model, the spec parser, the hostname/loopback checks (with a fixed
//! resolver), the file-style peer and the east-west target. None may panic; an accepted
//! peer never names the local cluster.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use kube::api::WatchEvent;
use kube::core::ObjectList;
use libfuzzer_sys::fuzz_target;
use peerd::config::{Config, Env, Overrides, resolve};
use peerd::kube::flat_input::present_clusters;
use peerd::kube::gateways::{StaticResolver, parse_peer_gateway};
use peerd::kube::peering::{
    check_gateway, desired_peers, eastwest_target, gateway_spec, usable_peers,
};
use peerd::kube::types::Gateway;
use peerd::peers::model::{LocalCluster, PeerModel};

fn gateways(data: &[u8]) -> Vec<Gateway> {
    if let Ok(event) = serde_json::from_slice::<WatchEvent<Gateway>>(data) {
        return match event {
            WatchEvent::Added(g) | WatchEvent::Modified(g) | WatchEvent::Deleted(g) => vec![g],
            WatchEvent::Bookmark(_) | WatchEvent::Error(_) => Vec::new(),
        };
    }
    if let Ok(list) = serde_json::from_slice::<ObjectList<Gateway>>(data) {
        return list.items;
    }
    serde_json::from_slice::<Gateway>(data).map_or_else(|_| Vec::new(), |g| vec![g])
}

/// The local cluster's config, as a daemon with these settings would have.
fn local_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let file = Config::parse_file("cluster: local\nnetwork: net-local\nflatNetworks: true\n")
            .expect("literal config parses");
        resolve(file, &Env::default(), &Overrides::default(), None)
            .expect("literal config is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let found = gateways(data);
    if found.is_empty() {
        return;
    }
    let local = LocalCluster {
        cluster: "local".into(),
        network: "net-local".into(),
        flat_networks: true,
    };
    let mut resolver = StaticResolver::default();
    resolver.table.insert(
        "peer.example.com".into(),
        vec!["127.0.0.9".parse().expect("literal")],
    );
    for gateway in &found {
        let spec = gateway_spec(gateway, "cluster.local");
        if let Ok(model) = PeerModel::build(&spec, &local) {
            assert_ne!(
                model.cluster, local.cluster,
                "a peer is never the local cluster"
            );
        }
        let _ = parse_peer_gateway(gateway, &local.cluster);
        for sandbox in [false, true] {
            let _ = futures::executor::block_on(check_gateway(gateway, &local, sandbox, &resolver));
            if let Some(target) = eastwest_target(gateway, sandbox) {
                assert!(!sandbox || target.address.is_loopback());
            }
        }
    }
    let shared: Vec<Arc<Gateway>> = found.into_iter().map(Arc::new).collect();
    let config = local_config();
    let usable = futures::executor::block_on(usable_peers(&shared, config, &local, &resolver));
    for (cluster, peer) in &usable {
        assert_eq!(cluster, &peer.cluster);
        assert_ne!(cluster, &local.cluster);
    }
    let present: BTreeSet<String> = present_clusters(&shared);
    let (desired, kept) = desired_peers(usable.clone(), &BTreeMap::new(), &present);
    assert_eq!(desired, usable);
    assert!(kept.is_empty());
});
