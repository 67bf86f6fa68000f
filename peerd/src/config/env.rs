//! Environment variables with Istio's names, and the command-line overrides, applied on top
//! of the file (env over file, flags over env).
//!
//! Owns: the list of recognised variables and flags and where each lands in the file
//! schema; the record of which field was set by which source (so errors can say so).
//! Never reads variables other than [`ENV_VARS`]; never validates values beyond what is
//! needed to store them.

use std::collections::{BTreeMap, HashMap};

use super::file::{FileConfig, LogFormat, UpstreamFile};
use super::validate::FieldError;

/// Every environment variable peerd's configuration reads.
pub const ENV_VARS: &[&str] = &[
    "CLUSTER_ID",
    "NETWORK",
    "TRUST_DOMAIN",
    "PEERING_ENABLE_FLAT_NETWORKS",
    "PEERING_NAMESPACE",
    "PEERING_CONTROL_NAMESPACE",
    "PEERING_MEMORY_BUDGET_BYTES",
    "XDS_ADDRESS",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "LOG_FORMAT",
    "KUBECONFIG",
    "POD_NAME",
    "POD_NAMESPACE",
    "SERVICE_ACCOUNT",
    "KUBERNETES_SERVICE_HOST",
];

/// A snapshot of the recognised environment variables. Tests build one from pairs instead
/// of mutating the process environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// Reads [`ENV_VARS`] from the process environment. Empty values count as unset, like
    /// Istio's env handling.
    pub fn from_process() -> Env {
        Env::from_pairs(
            ENV_VARS
                .iter()
                .filter_map(|name| std::env::var(name).ok().map(|v| (*name, v))),
        )
    }

    /// An environment holding exactly `pairs`.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        let vars = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(_, v): &(String, String)| !v.trim().is_empty())
            .collect();
        Env { vars }
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(|v| v.trim())
    }
}

/// Values given on the command line; `None` = not given. The CLI fills this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--cluster`
    pub cluster: Option<String>,
    /// `--network`
    pub network: Option<String>,
    /// `--trust-domain`
    pub trust_domain: Option<String>,
    /// `--xds-listen` (`listeners.xds`)
    pub xds_listen: Option<String>,
    /// `--metrics-listen` (`listeners.metrics`)
    pub metrics_listen: Option<String>,
    /// `--health-listen` (`listeners.health`)
    pub health_listen: Option<String>,
    /// `--debug-listen` (`listeners.debug`)
    pub debug_listen: Option<String>,
    /// `--xds-address`: the local istiod's address.
    pub xds_address: Option<String>,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
    /// `--flat-networks`
    pub flat_networks: Option<bool>,
    /// `--sandbox-mode`
    pub sandbox_mode: Option<bool>,
}

/// Which field path was set by which source other than the file (e.g. `cluster` →
/// `env CLUSTER_ID`).
pub type Sources = BTreeMap<String, String>;

/// Applies `env` to `file`, recording sources and collecting unparseable values.
pub fn apply_env(
    file: &mut FileConfig,
    env: &Env,
    sources: &mut Sources,
    errors: &mut Vec<FieldError>,
) {
    let mut set = |path: &str, var: &str, slot: &mut Option<String>| {
        if let Some(v) = env.get(var) {
            *slot = Some(v.to_owned());
            sources.insert(path.to_owned(), format!("env {var}"));
        }
    };
    set("cluster", "CLUSTER_ID", &mut file.cluster);
    set("network", "NETWORK", &mut file.network);
    set("trustDomain", "TRUST_DOMAIN", &mut file.trust_domain);
    set(
        "peeringNamespace",
        "PEERING_NAMESPACE",
        &mut file.peering_namespace,
    );
    set(
        "controlNamespace",
        "PEERING_CONTROL_NAMESPACE",
        &mut file.control_namespace,
    );
    set(
        "identity.namespace",
        "POD_NAMESPACE",
        &mut file.identity.namespace,
    );
    set(
        "identity.serviceAccount",
        "SERVICE_ACCOUNT",
        &mut file.identity.service_account,
    );
    set(
        "telemetry.otlpEndpoint",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        &mut file.telemetry.otlp_endpoint,
    );

    set(
        "kubernetes.leaderElection.identity",
        "POD_NAME",
        &mut file.kubernetes.leader_election.identity,
    );
    if let Some(v) = env.get("KUBECONFIG") {
        file.kubernetes.kubeconfig = Some(v.into());
        sources.insert("kubernetes.kubeconfig".into(), "env KUBECONFIG".into());
    }
    if let Some(v) = env.get("PEERING_ENABLE_FLAT_NETWORKS") {
        match parse_bool(v) {
            Some(b) => {
                file.flat_networks = Some(b);
                sources.insert(
                    "flatNetworks".into(),
                    "env PEERING_ENABLE_FLAT_NETWORKS".into(),
                );
            }
            None => errors.push(FieldError::new(
                "flatNetworks",
                format!(
                    "{v:?} is not a boolean (true/false) (from env PEERING_ENABLE_FLAT_NETWORKS)"
                ),
            )),
        }
    }
    if let Some(v) = env.get("PEERING_MEMORY_BUDGET_BYTES") {
        match v.trim().parse::<u64>() {
            Ok(n) => {
                file.memory_budget_bytes = Some(n);
                sources.insert(
                    "memoryBudgetBytes".into(),
                    "env PEERING_MEMORY_BUDGET_BYTES".into(),
                );
            }
            Err(_) => errors.push(FieldError::new(
                "memoryBudgetBytes",
                format!("{v:?} is not a number of bytes (from env PEERING_MEMORY_BUDGET_BYTES)"),
            )),
        }
    }
    if let Some(v) = env.get("LOG_FORMAT") {
        match parse_log_format(v) {
            Some(f) => {
                file.telemetry.log_format = Some(f);
                sources.insert("telemetry.logFormat".into(), "env LOG_FORMAT".into());
            }
            None => errors.push(FieldError::new(
                "telemetry.logFormat",
                format!("{v:?} is not a log format (text or json) (from env LOG_FORMAT)"),
            )),
        }
    }
    if let Some(v) = env.get("XDS_ADDRESS") {
        set_local_upstream_address(file, v, "env XDS_ADDRESS", sources);
    }
}

