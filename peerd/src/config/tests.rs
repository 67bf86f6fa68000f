//! Configuration tests: a full file, defaults, precedence (file < env < flags), one test per
//! kind of invalid value (each must name its field), unknown keys, the shipped example.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap (helper brief)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "peerd-config-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn touch(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"placeholder").unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn no_env() -> Env {
    Env::default()
}

fn resolve_yaml(yaml: &str, env: &Env, overrides: &Overrides) -> Result<Config, ConfigError> {
    resolve(Config::parse_file(yaml)?, env, overrides, None)
}

/// Validation errors of `yaml` (which must parse).
fn errors_of(yaml: &str) -> Vec<FieldError> {
    match resolve_yaml(yaml, &no_env(), &Overrides::default()) {
        Err(ConfigError::Invalid(errors)) => errors,
        other => panic!("expected validation errors, got {other:?}"),
    }
}

fn assert_error(errors: &[FieldError], path: &str, needle: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.path == path && e.to_string().contains(needle)),
        "no error at {path} containing {needle:?} in:\n{}",
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

const FULL: &str = r#"
cluster: c1
network: net1
trustDomain: example.org
peeringNamespace: peering
controlNamespace: istio-control
flatNetworks: true
sandboxMode: true
disconnectGracePeriod: 90s
listeners:
  xds: 127.0.1.1:15012
  metrics: 127.0.1.1:15020
  health: 127.0.1.1:15021
  debug: 127.0.0.1:15041
xds:
  tls: { certChain: tls/cert.pem, key: tls/key.pem, root: tls/root.pem }
  auth: { tokenFile: tokens }
  debounce: 10ms
  maxMessageBytes: 1048576
  connectionQueue: 8
upstreams:
  - name: c1
    address: 127.0.1.2:15012
    serverName: istiod.istio-control.svc
    rootCa: tls/root.pem
    clientCert: tls/cert.pem
    clientKey: tls/key.pem
    tokenFile: tokens
    backoff: { initial: 100ms, max: 10s }
    keepalive: { interval: 20s, timeout: 5s }
    connectTimeout: 3s
    maxMessageBytes: 2097152
peers:
  - cluster: c2
    network: net1
    address: 127.0.2.1
    port: 15012
    hbonePort: 15008
    trustDomain: other.org
    serverIdentity: spiffe://other.org/ns/peering/sa/peerd
    preferredDataPlaneServiceType: NodePort
    caps: { maxResources: 10, maxBytes: 1000 }
  - cluster: c3
    network: net3
    address: 127.0.3.1
    serverIdentity: peerd.c3.example.org
export:
  globalServices: [default/echo, shop/checkout]
  eastWestGateway: { address: 127.0.1.1, hbonePort: 15009 }
hysteresis: { failureWindow: 45s, successRun: 3, firstProbeGrace: 2m }
probe: { enabled: true, mode: userspace, ports: [15008], interval: 5s, jitter: 1s }
telemetry: { logFormat: json, otlpEndpoint: "http://127.0.0.1:4317" }
"#;

fn full_config_dir() -> TempDir {
    let dir = TempDir::new();
    for f in ["tls/cert.pem", "tls/key.pem", "tls/root.pem", "tokens"] {
        dir.touch(f);
    }
    dir
}

