//! `peerd check --kubeconfig FILE [--context NAME[=CLUSTER] ...]`: the checks of the
//! list in docs/design.md §10.3 that need the Kubernetes API, per context and across contexts: the
//! east-west Gateway is `Programmed` with an address; every `istio-remote` Gateway has
//! `PeerConnected`, `PeeringSucceeded` and `PeerDataPlaneProgrammed` True (as written by
//! the leader peerd of that cluster); every cluster's root certificate
//! (`istio-system/istio-ca-root-cert`) is the same; and the network configuration agrees:
//! each cluster's `istio-system` network label is set, and each peer Gateway's network
//! label equals the network of the cluster it points at (when that cluster is one of the
//! contexts); and, for the checked peerd's own cluster, `autogenflat.*` WorkloadEntries whose
//! pod the source cluster no longer sends (stale workloads).
//!
//! [`gather`] reads; the checks are pure functions of the gathered [`ClusterFacts`]. It must
//! never write to a cluster, and never print credentials from the kubeconfig.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::debug::check::{CheckResult, Outcome, sha256_hex};
use crate::kube::types::{
    ANNOTATION_PEERED_WORKLOAD_UID, CONDITION_ACCEPTED, CONDITION_DATA_PLANE_PROGRAMMED,
    CONDITION_PEER_CONNECTED, CONDITION_PEERING_SUCCEEDED, CONDITION_PROGRAMMED,
    GATEWAY_CLASS_EASTWEST, GATEWAY_CLASS_REMOTE, Gateway, LABEL_CLUSTER, LABEL_MANAGED_BY,
    LABEL_NETWORK, LABEL_SOURCE_CLUSTER, MANAGED_BY_PEERD, WorkloadEntry,
};

/// Where Istio keeps its root certificate and network label.
pub const ISTIO_SYSTEM: &str = "istio-system";
/// The ConfigMap istiod publishes the mesh root in, and its key.
pub const ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
pub const ROOT_KEY: &str = "root-cert.pem";

/// One `--context NAME[=CLUSTER]`: the kubeconfig context and the Istio cluster name it
/// holds (default: the context name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextArg {
    pub context: String,
    pub cluster: String,
}

impl std::str::FromStr for ContextArg {
    type Err = String;

    fn from_str(s: &str) -> Result<ContextArg, String> {
        let (context, cluster) = s.split_once('=').unwrap_or((s, s));
        if context.is_empty() || cluster.is_empty() {
            return Err(format!("--context {s:?}: expected NAME or NAME=CLUSTER"));
        }
        Ok(ContextArg {
            context: context.to_string(),
            cluster: cluster.to_string(),
        })
    }
}

/// One Gateway as the checks see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayFacts {
    /// `namespace/name`.
    pub name: String,
    pub class: String,
    pub labels: BTreeMap<String, String>,
    pub addresses: Vec<String>,
    /// Condition type → (status, reason, message).
    pub conditions: BTreeMap<String, (String, String, String)>,
}

/// What one cluster's API server says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterFacts {
    pub cluster: String,
    /// The `topology.istio.io/network` label of `istio-system`.
    pub network: Option<String>,
    /// The root certificate PEM from `istio-system/istio-ca-root-cert`.
    pub root_pem: Option<String>,
    pub gateways: Vec<GatewayFacts>,
    /// peerd's `autogenflat.*` WorkloadEntries: (name, source cluster, peered workload uid).
    pub flat_entries: Vec<FlatEntry>,
}

/// One `autogenflat.*` WorkloadEntry peerd manages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlatEntry {
    pub name: String,
    pub source_cluster: String,
    pub workload_uid: String,
}

/// Reads the kubeconfig at `path`, or `$KUBECONFIG` / `~/.kube/config`.
pub fn read_kubeconfig(path: Option<&PathBuf>) -> anyhow::Result<Kubeconfig> {
    match path {
        Some(path) => Kubeconfig::read_from(path)
            .with_context(|| format!("reading kubeconfig {}", path.display())),
        None => {
            Kubeconfig::read().context("reading the kubeconfig ($KUBECONFIG or ~/.kube/config)")
        }
    }
}

