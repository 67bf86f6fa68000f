//! `cargo xtask bench <name> [--quick] [--json FILE]`: each benchmark is a
//! `harness = false` bench target of the peerd crate, built with the bench (release)
//! profile; it prints a table comparing against its targets and a floor measured in the
//! same run. No benchmark asserts timing.
//!
//! - `xds`: one cluster's data path (istiod → peerd → ztunnel) at 100k workloads;
//! - `probes`: the eBPF/userspace connect probes;
//! - `kube`: the Kubernetes side against the emulated API server;
//! - `federation`: three peered clusters (two flat, one multi-network), each a
//!   simulated istiod + a real peerd process + a ztunnel-like client: first full
//!   federated view, cross-cluster propagation under churn, per-peerd CPU and RSS;
//! - `peers`: one peerd with 50 peers x 2,000 exported workloads under churn: time to
//!   the full merged view, RSS, CPU per second of churn, against one peer of the same total;
//! - `fanout`: 1,000 mTLS subscribers of one export view: propagation of a change to all
//!   of them (against one subscriber) and RSS per idle subscriber.

use anyhow::bail;

/// Benchmarks that exist, in the order `all` runs them.
pub const BENCHES: &[&str] = &["xds", "probes", "kube", "federation", "peers", "fanout"];

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// A benchmark name or `all`.
    pub name: String,
    /// A small size that finishes in under two minutes.
    #[arg(long)]
    pub quick: bool,
    /// Also write the figures as JSON to this file (with `all`: one file per bench,
    /// the bench name inserted before the extension).
    #[arg(long)]
    pub json: Option<String>,
}

impl BenchArgs {
    pub fn all_quick() -> Self {
        BenchArgs {
            name: "all".into(),
            quick: true,
            json: None,
        }
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let names: Vec<&str> = if args.name == "all" {
        BENCHES.to_vec()
    } else if BENCHES.contains(&args.name.as_str()) {
        vec![args.name.as_str()]
    } else {
        bail!(
            "unknown benchmark {:?}; known: all, {}",
            args.name,
            BENCHES.join(", ")
        );
    };
    for name in names {
        let mut cmd = vec!["bench", "-p", "peerd", "--bench", name, "--"];
        if args.quick {
            cmd.push("--quick");
        }
        let json;
        if let Some(path) = &args.json {
            json = if args.name == "all" {
                per_bench_path(path, name)
            } else {
                path.clone()
            };
            cmd.extend(["--json", json.as_str()]);
        }
        crate::cargo(&cmd)?;
    }
    Ok(())
}

fn per_bench_path(path: &str, name: &str) -> String {
    match path.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{name}.{ext}"),
        None => format!("{path}.{name}"),
    }
}
