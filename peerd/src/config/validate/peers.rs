//! Validation of the `peers` section (file peers, refused when Kubernetes provides
//! them): cluster names, networks, addresses, ports, trust domains and limits.
//!
//! Owns only the rules of that section. Never resolves a hostname.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::config::file::FileConfig;
use crate::config::{Peer, PeerAddress, defaults};

use super::{Checker, is_dns_name, parse_server_identity};

impl Checker<'_> {
    pub(super) fn peers(
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
}