/// A client for one context of `file` (kube-rs's kubeconfig loading: server, TLS, auth).
pub async fn context_client(file: &Kubeconfig, context: &str) -> anyhow::Result<kube::Client> {
    let options = KubeConfigOptions {
        context: Some(context.to_string()),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(file.clone(), &options)
        .await
        .with_context(|| format!("context {context}: loading"))?;
    kube::Client::try_from(config)
        .with_context(|| format!("context {context}: building the client"))
}

/// The contexts to read: the given ones, else the kubeconfig's current context.
pub fn target_contexts(
    file: &Kubeconfig,
    contexts: &[ContextArg],
) -> anyhow::Result<Vec<ContextArg>> {
    if !contexts.is_empty() {
        return Ok(contexts.to_vec());
    }
    let current = file
        .current_context
        .clone()
        .context("the kubeconfig has no current-context; pass --context")?;
    Ok(vec![ContextArg {
        context: current.clone(),
        cluster: current,
    }])
}

/// Reads the facts of every context (the current one when none is given).
pub async fn gather(
    kubeconfig: Option<&PathBuf>,
    contexts: &[ContextArg],
) -> anyhow::Result<Vec<ClusterFacts>> {
    gather_each(kubeconfig, contexts)
        .await?
        .into_iter()
        .map(|(_, facts)| facts)
        .collect()
}

/// Reads the facts of every context, each with its own outcome (an unreachable API
/// server fails only its context).
pub async fn gather_each(
    kubeconfig: Option<&PathBuf>,
    contexts: &[ContextArg],
) -> anyhow::Result<Vec<(ContextArg, anyhow::Result<ClusterFacts>)>> {
    let file = read_kubeconfig(kubeconfig)?;
    let mut out = Vec::new();
    for target in target_contexts(&file, contexts)? {
        let facts = match context_client(&file, &target.context).await {
            Ok(client) => gather_one(client, &target.cluster)
                .await
                .with_context(|| format!("context {}", target.context)),
            Err(e) => Err(e),
        };
        out.push((target, facts));
    }
    Ok(out)
}

async fn gather_one(client: kube::Client, cluster: &str) -> anyhow::Result<ClusterFacts> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let network = namespaces
        .get_opt(ISTIO_SYSTEM)
        .await
        .context("reading namespace istio-system")?
        .and_then(|ns| ns.metadata.labels.unwrap_or_default().remove(LABEL_NETWORK));
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ISTIO_SYSTEM);
    let root_pem = configmaps
        .get_opt(ROOT_CONFIGMAP)
        .await
        .with_context(|| format!("reading configmap {ISTIO_SYSTEM}/{ROOT_CONFIGMAP}"))?
        .and_then(|cm| cm.data.unwrap_or_default().remove(ROOT_KEY));
    let gateways: Api<Gateway> = Api::all(client.clone());
    let gateways = gateways
        .list(&ListParams::default())
        .await
        .context("listing gateways.gateway.networking.k8s.io")?
        .items
        .into_iter()
        .filter(|g| {
            [GATEWAY_CLASS_REMOTE, GATEWAY_CLASS_EASTWEST]
                .contains(&g.spec.gateway_class_name.as_str())
        })
        .map(|g| GatewayFacts {
            name: format!(
                "{}/{}",
                g.metadata.namespace.clone().unwrap_or_default(),
                g.metadata.name.clone().unwrap_or_default()
            ),
            class: g.spec.gateway_class_name.clone(),
            labels: g.metadata.labels.clone().unwrap_or_default(),
            // The spec's requested addresses, then those istiod reports in the status.
            addresses: {
                let mut addresses: Vec<String> =
                    g.spec.addresses.iter().map(|a| a.value.clone()).collect();
                for a in g.status.iter().flat_map(|s| &s.addresses) {
                    if !addresses.contains(&a.value) {
                        addresses.push(a.value.clone());
                    }
                }
                addresses
            },
            conditions: g
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .map(|c| {
                    (
                        c.type_.clone(),
                        (c.status.clone(), c.reason.clone(), c.message.clone()),
                    )
                })
                .collect(),
        })
        .collect();
    let entries: Api<WorkloadEntry> = Api::all(client);
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY_PEERD}");
    let flat_entries = entries
        .list(&ListParams::default().labels(&selector))
        .await
        .context("listing workloadentries.networking.istio.io")?
        .items
        .into_iter()
        .filter_map(|we| {
            let name = we.metadata.name.clone().unwrap_or_default();
            if !name.starts_with("autogenflat.") {
                return None;
            }
            let label = |key: &str| {
                we.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(key))
                    .cloned()
                    .unwrap_or_default()
            };
            let uid = we
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_PEERED_WORKLOAD_UID))
                .cloned()
                .unwrap_or_default();
            Some(FlatEntry {
                source_cluster: label(LABEL_SOURCE_CLUSTER),
                workload_uid: uid,
                name,
            })
        })
        .collect();
    Ok(ClusterFacts {
        cluster: cluster.to_string(),
        network,
        root_pem,
        gateways,
        flat_entries,
    })
}

