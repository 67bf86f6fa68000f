//! The peer model: what peerd knows about one peered cluster (cluster, network, address,
//! trust domain, listeners 15008 HBONE / 15012 xDS, NodePort preference, flat or not),
//! built from a Gateway-shaped [`PeerSpec`] (an `istio-remote` Gateway, or a peer of the
//! config file in standalone mode).
//!
//! Owns: validation of a spec into a [`PeerModel`] or an [`InvalidPeer`] naming the bad
//! field (→ `Accepted=False/Invalid`). A missing HBONE listener is NOT invalid: the peer
//! can still be federated, only `PeerDataPlaneProgrammed` says `MissingHBONEListener`.
//! Must never do I/O (no DNS), and never silently fix a bad field.

use std::collections::HashSet;
use std::net::IpAddr;

use serde::Serialize;

use crate::config::{self, DataPlaneServiceType, PeerAddress};
use crate::identity::spiffe::{SpiffeId, bounded};

/// Label holding the peer's cluster id.
pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";
/// Label holding the peer's network.
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// Annotation holding the peer's trust domain.
pub const TRUST_DOMAIN_ANNOTATION: &str = "gateway.istio.io/trust-domain";
/// Annotation overriding the SPIFFE ID the peer's peerd presents (default
/// `spiffe://<trust domain>/ns/<our namespace>/sa/<our service account>`).
pub const PEERD_IDENTITY_ANNOTATION: &str = "peering.solo.io/peerd-identity";
/// Annotation asking for the NodePort data plane.
pub const DATA_PLANE_ANNOTATION: &str = "peering.solo.io/preferred-data-plane-service-type";
/// The HBONE listener port.
pub const HBONE_PORT: u16 = 15008;
/// The xDS (TLS passthrough) listener port.
pub const XDS_PORT: u16 = 15012;

/// Where a spec came from; decides how fields are named in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecSource {
    /// `peers[index]` of the config file.
    Config { index: usize },
    /// A Gateway of class `istio-remote`.
    Gateway { namespace: String, name: String },
}

/// One listener of the peer gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecListener {
    pub name: String,
    pub port: u16,
    /// `HBONE`, `TLS`, ...
    pub protocol: String,
}

/// One entry of `spec.addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecAddress {
    /// `IPAddress` or `Hostname`.
    pub kind: String,
    pub value: String,
}

/// A peer as declared, unvalidated: the fields of an `istio-remote` Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub source: SpecSource,
    pub generation: i64,
    pub cluster: Option<String>,
    pub network: Option<String>,
    pub addresses: Vec<SpecAddress>,
    pub trust_domain: Option<String>,
    pub listeners: Vec<SpecListener>,
    /// The NodePort preference annotation, verbatim.
    pub data_plane_service_type: Option<String>,
    /// The peerd identity annotation (or a file peer's SPIFFE `serverIdentity`), verbatim.
    pub peerd_identity: Option<String>,
}

/// Which part of a spec is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Cluster,
    Network,
    Address,
    TrustDomain,
    Listeners,
    DataPlaneServiceType,
    PeerdIdentity,
}

impl PeerSpec {
    /// The spec of a configured (standalone) peer; `index` is its position in `peers`.
    pub fn from_config(index: usize, peer: &config::Peer) -> PeerSpec {
        let (kind, value) = match &peer.address {
            PeerAddress::Ip(ip) => ("IPAddress", ip.to_string()),
            PeerAddress::Hostname(h) => ("Hostname", h.clone()),
        };
        PeerSpec {
            source: SpecSource::Config { index },
            generation: 1,
            cluster: Some(peer.cluster.clone()),
            network: Some(peer.network.clone()),
            addresses: vec![SpecAddress {
                kind: kind.to_string(),
                value,
            }],
            trust_domain: Some(peer.trust_domain.clone()),
            listeners: vec![
                SpecListener {
                    name: "cross-network".into(),
                    port: peer.hbone_port,
                    protocol: "HBONE".into(),
                },
                SpecListener {
                    name: "xds-tls".into(),
                    port: peer.port,
                    protocol: "TLS".into(),
                },
            ],
            data_plane_service_type: Some(
                match peer.preferred_data_plane_service_type {
                    DataPlaneServiceType::LoadBalancer => "LoadBalancer",
                    DataPlaneServiceType::NodePort => "NodePort",
                }
                .to_string(),
            ),
            peerd_identity: match &peer.server_identity {
                Some(config::ServerIdentity::Spiffe(id)) => Some(id.clone()),
                Some(config::ServerIdentity::Dns(_)) | None => None,
            },
        }
    }

