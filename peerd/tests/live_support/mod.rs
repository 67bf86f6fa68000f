//! Test support for live peers: real daemons (`app::Peerd`) on 127.0.0.1 with ephemeral
//! ports, each fed by a simulated istiod. A *peer* cluster is a standalone peerd that
//! exports its global services; the *home* cluster (the one under test) imports from it,
//! its peer set given by `istio-remote` Gateways in an emulated API server or by its
//! config file. A ztunnel-like downstream follows the home's merged view in a task and
//! records every removal it receives. One throwaway PKI (a root and one intermediate per
//! cluster) per test; every cluster has its own trust domain.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerd::app::Peerd;
use peerd::config::{Config, Env, Overrides};
use peerd::identity::spiffe::SpiffeId;
use peerd::identity::tls::{ClientTlsOptions, ServerIdentity, client_config, load_roots};
use peerd::proto::envoy::service::discovery::v3 as discovery;
use peerd::xds::ResourceType;
use peerd_testbed::pki::{LeafSpec, Pki};
use peerd_testbed::sim::istiod::{SimIstiod, SimIstiodOptions, serve_xds};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::xds_support::Downstream;

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Where peer clusters listen for xDS: an `istio-remote` Gateway's xDS port is 15012, so
/// each peer gets its own loopback address (outside the sandbox's blocks).
pub const PEER_HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 21, 1));
/// A second address of the same peer (a forwarder), to re-address it.
pub const PEER_HOST_2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 21, 2));
pub const TOKEN: &str = "ztunnel-token-for-live-peers";
/// A liveness bound for a loaded machine, not a speed assertion.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    peerd_testbed::ports::free_port(LOCALHOST)
}

pub fn trust_domain(cluster: &str) -> String {
    format!("{cluster}.local")
}

/// Polls `check` until it holds; panics after [`WAIT`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls an async `check` until it holds; panics after [`WAIT`].
pub async fn eventually_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One test's directory and PKI.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
}

