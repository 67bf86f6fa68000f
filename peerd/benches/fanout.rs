//! `cargo xtask bench fanout`: one export view read by as many subscribers as a peer
//! cluster has nodes (every node's peerd subscribes to it). A real `peerd` child process
//! with a local simulated istiod (in this process) exports its global services to one
//! configured peer on another network; 1,000 in-process delta-xDS clients connect over
//! mTLS presenting that peer's peerd identity (its client certificate, one for all, as
//! every node of a cluster carries the same SPIFFE ID) with the `clusterid` header, as
//! the peer's peerds would. Nothing listens at the peer's own address: this peerd's
//! client of it retries in the background, which costs nothing measurable.
//!
//! Addresses: 127.0.160.1 (istiod, peerd), the peer 127.0.161.1; ports picked free at
//! start. Probes are off.
//!
//! Figures: the single-change propagation to all subscribers (a dedicated workload
//! backing a global service, its `node` field carrying a sequence number, timed from the
//! source `View::apply` to each subscriber's receipt; p99 over changes of the time until
//! the last subscriber has it, and p50/p99 over every delivery), peerd's RSS per idle
//! subscriber ((RSS with every subscriber synced and idle − RSS with none) / count), and
//! the time for all of them to connect and receive the export. Baseline measured in the
//! same run: the same changes to one subscriber.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prost::Message;

use peerd::config::file::{
    AuthFile, BackoffFile, EastWestGatewayFile, ExportFile, FileConfig, ListenersFile, PeerFile,
    ProbeFile, ServerTlsFile, UpstreamFile, XdsServerFile,
};
use peerd::identity::reload::CertSource;
use peerd::identity::spiffe::SpiffeId;
use peerd::identity::tls::{ClientTlsOptions, ServerIdentity, client_config, load_roots};
use peerd::proto::envoy::service::discovery::v3 as discovery;
use peerd::proto::istio::workload;
use peerd::view::View;
use peerd::xds::resource::Resource;
use peerd::xds::types::ResourceType;
use peerd_testbed::pki::{LeafSpec, Pki};
use peerd_testbed::sandbox::cluster::{TRUST_DOMAIN, peerd_identity};
use peerd_testbed::sim::istiod::{ISTIOD_DNS_NAME, SimIstiod, SimIstiodOptions, serve_xds};
use peerd_testbed::sim::population::{MAX_WORKLOADS, pod_address};
use support::child::{Peerd, free_addr, raise_nofile_limit};
use support::{Args, Goal, Report, percentile};

const LOCAL: &str = "fanout-local";
const PEER: &str = "fanout-peer";
const HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 160, 1);
const PEER_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 161, 1);
const HBONE_PORT: u16 = 15008;
const SEED: u64 = 11;
/// Marker workloads; changes rotate over them.
const MARKERS: usize = 16;
const MARKER_PREFIX: &str = "fanout-marker-";
const WAIT: Duration = Duration::from_secs(300);
/// Subscribers connecting at once (the rest wait for a slot).
const CONNECTING: usize = 64;