    /// A short name for logs and messages: the cluster, else where it came from.
    pub fn display_name(&self) -> String {
        match (&self.cluster, &self.source) {
            (Some(c), _) if !c.trim().is_empty() => c.clone(),
            (_, SpecSource::Config { index }) => format!("peers[{index}]"),
            (_, SpecSource::Gateway { namespace, name }) => format!("{namespace}/{name}"),
        }
    }

    /// How `field` is called where this spec came from.
    pub fn field_path(&self, field: Field) -> String {
        match &self.source {
            SpecSource::Config { index } => {
                let f = match field {
                    Field::Cluster => "cluster",
                    Field::Network => "network",
                    Field::Address => "address",
                    Field::TrustDomain => "trustDomain",
                    Field::Listeners => "port",
                    Field::DataPlaneServiceType => "preferredDataPlaneServiceType",
                    Field::PeerdIdentity => "serverIdentity",
                };
                format!("peers[{index}].{f}")
            }
            SpecSource::Gateway { .. } => match field {
                Field::Cluster => format!("metadata.labels[{CLUSTER_LABEL}]"),
                Field::Network => format!("metadata.labels[{NETWORK_LABEL}]"),
                Field::Address => "spec.addresses[0]".to_string(),
                Field::TrustDomain => format!("metadata.annotations[{TRUST_DOMAIN_ANNOTATION}]"),
                Field::Listeners => "spec.listeners".to_string(),
                Field::DataPlaneServiceType => {
                    format!("metadata.annotations[{DATA_PLANE_ANNOTATION}]")
                }
                Field::PeerdIdentity => {
                    format!("metadata.annotations[{PEERD_IDENTITY_ANNOTATION}]")
                }
            },
        }
    }
}

/// The specs of the peers of a config file (standalone mode), in order.
pub fn specs_from_config(config: &config::Config) -> Vec<PeerSpec> {
    config
        .peers
        .iter()
        .enumerate()
        .map(|(i, p)| PeerSpec::from_config(i, p))
        .collect()
}

/// A spec that cannot be used; `message` names the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidPeer {
    pub field: Field,
    pub message: String,
}

/// The local side, needed to decide flat vs multi-network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCluster {
    pub cluster: String,
    pub network: String,
    /// `PEERING_ENABLE_FLAT_NETWORKS`.
    pub flat_networks: bool,
}

impl From<&config::Config> for LocalCluster {
    fn from(c: &config::Config) -> Self {
        LocalCluster {
            cluster: c.cluster.clone(),
            network: c.network.clone(),
            flat_networks: c.flat_networks,
        }
    }
}

/// A validated peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerModel {
    pub cluster: String,
    pub network: String,
    /// The peer's east-west gateway address (IP or hostname).
    #[serde(serialize_with = "serialize_display")]
    pub address: PeerAddress,
    pub trust_domain: String,
    /// Port of the xDS (TLS) listener.
    pub xds_port: u16,
    /// Port of the HBONE listener; `None` when the gateway declares none.
    pub hbone_port: Option<u16>,
    /// The NodePort data plane is preferred (the HBONE listener is then unused).
    pub node_port: bool,
    /// Same network as ours and flat networks enabled: pod IPs, no gateway.
    pub flat: bool,
    pub generation: i64,
    /// The SPIFFE ID the peer's peerd presents, when the spec names one; `None` = the
    /// default (`spiffe://<trust domain>/ns/<our namespace>/sa/<our service account>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peerd_identity: Option<String>,
}

