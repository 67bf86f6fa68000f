//! Validation of the `listeners` section: every listen address parses and no two
//! listeners collide.
//!
//! Owns only the rules of that section. Never binds anything.

use crate::config::file::FileConfig;
use crate::config::{Listeners, defaults};

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
