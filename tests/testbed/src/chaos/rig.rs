//! The federation a chaos or soak run works on: three sandbox clusters (simulated istiod,
//! emulated API server, a real release `peerd` process, the node's simulated ztunnel),
//! linked with the real `peerd link`, with a short disconnect grace. It also holds what
//! the faults act on: each peerd process, each emulator's fault switches, the PKI and
//! token that rotation rewrites, and the nftables partitions.
//!
//! Fixed addresses (127.0.k.1 and the real port numbers, pods' HBONE on 0.0.0.0:15008):
//! the runner must live in a network namespace of its own (`cargo xtask chaos` and
//! `cargo xtask soak` create one), so nothing here can collide with a sandbox or a bench
//! elsewhere on the machine. Never connects outside 127.0.0.0/8.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::emulator::EmulatorHandle;
use crate::pki::{LeafSpec, Pki};
use crate::sandbox::cluster::{Cluster, SandboxOptionsForCluster, peerd_binary, peerd_identity};
use crate::sandbox::layout::{self, ClusterLayout};
use crate::sandbox::{gateway, kube, linking, ztunnel};
use crate::sim::churn::{ChangeBatch, ChangeObserver};
use peerd::identity::spiffe::SpiffeId;
use peerd::xds::stats::StreamStats;

use super::node_path;
use super::partition::Partitions;

#[derive(Debug, Clone)]
pub struct RigOptions {
    /// Workloads of each cluster's simulated istiod (cluster k gets `workloads[k-1]`).
    pub workloads: Vec<usize>,
    pub services_per_cluster: usize,
    pub churn_per_sec: f64,
    /// Every peerd's `disconnectGracePeriod`.
    pub grace: Duration,
    pub state_dir: PathBuf,
    pub seed: u64,
    /// Events each emulated API server keeps for watches (history and per-watch
    /// buffer); `None`: the emulator's defaults, sized for 100k-workload bursts.
    pub api_events_kept: Option<usize>,
}

/// When each simulated istiod published each resource name last (for propagation
/// latency and for telling in-flight changes from real mismatches).
#[derive(Default)]
pub struct PublishLog {
    by_name: Mutex<HashMap<Arc<str>, Published>>,
}

/// What one name's simulated istiod last did with it.
#[derive(Clone, Copy)]
struct Published {
    cluster: u8,
    /// The latest change (upsert or removal).
    at: Instant,
    /// The latest removal: a pod can come back under the same uid (Istio's pod uid is its
    /// cluster, namespace and name: a StatefulSet pod re-created, or a generated name
    /// reused), and what was removed in between may legitimately have been dropped
    /// downstream.
    removed_at: Option<Instant>,
}

impl PublishLog {
    fn record(&self, cluster: u8, batch: &ChangeBatch) {
        let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        let at = batch.published_at;
        let upserts = batch.upserted.iter().map(|name| (name, false));
        let removals = batch.removed.iter().map(|name| (name, true));
        for (name, removed) in upserts.chain(removals) {
            let removed_at = if removed {
                Some(at)
            } else {
                map.get(name).and_then(|p| p.removed_at)
            };
            map.insert(
                Arc::clone(name),
                Published {
                    cluster,
                    at,
                    removed_at,
                },
            );
        }
        // Bounded: at 600 changes/s a few minutes of names; older ones are not needed.
        if map.len() > 400_000 {
            let horizon = Instant::now() - Duration::from_secs(60);
            map.retain(|_, p| p.at >= horizon);
        }
    }

    fn get(&self, name: &str) -> Option<Published> {
        self.by_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }

    /// Whether `name`'s simulated istiod removed it less than `within` ago (it may be
    /// back since).
    pub fn removed_within(&self, name: &str, within: Duration) -> bool {
        self.get(name)
            .and_then(|p| p.removed_at)
            .is_some_and(|at| at.elapsed() < within)
    }

    /// The cluster index and publish time of `name`'s latest change, if one is known.
    pub fn last(&self, name: &str) -> Option<(u8, Instant)> {
        self.get(name).map(|p| (p.cluster, p.at))
    }

    /// Whether `name` changed in its simulated istiod less than `within` ago.
    pub fn changed_within(&self, name: &str, within: Duration) -> bool {
        self.last(name).is_some_and(|(_, at)| at.elapsed() < within)
    }
}

