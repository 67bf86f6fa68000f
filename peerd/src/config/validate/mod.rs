//! Turning the merged file + env + flags into a typed [`Config`]: defaults are applied and
//! every value is checked, collecting ALL problems, each named by its field path (and by
//! the env variable or flag it came from, when not from the file).
//!
//! Owns: the validation rules. Never stops at the first error, never touches the network;
//! file checks are existence checks only (contents are `identity`'s business).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::env::{Env, Overrides, Sources, apply_env, apply_overrides};
use super::file::{FileConfig, UpstreamFile};
use super::{
    ClientCert, Config, EastWestGateway, Export, Hysteresis, KubeApi, Kubernetes, Listeners, Peer,
    PeerAddress, Probe, ServerIdentity, ServerTls, ServiceRef, Telemetry, TokenReview, Upstream,
    XdsServer, defaults, parse_duration,
};

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
        let flat_networks = file.flat_networks.unwrap_or(false);
        let sandbox_mode = file.sandbox_mode.unwrap_or(false);
        let grace = self.duration(
            "disconnectGracePeriod",
            &file.disconnect_grace_period,
            defaults::DISCONNECT_GRACE,
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
            disconnect_grace_period: (!grace.is_zero()).then_some(grace),
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

    fn kubernetes(&mut self, file: &FileConfig, xds: &XdsServer) -> Option<Kubernetes> {
        let k = &file.kubernetes;
        let explicit =
            k.server.is_some() || (k.kubeconfig.is_some() && !self.kube_auto.kubeconfig_from_env);
        if !k.enabled.unwrap_or(explicit || self.kube_auto.in_cluster) {
            return None;
        }
        let api = if let Some(server) = &k.server {
            let rest = server
                .strip_prefix("http://")
                .or_else(|| server.strip_prefix("https://"));
            if rest.is_none_or(|r| r.trim_end_matches('/').is_empty()) {
                self.err(
                    "kubernetes.server",
                    format!("{server:?} is not an http:// or https:// URL"),
                );
            }
            KubeApi::Server(server.clone())
        } else if let Some(path) = &k.kubeconfig {
            // KUBECONFIG may list several files; the first one is used.
            let first = path
                .to_str()
                .and_then(|p| p.split(':').next())
                .map(PathBuf::from)
                .unwrap_or_else(|| path.clone());
            match self.file("kubernetes.kubeconfig", &Some(first)) {
                Some(p) => KubeApi::Kubeconfig(p),
                None => KubeApi::InCluster,
            }
        } else {
            KubeApi::InCluster
        };
        let le = &k.leader_election;
        let lease_name = le
            .lease_name
            .clone()
            .unwrap_or_else(|| defaults::LEASE_NAME.into());
        if !is_dns_name(&lease_name) {
            self.err(
                "kubernetes.leaderElection.leaseName",
                format!("{lease_name:?} is not a valid object name"),
            );
        }
        let identity = le.identity.clone();
        if identity
            .as_deref()
            .is_some_and(|i| i.trim().is_empty() || i.len() > 253)
        {
            self.err(
                "kubernetes.leaderElection.identity",
                "must be 1 to 253 characters",
            );
        }
        let lease_duration = self.nonzero_duration(
            "kubernetes.leaderElection.leaseDuration",
            &le.lease_duration,
            defaults::LEASE_DURATION,
        );
        let renew_period = self.nonzero_duration(
            "kubernetes.leaderElection.renewPeriod",
            &le.renew_period,
            defaults::LEASE_RENEW_PERIOD,
        );
        if renew_period >= lease_duration {
            self.err(
                "kubernetes.leaderElection.renewPeriod",
                "must be shorter than leaseDuration",
            );
        }
        let tr = &k.token_review;
        let token_review = if tr.enabled.unwrap_or(xds.token_file.is_none()) {
            let audiences = tr
                .audiences
                .clone()
                .unwrap_or_else(|| vec![defaults::TOKEN_REVIEW_AUDIENCE.to_string()]);
            for (i, a) in audiences.iter().enumerate() {
                if a.trim().is_empty() {
                    self.err(
                        format!("kubernetes.tokenReview.audiences[{i}]"),
                        "must not be empty",
                    );
                }
            }
            Some(TokenReview {
                audiences,
                cache_ttl: self.duration(
                    "kubernetes.tokenReview.cacheTtl",
                    &tr.cache_ttl,
                    defaults::TOKEN_REVIEW_CACHE_TTL,
                ),
            })
        } else {
            None
        };
        Some(Kubernetes {
            api,
            startup_timeout: self.nonzero_duration(
                "kubernetes.startupTimeout",
                &k.startup_timeout,
                defaults::KUBE_STARTUP_TIMEOUT,
            ),
            lease_name,
            identity,
            lease_duration,
            renew_period,
            flat_sync: k.flat_sync.unwrap_or(true),
            resync_interval: self.nonzero_duration(
                "kubernetes.resyncInterval",
                &k.resync_interval,
                defaults::KUBE_RESYNC,
            ),
            token_review,
        })
    }

    fn listeners(&mut self, file: &FileConfig) -> Listeners {
        let l = &file.listeners;
        let listeners = Listeners {
            xds: self.listen("listeners.xds", &l.xds, defaults::XDS_LISTEN),
            metrics: self.listen("listeners.metrics", &l.metrics, defaults::METRICS_LISTEN),
            health: self.listen("listeners.health", &l.health, defaults::HEALTH_LISTEN),
            debug: self.listen("listeners.debug", &l.debug, defaults::DEBUG_LISTEN),
        };
        let all = [
            ("listeners.xds", listeners.xds),
            ("listeners.metrics", listeners.metrics),
            ("listeners.health", listeners.health),
            ("listeners.debug", listeners.debug),
        ];
        for (i, (path, addr)) in all.iter().enumerate() {
            if let Some((other, _)) = all[..i].iter().find(|(_, a)| sockets_overlap(*a, *addr)) {
                self.err(*path, format!("{addr} conflicts with {other}"));
            }
        }
        listeners
    }

    fn xds_server(&mut self, file: &FileConfig) -> XdsServer {
        let x = &file.xds;
        let cert_chain = self.file("xds.tls.certChain", &x.tls.cert_chain);
        let key = self.file("xds.tls.key", &x.tls.key);
        let client_roots = self.file("xds.tls.root", &x.tls.root);
        let tls = match (cert_chain, key) {
            (Some(cert_chain), Some(key)) => Some(ServerTls {
                cert_chain,
                key,
                client_roots,
            }),
            (None, None) => {
                if x.tls.root.is_some() {
                    self.err(
                        "xds.tls.root",
                        "set without xds.tls.certChain and xds.tls.key",
                    );
                }
                None
            }
            _ if x.tls.cert_chain.is_none() => {
                self.err("xds.tls.certChain", "must be set together with xds.tls.key");
                None
            }
            _ if x.tls.key.is_none() => {
                self.err("xds.tls.key", "must be set together with xds.tls.certChain");
                None
            }
            // One of the two files is missing; already reported.
            _ => None,
        };
        XdsServer {
            tls,
            token_file: self.file("xds.auth.tokenFile", &x.auth.token_file),
            debounce: self.duration("xds.debounce", &x.debounce, defaults::DEBOUNCE),
            max_message_bytes: self.message_bytes("xds.maxMessageBytes", x.max_message_bytes),
            connection_queue: self.positive(
                "xds.connectionQueue",
                x.connection_queue,
                defaults::CONNECTION_QUEUE,
            ),
        }
    }

    fn upstreams(
        &mut self,
        file: &FileConfig,
        cluster: &str,
        control_ns: &str,
        sandbox: bool,
    ) -> Vec<Upstream> {
        let default_local = [UpstreamFile::default()];
        let entries: &[UpstreamFile] = if file.upstreams.is_empty() {
            &default_local
        } else {
            &file.upstreams
        };
        let mut names = BTreeSet::new();
        let mut upstreams = Vec::new();
        for (i, u) in entries.iter().enumerate() {
            let p = |field: &str| format!("upstreams[{i}].{field}");
            let name = u.name.clone().unwrap_or_else(|| cluster.to_owned());
            if name.is_empty() {
                self.err(p("name"), "must not be empty");
            } else if !names.insert(name.clone()) {
                self.err(p("name"), format!("{name:?} is used by another upstream"));
            }
            let is_local = name == cluster;
            let address = match &u.address {
                Some(a) => Some(a.clone()),
                None if is_local => Some(format!("istiod.{control_ns}.svc:{}", defaults::XDS_PORT)),
                None => {
                    self.err(p("address"), "must be set");
                    None
                }
            };
            let (host, port) = match address.as_deref().map(split_host_port) {
                Some(Ok(hp)) => hp,
                Some(Err(message)) => {
                    self.err(p("address"), message);
                    (String::new(), 0)
                }
                None => (String::new(), 0),
            };
            if sandbox && !host.is_empty() && !is_loopback_host(&host) {
                self.err(
                    p("address"),
                    format!(
                        "{host:?} is not a loopback address (sandboxMode allows only loopback)"
                    ),
                );
            }
            let server_name = u.server_name.clone().unwrap_or_else(|| host.clone());
            if u.server_name.is_some()
                && !is_dns_name(&server_name)
                && server_name.parse::<IpAddr>().is_err()
            {
                self.err(
                    p("serverName"),
                    format!("{server_name:?} is not a DNS name or IP"),
                );
            }
            let cert = self.file(&p("clientCert"), &u.client_cert);
            let key = self.file(&p("clientKey"), &u.client_key);
            let client_cert = match (cert, key) {
                (Some(cert_chain), Some(key)) => Some(ClientCert { cert_chain, key }),
                _ => {
                    match (&u.client_cert, &u.client_key) {
                        (Some(_), None) => {
                            self.err(p("clientKey"), "must be set together with clientCert")
                        }
                        (None, Some(_)) => {
                            self.err(p("clientCert"), "must be set together with clientKey")
                        }
                        _ => {}
                    }
                    None
                }
            };
            let backoff_initial = self.duration(
                &p("backoff.initial"),
                &u.backoff.initial,
                defaults::BACKOFF_INITIAL,
            );
            let backoff_max =
                self.duration(&p("backoff.max"), &u.backoff.max, defaults::BACKOFF_MAX);
            if backoff_initial.is_zero() {
                self.err(p("backoff.initial"), "must be greater than 0");
            }
            if backoff_max < backoff_initial {
                self.err(p("backoff.max"), "must not be less than backoff.initial");
            }
            let keepalive_interval = self.nonzero_duration(
                &p("keepalive.interval"),
                &u.keepalive.interval,
                defaults::KEEPALIVE_INTERVAL,
            );
            let keepalive_timeout = self.nonzero_duration(
                &p("keepalive.timeout"),
                &u.keepalive.timeout,
                defaults::KEEPALIVE_TIMEOUT,
            );
            upstreams.push(Upstream {
                name,
                host,
                port,
                server_name,
                root_ca: self.file(&p("rootCa"), &u.root_ca),
                client_cert,
                token_file: self.file(&p("tokenFile"), &u.token_file),
                backoff_initial,
                backoff_max,
                keepalive_interval,
                keepalive_timeout,
                connect_timeout: self.nonzero_duration(
                    &p("connectTimeout"),
                    &u.connect_timeout,
                    defaults::CONNECT_TIMEOUT,
                ),
                max_message_bytes: self.message_bytes(&p("maxMessageBytes"), u.max_message_bytes),
            });
        }
        if !cluster.is_empty() && !names.contains(cluster) {
            self.err(
                "upstreams",
                format!("none is named like the local cluster {cluster:?} (the local istiod)"),
            );
        }
        upstreams
    }

    fn peers(
        &mut self,
        file: &FileConfig,
        cluster: &str,
        network: &str,
        trust_domain: &str,
        sandbox: bool,
    ) -> Vec<Peer> {
        let mut seen = BTreeSet::new();
        let mut peers = Vec::new();
        for (i, pf) in file.peers.iter().enumerate() {
            let p = |field: &str| format!("peers[{i}].{field}");
            let peer_cluster = pf.cluster.clone().unwrap_or_default();
            if peer_cluster.is_empty() {
                self.err(p("cluster"), "must be set");
            } else if self.name(&p("cluster"), &peer_cluster) {
                if peer_cluster == cluster {
                    self.err(
                        p("cluster"),
                        format!("equals the local cluster {cluster:?}"),
                    );
                } else if !seen.insert(peer_cluster.clone()) {
                    self.err(
                        p("cluster"),
                        format!("{peer_cluster:?} is listed more than once"),
                    );
                }
            }
            let peer_network = pf.network.clone().unwrap_or_else(|| network.to_owned());
            self.label_value(&p("network"), &peer_network);
            let address = match pf.address.as_deref() {
                None | Some("") => {
                    self.err(
                        p("address"),
                        "must be set (the peer's east-west gateway IP or hostname)",
                    );
                    PeerAddress::Hostname(String::new())
                }
                Some(a) => match a.parse::<IpAddr>() {
                    Ok(ip) => {
                        if sandbox && !ip.is_loopback() {
                            self.err(
                                p("address"),
                                format!("{ip} is not a loopback address (sandboxMode)"),
                            );
                        }
                        PeerAddress::Ip(ip)
                    }
                    Err(_) if is_dns_name(a) => {
                        if sandbox {
                            self.err(
                                p("address"),
                                format!("{a:?}: sandboxMode needs a loopback IP, not a hostname"),
                            );
                        }
                        PeerAddress::Hostname(a.to_owned())
                    }
                    Err(_) => {
                        self.err(
                            p("address"),
                            format!("{a:?} is not an IP address or hostname"),
                        );
                        PeerAddress::Hostname(a.to_owned())
                    }
                },
            };
            let port = self.port(&p("port"), pf.port, defaults::XDS_PORT);
            let hbone_port = self.port(&p("hbonePort"), pf.hbone_port, defaults::HBONE_PORT);
            let peer_trust_domain = pf
                .trust_domain
                .clone()
                .unwrap_or_else(|| trust_domain.to_owned());
            self.trust_domain(&p("trustDomain"), &peer_trust_domain);
            let server_identity =
                pf.server_identity
                    .as_deref()
                    .and_then(|id| match parse_server_identity(id) {
                        Ok(identity) => Some(identity),
                        Err(message) => {
                            self.err(p("serverIdentity"), message);
                            None
                        }
                    });
            peers.push(Peer {
                cluster: peer_cluster,
                network: peer_network,
                address,
                port,
                hbone_port,
                trust_domain: peer_trust_domain,
                server_identity,
                preferred_data_plane_service_type: pf
                    .preferred_data_plane_service_type
                    .unwrap_or_default(),
                max_resources: self.positive(
                    &p("caps.maxResources"),
                    pf.caps.max_resources,
                    defaults::PEER_MAX_RESOURCES,
                ),
                max_bytes: self.positive(
                    &p("caps.maxBytes"),
                    pf.caps.max_bytes,
                    defaults::PEER_MAX_BYTES,
                ),
            });
        }
        peers
    }

    fn export(
        &mut self,
        file: &FileConfig,
        peers: &[Peer],
        network: &str,
        flat: bool,
        sandbox: bool,
    ) -> Export {
        let e = &file.export;
        let mut global_services = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, s) in e.global_services.iter().enumerate() {
            let path = format!("export.globalServices[{i}]");
            match s.split_once('/') {
                Some((ns, name)) if is_dns_label(ns) && is_dns_label(name) => {
                    let service = ServiceRef {
                        namespace: ns.to_owned(),
                        name: name.to_owned(),
                    };
                    if seen.insert(service.clone()) {
                        global_services.push(service);
                    } else {
                        self.err(path, format!("{s:?} is listed more than once"));
                    }
                }
                _ => self.err(path, format!("{s:?} is not namespace/name")),
            }
        }
        let gw = &e.east_west_gateway;
        let hbone_port = self.port(
            "export.eastWestGateway.hbonePort",
            gw.hbone_port,
            defaults::HBONE_PORT,
        );
        let east_west_gateway = match gw.address.as_deref() {
            None => None,
            Some(a) => match a.parse::<IpAddr>() {
                Ok(address) => {
                    if sandbox && !address.is_loopback() {
                        self.err(
                            "export.eastWestGateway.address",
                            format!("{address} is not a loopback address (sandboxMode)"),
                        );
                    }
                    Some(EastWestGateway {
                        address,
                        hbone_port,
                    })
                }
                Err(_) => {
                    self.err(
                        "export.eastWestGateway.address",
                        format!("{a:?} is not an IP address"),
                    );
                    None
                }
            },
        };
        if gw.address.is_none() && !global_services.is_empty() {
            let multi_network = peers.iter().position(|p| !(flat && p.network == network));
            if let Some(i) = multi_network {
                self.err(
                    "export.eastWestGateway.address",
                    format!("must be set: global services are exported and peers[{i}] is not on a flat network"),
                );
            }
        }
        Export {
            global_services,
            east_west_gateway,
        }
    }

    fn probe(&mut self, file: &FileConfig) -> Probe {
        let pf = &file.probe;
        let ports = pf
            .ports
            .clone()
            .unwrap_or_else(|| defaults::PROBE_PORTS.to_vec());
        let enabled = pf.enabled.unwrap_or(true);
        if enabled && ports.is_empty() {
            self.err("probe.ports", "must not be empty while probing is enabled");
        }
        let mut seen = BTreeSet::new();
        for (i, port) in ports.iter().enumerate() {
            if *port == 0 {
                self.err(format!("probe.ports[{i}]"), "0 is not a port");
            } else if !seen.insert(*port) {
                self.err(
                    format!("probe.ports[{i}]"),
                    format!("{port} is listed more than once"),
                );
            }
        }
        let interval =
            self.nonzero_duration("probe.interval", &pf.interval, defaults::PROBE_INTERVAL);
        let jitter = self.duration("probe.jitter", &pf.jitter, defaults::PROBE_JITTER);
        if jitter > interval {
            self.err("probe.jitter", "must not exceed probe.interval");
        }
        Probe {
            enabled,
            mode: pf.mode.unwrap_or_default(),
            ports,
            interval,
            jitter,
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
    if let Some(rest) = id.strip_prefix("spiffe://") {
        match rest.split_once('/') {
            Some((td, path)) if !td.is_empty() && !path.is_empty() => {
                Ok(ServerIdentity::Spiffe(id.to_owned()))
            }
            _ => Err(format!(
                "{id:?} is not a SPIFFE ID (spiffe://<trust domain>/<path>)"
            )),
        }
    } else if is_dns_name(id.strip_prefix("*.").unwrap_or(id)) {
        Ok(ServerIdentity::Dns(id.to_owned()))
    } else {
        Err(format!("{id:?} is neither a SPIFFE ID nor a DNS name"))
    }
}