fn serialize_display<S: serde::Serializer>(v: &PeerAddress, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl PeerModel {
    /// Validates `spec`; the first bad field (in declaration order) is reported.
    pub fn build(spec: &PeerSpec, local: &LocalCluster) -> Result<PeerModel, InvalidPeer> {
        let invalid = |field: Field, what: String| InvalidPeer {
            field,
            message: format!("{}: {what}", spec.field_path(field)),
        };
        let cluster = required(spec.cluster.as_deref()).ok_or_else(|| {
            invalid(
                Field::Cluster,
                "missing; the peer's cluster id is required".into(),
            )
        })?;
        if let Err(why) = check_name(cluster) {
            return Err(invalid(Field::Cluster, format!("{cluster:?} {why}")));
        }
        if cluster == local.cluster {
            return Err(invalid(
                Field::Cluster,
                format!("{cluster:?} is the local cluster; a cluster cannot peer with itself"),
            ));
        }
        let network = required(spec.network.as_deref()).ok_or_else(|| {
            invalid(
                Field::Network,
                "missing; the peer's network is required".into(),
            )
        })?;
        if let Err(why) = check_name(network) {
            return Err(invalid(Field::Network, format!("{network:?} {why}")));
        }
        let first = spec.addresses.first().ok_or_else(|| {
            invalid(
                Field::Address,
                "missing; the peer's east-west gateway address is required".into(),
            )
        })?;
        let address = parse_address(first).map_err(|why| invalid(Field::Address, why))?;
        let trust_domain = required(spec.trust_domain.as_deref()).ok_or_else(|| {
            invalid(
                Field::TrustDomain,
                "missing; the peer's trust domain is required".into(),
            )
        })?;
        if let Err(why) = check_trust_domain(trust_domain) {
            return Err(invalid(
                Field::TrustDomain,
                format!("{trust_domain:?} {why}"),
            ));
        }
        let mut ports = HashSet::new();
        for l in &spec.listeners {
            if l.port == 0 {
                return Err(invalid(
                    Field::Listeners,
                    format!("listener {:?} has port 0", l.name),
                ));
            }
            if !ports.insert(l.port) {
                return Err(invalid(
                    Field::Listeners,
                    format!("port {} is declared twice", l.port),
                ));
            }
        }
        let xds = spec
            .listeners
            .iter()
            .find(|l| l.port == XDS_PORT || l.protocol.eq_ignore_ascii_case("TLS"))
            .ok_or_else(|| {
                invalid(
                    Field::Listeners,
                    format!("no xDS listener (TLS, port {XDS_PORT}); peerd cannot reach the peer's control plane"),
                )
            })?;
        let hbone = spec
            .listeners
            .iter()
            .find(|l| l.protocol.eq_ignore_ascii_case("HBONE") || l.port == HBONE_PORT)
            .map(|l| l.port);
        let node_port = match spec.data_plane_service_type.as_deref().map(str::trim) {
            None | Some("") | Some("LoadBalancer") => false,
            Some("NodePort") => true,
            Some(other) => {
                return Err(invalid(
                    Field::DataPlaneServiceType,
                    format!("{other:?} is not a service type; use NodePort or LoadBalancer"),
                ));
            }
        };
        let peerd_identity = match required(spec.peerd_identity.as_deref()) {
            None => None,
            Some(id) => match id.parse::<SpiffeId>() {
                Ok(parsed) => Some(parsed.to_string()),
                Err(e) => {
                    return Err(invalid(
                        Field::PeerdIdentity,
                        format!(
                            "{} (expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>)",
                            bounded(&e.to_string())
                        ),
                    ));
                }
            },
        };
        Ok(PeerModel {
            cluster: cluster.to_string(),
            network: network.to_string(),
            address,
            trust_domain: trust_domain.to_string(),
            xds_port: xds.port,
            hbone_port: hbone,
            node_port,
            flat: local.flat_networks && network == local.network,
            generation: spec.generation,
            peerd_identity,
        })
    }

    /// The gateway IP, when the address is an IP.
    pub fn gateway_ip(&self) -> Option<IpAddr> {
        match self.address {
            PeerAddress::Ip(ip) => Some(ip),
            PeerAddress::Hostname(_) => None,
        }
    }
}

/// Builds every spec; a spec whose cluster repeats an earlier valid one is invalid.
pub fn build_all(specs: &[PeerSpec], local: &LocalCluster) -> Vec<Result<PeerModel, InvalidPeer>> {
    let mut seen = HashSet::new();
    specs
        .iter()
        .map(|spec| {
            let model = PeerModel::build(spec, local)?;
            if !seen.insert(model.cluster.clone()) {
                return Err(InvalidPeer {
                    field: Field::Cluster,
                    message: format!(
                        "{}: {:?} is already declared by another peer",
                        spec.field_path(Field::Cluster),
                        model.cluster
                    ),
                });
            }
            Ok(model)
        })
        .collect()
}

fn required(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|s| !s.is_empty())
}

