//! The running probe subsystem as peerd's main wires it: mode decision, the loaded
//! programs (if any) and the periodic aggregation, behind one handle.
//!
//! Owns: lifetimes (dropping a [`ProbeService`] stops the reader and detaches the
//! programs). Must never fail start-up: without eBPF it runs in userspace mode and the
//! reports stay empty (the active prober's own outcomes are then the only signal).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::aggregator::{self, AggregatorTask, ProbeReport, ReportScope};
use super::loader::{LoadError, ProbeHandle, ProgramRunStats};
use super::mode::{self, ProbeMode, ProbeSettings};

pub struct ProbeService {
    mode: ProbeMode,
    handle: Option<Arc<Mutex<ProbeHandle>>>,
    reader: Option<AggregatorTask>,
    idle_reports: watch::Receiver<Arc<ProbeReport>>,
}

impl ProbeService {
    /// Decides the mode and, in eBPF mode, starts reading the maps every `interval`.
    /// Must be called inside a Tokio runtime.
    pub fn start(settings: &ProbeSettings, interval: Duration) -> Self {
        let (mode, handle) = mode::start(settings);
        let handle = handle.map(|h| Arc::new(Mutex::new(h)));
        let reader = handle
            .as_ref()
            .map(|h| aggregator::spawn(Arc::clone(h), interval));
        let (_tx, idle_reports) = watch::channel(Arc::new(ProbeReport::default()));
        ProbeService {
            mode,
            handle,
            reader,
            idle_reports,
        }
    }

    pub fn mode(&self) -> &ProbeMode {
        &self.mode
    }

    /// Latest per-destination report (always empty in userspace mode).
    pub fn reports(&self) -> watch::Receiver<Arc<ProbeReport>> {
        match &self.reader {
            Some(reader) => reader.subscribe(),
            None => self.idle_reports.clone(),
        }
    }

    /// Where to set which addresses the reports carry (`None` in userspace mode).
    pub fn report_scope(&self) -> Option<ReportScope> {
        self.reader.as_ref().map(AggregatorTask::scope)
    }

    /// Changes the in-kernel port filter (no-op in userspace mode).
    pub fn set_ports(&self, ports: &[u16]) -> Result<(), LoadError> {
        match &self.handle {
            Some(handle) => lock(handle).set_ports(ports),
            None => Ok(()),
        }
    }

    /// Kernel run statistics of the attached programs (empty in userspace mode).
    pub fn program_stats(&self) -> Vec<ProgramRunStats> {
        self.handle
            .as_ref()
            .map_or_else(Vec::new, |h| lock(h).program_stats())
    }
}

fn lock(handle: &Mutex<ProbeHandle>) -> std::sync::MutexGuard<'_, ProbeHandle> {
    handle
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn userspace_mode_keeps_running_with_empty_reports() {
        let settings = ProbeSettings {
            disable_ebpf: true,
            ..Default::default()
        };
        let service = ProbeService::start(&settings, Duration::from_millis(10));
        assert_eq!(service.mode().name(), "userspace");
        assert!(service.reports().borrow().destinations.is_empty());
        assert!(service.set_ports(&[15008]).is_ok());
        assert!(service.program_stats().is_empty());
    }
}
