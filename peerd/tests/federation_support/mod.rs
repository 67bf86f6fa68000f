//! Test support for the federation integration tests: simulated clusters on their own
//! loopback addresses (cluster k on 127.0.k.1), each wired like `peerd run` would wire it —
//! a [`Store`] fed by a simulated istiod population, a [`Federation`], an [`AdsServer`]
//! on the shared xDS listener (mTLS optional: peers present SPIFFE certs) and one
//! [`AdsClient`] per imported peer with that peer's import filter. One throwaway PKI
//! (root → per-cluster intermediate → SPIFFE leaf) per test. Everything stays on loopback.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerd::config::ServiceRef;
use peerd::federation::{Federation, FederationConfig, GatewayTarget, PeerPolicy};
use peerd::identity::reload::CertSource;
use peerd::identity::spiffe::SpiffeId;
use peerd::identity::tls::{
    ClientAuth, ClientTlsOptions, ServerIdentity, ServerTlsOptions, client_config, load_roots,
    server_config,
};
use peerd::store::Store;
use peerd::xds::auth::StaticTokenVerifier;
use peerd::xds::client::{AdsClient, ClientOptions, Failure};
use peerd::xds::server::{AdsServer, ServerOptions};
use peerd::xds::{Resource, ResourceType};
use peerd_testbed::pki::{CertificateAuthority, LeafSpec, Pki};
use peerd_testbed::sim::population::{Population, PopulationOptions};
use rustls::RootCertStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Generous: the machine is shared and slow; only used to fail instead of hanging.
pub const WAIT: Duration = Duration::from_secs(60);
pub const TOKEN: &str = "downstream-test-token";

/// The services every simulated cluster exports (same seed ⇒ same names everywhere).
pub const SEED: u64 = 7;

pub fn trust_domain(cluster: &str) -> String {
    format!("{cluster}.local")
}

/// The SPIFFE ID of cluster `cluster`'s peerd (what [`identity`] issues).
pub fn peerd_identity(cluster: &str) -> SpiffeId {
    SpiffeId::new(&trust_domain(cluster), "istio-system", "peerd").unwrap()
}

pub fn host(k: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, k, 1))
}

/// Shape of one cluster in a test topology.
#[derive(Clone)]
pub struct Spec {
    pub name: String,
    pub index: u8,
    pub network: String,
    /// Clusters this one imports from (runs a client to).
    pub imports: Vec<String>,
    pub grace: Option<Duration>,
    /// Resource caps for particular peers (others get a large default).
    pub peer_caps: Vec<(String, usize)>,
}

impl Spec {
    pub fn new(name: &str, index: u8, network: &str, imports: &[&str]) -> Spec {
        Spec {
            name: name.into(),
            index,
            network: network.into(),
            imports: imports.iter().map(|s| s.to_string()).collect(),
            grace: Some(Duration::from_secs(300)),
            peer_caps: Vec::new(),
        }
    }
}

/// A generated identity of a cluster: its certificate and the shared roots.
pub struct Identity {
    pub cert: Arc<CertSource>,
    pub roots: Arc<RootCertStore>,
}

pub fn identity(
    pki_dir: &Path,
    ca: &CertificateAuthority,
    cluster: &str,
    td: &str,
    k: u8,
) -> Identity {
    identity_as(
        pki_dir,
        ca,
        cluster,
        SpiffeId::new(td, "istio-system", "peerd").unwrap(),
        k,
    )
}

/// A certificate for `id` (any workload of the shared root), stored under `name`.
pub fn identity_as(
    pki_dir: &Path,
    ca: &CertificateAuthority,
    name: &str,
    id: SpiffeId,
    k: u8,
) -> Identity {
    let leaf = ca.issue(&LeafSpec::workload(id).with_ip(host(k))).unwrap();
    let dir = pki_dir.join("leaf").join(name);
    leaf.write_to(&dir).unwrap();
    let cert = CertSource::from_files(&dir.join("cert-chain.pem"), &dir.join("key.pem")).unwrap();
    let roots = load_roots(&dir.join("root-cert.pem")).unwrap();
    Identity { cert, roots }
}

