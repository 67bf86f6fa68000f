//! `peerd check`: the checks of docs/design.md §10.3, each a
//! line with ✅ / ⚠ / ❌ and a one-line reason: configuration and readiness, the local
//! upstream's sync, every peer's `PeerConnected` and `PeeringSucceeded`, its
//! `PeerDataPlaneProgrammed`, intermediate-certificate compatibility (from certificate
//! files given per cluster), and network configuration. `--precheck` runs only what makes
//! sense before linking. Any ❌ makes the command fail. With `--kubeconfig`/`--context`,
//! the checks that need the Kubernetes API are added (see [`crate::debug::check_kube`]).
//!
//! Checks are pure functions of a fetched [`Report`] and files; it must never change the
//! daemon's state.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::debug::check_kube::{
    ContextArg, check_api_reachable, check_networks_distinct, check_stale_workloads,
    exported_workloads, gather_each, kube_checks,
};
use crate::debug::client::{self, DEFAULT_ADDR, Report};
use crate::debug::source::{PEER_CONNECTED, PEER_DATA_PLANE_PROGRAMMED, PEERING_SUCCEEDED};
use crate::proto::debug::v1 as api;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The debug API of the peerd to check.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// Show the detail behind each check (conditions per peer, root fingerprints).
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Before linking: skip the checks that need established peers.
    #[arg(long)]
    pub precheck: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = CheckOutput::Text)]
    pub output: CheckOutput,
    /// A cluster's root certificate (Istio's root-cert.pem), as CLUSTER=PATH; repeat per
    /// cluster.
    #[arg(long = "root-cert", value_name = "CLUSTER=PATH")]
    pub root_certs: Vec<String>,
    /// A cluster's CA certificate chain (Istio's cacerts ca-cert.pem or cert-chain.pem),
    /// as CLUSTER=PATH; repeat per cluster.
    #[arg(long = "ca-cert", value_name = "CLUSTER=PATH")]
    pub ca_certs: Vec<String>,
    /// A kubeconfig: adds the checks that read the Kubernetes API (east-west and peer
    /// Gateways, the root ConfigMap, network labels). Default: $KUBECONFIG when
    /// `--context` is given.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// A kubeconfig context to check, as NAME or NAME=CLUSTER (the Istio cluster name,
    /// default NAME); repeat for the cross-cluster checks.
    #[arg(long = "context", value_name = "NAME[=CLUSTER]")]
    pub contexts: Vec<ContextArg>,
    /// With `--precheck`: clusters may share a network (flat: pod IPs routable between
    /// them); otherwise every cluster's network must be distinct.
    #[arg(long)]
    pub flat_networks: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckOutput {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
}

impl Outcome {
    pub fn symbol(self) -> &'static str {
        match self {
            Outcome::Pass => "✅",
            Outcome::Warn => "⚠",
            Outcome::Fail => "❌",
        }
    }
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub outcome: Outcome,
    pub reason: String,
    /// Shown with `--verbose`.
    pub details: Vec<String>,
}

impl CheckResult {
    pub(crate) fn new(name: &str, outcome: Outcome, reason: impl Into<String>) -> Self {
        CheckResult {
            name: name.into(),
            outcome,
            reason: reason.into(),
            details: Vec::new(),
        }
    }

    pub(crate) fn with_details(mut self, details: Vec<String>) -> Self {
        self.details = details;
        self
    }
}