/// What a simulated istiod gives the peerd it feeds.
pub struct Sim {
    pub addr: SocketAddr,
    pub token_path: PathBuf,
    /// `namespace/name` of the services it marks global.
    pub global_services: Vec<String>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Lab {
    pub fn new() -> Lab {
        // `RUST_LOG=info` shows the daemons' logs when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(&dir.path().join("pki"), "live peers test root").unwrap();
        std::fs::write(dir.path().join("ztunnel-token"), TOKEN).unwrap();
        Lab { dir, pki }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a simulated istiod for `cluster` (population block `index`).
    pub fn sim(&self, cluster: &str, index: u8, network: &str) -> Sim {
        let ca = self.pki.cluster_ca(cluster).unwrap();
        let addr = SocketAddr::new(LOCALHOST, free_port());
        let mut options =
            SimIstiodOptions::new(cluster, addr, &self.path(&format!("istiod-{cluster}")));
        options.cluster_index = Some(index);
        options.network = network.into();
        options.trust_domain = trust_domain(cluster);
        options.workloads = 30;
        options.services = 6;
        options.churn_per_sec = 0.0;
        options.global_fraction = 0.5;
        let sim = SimIstiod::new_with_ca(options, &ca).unwrap();
        let token_path = sim.tls.token_path.clone();
        let global_services = sim.global_services.iter().cloned().collect();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(sim.serve(shutdown, |ctx| serve_xds(ctx, Default::default())));
        Sim {
            addr,
            token_path,
            global_services,
            stop,
        }
    }

    /// Issues `cluster`'s peerd certificate (SPIFFE ID in its trust domain, IP SAN
    /// 127.0.0.1) into `peerd-<cluster>/`, once.
    pub fn peerd_cert(&self, cluster: &str) -> PathBuf {
        let ca = self.pki.cluster_ca(cluster).unwrap();
        let dir = self.path(&format!("peerd-{cluster}"));
        if dir.join("cert-chain.pem").exists() {
            return dir;
        }
        let id = SpiffeId::new(&trust_domain(cluster), "istio-system", "peerd").unwrap();
        // Peers listen on other loopback addresses (a Gateway's xDS port must be 15012).
        let leaf = LeafSpec::workload(id)
            .with_ip(LOCALHOST)
            .with_ip(PEER_HOST)
            .with_ip(PEER_HOST_2);
        ca.issue(&leaf).unwrap().write_to(&dir).unwrap();
        dir
    }

    /// The config file of a cluster: `extra` is appended (peers, kubernetes, export).
    pub fn write_config(
        &self,
        cluster: &str,
        network: &str,
        xds: SocketAddr,
        sim: &Sim,
        extra: &str,
    ) -> PathBuf {
        let cert = self.peerd_cert(cluster);
        let text = format!(
            r#"
cluster: {cluster}
network: {network}
trustDomain: {td}
sandboxMode: true
disconnectGracePeriod: 1h
listeners: {{ xds: "{xds}", metrics: "127.0.0.1:0", health: "127.0.0.1:0", debug: "127.0.0.1:0" }}
xds:
  tls: {{ certChain: "{cert}/cert-chain.pem", key: "{cert}/key.pem", root: "{root}" }}
  auth: {{ tokenFile: "{token}" }}
  debounce: 5ms
upstreams:
  - name: {cluster}
    address: "{istiod}"
    serverName: istiod.istio-system.svc
    rootCa: "{root}"
    tokenFile: "{istiod_token}"
    backoff: {{ initial: 50ms, max: 1s }}
probe: {{ mode: userspace }}
{extra}
"#,
            td = trust_domain(cluster),
            cert = cert.display(),
            root = self.pki.root_cert_path().display(),
            token = self.path("ztunnel-token").display(),
            istiod = sim.addr,
            istiod_token = sim.token_path.display(),
        );
        let path = self.path(&format!("{cluster}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A `peers:` entry for `cluster` at `addr`.
    pub fn peer_entry(cluster: &str, network: &str, addr: SocketAddr) -> String {
        format!(
            "  - {{ cluster: {cluster}, network: {network}, address: {ip}, port: {port}, trustDomain: {td} }}\n",
            ip = addr.ip(),
            port = addr.port(),
            td = trust_domain(cluster)
        )
    }

    /// Starts a peer cluster: a standalone peerd exporting half its services (with its
    /// east-west gateway), which accepts `importers` (cluster, network, xDS port) as peers.
    pub async fn start_peer(
        &self,
        cluster: &str,
        index: u8,
        network: &str,
        xds: SocketAddr,
        importers: &[(&str, &str, u16)],
    ) -> (Peerd, Sim) {
        let sim = self.sim(cluster, index, network);
        let mut extra = String::from("export:\n  globalServices:\n");
        for s in &sim.global_services {
            extra += &format!("    - {s}\n");
        }
        extra += "  eastWestGateway: { address: 127.0.0.1, hbonePort: 15008 }\npeers:\n";
        for (c, n, port) in importers {
            extra += &Lab::peer_entry(c, n, SocketAddr::new(LOCALHOST, *port));
        }
        let path = self.write_config(cluster, network, xds, &sim, &extra);
        let config = load(&path);
        (Peerd::start(config).await.unwrap(), sim)
    }

    /// A ztunnel-like client of `peerd`'s merged view, followed in a task.
    pub async fn downstream(&self, peerd: &Peerd) -> Follower {
        let roots = load_roots(&self.pki.root_cert_path()).unwrap();
        let tls = client_config(&ClientTlsOptions::new(
            rustls::RootCertStore::clone(&roots),
            ServerIdentity::Name,
        ))
        .unwrap();
        let z = Downstream::connect(peerd.xds_addr, tls, Some(TOKEN))
            .await
            .unwrap();
        z.initial(ResourceType::Address, &[], &[], &[]).await;
        Follower::start(z)
    }
}

pub fn load(path: &Path) -> Config {
    Config::load(path, &Env::default(), &Overrides::default()).unwrap()
}

/// What a downstream holds of the address type, and every name it was told to remove.
#[derive(Default)]
pub struct Seen {
    pub held: BTreeSet<String>,
    pub removed: Vec<String>,
}

/// A downstream followed in a task: every response is applied and ACKed.
pub struct Follower {
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Follower {
    fn start(mut z: Downstream) -> Follower {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok(Some(r)) = z.rx.message().await {
                apply(&shared, &r);
                z.ack(&r).await;
            }
        });
        Follower { seen, task }
    }

    /// How many workloads of `cluster` it holds (workload names are `<cluster>//…`).
    pub fn workloads_of(&self, cluster: &str) -> usize {
        let prefix = format!("{cluster}//");
        self.seen
            .lock()
            .unwrap()
            .held
            .iter()
            .filter(|n| n.starts_with(&prefix))
            .count()
    }

    /// The removals it received of `cluster`'s workloads.
    pub fn removals_of(&self, cluster: &str) -> Vec<String> {
        let prefix = format!("{cluster}//");
        self.seen
            .lock()
            .unwrap()
            .removed
            .iter()
            .filter(|n| n.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

fn apply(seen: &Mutex<Seen>, r: &discovery::DeltaDiscoveryResponse) {
    let mut seen = seen.lock().unwrap();
    for name in &r.removed_resources {
        seen.held.remove(name);
        seen.removed.push(name.clone());
    }
    for res in &r.resources {
        seen.held.insert(res.name.clone());
    }
}

/// `GET /metrics` of a peerd, over plain HTTP/1.1.
pub async fn metrics_text(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: peerd\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// A TCP forwarder on a new port of 127.0.0.1 to `target`: a second address of the same
/// peer, to re-address it. Counts the connections it accepted.
pub struct Forwarder {
    pub addr: SocketAddr,
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Forwarder {
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> Forwarder {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Forwarder {
            addr,
            accepted,
            task,
        }
    }
}
