//! `cargo xtask bench federation`: three peered clusters on loopback, each a simulated
//! istiod (in this process) and the real `peerd` binary (a child process, so its RSS and
//! CPU are its own), configured like the sandbox: cluster-1 and cluster-2 on one flat
//! network, cluster-3 on its own, mTLS between the peerds from one throwaway PKI. A
//! ztunnel-like client (bearer token, in this process) subscribes to each peerd.
//!
//! Addresses: cluster k lives on 127.0.(k+10).1 with ports picked free at start, so a
//! running `peerd-sandbox` (127.0.k.1, fixed ports) is never in the way. Probes are off
//! (the data-plane probe is not what is measured here).
//!
//! Figures: time to the first full federated view (every client holds every resource it
//! should — computed from the populations with the federation's naming rule — with churn
//! off), propagation of single changes from one cluster's istiod to the other clusters'
//! clients while every istiod churns (markers: dedicated workloads backing a global
//! service whose `node` field carries a sequence number, timed from the source
//! `View::apply`), convergence after churn stops, and per-peerd CPU seconds and RSS.
//! Baselines measured in the same run: for the first view, the direct path (a client on
//! each simulated istiod, started with the peerds, holding its own cluster's resources);
//! for A→B propagation, the same-cluster path (istiod → its own peerd → its client, one
//! hop of the two a federated change takes); for the same-cluster path, the direct path
//! (istiod → a client, no peerd).

mod support;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prost::Message;

use peerd::config::file::{
    AuthFile, BackoffFile, EastWestGatewayFile, ExportFile, FileConfig, ListenersFile, PeerFile,
    ProbeFile, ServerTlsFile, UpstreamFile, XdsServerFile,
};
use peerd::federation::naming::global_key;
use peerd::identity::spiffe::SpiffeId;
use peerd::identity::tls::{ClientTlsOptions, ServerIdentity, client_config, load_roots};
use peerd::proto::envoy::service::discovery::v3 as discovery;
use peerd::proto::istio::workload;
use peerd::view::View;
use peerd::xds::resource::Resource;
use peerd::xds::types::ResourceType;
use peerd_testbed::pki::{LeafSpec, Pki};
use peerd_testbed::sandbox::cluster::{TRUST_DOMAIN, peerd_identity};
use peerd_testbed::sandbox::layout::ClusterLayout;
use peerd_testbed::sim::churn::{Churn, ChurnOptions};
use peerd_testbed::sim::istiod::{ISTIOD_DNS_NAME, SimIstiod, SimIstiodOptions, serve_xds};
use peerd_testbed::sim::population::{MAX_WORKLOADS, Population, PopulationOptions, pod_address};
use support::{Args, Goal, Report, percentile};

const CLUSTERS: u8 = 3;
/// Cluster k lives on 127.0.(k + HOST_OFFSET).1, away from the sandbox's 127.0.k.1.
const HOST_OFFSET: u8 = 10;
const SEED: u64 = 42;
/// Marker workloads per cluster. Changes rotate over them, so one marker changes again only
/// after seconds: a later value never supersedes one still in flight (the server sends
/// the latest state of a name, as it should).
const MARKERS: usize = 64;
const MARKER_PREFIX: &str = "fedbench-marker-";
const WAIT: Duration = Duration::from_secs(600);

