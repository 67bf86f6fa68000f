//! What federation needs to know, in one struct ([`FederationConfig`]): the local cluster,
//! network, global services, east-west gateway, and per peer its network, peerd SPIFFE
//! identity, flat-or-gateway decision and caps. [`FederationConfig::from_config`] builds it from the
//! validated [`crate::config::Config`]; tests and the sandbox may build it directly.
//!
//! Owns no state and reads nothing from the environment.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::{Config, DataPlaneServiceType, Peer, ServiceRef};
use crate::identity::spiffe::{SpiffeError, SpiffeId};

/// Where remote clusters send HBONE traffic for this cluster's workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GatewayTarget {
    pub address: IpAddr,
    pub hbone_port: u16,
}

/// Which variant of the export view a peer is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExportFlavor {
    /// Flat network: pod IPs as they are, no `network_gateway`.
    Flat,
    /// Multi-network: `network_gateway` = the east-west gateway (LoadBalancer address).
    Gateway,
    /// Multi-network, peer prefers NodePort: `network_gateway` = the NodePort target.
    NodePort,
}

impl ExportFlavor {
    pub const ALL: [ExportFlavor; 3] = [
        ExportFlavor::Flat,
        ExportFlavor::Gateway,
        ExportFlavor::NodePort,
    ];

    pub fn index(self) -> usize {
        match self {
            ExportFlavor::Flat => 0,
            ExportFlavor::Gateway => 1,
            ExportFlavor::NodePort => 2,
        }
    }

    /// Label of the export view in metrics and the subscriber registry.
    pub fn label(self) -> &'static str {
        match self {
            ExportFlavor::Flat => "export-flat",
            ExportFlavor::Gateway => "export-gateway",
            ExportFlavor::NodePort => "export-nodeport",
        }
    }
}

/// How this cluster treats one peer (both directions: what it imports from the peer and
/// which export variant the peer is served).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    pub cluster: String,
    pub network: String,
    /// The SPIFFE ID the peer's peerd presents (its client certificate must carry it to
    /// be served this peer's export variant).
    pub identity: SpiffeId,
    /// Same network and flat networks enabled: pod IPs, no gateway.
    pub flat: bool,
    pub prefers_node_port: bool,
    /// Most resources (both types) held from this peer.
    pub max_resources: usize,
    /// Most resource bytes (sum of encoded bodies) held from this peer.
    pub max_bytes: usize,
}

impl PeerPolicy {
    /// The policy of a configured (or Gateway-derived) peer of `config`'s cluster.
    /// Fails when the peer's peerd identity cannot be formed from its configuration.
    pub fn from_peer(config: &Config, p: &Peer) -> Result<PeerPolicy, SpiffeError> {
        Ok(PeerPolicy {
            cluster: p.cluster.clone(),
            network: p.network.clone(),
            identity: config.peer_identity(p)?,
            flat: config.peer_is_flat(p),
            prefers_node_port: p.preferred_data_plane_service_type
                == DataPlaneServiceType::NodePort,
            max_resources: p.max_resources,
            max_bytes: p.max_bytes,
        })
    }

    /// The export variant this peer is served.
    pub fn flavor(&self) -> ExportFlavor {
        if self.flat {
            ExportFlavor::Flat
        } else if self.prefers_node_port {
            ExportFlavor::NodePort
        } else {
            ExportFlavor::Gateway
        }
    }
}

/// Everything federation is configured with. Build it with [`FederationConfig::from_config`]
/// (daemon) or literally (tests, sandbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationConfig {
    pub cluster: String,
    pub network: String,
    /// Services (`namespace`, `name`) exported to peers.
    pub global_services: BTreeSet<ServiceRef>,
    /// The east-west gateway's LoadBalancer address and HBONE port (multi-network peers).
    pub gateway: Option<GatewayTarget>,
    /// The NodePort target for peers preferring NodePort; falls back to `gateway`.
    pub node_port_gateway: Option<GatewayTarget>,
    pub peers: Vec<PeerPolicy>,
    /// How long a disconnected peer's state is kept (marked stale) before it is
    /// withdrawn; `None` = forever.
    pub grace_period: Option<Duration>,
    /// How often disconnections are checked against the grace period.
    pub grace_check_interval: Duration,
    /// After a restart that restored peers from the peer-state snapshot, how long
    /// ztunnel's first answer waits for those peers to resync (see
    /// [`RESTORED_RESYNC_WAIT`]).
    pub restored_resync_wait: Duration,
}

/// How long ztunnel's first answer after a restart waits for the peers restored from the
/// peer-state snapshot to resync, counted from the local cluster's complete sync. The snapshot trails the served state by up to about a
/// second (it is written a second after a change, and a peerd killed again right after a
/// restart served its peers' resync without writing it), and ztunnel reconnects listing
/// everything it holds: answering from the restored state removed what a peer had added
/// in that last second, although the peer still had it (the chaos suite's invariant (a)
/// caught one such workload after a double SIGKILL). A reachable peer resyncs within
/// about a second; an unreachable one is served from the snapshot once this has passed.
/// ztunnel keeps what it holds meanwhile; only a ztunnel with nothing yet waits.
pub const RESTORED_RESYNC_WAIT: Duration = Duration::from_secs(5);

impl FederationConfig {
    /// A configuration with no peers and no global services.
    pub fn new(cluster: &str, network: &str) -> FederationConfig {
        FederationConfig {
            cluster: cluster.to_string(),
            network: network.to_string(),
            global_services: BTreeSet::new(),
            gateway: None,
            node_port_gateway: None,
            peers: Vec::new(),
            grace_period: Some(crate::config::defaults::DISCONNECT_GRACE),
            grace_check_interval: Duration::from_secs(1),
            restored_resync_wait: RESTORED_RESYNC_WAIT,
        }
    }

    /// From the validated daemon configuration. The east-west gateway's NodePort target is
    /// not configurable yet, so NodePort peers get the LoadBalancer target. Fails only when
    /// a peer's identity is not a SPIFFE ID (validation already refuses that).
    pub fn from_config(config: &Config) -> Result<FederationConfig, SpiffeError> {
        let gateway = config.export.east_west_gateway.map(|g| GatewayTarget {
            address: g.address,
            hbone_port: g.hbone_port,
        });
        let peers = config
            .peers
            .iter()
            .map(|p| PeerPolicy::from_peer(config, p))
            .collect::<Result<Vec<_>, SpiffeError>>()?;
        Ok(FederationConfig {
            cluster: config.cluster.clone(),
            network: config.network.clone(),
            global_services: config.export.global_services.iter().cloned().collect(),
            gateway,
            node_port_gateway: None,
            peers,
            grace_period: config.disconnect_grace_period,
            grace_check_interval: Duration::from_secs(1),
            restored_resync_wait: RESTORED_RESYNC_WAIT,
        })
    }

    pub fn peer(&self, cluster: &str) -> Option<&PeerPolicy> {
        self.peers.iter().find(|p| p.cluster == cluster)
    }

    /// The gateway a flavor points at (`None` for flat, or when none is configured).
    pub fn gateway_for(&self, flavor: ExportFlavor) -> Option<GatewayTarget> {
        match flavor {
            ExportFlavor::Flat => None,
            ExportFlavor::Gateway => self.gateway,
            ExportFlavor::NodePort => self.node_port_gateway.or(self.gateway),
        }
    }
}