/// Every Kubernetes check, per cluster then across clusters.
pub fn kube_checks(facts: &[ClusterFacts], precheck: bool) -> Vec<CheckResult> {
    let mut results = Vec::new();
    for f in facts {
        let mut eastwest = check_eastwest(f);
        // Before linking, a cluster nobody can reach cannot be linked.
        if precheck && eastwest.outcome == Outcome::Warn {
            eastwest.outcome = Outcome::Fail;
        }
        results.push(eastwest);
        if !precheck {
            results.extend(check_peer_gateways(f));
        }
    }
    results.push(check_roots(facts));
    results.push(check_kube_networks(facts));
    results
}

fn condition_lines(g: &GatewayFacts) -> Vec<String> {
    g.conditions
        .iter()
        .map(|(t, (status, reason, message))| format!("{t}={status} {reason}: {message}"))
        .collect()
}

/// The east-west Gateway exists, is `Programmed` and has an address.
pub fn check_eastwest(f: &ClusterFacts) -> CheckResult {
    let name = format!("east-west gateway ({})", f.cluster);
    let eastwest: Vec<&GatewayFacts> = f
        .gateways
        .iter()
        .filter(|g| g.class == GATEWAY_CLASS_EASTWEST)
        .collect();
    let Some(g) = eastwest.first() else {
        return CheckResult::new(
            &name,
            Outcome::Warn,
            format!(
                "no {GATEWAY_CLASS_EASTWEST} Gateway: peers on other networks cannot reach this cluster"
            ),
        );
    };
    let result = match g.conditions.get(CONDITION_PROGRAMMED) {
        Some((status, _, _)) if status == "True" && !g.addresses.is_empty() => CheckResult::new(
            &name,
            Outcome::Pass,
            format!("{} is Programmed at {}", g.name, g.addresses.join(", ")),
        ),
        Some((status, _, _)) if status == "True" => CheckResult::new(
            &name,
            Outcome::Fail,
            format!("{} is Programmed but has no address", g.name),
        ),
        Some((status, reason, message)) => CheckResult::new(
            &name,
            Outcome::Fail,
            format!("{} Programmed is {status} ({reason}: {message})", g.name),
        ),
        None => CheckResult::new(
            &name,
            Outcome::Fail,
            format!("{} has no Programmed condition", g.name),
        ),
    };
    result.with_details(condition_lines(g))
}

/// Each peer Gateway: accepted, connected, synced and with a measured data plane.
pub fn check_peer_gateways(f: &ClusterFacts) -> Vec<CheckResult> {
    let peers: Vec<&GatewayFacts> = f
        .gateways
        .iter()
        .filter(|g| g.class == GATEWAY_CLASS_REMOTE)
        .collect();
    if peers.is_empty() {
        return vec![CheckResult::new(
            &format!("peer gateways ({})", f.cluster),
            Outcome::Warn,
            format!("no {GATEWAY_CLASS_REMOTE} Gateway: this cluster peers with nobody"),
        )];
    }
    peers
        .into_iter()
        .map(|g| {
            let name = format!("peer gateway {} ({})", g.name, f.cluster);
            let failing = [
                CONDITION_ACCEPTED,
                CONDITION_PEER_CONNECTED,
                CONDITION_PEERING_SUCCEEDED,
                CONDITION_DATA_PLANE_PROGRAMMED,
            ]
            .into_iter()
            .find_map(|t| match g.conditions.get(t) {
                Some((status, _, _)) if status == "True" => None,
                Some((status, reason, message)) => {
                    Some(format!("{t} is {status} ({reason}: {message})"))
                }
                None => Some(format!("{t} is not set (is peerd running and leading?)")),
            });
            match failing {
                None => CheckResult::new(
                    &name,
                    Outcome::Pass,
                    "Accepted, PeerConnected, PeeringSucceeded and PeerDataPlaneProgrammed are True",
                ),
                Some(reason) => CheckResult::new(&name, Outcome::Fail, reason),
            }
            .with_details(condition_lines(g))
        })
        .collect()
}