struct Size {
    quick: bool,
    workloads: usize,
    services: usize,
    churn_per_sec: f64,
    churn_seconds: f64,
    /// Marker changes per second, over all clusters.
    marker_rate: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = if args.quick {
        Size {
            quick: true,
            workloads: 2_000,
            services: 200,
            churn_per_sec: 100.0,
            churn_seconds: 5.0,
            marker_rate: 30.0,
        }
    } else {
        Size {
            quick: false,
            workloads: 30_000,
            services: 3_000,
            churn_per_sec: 500.0,
            churn_seconds: 20.0,
            marker_rate: 30.0,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&size))?;
    report.emit(&args)?;
    println!(
        "baselines: first view = the direct path (a client on each simulated istiod, \
         started with the peerds, holding its own cluster); A→B = same-cluster propagation \
         in this run (istiod → its peerd → its client, one of the two hops a federated \
         change takes); same-cluster = the direct path (istiod → client). Markers: {MARKERS} dedicated workloads per cluster backing a global \
         service, node field = sequence number, timed from the source View::apply."
    );
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One simulated cluster: its layout, istiod, ports and what it should export.
struct Cluster {
    layout: ClusterLayout,
    sim_addr: SocketAddr,
    xds: SocketAddr,
    metrics: SocketAddr,
    health: SocketAddr,
    debug: SocketAddr,
    view: Arc<View>,
    global_services: Vec<String>,
    /// Churn, taken when it starts.
    churn: Option<Churn>,
    markers: Vec<Arc<str>>,
    istiod_token: PathBuf,
    peerd_dir: PathBuf,
}

fn prepare_cluster(
    k: u8,
    dir: &Path,
    pki: &Pki,
    size: &Size,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Cluster> {
    let mut layout = ClusterLayout::new(k, dir);
    layout.host = IpAddr::V4(Ipv4Addr::new(127, 0, k + HOST_OFFSET, 1));
    std::fs::create_dir_all(&layout.dir)?;
    let ca = pki.cluster_ca(&layout.name)?;
    let sim_addr = support::child::free_addr(layout.host)?;
    let mut options = SimIstiodOptions::new(&layout.name, sim_addr, &layout.dir.join("istiod"));
    options.cluster_index = Some(k);
    options.network = layout.network.clone();
    options.workloads = size.workloads;
    options.services = size.services;
    // The simulator's own churn stays off: the bench starts churn after the first view.
    options.churn_per_sec = 0.0;
    // Plain shapes: the expected views below follow the export rule for Services and their
    // workloads; exported waypoints (design §5.9) are checked by `federation_waypoints` and
    // by the chaos observer, not here.
    options.realistic_fraction = 0.0;
    options.seed = SEED + u64::from(k);
    let sim = SimIstiod::new_with_ca(options.clone(), &ca)
        .with_context(|| format!("{}: simulated istiod", layout.name))?;
    // The same options and seed generate the same population, byte for byte: this copy
    // drives churn on the simulator's view.
    let population = Population::generate(&PopulationOptions {
        network: options.network.clone(),
        trust_domain: options.trust_domain.clone(),
        global_fraction: options.global_fraction,
        realistic_fraction: options.realistic_fraction,
        ..PopulationOptions::new(
            &options.cluster,
            k,
            options.workloads,
            options.services,
            options.seed,
        )
    })?;
    if population.global_services() != &sim.global_services {
        bail!(
            "{}: churn population differs from the simulator's",
            layout.name
        );
    }
    let global_services: Vec<String> = sim.global_services.iter().cloned().collect();
    if global_services.is_empty() {
        bail!("{}: the population has no global service", layout.name);
    }
    let view = Arc::clone(&sim.view);
    let markers = add_markers(&layout, &view, &global_services)?;
    let churn = Churn::new(
        population,
        Arc::clone(&view),
        ChurnOptions::new(size.churn_per_sec, SEED + u64::from(k), size.workloads),
    );
    let istiod_token = sim.tls.token_path.clone();
    tokio::spawn(sim.serve(shutdown, |ctx| serve_xds(ctx, Default::default())));

    let peerd_dir = layout.dir.join("peerd");
    let id: SpiffeId = peerd_identity().parse()?;
    ca.issue(
        &LeafSpec::workload(id)
            .with_ip(layout.host)
            .with_dns("peerd.istio-system.svc"),
    )?
    .write_to(&peerd_dir)?;
    Ok(Cluster {
        sim_addr,
        xds: support::child::free_addr(layout.host)?,
        metrics: support::child::free_addr(layout.host)?,
        health: support::child::free_addr(layout.host)?,
        debug: support::child::free_addr(layout.host)?,
        layout,
        view,
        global_services,
        churn: Some(churn),
        markers,
        istiod_token,
        peerd_dir,
    })
}

/// `namespace/hostname` keys of the cluster's global services (what workloads list in
/// their `services` map).
fn global_local_keys(view: &View, global: &[String]) -> HashSet<String> {
    let global: HashSet<&str> = global.iter().map(String::as_str).collect();
    view.snapshot()
        .resources(ResourceType::Address)
        .values()
        .filter_map(|r| r.as_service())
        .filter(|s| global.contains(format!("{}/{}", s.namespace, s.name).as_str()))
        .map(|s| format!("{}/{}", s.namespace, s.hostname))
        .collect()
}

/// Dedicated workloads backing a global service, unknown to churn, whose `node` field the
/// bench sets to time a change end to end. Their IPs come from the cluster's pod blocks,
/// past anything the population hands out.
fn add_markers(
    layout: &ClusterLayout,
    view: &View,
    global: &[String],
) -> anyhow::Result<Vec<Arc<str>>> {
    let keys = global_local_keys(view, global);
    let snapshot = view.snapshot();
    let template = snapshot
        .resources(ResourceType::Address)
        .values()
        .find(|r| {
            r.as_workload()
                .is_some_and(|w| w.services.iter().any(|s| keys.contains(&**s)))
        })
        .context("no workload backs a global service")?;
    let Some(workload::address::Type::Workload(base)) =
        workload::Address::decode(template.body.as_ref())?.r#type
    else {
        bail!("template is not a workload");
    };
    let mut markers = Vec::new();
    let mut names = Vec::new();
    for j in 0..MARKERS {
        let mut w = base.clone();
        w.name = format!("{MARKER_PREFIX}{j}");
        w.uid = format!("{}//Pod/{}/{}", layout.name, w.namespace, w.name);
        let slot = u32::try_from(MAX_WORKLOADS + 100 + j)?;
        w.addresses = vec![pod_address(layout.index, slot).octets().to_vec()];
        w.node = "fedbench-initial".into();
        let r = Arc::new(Resource::workload(&w)?);
        names.push(Arc::clone(&r.name));
        markers.push(r);
    }
    view.apply(ResourceType::Address, markers, []);
    Ok(names)
}

/// What each cluster's client should hold: its own istiod's resources, every cluster's
/// global services under their exported names, and the peers' workloads backing them.
fn expected_views(clusters: &[Cluster]) -> Vec<[HashSet<String>; 2]> {
    let mut exported_services = HashSet::new();
    let mut exported_workloads: Vec<HashSet<String>> = Vec::new();
    for c in clusters {
        let keys = global_local_keys(&c.view, &c.global_services);
        let global: HashSet<&str> = c.global_services.iter().map(String::as_str).collect();
        let snapshot = c.view.snapshot();
        let mut workloads = HashSet::new();
        for r in snapshot.resources(ResourceType::Address).values() {
            if let Some(s) = r.as_service()
                && global.contains(format!("{}/{}", s.namespace, s.name).as_str())
            {
                exported_services.insert(global_key(&s.namespace, &s.name));
            }
            if let Some(w) = r.as_workload()
                && w.services.iter().any(|s| keys.contains(&**s))
            {
                workloads.insert(r.name.to_string());
            }
        }
        exported_workloads.push(workloads);
    }
    clusters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let snapshot = c.view.snapshot();
            let mut addresses: HashSet<String> = snapshot
                .resources(ResourceType::Address)
                .keys()
                .map(|n| n.to_string())
                .collect();
            addresses.extend(exported_services.iter().cloned());
            for (j, w) in exported_workloads.iter().enumerate() {
                if j != i {
                    addresses.extend(w.iter().cloned());
                }
            }
            let authorizations = snapshot
                .resources(ResourceType::Authorization)
                .keys()
                .map(|n| n.to_string())
                .collect();
            [addresses, authorizations]
        })
        .collect()
}

