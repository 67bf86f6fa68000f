//! Turning the merged file + env + flags into a typed [`Config`]: defaults are applied and
//! every value is checked, collecting ALL problems, each named by its field path (and by
//! the env variable or flag it came from, when not from the file).
//!
//! Owns: the validation rules. Never stops at the first error, never touches the network;
//! file checks are existence checks only (contents are `identity`'s business).
//!
//! Layout: this file holds the error types, [`resolve`], the `Checker` with its
//! single-value checks, and `Checker::config`, which calls one method per config section;
//! each section's rules live in their own file (`listeners`, `xds`, `upstream`,
//! `peers`, `export`, `probe`, `kubernetes`).

mod export;
mod kubernetes;
mod listeners;
mod peers;
mod probe;
mod upstream;
mod xds;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::env::{Env, Overrides, Sources, apply_env, apply_overrides};
use super::file::FileConfig;
use super::{
    Config, Hysteresis, PeerdIdentity, ServerIdentity, Telemetry, defaults, parse_duration,
};
use crate::identity::spiffe::SpiffeId;

/// Largest gRPC message size accepted in the config (the gRPC length prefix is 32 bits).
const MESSAGE_BYTES_LIMIT: u64 = 1 << 31;

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path in the file schema, e.g. `peers[1].cluster`.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// YAML syntax, an unknown key, or a value of the wrong type (the message names the
    /// field path and the line).
    #[error("parsing config: {message}")]
    Parse { message: String },
    #[error("invalid configuration ({} problems):\n{}", .0.len(), list(.0))]
    Invalid(Vec<FieldError>),
}

impl ConfigError {
    /// The field errors, if this is a validation failure.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid(errors) => errors,
            _ => &[],
        }
    }
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Applies `env` then `overrides` to `file`, fills defaults and validates. Relative paths
/// are resolved against `base_dir` (the config file's directory).
pub fn resolve(
    mut file: FileConfig,
    env: &Env,
    overrides: &Overrides,
    base_dir: Option<&Path>,
) -> Result<Config, ConfigError> {
    let mut sources = Sources::new();
    let mut errors = Vec::new();
    apply_env(&mut file, env, &mut sources, &mut errors);
    apply_overrides(&mut file, overrides, &mut sources);

    let kube_auto = KubeAuto {
        in_cluster: env.get("KUBERNETES_SERVICE_HOST").is_some(),
        kubeconfig_from_env: sources.contains_key("kubernetes.kubeconfig"),
    };
    let mut check = Checker {
        errors,
        base_dir,
        kube_auto,
    };
    let config = check.config(&file);
    let mut errors = check.errors;
    if errors.is_empty() {
        return Ok(config);
    }
    for error in &mut errors {
        if let Some(source) = sources.get(&error.path)
            && !error.message.contains(source.as_str())
        {
            error.message.push_str(&format!(" (from {source})"));
        }
    }
    Err(ConfigError::Invalid(errors))
}

struct Checker<'a> {
    errors: Vec<FieldError>,
    base_dir: Option<&'a Path>,
    kube_auto: KubeAuto,
}

/// What decides whether Kubernetes is enabled when `kubernetes.enabled` is unset.
struct KubeAuto {
    /// `KUBERNETES_SERVICE_HOST` is set: peerd runs in a pod.
    in_cluster: bool,
    /// `kubernetes.kubeconfig` came from `KUBECONFIG`, which alone does not enable
    /// Kubernetes (a developer's shell usually has it).
    kubeconfig_from_env: bool,
}

impl Checker<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    fn config(&mut self, file: &FileConfig) -> Config {
        let cluster = file.cluster.clone().unwrap_or_default();
        if cluster.is_empty() {
            self.err("cluster", "must be set (or CLUSTER_ID)");
        } else {
            self.name("cluster", &cluster);
        }
        let network = file.network.clone().unwrap_or_default();
        self.label_value("network", &network);
        let trust_domain = file
            .trust_domain
            .clone()
            .unwrap_or_else(|| defaults::TRUST_DOMAIN.into());
        self.trust_domain("trustDomain", &trust_domain);
        let peering_namespace = file
            .peering_namespace
            .clone()
            .unwrap_or_else(|| defaults::PEERING_NAMESPACE.into());
        self.dns_label("peeringNamespace", &peering_namespace);
        let control_namespace = file
            .control_namespace
            .clone()
            .unwrap_or_else(|| defaults::CONTROL_NAMESPACE.into());
        self.dns_label("controlNamespace", &control_namespace);
        let identity = self.identity(file, &trust_domain);
        let flat_networks = file.flat_networks.unwrap_or(false);
        let sandbox_mode = file.sandbox_mode.unwrap_or(false);
        let grace = self.duration(
            "disconnectGracePeriod",
            &file.disconnect_grace_period,
            defaults::DISCONNECT_GRACE,
        );
        let memory_budget_bytes = self.positive(
            "memoryBudgetBytes",
            file.memory_budget_bytes,
            defaults::MEMORY_BUDGET_BYTES,
        );

