//! Installs the machine-level prerequisites of the test suite, only when missing (and
//! the eBPF subset for `cargo xtask sandbox`, see [`ebpf_for_sandbox`]):
//! clang/llvm/libbpf (eBPF programs), nftables + iproute2 (network-namespace tests),
//! prometheus (real scrape tests, promtool for alert rules), Python grpcio (independent
//! debug API client), kubernetes-validate (deploy/ manifests).

use std::process::Command;

use anyhow::bail;

/// What the eBPF probes' build needs (`peerd-ebpf/build.rs`): (command, package).
const EBPF_APT: &[(&str, &str)] = &[("clang", "clang"), ("llvm-strip", "llvm")];
/// (header the eBPF programs include, package).
const EBPF_APT_FILES: &[(&str, &str)] = &[("/usr/include/bpf/bpf_helpers.h", "libbpf-dev")];

/// (command that must exist, Debian package providing it), besides [`EBPF_APT`].
const APT: &[(&str, &str)] = &[
    ("nft", "nftables"),
    ("ip", "iproute2"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("kubectl", "kubernetes-client"),
    ("setpriv", "util-linux"),
    // `cargo xtask chart`: Helm's template engine (xtask/chart-render) is built with Go.
    ("go", "golang-go"),
    // `cargo xtask fuzz`: libfuzzer-sys compiles libFuzzer (C++).
    ("c++", "g++"),
];
const APT_FILES: &[(&str, &str)] = &[
    // Go sources of Helm's template engine (sprig, sigs.k8s.io/yaml) for xtask/chart-render.
    (
        "/usr/share/gocode/src/github.com/Masterminds/sprig/go.mod",
        "golang-github-masterminds-sprig-dev",
    ),
    (
        "/usr/share/gocode/src/sigs.k8s.io/yaml/go.mod",
        "golang-k8s-sigs-yaml-dev",
    ),
];
/// (Python module, PyPI package)
const PIP: &[(&str, &str)] = &[
    ("grpc", "grpcio"),
    ("grpc_reflection", "grpcio-reflection"),
    ("grpc_health", "grpcio-health-checking"),
    ("pytest", "pytest"),
    // `cargo xtask chart`: Kubernetes schema validation of deploy/.
    ("kubernetes_validate", "kubernetes-validate"),
];

fn have_command(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn have_python_module(name: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The packages of `commands` and `files` whose command or file is missing.
fn missing_apt(
    commands: &[(&str, &'static str)],
    files: &[(&str, &'static str)],
) -> Vec<&'static str> {
    let mut apt: Vec<&str> = commands
        .iter()
        .filter(|(cmd, _)| !have_command(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    apt.extend(
        files
            .iter()
            .filter(|(path, _)| !std::path::Path::new(path).exists())
            .map(|(_, pkg)| *pkg),
    );
    apt
}

/// What is missing: (apt packages, pip packages).
pub fn missing() -> (Vec<&'static str>, Vec<&'static str>) {
    let mut apt = missing_apt(EBPF_APT, EBPF_APT_FILES);
    apt.extend(missing_apt(APT, APT_FILES));
    apt.sort_unstable();
    apt.dedup();
    let pip = PIP
        .iter()
        .filter(|(module, _)| !have_python_module(module))
        .map(|(_, pkg)| *pkg)
        .collect();
    (apt, pip)
}

pub fn run() -> anyhow::Result<()> {
    let (apt, pip) = missing();
    if !apt.is_empty() {
        // kubectl is on the machine image; it is not installable from Debian's
        // archive under that name everywhere, so its absence is reported, not fatal.
        let installable: Vec<&str> = apt
            .iter()
            .copied()
            .filter(|p| *p != "kubernetes-client")
            .collect();
        if apt.contains(&"kubernetes-client") {
            eprintln!("xtask setup: kubectl not found; the kubectl compatibility tests will fail");
        }
        if !installable.is_empty() {
            if !is_root() {
                bail!("missing packages {installable:?}; run as root or install them");
            }
            apt_install(&installable)?;
        }
    }
    if !pip.is_empty() {
        crate::run(
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(&pip),
        )?;
    }
    let (apt, pip) = missing();
    let apt: Vec<&str> = apt
        .into_iter()
        .filter(|p| *p != "kubernetes-client")
        .collect();
    if !apt.is_empty() || !pip.is_empty() {
        bail!("still missing after setup: apt {apt:?}, pip {pip:?}");
    }
    // The fuzz smoke of `cargo xtask test` builds with cargo-fuzz.
    crate::fuzz::ensure_cargo_fuzz()?;
    eprintln!("xtask setup: all prerequisites present");
    Ok(())
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
    crate::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages),
    )
}

/// `cargo xtask sandbox`: installs what the eBPF probes' build needs when it is missing
/// and this runs as root, so the release `peerd` is built with its probes. Never fails
/// the sandbox: without root (or when the install fails) it says so, and each sandbox
/// peerd's status line gives the reason it probes in userspace.
pub fn ebpf_for_sandbox() {
    let missing = missing_apt(EBPF_APT, EBPF_APT_FILES);
    if missing.is_empty() {
        return;
    }
    if !is_root() {
        eprintln!(
            "xtask sandbox: the eBPF probes need {missing:?}; not root, so not installing \
             them (the sandbox probes in userspace and its status line says why)"
        );
        return;
    }
    eprintln!("xtask sandbox: installing {missing:?} for the eBPF probes");
    if let Err(e) = apt_install(&missing) {
        eprintln!("xtask sandbox: installing {missing:?} failed ({e:#}); probing in userspace");
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
