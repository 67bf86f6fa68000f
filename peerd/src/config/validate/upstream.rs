//! Validation of the `upstreams` section: the local istiod (default when none is
//! given), endpoints, TLS material, tokens and headers of each xDS upstream.
//!
//! Owns only the rules of that section. Never dials an upstream; never reads a token.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::config::file::{FileConfig, UpstreamFile};
use crate::config::{ClientCert, Upstream, defaults};

use super::{Checker, is_dns_name, is_loopback_host, split_host_port};

impl Checker<'_> {
    pub(super) fn upstreams(
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
}
