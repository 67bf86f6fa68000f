//! Validation of the `export` section: global services and the east-west gateway that
//! multi-network peers need.
//!
//! Owns only the rules of that section.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::config::file::FileConfig;
use crate::config::{EastWestGateway, Export, Peer, ServiceRef, defaults};

use super::{Checker, is_dns_label};

impl Checker<'_> {
    pub(super) fn export(
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
}