/// Every cluster publishes the same root: otherwise peers fail TLS with an unknown
/// authority.
pub fn check_roots(facts: &[ClusterFacts]) -> CheckResult {
    const NAME: &str = "root certificates (kubernetes)";
    let mut by_digest: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut missing = Vec::new();
    for f in facts {
        match f.root_pem.as_deref().map(root_digest) {
            Some(Ok(digest)) => by_digest.entry(digest).or_default().push(&f.cluster),
            Some(Err(e)) => {
                return CheckResult::new(
                    NAME,
                    Outcome::Fail,
                    format!(
                        "{}: {ISTIO_SYSTEM}/{ROOT_CONFIGMAP} {ROOT_KEY}: {e:#}",
                        f.cluster
                    ),
                );
            }
            None => missing.push(f.cluster.as_str()),
        }
    }
    let details: Vec<String> = by_digest
        .iter()
        .map(|(d, clusters)| format!("{} root SHA256 {d}", clusters.join(", ")))
        .collect();
    if !missing.is_empty() {
        return CheckResult::new(
            NAME,
            Outcome::Warn,
            format!(
                "no {ISTIO_SYSTEM}/{ROOT_CONFIGMAP} in {} (istiod not installed yet?)",
                missing.join(", ")
            ),
        )
        .with_details(details);
    }
    match by_digest.len() {
        0 => CheckResult::new(NAME, Outcome::Warn, "no cluster to compare"),
        1 => CheckResult::new(
            NAME,
            Outcome::Pass,
            format!("{} cluster(s) share one root", facts.len()),
        ),
        _ => CheckResult::new(
            NAME,
            Outcome::Fail,
            "clusters publish different roots: peers will fail TLS with an unknown certificate authority (plug in intermediates from one shared root)",
        ),
    }
    .with_details(details)
}

fn root_digest(pem: &str) -> anyhow::Result<String> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .context("no certificate")?
        .context("not PEM")?;
    Ok(sha256_hex(&der))
}

/// Networks are labelled, and each peer Gateway names the network its cluster is on.
pub fn check_kube_networks(facts: &[ClusterFacts]) -> CheckResult {
    const NAME: &str = "network configuration (kubernetes)";
    let networks: BTreeMap<&str, Option<&str>> = facts
        .iter()
        .map(|f| (f.cluster.as_str(), f.network.as_deref()))
        .collect();
    let mut problems = Vec::new();
    let mut unlabelled = Vec::new();
    let mut details = Vec::new();
    for f in facts {
        match &f.network {
            Some(n) => details.push(format!("{}: istio-system network {n:?}", f.cluster)),
            None => unlabelled.push(f.cluster.as_str()),
        }
        for g in f
            .gateways
            .iter()
            .filter(|g| g.class == GATEWAY_CLASS_REMOTE)
        {
            let target = g.labels.get(LABEL_CLUSTER).map(String::as_str);
            let claimed = g.labels.get(LABEL_NETWORK).map(String::as_str);
            details.push(format!(
                "{}: peer gateway {} → cluster {:?} network {:?}",
                f.cluster, g.name, target, claimed
            ));
            if let (Some(target), Some(Some(actual))) =
                (target, target.and_then(|t| networks.get(t)))
                && claimed != Some(*actual)
            {
                problems.push(format!(
                    "{}: peer gateway {} says cluster {target} is on network {:?}, but {target} labels its istio-system {actual:?} (traffic would go to 240.x.x.x addresses and time out)",
                    f.cluster, g.name, claimed.unwrap_or("")
                ));
            }
        }
    }
    if !problems.is_empty() {
        CheckResult::new(NAME, Outcome::Fail, problems.join("; "))
    } else if !unlabelled.is_empty() {
        CheckResult::new(
            NAME,
            Outcome::Warn,
            format!(
                "namespace {ISTIO_SYSTEM} has no {LABEL_NETWORK} label in {} (Istio then assumes the default network)",
                unlabelled.join(", ")
            ),
        )
    } else {
        CheckResult::new(
            NAME,
            Outcome::Pass,
            format!("{} cluster(s): network labels agree", facts.len()),
        )
    }
    .with_details(details)
}

/// `--precheck`: each cluster's API server answered (an unreachable one is named here;
/// its other checks cannot run).
pub fn check_api_reachable(
    target: &ContextArg,
    facts: &anyhow::Result<ClusterFacts>,
) -> CheckResult {
    let name = format!("API server ({})", target.cluster);
    match facts {
        Ok(_) => CheckResult::new(
            &name,
            Outcome::Pass,
            format!("context {} answers", target.context),
        ),
        Err(e) => CheckResult::new(&name, Outcome::Fail, format!("{e:#}")),
    }
}

