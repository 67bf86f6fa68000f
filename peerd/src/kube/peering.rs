//! What an `istio-remote` Gateway means to the rest of peerd: the peer model's view of it
//! ([`gateway_spec`]), the checks beyond the model (hostnames resolve, loopback in sandbox
//! mode: [`check_gateway`]), the file-style peer an xDS client is built from
//! ([`usable_peer`]), the east-west gateway target of an `istio-eastwest` Gateway
//! ([`eastwest_target`]), the global-service union ([`global_services`]) and which
//! peers' clients should run given the Gateways and the running clients
//! ([`desired_peers`]).
//!
//! Pure translations, except that [`check_gateway`] and [`usable_peer`] resolve
//! hostnames through the given [`Resolver`]. Must never write to the API server, never
//! start or stop an xDS client, and never decide a condition (the peer monitor does).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ::kube::ResourceExt;
use k8s_openapi::api::core::v1::Service;

use super::gateways::{self, PeerAddress, Resolver, SpecError};
use super::types::{
    ANNOTATION_DATA_PLANE_SERVICE_TYPE, ANNOTATION_PEERD_IDENTITY, ANNOTATION_TRUST_DOMAIN,
    Gateway, LABEL_CLUSTER, LABEL_NETWORK,
};
use crate::config::{self, Config, DataPlaneServiceType, EastWestGateway, ServiceRef};
use crate::peers::model::{
    LocalCluster, PeerModel, PeerSpec, SpecAddress, SpecListener, SpecSource,
};

/// A Gateway as the peer model sees it (the monitor validates it the same way as a file
/// peer, naming Gateway fields). The trust domain defaults to the local one; the peer's
/// peerd identity comes from `peering.solo.io/peerd-identity` when set.
pub fn gateway_spec(gateway: &Gateway, local_trust_domain: &str) -> PeerSpec {
    let labels = gateway.labels();
    let annotations = gateway.annotations();
    PeerSpec {
        source: SpecSource::Gateway {
            namespace: gateway.namespace().unwrap_or_default(),
            name: gateway.name_any(),
        },
        generation: gateway.metadata.generation.unwrap_or(1),
        cluster: labels.get(LABEL_CLUSTER).cloned(),
        network: labels.get(LABEL_NETWORK).cloned(),
        addresses: gateway
            .spec
            .addresses
            .iter()
            .map(|a| SpecAddress {
                kind: a.type_.clone().unwrap_or_else(|| "IPAddress".into()),
                value: a.value.clone(),
            })
            .collect(),
        trust_domain: Some(
            annotations
                .get(ANNOTATION_TRUST_DOMAIN)
                .cloned()
                .unwrap_or_else(|| local_trust_domain.to_string()),
        ),
        listeners: gateway
            .spec
            .listeners
            .iter()
            .map(|l| SpecListener {
                name: l.name.clone(),
                port: l.port,
                protocol: l.protocol.clone(),
            })
            .collect(),
        data_plane_service_type: annotations.get(ANNOTATION_DATA_PLANE_SERVICE_TYPE).cloned(),
        peerd_identity: annotations.get(ANNOTATION_PEERD_IDENTITY).cloned(),
    }
}

/// [`gateway_spec`] of each peer Gateway, in the given order.
pub fn gateway_specs(gateways: &[Arc<Gateway>], local_trust_domain: &str) -> Vec<PeerSpec> {
    gateways
        .iter()
        .map(|g| gateway_spec(g, local_trust_domain))
        .collect()
}

/// Checks a peer Gateway beyond the peer model: hostnames resolve (with `resolver`), and
/// in sandbox mode the address is loopback.
pub async fn check_gateway(
    gateway: &Gateway,
    local: &LocalCluster,
    sandbox: bool,
    resolver: &dyn Resolver,
) -> Result<gateways::PeerSpec, SpecError> {
    let spec = gateways::resolve_peer(gateway, &local.cluster, resolver).await?;
    if sandbox {
        let ips: Vec<IpAddr> = match &spec.address {
            PeerAddress::Ip(ip) => vec![*ip],
            PeerAddress::Hostname { resolved, .. } => resolved.clone(),
        };
        if let Some(ip) = ips.iter().find(|ip| !ip.is_loopback()) {
            return Err(SpecError {
                field: "spec.addresses[0].value".into(),
                message: format!("{ip} is not a loopback address (sandboxMode)"),
            });
        }
    }
    Ok(spec)
}

