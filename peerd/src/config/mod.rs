//! peerd's configuration for `peerd run --config FILE`, in the style of Istio components.
//!
//! Sources, lowest to highest precedence:
//! 1. built-in defaults (listed on each field of [`file`]);
//! 2. the YAML file ([`file::FileConfig`], camelCase keys, unknown keys rejected);
//! 3. environment variables with Istio's names ([`env::ENV_VARS`]): `CLUSTER_ID`,
//!    `NETWORK`, `TRUST_DOMAIN`, `PEERING_ENABLE_FLAT_NETWORKS`, `PEERING_NAMESPACE`,
//!    `PEERING_CONTROL_NAMESPACE`, `PEERING_MEMORY_BUDGET_BYTES`, `XDS_ADDRESS` (the local istiod),
//!    `OTEL_EXPORTER_OTLP_ENDPOINT`, `LOG_FORMAT`, `KUBECONFIG`, `POD_NAME` (lease holder
//!    identity), `POD_NAMESPACE` and `SERVICE_ACCOUNT` (peerd's SPIFFE identity), and `KUBERNETES_SERVICE_HOST` (only to detect running in a pod); an
//!    empty variable counts as unset;
//! 4. command-line flags ([`env::Overrides`], filled by the CLI).
//!
//! The merged result is validated once at start ([`validate`]): every problem is
//! collected, each naming its field path (`peers[1].cluster: …`) and, when the value came
//! from the environment or a flag, that source. Relative file paths are resolved against
//! the directory of the config file.
//!
//! Owns: the typed, validated [`Config`] every other module reads. Never reads the
//! environment or files after start (certificate reloading is `identity`'s job), never
//! logs secret contents (it only holds paths).

pub mod duration;
pub mod env;
pub mod file;
pub mod validate;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::{format_duration, parse_duration};
pub use env::{ENV_VARS, Env, Overrides};
pub use file::{DataPlaneServiceType, FileConfig, KubernetesFile, LogFormat, ProbeMode};
pub use validate::{ConfigError, FieldError, resolve};

use crate::identity::spiffe::{SpiffeError, SpiffeId};

/// Default values, in one place.
pub mod defaults {
    use std::time::Duration;

    pub const TRUST_DOMAIN: &str = "cluster.local";
    pub const PEERING_NAMESPACE: &str = "istio-eastwest";
    pub const CONTROL_NAMESPACE: &str = "istio-system";
    /// The chart's release namespace and service account: peerd's SPIFFE identity is
    /// `spiffe://<td>/ns/istio-system/sa/peerd`.
    pub const IDENTITY_NAMESPACE: &str = "istio-system";
    pub const IDENTITY_SERVICE_ACCOUNT: &str = "peerd";
    pub const XDS_LISTEN: &str = "0.0.0.0:15012";
    pub const METRICS_LISTEN: &str = "0.0.0.0:15020";
    pub const HEALTH_LISTEN: &str = "0.0.0.0:15021";
    pub const DEBUG_LISTEN: &str = "127.0.0.1:15041";
    pub const XDS_PORT: u16 = 15012;
    pub const HBONE_PORT: u16 = 15008;
    pub const DEBOUNCE: Duration = Duration::from_millis(5);
    /// Same as ztunnel's inbound limit: an initial sync of a large cluster is one message.
    pub const MAX_MESSAGE_BYTES: usize = 200 * 1024 * 1024;
    pub const CONNECTION_QUEUE: usize = 64;
    pub const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
    pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
    pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const PEER_MAX_RESOURCES: usize = 100_000;
    pub const PEER_MAX_BYTES: usize = 256 * 1024 * 1024;
    /// Stored upstream state of all origins together (see `budget`).
    pub const MEMORY_BUDGET_BYTES: usize = 1024 * 1024 * 1024;
    pub const DISCONNECT_GRACE: Duration = Duration::from_secs(300);
    pub const FAILURE_WINDOW: Duration = Duration::from_secs(30);
    pub const SUCCESS_RUN: u32 = 2;
    pub const FIRST_PROBE_GRACE: Duration = Duration::from_secs(60);
    pub const PROBE_PORTS: [u16; 2] = [15008, 15012];
    pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);
    pub const PROBE_JITTER: Duration = Duration::from_secs(2);
    pub const KUBE_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
    pub const LEASE_NAME: &str = "peerd-leader";
    pub const LEASE_DURATION: Duration = Duration::from_secs(15);
    pub const LEASE_RENEW_PERIOD: Duration = Duration::from_secs(5);
    pub const KUBE_RESYNC: Duration = Duration::from_secs(300);
    pub const TOKEN_REVIEW_AUDIENCE: &str = "istio-ca";
    pub const TOKEN_REVIEW_CACHE_TTL: Duration = Duration::from_secs(30);
}

/// The validated configuration. Field meanings are documented on [`file::FileConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub cluster: String,
    pub network: String,
    pub trust_domain: String,
    pub peering_namespace: String,
    pub control_namespace: String,
    pub flat_networks: bool,
    pub sandbox_mode: bool,
    /// The namespace and service account peerd runs as (and every peer's peerd, unless
    /// a peer says otherwise).
    pub identity: PeerdIdentity,
    /// `None` = keep a disconnected peer's state forever.
    pub disconnect_grace_period: Option<Duration>,
    /// Where the peer-state snapshot lives (`None` = not persisted).
    pub state_dir: Option<PathBuf>,
    /// Budget for stored upstream state, all origins (see [`crate::budget`]).
    pub memory_budget_bytes: usize,
    pub listeners: Listeners,
    pub xds: XdsServer,
    /// [`Config::local_upstream`] is one of them.
    pub upstreams: Vec<Upstream>,
    pub peers: Vec<Peer>,
    pub export: Export,
    pub hysteresis: Hysteresis,
    pub probe: Probe,
    pub telemetry: Telemetry,
    /// `None`: Kubernetes disabled (standalone).
    pub kubernetes: Option<Kubernetes>,
}