/// Cluster ids and networks end up in labels and resource names.
fn check_name(v: &str) -> Result<(), &'static str> {
    if v.len() > 63 {
        return Err("is longer than 63 characters");
    }
    let ok = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ends_ok = v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok && ends_ok {
        Ok(())
    } else {
        Err("must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit")
    }
}

fn check_trust_domain(v: &str) -> Result<(), &'static str> {
    let ok = v.len() <= 255
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err("is not a SPIFFE trust domain (lowercase letters, digits, '-', '_', '.')")
    }
}

fn parse_address(a: &SpecAddress) -> Result<PeerAddress, String> {
    let value = a.value.trim();
    match a.kind.as_str() {
        "IPAddress" | "" => value
            .parse::<IpAddr>()
            .map(PeerAddress::Ip)
            .map_err(|_| format!("{value:?} is not an IP address")),
        "Hostname" => {
            let valid = !value.is_empty()
                && value.len() <= 253
                && value.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                });
            if valid {
                Ok(PeerAddress::Hostname(value.to_ascii_lowercase()))
            } else {
                Err(format!("{value:?} is not a DNS hostname"))
            }
        }
        other => Err(format!(
            "address type {other:?} is not supported (IPAddress or Hostname)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalCluster {
        LocalCluster {
            cluster: "cluster-1".into(),
            network: "net-a".into(),
            flat_networks: true,
        }
    }

    fn gateway_spec() -> PeerSpec {
        PeerSpec {
            source: SpecSource::Gateway {
                namespace: "istio-eastwest".into(),
                name: "istio-remote-peer-cluster-2".into(),
            },
            generation: 4,
            cluster: Some("cluster-2".into()),
            network: Some("net-a".into()),
            addresses: vec![SpecAddress {
                kind: "IPAddress".into(),
                value: "127.0.2.1".into(),
            }],
            trust_domain: Some("cluster.local".into()),
            listeners: vec![
                SpecListener {
                    name: "cross-network".into(),
                    port: 15008,
                    protocol: "HBONE".into(),
                },
                SpecListener {
                    name: "xds-tls".into(),
                    port: 15012,
                    protocol: "TLS".into(),
                },
            ],
            data_plane_service_type: None,
            peerd_identity: None,
        }
    }

    #[test]
    fn valid_gateway_builds_a_flat_peer() {
        let m = PeerModel::build(&gateway_spec(), &local()).unwrap();
        assert_eq!(m.cluster, "cluster-2");
        assert_eq!(m.gateway_ip(), Some("127.0.2.1".parse().unwrap()));
        assert_eq!((m.xds_port, m.hbone_port), (15012, Some(15008)));
        assert!(m.flat);
        assert!(!m.node_port);
        assert_eq!(m.generation, 4);
        let mut other_net = gateway_spec();
        other_net.network = Some("net-b".into());
        assert!(!PeerModel::build(&other_net, &local()).unwrap().flat);
        let no_flat = LocalCluster {
            flat_networks: false,
            ..local()
        };
        assert!(!PeerModel::build(&gateway_spec(), &no_flat).unwrap().flat);
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut PeerSpec)>;
        let cases: Vec<(Mutation, &str, Field)> = vec![
            (
                Box::new(|s| s.cluster = None),
                "metadata.labels[topology.istio.io/cluster]: missing",
                Field::Cluster,
            ),
            (
                Box::new(|s| s.cluster = Some("cluster-1".into())),
                "is the local cluster",
                Field::Cluster,
            ),
            (
                Box::new(|s| s.cluster = Some("bad/name".into())),
                "must be letters",
                Field::Cluster,
            ),
            (
                Box::new(|s| s.network = Some(" ".into())),
                "metadata.labels[topology.istio.io/network]: missing",
                Field::Network,
            ),
            (
                Box::new(|s| s.addresses.clear()),
                "spec.addresses[0]: missing",
                Field::Address,
            ),
            (
                Box::new(|s| s.addresses[0].value = "10.0.0.999".into()),
                "\"10.0.0.999\" is not an IP address",
                Field::Address,
            ),
            (
                Box::new(|s| {
                    s.addresses[0] = SpecAddress {
                        kind: "Hostname".into(),
                        value: "-bad-.example".into(),
                    }
                }),
                "is not a DNS hostname",
                Field::Address,
            ),
            (
                Box::new(|s| s.trust_domain = Some("Cluster Local".into())),
                "gateway.istio.io/trust-domain]: \"Cluster Local\" is not a SPIFFE trust domain",
                Field::TrustDomain,
            ),
            (
                Box::new(|s| s.peerd_identity = Some("spiffe://cluster.local/peerd".into())),
                "metadata.annotations[peering.solo.io/peerd-identity]: \"spiffe://cluster.local/peerd\" is not an Istio SPIFFE ID",
                Field::PeerdIdentity,
            ),
            (
                Box::new(|s| s.peerd_identity = Some("cluster.local".into())),
                "must start with \"spiffe://\"",
                Field::PeerdIdentity,
            ),
            (
                Box::new(|s| s.listeners.retain(|l| l.port != 15012)),
                "spec.listeners: no xDS listener",
                Field::Listeners,
            ),
            (
                Box::new(|s| s.listeners[1].port = 15008),
                "port 15008 is declared twice",
                Field::Listeners,
            ),
            (
                Box::new(|s| s.data_plane_service_type = Some("ClusterIP".into())),
                "\"ClusterIP\" is not a service type",
                Field::DataPlaneServiceType,
            ),
        ];
        for (mutate, want, field) in cases {
            let mut spec = gateway_spec();
            mutate(&mut spec);
            let err = PeerModel::build(&spec, &local()).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(
                err.message.contains(want),
                "{:?} does not contain {want:?}",
                err.message
            );
        }
    }

    #[test]
    fn missing_hbone_listener_is_not_invalid() {
        let mut spec = gateway_spec();
        spec.listeners.retain(|l| l.port != 15008);
        let m = PeerModel::build(&spec, &local()).unwrap();
        assert_eq!(m.hbone_port, None);
    }

    #[test]
    fn node_port_preference_is_read() {
        let mut spec = gateway_spec();
        spec.data_plane_service_type = Some("NodePort".into());
        assert!(PeerModel::build(&spec, &local()).unwrap().node_port);
    }

    #[test]
    fn config_peers_name_config_paths_and_duplicates_are_invalid() {
        let peer = config::Peer {
            cluster: "cluster-3".into(),
            network: "net-c".into(),
            address: PeerAddress::Ip("127.0.3.1".parse().unwrap()),
            port: 15012,
            hbone_port: 15008,
            trust_domain: "cluster.local".into(),
            server_identity: None,
            preferred_data_plane_service_type: DataPlaneServiceType::LoadBalancer,
            max_resources: 10,
            max_bytes: 10,
        };
        let specs = vec![
            PeerSpec::from_config(0, &peer),
            PeerSpec::from_config(1, &peer),
        ];
        let built = build_all(&specs, &local());
        let first = built[0].as_ref().unwrap();
        assert!(!first.flat);
        assert_eq!(first.hbone_port, Some(15008));
        let err = built[1].as_ref().unwrap_err();
        assert_eq!(
            err.message,
            "peers[1].cluster: \"cluster-3\" is already declared by another peer"
        );
    }
}
