//! The YAML file schema of `peerd run --config FILE`, exactly as written: camelCase keys,
//! every key optional (defaults are applied when the file is resolved into
//! [`super::Config`]), unknown keys rejected so a typo is an error, not a silently ignored
//! setting. Durations and addresses stay strings here so that validation can report every
//! bad one at once, each with its field path.
//!
//! Owns: the file format and its documentation. Never applies defaults or checks values;
//! that is [`super::validate`]. See `deploy/examples/standalone.yaml` for a full example.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FileConfig {
    /// Name of the local cluster (Istio's `CLUSTER_ID`). Required. Workload uids of this
    /// cluster are `<cluster>//Pod/<ns>/<name>`; exported workloads get `cluster_id` = this.
    pub cluster: Option<String>,
    /// Network of the local cluster (Istio's `NETWORK`, `topology.istio.io/network`).
    /// Empty = the default network.
    pub network: Option<String>,
    /// SPIFFE trust domain of the local mesh (Istio's `TRUST_DOMAIN`). Default
    /// `cluster.local`.
    pub trust_domain: Option<String>,
    /// Namespace holding the peer `istio-remote` Gateways and the east-west gateway
    /// (`PEERING_NAMESPACE`). Default `istio-eastwest`.
    pub peering_namespace: Option<String>,
    /// Namespace where generated WorkloadEntries/ServiceEntries and the leader Lease live
    /// (`PEERING_CONTROL_NAMESPACE`). Default `istio-system`.
    pub control_namespace: Option<String>,
    /// Treat a peer on the same network as flat (pod IPs routable, no gateway)
    /// (`PEERING_ENABLE_FLAT_NETWORKS`). Default false.
    pub flat_networks: Option<bool>,
    /// Sandbox/test mode: probes, and peer and gateway addresses, are restricted to
    /// loopback (127.0.0.0/8, ::1). Default false.
    pub sandbox_mode: Option<bool>,
    /// The namespace and service account peerd runs as. Every peered cluster is expected
    /// to run its peerd under the same ones, so a peer's peerd identity defaults to
    /// `spiffe://<peer trust domain>/ns/<namespace>/sa/<serviceAccount>`.
    pub identity: IdentityFile,
    /// How long a disconnected peer's last state is kept (marked stale) before it is
    /// withdrawn. `0` = keep forever. Default `5m`.
    pub disconnect_grace_period: Option<String>,
    /// Node-local directory where peerd keeps a snapshot of each peer's last state, so a
    /// restart while a peer is down keeps serving it until that peer's grace period ends
    /// (counted from when it went stale, not from the restart). Created if missing; unset
    /// = nothing is persisted. Relative to this file.
    pub state_dir: Option<PathBuf>,
    /// Memory budget for stored upstream state, bytes: every origin's resources together
    /// (bodies, names and a per-resource overhead estimate). Past it, a peer's resource
    /// that would grow the stored state is NACKed (the local cluster's never is; it counts
    /// toward the budget) (`PEERING_MEMORY_BUDGET_BYTES`). Default 1 GiB; the chart sets
    /// half the container memory limit.
    pub memory_budget_bytes: Option<u64>,
    /// Listening addresses.
    pub listeners: ListenersFile,
    /// The xDS server (downstream ztunnel + export to peers, one listener).
    pub xds: XdsServerFile,
    /// Upstream xDS servers. The entry named like the local cluster (or the only entry) is
    /// the local istiod. Default: one entry `istiod.<controlNamespace>.svc:15012`.
    pub upstreams: Vec<UpstreamFile>,
    /// Peered clusters (standalone mode; in Kubernetes they come from `istio-remote`
    /// Gateways).
    pub peers: Vec<PeerFile>,
    /// What this cluster exports to peers.
    pub export: ExportFile,
    /// When peer conditions flip.
    pub hysteresis: HysteresisFile,
    /// Data-plane connectivity probes (eBPF and active).
    pub probe: ProbeFile,
    /// Logs and traces.
    pub telemetry: TelemetryFile,
    /// The Kubernetes side: peers from `istio-remote` Gateways, Gateway conditions,
    /// flat-network WorkloadEntries, leader Lease, TokenReview.
    pub kubernetes: KubernetesFile,
}