/// The 1-minute load average: other work on the machine shows in every latency here.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn some(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

/// The peerd config the sandbox would write, on this bench's addresses, probes off.
fn peerd_config(me: &Cluster, all: &[Cluster], root: &Path, token: &Path) -> FileConfig {
    let peers = all
        .iter()
        .filter(|c| c.layout.name != me.layout.name)
        .map(|c| PeerFile {
            cluster: some(&c.layout.name),
            network: some(&c.layout.network),
            address: some(c.layout.host.to_string()),
            port: Some(c.xds.port()),
            hbone_port: Some(15008),
            trust_domain: some(TRUST_DOMAIN),
            server_identity: some(peerd_identity()),
            ..PeerFile::default()
        })
        .collect();
    FileConfig {
        cluster: some(&me.layout.name),
        network: some(&me.layout.network),
        trust_domain: some(TRUST_DOMAIN),
        flat_networks: Some(true),
        sandbox_mode: Some(true),
        listeners: ListenersFile {
            xds: some(me.xds.to_string()),
            metrics: some(me.metrics.to_string()),
            health: some(me.health.to_string()),
            debug: some(me.debug.to_string()),
        },
        xds: XdsServerFile {
            tls: ServerTlsFile {
                cert_chain: Some(me.peerd_dir.join("cert-chain.pem")),
                key: Some(me.peerd_dir.join("key.pem")),
                root: Some(root.to_path_buf()),
            },
            auth: AuthFile {
                token_file: Some(token.to_path_buf()),
                ..AuthFile::default()
            },
            ..XdsServerFile::default()
        },
        upstreams: vec![UpstreamFile {
            name: some(&me.layout.name),
            address: some(me.sim_addr.to_string()),
            server_name: some(ISTIOD_DNS_NAME),
            root_ca: Some(root.to_path_buf()),
            token_file: Some(me.istiod_token.clone()),
            backoff: BackoffFile {
                initial: some("100ms"),
                max: some("2s"),
            },
            ..UpstreamFile::default()
        }],
        peers,
        export: ExportFile {
            global_services: me.global_services.clone(),
            east_west_gateway: EastWestGatewayFile {
                address: some(me.layout.host.to_string()),
                hbone_port: Some(15008),
            },
        },
        probe: ProbeFile {
            enabled: Some(false),
            ..ProbeFile::default()
        },
        ..FileConfig::default()
    }
}