/// The population of a simulated cluster.
pub fn population(name: &str, k: u8, network: &str) -> Population {
    let mut o = PopulationOptions::new(name, k, 40, 10, SEED);
    o.network = network.to_string();
    o.trust_domain = trust_domain(name);
    Population::generate(&o).unwrap()
}

/// The services exported in every test: the first two services (by name) of the population.
pub fn global_services(p: &Population) -> BTreeSet<ServiceRef> {
    p.address_resources()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_service().cloned())
        .take(2)
        .map(|s| ServiceRef {
            namespace: s.namespace,
            name: s.name,
        })
        .collect()
}

pub struct Client {
    pub peer: String,
    pub failure: Arc<Mutex<Option<Failure>>>,
    pub cancel: CancellationToken,
}

pub struct Cluster {
    pub spec: Spec,
    pub store: Arc<Store>,
    pub fed: Arc<Federation>,
    pub addr: SocketAddr,
    pub cancel: CancellationToken,
    pub clients: Vec<Client>,
    pub identity: Identity,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Cluster {
    pub fn client(&self, peer: &str) -> &Client {
        self.clients.iter().find(|c| c.peer == peer).unwrap()
    }

    pub fn last_failure(&self, peer: &str) -> Option<Failure> {
        self.client(peer).failure.lock().unwrap().clone()
    }

    /// Stops everything of this cluster (server, federation, clients).
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Committed names of `origin` in the store.
    pub fn held(&self, origin: &str, kind: ResourceType) -> Vec<Arc<Resource>> {
        self.store
            .get(origin)
            .map(|o| {
                o.view
                    .snapshot()
                    .resources(kind)
                    .values()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn merged_workloads_from(&self, cluster: &str) -> usize {
        self.fed
            .merged()
            .snapshot()
            .resources(ResourceType::Address)
            .values()
            .filter(|r| r.as_workload().is_some_and(|w| *w.cluster_id == *cluster))
            .count()
    }
}

/// Everything needed to start clusters of one topology.
pub struct Topology {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub specs: Vec<Spec>,
    /// Listener addresses, decided before anything starts (port 0 resolved).
    pub listeners: Vec<Option<TcpListener>>,
    pub addrs: Vec<SocketAddr>,
}

impl Topology {
    pub async fn new(specs: Vec<Spec>) -> Topology {
        init_test_logs();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(&dir.path().join("pki"), "federation test root").unwrap();
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for s in &specs {
            let l = TcpListener::bind(SocketAddr::new(host(s.index), 0))
                .await
                .unwrap();
            addrs.push(l.local_addr().unwrap());
            listeners.push(Some(l));
        }
        Topology {
            dir,
            pki,
            specs,
            listeners,
            addrs,
        }
    }

    pub fn spec(&self, name: &str) -> (usize, &Spec) {
        self.specs
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .unwrap()
    }

    /// The federation config of cluster `i`: every other cluster is a peer (so it may read
    /// our export), flat when on the same network.
    pub fn federation_config(&self, i: usize) -> FederationConfig {
        let s = &self.specs[i];
        let mut c = FederationConfig::new(&s.name, &s.network);
        c.global_services = global_services(&population(&s.name, s.index, &s.network));
        c.gateway = Some(GatewayTarget {
            address: host(s.index),
            hbone_port: 15008,
        });
        c.grace_period = s.grace;
        c.grace_check_interval = Duration::from_millis(100);
        c.peers = self
            .specs
            .iter()
            .filter(|p| p.name != s.name)
            .map(|p| PeerPolicy {
                cluster: p.name.clone(),
                network: p.network.clone(),
                identity: peerd_identity(&p.name),
                flat: p.network == s.network,
                prefers_node_port: false,
                max_resources: s
                    .peer_caps
                    .iter()
                    .find(|(n, _)| *n == p.name)
                    .map_or(100_000, |(_, cap)| *cap),
                max_bytes: 64 << 20,
            })
            .collect();
        c
    }

    /// Starts cluster `name`: local population synced into the store (unless
    /// `local_synced` is false), federation, server, clients.
    pub async fn start(&mut self, name: &str, local_synced: bool) -> Cluster {
        let (i, spec) = self.spec(name);
        let spec = spec.clone();
        let config = self.federation_config(i);
        let ca = self.pki.cluster_ca(&spec.name).unwrap();
        let identity = identity(
            self.pki.dir(),
            &ca,
            &spec.name,
            &trust_domain(&spec.name),
            spec.index,
        );
        let store = Store::new();
        let fed = Federation::new(config, Arc::clone(&store));
        let cancel = CancellationToken::new();
        tokio::spawn(Arc::clone(&fed).run(cancel.clone()));
        if local_synced {
            feed_local(&store, &spec);
        }
        let listener = match self.listeners[i].take() {
            Some(l) => l,
            None => TcpListener::bind(self.addrs[i]).await.unwrap(),
        };
        let tls = server_config(
            identity.cert.clone(),
            &ServerTlsOptions {
                client_auth: ClientAuth::Optional(Arc::clone(&identity.roots).into()),
                allow_tls12: false,
            },
        )
        .unwrap();
        let server = AdsServer::new(
            fed.selector(Some(Arc::new(StaticTokenVerifier::from_literal(
                TOKEN, "ztunnel",
            )))),
            ServerOptions::default(),
        );
        let sd = cancel.clone();
        tokio::spawn(async move { server.serve(listener, tls, sd).await });
        let mut clients = Vec::new();
        for peer in &spec.imports {
            let (j, p) = self.spec(peer);
            let tls = client_config(
                &ClientTlsOptions::new(
                    Arc::clone(&identity.roots),
                    ServerIdentity::Spiffe(peerd_identity(&p.name)),
                )
                .with_client_cert(identity.cert.clone()),
            )
            .unwrap();
            clients.push(start_client(
                &store,
                &fed,
                peer,
                self.addrs[j],
                tls,
                &cancel,
            ));
        }
        Cluster {
            spec,
            store,
            fed,
            addr: self.addrs[i],
            cancel,
            clients,
            identity,
        }
    }
}

/// Writes the cluster's population as its local istiod would, and marks it synced.
pub fn feed_local(store: &Store, spec: &Spec) {
    let p = population(&spec.name, spec.index, &spec.network);
    store.apply(
        &spec.name,
        ResourceType::Address,
        p.address_resources().unwrap(),
        vec![],
    );
    store.apply(
        &spec.name,
        ResourceType::Authorization,
        p.authorization_resources().unwrap(),
        vec![],
    );
    store.mark_synced(&spec.name, ResourceType::Address);
    store.mark_synced(&spec.name, ResourceType::Authorization);
}

pub fn client_options(
    peer: &str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> ClientOptions {
    let mut o = ClientOptions::new(peer, addr.to_string(), addr.ip().to_string(), tls);
    o.backoff_initial = Duration::from_millis(50);
    o.backoff_max = Duration::from_millis(400);
    o.connect_timeout = Duration::from_secs(10);
    o
}

pub fn start_client(
    store: &Arc<Store>,
    fed: &Federation,
    peer: &str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    parent: &CancellationToken,
) -> Client {
    let cancel = parent.child_token();
    let client = AdsClient::new(client_options(peer, addr, tls), Arc::clone(store))
        .with_filter(fed.import_filter(peer).unwrap());
    let failure = client.failure_handle();
    client.spawn(cancel.clone());
    Client {
        peer: peer.to_string(),
        failure,
        cancel,
    }
}

/// Logs to the test's captured output, filtered by `RUST_LOG` (shown when a test fails).
pub fn init_test_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it holds or [`WAIT`] passes.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