#[test]
fn full_valid_config_parses_with_every_field() {
    let dir = full_config_dir();
    let path = dir.0.join("peerd.yaml");
    std::fs::write(&path, FULL).unwrap();
    let c = Config::load(&path, &no_env(), &Overrides::default()).unwrap();

    assert_eq!(
        (
            c.cluster.as_str(),
            c.network.as_str(),
            c.trust_domain.as_str()
        ),
        ("c1", "net1", "example.org")
    );
    assert_eq!(
        (c.peering_namespace.as_str(), c.control_namespace.as_str()),
        ("peering", "istio-control")
    );
    assert!(c.flat_networks && c.sandbox_mode);
    assert_eq!(c.disconnect_grace_period, Some(Duration::from_secs(90)));
    assert_eq!(
        c.listeners.xds,
        "127.0.1.1:15012".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        c.listeners.debug,
        "127.0.0.1:15041".parse::<SocketAddr>().unwrap()
    );

    let tls = c.xds.tls.as_ref().unwrap();
    assert_eq!(
        tls.cert_chain,
        dir.0.join("tls/cert.pem"),
        "relative paths resolve against the file's dir"
    );
    assert_eq!(
        tls.client_roots.as_deref(),
        Some(dir.0.join("tls/root.pem").as_path())
    );
    assert_eq!(c.xds.token_file, Some(dir.0.join("tokens")));
    assert_eq!(c.xds.debounce, Duration::from_millis(10));
    assert_eq!(
        (c.xds.max_message_bytes, c.xds.connection_queue),
        (1_048_576, 8)
    );

    let up = c.local_upstream().unwrap();
    assert_eq!(
        (up.host.as_str(), up.port, up.authority()),
        ("127.0.1.2", 15012, "127.0.1.2:15012".to_owned())
    );
    assert_eq!(up.server_name, "istiod.istio-control.svc");
    assert_eq!(
        up.client_cert.as_ref().unwrap().key,
        dir.0.join("tls/key.pem")
    );
    assert_eq!(
        (up.backoff_initial, up.backoff_max),
        (Duration::from_millis(100), Duration::from_secs(10))
    );
    assert_eq!(
        (up.keepalive_interval, up.keepalive_timeout),
        (Duration::from_secs(20), Duration::from_secs(5))
    );
    assert_eq!(
        (up.connect_timeout, up.max_message_bytes),
        (Duration::from_secs(3), 2_097_152)
    );

    assert_eq!(c.peers.len(), 2);
    let c2 = &c.peers[0];
    assert_eq!(
        c2.address,
        PeerAddress::Ip(IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1)))
    );
    assert_eq!(
        (c2.port, c2.hbone_port, c2.trust_domain.as_str()),
        (15012, 15008, "other.org")
    );
    assert_eq!(
        c2.server_identity,
        Some(ServerIdentity::Spiffe(
            "spiffe://other.org/ns/peering/sa/peerd".into()
        ))
    );
    assert_eq!(
        c2.preferred_data_plane_service_type,
        DataPlaneServiceType::NodePort
    );
    assert_eq!((c2.max_resources, c2.max_bytes), (10, 1000));
    assert!(c.peer_is_flat(c2));
    let c3 = &c.peers[1];
    assert!(!c.peer_is_flat(c3));
    assert_eq!(
        c3.trust_domain, "example.org",
        "peer trust domain defaults to the local one"
    );
    assert_eq!(
        c3.server_identity,
        Some(ServerIdentity::Dns("peerd.c3.example.org".into()))
    );
    assert_eq!(
        c3.preferred_data_plane_service_type,
        DataPlaneServiceType::LoadBalancer
    );

    assert_eq!(
        c.export.global_services,
        vec![
            ServiceRef {
                namespace: "default".into(),
                name: "echo".into()
            },
            ServiceRef {
                namespace: "shop".into(),
                name: "checkout".into()
            }
        ]
    );
    assert_eq!(
        c.export.east_west_gateway,
        Some(EastWestGateway {
            address: IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)),
            hbone_port: 15009
        })
    );
    assert_eq!(c.hysteresis.failure_window, Duration::from_secs(45));
    assert_eq!(c.hysteresis.success_run, 3);
    assert_eq!(c.hysteresis.first_probe_grace, Duration::from_secs(120));
    assert_eq!(c.probe.mode, ProbeMode::Userspace);
    assert_eq!(c.probe.ports, vec![15008]);
    assert_eq!(
        (c.probe.interval, c.probe.jitter),
        (Duration::from_secs(5), Duration::from_secs(1))
    );
    assert_eq!(c.telemetry.log_format, LogFormat::Json);
    assert_eq!(
        c.telemetry.otlp_endpoint.as_deref(),
        Some("http://127.0.0.1:4317")
    );
    assert!(c.probe_target_allowed("127.0.2.1".parse().unwrap()));
    assert!(
        !c.probe_target_allowed("10.0.0.1".parse().unwrap()),
        "sandbox mode allows only loopback targets"
    );
}

