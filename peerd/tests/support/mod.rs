//! Helpers for the root-only kernel tests: network namespaces, veth, nftables, and the
//! "eBPF required?" policy. Owns set-up and guaranteed teardown (Drop) of everything a
//! test creates. Must never add an address or route outside the test's own namespaces.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

pub mod netns;

use std::sync::{Mutex, MutexGuard};

/// Kernel tests share global state (the tracepoints see every namespace): run one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether CI demands eBPF (`PEERD_REQUIRE_EBPF=1`): then "unavailable" fails the test.
pub fn ebpf_required() -> bool {
    std::env::var("PEERD_REQUIRE_EBPF").is_ok_and(|v| v == "1")
}

/// Returns `Some(reason)` when the test cannot run here; panics instead when required.
pub fn unavailable_reason() -> Option<String> {
    let reason = if let Err(reason) = peerd_ebpf::connect_object() {
        Some(format!("probes not built: {reason}"))
    } else if !is_root() {
        Some("not running as root (needs CAP_BPF, CAP_NET_ADMIN, netns)".to_string())
    } else if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("kernel has no BTF".to_string())
    } else if !tool_works("ip", &["-V"]) || !tool_works("nft", &["--version"]) {
        Some("iproute2 or nftables missing".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) if ebpf_required() => {
            panic!("PEERD_REQUIRE_EBPF=1 but eBPF tests cannot run: {reason}")
        }
        Some(reason) => {
            eprintln!("SKIPPED: {reason} (set PEERD_REQUIRE_EBPF=1 to make this a failure)");
            Some(reason)
        }
        None => None,
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

pub fn tool_works(tool: &str, args: &[&str]) -> bool {
    std::process::Command::new(tool)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}
