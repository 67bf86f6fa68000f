//! `peerd-sandbox ztunnel-watch`: an outside ztunnel-like client of a running sandbox,
//! for measuring what a node's ztunnel holds while the operator links, unlinks or
//! restarts. It connects to one cluster's peerd exactly like the simulated ztunnel
//! (bearer token, `clusterid`, delta xDS with ztunnel's ACK/NACK rules and
//! `initial_resource_versions` on reconnect) and prints one line whenever the number of
//! workloads it holds per origin cluster changes.
//!
//! Owns only its own throwaway store; reads the sandbox's state dir (root certificate,
//! token), writes nothing there; dials only the cluster's peerd on 127.0.k.1.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::sandbox::layout::ClusterLayout;
use peerd::xds::types::ResourceType;

/// Held workloads per `cluster_id`, as the client's store has them now.
fn workloads_by_cluster(store: &peerd::store::Store) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for origin in store.origins() {
        let snapshot = origin.view.snapshot();
        for resource in snapshot.resources(ResourceType::Address).values() {
            if let Some(w) = resource.as_workload() {
                *counts.entry(w.cluster_id.to_string()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// Connects to cluster `index`'s peerd of the sandbox in `state_dir` and prints
/// `unix_ms=<t> <cluster>=<workloads> …` on every change, checking every `interval`,
/// until `run_for` passes or the process is interrupted.
pub async fn run(
    state_dir: &Path,
    index: u8,
    interval: Duration,
    run_for: Option<Duration>,
) -> anyhow::Result<()> {
    let layout = ClusterLayout::new(index, state_dir);
    let root = state_dir
        .join("pki")
        .join(peerd::identity::tls::ROOT_CERT_FILE);
    let token = state_dir.join("token");
    for needed in [&root, &token] {
        if !needed.is_file() {
            anyhow::bail!(
                "{} is missing: is a sandbox running with --state-dir {}?",
                needed.display(),
                state_dir.display()
            );
        }
    }
    let cancel = CancellationToken::new();
    let store =
        super::ztunnel::spawn_named(&layout, "ztunnel-watch", &token, &root, cancel.clone())
            .context("starting the watching client")?;
    let deadline = run_for.map(|d| tokio::time::Instant::now() + d);
    let mut last = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let now = workloads_by_cluster(&store);
        if last.as_ref() != Some(&now) {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let counts: Vec<String> = now.iter().map(|(c, n)| format!("{c}={n}")).collect();
            println!("unix_ms={ms} {}", counts.join(" "));
            last = Some(now);
        }
    }
    cancel.cancel();
    Ok(())
}