#[test]
fn minimal_config_gets_istio_defaults() {
    let c = resolve_yaml("cluster: c1\n", &no_env(), &Overrides::default()).unwrap();
    assert_eq!(c.network, "");
    assert_eq!(c.trust_domain, "cluster.local");
    assert_eq!(c.peering_namespace, "istio-eastwest");
    assert_eq!(c.control_namespace, "istio-system");
    assert!(!c.flat_networks && !c.sandbox_mode);
    assert_eq!(c.disconnect_grace_period, Some(Duration::from_secs(300)));
    assert_eq!(c.memory_budget_bytes, 1 << 30);
    assert_eq!(
        c.listeners.xds,
        "0.0.0.0:15012".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.listeners.metrics.port(), 15020);
    assert_eq!(c.listeners.health.port(), 15021);
    assert_eq!(
        c.listeners.debug,
        "127.0.0.1:15041".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.xds.debounce, Duration::from_millis(5));
    assert!(c.xds.tls.is_none());
    let up = c.local_upstream().unwrap();
    assert_eq!(up.name, "c1");
    assert_eq!(up.authority(), "istiod.istio-system.svc:15012");
    assert_eq!(up.server_name, "istiod.istio-system.svc");
    assert!(c.peers.is_empty());
    assert_eq!(c.probe.ports, vec![15008, 15012]);
    assert!(c.probe.enabled);
    assert_eq!(c.probe.mode, ProbeMode::Auto);
    assert_eq!(c.telemetry.log_format, LogFormat::Text);
    assert!(c.probe_target_allowed("10.0.0.1".parse().unwrap()));
    // An empty file is an empty config (then CLUSTER_ID must come from the env).
    let c = resolve_yaml(
        "",
        &Env::from_pairs([("CLUSTER_ID", "c7")]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.cluster, "c7");
}

#[test]
fn zero_grace_period_means_forever() {
    let c = resolve_yaml(
        "cluster: c1\ndisconnectGracePeriod: 0\n",
        &no_env(),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.disconnect_grace_period, None);
}

#[test]
fn state_dir_is_optional_and_must_not_be_a_file() {
    let c = resolve_yaml("cluster: c1\n", &no_env(), &Overrides::default()).unwrap();
    assert_eq!(c.state_dir, None, "nothing is persisted unless configured");
    let c = resolve_yaml(
        "cluster: c1\nstateDir: /var/lib/peerd\n",
        &no_env(),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        c.state_dir,
        Some(std::path::PathBuf::from("/var/lib/peerd"))
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    assert_error(
        &errors_of(&format!("cluster: c1\nstateDir: {}\n", file.display())),
        "stateDir",
        "is not a directory",
    );
    assert_error(
        &errors_of("cluster: c1\nstateDir: ''\n"),
        "stateDir",
        "must not be empty",
    );
}

#[test]
fn env_overrides_file() {
    let yaml = "cluster: c1\nnetwork: net1\ntrustDomain: a.org\nflatNetworks: false\n\
                upstreams: [{ name: c9, address: 'istiod.x.svc:15012' }]\n\
                telemetry: { logFormat: text }\n";
    let env = Env::from_pairs([
        ("CLUSTER_ID", "c9"),
        ("NETWORK", "net9"),
        ("TRUST_DOMAIN", "b.org"),
        ("PEERING_ENABLE_FLAT_NETWORKS", "true"),
        ("PEERING_NAMESPACE", "peers"),
        ("PEERING_CONTROL_NAMESPACE", "control"),
        ("XDS_ADDRESS", "https://127.0.0.1:15010"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
        ("LOG_FORMAT", "json"),
    ]);
    let c = resolve_yaml(yaml, &env, &Overrides::default()).unwrap();
    assert_eq!(
        (
            c.cluster.as_str(),
            c.network.as_str(),
            c.trust_domain.as_str()
        ),
        ("c9", "net9", "b.org")
    );
    assert!(c.flat_networks);
    assert_eq!(
        (c.peering_namespace.as_str(), c.control_namespace.as_str()),
        ("peers", "control")
    );
    assert_eq!(c.local_upstream().unwrap().authority(), "127.0.0.1:15010");
    assert_eq!(
        c.telemetry.otlp_endpoint.as_deref(),
        Some("http://127.0.0.1:4317")
    );
    assert_eq!(c.telemetry.log_format, LogFormat::Json);
    // Empty variables count as unset.
    let c = resolve_yaml(
        yaml,
        &Env::from_pairs([("CLUSTER_ID", "c9"), ("NETWORK", "")]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.network, "net1");
}

#[test]
fn memory_budget_from_file_and_env() {
    let yaml = "cluster: c1\nmemoryBudgetBytes: 1000\n";
    let c = resolve_yaml(yaml, &no_env(), &Overrides::default()).unwrap();
    assert_eq!(c.memory_budget_bytes, 1000);
    let env = Env::from_pairs([("PEERING_MEMORY_BUDGET_BYTES", "268435456")]);
    let c = resolve_yaml(yaml, &env, &Overrides::default()).unwrap();
    assert_eq!(c.memory_budget_bytes, 256 << 20);
    let env = Env::from_pairs([("PEERING_MEMORY_BUDGET_BYTES", "256Mi")]);
    let errors = resolve_yaml(yaml, &env, &Overrides::default())
        .unwrap_err()
        .field_errors()
        .to_vec();
    assert_error(
        &errors,
        "memoryBudgetBytes",
        "env PEERING_MEMORY_BUDGET_BYTES",
    );
    let errors = errors_of("cluster: c1\nmemoryBudgetBytes: 0\n");
    assert_error(&errors, "memoryBudgetBytes", "must be greater than 0");
}

#[test]
fn xds_address_creates_the_local_upstream_when_the_file_has_none() {
    let env = Env::from_pairs([("XDS_ADDRESS", "127.0.1.2:15012")]);
    let c = resolve_yaml("cluster: c1\n", &env, &Overrides::default()).unwrap();
    assert_eq!(c.upstreams.len(), 1);
    assert_eq!(c.local_upstream().unwrap().authority(), "127.0.1.2:15012");
}

#[test]
fn flags_override_env() {
    let env = Env::from_pairs([
        ("CLUSTER_ID", "c-env"),
        ("LOG_FORMAT", "json"),
        ("XDS_ADDRESS", "127.0.0.2:15012"),
    ]);
    let overrides = Overrides {
        cluster: Some("c-flag".into()),
        log_format: Some(LogFormat::Text),
        xds_listen: Some("127.0.5.1:15012".into()),
        xds_address: Some("127.0.0.3:15012".into()),
        sandbox_mode: Some(true),
        ..Overrides::default()
    };
    let c = resolve_yaml("cluster: c-file\n", &env, &overrides).unwrap();
    assert_eq!(c.cluster, "c-flag");
    assert_eq!(c.telemetry.log_format, LogFormat::Text);
    assert_eq!(
        c.listeners.xds,
        "127.0.5.1:15012".parse::<SocketAddr>().unwrap()
    );
    assert!(c.sandbox_mode);
    assert_eq!(c.local_upstream().unwrap().authority(), "127.0.0.3:15012");
}

#[test]
fn bad_env_values_name_the_variable() {
    let env = Env::from_pairs([
        ("PEERING_ENABLE_FLAT_NETWORKS", "maybe"),
        ("LOG_FORMAT", "xml"),
        ("CLUSTER_ID", "Bad_Name"),
    ]);
    let err = resolve_yaml("", &env, &Overrides::default()).unwrap_err();
    let errors = err.field_errors();
    assert_error(errors, "flatNetworks", "env PEERING_ENABLE_FLAT_NETWORKS");
    assert_error(errors, "telemetry.logFormat", "env LOG_FORMAT");
    assert_error(errors, "cluster", "(from env CLUSTER_ID)");
    let listen = Overrides {
        metrics_listen: Some("nope".into()),
        ..Overrides::default()
    };
    let errors = resolve_yaml("cluster: c1", &no_env(), &listen)
        .unwrap_err()
        .field_errors()
        .to_vec();
    assert_error(&errors, "listeners.metrics", "(from flag --metrics-listen)");
}

#[test]
fn each_invalid_value_names_its_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("network: c1", "cluster", "must be set"),
        ("cluster: C_1", "cluster", "is not a lowercase DNS label"),
        (
            "cluster: c1\nnetwork: 'a b'",
            "network",
            "not a valid label value",
        ),
        (
            "cluster: c1\ntrustDomain: ''",
            "trustDomain",
            "not a SPIFFE trust domain",
        ),
        (
            "cluster: c1\npeeringNamespace: Bad",
            "peeringNamespace",
            "not a valid namespace",
        ),
        (
            "cluster: c1\ndisconnectGracePeriod: 5",
            "disconnectGracePeriod",
            "is not a duration",
        ),
        (
            "cluster: c1\nlisteners: { xds: 'localhost' }",
            "listeners.xds",
            "is not ip:port",
        ),
        (
            "cluster: c1\nlisteners: { metrics: '0.0.0.0:15012' }",
            "listeners.metrics",
            "conflicts with listeners.xds",
        ),
        (
            "cluster: c1\nxds: { tls: { certChain: /nonexistent/peerd/x } }",
            "xds.tls.certChain",
            "file /nonexistent/peerd/x does not exist",
        ),
        (
            "cluster: c1\nxds: { tls: { certChain: /nonexistent/peerd/x } }",
            "xds.tls.key",
            "must be set together",
        ),
        (
            "cluster: c1\nxds: { tls: { root: /nonexistent/r } }",
            "xds.tls.root",
            "set without",
        ),
        (
            "cluster: c1\nxds: { auth: { tokenFile: /nonexistent/t } }",
            "xds.auth.tokenFile",
            "does not exist",
        ),
        (
            "cluster: c1\nxds: { auth: { allowedIdentities: [] } }",
            "xds.auth.allowedIdentities",
            "at least one identity",
        ),
        (
            "cluster: c1\nxds: { auth: { allowedIdentities: [ok, 'a b'] } }",
            "xds.auth.allowedIdentities[1]",
            "without whitespace",
        ),
        (
            "cluster: c1\nxds: { debounce: fast }",
            "xds.debounce",
            "is not a duration",
        ),
        (
            "cluster: c1\nxds: { maxMessageBytes: 0 }",
            "xds.maxMessageBytes",
            "is not between 1 and",
        ),
        (
            "cluster: c1\nxds: { connectionQueue: 0 }",
            "xds.connectionQueue",
            "must be greater than 0",
        ),
        (
            "cluster: c1\nupstreams: [{ address: foo }]",
            "upstreams[0].address",
            "\"foo\" is not host:port",
        ),
        (
            "cluster: c1\nupstreams: [{ address: 'h:0' }]",
            "upstreams[0].address",
            "is not host:port",
        ),
        (
            "cluster: c1\nupstreams: [{ address: 'a b:1' }]",
            "upstreams[0].address",
            "is not host:port",
        ),
        (
            "cluster: c1\nupstreams: [{ name: other, address: 'h:1' }]",
            "upstreams",
            "none is named like the local cluster",
        ),
        (
            "cluster: c1\nupstreams: [{ name: c1 }, { name: x }]",
            "upstreams[1].address",
            "must be set",
        ),
        (
            "cluster: c1\nupstreams: [{ name: c1 }, { name: c1, address: 'h:1' }]",
            "upstreams[1].name",
            "used by another upstream",
        ),
        (
            "cluster: c1\nupstreams: [{ clientCert: /nonexistent/c }]",
            "upstreams[0].clientKey",
            "must be set together",
        ),
        (
            "cluster: c1\nupstreams: [{ rootCa: /nonexistent/r }]",
            "upstreams[0].rootCa",
            "does not exist",
        ),
        (
            "cluster: c1\nupstreams: [{ backoff: { initial: 2s, max: 1s } }]",
            "upstreams[0].backoff.max",
            "must not be less",
        ),
        (
            "cluster: c1\nupstreams: [{ backoff: { initial: 0 } }]",
            "upstreams[0].backoff.initial",
            "greater than 0",
        ),
        (
            "cluster: c1\nupstreams: [{ connectTimeout: 0 }]",
            "upstreams[0].connectTimeout",
            "greater than 0",
        ),
        (
            "cluster: c1\nupstreams: [{ keepalive: { interval: 1x } }]",
            "upstreams[0].keepalive.interval",
            "not a duration",
        ),
        (
            "cluster: c1\nupstreams: [{ serverName: 'a b' }]",
            "upstreams[0].serverName",
            "not a DNS name",
        ),
        (
            "cluster: c1\npeers: [{ address: 10.0.0.1 }]",
            "peers[0].cluster",
            "must be set",
        ),
        (
            "cluster: c1\npeers: [{ cluster: c2, address: 10.0.0.1 }, { cluster: c1, address: 10.0.0.2 }]",
            "peers[1].cluster",
            "equals the local cluster \"c1\"",
        ),
        (
            "cluster: c1\npeers: [{ cluster: c2, address: 10.0.0.1 }, { cluster: c2, address: 10.0.0.2 }]",
            "peers[1].cluster",
            "listed more than once",
        ),
        (
            "cluster: c1\npeers: [{ cluster: c2 }]",
            "peers[0].address",
            "must be set",
        ),
        (
            "cluster: c1\npeers: [{ cluster: c2, address: 'not an address' }]",
            "peers[0].address",
            "not an IP address or hostname",
        ),
        (
            "cluster: c1\npeers: [{ cluster: c2, address: 10.0.0.300 }]",
            "peers[0].address",
            "not an IP address or hostname",
        ),
        (
            "cluster: c1\npeers: [{ cluster: c2, address: 10.0.0.1, port: 0 }]",
            "peers[0].port",
            "0 is not a port",
        ),
        (
            "cluster: c1\npeers: [{ cluster: c2, address: 10.0.0.1, serverIdentity: 'spiffe://td' }]",
            "peers[0].serverIdentity",
            "not a SPIFFE ID",
        ),
        (
            "cluster: c1\npeers: [{ cluster: c2, address: 10.0.0.1, caps: { maxBytes: 0 } }]",
            "peers[0].caps.maxBytes",
            "greater than 0",
        ),
        (
            "cluster: c1\nexport: { globalServices: [echo] }",
            "export.globalServices[0]",
            "is not namespace/name",
        ),
        (
            "cluster: c1\nexport: { globalServices: [a/b, a/b] }",
            "export.globalServices[1]",
            "listed more than once",
        ),
        (
            "cluster: c1\nexport: { eastWestGateway: { address: gw.example } }",
            "export.eastWestGateway.address",
            "is not an IP address",
        ),
        (
            "cluster: c1\npeers: [{ cluster: c2, address: 10.0.0.1, network: n2 }]\nexport: { globalServices: [a/b] }",
            "export.eastWestGateway.address",
            "must be set",
        ),
        (
            "cluster: c1\nhysteresis: { successRun: 0 }",
            "hysteresis.successRun",
            "at least 1",
        ),
        (
            "cluster: c1\nhysteresis: { failureWindow: soon }",
            "hysteresis.failureWindow",
            "not a duration",
        ),
        (
            "cluster: c1\nprobe: { ports: [] }",
            "probe.ports",
            "must not be empty",
        ),
        (
            "cluster: c1\nprobe: { ports: [15008, 15008] }",
            "probe.ports[1]",
            "listed more than once",
        ),
        (
            "cluster: c1\nprobe: { interval: 1s, jitter: 2s }",
            "probe.jitter",
            "must not exceed",
        ),
        (
            "cluster: c1\nprobe: { interval: 0 }",
            "probe.interval",
            "greater than 0",
        ),
        (
            "cluster: c1\ntelemetry: { otlpEndpoint: 'collector:4317' }",
            "telemetry.otlpEndpoint",
            "not an http",
        ),
        (
            "cluster: c1\nsandboxMode: true\npeers: [{ cluster: c2, address: 10.0.0.1 }]",
            "peers[0].address",
            "not a loopback address",
        ),
        (
            "cluster: c1\nsandboxMode: true\npeers: [{ cluster: c2, address: peer.example }]",
            "peers[0].address",
            "needs a loopback IP",
        ),
        (
            "cluster: c1\nsandboxMode: true",
            "upstreams[0].address",
            "not a loopback address",
        ),
    ];
    for (yaml, path, needle) in cases {
        let errors = errors_of(yaml);
        assert_error(&errors, path, needle);
    }
}

#[test]
fn all_errors_are_collected_at_once() {
    let yaml = "network: 'bad net'\nupstreams: [{ address: foo }]\n\
                peers: [{ cluster: c2 }, { cluster: c2, address: 10.0.0.1 }]\n\
                probe: { interval: 1x }\nxds: { debounce: later }\n";
    let err = resolve_yaml(yaml, &no_env(), &Overrides::default()).unwrap_err();
    let errors = err.field_errors();
    for path in [
        "cluster",
        "network",
        "upstreams[0].address",
        "peers[0].address",
        "peers[1].cluster",
        "probe.interval",
        "xds.debounce",
    ] {
        assert!(
            errors.iter().any(|e| e.path == path),
            "missing {path} in {err}"
        );
    }
    let text = err.to_string();
    assert!(text.starts_with("invalid configuration ("), "{text}");
    assert!(
        text.contains("\n  upstreams[0].address: \"foo\" is not host:port"),
        "{text}"
    );
}

#[test]
fn unknown_keys_are_rejected() {
    for (yaml, key) in [
        ("cluster: c1\nclusterr: c2\n", "clusterr"),
        ("cluster: c1\npeers: [{ clustr: c2 }]\n", "clustr"),
        ("cluster: c1\nprobe: { intervall: 5s }\n", "intervall"),
    ] {
        let err = Config::parse_file(yaml).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&format!("unknown field `{key}`")),
            "{err}"
        );
    }
    // Wrong types are parse errors naming the field too.
    let err = Config::parse_file("cluster: c1\npeers: [{ port: 70000 }]\n").unwrap_err();
    assert!(err.to_string().contains("peers[0].port"), "{err}");
    let err = Config::parse_file("cluster: c1\nprobe: { mode: kernel }\n").unwrap_err();
    assert!(err.to_string().contains("probe.mode"), "{err}");
}