/// A cluster's certificate files.
#[derive(Debug, Clone, Default)]
pub struct ClusterCerts {
    pub root: Option<PathBuf>,
    pub ca_chain: Option<PathBuf>,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let certs = cert_args(&args.root_certs, &args.ca_certs)?;
    let report = client::fetch(&args.addr).await;
    let kube_given = args.kubeconfig.is_some() || !args.contexts.is_empty();
    let mut results = match &report {
        Ok(report) => run_checks(report, &certs, args.precheck),
        // Before linking, an operator's workstation usually reaches no peerd: the
        // Kubernetes checks are the precheck.
        Err(e) if args.precheck && kube_given => vec![CheckResult::new(
            "debug API",
            Outcome::Warn,
            format!("{e:#} (only the Kubernetes prechecks ran)"),
        )],
        Err(e) => vec![CheckResult::new(
            "debug API",
            Outcome::Fail,
            format!("{e:#}"),
        )],
    };
    if kube_given {
        match gather_each(args.kubeconfig.as_ref(), &args.contexts).await {
            Ok(each) => {
                let mut facts = Vec::new();
                for (target, gathered) in each {
                    if args.precheck {
                        results.push(check_api_reachable(&target, &gathered));
                    }
                    match gathered {
                        Ok(f) => facts.push(f),
                        Err(e) if !args.precheck => results.push(CheckResult::new(
                            "kubernetes",
                            Outcome::Fail,
                            format!("{e:#}"),
                        )),
                        Err(_) => {}
                    }
                }
                results.extend(kube_checks(&facts, args.precheck));
                if args.precheck {
                    results.push(check_networks_distinct(&facts, args.flat_networks));
                }
                // Stale entries of the checked peerd's own cluster, against what its
                // peers send it now.
                let own = report
                    .as_ref()
                    .ok()
                    .and_then(|r| facts.iter().find(|f| f.cluster == r.info.cluster));
                if let (Some(own), false) = (own, args.precheck) {
                    let sources: std::collections::BTreeSet<String> = own
                        .flat_entries
                        .iter()
                        .map(|e| e.source_cluster.clone())
                        .collect();
                    results.push(match exported_workloads(&args.addr, sources).await {
                        Ok(exported) => check_stale_workloads(own, &exported),
                        Err(e) => CheckResult::new(
                            &format!("stale workloads ({})", own.cluster),
                            Outcome::Fail,
                            format!("{e:#}"),
                        ),
                    });
                }
            }
            Err(e) => results.push(CheckResult::new(
                "kubernetes",
                Outcome::Fail,
                format!("{e:#}"),
            )),
        }
    }
    match args.output {
        CheckOutput::Text => print!("{}", render(&results, args.verbose)),
        CheckOutput::Json => println!("{}", serde_json::to_string_pretty(&results)?),
    }
    let failed = results
        .iter()
        .filter(|r| r.outcome == Outcome::Fail)
        .count();
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

/// `CLUSTER=PATH` flags into certificate files per cluster.
pub fn cert_args(
    roots: &[String],
    chains: &[String],
) -> anyhow::Result<BTreeMap<String, ClusterCerts>> {
    let mut certs: BTreeMap<String, ClusterCerts> = BTreeMap::new();
    for (flag, values, is_root) in [("--root-cert", roots, true), ("--ca-cert", chains, false)] {
        for value in values {
            let Some((cluster, path)) = value.split_once('=') else {
                bail!("{flag} {value}: expected CLUSTER=PATH");
            };
            if cluster.is_empty() || path.is_empty() {
                bail!("{flag} {value}: expected CLUSTER=PATH");
            }
            let entry = certs.entry(cluster.to_string()).or_default();
            let slot = if is_root {
                &mut entry.root
            } else {
                &mut entry.ca_chain
            };
            if slot.replace(PathBuf::from(path)).is_some() {
                bail!("{flag}: cluster {cluster} given twice");
            }
        }
    }
    Ok(certs)
}

pub fn render(results: &[CheckResult], verbose: bool) -> String {
    let mut out = String::new();
    for r in results {
        out.push_str(&format!(
            "{} {}: {}\n",
            r.outcome.symbol(),
            r.name,
            r.reason
        ));
        if verbose {
            for d in &r.details {
                out.push_str(&format!("    {d}\n"));
            }
        }
    }
    out
}

/// Every applicable check, in the order of docs/design.md §10.3.
pub fn run_checks(
    report: &Report,
    certs: &BTreeMap<String, ClusterCerts>,
    precheck: bool,
) -> Vec<CheckResult> {
    let mut results = vec![check_config(&report.info), check_local_upstream(report)];
    if !precheck {
        results.extend(check_peers(&report.peers));
        results.extend(check_data_plane(&report.peers));
    }
    results.push(check_message_size(&report.subscribers));
    if !certs.is_empty() {
        results.push(check_certificates(certs));
    }
    results.push(check_networks(&report.info, &report.peers));
    results.push(check_waypoints(&report.info));
    results
}

/// Waypoint references the export leaves out: ztunnels in peer clusters send that
/// traffic straight to the service's pods, skipping its L7 policy.
pub fn check_waypoints(info: &api::ServerInfo) -> CheckResult {
    const NAME: &str = "waypoints";
    if info.dropped_waypoints.is_empty() {
        return CheckResult::new(
            NAME,
            Outcome::Pass,
            "every waypoint of an exported resource is exported with it",
        );
    }
    CheckResult::new(
        NAME,
        Outcome::Warn,
        format!(
            "{} waypoint reference(s) left out of the export (peers bypass those waypoints)",
            info.dropped_waypoints.len()
        ),
    )
    .with_details(info.dropped_waypoints.clone())
}

pub fn check_config(info: &api::ServerInfo) -> CheckResult {
    const NAME: &str = "config";
    let details = vec![
        format!(
            "cluster {:?}, network {:?}, trust domain {:?}",
            info.cluster, info.network, info.trust_domain
        ),
        format!("flat networks: {}", info.flat_networks),
        format!(
            "probe mode: {} ({})",
            info.probe_mode, info.probe_mode_reason
        ),
        format!("xds listener: {}", info.xds_address),
    ];
    if info.cluster.is_empty() {
        return CheckResult::new(NAME, Outcome::Fail, "no cluster name (CLUSTER_ID)")
            .with_details(details);
    }
    if !info.ready {
        return CheckResult::new(
            NAME,
            Outcome::Fail,
            format!(
                "peerd {} is not ready: waiting for {}",
                info.cluster,
                info.pending_gates.join(", ")
            ),
        )
        .with_details(details);
    }
    if info.flat_networks && info.network.is_empty() {
        return CheckResult::new(
            NAME,
            Outcome::Warn,
            "flat networks enabled but NETWORK is empty: every peer on the default network is treated as flat",
        )
        .with_details(details);
    }
    CheckResult::new(
        NAME,
        Outcome::Pass,
        format!(
            "peerd {} {} is ready (network {:?})",
            info.cluster, info.version, info.network
        ),
    )
    .with_details(details)
}

pub fn check_local_upstream(report: &Report) -> CheckResult {
    const NAME: &str = "local istiod";
    let cluster = &report.info.cluster;
    let Some(u) = report.upstreams.iter().find(|u| &u.name == cluster) else {
        return CheckResult::new(
            NAME,
            Outcome::Fail,
            format!("no upstream named {cluster:?}: nothing syncs the local cluster"),
        );
    };
    let details = vec![
        format!(
            "address {}, reconnects {}, NACKs sent {}",
            u.address, u.reconnects, u.nacks_sent
        ),
        format!("synced types: {}", u.synced_types.join(", ")),
    ];
    if !u.connected {
        let why = if u.last_error.is_empty() {
            "not connected".to_string()
        } else {
            format!("not connected: {}", u.last_error)
        };
        return CheckResult::new(NAME, Outcome::Fail, format!("{} ({why})", u.address))
            .with_details(details);
    }
    if u.synced_types.len() < 2 {
        return CheckResult::new(
            NAME,
            Outcome::Fail,
            format!(
                "connected to {} but not fully synced (synced: {})",
                u.address,
                if u.synced_types.is_empty() {
                    "none".to_string()
                } else {
                    u.synced_types.join(", ")
                }
            ),
        )
        .with_details(details);
    }
    let c = u.counts.unwrap_or_default();
    CheckResult::new(
        NAME,
        Outcome::Pass,
        format!(
            "synced from {}: {} workloads, {} services, {} authorizations",
            u.address, c.workloads, c.services, c.authorizations
        ),
    )
    .with_details(details)
}

fn condition<'a>(p: &'a api::Peer, kind: &str) -> Option<&'a api::Condition> {
    p.conditions.iter().find(|c| c.r#type == kind)
}

