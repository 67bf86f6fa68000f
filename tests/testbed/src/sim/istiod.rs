//! The simulated istiod's data and credentials: options, its TLS directory (serving
//! certificate for the listen IP and `istiod.istio-system.svc`, root, bearer token),
//! the generated population published in a [`View`], and churn.
//!
//! Serving delta xDS is not done here: [`SimIstiod::serve`] hands a [`ServeContext`]
//! (listen address, view, TLS config, token check) to a caller-supplied function, which
//! the lead wires to `xds::server`. This file never listens on a non-loopback address
//! (options are validated) and never logs the token.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::sync::watch;
use x509_parser::extensions::GeneralName;

use super::churn::{ChangeObserver, Churn, ChurnOptions, ChurnStats};
use super::population::{MAX_CLUSTER_INDEX, Population, PopulationError, PopulationOptions};
use crate::pki::{CertificateAuthority, IssuedCert, LeafSpec, Pki, PkiError};
use peerd::identity::reload::CertSource;
use peerd::identity::tls::{
    CertFiles, ServerTlsOptions, TlsFileError, load_certified_key, load_certs, load_roots,
    server_config,
};
use peerd::view::View;
use peerd::xds::types::ResourceType;

/// istiod's in-cluster DNS name, the SAN ztunnel and peerd verify by default.
pub const ISTIOD_DNS_NAME: &str = "istiod.istio-system.svc";
pub const TOKEN_FILE: &str = "token";
/// Subdirectory of a standalone TLS dir holding the PKI that signed the serving cert.
pub const CA_SUBDIR: &str = "ca";

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(
        "listen: {0} is not a loopback address (the simulator only serves on 127.0.0.0/8 or ::1)"
    )]
    NotLoopback(SocketAddr),
    #[error(
        "cluster_index: cannot derive it from listen address {0}; expected 127.0.<k>.x with k in 1..={MAX_CLUSTER_INDEX}, or set it (`--cluster-index`)"
    )]
    NoClusterIndex(SocketAddr),
    #[error(transparent)]
    Population(#[from] PopulationError),
    #[error("tls_dir: {0}")]
    Pki(#[from] PkiError),
    #[error("tls_dir: {0}")]
    Tls(#[from] TlsFileError),
    #[error("tls_dir: {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("tls_dir: {path}: token file is empty")]
    EmptyToken { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimIstiodOptions {
    pub listen: SocketAddr,
    pub cluster: String,
    /// 1-based cluster index selecting the loopback blocks; `None` derives it from a
    /// listen address `127.0.<k>.x`.
    pub cluster_index: Option<u8>,
    pub network: String,
    pub trust_domain: String,
    pub workloads: usize,
    pub services: usize,
    pub churn_per_sec: f64,
    pub tls_dir: PathBuf,
    pub seed: u64,
    pub global_fraction: f64,
    /// Share of the population with waypoints and the richer istiod fields
    /// ([`crate::sim::realism`]).
    pub realistic_fraction: f64,
}

impl SimIstiodOptions {
    /// A small default population (100 workloads, 20 services, 10 changes/s, a fifth
    /// global, a fifth with waypoints and the richer fields) on `listen`.
    pub fn new(cluster: &str, listen: SocketAddr, tls_dir: &Path) -> SimIstiodOptions {
        SimIstiodOptions {
            listen,
            cluster: cluster.to_string(),
            cluster_index: None,
            network: format!("{cluster}-network"),
            trust_domain: "cluster.local".to_string(),
            workloads: 100,
            services: 20,
            churn_per_sec: 10.0,
            tls_dir: tls_dir.to_path_buf(),
            seed: 1,
            global_fraction: 0.2,
            realistic_fraction: 0.2,
        }
    }

    /// The cluster index in use: the one set, else k of a listen address `127.0.<k>.x`.
    pub fn resolved_cluster_index(&self) -> Result<u8, SimError> {
        if let Some(k) = self.cluster_index {
            return Ok(k);
        }
        match self.listen.ip() {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                if o[0] == 127 && o[1] == 0 && (1..=MAX_CLUSTER_INDEX).contains(&o[2]) {
                    Ok(o[2])
                } else {
                    Err(SimError::NoClusterIndex(self.listen))
                }
            }
            IpAddr::V6(_) => Err(SimError::NoClusterIndex(self.listen)),
        }
    }
}

/// A bearer token the simulator accepts. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Arc<str>);

impl BearerToken {
    pub fn new(token: &str) -> BearerToken {
        BearerToken(Arc::from(token))
    }

    /// The token itself (to put in a client's `authorization` header).
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Checks an `authorization` header value (`Bearer <token>`), in constant time for
    /// equal lengths.
    pub fn accepts_header(&self, header: &str) -> bool {
        let Some(presented) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
        else {
            return false;
        };
        let (a, b) = (presented.trim().as_bytes(), self.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// The files of a simulated istiod's TLS directory.
#[derive(Debug, Clone)]
pub struct TlsBootstrap {
    pub dir: PathBuf,
    /// `root-cert.pem`, `cert-chain.pem`, `key.pem` in `dir`.
    pub files: CertFiles,
    pub token_path: PathBuf,
    pub token: BearerToken,
}

/// Prepares `dir` for a simulated istiod listening on `listen_ip`: creates it when
/// missing; issues `root-cert.pem`, `cert-chain.pem`, `key.pem` (server cert with SANs
/// `listen_ip` and `istiod.istio-system.svc`) from a PKI kept in `dir/ca/` (root + the
/// cluster's intermediate); writes a random `token`. Files already present and usable
/// (the certificate covering `listen_ip`) are reused.
pub fn bootstrap_tls_dir(
    dir: &Path,
    cluster: &str,
    listen_ip: IpAddr,
) -> Result<TlsBootstrap, SimError> {
    bootstrap(dir, listen_ip, |spec| {
        let pki = Pki::load_or_create(&dir.join(CA_SUBDIR), "peerd simulated root CA")?;
        Ok(pki.cluster_ca(cluster)?.issue(spec)?)
    })
}

/// Like [`bootstrap_tls_dir`], signing with `ca` (e.g. the sandbox's cluster
/// intermediate, so the serving cert chains to the sandbox root).
pub fn bootstrap_tls_dir_with_ca(
    dir: &Path,
    ca: &CertificateAuthority,
    listen_ip: IpAddr,
) -> Result<TlsBootstrap, SimError> {
    bootstrap(dir, listen_ip, |spec| Ok(ca.issue(spec)?))
}

fn bootstrap(
    dir: &Path,
    listen_ip: IpAddr,
    issue: impl FnOnce(&LeafSpec) -> Result<IssuedCert, SimError>,
) -> Result<TlsBootstrap, SimError> {
    std::fs::create_dir_all(dir).map_err(|source| SimError::Io {
        path: dir.to_path_buf(),
        what: "create directory",
        source,
    })?;
    let files = CertFiles::in_dir(dir);
    if !serving_files_usable(&files, listen_ip) {
        let leaf = issue(
            &LeafSpec::server(ISTIOD_DNS_NAME)
                .with_dns(ISTIOD_DNS_NAME)
                .with_ip(listen_ip),
        )?;
        leaf.write_to(dir)?;
        tracing::info!(dir = %dir.display(), %listen_ip, "issued simulated istiod serving certificate");
    }
    // Validate what is now on disk (reused or fresh) with errors naming the file.
    load_roots(&files.root)?;
    load_certified_key(&files.cert_chain, &files.key)?;
    let token_path = dir.join(TOKEN_FILE);
    let token = load_or_create_token(&token_path)?;
    Ok(TlsBootstrap {
        dir: dir.to_path_buf(),
        files,
        token_path,
        token,
    })
}

fn serving_files_usable(files: &CertFiles, listen_ip: IpAddr) -> bool {
    if load_roots(&files.root).is_err()
        || load_certified_key(&files.cert_chain, &files.key).is_err()
    {
        return false;
    }
    let Ok(chain) = load_certs(&files.cert_chain) else {
        return false;
    };
    chain
        .first()
        .is_some_and(|leaf| cert_has_ip_san(leaf, listen_ip))
}

fn cert_has_ip_san(der: &[u8], ip: IpAddr) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let want: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    san.value
        .general_names
        .iter()
        .any(|n| matches!(n, GeneralName::IPAddress(b) if *b == want.as_slice()))
}

fn load_or_create_token(path: &Path) -> Result<BearerToken, SimError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() {
                return Err(SimError::EmptyToken {
                    path: path.to_path_buf(),
                });
            }
            Ok(BearerToken::new(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes: [u8; 32] = rand::random();
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let io = |what, source| SimError::Io {
                path: path.to_path_buf(),
                what,
                source,
            };
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| io("create token file", e))?;
            std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())
                .map_err(|e| io("write token file", e))?;
            Ok(BearerToken::new(&token))
        }
        Err(source) => Err(SimError::Io {
            path: path.to_path_buf(),
            what: "read token file",
            source,
        }),
    }
}

/// What a serving function gets: everything needed to run the xDS server.
#[derive(Clone)]
pub struct ServeContext {
    pub listen: SocketAddr,
    pub view: Arc<View>,
    pub tls: Arc<ServerConfig>,
    /// Reloading source behind `tls` (already watched by `serve`).
    pub cert_source: Arc<CertSource>,
    pub token: BearerToken,
    pub shutdown: watch::Receiver<bool>,
}

/// A simulated istiod: its population in a view, credentials, and churn.
pub struct SimIstiod {
    pub options: SimIstiodOptions,
    pub view: Arc<View>,
    pub global_services: BTreeSet<String>,
    pub tls: TlsBootstrap,
    pub churn_stats: Arc<ChurnStats>,
    churn: Option<Churn>,
}

impl fmt::Debug for SimIstiod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimIstiod")
            .field("cluster", &self.options.cluster)
            .field("listen", &self.options.listen)
            .finish_non_exhaustive()
    }
}