#[test]
fn missing_config_file_is_a_read_error() {
    let err = Config::load(
        Path::new("/nonexistent/peerd.yaml"),
        &no_env(),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/peerd.yaml"), "{err}");
}

/// The shipped example is valid apart from the certificate files it points at, which
/// exist only where it is deployed.
#[test]
fn shipped_example_is_valid_except_for_its_files() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/standalone.yaml");
    let err = Config::load(&example, &no_env(), &Overrides::default()).unwrap_err();
    let errors = err.field_errors();
    assert!(!errors.is_empty(), "{err}");
    for e in errors {
        assert!(
            e.message.contains("does not exist"),
            "unexpected error in the example: {e}"
        );
    }

    // With the files present it loads.
    let dir = TempDir::new();
    for f in [
        "certs/c1/peerd-cert-chain.pem",
        "certs/c1/peerd-key.pem",
        "certs/root-cert.pem",
        "certs/c1/ztunnel-tokens",
        "certs/c1/istiod-token",
    ] {
        dir.touch(f);
    }
    let copy = dir.0.join("standalone.yaml");
    std::fs::copy(&example, &copy).unwrap();
    let c = Config::load(&copy, &no_env(), &Overrides::default()).unwrap();
    assert_eq!(c.cluster, "c1");
    assert_eq!(c.peers.len(), 2);
    assert!(c.peer_is_flat(&c.peers[0]) && !c.peer_is_flat(&c.peers[1]));
}