/// The running federation.
pub struct Rig {
    pub clusters: Vec<Cluster>,
    pub apis: Vec<Arc<EmulatorHandle>>,
    pub node_ztunnels: Vec<Arc<StreamStats>>,
    /// Per cluster, where its simulated ztunnels dial their peerd ([`node_path`]: from
    /// the node address, which partitions leave alone).
    pub node_paths: Vec<std::net::SocketAddr>,
    pub partitions: Partitions,
    pub publish_log: Arc<PublishLog>,
    pub grace: Duration,
    pub token_file: PathBuf,
    pub root_cert: PathBuf,
    pub kubeconfig: PathBuf,
    pub state_dir: PathBuf,
    pki: Pki,
    pub cancel: CancellationToken,
    stop_sims: tokio::sync::watch::Sender<bool>,
}

impl Rig {
    /// Starts everything and links every pair; returns once every peerd runs (convergence
    /// is the observer's to wait for).
    pub async fn start(options: &RigOptions) -> anyhow::Result<Rig> {
        if options.workloads.len() != 3 {
            bail!("a chaos rig has three clusters");
        }
        peerd_binary()?;
        let mut partitions = Partitions::for_this_process();
        partitions.preflight()?;
        let state_dir = options.state_dir.clone();
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let pki = Pki::load_or_create(&state_dir.join("pki"), "peerd chaos root CA")
            .context("chaos PKI")?;
        let token_file = state_dir.join("token");
        write_token(&token_file)?;
        let root_cert = pki.root_cert_path();
        let layouts: Vec<ClusterLayout> =
            (1..=3).map(|k| ClusterLayout::new(k, &state_dir)).collect();
        let cancel = CancellationToken::new();
        let (stop_sims, sims_shutdown) = tokio::sync::watch::channel(false);
        let publish_log = Arc::new(PublishLog::default());
        let grace = format!("{}s", options.grace.as_secs().max(1));
        let mut clusters = Vec::new();
        for (layout, &workloads) in layouts.iter().zip(&options.workloads) {
            let ca = pki
                .cluster_ca(&layout.name)
                .with_context(|| format!("{}: intermediate CA", layout.name))?;
            let log = Arc::clone(&publish_log);
            let index = layout.index;
            let observer: ChangeObserver = Arc::new(move |batch| log.record(index, batch));
            let per_cluster = SandboxOptionsForCluster {
                workloads,
                services: options.services_per_cluster,
                churn_per_sec: options.churn_per_sec,
                seed: options.seed,
                token_file: &token_file,
                root_cert: &root_cert,
                disconnect_grace: &grace,
                churn_observer: Some(observer),
            };
            clusters.push(Cluster::prepare(
                layout.clone(),
                &layouts,
                &ca,
                &per_cluster,
                sims_shutdown.clone(),
                &cancel,
            )?);
        }
        {
            // Every simulated pod answers HBONE (flat peers probe pod IPs).
            let cancel = cancel.clone();
            let addr = std::net::SocketAddr::from(([0, 0, 0, 0], layout::HBONE_PORT));
            tokio::spawn(async move {
                if let Err(e) = gateway::serve_hbone(addr, cancel).await {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "chaos: pod HBONE listener stopped"
                    );
                }
            });
        }
        let root_pem = pki.root().root_pem().to_string();
        let mut apis = Vec::new();
        for c in &clusters {
            apis.push(Arc::new(
                kube::start(
                    &c.layout,
                    &c.global_services,
                    &root_pem,
                    options.api_events_kept,
                )
                .await?,
            ));
        }
        let kubeconfig = state_dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kube::kubeconfig(&layouts))
            .with_context(|| format!("writing {}", kubeconfig.display()))?;
        let mut node_ztunnels = Vec::new();
        let mut node_paths = Vec::new();
        for c in &mut clusters {
            // peerd's own logs stay complete (they explain a violation) even when the
            // runner's are quiet.
            c.set_log_filter("info");
            c.start_peerd()?;
            let node_path = node_path::start(
                node_path::node_address(&c.layout),
                c.layout.xds(),
                cancel.clone(),
            )
            .await?;
            node_paths.push(node_path);
            let (_, stats) = ztunnel::spawn_with_stats(
                &c.layout,
                node_path,
                "ztunnel",
                &token_file,
                &root_cert,
                cancel.clone(),
            )?;
            node_ztunnels.push(stats);
        }
        let args =
            linking::link_all_args(&layouts.iter().map(|l| l.name.clone()).collect::<Vec<_>>());
        {
            let kubeconfig = kubeconfig.clone();
            tokio::task::spawn_blocking(move || linking::run_peerd(&kubeconfig, &args))
                .await
                .context("peerd link task")?
                .context("linking the chaos clusters")?;
        }
        Ok(Rig {
            clusters,
            apis,
            node_ztunnels,
            node_paths,
            partitions,
            publish_log,
            grace: options.grace,
            token_file,
            root_cert,
            kubeconfig,
            state_dir,
            pki,
            cancel,
            stop_sims,
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.clusters
            .iter()
            .map(|c| c.layout.name.clone())
            .collect()
    }

    /// SIGKILL cluster `i`'s peerd (0-based); no clean shutdown, no final snapshot write.
    pub fn kill_peerd(&mut self, i: usize) {
        self.clusters[i].stop_peerd();
    }

    pub fn start_peerd(&mut self, i: usize) -> anyhow::Result<()> {
        self.clusters[i].start_peerd()
    }

    pub fn cut(&mut self, i: usize) -> anyhow::Result<()> {
        let layout = &self.clusters[i].layout;
        self.partitions
            .cut(layout.host, node_path::node_address(layout))
    }

    pub fn heal(&mut self, i: usize) -> anyhow::Result<()> {
        let host = self.clusters[i].layout.host;
        self.partitions.heal(host)
    }

    /// `peerd unlink` / `peerd link` of clusters `a` and `b`, both ways.
    pub async fn link_pair(&self, verb: &'static str, a: usize, b: usize) -> anyhow::Result<()> {
        let kubeconfig = self.kubeconfig.clone();
        let (a, b) = (
            self.clusters[a].layout.name.clone(),
            self.clusters[b].layout.name.clone(),
        );
        tokio::task::spawn_blocking(move || linking::pair(verb, &kubeconfig, &a, &b))
            .await
            .context("peerd link task")??;
        Ok(())
    }

    /// Re-issues every certificate (each peerd's and each simulated istiod's, from the
    /// same root) and replaces the bearer token every peerd accepts: all files are
    /// rewritten in place, the processes pick them up while their streams stay open.
    pub fn rotate_credentials(&self) -> anyhow::Result<()> {
        let id: SpiffeId = peerd_identity().parse().context("peerd SPIFFE identity")?;
        for c in &self.clusters {
            let ca = self
                .pki
                .cluster_ca(&c.layout.name)
                .with_context(|| format!("{}: intermediate CA", c.layout.name))?;
            ca.issue(
                &LeafSpec::workload(id.clone())
                    .with_ip(c.layout.host)
                    .with_dns(ztunnel::PEERD_SERVER_NAME),
            )
            .and_then(|leaf| leaf.write_to(&c.peerd_cert_dir()))
            .with_context(|| format!("{}: re-issuing peerd's certificate", c.layout.name))?;
            let istiod_dir = c.layout.dir.join("istiod");
            ca.issue(
                &LeafSpec::server(crate::sim::istiod::ISTIOD_DNS_NAME)
                    .with_dns(crate::sim::istiod::ISTIOD_DNS_NAME)
                    .with_ip(c.layout.host),
            )
            .and_then(|leaf| leaf.write_to(&istiod_dir))
            .with_context(|| format!("{}: re-issuing istiod's certificate", c.layout.name))?;
        }
        write_token(&self.token_file)
    }

    /// Stops everything: processes, simulators, listeners, partitions.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let _ = self.stop_sims.send(true);
        for c in &mut self.clusters {
            c.stop_peerd();
        }
        if let Err(e) = self.partitions.heal_all() {
            eprintln!("chaos: {e:#}");
        }
        for api in self.apis.drain(..) {
            if let Ok(api) = Arc::try_unwrap(api) {
                api.shutdown().await;
            }
        }
    }
}