/// One cluster's peerd: the shared child-process handle, named for failure messages.
struct Peerd {
    name: String,
    process: support::child::Peerd,
}

fn start_peerd(c: &Cluster, config: &FileConfig) -> anyhow::Result<Peerd> {
    let process = support::child::Peerd::start(&c.layout.dir, config)
        .with_context(|| format!("{}: starting peerd", c.layout.name))?;
    Ok(Peerd {
        name: c.layout.name.clone(),
        process,
    })
}

/// What one ztunnel-like client holds, and when each marker value arrived.
#[derive(Default)]
struct Seen {
    names: [HashSet<String>; 2],
    /// Marker `node` value → arrival.
    markers: HashMap<String, Instant>,
}

async fn downstream(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    token: String,
    seen: Arc<Mutex<Seen>>,
) -> anyhow::Result<()> {
    let (tx, mut responses) =
        support::downstream::subscribe(addr, &addr.ip().to_string(), tls, &token).await?;
    while let Some(r) = responses.message().await? {
        let now = Instant::now();
        let Some(kind) = ResourceType::from_type_url(&r.type_url) else {
            bail!("unexpected type {}", r.type_url)
        };
        {
            let mut seen = lock(&seen);
            let i = kind.index();
            for name in &r.removed_resources {
                seen.names[i].remove(name);
            }
            for res in r.resources {
                if res.name.contains(MARKER_PREFIX)
                    && let Some(body) = &res.resource
                    && let Ok(address) = workload::Address::decode(body.value.as_ref())
                    && let Some(workload::address::Type::Workload(w)) = address.r#type
                {
                    seen.markers.entry(w.node).or_insert(now);
                }
                seen.names[i].insert(res.name);
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

/// Whether every client holds exactly what it should (`exact`), or at least all of it.
fn holds(seen: &[Arc<Mutex<Seen>>], want: &[[HashSet<String>; 2]], exact: bool) -> Vec<bool> {
    seen.iter()
        .zip(want)
        .map(|(s, w)| {
            let s = lock(s);
            (0..2).all(|i| {
                let held = &s.names[i];
                if exact {
                    held.len() == w[i].len() && w[i].iter().all(|n| held.contains(n))
                } else {
                    held.len() >= w[i].len() && w[i].iter().all(|n| held.contains(n))
                }
            })
        })
        .collect()
}

fn describe_difference(seen: &[Arc<Mutex<Seen>>], want: &[[HashSet<String>; 2]]) -> String {
    let mut out = String::new();
    for (k, (s, w)) in seen.iter().zip(want).enumerate() {
        let s = lock(s);
        for (i, (held, wanted)) in s.names.iter().zip(w).enumerate() {
            let missing: Vec<&String> = wanted.iter().filter(|n| !held.contains(*n)).collect();
            let extra: Vec<&String> = held.iter().filter(|n| !wanted.contains(*n)).collect();
            out.push_str(&format!(
                "\n  cluster-{} type {i}: held {}, want {}, missing {} (e.g. {:?}), extra {} (e.g. {:?})",
                k + 1,
                held.len(),
                wanted.len(),
                missing.len(),
                missing.iter().take(3).collect::<Vec<_>>(),
                extra.len(),
                extra.iter().take(3).collect::<Vec<_>>()
            ));
        }
    }
    out
}

async fn run(size: &Size) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::load_or_create(&dir.path().join("pki"), "fedbench root")?;
    let root = pki.root_cert_path();
    let token = "fedbench-token".to_string();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token)?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);

    let mut clusters = Vec::new();
    for k in 1..=CLUSTERS {
        clusters.push(prepare_cluster(
            k,
            dir.path(),
            &pki,
            size,
            shutdown.clone(),
        )?);
    }
    let want = expected_views(&clusters);
    // What each simulated istiod holds (churn is off until the first view): its direct
    // client holds that many resources once synced.
    let source_counts: Vec<[usize; 2]> = clusters
        .iter()
        .map(|c| {
            let snapshot = c.view.snapshot();
            [
                snapshot.len(ResourceType::Address),
                snapshot.len(ResourceType::Authorization),
            ]
        })
        .collect();
    let source_resources: usize = source_counts.iter().map(|c| c[0] + c[1]).sum();
    let served: usize = want.iter().map(|w| w[0].len() + w[1].len()).sum();

    let roots = load_roots(&root)?;
    let tls = client_config(&ClientTlsOptions::new(
        rustls::RootCertStore::clone(&roots),
        ServerIdentity::Name,
    ))?;

    // First full federated view: every peerd starts at once, churn off.
    let started = Instant::now();
    let mut peerds = Vec::new();
    for c in &clusters {
        peerds.push(start_peerd(
            c,
            &peerd_config(c, &clusters, &root, &token_file),
        )?);
    }
    let seen: Vec<Arc<Mutex<Seen>>> = clusters
        .iter()
        .map(|_| Arc::new(Mutex::new(Seen::default())))
        .collect();
    let clients: Vec<_> = clusters
        .iter()
        .zip(&seen)
        .map(|(c, s)| {
            tokio::spawn(downstream(
                c.xds,
                Arc::clone(&tls),
                token.clone(),
                Arc::clone(s),
            ))
        })
        .collect();
    // A client straight on each simulated istiod: the source's own hop, timed the same way.
    let direct: Vec<Arc<Mutex<Seen>>> = clusters
        .iter()
        .map(|_| Arc::new(Mutex::new(Seen::default())))
        .collect();
    let mut direct_clients = Vec::new();
    for (c, s) in clusters.iter().zip(&direct) {
        let sim_token = std::fs::read_to_string(&c.istiod_token)?.trim().to_string();
        direct_clients.push(tokio::spawn(downstream(
            c.sim_addr,
            Arc::clone(&tls),
            sim_token,
            Arc::clone(s),
        )));
    }
    let mut first_view: Vec<Option<f64>> = vec![None; clusters.len()];
    let mut direct_view: Vec<Option<f64>> = vec![None; clusters.len()];
    let deadline = started + WAIT;
    while first_view.iter().chain(&direct_view).any(Option::is_none) {
        for (i, full) in holds(&seen, &want, false).into_iter().enumerate() {
            if full && first_view[i].is_none() {
                first_view[i] = Some(started.elapsed().as_secs_f64());
            }
        }
        for (i, (d, count)) in direct.iter().zip(&source_counts).enumerate() {
            let held = {
                let d = lock(d);
                [d.names[0].len(), d.names[1].len()]
            };
            if held == *count && direct_view[i].is_none() {
                direct_view[i] = Some(started.elapsed().as_secs_f64());
            }
        }
        for p in &mut peerds {
            if !p.process.alive() {
                bail!("{}'s peerd exited:\n{}", p.name, p.process.log_tail());
            }
        }
        if Instant::now() > deadline
            || clients
                .iter()
                .chain(&direct_clients)
                .any(|c| c.is_finished())
        {
            bail!(
                "no full federated view (or direct view) within {WAIT:?} (a client finished: {}):{}",
                clients.iter().any(|c| c.is_finished()),
                describe_difference(&seen, &want)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let full_view = first_view.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    let direct_full_view = direct_view.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    let exact_at_first_view = holds(&seen, &want, true).iter().all(|ok| *ok);
    let pids: Vec<u32> = peerds.iter().map(|p| p.process.pid()).collect();
    let rss_synced: Vec<f64> = pids
        .iter()
        .map(|p| support::rss_mb(*p).unwrap_or(f64::NAN))
        .collect();
    let cpu_synced: Vec<f64> = pids
        .iter()
        .map(|p| support::cpu_seconds(*p).unwrap_or(f64::NAN))
        .collect();

    // Churn on every istiod, and marker changes rotating over the clusters.
    let churn_stats: Vec<_> = clusters
        .iter()
        .filter_map(|c| c.churn.as_ref().map(Churn::stats))
        .collect();
    let (stop_churn, churn_shutdown) = tokio::sync::watch::channel(false);
    let churn_tasks: Vec<_> = clusters
        .iter_mut()
        .filter_map(|c| c.churn.take())
        .map(|churn| tokio::spawn(churn.run(churn_shutdown.clone())))
        .collect();
    let churn_started = Instant::now();
    let bench_cpu_before = support::cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
    let marker_changes = (size.marker_rate * size.churn_seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / size.marker_rate);
    // (source cluster index, marker value, applied at)
    let mut sent: Vec<(usize, String, Instant)> = Vec::with_capacity(marker_changes);
    for i in 0..marker_changes {
        let due = churn_started + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        let a = i % clusters.len();
        let c = &clusters[a];
        let name = &c.markers[(i / clusters.len()) % MARKERS];
        let snapshot = c.view.snapshot();
        let current = snapshot
            .get(ResourceType::Address, name)
            .context("marker vanished from its istiod")?;
        let Some(workload::address::Type::Workload(mut w)) =
            workload::Address::decode(current.body.as_ref())?.r#type
        else {
            bail!("marker is not a workload");
        };
        w.node = format!("fedbench-{i}");
        let changed = Arc::new(Resource::workload(&w)?);
        let at = Instant::now();
        c.view.apply(ResourceType::Address, [changed], []);
        sent.push((a, w.node, at));
    }
    let remaining =
        Duration::from_secs_f64(size.churn_seconds).saturating_sub(churn_started.elapsed());
    tokio::time::sleep(remaining).await;
    let _ = stop_churn.send(true);
    let churn_stopped = Instant::now();
    for t in churn_tasks {
        let _ = t.await;
    }
    let churn_window = churn_stopped.duration_since(churn_started).as_secs_f64();
    let bench_cpu = support::cpu_seconds(std::process::id()).unwrap_or(f64::NAN) - bench_cpu_before;
    let load = load_average();
    let changes: u64 = churn_stats.iter().map(|s| s.changes()).sum();
    let cpu_churned: Vec<f64> = pids
        .iter()
        .map(|p| support::cpu_seconds(*p).unwrap_or(f64::NAN))
        .collect();

    // Convergence: after churn stops, every client holds exactly what it should now.
    let want_after = expected_views(&clusters);
    let converge_deadline = Instant::now() + Duration::from_secs(120);
    let converged = loop {
        if holds(&seen, &want_after, true).iter().all(|ok| *ok) {
            break Some(churn_stopped.elapsed().as_secs_f64());
        }
        if Instant::now() > converge_deadline {
            eprintln!(
                "federated views did not converge after churn:{}",
                describe_difference(&seen, &want_after)
            );
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Marker latencies: to the other clusters' clients, and to the source's own client.
    let mut cross = Vec::new();
    let mut same = Vec::new();
    let mut cross_missing = 0usize;
    for (k, s) in seen.iter().enumerate() {
        let s = lock(s);
        for (a, value, at) in &sent {
            match s.markers.get(value) {
                Some(got) => {
                    let ms = support::ms(got.saturating_duration_since(*at));
                    if *a == k {
                        same.push(ms)
                    } else {
                        cross.push(ms)
                    }
                }
                None if *a != k => cross_missing += 1,
                None => {}
            }
        }
    }
    let mut source_hop = Vec::new();
    for (a, value, at) in &sent {
        if let Some(got) = lock(&direct[*a]).markers.get(value) {
            source_hop.push(support::ms(got.saturating_duration_since(*at)));
        }
    }
    let cross_expected = sent.len() * (clusters.len() - 1);
    let rss_after: Vec<f64> = pids
        .iter()
        .map(|p| support::rss_mb(*p).unwrap_or(f64::NAN))
        .collect();
    let rss_peak: Vec<f64> = pids
        .iter()
        .map(|p| support::peak_rss_mb(*p).unwrap_or(f64::NAN))
        .collect();
    let cpu_total: Vec<f64> = pids
        .iter()
        .map(|p| support::cpu_seconds(*p).unwrap_or(f64::NAN))
        .collect();
    let _ = stop.send(true);
    for c in clients.into_iter().chain(direct_clients) {
        c.abort();
    }
    drop(peerds);

    let source_p50 = percentile(&mut source_hop, 50.0);
    let source_p99 = percentile(&mut source_hop, 99.0);
    let same_p50 = percentile(&mut same, 50.0);
    let same_p99 = percentile(&mut same, 99.0);
    let cross_p50 = percentile(&mut cross, 50.0);
    let cross_p99 = percentile(&mut cross, 99.0);

    let mut report = Report::new(
        "federation",
        format!(
            "{CLUSTERS} clusters x ({} workloads + {} services + authorizations); {source_resources} source resources, {served} served to the 3 clients; churn {}/s per cluster for {:.0}s; {} marker changes",
            size.workloads,
            size.services,
            size.churn_per_sec,
            churn_window,
            sent.len()
        ),
    );
    // Targets are stated for the full size; the quick size only keeps the bench alive.
    let full = !size.quick;
    report.row(
        "first full view, all clients (baseline: direct path)",
        full_view,
        "s",
        Goal::None,
        Some(direct_full_view),
    );
    for (c, t) in clusters.iter().zip(&first_view) {
        report.row(
            format!("first full view, {} client", c.layout.name),
            t.unwrap_or(f64::NAN),
            "s",
            Goal::None,
            None,
        );
    }
    report.row(
        "exactly the expected set at first view",
        if exact_at_first_view { 1.0 } else { 0.0 },
        "bool",
        Goal::Above(0.5),
        None,
    );
    report.row(
        "propagation A→B p50 (baseline: same-cluster)",
        cross_p50,
        "ms",
        Goal::None,
        Some(same_p50),
    );
    report.row(
        "propagation A→B p99 (baseline: same-cluster)",
        cross_p99,
        "ms",
        if full { Goal::Below(100.0) } else { Goal::None },
        Some(same_p99),
    );
    report.row(
        "same-cluster p50 (baseline: direct path)",
        same_p50,
        "ms",
        Goal::None,
        Some(source_p50),
    );
    report.row(
        "same-cluster p99 (baseline: direct path)",
        same_p99,
        "ms",
        Goal::None,
        Some(source_p99),
    );
    report.row(
        "istiod → direct client p50 (source hop only)",
        source_p50,
        "ms",
        Goal::None,
        None,
    );
    report.row(
        "istiod → direct client p99 (source hop only)",
        source_p99,
        "ms",
        Goal::None,
        None,
    );
    report.row(
        "A→B marker changes delivered",
        (cross_expected - cross_missing) as f64,
        "count",
        Goal::Above(cross_expected as f64 - 0.5),
        None,
    );
    report.row(
        "churn changes applied, all istiods",
        changes as f64,
        "count",
        Goal::None,
        None,
    );
    report.row(
        "converged after churn stopped",
        converged.unwrap_or(f64::NAN),
        "s",
        Goal::None,
        None,
    );
    report.row(
        "this process (istiods, churn, clients) CPU/s of churn",
        bench_cpu / churn_window,
        "s/s",
        Goal::None,
        None,
    );
    report.row(
        format!(
            "machine load average (1 min) after churn, {} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        load,
        "procs",
        Goal::None,
        None,
    );
    for (i, c) in clusters.iter().enumerate() {
        let name = &c.layout.name;
        report.row(
            format!("{name} peerd RSS after first view"),
            rss_synced[i],
            "MB",
            Goal::None,
            None,
        );
        report.row(
            format!("{name} peerd RSS after churn"),
            rss_after[i],
            "MB",
            Goal::None,
            None,
        );
        report.row(
            format!("{name} peerd peak RSS"),
            rss_peak[i],
            "MB",
            Goal::None,
            None,
        );
        report.row(
            format!("{name} peerd CPU to first view"),
            cpu_synced[i],
            "s",
            Goal::None,
            None,
        );
        report.row(
            format!("{name} peerd CPU per second of churn"),
            (cpu_churned[i] - cpu_synced[i]) / churn_window,
            "s/s",
            Goal::None,
            None,
        );
        report.row(
            format!("{name} peerd CPU, whole run"),
            cpu_total[i],
            "s",
            Goal::None,
            None,
        );
    }
    Ok(report)
}