fn condition_lines(p: &api::Peer) -> Vec<String> {
    p.conditions
        .iter()
        .map(|c| format!("{}={} {}: {}", c.r#type, c.status, c.reason, c.message))
        .collect()
}

fn short(kind: &str) -> &str {
    kind.rsplit('/').next().unwrap_or(kind)
}

/// `PeerConnected` and `PeeringSucceeded` True on every peer.
pub fn check_peers(peers: &[api::Peer]) -> Vec<CheckResult> {
    if peers.is_empty() {
        return vec![CheckResult::new(
            "peers",
            Outcome::Warn,
            "no peers configured",
        )];
    }
    peers
        .iter()
        .map(|p| {
            let name = format!("peer {}", p.cluster);
            let failing = [PEER_CONNECTED, PEERING_SUCCEEDED]
                .into_iter()
                .find_map(|kind| match condition(p, kind) {
                    Some(c) if c.status == "True" => None,
                    Some(c) => Some(format!(
                        "{} is {} ({}: {})",
                        short(kind),
                        c.status,
                        c.reason,
                        c.message
                    )),
                    None => Some(format!("{} is not reported", short(kind))),
                });
            match failing {
                None => CheckResult::new(
                    &name,
                    Outcome::Pass,
                    "PeerConnected and PeeringSucceeded are True",
                ),
                Some(reason) => CheckResult::new(&name, Outcome::Fail, reason),
            }
            .with_details(condition_lines(p))
        })
        .collect()
}

/// `PeerDataPlaneProgrammed` on every peer (measured by peerd's probes).
pub fn check_data_plane(peers: &[api::Peer]) -> Vec<CheckResult> {
    peers
        .iter()
        .map(|p| {
            let name = format!("peer {} data plane", p.cluster);
            let mut details = Vec::new();
            for (label, probe) in [("hbone", &p.hbone_probe), ("xds", &p.xds_probe)] {
                if let Some(s) = probe {
                    details.push(format!(
                        "{label} probe ({}): {} attempts, {} established, {} refused, {} timeouts, p50 {} µs, p99 {} µs",
                        s.mode, s.attempts, s.established, s.refused, s.timeouts, s.p50_us, s.p99_us
                    ));
                }
            }
            match condition(p, PEER_DATA_PLANE_PROGRAMMED) {
                Some(c) if c.status == "True" => {
                    CheckResult::new(&name, Outcome::Pass, "PeerDataPlaneProgrammed is True")
                }
                Some(c) => CheckResult::new(
                    &name,
                    Outcome::Fail,
                    format!("PeerDataPlaneProgrammed is {} ({}: {})", c.status, c.reason, c.message),
                ),
                None => CheckResult::new(
                    &name,
                    Outcome::Warn,
                    "PeerDataPlaneProgrammed is not reported (no data-plane measurement yet)",
                ),
            }
            .with_details(details)
        })
        .collect()
}

/// Whether every stream's first response fit in one message of `maxMessageBytes`: a
/// split one means the state outgrew it (ztunnel turns ready after ACKing one response
/// per type).
pub fn check_message_size(subscribers: &[api::Subscriber]) -> CheckResult {
    const NAME: &str = "message size";
    let mut split = Vec::new();
    for s in subscribers {
        for t in s.stream.iter().flat_map(|st| &st.types) {
            if t.split_parts > 1 {
                let node: String = s.node_id.chars().take(128).collect();
                split.push(format!(
                    "{} state to {node} ({} view): first response split into {} parts",
                    t.r#type, s.view, t.split_parts
                ));
            }
        }
    }
    if split.is_empty() {
        return CheckResult::new(
            NAME,
            Outcome::Pass,
            "every stream's full state fit in one message of xds.maxMessageBytes",
        );
    }
    CheckResult::new(
        NAME,
        Outcome::Warn,
        format!(
            "the full state does not fit in one message of xds.maxMessageBytes ({} stream type(s) split); raise xds.maxMessageBytes (ztunnel accepts 200 MiB)",
            split.len()
        ),
    )
    .with_details(split)
}

/// Non-flat: every network (local and peers) set and unique. Flat: peers on the local
/// network are flat, others go through their gateway.
pub fn check_networks(info: &api::ServerInfo, peers: &[api::Peer]) -> CheckResult {
    const NAME: &str = "network configuration";
    let mut by_network: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    by_network
        .entry(&info.network)
        .or_default()
        .push(&info.cluster);
    for p in peers {
        by_network.entry(&p.network).or_default().push(&p.cluster);
    }
    let details: Vec<String> = by_network
        .iter()
        .map(|(n, clusters)| format!("network {n:?}: {}", clusters.join(", ")))
        .collect();
    if info.flat_networks {
        let flat: Vec<&str> = peers
            .iter()
            .filter(|p| p.flat)
            .map(|p| p.cluster.as_str())
            .collect();
        return CheckResult::new(
            NAME,
            Outcome::Pass,
            format!(
                "flat networks: {} peer(s) share network {:?} ({})",
                flat.len(),
                info.network,
                flat.join(", ")
            ),
        )
        .with_details(details);
    }
    let shared: Vec<String> = by_network
        .iter()
        .filter(|(_, clusters)| clusters.len() > 1)
        .map(|(n, clusters)| format!("{n:?} is used by {}", clusters.join(" and ")))
        .collect();
    if !shared.is_empty() {
        return CheckResult::new(
            NAME,
            Outcome::Fail,
            format!("networks must be unique without flat networks: {} (traffic would go to 240.x.x.x addresses)", shared.join("; ")),
        )
        .with_details(details);
    }
    CheckResult::new(
        NAME,
        Outcome::Pass,
        format!("{} cluster(s) on unique networks", peers.len() + 1),
    )
    .with_details(details)
}

/// PEM file → DER certificates, in order.
fn read_pem_certs(path: &PathBuf) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&text)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not PEM", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate", path.display());
    }
    Ok(certs)
}