impl SimIstiod {
    /// The population the options describe (refused unless the listen address is loopback).
    fn population(options: &SimIstiodOptions) -> Result<Population, SimError> {
        if !options.listen.ip().is_loopback() {
            return Err(SimError::NotLoopback(options.listen));
        }
        let cluster_index = options.resolved_cluster_index()?;
        let population_options = PopulationOptions {
            network: options.network.clone(),
            trust_domain: options.trust_domain.clone(),
            global_fraction: options.global_fraction,
            realistic_fraction: options.realistic_fraction,
            ..PopulationOptions::new(
                &options.cluster,
                cluster_index,
                options.workloads,
                options.services,
                options.seed,
            )
        };
        Ok(Population::generate(&population_options)?)
    }

    /// Validates options, prepares the TLS dir, generates the population and publishes
    /// it in a new view (churn is not started).
    pub fn new(options: SimIstiodOptions) -> Result<SimIstiod, SimError> {
        let population = Self::population(&options)?;
        let tls = bootstrap_tls_dir(&options.tls_dir, &options.cluster, options.listen.ip())?;
        Self::assemble(options, population, tls)
    }

    /// Like [`new`](Self::new) with the serving certificate signed by `ca` (the
    /// sandbox's cluster intermediate).
    pub fn new_with_ca(
        options: SimIstiodOptions,
        ca: &CertificateAuthority,
    ) -> Result<SimIstiod, SimError> {
        let population = Self::population(&options)?;
        let tls = bootstrap_tls_dir_with_ca(&options.tls_dir, ca, options.listen.ip())?;
        Self::assemble(options, population, tls)
    }