/// peerd's own workload identity (see [`FileConfig::identity`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IdentityFile {
    /// peerd's namespace (`POD_NAMESPACE`). Default `istio-system` (the chart's).
    pub namespace: Option<String>,
    /// peerd's service account (`SERVICE_ACCOUNT`). Default `peerd` (the chart's).
    pub service_account: Option<String>,
}

/// Where the Kubernetes API is and what peerd does with it.
///
/// Enabled when `enabled: true`, or (when `enabled` is unset) when `server` or
/// `kubeconfig` is set or peerd runs in a pod (`KUBERNETES_SERVICE_HOST` set). The API
/// server is, in order: `server` (a bare URL, no credentials: the sandbox's emulated API
/// server), `kubeconfig` (or `KUBECONFIG`), else the pod's service account. With
/// Kubernetes enabled, peers come from the Gateways of class `istio-remote` in
/// `peeringNamespace` and `peers` must be empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KubernetesFile {
    /// Use the Kubernetes API at all. Default: auto (see above).
    pub enabled: Option<bool>,
    /// A bare API server URL (`http://127.0.0.1:6443`), used without credentials. Wins over
    /// `kubeconfig`.
    pub server: Option<String>,
    /// A kubeconfig file (its current context) (`KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// How long to wait at start for the first list of Gateways and Services. Default `30s`.
    pub startup_timeout: Option<String>,
    /// Leader election (one writer of conditions and WorkloadEntries per cluster).
    pub leader_election: LeaderElectionFile,
    /// Keep `autogenflat.*` / `autogen.*` WorkloadEntries and ServiceEntries in
    /// `controlNamespace`. Default true.
    pub flat_sync: Option<bool>,
    /// The leader keeps a `ServiceImport` (multicluster.x-k8s.io/v1alpha1, type
    /// ClusterSetIP) per global service peers export, in the service's namespace.
    /// Default false (the MCS CRDs must be installed).
    pub service_imports: Option<bool>,
    /// Full reconcile pass even without a change. Default `5m`.
    pub resync_interval: Option<String>,
    /// Downstream (ztunnel) bearer tokens checked by TokenReview.
    pub token_review: TokenReviewFile,
}

/// The `coordination.k8s.io/v1` Lease in `controlNamespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LeaderElectionFile {
    /// Lease name. Default `peerd-leader`.
    pub lease_name: Option<String>,
    /// This replica's holder identity (`POD_NAME`). Default `<hostname>_<random>`.
    pub identity: Option<String>,
    /// Lease duration. Default `15s`.
    pub lease_duration: Option<String>,
    /// Renewal period; must be shorter than the lease duration. Default `5s`.
    pub renew_period: Option<String>,
}

/// TokenReview verification of downstream bearer tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TokenReviewFile {
    /// Default: true when `xds.auth.tokenFile` is unset.
    pub enabled: Option<bool>,
    /// Audiences asked for (the token must carry one). Default `[istio-ca]`.
    pub audiences: Option<Vec<String>>,
    /// How long a verdict is reused. Default `30s`.
    pub cache_ttl: Option<String>,
}

/// `host:port` or `ip:port` strings to listen on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ListenersFile {
    /// xDS server. Default `0.0.0.0:15012` (standalone/sandbox: e.g. `127.0.k.1:15012`).
    pub xds: Option<String>,
    /// Prometheus `/metrics`. Default `0.0.0.0:15020`.
    pub metrics: Option<String>,
    /// `/healthz/ready`, `/healthz/live`. Default `0.0.0.0:15021`.
    pub health: Option<String>,
    /// gRPC debug API. Default `127.0.0.1:15041` (reach it with `kubectl port-forward`).
    pub debug: Option<String>,
}

