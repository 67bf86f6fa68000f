//! Live peers in standalone mode: SIGHUP re-reads the config file's `peers`, through the
//! real daemon and a real signal to this process (its own test binary: a SIGHUP reaches
//! every test of a process). A valid new list adds a peer (its workloads reach a
//! ztunnel-like downstream); an invalid file keeps the running peers (the reload is
//! counted as `invalid` and nothing is withdrawn); a list without the peer removes it at
//! once (the grace period is an hour) and its `peer_cluster` series leave `/metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod live_support;
mod xds_support;

use peerd::app::{ConfigSource, Peerd};
use peerd::config::{Env, Overrides};

use std::net::SocketAddr;

use live_support::{LOCALHOST, Lab, eventually, eventually_async, free_port, load, metrics_text};

const HOME: &str = "hup-home";
const PEER: &str = "hup-peer";

fn hangup() {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The value of `peerd_config_reloads_total{result}` on `/metrics` (0 when absent).
async fn reloads(home: &Peerd, result: &str) -> u64 {
    let label = format!("peerd_config_reloads_total{{result=\"{result}\"}} ");
    metrics_text(home.metrics_addr)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&label))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_peer_list_and_keeps_the_peers_on_an_invalid_file() {
    let lab = Lab::new();
    let home_xds = free_port();
    let (peer, _peer_sim) = lab
        .start_peer(
            PEER,
            23,
            "net-peer",
            SocketAddr::new(LOCALHOST, 0),
            &[(HOME, "net-home", home_xds)],
        )
        .await;
    let home_sim = lab.sim(HOME, 24, "net-home");
    let home_addr = SocketAddr::new(LOCALHOST, home_xds);
    let path = lab.write_config(HOME, "net-home", home_addr, &home_sim, "peers: []");
    let mut home = Peerd::start(load(&path)).await.unwrap();
    home.reload_peers_on_sighup(ConfigSource {
        path: path.clone(),
        env: Env::default(),
        overrides: Overrides::default(),
    })
    .unwrap();
    let downstream = lab.downstream(&home).await;
    eventually(
        "the home cluster's own workloads reach the downstream",
        || downstream.workloads_of(HOME) > 0,
    )
    .await;

    // A valid new peer list.
    let with_peer = format!(
        "peers:\n{}",
        Lab::peer_entry(PEER, "net-peer", peer.xds_addr)
    );
    lab.write_config(HOME, "net-home", home_addr, &home_sim, &with_peer);
    hangup();
    eventually("the peer's workloads reach the downstream", || {
        downstream.workloads_of(PEER) > 0
    })
    .await;
    assert_eq!(reloads(&home, "applied").await, 1);
    let imported = downstream.workloads_of(PEER);
    eventually("the peer's conditions appear", || {
        home.peers
            .snapshot()
            .iter()
            .any(|p| p.cluster == PEER && p.conditions.iter().next().is_some())
    })
    .await;

    // An invalid file: a peer without an address. The running peer stays.
    let invalid = format!("{with_peer}  - {{ cluster: hup-other, network: net-x, port: 15012 }}\n");
    lab.write_config(HOME, "net-home", home_addr, &home_sim, &invalid);
    hangup();
    eventually_async("the invalid reload is counted", || async {
        reloads(&home, "invalid").await == 1
    })
    .await;
    assert_eq!(reloads(&home, "applied").await, 1);
    assert!(home.peer_clients.running().await.contains_key(PEER));
    assert!(!home.peer_clients.running().await.contains_key("hup-other"));
    assert_eq!(downstream.workloads_of(PEER), imported);
    assert!(downstream.removals_of(PEER).is_empty());
    // The same check without a signal names the problem.
    let source = ConfigSource {
        path: path.clone(),
        env: Env::default(),
        overrides: Overrides::default(),
    };
    let error = format!("{:#}", home.reload_peers(&source).await.unwrap_err());
    assert!(error.contains("the running peers are kept"), "{error}");
    assert!(error.contains("peers[1]"), "{error}");

    // The peer removed from the file: withdrawn at once, its series gone.
    assert!(
        metrics_text(home.metrics_addr)
            .await
            .contains(&format!("peer_cluster=\"{PEER}\""))
    );
    lab.write_config(HOME, "net-home", home_addr, &home_sim, "peers: []");
    hangup();
    eventually("the downstream loses the peer's workloads", || {
        downstream.workloads_of(PEER) == 0
    })
    .await;
    assert!(home.peer_clients.running().await.is_empty());
    let metrics = metrics_text(home.metrics_addr).await;
    assert!(
        !metrics.contains(&format!("peer_cluster=\"{PEER}\"")),
        "{metrics}"
    );
    assert!(
        downstream.workloads_of(HOME) > 0,
        "the local workloads stay"
    );
}