    fn assemble(
        options: SimIstiodOptions,
        population: Population,
        tls: TlsBootstrap,
    ) -> Result<SimIstiod, SimError> {
        let view = View::new(format!("sim-istiod/{}", options.cluster));
        view.apply(ResourceType::Address, population.address_resources()?, []);
        view.apply(
            ResourceType::Authorization,
            population.authorization_resources()?,
            [],
        );
        let global_services = population.global_services().clone();
        let churn = Churn::new(
            population,
            Arc::clone(&view),
            ChurnOptions::new(options.churn_per_sec, options.seed, options.workloads),
        );
        Ok(SimIstiod {
            churn_stats: churn.stats(),
            churn: Some(churn),
            options,
            view,
            global_services,
            tls,
        })
    }

    /// Reports every published churn batch to `observer` (call before starting churn).
    pub fn set_churn_observer(&mut self, observer: ChangeObserver) {
        if let Some(churn) = self.churn.take() {
            self.churn = Some(churn.with_observer(observer));
        }
    }

    /// Starts churn on the current runtime; `None` if it was already started.
    pub fn start_churn(
        &mut self,
        shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<Churn>> {
        let churn = self.churn.take()?;
        Some(tokio::spawn(churn.run(shutdown)))
    }

    /// A TLS server config presenting the TLS dir's certificate (reloaded on change
    /// while the returned source is watched), no client certificates, ALPN h2.
    pub fn server_tls(&self) -> Result<(Arc<ServerConfig>, Arc<CertSource>), SimError> {
        let source = CertSource::from_files(&self.tls.files.cert_chain, &self.tls.files.key)?;
        let config = server_config(source.clone(), &ServerTlsOptions::default())?;
        Ok((config, source))
    }

    /// Starts churn, then runs `serve_fn` with a [`ServeContext`] until it returns.
    /// The lead wires `serve_fn` to `xds::server`.
    pub async fn serve<F, Fut, T>(
        mut self,
        shutdown: watch::Receiver<bool>,
        serve_fn: F,
    ) -> Result<T, SimError>
    where
        F: FnOnce(ServeContext) -> Fut,
        Fut: Future<Output = T>,
    {
        let (tls, cert_source) = self.server_tls()?;
        let _watch = cert_source.watch(std::time::Duration::from_secs(5));
        let _churn = self.start_churn(shutdown.clone());
        let context = ServeContext {
            listen: self.options.listen,
            view: Arc::clone(&self.view),
            tls,
            cert_source,
            token: self.tls.token.clone(),
            shutdown,
        };
        Ok(serve_fn(context).await)
    }
}

/// Serves a [`ServeContext`] with the real delta-xDS server: TLS, bearer token required
/// (the token in the TLS dir), until shutdown. This is what `peerd-sandbox sim istiod` runs.
pub async fn serve_xds(
    context: ServeContext,
    options: peerd::xds::server::ServerOptions,
) -> anyhow::Result<()> {
    use peerd::xds::auth::{BearerTokenSelector, StaticTokenVerifier};
    let verifier = StaticTokenVerifier::from_literal(context.token.secret(), "sim-client");
    let selector = Arc::new(BearerTokenSelector {
        verifier: Arc::new(verifier),
        view: Arc::clone(&context.view),
        label: context.view.label().to_string(),
    });
    let server = peerd::xds::server::AdsServer::new(selector, options);
    let listener = tokio::net::TcpListener::bind(context.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding simulated istiod on {}: {e}", context.listen))?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut shutdown = context.shutdown.clone();
    let stop = cancel.clone();
    tokio::spawn(async move {
        // Either a `true` or a dropped sender ends serving.
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        stop.cancel();
    });
    server.serve(listener, context.tls, cancel).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use peerd::identity::classify::dial;
    use peerd::identity::tls::{ClientTlsOptions, ServerIdentity, client_config};

    fn listen(k: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, k, 1], 15012))
    }

    #[test]
    fn bootstrap_creates_then_reuses_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("istiod-tls"); // does not exist yet
        let ip = listen(1).ip();
        let first = bootstrap_tls_dir(&dir, "cluster-1", ip).unwrap();
        for f in ["root-cert.pem", "cert-chain.pem", "key.pem", "token"] {
            assert!(dir.join(f).is_file(), "{f} written");
        }
        let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("key.pem"), 0o600);
        assert_eq!(mode("token"), 0o600);
        assert!(first.token.secret().len() >= 32);
        assert!(
            !format!("{first:?}").contains(first.token.secret()),
            "token not in Debug"
        );

        let chain = load_certs(&first.files.cert_chain).unwrap();
        assert!(cert_has_ip_san(&chain[0], ip));
        let names = x509_names(&chain[0]);
        assert!(names.contains(&ISTIOD_DNS_NAME.to_string()), "{names:?}");

        let before: Vec<Vec<u8>> = ["root-cert.pem", "cert-chain.pem", "key.pem", "token"]
            .iter()
            .map(|f| std::fs::read(dir.join(f)).unwrap())
            .collect();
        let second = bootstrap_tls_dir(&dir, "cluster-1", ip).unwrap();
        let after: Vec<Vec<u8>> = ["root-cert.pem", "cert-chain.pem", "key.pem", "token"]
            .iter()
            .map(|f| std::fs::read(dir.join(f)).unwrap())
            .collect();
        assert_eq!(before, after, "existing files are reused");
        assert_eq!(second.token, first.token);

        // A different listen IP needs a new serving cert from the same root.
        let third = bootstrap_tls_dir(&dir, "cluster-1", listen(2).ip()).unwrap();
        let chain = load_certs(&third.files.cert_chain).unwrap();
        assert!(cert_has_ip_san(&chain[0], listen(2).ip()));
        assert_eq!(
            std::fs::read(dir.join("root-cert.pem")).unwrap(),
            before[0],
            "same root"
        );
        assert_eq!(third.token, first.token);
    }

    fn x509_names(der: &[u8]) -> Vec<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        cert.subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn bootstrap_rejects_empty_token_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("token"), "\n").unwrap();
        let err = bootstrap_tls_dir(tmp.path(), "c", listen(1).ip()).unwrap_err();
        assert!(err.to_string().contains("token file is empty"), "{err}");
    }

    #[test]
    fn bearer_token_check() {
        let t = BearerToken::new("abc123");
        assert!(t.accepts_header("Bearer abc123"));
        assert!(!t.accepts_header("Bearer abc124"));
        assert!(!t.accepts_header("Bearer abc12"));
        assert!(!t.accepts_header("abc123"));
        assert_eq!(format!("{t:?}"), "BearerToken(<redacted>)");
    }

    #[test]
    fn options_are_validated() {
        let tmp = tempfile::tempdir().unwrap();
        let outside =
            SimIstiodOptions::new("c", SocketAddr::from(([10, 0, 0, 1], 15012)), tmp.path());
        assert!(matches!(
            SimIstiod::new(outside),
            Err(SimError::NotLoopback(_))
        ));
        let no_index =
            SimIstiodOptions::new("c", SocketAddr::from(([127, 0, 0, 1], 15012)), tmp.path());
        let err = SimIstiod::new(no_index).unwrap_err();
        assert!(err.to_string().starts_with("cluster_index"), "{err}");
    }

    #[tokio::test]
    async fn sim_istiod_publishes_population_and_serves_tls_with_its_cert() {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = SimIstiodOptions::new("cluster-3", listen(3), &tmp.path().join("tls"));
        o.workloads = 60;
        o.services = 12;
        o.global_fraction = 0.5;
        o.churn_per_sec = 200.0;
        // Plain shapes: a realistic share adds waypoint Services to the count.
        o.realistic_fraction = 0.0;
        let sim = SimIstiod::new(o).unwrap();
        let (w, s, a) = sim.view.snapshot().counts();
        assert_eq!((w, s), (60, 12));
        assert!(a > 0);
        assert!(!sim.global_services.is_empty());
        for r in sim
            .view
            .snapshot()
            .resources(ResourceType::Address)
            .values()
        {
            if let Some(wl) = r.as_workload() {
                assert_eq!(&*wl.cluster_id, "cluster-3");
                assert_eq!(&*wl.network, "cluster-3-network");
            }
        }

        // The serve hook gets a working TLS config: a real handshake on loopback,
        // verified against the TLS dir's root by IP and by istiod's DNS name. Binding
        // port 0 on the same IP keeps parallel tests apart.
        let roots = load_roots(&sim.tls.files.root).unwrap();
        let stats = sim.churn_stats.clone();
        let view = sim.view.clone();
        let (stop, shutdown) = watch::channel(false);
        let served = sim
            .serve(shutdown, |ctx| async move {
                assert!(
                    ctx.token
                        .accepts_header(&format!("Bearer {}", ctx.token.secret()))
                );
                let listener = tokio::net::TcpListener::bind((ctx.listen.ip(), 0))
                    .await
                    .unwrap();
                let addr = listener.local_addr().unwrap();
                let acceptor = tokio_rustls::TlsAcceptor::from(ctx.tls.clone());
                let server = tokio::spawn(async move {
                    for _ in 0..2 {
                        let (tcp, _) = listener.accept().await.unwrap();
                        acceptor.accept(tcp).await.unwrap();
                    }
                });
                for name in ["127.0.3.1", ISTIOD_DNS_NAME] {
                    let client =
                        client_config(&ClientTlsOptions::new(roots.clone(), ServerIdentity::Name))
                            .unwrap();
                    let server_name =
                        rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
                    dial(addr, server_name, client, Duration::from_secs(20))
                        .await
                        .unwrap();
                }
                server.await.unwrap();
                // Churn runs while serving.
                let mut changes = ctx.view.subscribe();
                tokio::time::timeout(Duration::from_secs(30), async {
                    while stats.changes() == 0 {
                        let _ = changes.recv().await;
                    }
                })
                .await
                .unwrap();
                stop.send(true).unwrap();
                addr
            })
            .await
            .unwrap();
        assert_eq!(served.ip(), listen(3).ip());
        assert!(view.snapshot().version > 2, "churn published changes");
    }

    #[test]
    fn sandbox_ca_signs_the_serving_cert() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(&tmp.path().join("pki"), "sandbox root").unwrap();
        let ca = pki.cluster_ca("cluster-1").unwrap();
        let mut o = SimIstiodOptions::new("cluster-1", listen(1), &tmp.path().join("c1"));
        o.workloads = 5;
        o.services = 2;
        let sim = SimIstiod::new_with_ca(o, &ca).unwrap();
        assert_eq!(
            std::fs::read(&sim.tls.files.root).unwrap(),
            std::fs::read(pki.root_cert_path()).unwrap()
        );
        let chain = load_certs(&sim.tls.files.cert_chain).unwrap();
        assert_eq!(&chain[1], ca.cert_der());
    }
}