/// `--precheck`: every cluster's network is known and consistent (the `istio-system`
/// label and the east-west Gateway's label agree), and no two clusters share a network
/// unless `flat_networks` (then clusters on one network peer flat, pod to pod).
pub fn check_networks_distinct(facts: &[ClusterFacts], flat_networks: bool) -> CheckResult {
    const NAME: &str = "networks before linking";
    let mut problems = Vec::new();
    let mut by_network: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for f in facts {
        let eastwest = f
            .gateways
            .iter()
            .find(|g| g.class == GATEWAY_CLASS_EASTWEST)
            .and_then(|g| g.labels.get(LABEL_NETWORK));
        match (f.network.as_deref(), eastwest.map(String::as_str)) {
            (Some(ns), Some(gw)) if ns != gw => problems.push(format!(
                "{}: {ISTIO_SYSTEM} is labelled network {ns:?} but its east-west Gateway {gw:?}",
                f.cluster
            )),
            (Some(n), _) | (None, Some(n)) => by_network.entry(n).or_default().push(&f.cluster),
            (None, None) => problems.push(format!(
                "{}: no {LABEL_NETWORK} label on {ISTIO_SYSTEM} or its east-west Gateway",
                f.cluster
            )),
        }
    }
    if !flat_networks {
        for (network, clusters) in &by_network {
            if clusters.len() > 1 {
                problems.push(format!(
                    "{} share network {network:?}: networks must be distinct unless flat (--flat-networks)",
                    clusters.join(", ")
                ));
            }
        }
    }
    let details = by_network
        .iter()
        .map(|(n, clusters)| format!("network {n:?}: {}", clusters.join(", ")))
        .collect();
    if problems.is_empty() {
        CheckResult::new(
            NAME,
            Outcome::Pass,
            format!(
                "{} cluster(s) on {} network(s){}",
                facts.len(),
                by_network.len(),
                if flat_networks { " (flat allowed)" } else { "" }
            ),
        )
    } else {
        CheckResult::new(NAME, Outcome::Fail, problems.join("; "))
    }
    .with_details(details)
}

/// Workload uids each source cluster currently sends the checked peerd (its debug API's
/// per-origin views), for the stale-workloads check.
pub async fn exported_workloads(
    addr: &str,
    clusters: impl IntoIterator<Item = String>,
) -> anyhow::Result<BTreeMap<String, std::collections::BTreeSet<String>>> {
    let mut client = crate::debug::client::connect(addr).await?;
    let mut known = BTreeMap::new();
    for cluster in clusters {
        let names = client
            .list_resources(crate::proto::debug::v1::ListResourcesRequest {
                view: cluster.clone(),
                r#type: "workload".into(),
                include_json: false,
                ..Default::default()
            })
            .await
            .with_context(|| format!("ListResources of {cluster}"))?
            .into_inner()
            .resources
            .into_iter()
            .map(|r| r.name)
            .collect();
        known.insert(cluster, names);
    }
    Ok(known)
}

/// Reference check 8 (flat networks): `autogenflat.*` WorkloadEntries whose pod the
/// source cluster no longer sends. peerd deletes them after the peer's next complete
/// sync, so a few are normal under churn: a warning, with the names in the details; the
/// `PeerdStaleWorkloadEntries` alert fires when they persist.
pub fn check_stale_workloads(
    facts: &ClusterFacts,
    exported: &BTreeMap<String, std::collections::BTreeSet<String>>,
) -> CheckResult {
    let name = format!("stale workloads ({})", facts.cluster);
    let stale: Vec<&FlatEntry> = facts
        .flat_entries
        .iter()
        .filter(|e| {
            exported
                .get(&e.source_cluster)
                .is_none_or(|uids| !uids.contains(&e.workload_uid))
        })
        .collect();
    let details: Vec<String> = stale
        .iter()
        .map(|e| {
            format!(
                "{} (from {}: {} is gone)",
                e.name, e.source_cluster, e.workload_uid
            )
        })
        .collect();
    if stale.is_empty() {
        CheckResult::new(
            &name,
            Outcome::Pass,
            format!(
                "{} autogenflat WorkloadEntries, each backed by a pod its cluster still sends",
                facts.flat_entries.len()
            ),
        )
    } else {
        CheckResult::new(
            &name,
            Outcome::Warn,
            format!(
                "{} of {} autogenflat WorkloadEntries name pods their cluster no longer sends (deleted after that peer's next complete sync)",
                stale.len(),
                facts.flat_entries.len()
            ),
        )
        .with_details(details)
    }
}
