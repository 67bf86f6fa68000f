//! `cargo xtask chaos [--quick]` and `cargo xtask soak --for D`: build the release
//! `peerd` and `peerd-sandbox` (`cargo xtask test` runs `chaos --quick` on the debug
//! binaries it has already built), create a network namespace of their own (loopback up; the
//! chaos rig's fixed addresses and its nftables table live only there), and run
//! `peerd-sandbox chaos|soak` inside it. The namespace is deleted afterwards, whatever
//! the outcome. Needs root (network namespaces, nftables).

use std::process::Command;

use anyhow::{Context, bail};

/// A network namespace named after this process, deleted on drop.
struct Netns(String);

impl Netns {
    fn create(tag: &str) -> anyhow::Result<Netns> {
        let name = format!("peerd-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .context("running `ip netns add` (iproute2; `cargo xtask setup` installs it)")?
            .success();
        if !ok {
            bail!(
                "`ip netns add {name}` failed: chaos and soak need root (network namespaces, nftables)"
            );
        }
        let ns = Netns(name);
        let up = Command::new("ip")
            .args(["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"])
            .status()
            .context("bringing loopback up in the namespace")?
            .success();
        if !up {
            bail!("could not bring loopback up in network namespace {}", ns.0);
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Which build of the binaries to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `cargo xtask chaos|soak`: the release binaries, built here.
    Release,
    /// `cargo xtask test`: the debug binaries it has just built (a release build of the
    /// testbed would cost CI more than the whole quick run).
    Debug,
}

/// Builds the binaries (release) and runs `peerd-sandbox <subcommand> <args>` in a new
/// network namespace.
pub fn run(subcommand: &str, args: &[String], profile: Profile) -> anyhow::Result<()> {
    let dir = match profile {
        Profile::Release => {
            crate::setup::ebpf_for_sandbox();
            crate::cargo(&[
                "build",
                "--release",
                "-p",
                "peerd",
                "--bin",
                "peerd",
                "-p",
                "peerd-testbed",
                "--bin",
                "peerd-sandbox",
            ])?;
            "release"
        }
        Profile::Debug => "debug",
    };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target"))
        .join(dir);
    let sandbox = target.join("peerd-sandbox");
    let ns = Netns::create(subcommand)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0])
        .arg(&sandbox)
        .arg(subcommand)
        .args(args)
        .env("PEERD_BIN", target.join("peerd"));
    // The runner's in-process clients would log every injected disconnect; its own report
    // is on stdout. The peerds log at info to their files regardless.
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "error");
    }
    crate::run(&mut cmd)
}