/// The file-style peer of a usable Gateway, or why it is not usable.
pub async fn usable_peer(
    gateway: &Gateway,
    config: &Config,
    local: &LocalCluster,
    resolver: &dyn Resolver,
) -> anyhow::Result<config::Peer> {
    let model = PeerModel::build(&gateway_spec(gateway, &config.trust_domain), local)
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let checked = check_gateway(gateway, local, config.sandbox_mode, resolver).await?;
    let address = match checked.address {
        PeerAddress::Ip(ip) => config::PeerAddress::Ip(ip),
        PeerAddress::Hostname { name, .. } => config::PeerAddress::Hostname(name),
    };
    Ok(config::Peer {
        cluster: model.cluster,
        network: model.network,
        address,
        port: model.xds_port,
        hbone_port: model.hbone_port.unwrap_or(config::defaults::HBONE_PORT),
        trust_domain: model.trust_domain,
        // The annotation when set, else the default peerd identity in the peer's trust
        // domain (`Config::peer_identity`).
        server_identity: model.peerd_identity.map(config::ServerIdentity::Spiffe),
        preferred_data_plane_service_type: if model.node_port {
            DataPlaneServiceType::NodePort
        } else {
            DataPlaneServiceType::LoadBalancer
        },
        max_resources: config::defaults::PEER_MAX_RESOURCES,
        max_bytes: config::defaults::PEER_MAX_BYTES,
    })
}

/// The usable peers among `gateways`, by cluster; when two Gateways name the same
/// cluster, the first one (in the given order) wins.
pub async fn usable_peers(
    gateways: &[Arc<Gateway>],
    config: &Config,
    local: &LocalCluster,
    resolver: &dyn Resolver,
) -> BTreeMap<String, config::Peer> {
    let mut usable = BTreeMap::new();
    for gateway in gateways {
        match usable_peer(gateway, config, local, resolver).await {
            Ok(peer) => {
                usable.entry(peer.cluster.clone()).or_insert(peer);
            }
            // The conditions say why, at length; this is for following the peer set.
            Err(err) => {
                tracing::debug!(gateway = %gateway.name_any(), error = %err, "istio-remote Gateway not usable")
            }
        }
    }
    usable
}

/// The east-west gateway target of an `istio-eastwest` Gateway with an IP address (in
/// sandbox mode: a loopback one).
pub fn eastwest_target(gateway: &Gateway, sandbox: bool) -> Option<EastWestGateway> {
    let address: IpAddr = gateway
        .spec
        .addresses
        .iter()
        .find(|a| a.type_.as_deref().unwrap_or("IPAddress") == "IPAddress")?
        .value
        .parse()
        .ok()?;
    if sandbox && !address.is_loopback() {
        return None;
    }
    let hbone_port = gateway
        .spec
        .listeners
        .iter()
        .find(|l| l.port == gateways::HBONE_PORT || l.protocol.eq_ignore_ascii_case("HBONE"))
        .map(|l| l.port)
        .unwrap_or(gateways::HBONE_PORT);
    Some(EastWestGateway {
        address,
        hbone_port,
    })
}

/// The global services: the file's `export.globalServices` and the labelled Services.
pub fn global_services(
    file: &BTreeSet<ServiceRef>,
    labelled: &[Arc<Service>],
) -> BTreeSet<ServiceRef> {
    let mut out = file.clone();
    out.extend(labelled.iter().map(|s| ServiceRef {
        namespace: s.namespace().unwrap_or_default(),
        name: s.name_any(),
    }));
    out
}

