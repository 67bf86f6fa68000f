//! `cargo xtask bench <name> [--quick] [--runs N] [--json FILE]`: each benchmark is a
//! `harness = false` bench target of the peerd crate, built with the bench (release)
//! profile; it prints a table comparing against its targets and a baseline measured in the
//! same run. No benchmark asserts timing. With `--runs N` every benchmark runs N times
//! (round-robin, so a slow spell of the machine does not hit one benchmark's runs only)
//! and a summary gives each figure's median and spread (`summary`).
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

mod summary;

use anyhow::{Context, bail};

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
    /// Run every benchmark this many times and print each figure's median and spread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,
}

impl BenchArgs {
    pub fn all_quick() -> Self {
        BenchArgs {
            name: "all".into(),
            quick: true,
            json: None,
            runs: 1,
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
    if args.runs == 1 {
        for name in names {
            run_once(
                name,
                args.quick,
                args.json.as_deref().map(|p| json_path(args, p, name)),
            )?;
        }
        return Ok(());
    }
    // Every run writes its figures to a file of its own; the summary reads them back.
    // Absolute: cargo runs a bench binary in its package's directory.
    let dir = crate::root().join("target").join("bench-runs");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files: Vec<Vec<std::path::PathBuf>> = vec![Vec::new(); names.len()];
    for run in 1..=args.runs {
        for (i, name) in names.iter().enumerate() {
            eprintln!("xtask: bench {name}, run {run} of {}", args.runs);
            let file = dir.join(format!("{name}.run{run}.json"));
            run_once(name, args.quick, Some(file.display().to_string()))?;
            files[i].push(file);
        }
    }
    for (name, files) in names.iter().zip(&files) {
        let (heading, figures) = summary::summarize(files)?;
        println!("{}", summary::table(&heading, &figures));
        if let Some(path) = &args.json {
            let path = json_path(args, path, name);
            let text = serde_json::to_vec_pretty(&summary::json(&heading, &figures))?;
            std::fs::write(&path, text).with_context(|| format!("writing {path}"))?;
        }
    }
    Ok(())
}

fn run_once(name: &str, quick: bool, json: Option<String>) -> anyhow::Result<()> {
    let mut cmd = vec!["bench", "-p", "peerd", "--bench", name, "--"];
    if quick {
        cmd.push("--quick");
    }
    if let Some(json) = &json {
        cmd.extend(["--json", json.as_str()]);
    }
    crate::cargo(&cmd)
}

/// With `all`, one file per bench: the bench name inserted before the extension.
fn json_path(args: &BenchArgs, path: &str, name: &str) -> String {
    if args.name == "all" {
        per_bench_path(path, name)
    } else {
        path.to_string()
    }
}

fn per_bench_path(path: &str, name: &str) -> String {
    match path.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{name}.{ext}"),
        None => format!("{path}.{name}"),
    }
}