/// Options of the xDS server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct XdsServerFile {
    /// Server certificate (TLS 1.3 to ztunnel, mTLS to peers).
    pub tls: ServerTlsFile,
    /// How downstream clients (ztunnel) authenticate.
    pub auth: AuthFile,
    /// Coalescing window for bursts of changes before a push. Default `5ms`.
    pub debounce: Option<String>,
    /// Largest gRPC message sent or accepted, bytes. Default 200 MiB (ztunnel's limit).
    pub max_message_bytes: Option<u64>,
    /// Pending pushes buffered per connection before it is resynced from a snapshot.
    /// Default 64.
    pub connection_queue: Option<u64>,
}

/// PEM files of the server certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServerTlsFile {
    /// Certificate chain (leaf first). Set together with `key`.
    pub cert_chain: Option<PathBuf>,
    /// Private key of the leaf.
    pub key: Option<PathBuf>,
    /// Root(s) that peer client certificates must chain to (export view).
    pub root: Option<PathBuf>,
}

/// Downstream (ztunnel) authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AuthFile {
    /// Standalone/sandbox: file holding the bearer tokens the static verifier accepts,
    /// one per line: `<token>` (ztunnel's identity,
    /// `system:serviceaccount:istio-system:ztunnel`) or `<identity> <token>`; blank lines
    /// and `#` comments are ignored; re-read when it changes. In Kubernetes, tokens are
    /// checked with TokenReview instead.
    pub token_file: Option<PathBuf>,
    /// Identities (TokenReview usernames, or token-file identities) that may read the
    /// merged view; a valid token of anyone else gets `PERMISSION_DENIED`. Default
    /// `[system:serviceaccount:istio-system:ztunnel]`.
    pub allowed_identities: Option<Vec<String>>,
}

/// One upstream xDS server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct UpstreamFile {
    /// Origin name; the local istiod's is the local cluster name (the default).
    pub name: Option<String>,
    /// `host:port` (e.g. `istiod.istio-system.svc:15012`; an `https://` prefix is allowed).
    /// Overridden for the local istiod by `XDS_ADDRESS`.
    pub address: Option<String>,
    /// TLS server name (SNI and the DNS SAN to verify). Default: the host of `address`.
    pub server_name: Option<String>,
    /// Root CA file to verify the server.
    pub root_ca: Option<PathBuf>,
    /// Client certificate chain (mTLS). Set together with `clientKey`.
    pub client_cert: Option<PathBuf>,
    /// Client private key.
    pub client_key: Option<PathBuf>,
    /// File with a bearer token sent as `authorization: Bearer …` (re-read on reconnect).
    pub token_file: Option<PathBuf>,
    /// Reconnect backoff (jittered exponential).
    pub backoff: BackoffFile,
    /// HTTP/2 keepalive.
    pub keepalive: KeepaliveFile,
    /// TCP+TLS connect timeout. Default `5s`.
    pub connect_timeout: Option<String>,
    /// Largest gRPC message accepted, bytes. Default 200 MiB (ztunnel's limit).
    pub max_message_bytes: Option<u64>,
}

/// Reconnect backoff.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BackoffFile {
    /// First delay. Default `500ms`.
    pub initial: Option<String>,
    /// Cap. Default `30s`.
    pub max: Option<String>,
}

/// HTTP/2 keepalive pings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KeepaliveFile {
    /// Ping interval. Default `30s`.
    pub interval: Option<String>,
    /// Time to wait for the ping ack before the connection is considered dead. Default
    /// `10s`.
    pub timeout: Option<String>,
}