pub(crate) fn sha256_hex(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse(der: &[u8]) -> anyhow::Result<X509Certificate<'_>> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))
}

/// Whether `chain` (leaf or intermediate first) leads to `root`: each certificate is
/// signed by the next, the last by `root` (or is `root`), and all are within validity.
pub fn verify_chain(chain: &[Vec<u8>], root: &[u8]) -> anyhow::Result<()> {
    let root_cert = parse(root)?;
    let parsed: Vec<X509Certificate<'_>> =
        chain.iter().map(|d| parse(d)).collect::<Result<_, _>>()?;
    for (i, cert) in parsed.iter().enumerate() {
        if !cert.validity().is_valid() {
            bail!(
                "{} is not valid now (expired or not yet valid)",
                cert.subject()
            );
        }
        if chain[i] == root {
            return Ok(());
        }
        let issuer = parsed.get(i + 1).unwrap_or(&root_cert);
        if cert.issuer() != issuer.subject() {
            bail!(
                "{} is issued by {}, not by {}",
                cert.subject(),
                cert.issuer(),
                issuer.subject()
            );
        }
        cert.verify_signature(Some(issuer.public_key()))
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: signature does not verify with {}'s key: {e}",
                    cert.subject(),
                    issuer.subject()
                )
            })?;
    }
    Ok(())
}