/// Applies command-line `overrides` to `file` (after the environment).
pub fn apply_overrides(file: &mut FileConfig, overrides: &Overrides, sources: &mut Sources) {
    let mut set = |path: &str, flag: &str, slot: &mut Option<String>, value: &Option<String>| {
        if let Some(v) = value {
            *slot = Some(v.clone());
            sources.insert(path.to_owned(), format!("flag {flag}"));
        }
    };
    set(
        "cluster",
        "--cluster",
        &mut file.cluster,
        &overrides.cluster,
    );
    set(
        "network",
        "--network",
        &mut file.network,
        &overrides.network,
    );
    set(
        "trustDomain",
        "--trust-domain",
        &mut file.trust_domain,
        &overrides.trust_domain,
    );
    set(
        "listeners.xds",
        "--xds-listen",
        &mut file.listeners.xds,
        &overrides.xds_listen,
    );
    set(
        "listeners.metrics",
        "--metrics-listen",
        &mut file.listeners.metrics,
        &overrides.metrics_listen,
    );
    set(
        "listeners.health",
        "--health-listen",
        &mut file.listeners.health,
        &overrides.health_listen,
    );
    set(
        "listeners.debug",
        "--debug-listen",
        &mut file.listeners.debug,
        &overrides.debug_listen,
    );
    if let Some(f) = overrides.log_format {
        file.telemetry.log_format = Some(f);
        sources.insert("telemetry.logFormat".into(), "flag --log-format".into());
    }
    if let Some(b) = overrides.flat_networks {
        file.flat_networks = Some(b);
        sources.insert("flatNetworks".into(), "flag --flat-networks".into());
    }
    if let Some(b) = overrides.sandbox_mode {
        file.sandbox_mode = Some(b);
        sources.insert("sandboxMode".into(), "flag --sandbox-mode".into());
    }
    if let Some(v) = &overrides.xds_address {
        set_local_upstream_address(file, v, "flag --xds-address", sources);
    }
}

/// Points the local istiod upstream (named like the local cluster, or unnamed, or the only
/// one) at `address`, creating it if the file has none.
fn set_local_upstream_address(
    file: &mut FileConfig,
    address: &str,
    source: &str,
    sources: &mut Sources,
) {
    let cluster = file.cluster.clone();
    let local = file
        .upstreams
        .iter()
        .position(|u| u.name.is_some() && u.name == cluster)
        .or_else(|| file.upstreams.iter().position(|u| u.name.is_none()))
        .or_else(|| (file.upstreams.len() == 1).then_some(0));
    let index = match local {
        Some(i) => i,
        None => {
            file.upstreams.push(UpstreamFile::default());
            file.upstreams.len() - 1
        }
    };
    if let Some(upstream) = file.upstreams.get_mut(index) {
        upstream.address = Some(address.to_owned());
        sources.insert(format!("upstreams[{index}].address"), source.to_owned());
    }
}

/// Booleans as Istio's env parsing accepts them.
fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "t" | "yes" => Some(true),
        "false" | "0" | "f" | "no" => Some(false),
        _ => None,
    }
}

fn parse_log_format(v: &str) -> Option<LogFormat> {
    match v.to_ascii_lowercase().as_str() {
        "text" | "plain" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        _ => None,
    }
}