        let listeners = self.listeners(file);
        let xds = self.xds_server(file);
        let upstreams = self.upstreams(file, &cluster, &control_namespace, sandbox_mode);
        let peers = self.peers(file, &cluster, &network, &trust_domain, sandbox_mode);
        let export = self.export(file, &peers, &network, flat_networks, sandbox_mode);

        let h = &file.hysteresis;
        let hysteresis = Hysteresis {
            failure_window: self.duration(
                "hysteresis.failureWindow",
                &h.failure_window,
                defaults::FAILURE_WINDOW,
            ),
            success_run: h.success_run.unwrap_or(defaults::SUCCESS_RUN),
            first_probe_grace: self.duration(
                "hysteresis.firstProbeGrace",
                &h.first_probe_grace,
                defaults::FIRST_PROBE_GRACE,
            ),
        };
        if hysteresis.success_run == 0 {
            self.err("hysteresis.successRun", "must be at least 1");
        }
        let probe = self.probe(file);
        let kubernetes = self.kubernetes(file, &xds);
        if kubernetes.is_some() && !file.peers.is_empty() {
            self.err(
                "peers",
                format!("must be empty when Kubernetes is enabled: peers come from the istio-remote Gateways in {peering_namespace}"),
            );
        }

        let otlp_endpoint = file.telemetry.otlp_endpoint.clone();
        if let Some(endpoint) = &otlp_endpoint {
            let host = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            if host.is_none_or(|h| h.trim_end_matches('/').is_empty()) {
                self.err(
                    "telemetry.otlpEndpoint",
                    format!("{endpoint:?} is not an http:// or https:// URL"),
                );
            }
        }
        let telemetry = Telemetry {
            log_format: file.telemetry.log_format.unwrap_or_default(),
            otlp_endpoint,
        };