/// A new random bearer token, written atomically (mode 0600).
fn write_token(path: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let bytes: [u8; 24] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension("new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(format!("{token}\n").as_bytes())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(upserted: &[&str], removed: &[&str]) -> ChangeBatch {
        ChangeBatch {
            published_at: Instant::now(),
            view_version: Some(1),
            kinds: Vec::new(),
            upserted: upserted.iter().map(|n| Arc::from(*n)).collect(),
            removed: removed.iter().map(|n| Arc::from(*n)).collect(),
        }
    }

    /// A pod removed and then back under the same uid is still known as recently
    /// removed, so the observer does not count what its removal did downstream.
    #[test]
    fn a_removal_is_remembered_after_the_same_uid_comes_back() {
        let log = PublishLog::default();
        log.record(2, &batch(&["c2//Pod/ns/web-0"], &[]));
        assert!(!log.removed_within("c2//Pod/ns/web-0", Duration::from_secs(30)));
        log.record(2, &batch(&[], &["c2//Pod/ns/web-0"]));
        log.record(2, &batch(&["c2//Pod/ns/web-0"], &[]));
        assert!(log.removed_within("c2//Pod/ns/web-0", Duration::from_secs(30)));
        assert!(!log.removed_within("c2//Pod/ns/web-0", Duration::ZERO));
        assert!(!log.removed_within("c2//Pod/ns/other", Duration::from_secs(30)));
        assert_eq!(log.last("c2//Pod/ns/web-0").map(|(c, _)| c), Some(2));
    }
}