/// The peers whose xDS clients should run: every usable Gateway's peer, plus each running
/// peer whose Gateway still exists (by its cluster label, `present`) but is not usable now
/// (edited to an invalid address, say): its last valid client keeps running until the
/// Gateway is valid again or deleted. Returns them with the clusters kept that way.
pub fn desired_peers(
    usable: BTreeMap<String, config::Peer>,
    running: &BTreeMap<String, config::Peer>,
    present: &BTreeSet<String>,
) -> (BTreeMap<String, config::Peer>, BTreeSet<String>) {
    let mut desired = usable;
    let mut kept = BTreeSet::new();
    for (cluster, peer) in running {
        if present.contains(cluster) && !desired.contains_key(cluster) {
            desired.insert(cluster.clone(), peer.clone());
            kept.insert(cluster.clone());
        }
    }
    (desired, kept)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::kube::gateways::StaticResolver;

    fn gateway(
        class: &str,
        labels: Value,
        annotations: Value,
        addresses: Value,
        listeners: Value,
    ) -> Gateway {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "istio-eastwest", "generation": 3,
                         "labels": labels, "annotations": annotations},
            "spec": {"gatewayClassName": class, "addresses": addresses, "listeners": listeners},
        }))
        .unwrap()
    }

    fn peer(cluster: &str, ip: &str) -> config::Peer {
        config::Peer {
            cluster: cluster.into(),
            network: "net2".into(),
            address: config::PeerAddress::Ip(ip.parse().unwrap()),
            port: 15012,
            hbone_port: 15008,
            trust_domain: format!("{cluster}.local"),
            server_identity: None,
            preferred_data_plane_service_type: DataPlaneServiceType::LoadBalancer,
            max_resources: config::defaults::PEER_MAX_RESOURCES,
            max_bytes: config::defaults::PEER_MAX_BYTES,
        }
    }

    #[test]
    fn gateway_spec_names_the_gateway_and_defaults_the_trust_domain() {
        let g = gateway(
            "istio-remote",
            json!({"topology.istio.io/cluster": "c2", "topology.istio.io/network": "net2"}),
            json!({}),
            json!([{"value": "127.0.0.2"}]),
            json!([{"name": "xds-tls", "port": 15012, "protocol": "TLS"}]),
        );
        let spec = gateway_spec(&g, "c1.local");
        assert_eq!(
            spec.source,
            SpecSource::Gateway {
                namespace: "istio-eastwest".into(),
                name: "gw".into()
            }
        );
        assert_eq!(spec.generation, 3);
        assert_eq!(spec.cluster.as_deref(), Some("c2"));
        assert_eq!(spec.network.as_deref(), Some("net2"));
        assert_eq!(spec.trust_domain.as_deref(), Some("c1.local"));
        assert_eq!(
            spec.addresses[0].kind, "IPAddress",
            "the Gateway API default"
        );
        assert_eq!(spec.listeners[0].port, 15012);

        let annotated = gateway(
            "istio-remote",
            json!({}),
            json!({"gateway.istio.io/trust-domain": "c2.local"}),
            json!([]),
            json!([]),
        );
        assert_eq!(
            gateway_spec(&annotated, "c1.local").trust_domain.as_deref(),
            Some("c2.local")
        );
    }

    #[tokio::test]
    async fn sandbox_mode_refuses_a_non_loopback_peer_address() {
        let g = gateway(
            "istio-remote",
            json!({"topology.istio.io/cluster": "c2", "topology.istio.io/network": "net2"}),
            json!({"gateway.istio.io/trust-domain": "c2.local"}),
            json!([{"type": "IPAddress", "value": "192.0.2.7"}]),
            json!([
                {"name": "cross-network", "port": 15008, "protocol": "HBONE"},
                {"name": "xds-tls", "port": 15012, "protocol": "TLS"},
            ]),
        );
        let local = LocalCluster {
            cluster: "c1".into(),
            network: "net1".into(),
            flat_networks: false,
        };
        let resolver = StaticResolver::default();
        let err = check_gateway(&g, &local, true, &resolver)
            .await
            .unwrap_err();
        assert_eq!(err.field, "spec.addresses[0].value");
        assert!(err.message.contains("192.0.2.7"), "{}", err.message);
        // Outside sandbox mode the same Gateway is fine.
        let spec = check_gateway(&g, &local, false, &resolver).await.unwrap();
        assert_eq!(spec.cluster, "c2");
    }

    /// The peer's peerd identity: the default in the peer's trust domain with our namespace
    /// and service account, or the Gateway's annotation; never just a trust domain.
    #[tokio::test]
    async fn usable_peer_pins_the_default_or_annotated_peerd_identity() {
        let config = config::resolve(
            Config::parse_file(
                "cluster: c1\nnetwork: net1\nidentity: {namespace: mesh-peering, serviceAccount: peerd-sa}\n",
            )
            .unwrap(),
            &config::Env::default(),
            &config::Overrides::default(),
            None,
        )
        .unwrap();
        let local = LocalCluster::from(&config);
        let resolver = StaticResolver::default();
        let listeners = json!([
            {"name": "cross-network", "port": 15008, "protocol": "HBONE"},
            {"name": "xds-tls", "port": 15012, "protocol": "TLS"},
        ]);
        let labels =
            json!({"topology.istio.io/cluster": "c2", "topology.istio.io/network": "net2"});
        let plain = gateway(
            "istio-remote",
            labels.clone(),
            json!({"gateway.istio.io/trust-domain": "c2.local"}),
            json!([{"value": "192.0.2.7"}]),
            listeners.clone(),
        );
        let peer = usable_peer(&plain, &config, &local, &resolver)
            .await
            .unwrap();
        assert_eq!(peer.server_identity, None);
        assert_eq!(
            config.peer_identity(&peer).unwrap().to_string(),
            "spiffe://c2.local/ns/mesh-peering/sa/peerd-sa"
        );

        let annotated = gateway(
            "istio-remote",
            labels.clone(),
            json!({"gateway.istio.io/trust-domain": "c2.local",
                   "peering.solo.io/peerd-identity": "spiffe://c2.local/ns/istio-system/sa/peerd-c2"}),
            json!([{"value": "192.0.2.7"}]),
            listeners.clone(),
        );
        let peer = usable_peer(&annotated, &config, &local, &resolver)
            .await
            .unwrap();
        assert_eq!(
            config.peer_identity(&peer).unwrap().to_string(),
            "spiffe://c2.local/ns/istio-system/sa/peerd-c2"
        );

        // A bad annotation makes the Gateway unusable, naming the annotation.
        let bad = gateway(
            "istio-remote",
            labels,
            json!({"peering.solo.io/peerd-identity": "c2.local"}),
            json!([{"value": "192.0.2.7"}]),
            listeners,
        );
        let err = usable_peer(&bad, &config, &local, &resolver)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("metadata.annotations[peering.solo.io/peerd-identity]"),
            "{err}"
        );
    }

    #[test]
    fn eastwest_target_needs_an_ip_and_finds_the_hbone_port() {
        let ip = gateway(
            "istio-eastwest",
            json!({}),
            json!({}),
            json!([{"type": "Hostname", "value": "ew.example"}, {"type": "IPAddress", "value": "127.0.0.9"}]),
            json!([{"name": "tls", "port": 15443, "protocol": "TLS"}, {"name": "mesh", "port": 16008, "protocol": "hbone"}]),
        );
        let target = eastwest_target(&ip, true).unwrap();
        assert_eq!(target.address, "127.0.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(
            target.hbone_port, 16008,
            "found by protocol, case-insensitive"
        );

        let no_listener = gateway(
            "istio-eastwest",
            json!({}),
            json!({}),
            json!([{"value": "192.0.2.1"}]),
            json!([]),
        );
        let target = eastwest_target(&no_listener, false).unwrap();
        assert_eq!(target.hbone_port, gateways::HBONE_PORT);
        assert_eq!(
            eastwest_target(&no_listener, true),
            None,
            "sandbox: loopback only"
        );

        let hostname_only = gateway(
            "istio-eastwest",
            json!({}),
            json!({}),
            json!([{"type": "Hostname", "value": "ew.example"}]),
            json!([]),
        );
        assert_eq!(eastwest_target(&hostname_only, false), None);
    }

    #[test]
    fn global_services_are_the_file_and_the_labelled_services() {
        let service = |ns: &str, name: &str| -> Arc<Service> {
            Arc::new(
                serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}}))
                    .unwrap(),
            )
        };
        let file: BTreeSet<ServiceRef> = [ServiceRef {
            namespace: "a".into(),
            name: "x".into(),
        }]
        .into();
        let all = global_services(&file, &[service("a", "x"), service("b", "y")]);
        let names: Vec<String> = all
            .iter()
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .collect();
        assert_eq!(names, ["a/x", "b/y"]);
        assert_eq!(global_services(&file, &[]), file);
    }

    #[test]
    fn an_unusable_gateway_keeps_its_last_valid_peer_and_a_deleted_one_does_not() {
        let running: BTreeMap<String, config::Peer> = [
            ("c2".to_string(), peer("c2", "127.0.0.2")),
            ("c3".to_string(), peer("c3", "127.0.0.3")),
            ("c5".to_string(), peer("c5", "127.0.0.5")),
        ]
        .into();
        // c2 re-addressed, c3's Gateway edited to something unusable, c4 added, c5 deleted.
        let usable: BTreeMap<String, config::Peer> = [
            ("c2".to_string(), peer("c2", "127.0.0.22")),
            ("c4".to_string(), peer("c4", "127.0.0.4")),
        ]
        .into();
        let present: BTreeSet<String> = ["c2", "c3", "c4"].map(String::from).into();
        let (desired, kept) = desired_peers(usable, &running, &present);
        let addresses: Vec<(String, String)> = desired
            .values()
            .map(|p| (p.cluster.clone(), p.address.to_string()))
            .collect();
        assert_eq!(
            addresses,
            [
                ("c2".into(), "127.0.0.22".into()),
                ("c3".into(), "127.0.0.3".into()),
                ("c4".into(), "127.0.0.4".into()),
            ]
        );
        assert_eq!(kept, ["c3".to_string()].into());
    }
}
