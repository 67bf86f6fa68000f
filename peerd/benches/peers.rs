//! `cargo xtask bench peers`: how peerd grows with the number of peers. One local cluster
//! (a simulated istiod, modest size, in this process) and many peers against one real
//! `peerd` child process configured with all of them (a standalone config file, as the
//! federation bench writes it), and a ztunnel-like client (bearer token) on its merged view.
//!
//! The peers are in-process servers standing in for remote peerds. Each is a simulated
//! population whose services are all global, turned into its export view by peerd's own
//! export code (`federation::Exporter`: global services renamed
//! `<svc>.<ns>.mesh.internal`, workloads carrying the peer's `cluster_id`, network and
//! east-west gateway), kept current by following churn on the population's view, and
//! served by peerd's own delta-xDS server over mTLS with the peerd server identity; a
//! connection must present our peerd's client identity. Every peer is on its own network
//! (the gateway form): populations reuse the simulator's 31 loopback pod blocks, and
//! separate networks keep the repeated pod IPs apart, as separate clusters do.
//!
//! Addresses: the local cluster on 127.0.100.1, peer p on 127.0.(100+p).1 (p = 1..=50),
//! the single-peer baseline on 127.0.151.1; ports picked free at start. Probes are off.
//!
//! Figures: time from peerd's start to the full merged view at the client (every name the
//! local istiod and the peers' export views hold, churn off), peerd's RSS after the first
//! view and after steady churn, and its CPU per second of steady churn (every peer
//! churning at the same rate), then whether the client converged to exactly the expected
//! view after churn. Baseline measured in the same run: the same local cluster and the
//! same total of peer workloads and churn from ONE peer, so the ratios show what the
//! number of peers itself costs.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use peerd::config::ServiceRef;
use peerd::config::file::{
    AuthFile, BackoffFile, CapsFile, EastWestGatewayFile, ExportFile, FileConfig, ListenersFile,
    PeerFile, ProbeFile, ServerTlsFile, UpstreamFile, XdsServerFile,
};
use peerd::federation::{ExportFlavor, Exporter, FederationConfig, GatewayTarget, PeerPolicy};
use peerd::identity::reload::CertSource;
use peerd::identity::spiffe::SpiffeId;
use peerd::identity::tls::{
    ClientAuth, ClientTlsOptions, ServerIdentity, ServerTlsOptions, client_config, load_roots,
    peer_spiffe_ids, server_config,
};
use peerd::proto::envoy::service::discovery::v3 as discovery;
use peerd::view::View;
use peerd::xds::auth::{ConnectionInfo, Selected, ViewSelector};
use peerd::xds::server::{AdsServer, ServerOptions};
use peerd::xds::types::ResourceType;
use peerd_testbed::pki::{LeafSpec, Pki};
use peerd_testbed::sandbox::cluster::{TRUST_DOMAIN, peerd_identity};
use peerd_testbed::sim::churn::{Churn, ChurnOptions};
use peerd_testbed::sim::istiod::{ISTIOD_DNS_NAME, SimIstiod, SimIstiodOptions, serve_xds};
use peerd_testbed::sim::population::{MAX_CLUSTER_INDEX, Population, PopulationOptions};
use support::child::{Peerd, free_addr};
use support::{Args, Goal, Report};

const LOCAL: &str = "local";
const SEED: u64 = 7;
/// Hosts: the local cluster on 127.0.100.1, peer p on 127.0.(100+p).1.
const HOST_BASE: u8 = 100;
const WAIT: Duration = Duration::from_secs(300);
const HBONE_PORT: u16 = 15008;

