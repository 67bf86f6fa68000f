//! Starts the probe subsystem of `peerd run`: the active prober, and the eBPF connect
//! probes (loader + aggregator behind [`ProbeService`]) when `probe.mode` allows and the
//! kernel lets us; picks the probe source the peer monitor reads (kernel counters with the
//! prober's own outcomes as fallback, or the prober alone in userspace mode).
//!
//! It owns wiring and lifetimes only (the programs stay attached until cancellation).
//! Without eBPF it must never fail start-up unless `probe.mode: ebpf` demands it; the
//! reason is logged, shown by the debug API and `peerd_probe_ebpf_active` is 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ProbeMode as ConfiguredMode};
use crate::peers::{KernelProbe, ProbeSource, UserspaceProbe};
use crate::probe::loader::LoaderConfig;
use crate::probe::mode::{ProbeMode, ProbeSettings};
use crate::probe::prober::{Prober, ProberConfig, TargetGuard};
use crate::probe::service::ProbeService;
use crate::store::Store;

/// How often the kernel maps are read.
const MAP_READ_INTERVAL: Duration = Duration::from_secs(1);

/// The running probes.
pub(super) struct Probes {
    /// The mode in effect, with the reason when it is userspace.
    pub mode: ProbeMode,
    /// What the peer monitor reads.
    pub source: Arc<dyn ProbeSource>,
}

/// Which addresses the prober may connect to (sandbox/test mode: loopback only).
pub(super) fn target_guard(config: &Config) -> TargetGuard {
    if config.sandbox_mode {
        TargetGuard::loopback_only()
    } else {
        TargetGuard::Unrestricted
    }
}

/// The eBPF settings for the configured mode.
fn settings(config: &Config) -> ProbeSettings {
    ProbeSettings {
        disable_ebpf: !config.probe.enabled || config.probe.mode == ConfiguredMode::Userspace,
        loader: LoaderConfig {
            ports: config.probe.ports.clone(),
            ..LoaderConfig::default()
        },
    }
}

/// Starts the prober and, when possible, the kernel probes. Fails only when
/// `probe.mode: ebpf` is configured and eBPF is unavailable.
pub(super) fn start_probes(
    config: &Config,
    store: &Arc<Store>,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<Probes> {
    let prober = Prober::new(ProberConfig {
        enabled: config.probe.enabled,
        interval: config.probe.interval,
        jitter: config.probe.jitter,
        guard: target_guard(config),
        ..ProberConfig::default()
    })
    .context("probe")?;
    if let Some(handle) = prober.spawn() {
        let cancel = cancel.clone();
        tasks.spawn(async move {
            cancel.cancelled().await;
            handle.abort();
            Ok(())
        });
    }

    let service = ProbeService::start(&settings(config), MAP_READ_INTERVAL);
    let mode = match service.mode() {
        ProbeMode::Userspace { reason } if !config.probe.enabled => ProbeMode::Userspace {
            reason: format!("probing disabled by configuration (probe.enabled: false); {reason}"),
        },
        other => other.clone(),
    };
    if config.probe.mode == ConfiguredMode::Ebpf
        && let Some(reason) = mode.reason()
    {
        bail!("probe.mode: ebpf is required but the eBPF probes are unavailable: {reason}");
    }
    crate::probe::metrics::set_ebpf_active(matches!(mode, ProbeMode::Ebpf { .. }));
    tracing::info!(mode = %mode, "probe mode");

    let source: Arc<dyn ProbeSource> = match &mode {
        ProbeMode::Ebpf { .. } => KernelProbe::with_prober(
            service.reports(),
            prober,
            Some(Arc::clone(store)),
            service.report_scope(),
        ),
        ProbeMode::Userspace { .. } => UserspaceProbe::new(prober),
    };
    // The programs stay attached while peerd runs; dropping the service detaches them.
    let cancel = cancel.clone();
    tasks.spawn(async move {
        cancel.cancelled().await;
        drop(service);
        Ok(())
    });
    Ok(Probes { mode, source })
}