/// One peered cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PeerFile {
    /// The peer's cluster name (`topology.istio.io/cluster`). Required; must differ from
    /// the local cluster and from every other peer.
    pub cluster: Option<String>,
    /// The peer's network (`topology.istio.io/network`). Default: the local network.
    pub network: Option<String>,
    /// The peer's east-west gateway: an IP or a DNS hostname (`spec.addresses`). Required.
    pub address: Option<String>,
    /// xDS port on the gateway. Default 15012.
    pub port: Option<u16>,
    /// HBONE port on the gateway. Default 15008.
    pub hbone_port: Option<u16>,
    /// The peer's trust domain (`gateway.istio.io/trust-domain`). Default: the local one.
    pub trust_domain: Option<String>,
    /// The peer's peerd identity (`peering.solo.io/peerd-identity` on a Gateway): a SPIFFE
    /// ID (`spiffe://td/ns/…/sa/…`) its server certificate must carry and its client
    /// certificate must carry to read our export view; or a DNS SAN its server
    /// certificate must carry (its client certificate must then carry the default ID).
    /// Default: `spiffe://<trustDomain>/ns/<identity.namespace>/sa/<identity.serviceAccount>`.
    pub server_identity: Option<String>,
    /// `LoadBalancer` (default) or `NodePort`
    /// (`peering.solo.io/preferred-data-plane-service-type`).
    pub preferred_data_plane_service_type: Option<DataPlaneServiceType>,
    /// Limits on what the peer may send.
    pub caps: CapsFile,
}

/// How the peer's data plane is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataPlaneServiceType {
    #[default]
    LoadBalancer,
    NodePort,
}

/// Per-peer size caps; a peer over a cap is refused new resources and reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CapsFile {
    /// Most resources (both types together). Default 100000.
    pub max_resources: Option<u64>,
    /// Most bytes of resource bodies. Default 256 MiB.
    pub max_bytes: Option<u64>,
}

/// What the local cluster exports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ExportFile {
    /// Standalone mode: the global services, each `namespace/name`. (In Kubernetes the
    /// label `solo.io/service-scope=global` or `istio.io/global=true` decides.)
    pub global_services: Vec<String>,
    /// The local east-west gateway, written as `network_gateway` of exported workloads for
    /// multi-network peers.
    pub east_west_gateway: EastWestGatewayFile,
}

/// The local east-west gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EastWestGatewayFile {
    /// Its IP address. Required when global services are exported to a multi-network peer.
    pub address: Option<String>,
    /// Its HBONE port. Default 15008.
    pub hbone_port: Option<u16>,
}

/// Condition hysteresis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HysteresisFile {
    /// A condition turns False only after failures persist this long. Default `30s`.
    pub failure_window: Option<String>,
    /// Consecutive successful probes before a condition turns True again. Default 2.
    pub success_run: Option<u32>,
    /// No False condition from probes during this time after start. Default `60s`.
    pub first_probe_grace: Option<String>,
}

/// Connectivity probes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProbeFile {
    /// Probe at all. Default true.
    pub enabled: Option<bool>,
    /// `auto` (eBPF when possible, else userspace; default), `ebpf` (fail without it),
    /// `userspace`.
    pub mode: Option<ProbeMode>,
    /// Destination ports watched and actively probed. Default [15008, 15012].
    pub ports: Option<Vec<u16>>,
    /// Active probe interval per target. Default `10s`.
    pub interval: Option<String>,
    /// Random extra delay added to each interval, at most this. Default `2s`; must not
    /// exceed `interval`.
    pub jitter: Option<String>,
}

/// Which probe implementation runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeMode {
    #[default]
    Auto,
    Ebpf,
    Userspace,
}

/// Logs and traces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TelemetryFile {
    /// `text` (default) or `json` (`LOG_FORMAT`).
    pub log_format: Option<LogFormat>,
    /// OTLP/gRPC endpoint for traces, e.g. `http://otel-collector:4317`
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`). Unset = no traces exported.
    pub otlp_endpoint: Option<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}
