//! Validation of the `listeners` section: every listen address parses and no two
//! listeners collide.
//!
//! Owns only the rules of that section. Never binds anything.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::env::{Env, Overrides, Sources, apply_env, apply_overrides};
use crate::config::file::{FileConfig, UpstreamFile};
use crate::config::{
    ClientCert, Config, EastWestGateway, Export, Hysteresis, KubeApi, Kubernetes, Listeners, Peer,
    PeerAddress, Probe, ServerIdentity, ServerTls, ServiceRef, Telemetry, TokenReview, Upstream,
    XdsServer, defaults, parse_duration,
};

use super::{Checker, sockets_overlap};

impl Checker<'_> {
    pub(super) fn listeners(&mut self, file: &FileConfig) -> Listeners {
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
}