#[test]
fn kubernetes_is_off_by_default_and_kubeconfig_in_the_shell_does_not_enable_it() {
    let c = resolve_yaml("cluster: c1\n", &no_env(), &Overrides::default()).unwrap();
    assert_eq!(c.kubernetes, None);
    let env = Env::from_pairs([("KUBECONFIG", "/nonexistent/kubeconfig")]);
    let c = resolve_yaml("cluster: c1\n", &env, &Overrides::default()).unwrap();
    assert_eq!(
        c.kubernetes, None,
        "KUBECONFIG alone must not enable Kubernetes"
    );
}

#[test]
fn kubernetes_in_a_pod_uses_the_service_account_and_token_review() {
    let env = Env::from_pairs([
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("POD_NAME", "peerd-abc12"),
    ]);
    let c = resolve_yaml("cluster: c1\n", &env, &Overrides::default()).unwrap();
    let k = c.kubernetes.unwrap();
    assert_eq!(k.api, crate::config::KubeApi::InCluster);
    assert_eq!(k.identity.as_deref(), Some("peerd-abc12"));
    assert_eq!(k.lease_name, "peerd-leader");
    assert!(k.flat_sync);
    let review = k
        .token_review
        .expect("no tokenFile: TokenReview checks ztunnel tokens");
    assert_eq!(review.audiences, vec!["istio-ca".to_string()]);
    assert_eq!(review.cache_ttl, Duration::from_secs(30));
}