struct Size {
    quick: bool,
    peers: usize,
    workloads_per_peer: usize,
    local_workloads: usize,
    local_services: usize,
    churn_per_peer: f64,
    churn_seconds: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = if args.quick {
        Size {
            quick: true,
            peers: 10,
            workloads_per_peer: 500,
            local_workloads: 500,
            local_services: 50,
            churn_per_peer: 10.0,
            churn_seconds: 4.0,
        }
    } else {
        Size {
            quick: false,
            peers: 50,
            workloads_per_peer: 2_000,
            local_workloads: 2_000,
            local_services: 200,
            churn_per_peer: 10.0,
            churn_seconds: 20.0,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&size))?;
    report.emit(&args)?;
    println!(
        "baseline: the same local cluster with the same total of peer workloads ({} x {}) \
         and the same total churn from ONE peer, measured in this run. Peers: in-process \
         export servers built with peerd's own Exporter, each on its own network.",
        size.peers, size.workloads_per_peer
    );
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn host(offset: usize) -> anyhow::Result<IpAddr> {
    let third = u8::try_from(usize::from(HOST_BASE) + offset).context("too many peers")?;
    Ok(IpAddr::V4(Ipv4Addr::new(127, 0, third, 1)))
}

/// Serves one view to a client whose certificate carries `allowed` (our peerd's identity),
/// as a remote peerd's selector serves its export view to us.
struct PeerClientOnly {
    view: Arc<View>,
    allowed: SpiffeId,
}

#[tonic::async_trait]
impl ViewSelector for PeerClientOnly {
    async fn select(&self, conn: &ConnectionInfo) -> Result<Selected, tonic::Status> {
        let presented = peer_spiffe_ids(conn.peer_certificates.as_deref().map(Vec::as_slice));
        if !presented.contains(&self.allowed) {
            return Err(tonic::Status::permission_denied(
                "not the local cluster's peerd",
            ));
        }
        Ok(Selected {
            view: Arc::clone(&self.view),
            label: ExportFlavor::Gateway.label().to_string(),
            identity: self.allowed.to_string(),
        })
    }
}

/// One simulated peer: its population's view, the export view served, churn.
struct SimPeer {
    cluster: String,
    network: String,
    addr: SocketAddr,
    export: Arc<View>,
    churn: Option<Churn>,
}

struct PeerSpec {
    /// 1-based position, selecting the host.
    slot: usize,
    cluster: String,
    workloads: usize,
}

/// What every peer server shares: its TLS config (the peerd server identity, client
/// certificates required) and the identity a client must present.
struct PeerServing {
    tls: Arc<rustls::ServerConfig>,
    local_identity: SpiffeId,
    local_network: String,
}

async fn start_peer(
    spec: &PeerSpec,
    serving: &PeerServing,
    churn_per_sec: f64,
    cancel: &CancellationToken,
) -> anyhow::Result<SimPeer> {
    let host = host(spec.slot)?;
    let network = format!("{}-network", spec.cluster);
    let index = u8::try_from((spec.slot - 1) % usize::from(MAX_CLUSTER_INDEX) + 1)?;
    let seed = SEED + spec.slot as u64;
    let population = Population::generate(&PopulationOptions {
        network: network.clone(),
        trust_domain: TRUST_DOMAIN.into(),
        global_fraction: 1.0,
        ..PopulationOptions::new(
            &spec.cluster,
            index,
            spec.workloads,
            (spec.workloads / 10).max(1),
            seed,
        )
    })?;
    let source = View::new(format!("sim-peer/{}", spec.cluster));
    source.apply(ResourceType::Address, population.address_resources()?, []);
    let global_services = population
        .global_services()
        .iter()
        .filter_map(|g| g.split_once('/'))
        .map(|(namespace, name)| ServiceRef {
            namespace: namespace.into(),
            name: name.into(),
        })
        .collect::<BTreeSet<_>>();
    let mut config = FederationConfig::new(&spec.cluster, &network);
    config.global_services = global_services;
    config.gateway = Some(GatewayTarget {
        address: host,
        hbone_port: HBONE_PORT,
    });
    config.peers = vec![PeerPolicy {
        cluster: LOCAL.into(),
        network: serving.local_network.clone(),
        identity: serving.local_identity.clone(),
        flat: false,
        prefers_node_port: false,
        max_resources: usize::MAX,
        max_bytes: usize::MAX,
    }];
    let exporter = Arc::new(Exporter::new(&config));
    // Subscribe before the first export, so no change of the source is missed.
    let mut changes = source.subscribe();
    let snapshot = source.snapshot();
    let names: Vec<Arc<str>> = snapshot
        .resources(ResourceType::Address)
        .keys()
        .cloned()
        .collect();
    exporter.on_local_change(&snapshot, ResourceType::Address, &names);
    let follower = {
        let (exporter, source, cancel) =
            (Arc::clone(&exporter), Arc::clone(&source), cancel.clone());
        async move {
            loop {
                let change = tokio::select! {
                    _ = cancel.cancelled() => return,
                    c = changes.recv() => c,
                };
                match change {
                    Ok(c) => {
                        exporter.on_local_change(&source.snapshot(), c.kind, &c.names);
                    }
                    Err(RecvError::Lagged(_)) => {
                        eprintln!("peers bench: an export follower lagged; its view is stale");
                        return;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        }
    };
    tokio::spawn(follower);
    let export = Arc::clone(exporter.view(ExportFlavor::Gateway));
    let selector = Arc::new(PeerClientOnly {
        view: Arc::clone(&export),
        allowed: serving.local_identity.clone(),
    });
    let listener = tokio::net::TcpListener::bind((host, 0))
        .await
        .with_context(|| format!("binding {host}"))?;
    let addr = listener.local_addr()?;
    let server = AdsServer::new(selector, ServerOptions::default());
    let (tls, cancel) = (Arc::clone(&serving.tls), cancel.clone());
    tokio::spawn(async move {
        if let Err(e) = server.serve(listener, tls, cancel).await {
            eprintln!("peers bench: peer server: {e:#}");
        }
    });
    let churn = Churn::new(
        population,
        source,
        ChurnOptions::new(churn_per_sec, seed, spec.workloads),
    );
    Ok(SimPeer {
        cluster: spec.cluster.clone(),
        network,
        addr,
        export,
        churn: Some(churn),
    })
}

fn some(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

/// What the local peerd needs to know about the local cluster.
struct Local {
    host: IpAddr,
    network: String,
    sim_addr: SocketAddr,
    view: Arc<View>,
    istiod_token: std::path::PathBuf,
    peerd_tls: std::path::PathBuf,
}

fn peerd_config(
    local: &Local,
    peers: &[SimPeer],
    listeners: [SocketAddr; 4],
    root: &Path,
    token: &Path,
) -> FileConfig {
    let peers = peers
        .iter()
        .map(|p| PeerFile {
            cluster: some(&p.cluster),
            network: some(&p.network),
            address: some(p.addr.ip().to_string()),
            port: Some(p.addr.port()),
            hbone_port: Some(HBONE_PORT),
            trust_domain: some(TRUST_DOMAIN),
            server_identity: some(peerd_identity()),
            // The single-peer baseline holds every peer workload of the run.
            caps: CapsFile {
                max_resources: Some(1_000_000),
                max_bytes: Some(1 << 30),
            },
            ..PeerFile::default()
        })
        .collect();
    let [xds, metrics, health, debug] = listeners;
    FileConfig {
        cluster: some(LOCAL),
        network: some(&local.network),
        trust_domain: some(TRUST_DOMAIN),
        sandbox_mode: Some(true),
        listeners: ListenersFile {
            xds: some(xds.to_string()),
            metrics: some(metrics.to_string()),
            health: some(health.to_string()),
            debug: some(debug.to_string()),
        },
        xds: XdsServerFile {
            tls: ServerTlsFile {
                cert_chain: Some(local.peerd_tls.join("cert-chain.pem")),
                key: Some(local.peerd_tls.join("key.pem")),
                root: Some(root.to_path_buf()),
            },
            auth: AuthFile {
                token_file: Some(token.to_path_buf()),
                ..AuthFile::default()
            },
            ..XdsServerFile::default()
        },
        upstreams: vec![UpstreamFile {
            name: some(LOCAL),
            address: some(local.sim_addr.to_string()),
            server_name: some(ISTIOD_DNS_NAME),
            root_ca: Some(root.to_path_buf()),
            token_file: Some(local.istiod_token.clone()),
            backoff: BackoffFile {
                initial: some("100ms"),
                max: some("2s"),
            },
            ..UpstreamFile::default()
        }],
        peers,
        export: ExportFile {
            global_services: Vec::new(),
            east_west_gateway: EastWestGatewayFile {
                address: some(local.host.to_string()),
                hbone_port: Some(HBONE_PORT),
            },
        },
        probe: ProbeFile {
            enabled: Some(false),
            ..ProbeFile::default()
        },
        ..FileConfig::default()
    }
}

/// The names the client should hold: the local istiod's, and every peer's export view.
fn expected(local: &View, peers: &[SimPeer]) -> [HashSet<String>; 2] {
    let snapshot = local.snapshot();
    let mut want: [HashSet<String>; 2] = Default::default();
    for kind in ResourceType::ALL {
        want[kind.index()].extend(snapshot.resources(kind).keys().map(|n| n.to_string()));
    }
    for p in peers {
        let export = p.export.snapshot();
        want[ResourceType::Address.index()].extend(
            export
                .resources(ResourceType::Address)
                .keys()
                .map(|n| n.to_string()),
        );
    }
    want
}

/// What the ztunnel-like client holds.
type Held = Arc<Mutex<[HashSet<String>; 2]>>;

async fn downstream(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    token: String,
    held: Held,
) -> anyhow::Result<()> {
    let (tx, mut responses) =
        support::downstream::subscribe(addr, &addr.ip().to_string(), tls, &token).await?;
    while let Some(r) = responses.message().await? {
        let Some(kind) = ResourceType::from_type_url(&r.type_url) else {
            bail!("unexpected type {}", r.type_url)
        };
        {
            let mut held = lock(&held);
            let names = &mut held[kind.index()];
            for name in &r.removed_resources {
                names.remove(name);
            }
            for res in r.resources {
                names.insert(res.name);
            }
        }
        tx.send(discovery::DeltaDiscoveryRequest {
            type_url: r.type_url,
            response_nonce: r.nonce,
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}

fn holds(held: &Held, want: &[HashSet<String>; 2], exact: bool) -> bool {
    let held = lock(held);
    (0..2).all(|i| {
        (!exact || held[i].len() == want[i].len()) && want[i].iter().all(|n| held[i].contains(n))
    })
}

fn describe_difference(held: &Held, want: &[HashSet<String>; 2]) -> String {
    let held = lock(held);
    let mut out = String::new();
    for (i, (h, w)) in held.iter().zip(want).enumerate() {
        let missing: Vec<&String> = w.iter().filter(|n| !h.contains(*n)).take(3).collect();
        let extra: Vec<&String> = h.iter().filter(|n| !w.contains(*n)).take(3).collect();
        out.push_str(&format!(
            "\n  type {i}: held {}, want {}, e.g. missing {missing:?}, extra {extra:?}",
            h.len(),
            w.len()
        ));
    }
    out
}

/// Figures of one configuration (many peers, or the single-peer baseline).
struct Phase {
    peers: usize,
    served: usize,
    full_view: f64,
    exact_at_view: bool,
    rss_view: f64,
    rss_steady: f64,
    rss_peak: f64,
    cpu_to_view: f64,
    cpu_per_churn_second: f64,
    changes: u64,
    converged: Option<f64>,
}

/// Everything both phases share.
struct Rig {
    dir: std::path::PathBuf,
    root: std::path::PathBuf,
    token: String,
    token_file: std::path::PathBuf,
    local: Local,
    serving: PeerServing,
    client_tls: Arc<rustls::ClientConfig>,
}

async fn phase(
    rig: &Rig,
    name: &str,
    specs: &[PeerSpec],
    churn_per_peer: f64,
    churn_seconds: f64,
) -> anyhow::Result<Phase> {
    let cancel = CancellationToken::new();
    let _stop_servers = cancel.clone().drop_guard();
    let mut peers = Vec::new();
    for spec in specs {
        peers.push(start_peer(spec, &rig.serving, churn_per_peer, &cancel).await?);
    }
    let want = expected(&rig.local.view, &peers);
    let served = want[0].len() + want[1].len();
    let listeners = [
        free_addr(rig.local.host)?,
        free_addr(rig.local.host)?,
        free_addr(rig.local.host)?,
        free_addr(rig.local.host)?,
    ];
    let config = peerd_config(&rig.local, &peers, listeners, &rig.root, &rig.token_file);

    let started = Instant::now();
    let mut peerd = Peerd::start(&rig.dir.join(name), &config)?;
    let held: Held = Arc::default();
    let client = tokio::spawn(downstream(
        listeners[0],
        Arc::clone(&rig.client_tls),
        rig.token.clone(),
        Arc::clone(&held),
    ));
    let deadline = started + WAIT;
    while !holds(&held, &want, false) {
        if !peerd.alive() {
            bail!("{name}: peerd exited:\n{}", peerd.log_tail());
        }
        if Instant::now() > deadline || client.is_finished() {
            bail!(
                "{name}: no full merged view within {WAIT:?} (client ended: {}):{}\n{}",
                client.is_finished(),
                describe_difference(&held, &want),
                peerd.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let full_view = started.elapsed().as_secs_f64();
    let exact_at_view = holds(&held, &want, true);
    let pid = peerd.pid();
    let cpu_to_view = support::cpu_seconds(pid).unwrap_or(f64::NAN);
    // Let the sync's transient memory go back (mimalloc purges within 100 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_view = support::rss_mb(pid).unwrap_or(f64::NAN);

    let (stop_churn, churn_shutdown) = tokio::sync::watch::channel(false);
    let stats: Vec<_> = peers
        .iter()
        .filter_map(|p| p.churn.as_ref().map(Churn::stats))
        .collect();
    let cpu_before = support::cpu_seconds(pid).unwrap_or(f64::NAN);
    let churn_started = Instant::now();
    let tasks: Vec<_> = peers
        .iter_mut()
        .filter_map(|p| p.churn.take())
        .map(|c| tokio::spawn(c.run(churn_shutdown.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(churn_seconds)).await;
    let cpu_after = support::cpu_seconds(pid).unwrap_or(f64::NAN);
    let window = churn_started.elapsed().as_secs_f64();
    let _ = stop_churn.send(true);
    let churn_stopped = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let changes = stats.iter().map(|s| s.changes()).sum();
    let rss_steady = support::rss_mb(pid).unwrap_or(f64::NAN);

    // Convergence: the export followers run on this runtime, so the expected view is
    // read once they caught up (a short settle, then polled until it matches).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let converge_deadline = Instant::now() + Duration::from_secs(60);
    let converged = loop {
        let want = expected(&rig.local.view, &peers);
        if holds(&held, &want, true) {
            break Some(churn_stopped.elapsed().as_secs_f64());
        }
        if Instant::now() > converge_deadline {
            eprintln!(
                "{name}: the merged view did not converge after churn:{}",
                describe_difference(&held, &want)
            );
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rss_peak = support::peak_rss_mb(pid).unwrap_or(f64::NAN);
    client.abort();
    drop(peerd);
    Ok(Phase {
        peers: peers.len(),
        served,
        full_view,
        exact_at_view,
        rss_view,
        rss_steady,
        rss_peak,
        cpu_to_view,
        cpu_per_churn_second: (cpu_after - cpu_before) / window,
        changes,
        converged,
    })
}

async fn run(size: &Size) -> anyhow::Result<Report> {
    let nofile = support::child::raise_nofile_limit()?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::load_or_create(&dir.path().join("pki"), "peersbench root")?;
    let root = pki.root_cert_path();
    let token = "peersbench-token".to_string();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token)?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let identity: SpiffeId = peerd_identity().parse()?;

    // The local cluster: a simulated istiod and our peerd's certificate.
    let local_host = host(0)?;
    let local_dir = dir.path().join(LOCAL);
    let ca = pki.cluster_ca(LOCAL)?;
    let sim_addr = free_addr(local_host)?;
    let mut options = SimIstiodOptions::new(LOCAL, sim_addr, &local_dir.join("istiod"));
    options.cluster_index = Some(1);
    options.network = format!("{LOCAL}-network");
    options.workloads = size.local_workloads;
    options.services = size.local_services;
    options.churn_per_sec = 0.0;
    options.seed = SEED;
    let sim = SimIstiod::new_with_ca(options.clone(), &ca).context("simulated istiod")?;
    let peerd_tls = local_dir.join("peerd");
    ca.issue(
        &LeafSpec::workload(identity.clone())
            .with_ip(local_host)
            .with_dns("peerd.istio-system.svc"),
    )?
    .write_to(&peerd_tls)?;
    let local = Local {
        host: local_host,
        network: options.network.clone(),
        sim_addr,
        view: Arc::clone(&sim.view),
        istiod_token: sim.tls.token_path.clone(),
        peerd_tls,
    };
    tokio::spawn(sim.serve(shutdown, |ctx| serve_xds(ctx, Default::default())));

    // Every peer serves with one peerd certificate of another cluster CA under the same
    // root (the identity is what our peerd checks) and requires a client certificate.
    let peers_tls = dir.path().join("peer-tls");
    pki.cluster_ca("peers")?
        .issue(&LeafSpec::workload(identity.clone()).with_dns("peerd.istio-system.svc"))?
        .write_to(&peers_tls)?;
    let roots = load_roots(&root)?;
    let tls = server_config(
        CertSource::from_files(
            &peers_tls.join("cert-chain.pem"),
            &peers_tls.join("key.pem"),
        )?,
        &ServerTlsOptions {
            client_auth: ClientAuth::Required(Arc::clone(&roots).into()),
            allow_tls12: false,
        },
    )?;
    let client_tls = client_config(&ClientTlsOptions::new(
        rustls::RootCertStore::clone(&roots),
        ServerIdentity::Name,
    ))?;
    let rig = Rig {
        dir: dir.path().to_path_buf(),
        root,
        token,
        token_file,
        local,
        serving: PeerServing {
            tls,
            local_identity: identity,
            local_network: options.network.clone(),
        },
        client_tls,
    };

    let total = size.peers * size.workloads_per_peer;
    let baseline = phase(
        &rig,
        "one-peer",
        &[PeerSpec {
            slot: 51,
            cluster: "one-peer".into(),
            workloads: total,
        }],
        size.churn_per_peer * size.peers as f64,
        size.churn_seconds,
    )
    .await?;
    let specs: Vec<PeerSpec> = (1..=size.peers)
        .map(|p| PeerSpec {
            slot: p,
            cluster: format!("peer-{p}"),
            workloads: size.workloads_per_peer,
        })
        .collect();
    let many = phase(
        &rig,
        "many-peers",
        &specs,
        size.churn_per_peer,
        size.churn_seconds,
    )
    .await?;
    let _ = stop.send(true);

    let mut report = Report::new(
        "peers",
        format!(
            "local {} workloads + {} peers x {} exported workloads ({} names served); churn {}/s per peer for {:.0}s; baseline: 1 peer x {total}; nofile limit {nofile}",
            size.local_workloads,
            many.peers,
            size.workloads_per_peer,
            many.served,
            size.churn_per_peer,
            size.churn_seconds,
        ),
    );
    // Targets are stated for the full size; the quick size only keeps the bench alive.
    let full = !size.quick;
    let goal = |g: Goal| if full { g } else { Goal::None };
    report.row(
        "peerd start to full merged view (base: 1 peer)",
        many.full_view,
        "s",
        goal(Goal::Below(5.0)),
        Some(baseline.full_view),
    );
    report.row(
        "exactly the expected set at first view",
        f64::from(u8::from(many.exact_at_view && baseline.exact_at_view)),
        "bool",
        Goal::Above(0.5),
        None,
    );
    report.row(
        "peerd RSS after first view (base: 1 peer)",
        many.rss_view,
        "MB",
        Goal::None,
        Some(baseline.rss_view),
    );
    report.row(
        "peerd RSS at steady churn (base: 1 peer)",
        many.rss_steady,
        "MB",
        goal(Goal::Below(300.0)),
        Some(baseline.rss_steady),
    );
    report.row(
        "peerd peak RSS (base: 1 peer)",
        many.rss_peak,
        "MB",
        Goal::None,
        Some(baseline.rss_peak),
    );
    report.row(
        "peerd RSS per peer above the baseline",
        (many.rss_steady - baseline.rss_steady) / (many.peers.max(2) - 1) as f64,
        "MB",
        Goal::None,
        None,
    );
    report.row(
        "peerd CPU to first view (base: 1 peer)",
        many.cpu_to_view,
        "s",
        Goal::None,
        Some(baseline.cpu_to_view),
    );
    report.row(
        "peerd CPU per second of churn (base: 1 peer)",
        many.cpu_per_churn_second,
        "s/s",
        goal(Goal::Below(0.2)),
        Some(baseline.cpu_per_churn_second),
    );
    report.row(
        "churn changes applied (base: 1 peer)",
        many.changes as f64,
        "count",
        Goal::None,
        Some(baseline.changes as f64),
    );
    report.row(
        "client exact after churn stopped (base: 1 peer)",
        many.converged.unwrap_or(f64::NAN),
        "s",
        Goal::Below(30.0),
        baseline.converged,
    );
    Ok(report)
}
