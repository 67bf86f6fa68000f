//! Validation of the `probe` section: ports, intervals, mode and hysteresis.
//!
//! Owns only the rules of that section. Never probes anything.

use std::collections::BTreeSet;

use crate::config::file::FileConfig;
use crate::config::{Probe, defaults};

use super::Checker;

impl Checker<'_> {
    pub(super) fn probe(&mut self, file: &FileConfig) -> Probe {
        let pf = &file.probe;
        let ports = pf
            .ports
            .clone()
            .unwrap_or_else(|| defaults::PROBE_PORTS.to_vec());
        let enabled = pf.enabled.unwrap_or(true);
        if enabled && ports.is_empty() {
            self.err("probe.ports", "must not be empty while probing is enabled");
        }
        let mut seen = BTreeSet::new();
        for (i, port) in ports.iter().enumerate() {
            if *port == 0 {
                self.err(format!("probe.ports[{i}]"), "0 is not a port");
            } else if !seen.insert(*port) {
                self.err(
                    format!("probe.ports[{i}]"),
                    format!("{port} is listed more than once"),
                );
            }
        }
        let interval =
            self.nonzero_duration("probe.interval", &pf.interval, defaults::PROBE_INTERVAL);
        let jitter = self.duration("probe.jitter", &pf.jitter, defaults::PROBE_JITTER);
        if jitter > interval {
            self.err("probe.jitter", "must not exceed probe.interval");
        }
        Probe {
            enabled,
            mode: pf.mode.unwrap_or_default(),
            ports,
            interval,
            jitter,
        }
    }
}