#[test]
fn kubernetes_server_wins_and_peers_come_only_from_gateways() {
    let env = Env::from_pairs([("KUBECONFIG", "/nonexistent/kubeconfig")]);
    let c = resolve_yaml(
        "cluster: c1\nkubernetes:\n  server: http://127.0.1.1:6443\n  tokenReview: { enabled: false }\n",
        &env,
        &Overrides::default(),
    )
    .unwrap();
    let k = c.kubernetes.unwrap();
    assert_eq!(
        k.api,
        crate::config::KubeApi::Server("http://127.0.1.1:6443".into())
    );
    assert_eq!(k.token_review, None);

    let errors = errors_of(
        "cluster: c1\nkubernetes: { server: 'http://127.0.0.1:6443' }\n\
         peers: [{ cluster: c2, address: 127.0.2.1 }]\n",
    );
    assert_error(&errors, "peers", "istio-remote Gateways");
}

#[test]
fn bad_kubernetes_settings_name_their_field() {
    let errors = errors_of(
        "cluster: c1\nkubernetes:\n  server: 'ftp://x'\n  startupTimeout: 0s\n\
         \x20 leaderElection: { leaseName: 'Bad_Name', leaseDuration: 5s, renewPeriod: 5s }\n\
         \x20 tokenReview: { enabled: true, audiences: [''], cacheTtl: soon }\n",
    );
    assert_error(&errors, "kubernetes.server", "not an http");
    assert_error(&errors, "kubernetes.startupTimeout", "greater than 0");
    assert_error(
        &errors,
        "kubernetes.leaderElection.leaseName",
        "not a valid object name",
    );
    assert_error(
        &errors,
        "kubernetes.leaderElection.renewPeriod",
        "shorter than leaseDuration",
    );
    assert_error(
        &errors,
        "kubernetes.tokenReview.audiences[0]",
        "must not be empty",
    );
    assert_error(&errors, "kubernetes.tokenReview.cacheTtl", "");
    let errors = errors_of("cluster: c1\nkubernetes: { kubeconfig: /nonexistent/kc }\n");
    assert_error(&errors, "kubernetes.kubeconfig", "does not exist");
}