/// Every cluster's CA chain verifies against every other cluster's root (one shared root
/// of trust, or cross-trusted roots); prints each root's SHA-256.
pub fn check_certificates(certs: &BTreeMap<String, ClusterCerts>) -> CheckResult {
    const NAME: &str = "intermediate certificates";
    let mut details = Vec::new();
    let mut roots: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (cluster, files) in certs {
        let Some(path) = &files.root else {
            problems.push(format!("{cluster}: no --root-cert"));
            continue;
        };
        match read_pem_certs(path) {
            Ok(mut certs) => {
                let root = certs.swap_remove(0);
                details.push(format!("{cluster} root SHA256 {}", sha256_hex(&root)));
                roots.insert(cluster, root);
            }
            Err(e) => problems.push(format!("{cluster}: {e:#}")),
        }
    }
    let mut verified = 0;
    for (cluster, files) in certs {
        let Some(path) = &files.ca_chain else {
            continue;
        };
        let chain = match read_pem_certs(path) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("{cluster}: {e:#}"));
                continue;
            }
        };
        for (other, root) in &roots {
            // A single cluster checks its chain against its own root.
            if other == cluster && roots.len() > 1 {
                continue;
            }
            match verify_chain(&chain, root) {
                Ok(()) => {
                    verified += 1;
                    details.push(format!(
                        "{cluster} CA chain verifies against {other}'s root"
                    ));
                }
                Err(e) => problems.push(format!(
                    "{cluster}'s CA chain does not verify against {other}'s root: {e:#}"
                )),
            }
        }
    }
    if let Some(first) = problems.first() {
        let more = if problems.len() > 1 {
            format!(" (and {} more)", problems.len() - 1)
        } else {
            String::new()
        };
        details.extend(problems.iter().cloned());
        return CheckResult::new(NAME, Outcome::Fail, format!("{first}{more}"))
            .with_details(details);
    }
    if verified == 0 {
        return CheckResult::new(
            NAME,
            Outcome::Warn,
            "no --ca-cert given: only root fingerprints shown",
        )
        .with_details(details);
    }
    CheckResult::new(
        NAME,
        Outcome::Pass,
        format!(
            "{verified} chain/root pair(s) verify across {} cluster(s)",
            certs.len()
        ),
    )
    .with_details(details)
}
