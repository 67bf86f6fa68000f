//! `cargo xtask`: all project automation (tests, benchmarks, eBPF build, sandbox, lint,
//! machine setup). No shell scripts: `.ci/run` only calls `cargo xtask test`.

mod bench;
mod chaos;
mod chart;
mod fuzz;
mod setup;
mod test;

use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "peerd project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the tests need (apt/pip) when missing; idempotent.
    Setup,
    /// Every check and test CI runs: setup, fmt, clippy, cargo tests, Python tests, the
    /// fuzz smoke (an unoptimised build, each target 10 s), `chaos --quick` and
    /// `bench all --quick` so benchmarks never rot.
    Test {
        /// Do not install missing packages (fail instead).
        #[arg(long)]
        no_setup: bool,
        /// Skip `bench all --quick`.
        #[arg(long)]
        no_bench: bool,
        /// Skip the fuzz smoke (its instrumented build of every dependency takes a few
        /// minutes).
        #[arg(long)]
        no_fuzz: bool,
    },
    /// Formatting and clippy with warnings as errors.
    Lint,
    /// Run a benchmark: `xds`, `federation`, `probes`, `kube`, `peers`, `fanout`, or `all`.
    Bench(bench::BenchArgs),
    /// Check deploy/ offline: render the chart and the Kustomize base, compare them,
    /// validate against Kubernetes 1.32 schemas, RBAC without wildcards, metric names.
    Chart {
        /// Only print the chart's default rendering (like `helm template`), no checks.
        #[arg(long)]
        template: bool,
    },
    /// Coverage-guided fuzzing of the parsers facing the network and the API server
    /// (`fuzz/`, cargo-fuzz): seeds from the simulated population, N seconds per target,
    /// a table of executions, corpus and crashes. Any crash fails the run.
    Fuzz(fuzz::FuzzArgs),
    /// Run `peerd-sandbox` (release build, with the release `peerd` it runs per
    /// cluster), passing the remaining arguments. As root, first installs what the eBPF
    /// probes need when missing.
    Sandbox {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The chaos suite (release binaries, in a network namespace of its own, as root):
    /// scripted faults on a three-cluster federation, checked by an independent
    /// observer; prints fault / recovery time / violations and fails on any violation.
    Chaos {
        /// The CI subset (a few minutes).
        #[arg(long)]
        quick: bool,
        /// More `peerd-sandbox chaos` arguments (`--only TEXT`, `--json FILE`,
        /// `--state-dir DIR`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A long run (not in CI): churn, a fault every `for/12` (at least 30s), NACKs, RSS,
    /// fds, threads, propagation p99 per window, violations. E.g. `--for 1h --json F`.
    Soak {
        #[arg(long = "for")]
        run_for: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Test {
            no_setup,
            no_bench,
            no_fuzz,
        } => test::run(!no_setup, !no_bench, !no_fuzz),
        Cmd::Lint => test::lint(),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Chart { template: false } => chart::run(),
        Cmd::Chart { template: true } => chart::template(),
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::Sandbox { args } => sandbox(&args),
        Cmd::Chaos { quick, mut args } => {
            if quick {
                args.insert(0, "--quick".into());
            }
            chaos::run("chaos", &args, chaos::Profile::Release)
        }
        Cmd::Soak { run_for, mut args } => {
            args.splice(0..0, ["--for".to_string(), run_for]);
            chaos::run("soak", &args, chaos::Profile::Release)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the eBPF build's prerequisites when missing (as root), builds the release
/// `peerd` (the sandbox finds it next to itself; its build script reruns once clang
/// appears), then runs the release `peerd-sandbox` with `args`.
fn sandbox(args: &[String]) -> anyhow::Result<()> {
    setup::ebpf_for_sandbox();
    cargo(&["build", "--release", "-p", "peerd", "--bin", "peerd"])?;
    let mut all = vec![
        "run",
        "--release",
        "-p",
        "peerd-testbed",
        "--bin",
        "peerd-sandbox",
        "--",
    ];
    all.extend(args.iter().map(String::as_str));
    cargo(&all)
}

/// The repository root (xtask lives one level below it).
pub fn root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Runs `cargo ARGS` at the repository root, failing on a non-zero exit.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(args))
}

/// Runs a command at the repository root, echoing it, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(root());
    eprintln!("xtask: $ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", display(cmd));
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