#[test]
fn the_merged_view_is_for_ztunnel_unless_configured() {
    let c = resolve_yaml("cluster: c1\n", &no_env(), &Overrides::default()).unwrap();
    assert_eq!(
        c.xds.allowed_identities,
        vec!["system:serviceaccount:istio-system:ztunnel".to_string()]
    );
    let c = resolve_yaml(
        "cluster: c1\nxds: { auth: { allowedIdentities: [a, 'system:serviceaccount:x:y'] } }",
        &no_env(),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.xds.allowed_identities, ["a", "system:serviceaccount:x:y"]);
}

/// peerd's own namespace and service account: the chart's by default, from the pod's
/// `POD_NAMESPACE` / `SERVICE_ACCOUNT` over the file; a peer's peerd identity is built from
/// them in the peer's trust domain unless its `serverIdentity` is a SPIFFE ID.
#[test]
fn peer_identities_default_to_our_namespace_and_service_account_in_the_peer_trust_domain() {
    let yaml = "cluster: c1\ntrustDomain: c1.local\n\
                peers:\n\
                \x20 - { cluster: c2, address: 127.0.2.1, trustDomain: c2.local }\n\
                \x20 - { cluster: c3, address: 127.0.3.1, serverIdentity: 'spiffe://c3.local/ns/mesh/sa/peerd-c3' }\n\
                \x20 - { cluster: c4, address: 127.0.4.1, serverIdentity: peerd.c4.example.org }\n";
    let c = resolve_yaml(yaml, &no_env(), &Overrides::default()).unwrap();
    assert_eq!(c.identity.namespace, "istio-system");
    assert_eq!(c.identity.service_account, "peerd");
    let ids: Vec<String> = c
        .peers
        .iter()
        .map(|p| c.peer_identity(p).unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "spiffe://c2.local/ns/istio-system/sa/peerd",
            "spiffe://c3.local/ns/mesh/sa/peerd-c3",
            // A DNS serverIdentity checks the server name; as a client the peer still
            // presents the default identity.
            "spiffe://c1.local/ns/istio-system/sa/peerd",
        ]
    );

    let env = Env::from_pairs([
        ("POD_NAMESPACE", "mesh-peering"),
        ("SERVICE_ACCOUNT", "peerd-sa"),
    ]);
    let c = resolve_yaml(
        &format!("identity: {{ namespace: ignored, serviceAccount: ignored }}\n{yaml}"),
        &env,
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        c.peer_identity(&c.peers[0]).unwrap().to_string(),
        "spiffe://c2.local/ns/mesh-peering/sa/peerd-sa",
        "the pod's env wins over the file"
    );
}

#[test]
fn bad_identity_settings_name_their_field_and_source() {
    let errors =
        errors_of("cluster: c1\nidentity: { namespace: 'Istio System', serviceAccount: 'a/b' }\n");
    assert_error(&errors, "identity.namespace", "not a valid namespace name");
    assert_error(
        &errors,
        "identity.serviceAccount",
        "not a valid service account name",
    );
    let env = Env::from_pairs([("SERVICE_ACCOUNT", "Peerd")]);
    let err = resolve_yaml("cluster: c1\n", &env, &Overrides::default()).unwrap_err();
    assert_error(
        err.field_errors(),
        "identity.serviceAccount",
        "(from env SERVICE_ACCOUNT)",
    );
    let errors = errors_of(
        "cluster: c1\npeers: [{ cluster: c2, address: 10.0.0.1, serverIdentity: 'spiffe://td/ns/a/sa/b/c' }]",
    );
    assert_error(&errors, "peers[0].serverIdentity", "Istio's form");
}
