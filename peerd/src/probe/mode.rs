//! The probe mode: eBPF when the kernel programs load and attach, userspace otherwise.
//!
//! Owns: the decision and its human-readable reason, so status and metrics can say which
//! mode is active and why. Must never fail peerd: every eBPF problem (not built, no BTF,
//! no privileges, attach refused) becomes `ProbeMode::Userspace { reason }`.

use std::fmt;
use std::path::Path;

use super::loader::{AttachKind, LoaderConfig, ProbeHandle};

/// Which measurement source is active.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeMode {
    /// Kernel programs attached.
    Ebpf { attach: AttachKind },
    /// Only userspace measurements (the active prober's own results).
    Userspace { reason: String },
}

impl ProbeMode {
    /// `"ebpf"` or `"userspace"`, as shown in status and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            ProbeMode::Ebpf { .. } => "ebpf",
            ProbeMode::Userspace { .. } => "userspace",
        }
    }

    /// Why eBPF is not in use, if it is not.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ProbeMode::Ebpf { .. } => None,
            ProbeMode::Userspace { reason } => Some(reason),
        }
    }
}

impl fmt::Display for ProbeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeMode::Ebpf { attach } => write!(f, "ebpf ({attach})"),
            ProbeMode::Userspace { reason } => write!(f, "userspace ({reason})"),
        }
    }
}

/// Whether eBPF probing is wanted at all.
#[derive(Clone, Debug, Default)]
pub struct ProbeSettings {
    /// `false`: userspace mode without trying (the operator's off switch).
    pub disable_ebpf: bool,
    pub loader: LoaderConfig,
}

/// Tries to start the eBPF probes; never fails, falls back to userspace with a reason.
pub fn start(settings: &ProbeSettings) -> (ProbeMode, Option<ProbeHandle>) {
    if settings.disable_ebpf {
        return userspace("eBPF probes disabled by configuration".to_string());
    }
    if let Err(reason) = peerd_ebpf::connect_object() {
        return userspace(format!("probes not built: {reason}"));
    }
    if !Path::new(&settings.loader.btf_path).exists() {
        return userspace(format!(
            "kernel has no BTF ({} missing)",
            settings.loader.btf_path.display()
        ));
    }
    match ProbeHandle::load(&settings.loader) {
        Ok(handle) => (
            ProbeMode::Ebpf {
                attach: handle.attach_kind(),
            },
            Some(handle),
        ),
        Err(err) => userspace(err.to_string()),
    }
}

fn userspace(reason: String) -> (ProbeMode, Option<ProbeHandle>) {
    tracing::warn!(%reason, "eBPF probes unavailable; probing in userspace only");
    (ProbeMode::Userspace { reason }, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_is_userspace_with_reason() {
        let settings = ProbeSettings {
            disable_ebpf: true,
            ..Default::default()
        };
        let (mode, handle) = start(&settings);
        assert!(handle.is_none());
        assert_eq!(mode.name(), "userspace");
        assert_eq!(mode.reason(), Some("eBPF probes disabled by configuration"));
    }

    #[test]
    fn missing_btf_is_userspace_with_reason() {
        let mut settings = ProbeSettings::default();
        settings.loader.btf_path = "/nonexistent/peerd-test/vmlinux".into();
        let (mode, handle) = start(&settings);
        assert!(handle.is_none());
        assert_eq!(mode.name(), "userspace");
        let reason = mode.reason().unwrap();
        assert!(
            reason.contains("BTF") || reason.contains("not built"),
            "unexpected reason: {reason}"
        );
    }

    #[test]
    fn bad_port_config_is_userspace_with_reason() {
        let mut settings = ProbeSettings::default();
        settings.loader.ports = (1..=65).collect();
        let (mode, handle) = start(&settings);
        assert!(handle.is_none());
        let reason = mode.reason().unwrap();
        assert!(
            reason.contains("at most 64") || reason.contains("not built"),
            "unexpected reason: {reason}"
        );
    }

    #[test]
    fn display_names_the_mode() {
        let ebpf = ProbeMode::Ebpf {
            attach: AttachKind::TpBtf,
        };
        assert_eq!(ebpf.to_string(), "ebpf (tp_btf)");
        assert_eq!(ebpf.reason(), None);
    }
}