struct Size {
    quick: bool,
    subscribers: usize,
    workloads: usize,
    services: usize,
    changes: usize,
    /// Between two marker changes: long enough for one to reach everyone first.
    gap: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = if args.quick {
        Size {
            quick: true,
            subscribers: 200,
            workloads: 1_000,
            services: 100,
            changes: 10,
            gap: Duration::from_millis(200),
        }
    } else {
        Size {
            quick: false,
            subscribers: 1_000,
            workloads: 5_000,
            services: 500,
            changes: 30,
            gap: Duration::from_millis(300),
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&size))?;
    report.emit(&args)?;
    println!(
        "baseline: the same marker changes to ONE subscriber of the same export view, \
         measured in this run before the others connect. Markers: {MARKERS} dedicated \
         workloads backing a global service, node field = sequence number, timed from \
         the source View::apply."
    );
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one subscriber received.
#[derive(Default)]
struct Seen {
    /// Responses per type (the first of each is the full export).
    responses: [usize; 2],
    resources: usize,
    /// Encoded size of the first Address response (the whole export).
    first_bytes: usize,
    /// Marker `node` value → arrival.
    markers: HashMap<String, Instant>,
}

impl Seen {
    fn synced(&self) -> bool {
        self.responses.iter().all(|n| *n > 0)
    }
}

/// One peer subscriber: connects (retrying while the export is not ready), records what
/// it receives, ACKs everything.
async fn subscriber(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    seen: Arc<Mutex<Seen>>,
    slots: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<()> {
    let permit = slots.acquire_owned().await?;
    let (tx, mut responses) = loop {
        match support::downstream::subscribe_as_peer(
            addr,
            &addr.ip().to_string(),
            Arc::clone(&tls),
            PEER,
        )
        .await?
        {
            Some(s) => break s,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut permit = Some(permit);
    while let Some(r) = responses.message().await? {
        let now = Instant::now();
        let Some(kind) = ResourceType::from_type_url(&r.type_url) else {
            bail!("unexpected type {}", r.type_url)
        };
        {
            let mut seen = lock(&seen);
            if kind == ResourceType::Address && seen.responses[kind.index()] == 0 {
                seen.first_bytes = r.encoded_len();
            }
            seen.responses[kind.index()] += 1;
            seen.resources += r.resources.len();
            for res in &r.resources {
                if res.name.contains(MARKER_PREFIX)
                    && let Some(body) = &res.resource
                    && let Ok(address) = workload::Address::decode(body.value.as_ref())
                    && let Some(workload::address::Type::Workload(w)) = address.r#type
                {
                    seen.markers.entry(w.node).or_insert(now);
                }
            }
            if seen.synced() {
                // Synced: let the next subscriber connect.
                permit = None;
            }
        }
        tx.send(discovery::DeltaDiscoveryRequest {
            type_url: r.type_url,
            response_nonce: r.nonce,
            ..Default::default()
        })
        .await?;
    }
    drop(permit);
    Ok(())
}

/// `namespace/hostname` keys of the cluster's global services.
fn global_local_keys(view: &View, global: &[String]) -> Vec<String> {
    view.snapshot()
        .resources(ResourceType::Address)
        .values()
        .filter_map(|r| r.as_service())
        .filter(|s| global.contains(&format!("{}/{}", s.namespace, s.name)))
        .map(|s| format!("{}/{}", s.namespace, s.hostname))
        .collect()
}

/// Dedicated workloads backing a global service whose `node` field the bench sets; IPs
/// past anything the population hands out.
fn add_markers(view: &View, global: &[String]) -> anyhow::Result<Vec<Arc<str>>> {
    let keys = global_local_keys(view, global);
    let snapshot = view.snapshot();
    let template = snapshot
        .resources(ResourceType::Address)
        .values()
        .find(|r| {
            r.as_workload()
                .is_some_and(|w| w.services.iter().any(|s| keys.iter().any(|k| **k == **s)))
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
        w.uid = format!("{LOCAL}//Pod/{}/{}", w.namespace, w.name);
        let slot = u32::try_from(MAX_WORKLOADS + 100 + j)?;
        w.addresses = vec![pod_address(1, slot).octets().to_vec()];
        w.node = "fanout-initial".into();
        let r = Arc::new(Resource::workload(&w)?);
        names.push(Arc::clone(&r.name));
        markers.push(r);
    }
    view.apply(ResourceType::Address, markers, []);
    Ok(names)
}

/// Changes marker `i % MARKERS` to carry `fanout-<i>`; returns the value and when the
/// source view published it.
fn change_marker(view: &View, markers: &[Arc<str>], i: usize) -> anyhow::Result<(String, Instant)> {
    let name = &markers[i % markers.len()];
    let current = view
        .snapshot()
        .get(ResourceType::Address, name)
        .cloned()
        .context("marker vanished")?;
    let Some(workload::address::Type::Workload(mut w)) =
        workload::Address::decode(current.body.as_ref())?.r#type
    else {
        bail!("marker is not a workload");
    };
    w.node = format!("fanout-{i}");
    let changed = Arc::new(Resource::workload(&w)?);
    let at = Instant::now();
    view.apply(ResourceType::Address, [changed], []);
    Ok((w.node, at))
}

/// Sends `count` marker changes `gap` apart, starting at sequence `first`, then waits
/// until every subscriber has every change (or `WAIT`); returns per change its value and
/// publication time.
async fn send_changes(
    view: &View,
    markers: &[Arc<str>],
    first: usize,
    count: usize,
    gap: Duration,
    seen: &[Arc<Mutex<Seen>>],
) -> anyhow::Result<Vec<(String, Instant)>> {
    let mut sent = Vec::with_capacity(count);
    for i in first..first + count {
        sent.push(change_marker(view, markers, i)?);
        tokio::time::sleep(gap).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let all = seen.iter().all(|s| {
            let s = lock(s);
            sent.iter().all(|(v, _)| s.markers.contains_key(v))
        });
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(sent)
}

/// Latencies (ms): every delivery, and per change the time until the last subscriber had
/// it; and how many deliveries never arrived.
fn latencies(sent: &[(String, Instant)], seen: &[Arc<Mutex<Seen>>]) -> (Vec<f64>, Vec<f64>, usize) {
    let mut every = Vec::new();
    let mut to_all = Vec::new();
    let mut missing = 0;
    for (value, at) in sent {
        let mut last: Option<f64> = None;
        for s in seen {
            match lock(s).markers.get(value) {
                Some(got) => {
                    let ms = support::ms(got.saturating_duration_since(*at));
                    every.push(ms);
                    last = Some(last.map_or(ms, |l| l.max(ms)));
                }
                None => missing += 1,
            }
        }
        if let Some(l) = last {
            to_all.push(l);
        }
    }
    (every, to_all, missing)
}

fn some(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

async fn run(size: &Size) -> anyhow::Result<Report> {
    let nofile = raise_nofile_limit()?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::load_or_create(&dir.path().join("pki"), "fanoutbench root")?;
    let root = pki.root_cert_path();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "fanoutbench-token")?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let identity: SpiffeId = peerd_identity().parse()?;
    let host = IpAddr::V4(HOST);

    // The local cluster: a simulated istiod and this peerd's certificate.
    let local_dir = dir.path().join(LOCAL);
    let ca = pki.cluster_ca(LOCAL)?;
    let sim_addr = free_addr(host)?;
    let mut options = SimIstiodOptions::new(LOCAL, sim_addr, &local_dir.join("istiod"));
    options.cluster_index = Some(1);
    options.network = format!("{LOCAL}-network");
    options.workloads = size.workloads;
    options.services = size.services;
    options.churn_per_sec = 0.0;
    options.seed = SEED;
    let sim = SimIstiod::new_with_ca(options.clone(), &ca).context("simulated istiod")?;
    let global: Vec<String> = sim.global_services.iter().cloned().collect();
    let view = Arc::clone(&sim.view);
    let markers = add_markers(&view, &global)?;
    let istiod_token = sim.tls.token_path.clone();
    tokio::spawn(sim.serve(shutdown, |ctx| serve_xds(ctx, Default::default())));
    let peerd_tls = local_dir.join("peerd");
    ca.issue(
        &LeafSpec::workload(identity.clone())
            .with_ip(host)
            .with_dns("peerd.istio-system.svc"),
    )?
    .write_to(&peerd_tls)?;

    // The peer's nodes: one client certificate with the peer's peerd identity.
    let peer_tls = dir.path().join("peer-tls");
    pki.cluster_ca(PEER)?
        .issue(&LeafSpec::workload(identity.clone()))?
        .write_to(&peer_tls)?;
    let roots = load_roots(&root)?;
    let client_tls = client_config(
        &ClientTlsOptions::new(
            rustls::RootCertStore::clone(&roots),
            ServerIdentity::Spiffe(identity.clone()),
        )
        .with_client_cert(CertSource::from_files(
            &peer_tls.join("cert-chain.pem"),
            &peer_tls.join("key.pem"),
        )?),
    )?;

    let [xds, metrics, health, debug] = [
        free_addr(host)?,
        free_addr(host)?,
        free_addr(host)?,
        free_addr(host)?,
    ];
    let config = FileConfig {
        cluster: some(LOCAL),
        network: some(&options.network),
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
                cert_chain: Some(peerd_tls.join("cert-chain.pem")),
                key: Some(peerd_tls.join("key.pem")),
                root: Some(root.clone()),
            },
            auth: AuthFile {
                token_file: Some(token_file.clone()),
                ..AuthFile::default()
            },
            ..XdsServerFile::default()
        },
        upstreams: vec![UpstreamFile {
            name: some(LOCAL),
            address: some(sim_addr.to_string()),
            server_name: some(ISTIOD_DNS_NAME),
            root_ca: Some(root.clone()),
            token_file: Some(istiod_token),
            backoff: BackoffFile {
                initial: some("100ms"),
                max: some("2s"),
            },
            ..UpstreamFile::default()
        }],
        peers: vec![PeerFile {
            cluster: some(PEER),
            network: some(format!("{PEER}-network")),
            address: some(PEER_HOST.to_string()),
            port: Some(free_addr(IpAddr::V4(PEER_HOST))?.port()),
            hbone_port: Some(HBONE_PORT),
            trust_domain: some(TRUST_DOMAIN),
            server_identity: some(peerd_identity()),
            ..PeerFile::default()
        }],
        export: ExportFile {
            global_services: global.clone(),
            east_west_gateway: EastWestGatewayFile {
                address: some(HOST.to_string()),
                hbone_port: Some(HBONE_PORT),
            },
        },
        probe: ProbeFile {
            enabled: Some(false),
            ..ProbeFile::default()
        },
        ..FileConfig::default()
    };
    let mut peerd = Peerd::start(&local_dir.join("peerd-run"), &config)?;
    let pid = peerd.pid();

    // Baseline: one subscriber (it also waits out the export gate).
    let one = Arc::new(Mutex::new(Seen::default()));
    let single = tokio::spawn(subscriber(
        xds,
        Arc::clone(&client_tls),
        Arc::clone(&one),
        Arc::new(tokio::sync::Semaphore::new(1)),
    ));
    let deadline = Instant::now() + WAIT;
    while !lock(&one).synced() {
        if !peerd.alive() {
            bail!("peerd exited:\n{}", peerd.log_tail());
        }
        if Instant::now() > deadline || single.is_finished() {
            bail!(
                "the first subscriber never received the export:\n{}",
                peerd.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (exported, first_bytes) = {
        let one = lock(&one);
        (one.resources, one.first_bytes)
    };
    let sent = send_changes(
        &view,
        &markers,
        0,
        size.changes,
        size.gap,
        std::slice::from_ref(&one),
    )
    .await?;
    let (mut base_every, mut base_to_all, base_missing) = latencies(&sent, &[Arc::clone(&one)]);
    single.abort();
    let _ = single.await;
    // Idle with no subscriber: freed memory goes back within 100 ms (mem-purge).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_none = support::rss_mb(pid).unwrap_or(f64::NAN);

    // Every node of the peer cluster connects.
    let cpu_before_connect = support::cpu_seconds(pid).unwrap_or(f64::NAN);
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    let seen: Vec<Arc<Mutex<Seen>>> = (0..size.subscribers)
        .map(|_| Arc::new(Mutex::new(Seen::default())))
        .collect();
    let connect_started = Instant::now();
    let tasks: Vec<_> = seen
        .iter()
        .map(|s| {
            tokio::spawn(subscriber(
                xds,
                Arc::clone(&client_tls),
                Arc::clone(s),
                Arc::clone(&slots),
            ))
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let synced = seen.iter().filter(|s| lock(s).synced()).count();
        if synced == seen.len() {
            break;
        }
        if !peerd.alive() {
            bail!("peerd exited:\n{}", peerd.log_tail());
        }
        if tasks.iter().any(|t| t.is_finished()) {
            bail!(
                "a subscriber ended before the export reached everyone ({synced} synced):\n{}",
                peerd.log_tail()
            );
        }
        if Instant::now() > deadline {
            bail!("only {synced} of {} subscribers synced", seen.len());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_all = connect_started.elapsed().as_secs_f64();
    let cpu_connect = support::cpu_seconds(pid).unwrap_or(f64::NAN) - cpu_before_connect;
    let short = seen.iter().filter(|s| lock(s).resources < exported).count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = support::rss_mb(pid).unwrap_or(f64::NAN);

    let cpu_before_changes = support::cpu_seconds(pid).unwrap_or(f64::NAN);
    let sent = send_changes(&view, &markers, size.changes, size.changes, size.gap, &seen).await?;
    let cpu_changes = support::cpu_seconds(pid).unwrap_or(f64::NAN) - cpu_before_changes;
    let (mut every, mut to_all, missing) = latencies(&sent, &seen);
    let rss_peak = support::peak_rss_mb(pid).unwrap_or(f64::NAN);
    let alive = peerd.alive();
    for t in &tasks {
        t.abort();
    }
    let _ = stop.send(true);
    drop(peerd);

    let n = size.subscribers;
    let mut report = Report::new(
        "fanout",
        format!(
            "{n} peer subscribers of one export view ({exported} resources: {} local workloads, {} services, global services {}); {} marker changes {:?} apart; nofile limit {nofile}",
            size.workloads,
            size.services,
            global.len(),
            size.changes,
            size.gap,
        ),
    );
    let full = !size.quick;
    let goal = |g: Goal| if full { g } else { Goal::None };
    report.row(
        format!("propagation to all {n}, p99 over changes (base: 1)"),
        percentile(&mut to_all, 99.0),
        "ms",
        goal(Goal::Below(100.0)),
        Some(percentile(&mut base_to_all, 99.0)),
    );
    report.row(
        format!("propagation to all {n}, p50 over changes (base: 1)"),
        percentile(&mut to_all, 50.0),
        "ms",
        Goal::None,
        Some(percentile(&mut base_to_all, 50.0)),
    );
    report.row(
        "propagation, every delivery p50 (base: 1)",
        percentile(&mut every, 50.0),
        "ms",
        Goal::None,
        Some(percentile(&mut base_every, 50.0)),
    );
    report.row(
        "propagation, every delivery p99 (base: 1)",
        percentile(&mut every, 99.0),
        "ms",
        Goal::None,
        Some(percentile(&mut base_every, 99.0)),
    );
    report.row(
        "deliveries missing (base: 1)",
        missing as f64,
        "count",
        Goal::Below(0.5),
        Some(base_missing as f64),
    );
    report.row(
        "peerd RSS per idle subscriber",
        (rss_idle - rss_none) * 1024.0 / n as f64,
        "KB",
        goal(Goal::Below(50.0)),
        None,
    );
    report.row(
        "first export response (what each stream encodes)",
        first_bytes as f64 / 1024.0,
        "KB",
        Goal::None,
        None,
    );
    report.row("peerd RSS, no subscriber", rss_none, "MB", Goal::None, None);
    report.row(
        format!("peerd RSS, {n} idle subscribers"),
        rss_idle,
        "MB",
        Goal::None,
        None,
    );
    report.row("peerd peak RSS", rss_peak, "MB", Goal::None, None);
    report.row(
        format!("all {n} connected and holding the export"),
        connect_all,
        "s",
        Goal::None,
        None,
    );
    report.row(
        format!("subscribers short of the {exported} exported resources"),
        short as f64,
        "count",
        Goal::Below(0.5),
        None,
    );
    report.row(
        format!("peerd CPU for {n} connects + exports"),
        cpu_connect,
        "s",
        Goal::None,
        None,
    );
    report.row(
        format!("peerd CPU per change to {n}"),
        cpu_changes / size.changes as f64,
        "s",
        Goal::None,
        None,
    );
    report.row(
        "peerd alive at the end",
        f64::from(u8::from(alive)),
        "bool",
        Goal::Above(0.5),
        None,
    );
    Ok(report)
}
