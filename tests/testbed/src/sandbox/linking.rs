//! How the sandbox links its clusters: the way an operator does, by running the real
//! `peerd link` / `peerd unlink` binary with the sandbox's kubeconfig (DIR/kubeconfig,
//! one context per cluster). At start every cluster is exposed (its east-west Gateway is
//! seeded) and unlinked; the sandbox links them all, and the control commands
//! `link A B` / `unlink A B` link or unlink one pair (both directions) while it runs.
//!
//! It owns only the invocation and the "all conditions True" measurement; it never
//! writes a Gateway itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::sandbox::cluster::{Cluster, peerd_binary};
use crate::sandbox::status::SandboxStatus;

/// DIR/kubeconfig, next to the clusters' directories.
pub fn kubeconfig_path(clusters: &[Cluster]) -> anyhow::Result<PathBuf> {
    let dir = clusters
        .first()
        .and_then(|c| c.layout.dir.parent())
        .context("no cluster")?;
    Ok(dir.join("kubeconfig"))
}

/// Runs `peerd <args> --kubeconfig <kubeconfig>` to completion and returns its output;
/// a failure carries what it printed.
pub fn run_peerd(kubeconfig: &Path, args: &[String]) -> anyhow::Result<String> {
    let output = Command::new(peerd_binary()?)
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .with_context(|| format!("running peerd {}", args.join(" ")))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        bail!(
            "peerd {} failed ({}):\n{stdout}{stderr}",
            args.join(" "),
            output.status
        );
    }
    Ok(stdout)
}

/// `link --flat-networks --context …` over every cluster (clusters sharing a network
/// peer flat, as their peerds are configured).
pub fn link_all_args(names: &[String]) -> Vec<String> {
    let mut args = vec!["link".to_string(), "--flat-networks".to_string()];
    for name in names {
        args.push("--context".into());
        args.push(name.clone());
    }
    args
}

/// `link A B` / `unlink A B`: one pair, both ways (`--from A --to B`, then back).
pub fn pair(verb: &str, kubeconfig: &Path, a: &str, b: &str) -> anyhow::Result<String> {
    if a == b {
        bail!("{verb} {a} {b}: a cluster cannot be linked to itself");
    }
    let mut out = String::new();
    for (from, to) in [(a, b), (b, a)] {
        let mut args = vec![
            verb.to_string(),
            "--from".into(),
            from.to_string(),
            "--to".into(),
            to.to_string(),
        ];
        if verb == "link" {
            args.push("--flat-networks".into());
        }
        out += &run_peerd(kubeconfig, &args)?;
    }
    Ok(out)
}

/// Every cluster has peers and every condition of every peer is True.
pub fn all_conditions_true(status: &SandboxStatus) -> bool {
    !status.clusters.is_empty()
        && status.clusters.iter().all(|c| {
            !c.peers.is_empty()
                && c.peers.iter().all(|p| {
                    !p.conditions.is_empty() && p.conditions.values().all(|c| c.status == "True")
                })
        })
}

/// Measures from a `peerd link` to the first status with every condition True.
#[derive(Debug, Default)]
pub struct LinkTimer {
    pending: Option<(String, Instant)>,
}

impl LinkTimer {
    pub fn start(&mut self, what: &str) {
        self.pending = Some((what.to_string(), Instant::now()));
    }

    /// When `status` is the first all-True one since [`LinkTimer::start`]: what was
    /// linked and how long it took.
    pub fn observe(&mut self, status: &SandboxStatus) -> Option<(String, Duration)> {
        if !all_conditions_true(status) {
            return None;
        }
        let (what, at) = self.pending.take()?;
        Some((what, at.elapsed()))
    }
}