        Config {
            cluster,
            network,
            trust_domain,
            peering_namespace,
            control_namespace,
            flat_networks,
            sandbox_mode,
            identity,
            disconnect_grace_period: (!grace.is_zero()).then_some(grace),
            state_dir: self.directory("stateDir", &file.state_dir),
            memory_budget_bytes,
            listeners,
            xds,
            upstreams,
            peers,
            export,
            hysteresis,
            probe,
            telemetry,
            kubernetes,
        }
    }

    /// peerd's namespace and service account: each must make a valid SPIFFE ID.
    fn identity(&mut self, file: &FileConfig, trust_domain: &str) -> PeerdIdentity {
        let namespace = file
            .identity
            .namespace
            .clone()
            .unwrap_or_else(|| defaults::IDENTITY_NAMESPACE.into());
        self.dns_label("identity.namespace", &namespace);
        let service_account = file
            .identity
            .service_account
            .clone()
            .unwrap_or_else(|| defaults::IDENTITY_SERVICE_ACCOUNT.into());
        // Kubernetes service account names are DNS subdomains.
        if !is_dns_name(&service_account) || service_account.bytes().any(|b| b.is_ascii_uppercase())
        {
            self.err(
                "identity.serviceAccount",
                format!("{service_account:?} is not a valid service account name"),
            );
        } else if let Err(e) = SpiffeId::new(trust_domain, &namespace, &service_account) {
            self.err("identity.serviceAccount", e.to_string());
        }
        PeerdIdentity {
            namespace,
            service_account,
        }
    }

    // --- single values -----------------------------------------------------------------

    fn duration(&mut self, path: &str, value: &Option<String>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => parse_duration(text).unwrap_or_else(|message| {
                self.err(path, message);
                default
            }),
        }
    }

    fn nonzero_duration(
        &mut self,
        path: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(path, value, default);
        if d.is_zero() {
            self.err(path, "must be greater than 0");
        }
        d
    }

    fn listen(&mut self, path: &str, value: &Option<String>, default: &str) -> SocketAddr {
        let text = value.as_deref().unwrap_or(default);
        text.parse().unwrap_or_else(|_| {
            self.err(path, format!("{text:?} is not ip:port"));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    fn port(&mut self, path: &str, value: Option<u16>, default: u16) -> u16 {
        let port = value.unwrap_or(default);
        if port == 0 {
            self.err(path, "0 is not a port");
        }
        port
    }

    fn positive(&mut self, path: &str, value: Option<u64>, default: usize) -> usize {
        match value {
            None => default,
            Some(0) => {
                self.err(path, "must be greater than 0");
                default
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }

    fn message_bytes(&mut self, path: &str, value: Option<u64>) -> usize {
        match value {
            None => defaults::MAX_MESSAGE_BYTES,
            Some(n) if n == 0 || n > MESSAGE_BYTES_LIMIT => {
                self.err(
                    path,
                    format!("{n} is not between 1 and {MESSAGE_BYTES_LIMIT}"),
                );
                defaults::MAX_MESSAGE_BYTES
            }
            Some(n) => usize::try_from(n).unwrap_or(defaults::MAX_MESSAGE_BYTES),
        }
    }

    /// Resolves a configured directory peerd may create: it must not be an existing file.
    fn directory(&mut self, path: &str, value: &Option<PathBuf>) -> Option<PathBuf> {
        let configured = value.as_ref()?;
        let resolved = match self.base_dir {
            Some(base) if configured.is_relative() => base.join(configured),
            _ => configured.clone(),
        };
        if configured.as_os_str().is_empty() {
            self.err(
                path,
                "must not be empty (leave it unset to persist nothing)",
            );
        } else if resolved.exists() && !resolved.is_dir() {
            self.err(path, format!("{} is not a directory", resolved.display()));
        }
        Some(resolved)
    }

    /// Resolves a configured file path and checks that it exists.
    fn file(&mut self, path: &str, value: &Option<PathBuf>) -> Option<PathBuf> {
        let configured = value.as_ref()?;
        let resolved = match self.base_dir {
            Some(base) if configured.is_relative() => base.join(configured),
            _ => configured.clone(),
        };
        if !resolved.is_file() {
            self.err(path, format!("file {} does not exist", resolved.display()));
        }
        Some(resolved)
    }

    /// A cluster name: it ends up in WorkloadEntry names and label values.
    fn name(&mut self, path: &str, value: &str) -> bool {
        let ok = is_dns_label(value);
        if !ok {
            self.err(
                path,
                format!("{value:?} is not a lowercase DNS label (a-z, 0-9, '-', at most 63)"),
            );
        }
        ok
    }

    fn dns_label(&mut self, path: &str, value: &str) {
        if !is_dns_label(value) {
            self.err(path, format!("{value:?} is not a valid namespace name"));
        }
    }

    /// A Kubernetes label value (may be empty).
    fn label_value(&mut self, path: &str, value: &str) {
        let ok = value.is_empty()
            || (value.len() <= 63
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
        if !ok {
            self.err(path, format!("{value:?} is not a valid label value"));
        }
    }

    fn trust_domain(&mut self, path: &str, value: &str) {
        let ok = !value.is_empty()
            && value.len() <= 255
            && value.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
            });
        if !ok {
            self.err(
                path,
                format!("{value:?} is not a SPIFFE trust domain (a-z, 0-9, '.', '-', '_')"),
            );
        }
    }
}

/// Whether two listen addresses would collide (same port, same or wildcard IP).
fn sockets_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Splits `host:port` (optionally `https://host:port`, `[v6]:port`).
fn split_host_port(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("{text:?} is not host:port");
    let rest = text
        .strip_prefix("https://")
        .unwrap_or(text)
        .trim_end_matches('/');
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, port) = v6.split_once("]:").ok_or_else(bad)?;
        host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (host, port)
    } else {
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        if host.parse::<IpAddr>().is_err() && !is_dns_name(host) {
            return Err(bad());
        }
        (host, port)
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok((host.to_owned(), p)),
        _ => Err(bad()),
    }
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// RFC 1123 label, lowercase: what Kubernetes namespaces and names need.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS hostname (any case, labels of letters, digits and '-', optional trailing dot;
/// the last label is not all digits, so a mistyped IPv4 address is not a hostname).
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && !s
            .rsplit('.')
            .next()
            .is_some_and(|last| last.chars().all(|c| c.is_ascii_digit()))
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn parse_server_identity(id: &str) -> Result<ServerIdentity, String> {
    if id.starts_with("spiffe://") {
        match id.parse::<SpiffeId>() {
            Ok(parsed) => Ok(ServerIdentity::Spiffe(parsed.to_string())),
            Err(e) => Err(format!(
                "not a SPIFFE ID of Istio's form (spiffe://<trust domain>/ns/<namespace>/sa/<service account>): {e}"
            )),
        }
    } else if is_dns_name(id.strip_prefix("*.").unwrap_or(id)) {
        Ok(ServerIdentity::Dns(id.to_owned()))
    } else {
        Err(format!("{id:?} is neither a SPIFFE ID nor a DNS name"))
    }
}