/// The Kubernetes side (see [`file::KubernetesFile`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubernetes {
    pub api: KubeApi,
    pub startup_timeout: Duration,
    pub lease_name: String,
    /// `None`: `<hostname>_<random>` at start.
    pub identity: Option<String>,
    pub lease_duration: Duration,
    pub renew_period: Duration,
    pub flat_sync: bool,
    /// The leader writes ServiceImports (`kubernetes.serviceImports`).
    pub service_imports: bool,
    pub resync_interval: Duration,
    /// `None`: downstream tokens are checked against `xds.auth.tokenFile`.
    pub token_review: Option<TokenReview>,
}

/// Which API server, with which credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeApi {
    InCluster,
    Kubeconfig(PathBuf),
    /// A bare URL, no credentials.
    Server(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenReview {
    pub audiences: Vec<String>,
    pub cache_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    pub xds: SocketAddr,
    pub metrics: SocketAddr,
    pub health: SocketAddr,
    pub debug: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsServer {
    /// `None`: no certificate configured (only valid where the caller supplies one, e.g.
    /// the sandbox's generated PKI).
    pub tls: Option<ServerTls>,
    pub token_file: Option<PathBuf>,
    /// Identities a bearer token must prove to read the merged view.
    pub allowed_identities: Vec<String>,
    pub debounce: Duration,
    pub max_message_bytes: usize,
    pub connection_queue: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert_chain: PathBuf,
    pub key: PathBuf,
    /// Roots that peer client certificates must chain to.
    pub client_roots: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub server_name: String,
    pub root_ca: Option<PathBuf>,
    pub client_cert: Option<ClientCert>,
    pub token_file: Option<PathBuf>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_message_bytes: usize,
}

impl Upstream {
    /// `host:port`, bracketing IPv6 hosts.
    pub fn authority(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert_chain: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub cluster: String,
    pub network: String,
    pub address: PeerAddress,
    pub port: u16,
    pub hbone_port: u16,
    pub trust_domain: String,
    pub server_identity: Option<ServerIdentity>,
    pub preferred_data_plane_service_type: DataPlaneServiceType,
    pub max_resources: usize,
    pub max_bytes: usize,
}

/// The namespace and service account of peerd's SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerdIdentity {
    pub namespace: String,
    pub service_account: String,
}

/// A peer gateway address as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddress {
    Ip(IpAddr),
    Hostname(String),
}

impl std::fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddress::Ip(ip) => ip.fmt(f),
            PeerAddress::Hostname(h) => f.write_str(h),
        }
    }
}

/// What a peer's xDS server certificate must prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerIdentity {
    /// A URI SAN equal to this SPIFFE ID.
    Spiffe(String),
    /// A DNS SAN matching this name.
    Dns(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub global_services: Vec<ServiceRef>,
    pub east_west_gateway: Option<EastWestGateway>,
}

/// `namespace/name` of a Kubernetes Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EastWestGateway {
    pub address: IpAddr,
    pub hbone_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hysteresis {
    pub failure_window: Duration,
    pub success_run: u32,
    pub first_probe_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub enabled: bool,
    pub mode: ProbeMode,
    pub ports: Vec<u16>,
    pub interval: Duration,
    pub jitter: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telemetry {
    pub log_format: LogFormat,
    pub otlp_endpoint: Option<String>,
}

impl Config {
    /// Reads `path`, applies the environment and the overrides, and validates.
    pub fn load(path: &Path, env: &Env, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let file = Config::parse_file(&text)?;
        resolve(file, env, overrides, path.parent())
    }

    /// Parses YAML text into the file schema (no defaults, no validation).
    pub fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
        // An empty file is an empty config, not an error.
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        yaml_serde::from_str(text).map_err(|e| ConfigError::Parse {
            message: e.to_string(),
        })
    }

    /// The upstream that is the local istiod (named like the local cluster). Always
    /// `Some` for a config from [`resolve`].
    pub fn local_upstream(&self) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == self.cluster)
    }

    /// The SPIFFE ID `peer`'s peerd must present, as the server we read from and as the
    /// client reading our export view: its `serverIdentity` when that is a SPIFFE ID,
    /// else `spiffe://<peer trust domain>/ns/<identity.namespace>/sa/<identity.serviceAccount>`.
    /// Never just a trust domain: with a shared root, a trust domain admits every workload
    /// of the mesh.
    pub fn peer_identity(&self, peer: &Peer) -> Result<SpiffeId, SpiffeError> {
        match &peer.server_identity {
            Some(ServerIdentity::Spiffe(id)) => id.parse(),
            Some(ServerIdentity::Dns(_)) | None => SpiffeId::new(
                &peer.trust_domain,
                &self.identity.namespace,
                &self.identity.service_account,
            ),
        }
    }

    /// Whether `peer` is reached flat (pod IPs, no gateway): same network and flat
    /// networks enabled.
    pub fn peer_is_flat(&self, peer: &Peer) -> bool {
        self.flat_networks && peer.network == self.network
    }

    /// Whether a probe may connect to `ip`: always outside sandbox mode; only loopback in
    /// sandbox/test mode.
    pub fn probe_target_allowed(&self, ip: IpAddr) -> bool {
        !self.sandbox_mode || ip.is_loopback()
    }
}
